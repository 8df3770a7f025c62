"""The sans-IO WebSocket frame codec (mqttd.transports.wsframes) against RFC 6455.

Input frames are built by ``client_frame`` below, a deliberately naive reference encoder (a
per-byte XOR loop) independent of the codec, so it can also build frames the codec must refuse.
Encoder output is checked by wsproto, an independent decoder.
"""

from __future__ import annotations

import struct
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection
from wsproto.events import Ping as WsPing
from wsproto.events import Pong as WsPong

from mqttd.errors import LocalProtocolError, ProtocolError
from mqttd.transports.wsframes import (
    NEED_DATA,
    Close,
    Data,
    FrameDecoder,
    FrameError,
    MessageTooBig,
    Ping,
    Pong,
    encode_binary,
    encode_close,
    encode_frame,
    encode_ping,
    encode_pong,
    is_valid_close_code,
    unmask,
)

MASK = b"\x37\xfa\x21\x3d"


def naive_xor(data: bytes, mask: bytes, offset: int = 0) -> bytes:
    """Reference masking: one byte at a time."""
    return bytes(b ^ mask[(i + offset) % 4] for i, b in enumerate(data))


def client_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = MASK,
    length: int | None = None,
) -> bytes:
    """Build one frame by hand (``mask=None`` for an unmasked one, ``length`` to lie)."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mbit = 0x80 if mask is not None else 0
    if n < 126:
        head = bytes([b0, mbit | n])
    elif n < 1 << 16:
        head = bytes([b0, mbit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([b0, mbit | 127]) + struct.pack("!Q", n)
    if mask is None:
        return head + payload
    return head + mask + naive_xor(payload, mask)


def decode_all(decoder: FrameDecoder, data: bytes) -> list[object]:
    """Feed ``data`` and return every event up to NEED_DATA."""
    decoder.receive_data(data)
    events: list[object] = []
    while (event := decoder.next_event()) is not NEED_DATA:
        events.append(event)
    return events


def decode_until_error(decoder: FrameDecoder, data: bytes) -> tuple[list[object], FrameError]:
    """Feed ``data``, collect events, and return them with the FrameError that must follow."""
    decoder.receive_data(data)
    events: list[object] = []
    while True:
        try:
            event = decoder.next_event()
        except FrameError as exc:
            return events, exc
        assert event is not NEED_DATA, f"no error raised; events: {events}"
        events.append(event)


def joined_data(events: list[object]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Data))


# --- decoding valid frames --------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_binary_frame_of_every_length_form_decodes(size: int) -> None:
    """Payloads using the 7-bit, 16-bit and 64-bit length forms decode to the same bytes."""
    payload = bytes(i % 251 for i in range(size))
    events = decode_all(FrameDecoder(), client_frame(0x2, payload))
    assert events == [Data(payload, True)]


def test_fragmented_message_yields_pieces_with_finished_flag() -> None:
    """A binary message in three fragments yields three Data pieces, the last one finished."""
    stream = (
        client_frame(0x2, b"ab", fin=False)
        + client_frame(0x0, b"cd", fin=False)
        + client_frame(0x0, b"ef")
    )
    events = decode_all(FrameDecoder(), stream)
    assert events == [Data(b"ab", False), Data(b"cd", False), Data(b"ef", True)]


def test_control_frames_between_fragments_are_allowed() -> None:
    """[RFC 6455 5.4] pings and pongs may be injected in the middle of a fragmented message."""
    stream = (
        client_frame(0x2, b"ab", fin=False)
        + client_frame(0x9, b"p1")
        + client_frame(0xA, b"p2")
        + client_frame(0x0, b"cd")
    )
    events = decode_all(FrameDecoder(), stream)
    assert events == [Data(b"ab", False), Ping(b"p1"), Pong(b"p2"), Data(b"cd", True)]


def test_empty_final_fragment_ends_the_message() -> None:
    """A zero-length final continuation frame yields an empty finished piece."""
    stream = client_frame(0x2, b"ab", fin=False) + client_frame(0x0, b"")
    assert decode_all(FrameDecoder(), stream) == [Data(b"ab", False), Data(b"", True)]


def test_ping_and_pong_payloads_are_unmasked() -> None:
    """Ping and pong events carry their unmasked payloads."""
    stream = client_frame(0x9, b"hello") + client_frame(0xA, b"") + client_frame(0x9, b"x" * 125)
    assert decode_all(FrameDecoder(), stream) == [Ping(b"hello"), Pong(b""), Ping(b"x" * 125)]


def test_close_with_code_and_reason() -> None:
    """A close frame yields its code and UTF-8 reason."""
    reason = "bye \u00e9"
    frame = client_frame(0x8, struct.pack("!H", 1001) + reason.encode())
    assert decode_all(FrameDecoder(), frame) == [Close(1001, reason)]


def test_close_without_payload_reports_1005() -> None:
    """[RFC 6455 7.1.5] a close frame without a status code reports 1005."""
    assert decode_all(FrameDecoder(), client_frame(0x8)) == [Close(1005, "")]


def test_nothing_is_decoded_after_close() -> None:
    """After a Close the decoder ignores further frames."""
    decoder = FrameDecoder()
    stream = client_frame(0x8, struct.pack("!H", 1000)) + client_frame(0x2, b"late")
    assert decode_all(decoder, stream) == [Close(1000, "")]
    assert decoder.closed
    assert decode_all(decoder, client_frame(0x2, b"later")) == []


def test_several_frames_in_one_chunk() -> None:
    """Many complete frames in one receive_data all decode, in order."""
    payloads = [bytes([i]) * i for i in range(1, 50)]
    stream = b"".join(client_frame(0x2, p) for p in payloads)
    events = decode_all(FrameDecoder(), stream)
    assert events == [Data(p, True) for p in payloads]


def test_frame_split_at_every_byte() -> None:
    """A masked frame fed one byte at a time yields its whole payload, piece by piece."""
    payload = bytes(range(200))
    frame = client_frame(0x2, payload)
    decoder = FrameDecoder()
    events: list[object] = []
    for i in range(len(frame)):
        events += decode_all(decoder, frame[i : i + 1])
    assert joined_data(events) == payload
    assert all(isinstance(e, Data) for e in events)
    assert [e.message_finished for e in events if isinstance(e, Data)][-1] is True
    assert sum(e.message_finished for e in events if isinstance(e, Data)) == 1


def test_data_payload_is_streamed_not_buffered() -> None:
    """Data payload is handed out as it arrives: only a header's worth stays buffered."""
    payload = b"z" * 100_000
    frame = client_frame(0x2, payload)
    decoder = FrameDecoder()
    got = bytearray()
    for start in range(0, len(frame), 4096):
        got += joined_data(decode_all(decoder, frame[start : start + 4096]))
        assert decoder.buffered == 0
    assert got == payload


