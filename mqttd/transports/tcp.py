"""Plain TCP listener (``type = "tcp"``): MQTT straight over the socket."""

from __future__ import annotations

import socket
from functools import partial

import trio

from mqttd.config import ListenerConfig
from mqttd.transports import ConnectionInfo, Gate, Handler, gated, open_listeners, peer_name


async def serve_tcp_listener(
    listener: ListenerConfig,
    handler: Handler,
    *,
    handler_nursery: trio.Nursery,
    gate: Gate | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept TCP connections and hand each one to ``handler``."""
    listeners = await open_listeners(listener)

    async def on_connection(stream: trio.SocketStream) -> None:
        # Small MQTT packets must not wait for Nagle (trio sets TCP_NODELAY already; make it
        # explicit because QoS 2 round trips depend on it).
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        await handler(stream, ConnectionInfo("tcp", peer_name(stream), listener))

    await trio.serve_listeners(
        partial(gated, gate, listener, on_connection),
        listeners,
        handler_nursery=handler_nursery,
        task_status=task_status,
    )
