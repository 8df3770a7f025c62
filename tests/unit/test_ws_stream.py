"""WebSocketStream over in-memory streams, driven by a real wsproto client."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from mqttd.transports.tcp import TcpStream
from mqttd.transports.ws import WebSocketStream, open_websocket_stream

TIMEOUT_S = 10


def handshaken_pair() -> tuple[WSConnection, WSConnection]:
    """A wsproto client and server that completed the opening handshake in memory."""
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(
        client.send(Request(host="localhost", target="/mqtt", subprotocols=["mqtt"]))
    )
    assert isinstance(next(server.events()), Request)
    client.receive_data(server.send(AcceptConnection(subprotocol="mqtt")))
    assert isinstance(next(client.events()), AcceptConnection)
    return client, server


class RawClient:
    """A wsproto client speaking raw bytes on one end of a memory stream."""

    def __init__(self, ws: WSConnection, stream: trio.abc.Stream) -> None:
        self.ws = ws
        self.stream = stream

    async def send(self, event: object) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def next_event(self) -> object:
        while True:
            for event in self.ws.events():
                return event
            data = await self.stream.receive_some(65536)
            self.ws.receive_data(data if data else None)


def make_server_stream(max_message_size: int = 1 << 20) -> tuple[WebSocketStream, RawClient]:
    client, server = handshaken_pair()
    a, b = trio.testing.memory_stream_pair()
    return WebSocketStream(a, server, max_message_size=max_message_size), RawClient(client, b)


async def read_until_eof(stream: WebSocketStream) -> bytes:
    got = bytearray()
    while chunk := await stream.receive_some():
        got += chunk
    return bytes(got)


async def test_packet_split_across_frames_arrives_in_pieces() -> None:
    """[MQTT-6.0.0-2] one MQTT packet split over several messages reads as one byte stream."""
    with trio.fail_after(TIMEOUT_S):
        stream, client = make_server_stream()
        packet = bytes([0x30, 0x07, 0x00, 0x01, 0x74]) + b"hello"
        for i in range(len(packet)):
            await client.send(BytesMessage(data=packet[i : i + 1]))
        await client.send(CloseConnection(code=1000))
        assert await read_until_eof(stream) == packet


async def test_frame_bytes_trickled_one_at_a_time() -> None:
    """A single frame delivered one byte at a time still yields its payload."""
    with trio.fail_after(TIMEOUT_S):
        stream, client = make_server_stream()
        frame = client.ws.send(BytesMessage(data=b"\x10\x0c" + b"x" * 12))
        for i in range(len(frame)):
            await client.stream.send_all(frame[i : i + 1])
        got = bytearray()
        while len(got) < 14:
            got += await stream.receive_some()
        assert got == b"\x10\x0c" + b"x" * 12


async def test_several_packets_in_one_message_and_coalesced_frames() -> None:
    """Several packets in one message and several messages in one read all arrive in order."""
    with trio.fail_after(TIMEOUT_S):
        stream, client = make_server_stream()
        two_packets = b"\xc0\x00" + b"\xe0\x00"
        coalesced = client.ws.send(BytesMessage(data=two_packets)) + client.ws.send(
            BytesMessage(data=b"\xc0\x00")
        )
        await client.stream.send_all(coalesced)
        await client.send(CloseConnection(code=1000))
        assert await read_until_eof(stream) == b"\xc0\x00\xe0\x00\xc0\x00"


async def test_fragmented_message_is_passed_through() -> None:
    """A message sent as continuation fragments reads as its concatenated payload."""
    with trio.fail_after(TIMEOUT_S):
        stream, client = make_server_stream()
        await client.send(BytesMessage(data=b"ab", message_finished=False))
        await client.send(BytesMessage(data=b"cd", message_finished=False))
        await client.send(BytesMessage(data=b"ef", message_finished=True))
        await client.send(CloseConnection(code=1000))
        assert await read_until_eof(stream) == b"abcdef"


async def test_send_all_is_one_binary_message() -> None:
    """send_all() writes exactly one complete binary message."""
    with trio.fail_after(TIMEOUT_S):
        stream, client = make_server_stream()
        await stream.send_all(b"\x20\x02\x00\x00")
        event = await client.next_event()
        assert isinstance(event, BytesMessage)
        assert event.data == b"\x20\x02\x00\x00"
        assert event.message_finished


async def test_text_frame_closes_with_1003() -> None:
    """[MQTT-6.0.0-1] a text frame closes the connection with 1003 and reads as EOF."""
    with trio.fail_after(TIMEOUT_S):
        stream, client = make_server_stream()
        await client.send(BytesMessage(data=b"\xc0"))
        await client.send(TextMessage(data="\x00"))
        assert await read_until_eof(stream) == b"\xc0"
        event = await client.next_event()
        assert isinstance(event, CloseConnection)
        assert event.code == 1003
        assert stream.close_code == 1003


async def test_ping_is_answered_with_pong() -> None:
    """A ping is answered with a pong carrying the same payload."""
    with trio.fail_after(TIMEOUT_S):
        stream, client = make_server_stream()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_until_eof, stream)
            await client.send(Ping(payload=b"hi"))
            event = await client.next_event()
            assert isinstance(event, Pong)
            assert event.payload == b"hi"
            await client.send(CloseConnection(code=1000))


async def test_close_handshake_is_answered_then_eof() -> None:
    """A client close frame is echoed with its code and the stream reads EOF."""
    with trio.fail_after(TIMEOUT_S):
        stream, client = make_server_stream()
        await client.send(CloseConnection(code=1000, reason="bye"))
        assert await stream.receive_some() == b""
        event = await client.next_event()
        assert isinstance(event, CloseConnection)
        assert event.code == 1000
        assert stream.close_code == 1000


async def test_oversize_message_closes_with_1009() -> None:
    """A message over max_message_size (even in fragments) closes with 1009."""
    with trio.fail_after(TIMEOUT_S):
        stream, client = make_server_stream(max_message_size=10)
        await client.send(BytesMessage(data=b"123456", message_finished=False))
        await client.send(BytesMessage(data=b"78901", message_finished=True))
        got = await read_until_eof(stream)
        assert len(got) <= 10
        event = await client.next_event()
        assert isinstance(event, CloseConnection)
        assert event.code == 1009


async def test_message_size_limit_is_per_message() -> None:
    """Many messages each under the limit pass, however much they add up to."""
    with trio.fail_after(TIMEOUT_S):
        stream, client = make_server_stream(max_message_size=10)
        for _ in range(5):
            await client.send(BytesMessage(data=b"0123456789"))
        await client.send(CloseConnection(code=1000))
        assert await read_until_eof(stream) == b"0123456789" * 5


async def test_invalid_frame_closes_with_protocol_error() -> None:
    """An unmasked client frame (invalid per RFC 6455) closes with 1002 and reads as EOF."""
    with trio.fail_after(TIMEOUT_S):
        stream, client = make_server_stream()
        await client.stream.send_all(b"\x82\x02ab")  # binary frame without the mask bit
        assert await read_until_eof(stream) == b""
        event = await client.next_event()
        assert isinstance(event, CloseConnection)
        assert event.code == 1002


async def test_transport_eof_without_close_frame_reads_as_eof() -> None:
    """A dropped transport reads as EOF with the abnormal-closure code 1006."""
    with trio.fail_after(TIMEOUT_S):
        stream, client = make_server_stream()
        await client.send(BytesMessage(data=b"\xc0\x00"))
        await client.stream.aclose()
        assert await read_until_eof(stream) == b"\xc0\x00"
        assert stream.close_code == 1006


async def test_aclose_sends_normal_close() -> None:
    """aclose() sends a 1000 close frame and later sends raise ClosedResourceError."""
    with trio.fail_after(TIMEOUT_S):
        stream, client = make_server_stream()
        await stream.aclose()
        event = await client.next_event()
        assert isinstance(event, CloseConnection)
        assert event.code == 1000
        try:
            await stream.send_all(b"x")
        except trio.ClosedResourceError:
            pass
        else:
            raise AssertionError("send_all after aclose must raise")


async def test_generic_stream_contract() -> None:
    """Server and client WebSocketStreams pass trio's generic two-way stream checks."""

    async def stream_maker() -> tuple[WebSocketStream, WebSocketStream]:
        client, server = handshaken_pair()
        a, b = trio.testing.memory_stream_pair()
        return WebSocketStream(a, server), WebSocketStream(b, client)

    with trio.fail_after(60):
        await trio.testing.check_two_way_stream(stream_maker, None)


