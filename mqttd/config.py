"""Configuration: frozen dataclasses with finite defaults, loaded from a TOML file.

The file's shape (``[[listeners]]``, ``[auth]``, ``[limits]``, ``[log]``, ``[broker]``) is part of
mqttd's public interface: keep key names stable. Relative paths in the file are resolved against
the directory of the file itself, so the broker behaves the same from any working directory.

Theory of operation: the loader is driven by the dataclasses themselves. Each section's fields and
their annotations say which keys exist and what type each one takes, so adding a field to a
dataclass (with its ``Attributes:`` line in the class docstring, which the README's reference table
is generated from) is all a new key needs. Only the rules no annotation can express live in code:
numeric bounds (``_BOUNDS``; any other number must be positive) and the cross-field listener checks
in ``_check_listener``. Every problem becomes one ``ConfigError`` line naming the file, the key path
(``listeners[1].port``) and what was expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import ipaddress
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mqttd.errors import ConfigError, MalformedPacket
from mqttd.topics import validate_topic_filter

__all__ = [
    "DEFAULT_PORTS",
    "AuthConfig",
    "BridgeConfig",
    "BridgeTopicConfig",
    "BrokerConfig",
    "ClusterConfig",
    "Config",
    "LimitsConfig",
    "ListenerConfig",
    "LogConfig",
    "check_workers",
    "load_config",
    "parse_config",
]

ListenerType = Literal["tcp", "tls", "ws", "wss", "http"]

#: Default port per listener type (Mosquitto's for tcp/tls; 8080/8443 for ws/wss; 9883 for the
#: monitoring endpoints of http).
DEFAULT_PORTS: dict[str, int] = {"tcp": 1883, "tls": 8883, "ws": 8080, "wss": 8443, "http": 9883}

#: Listener types that speak TLS and so need a certificate.
TLS_TYPES = frozenset({"tls", "wss"})


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One ``[[listeners]]`` table.

    Attributes:
        type: transport: tcp, tls (MQTT over TLS), ws (WebSocket), wss (WebSocket over TLS),
            or http: no MQTT, only the monitoring endpoints /metrics, /healthz and /readyz.
        host: address to listen on; 0.0.0.0 or :: listens on every interface.
        port: TCP port to listen on; 0 picks a free port (the bound port is logged as
            listener_started).
        certfile: tls/wss: PEM server certificate chain.
        keyfile: tls/wss: PEM private key of certfile.
        cafile: tls/wss: PEM CA bundle used to verify client certificates.
        require_certificate: tls/wss: refuse clients without a valid certificate from cafile.
        tls_dev_certs: tls/wss: create (once) and use a development CA and server certificate
            instead of certfile/keyfile. Never in production.
        tls_handshake_timeout_s: tls/wss: seconds allowed for the TLS handshake.
        path: ws/wss: URL path of the MQTT WebSocket endpoint; must start with /.
        web_root: ws/wss: directory of static files served over HTTP GET on the same port.
        metrics_path: ws/wss: URL path where the Prometheus metrics are served on this listener
            (with /healthz and /readyz beside it), behind the listener's auth like MQTT
            clients (HTTP Basic); unset serves none of them (an http listener always does).
            Refused with workers > 1: use an http listener, which the supervisor serves.
        allowed_origins: ws/wss: accepted Origin headers; empty accepts any origin.
        trusted_proxies: ws/wss: proxy addresses whose X-Forwarded-For is believed.
        ws_handshake_timeout_s: ws/wss: seconds allowed for the HTTP upgrade handshake.
        ws_max_message_size: ws/wss: largest WebSocket message accepted, in bytes.
        max_connections: most simultaneous connections on this listener; 0 means only
            limits.max_connections applies.
        use_identity_as_username: tls/wss: the verified client certificate's CN is the user
            name (no password needed); requires require_certificate.
        auth: an [listeners.auth] table replaces the global [auth] for this listener
            (Mosquitto's per_listener_settings).
    """

    type: ListenerType = "tcp"
    host: str = "127.0.0.1"
    port: int = 1883
    # tls / wss
    certfile: Path | None = None
    keyfile: Path | None = None
    cafile: Path | None = None
    require_certificate: bool = False
    tls_dev_certs: bool = False
    tls_handshake_timeout_s: float = 10.0
    # ws / wss
    path: str = "/mqtt"
    web_root: Path | None = None
    metrics_path: str | None = None
    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    ws_handshake_timeout_s: float = 10.0
    ws_max_message_size: int = 16 * 1024 * 1024
    max_connections: int = 0
    use_identity_as_username: bool = False
    auth: AuthConfig | None = None


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """``[auth]``: who may connect and what they may do.

    Attributes:
        allow_anonymous: accept clients that send no user name; unset means true on loopback
            listeners and false on every other listener.
        password_file: Mosquitto-format password file ($7$ PBKDF2-SHA512 or $6$ entries, as
            written by mosquitto_passwd or mqttd passwd); unset accepts any user name.
        acl_file: Mosquitto-format ACL file (topic/user/pattern lines); unset allows every
            topic except publishing to $-topics.
        session_owner_check: a persistent session belongs to the user name that created it:
            another user connecting with its client id starts a clean session (the old one is
            discarded and logged); false resumes it, as Mosquitto does, delivering only what
            the new user may read.
        methods: MQTT 5 enhanced authentication methods, as "package.module:factory" names;
            each factory is called with this table and returns the method's authenticator
            (see mqttd/enhanced_auth.py); a method not listed gets CONNACK 0x8C.
    """

    allow_anonymous: bool | None = None
    password_file: Path | None = None
    acl_file: Path | None = None
    session_owner_check: bool = True
    methods: tuple[str, ...] = ()

    def anonymous_allowed(self, listener_host: str) -> bool:
        """``allow_anonymous``, or its default for a listener on ``listener_host``."""
        if self.allow_anonymous is not None:
            return self.allow_anonymous
        return is_loopback(listener_host)


