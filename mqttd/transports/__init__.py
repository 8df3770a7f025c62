"""Transports: every listener type turns its connections into a ``trio.abc.Stream``.

``serve_listener`` starts the listener a ``ListenerConfig`` describes and calls the broker's
connection handler with a plain byte stream and a ``ConnectionInfo`` -- so one MQTT framer
serves TCP, TLS, WebSocket and secure WebSocket alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from mqttd.config import ListenerConfig


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What the broker knows about a connection before MQTT starts."""

    transport: str  # "tcp" | "tls" | "ws" | "wss"
    peer: str  # "host:port"; for ws/wss behind a trusted proxy, from X-Forwarded-For
    listener: ListenerConfig
    tls_identity: str | None = None  # verified client-certificate CN, when one was presented


Handler = Callable[[trio.abc.Stream, ConnectionInfo], Awaitable[None]]
