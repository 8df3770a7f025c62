"""Transports: every listener type turns its connections into a ``trio.abc.Stream``.

``serve_listener`` starts the listener a ``ListenerConfig`` describes and calls the broker's
connection handler with a plain byte stream and a ``ConnectionInfo`` -- so one MQTT framer
serves TCP, TLS, WebSocket and secure WebSocket alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

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


async def serve_listener(
    listener: ListenerConfig,
    handler: Handler,
    *,
    data_dir: Path,
    handler_nursery: trio.Nursery,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the listener ``listener`` describes until cancelled.

    Calls ``task_status.started`` with the bound trio listeners (port 0 picks a free port) and
    ``handler(stream, info)`` in ``handler_nursery`` for every accepted connection.

    Raises:
        StartupError: the listener cannot start (address in use, unreadable certificate...).
    """
    if listener.type == "tcp":
        from mqttd.transports.tcp import serve_tcp_listener

        await serve_tcp_listener(
            listener, handler, handler_nursery=handler_nursery, task_status=task_status
        )
    elif listener.type == "tls":
        from mqttd.transports.tls import serve_tls_listener

        await serve_tls_listener(
            listener,
            handler,
            data_dir=data_dir,
            handler_nursery=handler_nursery,
            task_status=task_status,
        )
    else:
        from mqttd.transports.ws import serve_ws_listener

        await serve_ws_listener(
            listener,
            handler,
            data_dir=data_dir,
            handler_nursery=handler_nursery,
            task_status=task_status,
        )


def peer_name(stream: trio.SocketStream) -> str:
    """``host:port`` of the remote end of a socket stream (``[v6]:port`` for IPv6)."""
    try:
        address = stream.socket.getpeername()
    except OSError:
        return "unknown"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def open_listeners(listener: ListenerConfig) -> list[trio.SocketListener]:
    """Bind the listening sockets, turning OS errors into a one-line ``StartupError``."""
    from mqttd.errors import StartupError

    try:
        return await trio.open_tcp_listeners(listener.port, host=listener.host)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StartupError(
            f"cannot listen on {listener.type} {listener.host}:{listener.port}: {reason}"
        ) from None