def test_client_role_decodes_unmasked_server_frames() -> None:
    """With client=True the decoder takes unmasked frames, as a server sends them."""
    decoder = FrameDecoder(client=True)
    stream = client_frame(0x2, b"abc", mask=None) + client_frame(0x9, b"p", mask=None)
    assert decode_all(decoder, stream) == [Data(b"abc", True), Ping(b"p")]


# --- protocol errors --------------------------------------------------------------------------


def test_unmasked_client_frame_is_1002() -> None:
    """[RFC 6455 5.1] a server must fail the connection on an unmasked client frame."""
    events, exc = decode_until_error(FrameDecoder(), client_frame(0x2, b"ab", mask=None))
    assert events == []
    assert exc.close_code == 1002


def test_masked_server_frame_is_1002_for_a_client() -> None:
    """[RFC 6455 5.1] a client must fail the connection on a masked server frame."""
    _, exc = decode_until_error(FrameDecoder(client=True), client_frame(0x2, b"ab"))
    assert exc.close_code == 1002


@pytest.mark.parametrize("rsv", [1, 2, 4, 7])
def test_reserved_bits_are_1002(rsv: int) -> None:
    """[RFC 6455 5.2] RSV1-3 set without a negotiated extension fail with 1002."""
    _, exc = decode_until_error(FrameDecoder(), client_frame(0x2, b"ab", rsv=rsv))
    assert exc.close_code == 1002


