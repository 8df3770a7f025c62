"""TlsStream, the broker's own server-side TLS stream, against trio.SSLStream clients.

Sockets are socketpairs or loopback connections; certificates come from trustme; every wait is
bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request

from mqttd.config import ListenerConfig
from mqttd.transports import MqttStream, as_mqtt_stream
from mqttd.transports.tcp import TcpStream
from mqttd.transports.tls import TlsContext, TlsStream, client_identity, server_ssl_context
from mqttd.transports.ws import WebSocketStream

TIMEOUT_S = 20

Pair = tuple[TlsStream, trio.SSLStream[trio.SocketStream]]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """The context a tls listener builds (server_ssl_context), client certificates optional."""
    base = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_pem.write_to_path(str(base / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(base / "server.pem"))
    ca.cert_pem.write_to_path(str(base / "ca.pem"))
    listener = ListenerConfig(
        type="tls",
        host="127.0.0.1",
        port=0,
        certfile=base / "server.pem",
        keyfile=base / "server.key",
        cafile=base / "ca.pem",
    )
    return server_ssl_context(listener, base)


def client_context(
    ca: trustme.CA, version: ssl.TLSVersion | None = None, identity: str | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if version is not None:
        context.minimum_version = context.maximum_version = version
    if identity is not None:
        ca.issue_cert(f"{identity}@example", common_name=identity).configure_cert(context)
    return context


def socket_pair(small_buffers: bool = False) -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    if small_buffers:
        # A slow reader shows up after a few KiB, not after the kernel's default megabytes.
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return ours, theirs


async def handshaken(
    server_context: ssl.SSLContext,
    client: ssl.SSLContext,
    *,
    small_buffers: bool = False,
) -> Pair:
    """A TlsStream and a trio.SSLStream client over a socketpair, both past the handshake."""
    ours, theirs = socket_pair(small_buffers)
    server = TlsStream(ours, server_context)
    peer = trio.SSLStream(
        trio.SocketStream(trio.socket.from_stdlib_socket(theirs)),
        client,
        server_hostname="localhost",
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(peer.do_handshake)
    return server, peer


OPEN: list[trio.abc.AsyncResource] = []


@pytest.fixture
async def pair(ca: trustme.CA, server_context: ssl.SSLContext) -> AsyncIterator[Pair]:
    """A handshaken pair over small socket buffers, closed after the test."""
    with trio.fail_after(TIMEOUT_S):
        server, peer = await handshaken(server_context, client_context(ca), small_buffers=True)
    yield server, peer
    await trio.aclose_forcefully(server)
    await trio.aclose_forcefully(peer)


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        chunk = await stream.receive_some(65536)
        assert chunk, f"EOF after {len(got)} of {size} bytes"
        got += chunk
    return bytes(got)


async def test_tls_stream_passes_trios_generic_stream_checks(
    ca: trustme.CA, server_context: ssl.SSLContext
) -> None:
    """TlsStream against a trio.SSLStream client passes check_two_way_stream both ways, and
    check_one_way_stream with a clogged socket when it is the sender."""

    async def stream_maker() -> Pair:
        return await handshaken(server_context, client_context(ca))

    async def clogged_stream_maker() -> Pair:
        server, peer = await handshaken(server_context, client_context(ca), small_buffers=True)
        while server.try_send(b"x" * 65536):
            pass  # fill the socket until even held ciphertext does not fit
        assert server.has_unsent
        return server, peer

    with trio.fail_after(60):
        await trio.testing.check_two_way_stream(stream_maker, None)
        await trio.testing.check_one_way_stream(stream_maker, clogged_stream_maker)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_tls_1_2_and_1_3_clients_exchange_bytes_and_show_their_identity(
    ca: trustme.CA, server_context: ssl.SSLContext, version: ssl.TLSVersion
) -> None:
    """A TLS 1.2 client and a TLS 1.3 client both complete the handshake, exchange bytes both
    ways, and their certificate's common name is the client identity."""
    context = client_context(ca, version, identity="sensor-9")
    with trio.fail_after(TIMEOUT_S):
        server, peer = await handshaken(server_context, context)
        assert server.version() == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]
        assert client_identity(server) == "sensor-9"
        await peer.send_all(b"\x10\x00")
        assert await receive_exactly(server, 2) == b"\x10\x00"
        assert server.try_send(b"\x20\x02\x00\x00") == 4
        if server.has_unsent:
            await server.send_all(b"")
        assert not server.has_unsent
        assert await receive_exactly(peer, 4) == b"\x20\x02\x00\x00"
        await server.aclose()
        assert await peer.receive_some(10) == b""  # close_notify: a clean EOF
        await peer.aclose()


