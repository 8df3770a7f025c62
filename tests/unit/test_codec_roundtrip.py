"""Property tests for the codec: round trips, arbitrary stream splits, fuzzing, varints, encoder."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqttd.codec import (
    CLOSED,
    MAX_REMAINING_LENGTH,
    NEED_DATA,
    NO_PROPERTIES,
    Connack,
    Connect,
    Decoder,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    Will,
    encode,
)
from mqttd.codec.encoder import encode_remaining_length
from mqttd.errors import LocalProtocolError, MalformedPacket, ProtocolError, ProtocolViolation
from tests.helpers import wire

#: Hypothesis's per-example deadline is a timing assertion; the test machine is shared and noisy.
no_deadline = settings(deadline=None)

# --- strategies ---------------------------------------------------------------------------------

# Any Unicode scalar value except U+0000 (surrogates cannot be UTF-8 encoded). [MQTT-1.5.3-1/-2]
# No surrogates ([MQTT-1.5.3-1]) and no control characters (Cc: U+0000 [MQTT-1.5.3-2] and the
# U+0001..U+001F, U+007F..U+009F section 1.5.3 lets a receiver refuse, as mqttd does).
_char = st.characters(blacklist_categories=("Cs", "Cc"))
_level_char = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/+#")

utf8_text = st.text(_char, max_size=40)
packet_ids = st.integers(1, 0xFFFF)
qos_levels = st.integers(0, 2)
payloads = st.binary(max_size=300)  # crosses the 1-byte Remaining Length boundary

topic_names = (
    st.lists(st.text(_level_char, max_size=8), min_size=1, max_size=5).map("/".join).filter(bool)
)


@st.composite
def topic_filters(draw: st.DrawFn) -> str:
    """Valid filters: plain levels and whole-level '+', optionally ending in '#'."""
    levels = draw(st.lists(st.one_of(st.just("+"), st.text(_level_char, max_size=8)), max_size=5))
    if draw(st.booleans()) or not levels:
        levels.append("#")
    result = "/".join(levels)
    return result if result else "#"


@st.composite
def publishes(draw: st.DrawFn) -> Publish:
    qos = draw(qos_levels)
    return Publish(
        topic=draw(topic_names),
        payload=draw(payloads),
        qos=qos,
        retain=draw(st.booleans()),
        dup=draw(st.booleans()) if qos else False,
        packet_id=draw(packet_ids) if qos else None,
    )


@st.composite
def connects(draw: st.DrawFn, mqtt31: bool | None = None) -> Connect:
    if mqtt31 is None:
        mqtt31 = draw(st.booleans())
    clean = draw(st.booleans())
    # An empty ClientId is only decodable for 3.1.1 with CleanSession 1. [MQTT-3.1.3-8]
    client_id = draw(st.text(_char, min_size=0 if clean and not mqtt31 else 1, max_size=30))
    will = None
    if draw(st.booleans()):
        will = Will(draw(topic_names), draw(payloads), draw(qos_levels), draw(st.booleans()))
    username = draw(st.none() | utf8_text)
    password = draw(st.none() | st.binary(max_size=40))
    if password is not None and username is None and not mqtt31:
        username = ""  # [MQTT-3.1.2-22] applies to 3.1.1 only
    return Connect(
        client_id=client_id,
        clean_session=clean,
        keepalive=draw(st.integers(0, 0xFFFF)),
        will=will,
        username=username,
        password=password,
        protocol_name="MQIsdp" if mqtt31 else "MQTT",
        protocol_level=3 if mqtt31 else 4,
    )


client_packets = st.one_of(
    publishes(),
    packet_ids.map(Puback),
    packet_ids.map(Pubrec),
    packet_ids.map(Pubrel),
    packet_ids.map(Pubcomp),
    st.builds(
        Subscribe,
        packet_ids,
        st.lists(st.tuples(topic_filters(), qos_levels), min_size=1, max_size=5).map(tuple),
    ),
    st.builds(
        Unsubscribe, packet_ids, st.lists(topic_filters(), min_size=1, max_size=5).map(tuple)
    ),
    st.just(Pingreq()),
    st.just(Disconnect()),
)

server_packets = st.one_of(
    st.builds(Connack, st.just(True), st.just(0)),
    st.builds(Connack, st.just(False), st.integers(0, 5)),
    publishes(),
    packet_ids.map(Puback),
    packet_ids.map(Pubrec),
    packet_ids.map(Pubrel),
    packet_ids.map(Pubcomp),
    st.builds(
        Suback,
        packet_ids,
        st.lists(st.sampled_from([0, 1, 2, 0x80]), max_size=5).map(tuple),
    ),
    packet_ids.map(Unsuback),
    st.just(Pingresp()),
)

all_packets = st.one_of(client_packets, server_packets)


def decode_all(decoder: Decoder, data: bytes) -> list[Packet]:
    """Feed ``data`` and collect packets until NEED_DATA."""
    decoder.receive_data(data)
    out = []
    while (packet := decoder.next_packet()) is not NEED_DATA:
        assert packet is not CLOSED
        out.append(packet)
    return out


def connected_server(mqtt31: bool = False) -> Decoder:
    decoder = Decoder(server=True)
    decode_all(decoder, wire.connect("c", proto=("MQIsdp", 3) if mqtt31 else ("MQTT", 4)))
    return decoder


# --- round trips ----------------------------------------------------------------------------------


@no_deadline
@given(all_packets)
def test_roundtrip_client_side(packet: Packet) -> None:
    """decode(encode(p)) == p for every packet type, with server=False."""
    assert decode_all(Decoder(server=False), encode(packet)) == [packet]


@no_deadline
@given(client_packets)
def test_roundtrip_server_side_after_connect(packet: Packet) -> None:
    """decode(encode(p)) == p with server=True for every client-to-server type after CONNECT."""
    assert decode_all(connected_server(), encode(packet)) == [packet]


@no_deadline
@given(connects())
def test_roundtrip_connect(packet: Connect) -> None:
    """CONNECT (3.1.1 and 3.1) round-trips as the first packet, server side and client side."""
    for server in (True, False):
        decoder = Decoder(server=server)
        assert decode_all(decoder, encode(packet)) == [packet]
        assert decoder.protocol_level == packet.protocol_level


@no_deadline
@given(st.one_of(client_packets, packet_ids.map(lambda pid: Pubrel(pid, dup=True))))
def test_roundtrip_mqtt31_server_side(packet: Packet) -> None:
    """After a 3.1 CONNECT client packets (incl. PUBREL with DUP) round-trip on the server side."""
    assert decode_all(connected_server(mqtt31=True), encode(packet)) == [packet]


@no_deadline
@given(st.lists(all_packets, max_size=12), st.data())
def test_stream_split_anywhere_gives_same_packets(
    packets: list[Packet], data: st.DataObject
) -> None:
    """Splitting the concatenated stream at arbitrary points gives the same packets, then CLOSED."""
    stream = b"".join(encode(p) for p in packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    decoder = Decoder(server=False)
    got: list[Packet] = []
    for start, stop in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        if start == stop:
            continue  # b"" would mean EOF
        got.extend(decode_all(decoder, stream[start:stop]))
    decoder.receive_data(b"")
    assert decoder.next_packet() is CLOSED
    assert got == packets


@no_deadline
@given(st.lists(client_packets, max_size=8), st.integers(1, 7))
def test_server_stream_fed_byte_by_byte(packets: list[Packet], step: int) -> None:
    """A server-side stream fed a few bytes at a time gives the same packets."""
    stream = encode(Connect("c")) + b"".join(encode(p) for p in packets)
    decoder = Decoder(server=True)
    got: list[Packet] = []
    for i in range(0, len(stream), step):
        got.extend(decode_all(decoder, stream[i : i + step]))
    assert got == [Connect("c"), *packets]


# --- fuzzing --------------------------------------------------------------------------------------

_PREFIXES = [b"", wire.connect("c"), wire.connect("c", proto=("MQIsdp", 3))]


# The stream is one binary draw cut at drawn offsets (rather than a list of binary chunks): this
# keeps hypothesis's choice sequences free of bytes/int mix-ups, which trip `python -bb`.
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(_PREFIXES),
    st.binary(max_size=512),
    st.lists(st.integers(0, 512), max_size=8),
    st.booleans(),
    st.integers(0, 300),
)
def test_arbitrary_bytes_only_yield_packets_or_protocol_errors(
    prefix: bytes, noise: bytes, cuts: list[int], server: bool, max_size: int
) -> None:
    """Any bytes, in any chunks, give only packets, NEED_DATA, CLOSED or a ProtocolError."""
    stream = prefix + noise
    offsets = sorted({0, len(stream), *(min(c, len(stream)) for c in cuts)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(offsets) if a < b]
    decoder = Decoder(server=server, max_packet_size=max_size + 40)
    try:
        for chunk in [*chunks, b""]:  # b"" only last: EOF
            decoder.receive_data(chunk)
            while True:
                result = decoder.next_packet()
                if result is NEED_DATA or result is CLOSED:
                    break
                assert type(result) in _PACKET_TYPES
    except (MalformedPacket, ProtocolViolation) as exc:
        # The decoder stays in its error state.
        with pytest.raises(type(exc)):
            decoder.next_packet()
    else:
        assert decoder.next_packet() is CLOSED


@settings(max_examples=200, deadline=None)
@given(all_packets, st.data())
def test_mutated_valid_packets_only_yield_packets_or_protocol_errors(
    packet: Packet, data: st.DataObject
) -> None:
    """Valid packets with a few bytes flipped still give only packets or a ProtocolError."""
    raw = bytearray(encode(packet))
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    decoder = Decoder(server=False)
    try:
        decoder.receive_data(bytes(raw))
        decoder.receive_data(b"")
        while (result := decoder.next_packet()) is not CLOSED:
            assert type(result) in _PACKET_TYPES
    except ProtocolError:
        pass


_PACKET_TYPES = frozenset(
    {
        Connect,
        Connack,
        Publish,
        Puback,
        Pubrec,
        Pubrel,
        Pubcomp,
        Subscribe,
        Suback,
        Unsubscribe,
        Unsuback,
        Pingreq,
        Pingresp,
        Disconnect,
    }
)

# --- Remaining Length varint ----------------------------------------------------------------------


@no_deadline
@given(st.integers(1, MAX_REMAINING_LENGTH))
def test_varint_roundtrip(n: int) -> None:
    """Remaining Lengths 1…268 435 455 encode like the spec (2.2.3) and decode to exactly n."""
    encoded = encode_remaining_length(n)
    assert encoded == wire.varint(n)
    assert len(encoded) == 1 + (n >= 128) + (n >= 16_384) + (n >= 2_097_152)
    header = b"\x30" + encoded
    # The decoder accepts the header with max_packet_size=n and refuses it with n-1: so it
    # decoded exactly n.
    fits = Decoder(server=False, max_packet_size=n)
    fits.receive_data(header)
    assert fits.next_packet() is NEED_DATA
    too_small = Decoder(server=False, max_packet_size=n - 1)
    too_small.receive_data(header)
    with pytest.raises(ProtocolViolation, match="packet_too_large"):
        too_small.next_packet()


def test_varint_zero() -> None:
    """Remaining Length 0 is one zero byte and decodes (PINGREQ)."""
    assert encode_remaining_length(0) == b"\x00"
    assert decode_all(Decoder(server=False), b"\xc0" + encode_remaining_length(0)) == [Pingreq()]


@no_deadline
@given(st.binary(min_size=3, max_size=3), st.integers(0x80, 0xFF), st.binary(max_size=2))
def test_five_byte_varint_is_rejected(three: bytes, fourth: int, rest: bytes) -> None:
    """Any Remaining Length whose 4th byte has the continuation bit is malformed (2.2.3)."""
    header = b"\x30" + bytes(b | 0x80 for b in three) + bytes([fourth]) + rest
    decoder = Decoder(server=False)
    decoder.receive_data(header)
    with pytest.raises(MalformedPacket, match="remaining_length_too_long"):
        decoder.next_packet()


@pytest.mark.parametrize("n", [-1, MAX_REMAINING_LENGTH + 1])
def test_varint_out_of_range_is_a_local_error(n: int) -> None:
    """encode_remaining_length refuses values a 4-byte varint cannot hold."""
    with pytest.raises(LocalProtocolError):
        encode_remaining_length(n)


# --- encoder: exact bytes against the independent wire helpers ---------------------------------


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        (Connect("c"), wire.connect("c")),
        (
            Connect("id", False, 60, Will("w/t", b"bye", 1, True), "u", b"p"),
            wire.connect("id", False, 60, ("w/t", b"bye", 1, True), "u", b"p"),
        ),
        (
            Connect("c", password=b"x", protocol_name="MQIsdp", protocol_level=3),
            wire.connect("c", password=b"x", proto=("MQIsdp", 3)),
        ),
        (Connack(True, 0), wire.connack(1, 0)),
        (Connack(False, 5), wire.connack(0, 5)),
        (
            Publish("a/b", b"x" * 200, 2, True, True, 7),
            wire.publish("a/b", b"x" * 200, 2, True, True, 7),
        ),
        (Publish("ü", b""), wire.publish("ü")),
        (Puback(1), wire.puback(1)),
        (Pubrec(2), wire.pubrec(2)),
        (Pubrel(3), wire.pubrel(3)),
        (Pubrel(3, dup=True), wire.pubrel(3, dup=True)),
        (Pubcomp(65535), wire.pubcomp(65535)),
        (Subscribe(4, (("a/+", 1), ("#", 2))), wire.subscribe(4, [("a/+", 1), ("#", 2)])),
        (Suback(4, (1, 0x80)), wire.suback(4, [1, 0x80])),
        (Suback(4, ()), wire.suback(4, [])),
        (Unsubscribe(5, ("a", "b/#")), wire.unsubscribe(5, ["a", "b/#"])),
        (Unsuback(5), wire.unsuback(5)),
        (Pingreq(), wire.pingreq()),
        (Pingresp(), wire.pingresp()),
        (Disconnect(), wire.disconnect()),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, bytes) else "",
)
def test_encoder_matches_hand_built_bytes(packet: Packet, expected: bytes) -> None:
    """encode() produces exactly the bytes tests/helpers/wire.py builds by hand."""
    assert encode(packet) == expected


class _HugePayload(bytes):
    """A payload that reports the maximum length without allocating 256 MiB."""

    def __len__(self) -> int:
        return MAX_REMAINING_LENGTH


@pytest.mark.parametrize(
    "packet",
    [
        Publish("t", b"", qos=3, packet_id=1),
        Publish("t", b"", qos=-1),
        Publish("t", b"", qos=1),
        Publish("t", b"", qos=2, packet_id=0),
        Publish("t", b"", qos=1, packet_id=65536),
        Publish("t", b"", qos=0, packet_id=1),
        Publish("t", b"", qos=0, dup=True),
        Publish("x" * 65536),
        Publish("é" * 32768),
        Publish(""),
        Publish("a/+"),
        Publish("a/#"),
        Publish("a\x00b"),
        Publish("\ud800"),
        Publish("t", "text"),  # type: ignore[arg-type]
        Publish("t", _HugePayload()),
        Connect("c", password=b"p"),
        Connect("c", protocol_level=5),
        Connect("c", protocol_name="MQIsdp"),
        Connect("c", keepalive=65536),
        Connect("c", will=Will("w", b"m", 3)),
        Connect("c", will=Will("w/#", b"m")),
        Connect("c\x00"),
        Connect(b"c"),  # type: ignore[arg-type]
        Connect("c", will=Will("w", "m")),  # type: ignore[arg-type]
        Connect("c", username="u", password=b"x" * 65536),
        Connack(True, 1),
        Connack(False, 6),
        Puback(0),
        Pubrec(65536),
        Pubrel(-1),
        Pubcomp(None),  # type: ignore[arg-type]
        Subscribe(1, ()),
        Subscribe(1, (("a/#/b", 0),)),
        Subscribe(1, (("a", 3),)),
        Subscribe(0, (("a", 0),)),
        Suback(1, (3,)),
        Unsubscribe(1, ()),
        Unsubscribe(1, ("+a",)),
        Unsuback(0),
    ],
    ids=repr,
)
def test_encoder_refuses_invalid_packets(packet: Packet) -> None:
    """Invalid local packets (QoS, packet ids, topics, lengths, flags) raise LocalProtocolError."""
    with pytest.raises(LocalProtocolError):
        encode(packet)


def test_encoder_accepts_longest_topic() -> None:
    """A topic of exactly 65535 UTF-8 bytes is encodable ([MQTT-4.7.3-3])."""
    packet = Publish("x" * 65535, b"p")
    assert decode_all(Decoder(server=False), encode(packet)) == [packet]


def test_encoder_refuses_non_packets() -> None:
    """encode() of something that is not a packet is a LocalProtocolError."""
    with pytest.raises(LocalProtocolError):
        encode("PINGREQ")  # type: ignore[arg-type]


# --- MQTT 5 fields on 3.1.1/3.1 (see test_codec5.py for MQTT 5 itself) --------------------------


@no_deadline
@given(st.one_of(all_packets, connects()))
def test_mqtt311_packets_decode_with_no_properties(packet: Packet) -> None:
    """3.1.1/3.1 packets carry the shared NO_PROPERTIES and default reason codes: the MQTT 5
    fields never leak into a 3.1.1 connection."""
    [decoded] = decode_all(Decoder(server=False), encode(packet))
    assert getattr(decoded, "properties", NO_PROPERTIES) is NO_PROPERTIES
    assert getattr(decoded, "reason_code", 0) == 0
    assert getattr(decoded, "reason_codes", ()) == ()
    will = getattr(decoded, "will", None)
    assert will is None or will.properties is NO_PROPERTIES


@no_deadline
@given(st.one_of(all_packets, connects()))
def test_versions_3_and_4_encode_alike(packet: Packet) -> None:
    """encode(version=3) writes what encode(version=4) writes (a CONNECT names its own level)."""
    assert encode(packet, version=3) == encode(packet, version=4) == encode(packet)