@pytest.mark.parametrize("opcode", [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_unknown_opcode_is_1002(opcode: int) -> None:
    """[RFC 6455 5.2] reserved opcodes fail the connection with 1002."""
    # The payload would be a valid close payload, so no later check can refuse it by chance.
    frame = client_frame(opcode, struct.pack("!H", 1000))
    _, exc = decode_until_error(FrameDecoder(), frame)
    assert exc.close_code == 1002


@pytest.mark.parametrize("opcode", [0x8, 0x9, 0xA])
def test_control_frame_over_125_bytes_is_1002(opcode: int) -> None:
    """[RFC 6455 5.5] a control frame with a 126-byte payload fails with 1002."""
    _, exc = decode_until_error(FrameDecoder(), client_frame(opcode, b"x" * 126))
    assert exc.close_code == 1002


def test_control_frame_length_is_refused_from_the_header() -> None:
    """An over-long control frame is refused from its first two bytes, before its payload."""
    _, exc = decode_until_error(FrameDecoder(), client_frame(0x9, b"x" * 200)[:2])
    assert exc.close_code == 1002


@pytest.mark.parametrize("opcode", [0x8, 0x9, 0xA])
def test_fragmented_control_frame_is_1002(opcode: int) -> None:
    """[RFC 6455 5.5] a control frame without FIN fails with 1002."""
    _, exc = decode_until_error(FrameDecoder(), client_frame(opcode, b"", fin=False))
    assert exc.close_code == 1002


def test_continuation_without_message_is_1002() -> None:
    """[RFC 6455 5.4] a continuation frame with no message started fails with 1002."""
    _, exc = decode_until_error(FrameDecoder(), client_frame(0x0, b"ab"))
    assert exc.close_code == 1002


def test_continuation_after_finished_message_is_1002() -> None:
    """A continuation frame after a message's final frame fails with 1002."""
    stream = client_frame(0x2, b"ab") + client_frame(0x0, b"cd")
    events, exc = decode_until_error(FrameDecoder(), stream)
    assert events == [Data(b"ab", True)]
    assert exc.close_code == 1002


@pytest.mark.parametrize("opcode", [0x1, 0x2])
def test_new_data_frame_inside_fragmented_message_is_1002(opcode: int) -> None:
    """[RFC 6455 5.4] a text or binary frame before the previous message ended is 1002."""
    stream = client_frame(0x2, b"ab", fin=False) + client_frame(opcode, b"cd")
    events, exc = decode_until_error(FrameDecoder(), stream)
    assert events == [Data(b"ab", False)]
    assert exc.close_code == 1002


def test_text_frame_is_1003() -> None:
    """[MQTT-6.0.0-1] a text frame closes with 1003; the data before it is delivered."""
    stream = client_frame(0x2, b"\xc0\x00") + client_frame(0x1, b"hi")
    events, exc = decode_until_error(FrameDecoder(), stream)
    assert events == [Data(b"\xc0\x00", True)]
    assert exc.close_code == 1003


def test_close_payload_of_one_byte_is_1002() -> None:
    """[RFC 6455 5.5.1] a close payload must be empty or start with a 2-byte code."""
    _, exc = decode_until_error(FrameDecoder(), client_frame(0x8, b"\x03"))
    assert exc.close_code == 1002


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535])
def test_invalid_close_code_is_1002(code: int) -> None:
    """[RFC 6455 7.4] reserved, local-only and unassigned close codes fail with 1002."""
    _, exc = decode_until_error(FrameDecoder(), client_frame(0x8, struct.pack("!H", code)))
    assert exc.close_code == 1002


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1011, 1014, 3000, 4999])
def test_valid_close_codes_are_reported(code: int) -> None:
    """Defined, library and private close codes are accepted."""
    events = decode_all(FrameDecoder(), client_frame(0x8, struct.pack("!H", code) + b"ok"))
    assert events == [Close(code, "ok")]