# --- added with the wsframes codec -------------------------------------------------------------


async def fake_server(
    stream: trio.abc.Stream, *, pieces: list[bytes], accept: bool = True
) -> WSConnection:
    """Read a client's upgrade request and answer it, in the given pieces after the head:
    ``pieces[0]`` is sent together with the last byte of the response head."""
    server = WSConnection(ConnectionType.SERVER)
    while True:
        server.receive_data(bytes(await stream.receive_some(65536)))
        events = list(server.events())
        if events:
            break
    assert isinstance(events[0], Request)
    if accept:
        head = server.send(AcceptConnection(subprotocol="mqtt"))
    else:
        head = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"
    await stream.send_all(head[:10])  # the head itself arrives in more than one read
    await trio.testing.wait_all_tasks_blocked()
    await stream.send_all(head[10:] + (pieces[0] if pieces else b""))
    for piece in pieces[1:]:
        await stream.send_all(piece)
    return server


async def test_client_twin_reads_frames_sent_with_the_101() -> None:
    """Frames that arrive in the same read as the end of the 101 response reach the stream
    (they are split off the head before wsproto sees it), followed by later ones."""
    with trio.fail_after(TIMEOUT_S):
        a, b = trio.testing.memory_stream_pair()
        first = b"\x82\x04\x20\x02\x00\x00"  # CONNACK in an unmasked binary frame
        second = b"\x82\x02\xd0\x00"  # PINGRESP
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(fake_server, b, pieces=[first, second]))
            stream = await open_websocket_stream(a, host="localhost")
        assert stream.subprotocol == "mqtt"
        got = bytearray()
        while len(got) < 6:
            got += await stream.receive_some()
        assert got == b"\x20\x02\x00\x00\xd0\x00"


