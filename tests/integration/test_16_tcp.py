"""The plain TCP transport: TcpStream, the accept loop, and what an idle connection costs.

Sockets are loopback or socketpairs; every wait is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from mqttd.config import Config, ListenerConfig
from mqttd.connection import Connection
from mqttd.errors import StartupError
from mqttd.server import serve
from mqttd.transports import ConnectionInfo
from mqttd.transports.tcp import (
    _TCP_NOTSENT_LOWAT,
    NOTSENT_LOWAT,
    BoundSocket,
    TcpStream,
    _accept_loop,
    open_listeners,
)
from tests.helpers import wire
from tests.helpers.client import connect_client

TIMEOUT_S = 10


def _stream_pair() -> tuple[TcpStream, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    # Small buffers: a large send_all must meet a full socket and wait for the reader.
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return TcpStream(ours), theirs


async def test_send_all_waits_for_a_slow_reader_and_loses_nothing() -> None:
    stream, peer = _stream_pair()
    data = bytes(range(256)) * 16384  # 4 MiB
    received = bytearray()
    peer_stream = TcpStream(peer)

    async def read_all() -> None:
        while len(received) < len(data):
            received.extend(await peer_stream.receive_some(65536))

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            await stream.send_all(data)
    assert bytes(received) == data
    await stream.aclose()
    await peer_stream.aclose()


async def test_send_eof_reaches_the_peer_as_end_of_stream() -> None:
    stream, peer = _stream_pair()
    peer_stream = TcpStream(peer)
    with trio.fail_after(TIMEOUT_S):
        await stream.send_all(b"last words")
        await stream.send_eof()
        assert await peer_stream.receive_some() == b"last words"
        assert await peer_stream.receive_some() == b""
        # The other direction still works after a half-close.
        await peer_stream.send_all(b"reply")
        assert await stream.receive_some() == b"reply"
    await stream.aclose()
    await peer_stream.aclose()


async def test_aclose_wakes_a_waiting_reader_and_later_calls_fail() -> None:
    stream, peer = _stream_pair()
    outcome: list[type[BaseException]] = []

    async def wait_for_data() -> None:
        try:
            await stream.receive_some()
        except trio.ClosedResourceError as exc:
            outcome.append(type(exc))

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for_data)
            await trio.testing.wait_all_tasks_blocked()
            await stream.aclose()
    assert outcome == [trio.ClosedResourceError]
    with pytest.raises(trio.ClosedResourceError):
        await stream.receive_some()
    with pytest.raises(trio.ClosedResourceError):
        await stream.send_all(b"x")
    await stream.aclose()  # closing twice is harmless
    peer.close()


async def test_a_reset_connection_is_a_broken_stream() -> None:
    stream, peer = _stream_pair()
    # SO_LINGER 0: close sends RST, so the next send fails.
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    peer.close()

    async def keep_sending() -> None:
        for _ in range(100):  # the first sends may still be buffered
            await stream.send_all(bytes(65536))

    with trio.fail_after(TIMEOUT_S), pytest.raises(trio.BrokenResourceError):
        await keep_sending()
    await stream.aclose()


async def test_try_send_takes_what_the_socket_takes_and_holds_nothing() -> None:
    """try_send is one non-blocking send: it returns how much the socket took (0 once it is
    full), never holds bytes, and send_all writes the rest after the reader catches up."""
    stream, peer = _stream_pair()
    peer_stream = TcpStream(peer)
    data = bytes(range(256)) * 1024
    with trio.testing.assert_no_checkpoints():
        taken = stream.try_send(data)
    assert 0 < taken < len(data)
    assert not stream.has_unsent
    assert stream.try_send(b"more") == 0  # full: nothing taken
    received = bytearray()

    async def read_all() -> None:
        while len(received) < len(data):
            received.extend(await peer_stream.receive_some(65536))

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            await stream.send_all(data[taken:])
    assert bytes(received) == data
    await stream.aclose()
    await peer_stream.aclose()


async def send_until_broken(stream: TcpStream) -> None:
    """The driver's way of writing: try_send, then send_all of what it did not take."""
    while True:
        if not stream.try_send(b"x" * 100):
            await stream.send_all(b"x" * 100)


