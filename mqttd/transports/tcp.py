"""Listening sockets for every listener type, and the plain TCP listener (``type = "tcp"``).

``open_listeners`` binds a listener's sockets with the standard library (one per address the
host resolves to, as ``trio.open_tcp_listeners`` does) and reports them as ``BoundSocket``s.
``accept_connections`` runs one accept loop per socket for every transport: tls, ws and wss
wrap the ``TcpStream`` it hands them in their own layers.

Idle connections are what a broker holds most of, so this path is kept lean: the accept loop
admits connections synchronously (the gate, ``TCP_NODELAY``) and spawns the handler's coroutine
directly -- no wrapper task per connection -- and the stream is a ``TcpStream``, a thin
``MqttStream`` over the stdlib socket whose ``try_send`` is one non-blocking ``send``.
"""

from __future__ import annotations

import errno
import socket
import sys
from dataclasses import dataclass

import structlog
import trio

from mqttd.config import ListenerConfig
from mqttd.errors import StartupError
from mqttd.transports import ConnectionInfo, Gate, Handler, MqttStream
from mqttd.transports.peer import format_peer

log = structlog.get_logger("mqttd.transports.tcp")

RECEIVE_SIZE = 65536
#: A read at least this large is followed by another read before waiting.
EAGER_READ_BYTES = 16384
#: accept() errors that mean "out of resources for now": wait and retry (as trio's
#: serve_listeners does) instead of stopping the listener.
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
#: accept() errors about one connection that died in the backlog: skip it.
_CONNECTION_ERRORS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ECONNRESET}
RESOURCE_RETRY_S = 0.1
#: Linux's TCP_NOTSENT_LOWAT (the socket module names it from Python 3.12 on).
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
NOTSENT_LOWAT = 2**14
#: A constant name per transport for connection tasks: trio would otherwise format one each.
CONNECTION_TASK_NAMES = {
    kind: f"mqttd.{kind}_connection" for kind in ("tcp", "tls", "ws", "wss", "http")
}
#: Connections accepted in one go before the accept loop lets other tasks run.
ACCEPT_BATCH = 64
#: listen() backlog: the kernel silently caps it at its own maximum (net.core.somaxconn on
#: Linux), so ask for the most a 16-bit field holds, as trio.open_tcp_listeners does.
LISTEN_BACKLOG = 0xFFFF
#: Whether listening sockets get SO_REUSEPORT (``share_ports``).
_share_ports = False


def share_ports(enabled: bool = True) -> None:
    """Give every listening socket this process opens from now on ``SO_REUSEPORT``.

    A worker of ``mqttd --workers N`` calls it before it starts: the N workers then bind the
    same ports and the kernel spreads new connections over them (``mqttd.supervisor``).

    Args:
        enabled: False goes back to exclusive ports.
    """
    global _share_ports
    _share_ports = enabled


@dataclass(frozen=True, slots=True)
class BoundSocket:
    """A listening socket as listeners report it: ``socket.getsockname()`` gives the address
    actually bound (the real port when the configuration said 0)."""

    socket: socket.socket


async def open_listeners(listener: ListenerConfig) -> list[BoundSocket]:
    """Bind and listen on every address ``listener.host`` resolves to.

    A host name with both IPv4 and IPv6 addresses gets one socket per address (with port 0,
    each its own port); IPv6 sockets are IPv6-only, so ``::`` and ``0.0.0.0`` do not collide.
    The sockets are non-blocking and use ``SO_REUSEADDR`` (a restarted broker can bind while
    old connections linger in TIME_WAIT), and ``SO_REUSEPORT`` after ``share_ports()``.

    Raises:
        StartupError: the address cannot be bound (in use, no permission, bad host), with a
            one-line message.
    """
    try:
        return await _bind_all(listener.host, listener.port)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StartupError(
            f"cannot listen on {listener.type} {listener.host}:{listener.port}: {reason}"
        ) from None