@functools.lru_cache(maxsize=64)  # asked on every connect, for a handful of listener hosts
def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or "localhost") only accepts local connections."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """``[limits]``: every limit is finite and named with its unit.

    Attributes:
        max_inflight_messages: QoS 1/2 messages sent to one client and not yet acknowledged;
            more wait in the queue.
        max_queued_messages: messages queued per client (offline, or beyond the inflight
            window); more are dropped and counted.
        max_queued_bytes: payload bytes queued per client; more are dropped and counted.
        max_packet_size: largest Remaining Length accepted, in bytes; a larger packet closes
            the connection.
        max_connect_packet_size: largest Remaining Length of a client's first packet
            (CONNECT, Will included), in bytes; nothing is known of the client yet, so it is
            small; a larger one closes the connection at its fixed header.
        max_connections: most simultaneous client connections, over all listeners.
        connect_timeout_s: seconds a new connection has to send CONNECT.
        write_timeout_s: seconds a write to a client may block before the connection closes.
        max_outbox_bytes: unsent bytes per connection before reading from it pauses.
        graceful_timeout_s: seconds connections get to finish on shutdown.
        max_keepalive: cap on the Keep Alive the broker enforces, in seconds: a client asking
            for more (or for none) is held to this; 0 takes the client's value as it is.
        max_topic_levels: most levels in a topic name or filter; a deeper PUBLISH closes the
            connection, a deeper subscription gets SUBACK 0x80.
        max_subscriptions_per_client: most subscriptions one session may hold; further new
            filters get SUBACK 0x80.
        max_connections_per_ip: most simultaneous connections from one client address; more
            are closed at once.
        max_connect_rate_per_ip: new connections per second one address may open (a token
            bucket with a burst of this many); 0 turns the limit off.
        max_publish_rate: PUBLISH packets per second one client may send; the excess is delayed
            by reading its socket more slowly, never dropped; 0 turns the limit off.
        slow_consumer: what happens when a client's queue or unsent output is full: "drop"
            its further messages (counted, logged once) or "disconnect" it.
        max_retained_messages: most topics with a retained message; a retained message for a
            new topic beyond it is delivered but not retained (counted, logged once per
            client).
        max_retained_bytes: most bytes the retained messages may cost, counted as topic +
            payload + 256 per topic level (the store's own cost); a retained message beyond
            it is delivered but not retained.
        store_backlog_limit: store operations recorded but not yet committed above which
            clients are read more slowly until the disk catches up.
        topic_alias_maximum: MQTT 5 Topic Aliases per connection, each way: how many a client
            may use (announced in CONNACK; Mosquitto's max_topic_alias) and the most the
            broker uses toward a client that accepts them; 0 turns them off.
    """

    max_inflight_messages: int = 20
    max_queued_messages: int = 1000
    max_queued_bytes: int = 16 * 1024 * 1024
    max_packet_size: int = 268_435_455
    max_connect_packet_size: int = 64 * 1024
    max_connections: int = 100_000
    connect_timeout_s: float = 10.0
    write_timeout_s: float = 30.0
    max_outbox_bytes: int = 4 * 1024 * 1024
    graceful_timeout_s: float = 3.0
    max_keepalive: int = 0
    max_topic_levels: int = 128
    max_subscriptions_per_client: int = 10_000
    max_connections_per_ip: int = 10_000
    max_connect_rate_per_ip: float = 0.0
    max_publish_rate: float = 0.0
    slow_consumer: Literal["drop", "disconnect"] = "drop"
    max_retained_messages: int = 1_000_000
    max_retained_bytes: int = 256 * 1024 * 1024
    store_backlog_limit: int = 200_000
    topic_alias_maximum: int = 10


@dataclass(frozen=True, slots=True)
class LogConfig:
    """``[log]``.

    Attributes:
        level: least severe level logged: debug, info, warning or error.
        format: console (human-readable; coloured on a terminal) or json (one object per line).
    """

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["console", "json"] = "console"


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """``[broker]``: process-wide settings.

    Attributes:
        data_dir: directory for the broker's state files (relative to the config file).
        sys_interval_s: seconds between updates of the retained $SYS/broker/... status topics;
            0 turns them off.
        workers: broker processes on this machine, sharing every listener port; more than 1
            makes them one broker over Redis ([cluster]; without redis_url a private
            redis-server is started in data_dir).
    """

    data_dir: Path = Path("data")
    sys_interval_s: float = 10.0
    workers: int = 1


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """``[store]``: durable state (persistent sessions, their QoS 1/2 messages, retained).

    Attributes:
        path: the SQLite database file; default ``<data_dir>/mqttd.db``.
        durability: ``"fsync"`` acknowledges a QoS 1/2 message only once it is committed and
            synced to disk; ``"os"`` once committed (survives a crash of mqttd, not of the
            machine); ``"memory"`` keeps no file.
        persistent_client_expiration: remove persistent sessions offline for longer than this,
            e.g. ``"12h"``, ``"7d"``, ``"2w"`` (units s m h d w y); ``"off"`` keeps them forever,
            like Mosquitto's default.
    """

    path: Path | None = None
    durability: Literal["fsync", "os", "memory"] = "fsync"
    persistent_client_expiration: str = "off"

    @property
    def database(self) -> Path | None:
        """The database file, or None with durability "memory"."""
        return None if self.durability == "memory" else self.path

    @property
    def expiration_s(self) -> float | None:
        """``persistent_client_expiration`` in seconds, None when off."""
        return parse_duration(self.persistent_client_expiration)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def parse_duration(text: str) -> float | None:
    """``"90s"``, ``"12h"``, ``"7d"``... in seconds; ``"off"`` is None.

    Raises:
        ValueError: not a positive number followed by one of s, m, h, d, w, y.
    """
    if text == "off":
        return None
    number, unit = text[:-1], text[-1:]
    if unit not in _DURATION_UNITS or not number.isdigit() or int(number) <= 0:
        raise ValueError(
            f"expected a duration like '12h' or '7d' (units s m h d w y) or 'off', got {text!r}"
        )
    return int(number) * _DURATION_UNITS[unit]


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """``[cluster]``: mqttd processes on one or several machines as one broker, over Redis.

    Attributes:
        redis_url: the Redis (or Valkey) server every node uses: redis://host:port/db,
            rediss:// (TLS) or unix:///path/to/socket; setting it turns cluster mode on.
        node_id: this node's name, unique in the cluster and the same across its restarts;
            default: the host name (with the worker number when workers > 1).
        key_prefix: prefix of every Redis key, so several clusters can share one Redis.
        node_timeout_s: seconds without a heartbeat after which a node counts as dead: its
            routes are removed, its clients' Wills published and its sessions adopted.
        sentinels: Redis Sentinel addresses ("host:port"); set instead of redis_url, the
            nodes ask them for the primary of sentinel_service and follow a failover.
        sentinel_service: the name Sentinel monitors the primary under.
    """

    redis_url: str | None = None
    node_id: str | None = None
    key_prefix: str = "mqttd"
    node_timeout_s: float = 5.0
    sentinels: tuple[str, ...] = ()
    sentinel_service: str = "mymaster"

    @property
    def enabled(self) -> bool:
        """Whether this process is a node of a cluster."""
        return self.redis_url is not None or bool(self.sentinels)


BridgeTransport = Literal["tcp", "tls", "ws", "wss"]

#: Default remote port per bridge transport, when an address gives none.
BRIDGE_DEFAULT_PORTS: dict[str, int] = {"tcp": 1883, "tls": 8883, "ws": 80, "wss": 443}


@dataclass(frozen=True, slots=True)
class BridgeTopicConfig:
    """One ``[[bridges.topics]]`` table: Mosquitto's
    ``topic pattern direction qos local-prefix remote-prefix`` line.

    Attributes:
        pattern: topic filter to bridge (wildcards allowed); left out, the two prefixes are
            whole topic names mapped onto each other (Mosquitto's ``topic "" ...``).
        direction: "out" (local to remote), "in" (remote to local) or "both".
        qos: QoS of the bridge's subscriptions on both sides (0, 1 or 2); a message travels at
            the lower of its own QoS and this one.
        local_prefix: put in front of pattern on the local broker (left out: none).
        remote_prefix: put in front of pattern on the remote broker (left out: none).
    """

    pattern: str = ""
    direction: Literal["out", "in", "both"] = "out"
    qos: int = 0
    local_prefix: str = ""
    remote_prefix: str = ""

    @property
    def local_filter(self) -> str:
        """The filter on the local broker: local_prefix + pattern."""
        return self.local_prefix + self.pattern

    @property
    def remote_filter(self) -> str:
        """The filter on the remote broker: remote_prefix + pattern."""
        return self.remote_prefix + self.pattern


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    """One ``[[bridges]]`` table: a connection from this broker, as a client, to another
    broker (Mosquitto's ``connection`` section; see the README's "Bridges").

    Attributes:
        name: the bridge's name (Mosquitto's ``connection``): unique, one topic level; names
            its link-state topic $SYS/broker/connection/<name>/state and its log lines.
        address: the remote broker as "host:port" strings, tried in order on every
            (re)connection, so the first one is preferred; the port defaults to 1883 (tcp),
            8883 (tls), 80 (ws), 443 (wss).
        transport: tcp, tls (MQTT over TLS), ws (WebSocket) or wss (WebSocket over TLS).
        ws_path: ws/wss: URL path of the remote's MQTT WebSocket endpoint.
        cafile: tls/wss: PEM CA bundle that verifies the remote's certificate (and its host
            name); unset uses the system's trusted CAs.
        certfile: tls/wss: PEM client certificate chain, for remotes that require one.
        keyfile: tls/wss: PEM private key of certfile (unset: certfile holds it).
        protocol: MQTT version spoken to the remote: "3.1.1", "3.1" or "5" (MQTT 5: message
            properties cross the bridge, and the in-topics' subscriptions are No Local).
        try_private: tell the remote this is a bridge (protocol level with its high bit set,
            as Mosquitto does), so it does not send the bridge's own messages back; turn off
            for remotes that refuse such a CONNECT. Ignored with protocol "5", whose No Local
            subscriptions do the same in the standard way (Mosquitto sets no bit there either).
        client_id: the client id on the remote broker; default "<name>.<host name>".
        username: user name on the remote broker.
        password: password on the remote broker (requires username, except with MQTT 5).
        keepalive: Keep Alive in seconds: a PINGREQ after this long without traffic, and the
            link is dropped when its PINGRESP does not come within as long again; 0 turns it
            off.
        clean_session: CleanSession on the remote: false keeps the bridge's subscriptions and
            the messages for it on the remote while the link is down. MQTT 5: Clean Start, with
            a Session Expiry Interval of 0xFFFFFFFF (never) when false, 0 when true.
        topics: [[bridges.topics]] tables, each with the keys pattern, direction, qos,
            local_prefix and remote_prefix (see the README's "Bridges"); at least one.
        max_inflight_messages: QoS 1/2 messages sent to the remote and not yet acknowledged;
            unset: limits.max_inflight_messages; an MQTT 5 remote's Receive Maximum may lower it.
        max_queued_messages: messages queued for the remote (while it is away, or beyond the
            inflight window); more are dropped, counted and logged; unset:
            limits.max_queued_messages.
        max_queued_bytes: payload bytes queued for the remote; unset: limits.max_queued_bytes.
        connect_timeout_s: seconds to connect, finish the TLS and WebSocket handshakes and get
            the remote's CONNACK.
        reconnect_delay_s: seconds before the first reconnection attempt; each failed attempt
            doubles the delay (with random jitter) up to reconnect_delay_max_s (Mosquitto's
            ``restart_timeout base cap``).
        reconnect_delay_max_s: the longest delay between reconnection attempts, in seconds.
    """

    name: str = ""
    address: tuple[str, ...] = ()
    transport: BridgeTransport = "tcp"
    ws_path: str = "/mqtt"
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    protocol: Literal["3.1.1", "3.1", "5"] = "3.1.1"
    try_private: bool = True
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    keepalive: int = 60
    clean_session: bool = False
    topics: tuple[BridgeTopicConfig, ...] = ()
    max_inflight_messages: int | None = None
    max_queued_messages: int | None = None
    max_queued_bytes: int | None = None
    connect_timeout_s: float = 10.0
    reconnect_delay_s: float = 5.0
    reconnect_delay_max_s: float = 30.0

    def endpoints(self) -> list[tuple[str, int]]:
        """``address`` as (host, port) pairs, with the transport's default port.

        Raises:
            ValueError: an address is not "host", "host:port" or "[v6 address]:port".
        """
        return [parse_address(text, BRIDGE_DEFAULT_PORTS[self.transport]) for text in self.address]


def parse_address(text: str, default_port: int) -> tuple[str, int]:
    """``"host:port"``, ``"host"`` or ``"[::1]:port"`` as (host, port).

    Raises:
        ValueError: an empty host, or a port that is not a number from 1 to 65535.
    """
    host, port_text = text, ""
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] not in ("", ":"):
            raise ValueError(f"expected [IPv6 address]:port, got {text!r}")
        host, port_text = text[1:close], text[close + 2 :]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        raise ValueError(f"write an IPv6 address in brackets, as [{text}]:port")
    if not host:
        raise ValueError(f"expected host:port, got {text!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ValueError(f"expected a port from 1 to 65535 in {text!r}")
    return host, int(port_text)


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration; ``source`` is the file it was loaded from, if any."""

    listeners: tuple[ListenerConfig, ...] = (ListenerConfig(),)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    bridges: tuple[BridgeConfig, ...] = ()
    source: Path | None = None


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------

#: Fields of ``Config`` that are not TOML keys.
_NOT_IN_FILE = frozenset({"source"})

#: Inclusive numeric bounds by (section class, field name); ``None`` = unbounded. Numbers not
#: listed here must be > 0.
_BOUNDS: dict[tuple[type, str], tuple[float | None, float | None]] = {
    (ListenerConfig, "port"): (0, 65535),
    (ListenerConfig, "max_connections"): (0, None),
    # Packet identifiers are 16-bit and non-zero [MQTT-2.3.1-1], so no more can be in flight.
    (LimitsConfig, "max_inflight_messages"): (1, 65535),
    # The largest Remaining Length four varint bytes can encode [MQTT-2.2.3].
    (LimitsConfig, "max_packet_size"): (1, 268_435_455),
    (LimitsConfig, "max_connect_packet_size"): (1, 268_435_455),
    (BrokerConfig, "sys_interval_s"): (0, None),
    (BrokerConfig, "workers"): (1, 256),
    (LimitsConfig, "max_keepalive"): (0, 65535),
    (LimitsConfig, "topic_alias_maximum"): (0, 65535),
    (LimitsConfig, "max_connect_rate_per_ip"): (0, None),
    (LimitsConfig, "max_publish_rate"): (0, None),
    (BridgeTopicConfig, "qos"): (0, 2),
    (BridgeConfig, "keepalive"): (0, 65535),
    (BridgeConfig, "max_inflight_messages"): (1, 65535),
}


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML configuration file.

    Args:
        path: the file; relative paths inside it resolve against its directory.

    Returns:
        The validated ``Config`` with ``source`` set to ``path``.

    Raises:
        ConfigError: one line naming the file, the key and the problem, when the file cannot
            be read, is not TOML, or does not describe a valid configuration.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        reason = e.strerror or str(e)
        raise ConfigError(f"{path}: cannot read the file: {reason}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 ({e.reason})") from None
    return parse_config(data, path)


def parse_config(data: Mapping[str, Any], source: Path | None = None) -> Config:
    """Validate already-parsed TOML data and build a ``Config``.

    Args:
        data: the parsed document (``tomllib.loads`` output).
        source: the file it came from: named in error messages, and relative paths resolve
            against its directory (the current directory when ``None``).

    Returns:
        The validated ``Config``.

    Raises:
        ConfigError: one line naming the file, the key path and what is wrong.
    """
    loader = _Loader(source)
    return loader.config(data)


def check_workers(config: Config, workers: int) -> None:
    """Rules for running ``config`` as ``workers`` worker processes (``[broker] workers`` when
    the file is loaded, ``--workers`` at start-up).

    With more than one worker every worker binds every ws/wss port, so a request at a
    ``metrics_path`` would reach one worker chosen by the kernel: its counters, not the
    broker's. Only an http listener, which the supervisor serves for all workers, shows them.

    Raises:
        ConfigError: a ws/wss listener has a ``metrics_path``: one line naming it.
    """
    if workers <= 1:
        return
    for i, listener in enumerate(config.listeners):
        if listener.metrics_path is not None:
            where = str(config.source) if config.source is not None else "<config>"
            raise ConfigError(
                f"{where}: listeners[{i}].metrics_path: not served with {workers} workers (a "
                "scrape would reach one worker at random): remove it and add an http listener, "
                "whose /metrics, /healthz and /readyz cover every worker"
            )


def _type_name(tp: Any) -> str:
    """Describe an annotation the way a TOML author thinks of it."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args)
    if origin is tuple:
        item = typing.get_args(tp)[0]
        if dataclasses.is_dataclass(item):
            return "an array of tables"
        return f"an array of {_type_name(item).removeprefix('a ').removeprefix('an ')}s"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {
        bool: "a boolean (true/false)",
        int: "an integer",
        float: "a number",
        str: "a string",
        Path: "a path string",
    }.get(tp, getattr(tp, "__name__", str(tp)))


def _describe(value: Any) -> str:
    """Name a TOML value's type, with the value when it is short, for error messages."""
    kind = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "table",
    }.get(type(value), type(value).__name__)
    if isinstance(value, list | dict):
        return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"
    text = repr(value) if not isinstance(value, bool) else str(value).lower()
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{kind} {text}"


class _Loader:
    """Walks the TOML document along the dataclasses, converting and checking each value."""

    def __init__(self, source: Path | None) -> None:
        self.source = source
        self.where = str(source) if source is not None else "<config>"
        self.base = (source.parent if source is not None else Path(".")).absolute()

    def fail(self, key: str, problem: str) -> ConfigError:
        """Build the one-line error for ``key``."""
        if key:
            return ConfigError(f"{self.where}: {key}: {problem}")
        return ConfigError(f"{self.where}: {problem}")

    def config(self, data: Mapping[str, Any]) -> Config:
        values = self.table(Config, data, "", skip=_NOT_IN_FILE)
        values["source"] = self.source
        if "listeners" in values and not values["listeners"]:
            raise self.fail("listeners", "at least one listener is required")
        cfg = Config(**values)
        self.check_listeners(cfg.listeners)
        try:
            cfg.store.expiration_s  # noqa: B018 - validates the duration text
        except ValueError as exc:
            raise self.fail("store.persistent_client_expiration", str(exc)) from None
        url = cfg.cluster.redis_url
        if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
            raise self.fail(
                "cluster.redis_url",
                f"expected redis://, rediss:// or unix:// URL, got {url!r}",
            )
        if url is not None and cfg.cluster.sentinels:
            raise self.fail("cluster.sentinels", "set either redis_url or sentinels, not both")
        for i, address in enumerate(cfg.cluster.sentinels):
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise self.fail(f"cluster.sentinels[{i}]", f"expected host:port, got {address!r}")
        self.check_bridges(cfg)
        check_workers(cfg, cfg.broker.workers)
        if cfg.store.path is None:
            cfg = dataclasses.replace(
                cfg, store=dataclasses.replace(cfg.store, path=cfg.broker.data_dir / "mqttd.db")
            )
        return cfg

    def table(
        self,
        cls: type,
        data: Any,
        prefix: str,
        *,
        skip: frozenset[str] = frozenset(),
    ) -> dict[str, Any]:
        """Convert one TOML table into keyword arguments for dataclass ``cls``."""
        if not isinstance(data, Mapping):
            raise self.fail(prefix, f"expected a table, got {_describe(data)}")
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
        out: dict[str, Any] = {}
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else key
            if key not in known:
                raise self.fail(path, self.unknown_key(key, known))
            out[key] = self.value(cls, key, hints[key], value, path)
        # Defaults resolve like written values: a default path (data_dir = "data") is relative
        # to the file too, and so is one inside a section the file leaves out.
        for name, f in known.items():
            if name in out:
                continue
            if isinstance(f.default, Path):
                out[name] = self.resolve(f.default)
            elif dataclasses.is_dataclass(hints[name]):
                prefix_name = f"{prefix}.{name}" if prefix else name
                out[name] = hints[name](**self.table(hints[name], {}, prefix_name))
        return out

    def unknown_key(self, key: str, known: Mapping[str, Any]) -> str:
        close = difflib.get_close_matches(key, list(known), n=1)
        if close:
            return f"unknown key (did you mean {close[0]!r}?)"
        return "unknown key (expected one of: " + ", ".join(known) + ")"

    def value(self, cls: type, name: str, tp: Any, value: Any, path: str) -> Any:
        """Convert ``value`` to annotation ``tp`` for field ``cls.name``."""
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            # ``X | None``: TOML has no null, so a present key must be an X.
            (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
            origin = typing.get_origin(tp)
        if origin is Literal:
            choices = typing.get_args(tp)
            if not isinstance(value, str) or value not in choices:
                raise self.fail(path, f"expected {_type_name(tp)}, got {_describe(value)}")
            return value
        if origin is tuple:
            (item_tp, _ellipsis) = typing.get_args(tp)
            if not isinstance(value, list):
                raise self.fail(path, f"expected {_type_name(tp)}, got {_describe(value)}")
            if isinstance(item_tp, type) and dataclasses.is_dataclass(item_tp):
                return tuple(
                    self.section_item(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value)
                )
            return tuple(
                self.value(cls, name, item_tp, v, f"{path}[{i}]") for i, v in enumerate(value)
            )
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return tp(**self.table(tp, value, path))
        if tp is bool:
            if not isinstance(value, bool):
                raise self.fail(path, f"expected {_type_name(tp)}, got {_describe(value)}")
            return value
        if tp is int or tp is float:
            return self.number(cls, name, tp, value, path)
        if tp is str:
            if not isinstance(value, str):
                raise self.fail(path, f"expected {_type_name(tp)}, got {_describe(value)}")
            if not value:
                raise self.fail(path, "must not be empty")
            return value
        if tp is Path:
            if not isinstance(value, str) or not value:
                raise self.fail(path, f"expected {_type_name(tp)}, got {_describe(value)}")
            return self.resolve(Path(value))
        raise TypeError(f"config field {cls.__name__}.{name} has unsupported type {tp!r}")

    def number(self, cls: type, name: str, tp: type, value: Any, path: str) -> Any:
        """Check an int (bool is not one) or float (an int is accepted), then its bounds."""
        ok = isinstance(value, int) if tp is int else isinstance(value, int | float)
        if isinstance(value, bool) or not ok:
            raise self.fail(path, f"expected {_type_name(tp)}, got {_describe(value)}")
        if tp is float:
            value = float(value)
            if not math.isfinite(value):
                raise self.fail(path, f"must be a finite number, got {value}")
        low, high = _BOUNDS.get((cls, name), (None, None))
        if (cls, name) not in _BOUNDS:
            if value <= 0:
                raise self.fail(path, f"must be greater than 0, got {value}")
            return value
        if (low is not None and value < low) or (high is not None and value > high):
            if high is None:
                expected = f"at least {low}"
            elif low is None:
                expected = f"at most {high}"
            else:
                expected = f"between {low} and {high}"
            raise self.fail(path, f"must be {expected}, got {value}")
        return value

    def section_item(self, cls: type, data: Any, path: str) -> Any:
        """Build one element of an array of tables (``[[listeners]]``)."""
        if cls is ListenerConfig:
            return self.listener(data, path)
        if cls is BridgeConfig:
            return self.bridge(data, path)
        return cls(**self.table(cls, data, path))

    def listener(self, data: Any, path: str) -> ListenerConfig:
        values = self.table(ListenerConfig, data, path)
        if "port" not in values:
            values["port"] = DEFAULT_PORTS[values.get("type", "tcp")]
        listener = ListenerConfig(**values)
        self.check_listener(listener, path)
        return listener

    def check_listener(self, lc: ListenerConfig, path: str) -> None:
        """Rules between the fields of one listener."""
        if lc.type in TLS_TYPES and not lc.tls_dev_certs:
            if lc.certfile is None:
                raise self.fail(
                    f"{path}.certfile",
                    f"required for a {lc.type} listener (or set tls_dev_certs = true)",
                )
            if lc.keyfile is None:
                raise self.fail(
                    f"{path}.keyfile",
                    f"required for a {lc.type} listener (or set tls_dev_certs = true)",
                )
        if lc.require_certificate and lc.cafile is None:
            raise self.fail(f"{path}.cafile", "required when require_certificate = true")
        if lc.use_identity_as_username and not lc.require_certificate:
            raise self.fail(
                f"{path}.use_identity_as_username", "requires require_certificate = true"
            )
        if not lc.path.startswith("/"):
            raise self.fail(f"{path}.path", f"must start with '/', got {lc.path!r}")
        if lc.metrics_path is not None:
            if lc.type not in ("ws", "wss"):
                raise self.fail(
                    f"{path}.metrics_path",
                    f"only ws and wss listeners take it (an http listener serves /metrics), "
                    f"not {lc.type}",
                )
            if not lc.metrics_path.startswith("/"):
                raise self.fail(
                    f"{path}.metrics_path", f"must start with '/', got {lc.metrics_path!r}"
                )
            if lc.metrics_path in (lc.path, "/healthz", "/readyz"):
                raise self.fail(
                    f"{path}.metrics_path",
                    f"{lc.metrics_path!r} is already the path of another endpoint",
                )

    def bridge(self, data: Any, path: str) -> BridgeConfig:
        """Build one ``[[bridges]]`` table and check the rules between its fields."""
        bc = BridgeConfig(**self.table(BridgeConfig, data, path))
        if not bc.name:
            raise self.fail(f"{path}.name", "required: the bridge's name")
        if any(c in bc.name for c in "/+#") or not bc.name.isprintable():
            raise self.fail(f"{path}.name", f"must be one topic level (no / + #), got {bc.name!r}")
        if not bc.address:
            raise self.fail(f"{path}.address", 'required: the remote as ["host:port", ...]')
        for i, text in enumerate(bc.address):
            try:
                parse_address(text, 0)
            except ValueError as exc:
                raise self.fail(f"{path}.address[{i}]", str(exc)) from None
        if bc.transport not in TLS_TYPES:
            for key in ("cafile", "certfile", "keyfile"):
                if getattr(bc, key) is not None:
                    raise self.fail(f"{path}.{key}", "only for a tls or wss bridge")
        if bc.keyfile is not None and bc.certfile is None:
            raise self.fail(f"{path}.certfile", "required with keyfile")
        if bc.password is not None and bc.username is None and bc.protocol == "3.1.1":
            raise self.fail(f"{path}.password", "requires username")  # [MQTT-3.1.2-22]
        if not bc.ws_path.startswith("/"):
            raise self.fail(f"{path}.ws_path", f"must start with '/', got {bc.ws_path!r}")
        if bc.reconnect_delay_max_s < bc.reconnect_delay_s:
            raise self.fail(
                f"{path}.reconnect_delay_max_s",
                f"must be at least reconnect_delay_s ({bc.reconnect_delay_s})",
            )
        if not bc.topics:
            raise self.fail(f"{path}.topics", "at least one [[bridges.topics]] table is required")
        for i, topic in enumerate(bc.topics):
            self.check_bridge_topic(topic, f"{path}.topics[{i}]")
        return bc

    def check_bridge_topic(self, topic: BridgeTopicConfig, path: str) -> None:
        """A topic's prefixes are plain levels and what they make are valid filters."""
        for key in ("local_prefix", "remote_prefix"):
            prefix = getattr(topic, key)
            if "+" in prefix or "#" in prefix:
                raise self.fail(f"{path}.{key}", f"must not contain wildcards, got {prefix!r}")
        if not topic.pattern and not (topic.local_prefix and topic.remote_prefix):
            raise self.fail(
                f"{path}.pattern",
                "required (or set both local_prefix and remote_prefix to map one topic)",
            )
        for key, value in (("pattern", topic.local_filter), ("pattern", topic.remote_filter)):
            try:
                validate_topic_filter(value)
            except MalformedPacket as exc:
                raise self.fail(
                    f"{path}.{key}", f"{value!r} is not a valid topic filter ({exc.reason})"
                ) from None

    def check_bridges(self, cfg: Config) -> None:
        """Rules across bridges, and with the rest of the file."""
        seen: dict[str, int] = {}
        for i, bc in enumerate(cfg.bridges):
            if bc.name in seen:
                raise self.fail(
                    f"bridges[{i}].name", f"{bc.name!r} is already used by bridges[{seen[bc.name]}]"
                )
            seen[bc.name] = i
        if cfg.bridges and (cfg.cluster.enabled or cfg.broker.workers > 1):
            raise self.fail(
                "bridges",
                "not supported in cluster mode ([cluster] redis_url or [broker] workers > 1): "
                "run the bridges in a separate mqttd that connects to the cluster",
            )

    def check_listeners(self, listeners: tuple[ListenerConfig, ...]) -> None:
        """Rules across listeners: no two may bind the same host and port."""
        seen: dict[tuple[str, int], int] = {}
        for i, lc in enumerate(listeners):
            if lc.port == 0:  # each one gets its own free port
                continue
            key = (lc.host, lc.port)
            if key in seen:
                raise self.fail(
                    f"listeners[{i}].port",
                    f"{lc.host}:{lc.port} is already used by listeners[{seen[key]}]",
                )
            seen[key] = i

    def resolve(self, p: Path) -> Path:
        """Resolve a path from the file against the file's directory (``~`` expands)."""
        p = p.expanduser()
        return p if p.is_absolute() else self.base / p