async def handshake_error(
    serve: Callable[[trio.abc.Stream], Awaitable[object]],
) -> trio.BrokenResourceError:
    """Run the client twin against ``serve`` (the other end of a memory stream) and return the
    error its handshake raised."""
    a, b = trio.testing.memory_stream_pair()
    error: trio.BrokenResourceError | None = None
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, b)
            try:
                await open_websocket_stream(a, host="localhost")
            except trio.BrokenResourceError as exc:
                error = exc
            finally:
                await a.aclose()
    assert error is not None, "the handshake must fail"
    return error


async def test_client_twin_refused_handshake_is_broken() -> None:
    """A refusal (here 403) is a BrokenResourceError naming the status."""
    error = await handshake_error(partial(fake_server, pieces=[], accept=False))
    assert "403" in str(error)


async def test_client_twin_connection_closed_during_handshake_is_broken() -> None:
    """A server that closes before answering gives BrokenResourceError."""

    async def close_after_request(stream: trio.abc.Stream) -> None:
        await stream.receive_some()
        await stream.aclose()

    error = await handshake_error(close_after_request)
    assert "closed" in str(error)


async def test_client_twin_endless_response_head_is_broken() -> None:
    """A response head that never ends is given up past MAX_RESPONSE_HEAD_BYTES."""

    async def endless_head(stream: trio.abc.Stream) -> None:
        await stream.receive_some()
        await stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\n")
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while True:
                await stream.send_all(b"X-Pad: " + b"a" * 1000 + b"\r\n")

    error = await handshake_error(endless_head)
    assert "too large" in str(error)


async def test_server_role_reads_early_bytes_first() -> None:
    """Frame bytes handed over as ``early`` (what h11 read past the upgrade request) are read
    before anything from the transport."""
    with trio.fail_after(TIMEOUT_S):
        client, server = handshaken_pair()
        a, b = trio.testing.memory_stream_pair()
        early = client.send(BytesMessage(data=b"\xc0\x00"))
        stream = WebSocketStream(a, server, early=early)
        await b.send_all(client.send(BytesMessage(data=b"\xe0\x00")))
        assert await stream.receive_some() == b"\xc0\x00"
        assert await stream.receive_some() == b"\xe0\x00"


async def test_client_role_masks_what_it_sends() -> None:
    """A client-role stream sends masked frames, which a wsproto server accepts."""
    with trio.fail_after(TIMEOUT_S):
        client, server = handshaken_pair()
        a, b = trio.testing.memory_stream_pair()
        stream = WebSocketStream(a, client)
        await stream.send_all(b"\xc0\x00")
        data = await b.receive_some()
        assert data[1] & 0x80  # the mask bit
        server.receive_data(data)
        (event,) = list(server.events())
        assert isinstance(event, BytesMessage)
        assert event.data == b"\xc0\x00"


