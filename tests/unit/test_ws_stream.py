"""WebSocketStream over in-memory streams, driven by a real wsproto client."""

from __future__ import annotations

import trio
import trio.testing
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

from mqttd.transports.ws import WebSocketStream

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