def test_close_reason_invalid_utf8_is_1007() -> None:
    """[RFC 6455 8.1] a close reason that is not UTF-8 fails with 1007."""
    frame = client_frame(0x8, struct.pack("!H", 1000) + b"\xff\xfe")
    _, exc = decode_until_error(FrameDecoder(), frame)
    assert exc.close_code == 1007


def test_64bit_length_with_top_bit_is_1002() -> None:
    """[RFC 6455 5.2] a 64-bit payload length with its most significant bit set is 1002."""
    head = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 1 << 63) + MASK
    _, exc = decode_until_error(FrameDecoder(max_message_size=1 << 64), head)
    assert exc.close_code == 1002


def test_oversize_message_is_1009_from_the_header_alone() -> None:
    """A frame announcing more than max_message_size fails with 1009 before any payload."""
    header = client_frame(0x2, b"x" * 1000)[:8]  # 2 + 2 length bytes + 4 mask bytes
    decoder = FrameDecoder(max_message_size=999)
    _, exc = decode_until_error(decoder, header)
    assert isinstance(exc, MessageTooBig)
    assert exc.close_code == 1009
    assert (exc.size, exc.limit) == (1000, 999)


def test_oversize_fragmented_message_is_1009() -> None:
    """Fragments adding up past max_message_size fail with 1009 at the offending header."""
    stream = client_frame(0x2, b"123456", fin=False) + client_frame(0x0, b"78901")
    events, exc = decode_until_error(FrameDecoder(max_message_size=10), stream)
    assert events == [Data(b"123456", False)]
    assert exc.close_code == 1009


def test_message_of_exactly_max_size_passes_and_limit_is_per_message() -> None:
    """A message of exactly max_message_size passes, and the count restarts per message."""
    stream = b"".join(
        client_frame(0x2, b"01234", fin=False) + client_frame(0x0, b"56789") for _ in range(3)
    )
    events = decode_all(FrameDecoder(max_message_size=10), stream)
    assert joined_data(events) == b"0123456789" * 3


def test_error_is_raised_again_and_later_input_ignored() -> None:
    """After a protocol error every next_event raises the same error."""
    decoder = FrameDecoder()
    _, exc = decode_until_error(decoder, client_frame(0x2, b"a", mask=None))
    decoder.receive_data(client_frame(0x2, b"b"))
    with pytest.raises(FrameError) as again:
        decoder.next_event()
    assert again.value is exc


def test_frame_error_is_a_protocol_error() -> None:
    """FrameError belongs to mqttd's ProtocolError family and carries a reason."""
    _, exc = decode_until_error(FrameDecoder(), client_frame(0x1, b"x"))
    assert isinstance(exc, ProtocolError)
    assert exc.reason


# --- hypothesis: round trips with random fragmentation, masks and split points ----------------

_messages = st.lists(st.binary(max_size=700), min_size=1, max_size=8)


@st.composite
def frame_streams(draw: st.DrawFn) -> tuple[bytes, list[bytes], list[bytes]]:
    """A client byte stream: messages cut into random fragments, random masks, pings between.

    Returns the stream, the messages, and the ping payloads in order.
    """
    messages = draw(_messages)
    out = bytearray()
    pings: list[bytes] = []
    for message in messages:
        cuts = sorted(draw(st.lists(st.integers(0, len(message)), max_size=4)))
        pieces = [message[a:b] for a, b in zip([0, *cuts], [*cuts, len(message)], strict=True)]
        for i, piece in enumerate(pieces):
            opcode = 0x2 if i == 0 else 0x0
            mask = draw(st.binary(min_size=4, max_size=4))
            out += client_frame(opcode, piece, fin=i == len(pieces) - 1, mask=mask)
            if draw(st.booleans()):
                ping = draw(st.binary(max_size=125))
                pings.append(ping)
                out += client_frame(0x9, ping, mask=draw(st.binary(min_size=4, max_size=4)))
    return bytes(out), messages, pings