async def test_tls_1_3_session_tickets_wait_for_the_first_write(
    ca: trustme.CA, server_context: ssl.SSLContext
) -> None:
    """After a TLS 1.3 handshake the server's session tickets are held, not sent, and leave
    before the first data the server writes."""
    context = client_context(ca, ssl.TLSVersion.TLSv1_3)
    with trio.fail_after(TIMEOUT_S):
        server, peer = await handshaken(server_context, context)
        assert server.has_unsent  # the tickets
        assert server.try_send(b"first") == 5
        assert not server.has_unsent
        assert await receive_exactly(peer, 5) == b"first"
        await server.aclose()
        await peer.aclose()


async def test_slow_reader_gets_everything_in_order_with_try_send_and_send_all_mixed(
    pair: Pair,
) -> None:
    """try_send, then send_all of what it did not take (flushing held ciphertext after every
    other chunk, leaving it for later after the others) delivers every byte in order to a
    reader that starts late and reads in small pieces."""
    server, peer = pair
    chunks = [bytes([i % 251]) * (1 + (i * 7919) % 3000) for i in range(600)]
    expected = b"".join(chunks)
    refused = held = 0

    async def write() -> None:
        nonlocal refused, held
        for i, chunk in enumerate(chunks):
            taken = server.try_send(chunk)
            refused += taken == 0
            held += server.has_unsent
            if taken < len(chunk) or (i % 2 and server.has_unsent):
                await server.send_all(chunk[taken:])
        await server.send_all(b"")

    got = bytearray()
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            await trio.testing.wait_all_tasks_blocked()  # the writer has filled the socket
            while len(got) < len(expected):
                got += await peer.receive_some(1000)
    assert bytes(got) == expected
    assert refused  # the socket really was full and try_send refused ...
    assert held  # ... and held ciphertext was flushed by a later send_all


async def test_try_send_refuses_while_ciphertext_it_holds_does_not_fit(pair: Pair) -> None:
    """Once the socket is full, try_send takes nothing more (the held buffer stays bounded);
    send_all(b"") writes what is held once the reader reads."""
    server, peer = pair
    sent = 0
    while taken := server.try_send(b"y" * 8192):
        sent += taken
    assert server.has_unsent
    assert server.try_send(b"more") == 0
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.send_all, b"")
            assert await receive_exactly(peer, sent) == b"y" * sent
    assert not server.has_unsent


async def test_records_that_arrived_together_are_read_together(pair: Pair) -> None:
    """Several small records already received come back from one receive_some (a client that
    writes each MQTT packet as its own record), and max_bytes still bounds it."""
    server, peer = pair
    with trio.fail_after(TIMEOUT_S):
        for packet in (b"\xc0\x00", b"\xc0\x00", b"\xe0\x00"):
            await peer.send_all(packet)
        assert await server.receive_some() == b"\xc0\x00\xc0\x00\xe0\x00"
        for packet in (b"ab", b"cd"):
            await peer.send_all(packet)
        assert await server.receive_some(3) == b"abc"
        assert await server.receive_some() == b"d"


async def test_ragged_eof_reads_as_eof(pair: Pair) -> None:
    """A client that closes TCP without close_notify (as browsers do) reads as EOF, after the
    data it sent."""
    server, peer = pair
    with trio.fail_after(TIMEOUT_S):
        await peer.send_all(b"last words")
        await peer.transport_stream.aclose()  # no close_notify
        assert await receive_exactly(server, 10) == b"last words"
        assert await server.receive_some() == b""
        assert await server.receive_some() == b""


async def test_close_notify_reads_as_eof(pair: Pair) -> None:
    """A client's close_notify reads as EOF, and stays EOF."""
    server, peer = pair
    with trio.fail_after(TIMEOUT_S):
        await peer.send_all(b"bye")
        await peer.aclose()
        assert await receive_exactly(server, 3) == b"bye"
        assert await server.receive_some() == b""
        assert await server.receive_some() == b""