async def test_try_send_never_cuts_into_a_send_all_and_reports_failures_as_zero() -> None:
    """While a send_all waits on a full socket try_send takes nothing (its bytes would land
    inside the other send's); on a closed or failed socket it returns 0 and send_all raises."""
    stream, peer = _stream_pair()
    peer_stream = TcpStream(peer)
    while stream.try_send(bytes(65536)):
        pass
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, b"x" * 100)
            await trio.testing.wait_all_tasks_blocked()
            assert stream.try_send(b"y") == 0
            with pytest.raises(trio.BusyResourceError):
                await stream.send_all(b"z")
            nursery.cancel_scope.cancel()
        await peer_stream.aclose()
        with pytest.raises(trio.BrokenResourceError):
            await send_until_broken(stream)
    assert stream.close_now()
    assert stream.try_send(b"x") == 0
    with pytest.raises(trio.ClosedResourceError):
        await stream.send_all(b"")


async def test_close_now_closes_without_a_checkpoint_and_wakes_the_reader() -> None:
    """close_now closes the socket synchronously; a task waiting in receive_some gets
    ClosedResourceError and the peer sees EOF."""
    stream, peer = _stream_pair()
    peer_stream = TcpStream(peer)
    outcome: list[type[BaseException]] = []

    async def wait_for_data() -> None:
        try:
            await stream.receive_some()
        except trio.ClosedResourceError as exc:
            outcome.append(type(exc))

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for_data)
            await trio.testing.wait_all_tasks_blocked()
            with trio.testing.assert_no_checkpoints():
                assert stream.close_now()
                assert stream.close_now()  # twice is harmless
        assert outcome == [trio.ClosedResourceError]
        assert await peer_stream.receive_some() == b""
    await peer_stream.aclose()


class ScriptedListener:
    """A listening socket whose accept() fails as scripted before accepting for real."""

    def __init__(self, real: socket.socket, failures: list[int]) -> None:
        self.real = real
        self.failures = failures

    def fileno(self) -> int:
        return self.real.fileno()

    def accept(self) -> tuple[socket.socket, Any]:
        if self.failures:
            code = self.failures.pop(0)
            raise OSError(code, errno.errorcode[code])
        return self.real.accept()


@pytest.mark.parametrize(
    ("failures", "logged"),
    [([errno.EMFILE, errno.EMFILE], 1), ([errno.ECONNABORTED], 0)],
    ids=["out_of_descriptors", "aborted_in_backlog"],
)
async def test_accept_loop_survives_accept_errors(failures: list[int], logged: int) -> None:
    """Out of descriptors: logged once, retried after a pause; a connection aborted in the
    backlog: skipped. Either way the next connection is served."""
    real = socket.socket()
    real.bind(("127.0.0.1", 0))
    real.listen()
    real.setblocking(False)
    listening = ScriptedListener(real, failures)
    accepted: list[ConnectionInfo] = []
    served = trio.Event()

    async def handler(stream: trio.abc.Stream, info: ConnectionInfo) -> None:
        accepted.append(info)
        served.set()
        await stream.aclose()

    client = socket.create_connection(real.getsockname())
    client_port = client.getsockname()[1]
    with capture_logs() as logs, trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_accept_loop, listening, ListenerConfig(), handler, nursery, None)
            await served.wait()
            nursery.cancel_scope.cancel()
    client.close()
    real.close()
    assert len(accepted) == 1
    assert accepted[0].ip == "127.0.0.1"
    assert accepted[0].peer == f"127.0.0.1:{client_port}"
    assert [e["event"] for e in logs if e["event"] == "accept_failed"] == ["accept_failed"] * logged
    assert not failures