@settings(max_examples=300, deadline=None)
@given(data=frame_streams(), splits=st.lists(st.integers(0, 10_000), max_size=12))
def test_round_trip_with_random_fragmentation_and_splits(
    data: tuple[bytes, list[bytes], list[bytes]], splits: list[int]
) -> None:
    """Any fragmentation, masks and split points give back the messages and pings in order."""
    stream, messages, pings = data
    points = sorted({min(s, len(stream)) for s in splits})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    decoder = FrameDecoder(max_message_size=max(map(len, messages)))
    got_messages: list[bytes] = []
    got_pings: list[bytes] = []
    current = bytearray()
    for chunk in chunks:
        for event in decode_all(decoder, chunk):
            if isinstance(event, Data):
                current += event.data
                if event.message_finished:
                    got_messages.append(bytes(current))
                    current.clear()
            else:
                assert isinstance(event, Ping)
                got_pings.append(event.payload)
    assert got_messages == messages
    assert got_pings == pings
    assert decoder.buffered == 0


@settings(max_examples=200, deadline=None)
@given(payloads=st.lists(st.binary(max_size=3000), min_size=1, max_size=5), data=st.data())
def test_encoder_output_round_trips_through_the_decoder(
    payloads: list[bytes], data: st.DataObject
) -> None:
    """Masked frames from encode_binary decode back to the same messages."""
    stream = b"".join(
        encode_binary(p, mask=data.draw(st.binary(min_size=4, max_size=4))) for p in payloads
    )
    events = decode_all(FrameDecoder(), stream)
    assert events == [Data(p, True) for p in payloads]


@settings(max_examples=300, deadline=None)
@given(
    payload=st.binary(max_size=2000),
    mask=st.binary(min_size=4, max_size=4),
    offset=st.integers(0, 7),
)
def test_unmask_matches_a_per_byte_xor(payload: bytes, mask: bytes, offset: int) -> None:
    """unmask equals the per-byte definition, on both sides of its size threshold."""
    assert unmask(payload, mask, offset) == naive_xor(payload, mask, offset)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 20))
def test_arbitrary_bytes_give_only_events_or_frame_error(blob: bytes, split: int) -> None:
    """Fuzz: any bytes yield events, NEED_DATA or FrameError, and nothing else."""
    decoder = FrameDecoder(max_message_size=200)
    error: FrameError | None = None
    try:
        for chunk in (blob[:split], blob[split:]):
            for event in decode_all(decoder, chunk):
                assert isinstance(event, Data | Ping | Pong | Close)
    except FrameError as exc:
        error = exc
    assert error is None or error.close_code in (1002, 1003, 1007, 1009)


# --- encoder ----------------------------------------------------------------------------------


def wsproto_client_events(data: bytes) -> list[object]:
    """Decode server frames with wsproto's client, an independent implementation."""
    conn = Connection(ConnectionType.CLIENT)
    conn.receive_data(data)
    return list(conn.events())


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_encode_binary_is_one_unmasked_final_binary_frame(size: int) -> None:
    """encode_binary writes one unmasked final binary frame that wsproto's client reads."""
    payload = bytes(i % 256 for i in range(size))
    frame = encode_binary(payload)
    assert frame[0] == 0x82
    assert frame[1] & 0x80 == 0
    (event,) = wsproto_client_events(frame)
    assert isinstance(event, BytesMessage)
    assert event.data == payload
    assert event.message_finished


def test_encode_binary_takes_bytearray_and_memoryview() -> None:
    """encode_binary accepts any bytes-like payload."""
    assert encode_binary(bytearray(b"ab")) == encode_binary(memoryview(b"ab")) == b"\x82\x02ab"