async def _bind_all(host: str, port: int) -> list[BoundSocket]:
    addresses = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    bound: list[BoundSocket] = []
    unsupported: list[OSError] = []
    try:
        for family, type_, proto, _name, address in addresses:
            try:
                sock = socket.socket(family, type_, proto)
            except OSError as exc:
                if exc.errno != errno.EAFNOSUPPORT:
                    raise
                unsupported.append(exc)  # e.g. an IPv6 address on a host without IPv6
                continue
            try:
                if sys.platform != "win32":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if _share_ports:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setblocking(False)
                sock.bind(address)
                sock.listen(LISTEN_BACKLOG)
            except BaseException:
                sock.close()
                raise
            bound.append(BoundSocket(sock))
    except BaseException:
        for each in bound:
            each.socket.close()
        raise
    if unsupported and not bound:
        raise unsupported[0]
    return bound


class TcpStream(MqttStream, trio.abc.HalfCloseableStream):
    """A connected non-blocking stdlib socket as an ``MqttStream``.

    Lighter than ``trio.SocketStream`` (one small object, no wrapper socket, no conflict
    detectors beyond one flag): a connection has a single reader and at most one writer.
    ``try_send`` is one non-blocking ``send``; the kernel's buffer is the only buffer, so
    nothing is ever held (``has_unsent`` is always False).

    Args:
        sock: a connected stream socket, already non-blocking.
    """

    # ``raw_socket`` is the old name the connection driver still writes to directly; it goes
    # once the driver uses ``try_send`` (``socket`` is the name to use).
    __slots__ = ("_eager", "_sending", "raw_socket")

    def __init__(self, sock: socket.socket) -> None:
        self.raw_socket = sock
        self._eager = False  # the last read was large: read again before waiting
        self._sending = False  # a send_all is under way: try_send must not cut into it

    @property
    def socket(self) -> socket.socket:
        """The stdlib socket (TLS takes it over: ``mqttd.transports.tls.TlsStream``)."""
        return self.raw_socket

    def try_send(self, data: bytes) -> int:
        """One non-blocking ``send``: how many bytes the socket took (0 when it is full, the
        stream is closed or broken, or a ``send_all`` is under way)."""
        if self._sending or not data:
            return 0
        try:
            return self.raw_socket.send(data)
        except OSError:
            # EAGAIN: nothing taken. EBADF: closed. Any other error: the next send_all meets
            # it again and raises BrokenResourceError.
            return 0

    #: Always False: bytes the socket did not take were never taken. (A class attribute,
    #: not a property: the driver asks after every send, and a call costs ~0.1 us a delivery.)
    has_unsent = False

    def close_now(self) -> bool:
        """Close the socket at once, waking any task that waits on it; returns True."""
        sock = self.raw_socket
        if sock.fileno() != -1:
            trio.lowlevel.notify_closing(sock)  # a task waiting on it gets ClosedResourceError
            sock.close()
        return True

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        sock = self.raw_socket
        # Wait for readability first unless the last read was large: a recv failing with
        # EAGAIN costs an exception, and one raised through the reader's frames keeps frame
        # objects alive for as long as the (idle) connection waits.
        eager = self._eager
        while True:
            if sock.fileno() == -1:
                raise trio.ClosedResourceError("the stream was closed")
            if not eager:
                await trio.lowlevel.wait_readable(sock)
            try:
                data = sock.recv(max_bytes or RECEIVE_SIZE)
                break
            except (BlockingIOError, InterruptedError):
                eager = False
            except OSError as exc:
                raise trio.BrokenResourceError(exc) from exc
        if self._eager:
            await trio.lowlevel.checkpoint()  # no wait happened: a flooding peer must yield
        self._eager = len(data) >= EAGER_READ_BYTES
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``, waiting while the socket is full; ``b""`` is a checkpoint.

        Raises:
            trio.BusyResourceError: another task is sending.
            trio.ClosedResourceError: the stream was closed (also while waiting).
            trio.BrokenResourceError: the connection failed.
        """
        if self._sending:
            raise trio.BusyResourceError("another task is already sending")
        sock = self.raw_socket
        self._sending = True
        try:
            if sock.fileno() == -1:
                raise trio.ClosedResourceError("the stream was closed")
            with memoryview(data) as view:
                while view:
                    if sock.fileno() == -1:
                        raise trio.ClosedResourceError("the stream was closed")
                    try:
                        sent = sock.send(view)
                    except (BlockingIOError, InterruptedError):
                        sent = 0
                    except OSError as exc:
                        raise trio.BrokenResourceError(exc) from exc
                    if sent:
                        view = view[sent:]
                    else:
                        await trio.lowlevel.wait_writable(sock)
        finally:
            self._sending = False
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        if self.raw_socket.fileno() == -1:
            raise trio.ClosedResourceError("the stream was closed")
        await trio.lowlevel.wait_writable(self.raw_socket)

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        try:
            self.raw_socket.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise trio.BrokenResourceError(exc) from exc

    async def aclose(self) -> None:
        """Close at once (as ``close_now``), then a checkpoint."""
        self.close_now()
        await trio.lowlevel.checkpoint()


async def serve_tcp_listener(
    listener: ListenerConfig,
    handler: Handler,
    *,
    handler_nursery: trio.Nursery,
    gate: Gate | None = None,
    task_status: trio.TaskStatus[list[BoundSocket]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept TCP connections and run ``handler(stream, info)`` for each in
    ``handler_nursery``; ``task_status`` receives the bound sockets.

    A connection the gate admits holds its place until the handler's connection calls
    ``info.admission.leave`` (``mqttd.connection`` does, when it closes).
    """
    await accept_connections(
        listener,
        await open_listeners(listener),
        handler,
        handler_nursery=handler_nursery,
        gate=gate,
        task_status=task_status,
    )


