"""Transports: every listener type turns its connections into a ``trio.abc.Stream``.

``serve_listener`` starts the listener a ``ListenerConfig`` describes and calls the broker's
connection handler with a plain byte stream and a ``ConnectionInfo`` -- so one MQTT framer
serves TCP, TLS, WebSocket and secure WebSocket alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import trio

from mqttd.config import ListenerConfig

if TYPE_CHECKING:
    from mqttd.transports.tcp import BoundSocket


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What the broker knows about a connection before MQTT starts."""

    transport: str  # "tcp" | "tls" | "ws" | "wss"
    peer: str  # "host:port"; for ws/wss behind a trusted proxy, from X-Forwarded-For
    listener: ListenerConfig
    tls_identity: str | None = None  # verified client-certificate CN, when one was presented
    ip: str = ""  # the TCP peer's address, as the gate counted it
    #: the gate that admitted this connection when the connection itself must leave it on
    #: close (plain TCP, whose accept loop spawns the connection directly); None otherwise
    admission: Gate | None = None


Handler = Callable[[trio.abc.Stream, ConnectionInfo], Awaitable[None]]


class Gate(Protocol):
    """Admission control every listener applies to each accepted connection, before any TLS,
    HTTP or MQTT work: connection counts (global, per listener, per address) and rates."""

    def enter(self, listener: ListenerConfig, ip: str) -> bool:
        """Let a connection from ``ip`` in (True), or refuse it (False: it is closed)."""

    def leave(self, listener: ListenerConfig, ip: str) -> None:
        """A connection that ``enter`` let in has ended."""


async def serve_listener(
    listener: ListenerConfig,
    handler: Handler,
    *,
    data_dir: Path,
    handler_nursery: trio.Nursery,
    gate: Gate | None = None,
    task_status: trio.TaskStatus[list[BoundSocket]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the listener ``listener`` describes until cancelled.

    Calls ``task_status.started`` with the bound sockets (``BoundSocket``; port 0 picks a free
    port) and ``handler(stream, info)`` in ``handler_nursery`` for every accepted connection.

    Raises:
        StartupError: the listener cannot start (address in use, unreadable certificate...).
    """
    if listener.type == "tcp":
        from mqttd.transports.tcp import serve_tcp_listener

        await serve_tcp_listener(
            listener, handler, handler_nursery=handler_nursery, gate=gate, task_status=task_status
        )
    elif listener.type == "tls":
        from mqttd.transports.tls import serve_tls_listener

        await serve_tls_listener(
            listener,
            handler,
            data_dir=data_dir,
            handler_nursery=handler_nursery,
            gate=gate,
            task_status=task_status,
        )
    else:
        from mqttd.transports.ws import serve_ws_listener

        await serve_ws_listener(
            listener,
            handler,
            data_dir=data_dir,
            handler_nursery=handler_nursery,
            gate=gate,
            task_status=task_status,
        )