def test_encode_pong_and_ping_are_read_by_wsproto() -> None:
    """Pong and ping frames carry their payloads."""
    (pong,) = wsproto_client_events(encode_pong(b"hi"))
    assert isinstance(pong, WsPong)
    assert pong.payload == b"hi"
    (ping,) = wsproto_client_events(encode_ping(b"yo"))
    assert isinstance(ping, WsPing)
    assert ping.payload == b"yo"


def test_encode_close_with_code_and_reason() -> None:
    """A close frame carries its code and reason."""
    (event,) = wsproto_client_events(encode_close(1009, "message too big"))
    assert isinstance(event, CloseConnection)
    assert (event.code, event.reason) == (1009, "message too big")


def test_encode_close_without_code_is_empty() -> None:
    """encode_close(None) (or 1005) sends a close frame with no payload."""
    assert encode_close(None) == encode_close(1005) == b"\x88\x00"


def test_masked_frames_are_read_by_a_wsproto_server() -> None:
    """Masked encoder output (the client role) is valid for wsproto's server side."""
    conn = Connection(ConnectionType.SERVER)
    conn.receive_data(
        encode_binary(b"x" * 300, mask=MASK) + encode_close(1000, "bye", mask=b"\x00\x01\x02\x03")
    )
    events = list(conn.events())
    assert isinstance(events[0], BytesMessage)
    assert events[0].data == b"x" * 300
    assert isinstance(events[1], CloseConnection)
    assert (events[1].code, events[1].reason) == (1000, "bye")


@pytest.mark.parametrize(
    ("call", "args"),
    [
        (encode_ping, (b"x" * 126,)),
        (encode_pong, (b"x" * 126,)),
        (encode_close, (1000, "x" * 124)),
        (encode_close, (1005, "reason without a code")),
        (encode_close, (1006,)),
        (encode_close, (999,)),
    ],
)
def test_encoder_refuses_invalid_control_frames(call: object, args: tuple[object, ...]) -> None:
    """Over-long control payloads and unsendable close codes raise LocalProtocolError."""
    with pytest.raises(LocalProtocolError):
        call(*args)  # type: ignore[operator]


def test_encode_frame_refuses_bad_opcode_mask_and_fragmented_control() -> None:
    """encode_frame refuses unknown opcodes, masks that are not 4 bytes, fragmented control."""
    with pytest.raises(LocalProtocolError):
        encode_frame(0x3, b"")
    with pytest.raises(LocalProtocolError):
        encode_frame(0x2, b"", mask=b"abc")
    with pytest.raises(LocalProtocolError):
        encode_frame(0x9, b"", fin=False)


def test_encode_frame_fragments_read_by_wsproto() -> None:
    """Non-final binary and continuation frames form one message for wsproto."""
    data = encode_frame(0x2, b"ab", fin=False) + encode_frame(0x0, b"cd")
    events = wsproto_client_events(data)
    assert [(e.data, e.message_finished) for e in events] == [(b"ab", False), (b"cd", True)]


def test_is_valid_close_code_ranges() -> None:
    """The valid close-code ranges are 1000-1003, 1007-1014 and 3000-4999."""
    valid = {c for c in range(6000) if is_valid_close_code(c)}
    expected = {*range(1000, 1004), *range(1007, 1015), *range(3000, 5000)}
    assert valid == expected


def test_codec_does_not_import_trio() -> None:
    """The frame codec is pure: loading it (without its trio-using package) loads no trio."""
    # mqttd.transports/__init__.py itself imports trio, so load the module file on its own.
    code = (
        "import importlib.util, sys\n"
        "import mqttd\n"
        "path = mqttd.__path__[0] + '/transports/wsframes.py'\n"
        "spec = importlib.util.spec_from_file_location('wsframes_alone', path)\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules['wsframes_alone'] = module\n"
        "spec.loader.exec_module(module)\n"
        "assert module.FrameDecoder\n"
        "print('trio' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"