async def accept_connections(
    listener: ListenerConfig,
    sockets: list[BoundSocket],
    handler: Handler,
    *,
    handler_nursery: trio.Nursery,
    gate: Gate | None = None,
    task_status: trio.TaskStatus[list[BoundSocket]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept on bound ``sockets`` until cancelled (closing them at the end): each admitted
    connection becomes ``handler(TcpStream, ConnectionInfo)``, spawned in ``handler_nursery``.

    The info's ``transport`` is the listener's type and ``admission`` the gate: whoever
    handles the connection leaves the gate when it ends.
    """
    try:
        async with trio.open_nursery() as nursery:
            for bound in sockets:
                nursery.start_soon(
                    _accept_loop, bound.socket, listener, handler, handler_nursery, gate
                )
            task_status.started(sockets)
    finally:
        for bound in sockets:
            bound.socket.close()


async def _accept_loop(
    listening: socket.socket,
    listener: ListenerConfig,
    handler: Handler,
    handler_nursery: trio.Nursery,
    gate: Gate | None,
) -> None:
    reported_exhaustion = False
    while True:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = listening.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in _CONNECTION_ERRORS:
                    continue
                if exc.errno not in _RESOURCE_ERRORS:
                    raise
                if not reported_exhaustion:
                    log.error("accept_failed", reason=errno.errorcode.get(exc.errno, str(exc)))
                    reported_exhaustion = True
                await trio.sleep(RESOURCE_RETRY_S)
                break
            reported_exhaustion = False
            _admit(sock, address, listener, handler, handler_nursery, gate)
        else:
            await trio.lowlevel.checkpoint()  # a burst of connects must not starve the rest
            continue
        await trio.lowlevel.wait_readable(listening)


def _admit(
    sock: socket.socket,
    address: tuple[str, int],
    listener: ListenerConfig,
    handler: Handler,
    handler_nursery: trio.Nursery,
    gate: Gate | None,
) -> None:
    ip = str(address[0])
    if gate is not None and not gate.enter(listener, ip):
        sock.close()
        return
    try:
        sock.setblocking(False)
        # Small MQTT packets must not wait for Nagle: QoS 2 round trips depend on it.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        # As trio.SocketStream does: the kernel takes at most 16 KiB of unsent data, so a
        # client that stops reading shows up as a blocked send here (write_timeout_s, the
        # outbox limits), not as megabytes silently parked in its socket buffer.
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
    except OSError:
        sock.close()  # the peer is already gone
        if gate is not None:
            gate.leave(listener, ip)
        return
    info = ConnectionInfo(listener.type, format_peer(address), listener, ip=ip, admission=gate)
    name = CONNECTION_TASK_NAMES[listener.type]
    handler_nursery.start_soon(handler, TcpStream(sock), info, name=name)