async def test_close_now_sends_close_notify_without_a_task_switch(pair: Pair) -> None:
    """close_now closes at once, with a close_notify the client reads as a clean EOF, and
    wakes a task waiting to receive."""
    server, peer = pair
    woken: list[type[BaseException]] = []

    async def receive() -> None:
        try:
            await server.receive_some()
        except trio.ClosedResourceError as exc:
            woken.append(type(exc))

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()
            with trio.testing.assert_no_checkpoints():
                assert server.try_send(b"goodbye") == 7
                assert server.close_now()
        assert woken == [trio.ClosedResourceError]
        assert await receive_exactly(peer, 7) == b"goodbye"
        assert await peer.receive_some(10) == b""  # close_notify, not a ragged EOF
    assert server.try_send(b"x") == 0
    with pytest.raises(trio.ClosedResourceError):
        await server.send_all(b"")


async def test_aclose_delivers_held_ciphertext_to_a_reader_that_catches_up(pair: Pair) -> None:
    """aclose writes what is still held, then close_notify, while the reader reads."""
    server, peer = pair
    sent = 0
    while taken := server.try_send(b"z" * 4096):
        sent += taken
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.aclose)
            assert await receive_exactly(peer, sent) == b"z" * sent
            assert await peer.receive_some(10) == b""


async def test_a_send_to_a_vanished_peer_breaks_the_stream(pair: Pair) -> None:
    """A peer gone for good: try_send reports nothing taken or the next send_all raises
    BrokenResourceError, and the stream stays broken."""
    server, peer = pair
    await trio.aclose_forcefully(peer)

    async def send_until_broken() -> None:
        while True:
            taken = server.try_send(b"x" * 100)
            await server.send_all(b"" if taken else b"x" * 100)

    with trio.fail_after(TIMEOUT_S):
        with pytest.raises(trio.BrokenResourceError):
            await send_until_broken()
        assert server.try_send(b"x") == 0
        with pytest.raises(trio.BrokenResourceError):
            await server.send_all(b"x")


async def test_try_send_takes_nothing_before_the_handshake(
    ca: trustme.CA, server_context: ssl.SSLContext
) -> None:
    """Before the handshake there is no key to encrypt with: try_send takes nothing."""
    ours, theirs = socket_pair()
    server = TlsStream(ours, server_context)
    assert server.try_send(b"early") == 0
    assert not server.has_unsent
    await server.aclose()
    theirs.close()


async def test_eof_during_the_handshake_is_a_broken_stream(server_context: ssl.SSLContext) -> None:
    """A client that leaves before finishing the handshake fails it with BrokenResourceError
    caused by the SSL error."""
    ours, theirs = socket_pair()
    server = TlsStream(ours, server_context)
    theirs.close()
    with trio.fail_after(TIMEOUT_S), pytest.raises(trio.BrokenResourceError) as info:
        await server.do_handshake()
    assert isinstance(info.value.__cause__, ssl.SSLError)
    await server.aclose()


async def test_a_refused_certificate_reaches_the_client_as_an_alert(
    ca: trustme.CA, tmp_path: Path
) -> None:
    """A client certificate from an unknown CA fails the server's handshake, and the client
    learns why from the alert (not from a bare EOF)."""
    cert = ca.issue_cert("localhost")
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    listener = ListenerConfig(
        type="tls",
        host="127.0.0.1",
        port=0,
        certfile=tmp_path / "server.pem",
        keyfile=tmp_path / "server.key",
        cafile=tmp_path / "ca.pem",
        require_certificate=True,
    )
    context = client_context(ca)
    trustme.CA().issue_cert("intruder@example").configure_cert(context)
    ours, theirs = socket_pair()
    server = TlsStream(ours, server_ssl_context(listener, tmp_path))
    peer = trio.SSLStream(
        trio.SocketStream(trio.socket.from_stdlib_socket(theirs)),
        context,
        server_hostname="localhost",
    )
    client_errors: list[BaseException] = []

    async def client() -> None:
        try:
            await peer.do_handshake()
            await peer.receive_some(10)  # TLS 1.3: the refusal arrives after the client's side
        except trio.BrokenResourceError as exc:
            client_errors.append(exc.__cause__ or exc)

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client)
            with pytest.raises(trio.BrokenResourceError):
                await server.do_handshake()
            await trio.testing.wait_all_tasks_blocked()
            await server.aclose()
    assert "UNKNOWN_CA" in str(client_errors[0]).upper()
    await trio.aclose_forcefully(peer)


