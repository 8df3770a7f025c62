"""Configuration: frozen dataclasses with finite defaults, loaded from a TOML file.

The file's shape (``[[listeners]]``, ``[auth]``, ``[limits]``, ``[log]``, ``[broker]``) is part of
mqttd's public interface: keep key names stable. Relative paths in the file are resolved against
the directory of the file itself, so the broker behaves the same from any working directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

ListenerType = Literal["tcp", "tls", "ws", "wss"]

#: Default port per listener type (Mosquitto's for tcp/tls; 8080/8443 for ws/wss).
DEFAULT_PORTS: dict[str, int] = {"tcp": 1883, "tls": 8883, "ws": 8080, "wss": 8443}


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One ``[[listeners]]`` table."""

    type: ListenerType = "tcp"
    host: str = "127.0.0.1"
    port: int = 1883  # 0 = any free port (tests); the bound port is logged
    # tls / wss
    certfile: Path | None = None
    keyfile: Path | None = None
    cafile: Path | None = None
    require_certificate: bool = False
    tls_dev_certs: bool = False  # create (once) and use a development CA + server cert
    tls_handshake_timeout_s: float = 10.0
    # ws / wss
    path: str = "/mqtt"
    web_root: Path | None = None
    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    ws_handshake_timeout_s: float = 10.0
    ws_max_message_size: int = 16 * 1024 * 1024
    # per-listener limit (0 = only the global one applies)
    max_connections: int = 0


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """``[auth]``."""

    allow_anonymous: bool = True


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """``[limits]``: every limit is finite and named with its unit."""

    max_inflight_messages: int = 20
    max_queued_messages: int = 1000
    max_queued_bytes: int = 16 * 1024 * 1024
    max_packet_size: int = 268_435_455  # Remaining Length limit in bytes; larger closes
    max_connections: int = 100_000
    connect_timeout_s: float = 10.0
    write_timeout_s: float = 30.0
    max_outbox_bytes: int = 4 * 1024 * 1024  # unsent bytes per connection before reads pause
    graceful_timeout_s: float = 3.0


@dataclass(frozen=True, slots=True)
class LogConfig:
    """``[log]``."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["console", "json"] = "console"


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """``[broker]``: process-wide settings."""

    data_dir: Path = Path("data")


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration."""

    listeners: tuple[ListenerConfig, ...] = (ListenerConfig(),)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    source: Path | None = None  # the file this was loaded from, if any