async def test_oversize_header_is_logged_and_closed_before_payload() -> None:
    """A frame header over the limit closes with 1009 and logs the announced size."""
    with trio.fail_after(TIMEOUT_S):
        stream, client = make_server_stream(max_message_size=100)
        header = client.ws.send(BytesMessage(data=b"x" * 1000))[:8]  # 2 + 2 length + 4 mask
        with capture_logs() as logs:
            await client.stream.send_all(header)
            assert await read_until_eof(stream) == b""
        event = await client.next_event()
        assert isinstance(event, CloseConnection)
        assert event.code == 1009
        assert {"event": "ws_message_too_large", "size": 1000, "limit": 100} in [
            {k: v for k, v in entry.items() if k != "log_level"} for entry in logs
        ]


async def test_protocol_and_text_errors_are_logged() -> None:
    """A protocol error logs ws_protocol_error with its code; a text frame logs its own event."""
    with trio.fail_after(TIMEOUT_S):
        stream, client = make_server_stream()
        with capture_logs() as logs:
            await client.stream.send_all(b"\xc2\x80abcd")  # RSV1 set, masked, empty
            assert await read_until_eof(stream) == b""
        assert [e["code"] for e in logs if e["event"] == "ws_protocol_error"] == [1002]
        stream, client = make_server_stream()
        with capture_logs() as logs:
            await client.send(TextMessage(data="x"))
            assert await read_until_eof(stream) == b""
        assert [e["event"] for e in logs] == ["ws_text_frame_received"]


async def test_close_reason_not_utf8_closes_with_1007() -> None:
    """A close frame whose reason is not UTF-8 is answered with 1007."""
    with trio.fail_after(TIMEOUT_S):
        stream, client = make_server_stream()
        mask = b"\x01\x02\x03\x04"
        payload = b"\x03\xe8\xff"
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        await client.stream.send_all(bytes([0x88, 0x80 | len(payload)]) + mask + masked)
        assert await read_until_eof(stream) == b""
        event = await client.next_event()
        assert isinstance(event, CloseConnection)
        assert event.code == 1007
        assert stream.close_code == 1007


async def test_close_without_status_is_echoed_empty() -> None:
    """A close frame without a code reads as 1005 and is answered by an empty close frame."""
    with trio.fail_after(TIMEOUT_S):
        stream, client = make_server_stream()
        await client.stream.send_all(b"\x88\x80abcd")
        assert await stream.receive_some() == b""
        assert stream.close_code == 1005
        assert await client.stream.receive_some() == b"\x88\x00"


async def test_send_all_after_peer_close_is_broken() -> None:
    """Once the peer closed, send_all raises BrokenResourceError."""
    with trio.fail_after(TIMEOUT_S):
        stream, client = make_server_stream()
        await client.send(CloseConnection(code=1000))
        assert await stream.receive_some() == b""
        with pytest.raises(trio.BrokenResourceError):
            await stream.send_all(b"x")


# --- the MqttStream interface: try_send, has_unsent, close_now ---------------------------------