async def test_server_context_disables_renegotiation(server_context: ssl.SSLContext) -> None:
    """Renegotiation is off, so after the handshake a write never needs a read."""
    assert server_context.options & ssl.OP_NO_RENEGOTIATION


async def test_tls_context_wraps_the_accept_loops_tcp_stream(
    ca: trustme.CA, server_context: ssl.SSLContext, tmp_path: Path
) -> None:
    """TlsContext.wrap turns the accept loop's TcpStream into a TlsStream over its socket, and
    refuses other streams."""
    cert = ca.issue_cert("localhost")
    cert.private_key_pem.write_to_path(str(tmp_path / "k.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "c.pem"))
    tls = TlsContext(
        ListenerConfig(
            type="tls",
            host="127.0.0.1",
            port=0,
            certfile=tmp_path / "c.pem",
            keyfile=tmp_path / "k.pem",
        ),
        tmp_path,
    )
    ours, theirs = socket_pair()
    wrapped = tls.wrap(TcpStream(ours))
    assert isinstance(wrapped, TlsStream)
    assert isinstance(wrapped, MqttStream)
    assert as_mqtt_stream(wrapped) is wrapped
    a, _b = trio.testing.memory_stream_pair()
    with pytest.raises(TypeError):
        tls.wrap(a)
    await wrapped.aclose()
    theirs.close()


async def test_concurrent_receives_and_sends_are_refused(pair: Pair) -> None:
    """Two receivers, or two senders, at once are a BusyResourceError, as for any trio stream;
    try_send takes nothing while a send_all waits."""
    server, _peer = pair
    while server.try_send(b"w" * 8192):
        pass

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.send_all, b"")
            nursery.start_soon(server.receive_some)
            await trio.testing.wait_all_tasks_blocked()
            assert server.try_send(b"x") == 0
            with pytest.raises(trio.BusyResourceError):
                await server.send_all(b"x")
            with pytest.raises(trio.BusyResourceError):
                await server.wait_send_all_might_not_block()
            with pytest.raises(trio.BusyResourceError):
                await server.receive_some()
            nursery.cancel_scope.cancel()


async def test_websocket_over_tls_stream_sends_in_order_with_try_send(pair: Pair) -> None:
    """wss: WebSocketStream.try_send over a TlsStream takes a whole frame or nothing, sees the
    ciphertext TLS holds (has_unsent), and a slow client reads every message in order."""
    server_tls, peer = pair
    client_ws = WSConnection(ConnectionType.CLIENT)
    server_ws = WSConnection(ConnectionType.SERVER)
    server_ws.receive_data(
        client_ws.send(Request(host="localhost", target="/mqtt", subprotocols=["mqtt"]))
    )
    next(server_ws.events())
    client_ws.receive_data(server_ws.send(AcceptConnection(subprotocol="mqtt")))
    next(client_ws.events())
    server = WebSocketStream(server_tls, server_ws)
    client = WebSocketStream(peer, client_ws)
    chunks = [bytes([i % 251]) * (1 + (i * 7919) % 3000) for i in range(400)]
    expected = b"".join(chunks)
    refused = held = 0

    async def write() -> None:
        nonlocal refused, held
        for chunk in chunks:
            taken = server.try_send(chunk)
            assert taken in (0, len(chunk))  # TLS takes a whole frame or nothing
            refused += not taken
            if not taken:
                await server.send_all(chunk)
            elif server.has_unsent:
                held += 1
                await server.send_all(b"")
        assert not server.has_unsent

    got = bytearray()
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            await trio.testing.wait_all_tasks_blocked()
            while len(got) < len(expected):
                got += await client.receive_some()
    assert bytes(got) == expected
    assert held  # the socket filled up: TLS held ciphertext that send_all(b"") wrote
    assert refused == 0  # ... always before the next try_send, which then found room
    await server.aclose()
