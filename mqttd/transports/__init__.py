"""Transports: every listener type turns its connections into an ``MqttStream``.

``serve_listener`` starts the listener a ``ListenerConfig`` describes and calls the broker's
connection handler with a plain byte stream and a ``ConnectionInfo`` -- so one MQTT framer
serves TCP, TLS, WebSocket and secure WebSocket alike. The ``http`` listener carries no MQTT: it
serves the monitoring endpoints it is given (``mqttd.transports.httpd``), as ws/wss listeners
do at their ``metrics_path``.

``MqttStream`` is the one send interface the connection driver relies on: a ``trio.abc.Stream``
plus a non-blocking ``try_send``, ``has_unsent`` and a synchronous ``close_now``. Most output
of a broker is small and goes out without a task switch (``try_send``); only what a transport
cannot take at once needs an awaiting ``send_all``. ``TcpStream``, ``TlsStream`` and
``WebSocketStream`` implement it; ``StreamAdapter`` gives any other stream (the memory streams
of tests) the same face, with a ``try_send`` that never sends.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import trio

from mqttd.config import ListenerConfig

if TYPE_CHECKING:
    from mqttd.transports.http import Endpoints
    from mqttd.transports.tcp import BoundSocket


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What the broker knows about a connection before MQTT starts."""

    transport: str  # "tcp" | "tls" | "ws" | "wss" | "http"
    peer: str  # "host:port"; for ws/wss behind a trusted proxy, from X-Forwarded-For
    listener: ListenerConfig
    tls_identity: str | None = None  # verified client-certificate CN, when one was presented
    ip: str = ""  # the TCP peer's address, as the gate counted it
    #: the gate that admitted this connection when the connection itself must leave it on
    #: close (TCP, and ws/wss once upgraded: their connection tasks are spawned directly);
    #: None otherwise
    admission: Gate | None = None


Handler = Callable[[trio.abc.Stream, ConnectionInfo], Awaitable[None]]


class MqttStream(trio.abc.Stream):
    """A byte stream with a non-blocking send: the interface every transport implements.

    ``send_all``, ``receive_some``, ``aclose`` and ``wait_send_all_might_not_block`` are those
    of ``trio.abc.Stream``, with one addition: ``send_all(b"")`` writes the bytes the stream
    holds (see ``has_unsent``) and only then returns, and raises if the stream is broken.

    The writer's contract, for any transport::

        n = stream.try_send(data)       # no task switch
        if n < len(data) or stream.has_unsent:
            await stream.send_all(data[n:])   # before anything else is sent

    Exactly one task writes (``try_send`` and ``send_all``); another task may receive. A stream
    refuses ``try_send`` (returns 0) while one of its own sends is in progress, so bytes never
    overtake each other.
    """

    __slots__ = ()

    @abstractmethod
    def try_send(self, data: bytes) -> int:
        """Send without blocking what the transport takes now.

        Bytes taken are the stream's own from then on: any it could not put on the wire yet
        (the rest of a WebSocket frame, TLS records) make ``has_unsent`` true, and the next
        ``send_all`` writes them first; ``send_all(b"")`` writes only them. The caller sends
        ``data[n:]`` with ``send_all``, before anything else. A failure of the transport is not
        raised here: the next ``send_all`` meets it.

        Args:
            data: the bytes to send.

        Returns:
            How many bytes of ``data`` the stream took; 0 when it cannot send now (closed,
            closing, another send in progress, earlier bytes still held, a full socket, or a
            transport without a non-blocking send): then nothing was consumed.
        """

    @property
    @abstractmethod
    def has_unsent(self) -> bool:
        """Whether the stream holds bytes it took but could not write yet (``send_all(b"")``
        writes them)."""

    @abstractmethod
    def close_now(self) -> bool:
        """Close without a task switch if this transport can.

        A task waiting in ``receive_some`` or ``send_all`` is woken with
        ``trio.ClosedResourceError``. Closing handshakes (a WebSocket close frame, a TLS
        close_notify) are sent only as far as the socket takes them at once; held bytes are
        dropped.

        Returns:
            True when the stream is closed; False when only ``aclose`` can close it (the caller
            must then await ``aclose``).
        """


class StreamAdapter(MqttStream):
    """Any other ``trio.abc.Stream`` as an ``MqttStream`` (tests drive connections over
    ``trio.testing.memory_stream_pair()``): ``try_send`` never sends, so every write goes
    through ``send_all``; nothing is ever held; ``close_now`` leaves the close to ``aclose``.

    Args:
        stream: the stream to wrap.
    """

    __slots__ = ("stream",)

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream

    def try_send(self, data: bytes) -> int:
        """Never sends: returns 0 (use ``send_all``)."""
        return 0

    @property
    def has_unsent(self) -> bool:
        """Always False: the adapter holds nothing."""
        return False

    def close_now(self) -> bool:
        """Cannot close without awaiting: returns False (use ``aclose``)."""
        return False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """The wrapped stream's ``send_all``."""
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        """The wrapped stream's ``wait_send_all_might_not_block``."""
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """The wrapped stream's ``receive_some``."""
        return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        """The wrapped stream's ``aclose``."""
        await self.stream.aclose()


def as_mqtt_stream(stream: trio.abc.Stream) -> MqttStream:
    """``stream`` itself if it implements ``MqttStream``, else a ``StreamAdapter`` around it."""
    return stream if isinstance(stream, MqttStream) else StreamAdapter(stream)


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
    endpoints: Endpoints | None = None,
    task_status: trio.TaskStatus[list[BoundSocket]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the listener ``listener`` describes until cancelled.

    Calls ``task_status.started`` with the bound sockets (``BoundSocket``; port 0 picks a free
    port) and ``handler(stream, info)`` in ``handler_nursery`` for every accepted connection.
    ``endpoints`` are the monitoring endpoints an ``http`` listener (or a ws/wss listener with
    a ``metrics_path``) serves; an ``http`` listener without them answers 404 to everything.

    Raises:
        StartupError: the listener cannot start (address in use, unreadable certificate...).
    """
    if listener.type == "tcp":
        from mqttd.transports.tcp import serve_tcp_listener

        await serve_tcp_listener(
            listener, handler, handler_nursery=handler_nursery, gate=gate, task_status=task_status
        )
    elif listener.type == "http":
        from mqttd.transports.http import NO_ENDPOINTS
        from mqttd.transports.httpd import serve_http_listener

        await serve_http_listener(
            listener,
            endpoints if endpoints is not None else NO_ENDPOINTS,
            handler_nursery=handler_nursery,
            gate=gate,
            task_status=task_status,
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
            endpoints=endpoints,
            task_status=task_status,
        )