def tcp_server_stream(small_buffers: bool = True) -> tuple[WebSocketStream, RawClient]:
    """A server WebSocketStream over a TcpStream, and a wsproto client on the socketpair's
    other end (small buffers: a large frame meets a full socket)."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    if small_buffers:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client, server = handshaken_pair()
    return WebSocketStream(TcpStream(ours), server), RawClient(client, TcpStream(theirs))


async def collect_messages(client: RawClient, count: int) -> list[object]:
    """The next ``count`` complete events, with fragments of one message joined."""
    events: list[object] = []
    data = bytearray()
    while len(events) < count:
        event = await client.next_event()
        if isinstance(event, BytesMessage):
            data += event.data
            if event.message_finished:
                events.append(BytesMessage(data=bytes(data)))
                data.clear()
        else:
            events.append(event)
    return events


async def test_try_send_sends_a_whole_frame_without_a_checkpoint() -> None:
    """try_send over a TcpStream writes one binary frame at once and reports all data taken."""
    stream, client = tcp_server_stream(small_buffers=False)
    with trio.fail_after(TIMEOUT_S):
        with trio.testing.assert_no_checkpoints():
            assert stream.try_send(b"\x30\x03\x00\x01t") == 5
        assert not stream.has_unsent
        (event,) = await collect_messages(client, 1)
        assert isinstance(event, BytesMessage)
        assert event.data == b"\x30\x03\x00\x01t"
        await stream.aclose()
        await client.stream.aclose()


async def test_try_send_keeps_a_frames_tail_and_refuses_until_it_is_written() -> None:
    """A frame the socket takes only in part is the stream's: try_send reports it all taken,
    keeps the tail (has_unsent), takes nothing more until send_all(b"") wrote it, and the
    frames arrive whole and in order."""
    stream, client = tcp_server_stream()
    payload = bytes(range(256)) * 1024
    assert stream.try_send(payload) == len(payload)
    assert stream.has_unsent
    assert stream.try_send(b"later") == 0  # must not overtake the tail
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, b"")
            first = await collect_messages(client, 1)
        assert not stream.has_unsent
        assert stream.try_send(b"later") == 5
        second = await collect_messages(client, 1)
        assert [m.data for m in first + second if isinstance(m, BytesMessage)] == [
            payload,
            b"later",
        ]
        await stream.aclose()
        await client.stream.aclose()


async def test_try_send_takes_nothing_when_the_transport_takes_nothing() -> None:
    """On a full socket try_send returns 0 and consumes nothing: the same data sent with
    send_all arrives exactly once."""
    stream, client = tcp_server_stream()
    while stream.transport.try_send(b"\x82\x00" * 2048):  # type: ignore[attr-defined]
        pass  # fill the socket with empty binary frames
    assert stream.try_send(b"once") == 0
    assert not stream.has_unsent
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, b"once")
            events: list[bytes] = []
            while not events or events[-1] != b"once":
                (event,) = await collect_messages(client, 1)
                assert isinstance(event, BytesMessage)
                events.append(bytes(event.data))
        assert events.count(b"once") == 1
        await stream.aclose()
        await client.stream.aclose()


async def test_try_send_over_a_stream_without_try_send_takes_nothing() -> None:
    """Over a memory stream (not an MqttStream) try_send returns 0: send_all does the work."""
    stream, _client = make_server_stream()
    assert stream.try_send(b"x") == 0
    assert not stream.has_unsent
    assert not stream.close_now()  # only aclose can close it


async def test_a_pong_never_lands_inside_a_data_frame() -> None:
    """A ping answered while a data frame's tail is still held: the pong follows the whole
    frame, and try_send takes nothing while the pong is being written."""
    stream, client = tcp_server_stream()
    payload = bytes(range(256)) * 512
    assert stream.try_send(payload) == len(payload)
    assert stream.has_unsent
    refused_during_pong: list[int] = []

    async def serve() -> None:
        await stream.receive_some()  # answers the ping; the pong waits for the full socket

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            await client.send(Ping(payload=b"are you there"))
            await trio.testing.wait_all_tasks_blocked()
            refused_during_pong.append(stream.try_send(b"x"))
            events = await collect_messages(client, 2)
            await client.send(BytesMessage(data=b"\xc0\x00"))  # lets receive_some return
        assert refused_during_pong == [0]
        assert isinstance(events[0], BytesMessage)
        assert events[0].data == payload
        assert isinstance(events[1], Pong)
        assert events[1].payload == b"are you there"
        await stream.aclose()
        await client.stream.aclose()


async def test_try_send_refuses_once_closing() -> None:
    """After the peer's close frame, or after aclose, try_send takes nothing."""
    with trio.fail_after(TIMEOUT_S):
        stream, client = tcp_server_stream(small_buffers=False)
        await client.send(CloseConnection(code=1000))
        assert await stream.receive_some() == b""
        assert stream.try_send(b"x") == 0
        await stream.aclose()
        assert stream.try_send(b"x") == 0
        await client.stream.aclose()


async def test_close_now_sends_a_close_frame_and_closes_the_transport() -> None:
    """close_now writes a 1000 close frame as far as the socket takes it and closes the
    transport without a checkpoint; the client sees the close frame, then EOF."""
    stream, client = tcp_server_stream(small_buffers=False)
    with trio.fail_after(TIMEOUT_S):
        with trio.testing.assert_no_checkpoints():
            assert stream.try_send(b"last") == 4
            assert stream.close_now()
        events = await collect_messages(client, 2)
        assert isinstance(events[0], BytesMessage)
        assert events[0].data == b"last"
        assert isinstance(events[1], CloseConnection)
        assert events[1].code == 1000
        assert stream.close_code == 1000
        with pytest.raises(trio.ClosedResourceError):
            await stream.send_all(b"x")
        await client.stream.aclose()