async def test_an_idle_tcp_connection_costs_one_task(start_server: Any) -> None:
    """The memory design of idle connections: the connection's coroutine runs as the task
    itself (no wrapper task, no nursery of its own, no writer task while idle)."""
    server = await start_server()
    port = server.port()
    connections_nursery = server.state.nursery
    assert connections_nursery is not None
    with trio.fail_after(TIMEOUT_S):
        first = await connect_client(port, "first", keepalive=60)  # starts the timeout watch
        await first.send(wire.pingreq())
        await first.expect(wire.pingresp())
        before = len(connections_nursery.child_tasks)
        clients = [await connect_client(port, f"idle-{i}", keepalive=60) for i in range(20)]
        for client in clients:  # every CONNACK flushed: no writer task is left running
            await client.send(wire.pingreq())
            await client.expect(wire.pingresp())
        assert len(connections_nursery.child_tasks) - before == 20
        assert all(not c._writer_running for c in server.state.connections)
        tasks = [t for t in connections_nursery.child_tasks if t.name == "mqttd.tcp_connection"]
        assert len(tasks) == 21
        for task in tasks:
            assert task.coro.cr_code is Connection.run.__code__  # type: ignore[attr-defined]
            assert not task.child_nurseries


async def test_shutdown_does_not_wait_for_background_tasks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With no client left, shutdown returns at once: the timeout watch and the flusher are
    background tasks, not connections that the graceful timeout would wait for (mock clock:
    waiting for graceful_timeout_s would show as that much clock time)."""
    config = Config(listeners=(ListenerConfig(type="tcp", host="127.0.0.1", port=0),))
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve, config)
        client = await connect_client(server.port(), "leaves", keepalive=60)
        await client.send(wire.disconnect())
        await client.expect_closed(timeout=TIMEOUT_S)
        start = trio.current_time()
        server.shutdown()
    assert trio.current_time() - start < config.limits.graceful_timeout_s


async def test_listening_sockets_are_plain_nonblocking_stdlib_sockets() -> None:
    """open_listeners binds standard-library sockets (no trio internals to unwrap): listening,
    non-blocking, SO_REUSEADDR, and the real port reported for port 0."""
    bound = await open_listeners(ListenerConfig(host="127.0.0.1", port=0))
    try:
        assert len(bound) == 1
        sock = bound[0].socket
        assert isinstance(bound[0], BoundSocket)
        assert type(sock) is socket.socket
        assert not sock.getblocking()
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        host, port = sock.getsockname()
        assert host == "127.0.0.1"
        assert port != 0
    finally:
        for each in bound:
            each.socket.close()


async def test_ipv6_listening_socket_is_ipv6_only() -> None:
    """An IPv6 listener does not also take IPv4 (so ``::`` and ``0.0.0.0`` can coexist)."""
    try:
        bound = await open_listeners(ListenerConfig(host="::1", port=0))
    except StartupError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        sock = bound[0].socket
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    finally:
        for each in bound:
            each.socket.close()


async def test_port_in_use_is_a_one_line_startup_error() -> None:
    """Binding a port that is already listened on raises StartupError naming the address."""
    taken = await open_listeners(ListenerConfig(host="127.0.0.1", port=0))
    port = taken[0].socket.getsockname()[1]
    try:
        with pytest.raises(StartupError, match=f"cannot listen on tcp 127.0.0.1:{port}: ") as info:
            await open_listeners(ListenerConfig(host="127.0.0.1", port=port))
        assert "\n" not in str(info.value)
    finally:
        taken[0].socket.close()


async def test_tcp_listener_reports_bound_sockets_and_serves() -> None:
    """serve_listener reports BoundSockets (``.socket.getsockname()``, as server.py reads
    them) and a client connecting to that address reaches the handler, on a non-blocking
    socket with TCP_NODELAY and TCP_NOTSENT_LOWAT."""
    from mqttd.transports import serve_listener

    reached = trio.Event()

    async def handler(stream: trio.abc.Stream, info: ConnectionInfo) -> None:
        assert isinstance(stream, TcpStream)
        assert info.transport == "tcp"
        sock = stream.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert sock.getsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT) == NOTSENT_LOWAT
        assert not sock.getblocking()
        reached.set()
        await stream.aclose()

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(
                lambda task_status: serve_listener(
                    ListenerConfig(host="127.0.0.1", port=0),
                    handler,
                    data_dir=Path("."),
                    handler_nursery=nursery,
                    task_status=task_status,
                )
            )
            assert [type(b) for b in bound] == [BoundSocket]
            client = await trio.open_tcp_stream(*bound[0].socket.getsockname()[:2])
            await reached.wait()
            await client.aclose()
            nursery.cancel_scope.cancel()
        assert bound[0].socket.fileno() == -1  # closed when the listener stopped
