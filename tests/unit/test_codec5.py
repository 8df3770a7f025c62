"""The MQTT 5 codec: properties (Table 2-4), reason codes, AUTH, and the v5 packet layouts.

Expected bytes are built here by hand from the MQTT 5.0 spec (on top of the 3.1.1 builders of
``tests/helpers/wire.py``, which do not import ``mqttd``), and Table 2-4 is written out again
below rather than read from ``mqttd.codec``: a slip in the codec's table cannot hide itself.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqttd.codec import (
    AUTH_REASON_CODES,
    CLOSED,
    CONNACK_REASON_CODES,
    DISCONNECT_REASON_CODES,
    NEED_DATA,
    NO_PROPERTIES,
    PROPERTY_PACKETS,
    PUBACK_REASON_CODES,
    PUBREL_REASON_CODES,
    SUBACK_REASON_CODES,
    UNSUBACK_REASON_CODES,
    Auth,
    Connack,
    Connect,
    Decoder,
    Disconnect,
    Packet,
    PacketType,
    Pingreq,
    Pingresp,
    Properties,
    PropertyId,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    ReasonCode,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    Will,
    encode,
    encode_properties,
)
from mqttd.errors import LocalProtocolError, MalformedPacket, ProtocolError, ProtocolViolation
from tests.helpers import wire

no_deadline = settings(deadline=None)

# --- hand-built MQTT 5 bytes ----------------------------------------------------------------------

#: The "packet type" this file uses for the Will Properties of a CONNECT.
WILL = 0
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, DISCONNECT, AUTH = 8, 9, 10, 11, 14, 15
ACKS = (PUBACK, PUBREC, PUBREL, PUBCOMP)
EVERY_CONTEXT = (
    *(WILL, CONNECT, CONNACK, PUBLISH),
    *ACKS,
    *(SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, DISCONNECT, AUTH),
)


def u32(n: int) -> bytes:
    """A Four Byte Integer (1.5.3)."""
    return n.to_bytes(4, "big")


def s(text: str | bytes) -> bytes:
    """A UTF-8 Encoded String (1.5.4)."""
    return wire.string(text)


def b(data: bytes) -> bytes:
    """Binary Data (1.5.6)."""
    return wire.u16(len(data)) + data


def prop(ident: int, value: bytes) -> bytes:
    """One property: a one-byte identifier and its value (2.2.2.2)."""
    return bytes((ident,)) + value


def props(*items: bytes) -> bytes:
    """A Property Length and the properties (2.2.2.1)."""
    body = b"".join(items)
    return wire.varint(len(body)) + body


NONE = b"\x00"  # Property Length 0 [MQTT-2.2.2-1]


def connect5(
    client_id: str | bytes = "c",
    *,
    flags: int = 0x02,
    keepalive: int = 60,
    properties: bytes = NONE,
    tail: bytes = b"",
    level: int = 5,
    first: int = 0x10,
) -> bytes:
    """CONNECT (3.1): ``tail`` is the payload after the ClientID (Will, User Name, Password)."""
    body = s("MQTT") + bytes((level, flags)) + wire.u16(keepalive) + properties
    return wire.packet(first, body + s(client_id) + tail)


def publish5(
    topic: str | bytes,
    payload: bytes = b"",
    *,
    qos: int = 0,
    pid: int | None = None,
    properties: bytes = NONE,
    flags: int | None = None,
) -> bytes:
    """PUBLISH (3.3): topic, packet id (QoS > 0), properties, payload."""
    first = 0x30 | (qos << 1) if flags is None else 0x30 | flags
    packet_id = wire.u16(pid) if pid is not None else b""
    return wire.packet(first, s(topic) + packet_id + properties + payload)


def subscribe5(pid: int, subscriptions: list[tuple[str, int]], properties: bytes = NONE) -> bytes:
    """SUBSCRIBE (3.8): packet id, properties, (filter, options byte) pairs."""
    payload = b"".join(s(f) + bytes((options,)) for f, options in subscriptions)
    return wire.packet(0x82, wire.u16(pid) + properties + payload)


def unsubscribe5(pid: int, filters: list[str], properties: bytes = NONE) -> bytes:
    """UNSUBSCRIBE (3.10)."""
    return wire.packet(0xA2, wire.u16(pid) + properties + b"".join(s(f) for f in filters))


def codes5(first: int, pid: int, codes: list[int], properties: bytes = NONE) -> bytes:
    """SUBACK (first 0x90) or UNSUBACK (0xB0): packet id, properties, reason codes."""
    return wire.packet(first, wire.u16(pid) + properties + bytes(codes))


def connack5(sp: int, code: int, properties: bytes = NONE) -> bytes:
    """CONNACK (3.2): flags, reason code, properties."""
    return wire.packet(0x20, bytes((sp, code)) + properties)


def ack5(first: int, pid: int, tail: bytes = b"") -> bytes:
    """PUBACK/PUBREC/PUBREL/PUBCOMP: packet id, then optionally reason code and properties."""
    return wire.packet(first, wire.u16(pid) + tail)


ACK_FIRST = {PUBACK: 0x40, PUBREC: 0x50, PUBREL: 0x62, PUBCOMP: 0x70}
ACK_CLASS: dict[int, Any] = {PUBACK: Puback, PUBREC: Pubrec, PUBREL: Pubrel, PUBCOMP: Pubcomp}


def decode_all(decoder: Decoder, data: bytes) -> list[Packet]:
    """Feed ``data`` and collect packets until NEED_DATA."""
    decoder.receive_data(data)
    out = []
    while (packet := decoder.next_packet()) is not NEED_DATA:
        assert packet is not CLOSED
        out.append(packet)
    return out


def server5(**kwargs: Any) -> Decoder:
    """A server-side decoder after a minimal MQTT 5 CONNECT."""
    decoder = Decoder(mqtt5=True, **kwargs)
    [packet] = decode_all(decoder, connect5())
    assert packet == Connect("c", keepalive=60, protocol_level=5)
    assert decoder.protocol_level == 5
    return decoder


def client5(**kwargs: Any) -> Decoder:
    """A client-side decoder told the connection speaks MQTT 5."""
    return Decoder(server=False, protocol_level=5, **kwargs)


def decode_one(decoder: Decoder, data: bytes) -> Packet:
    """Feed ``data`` and return the single packet it holds."""
    [packet] = decode_all(decoder, data)
    return packet


def reject(
    decoder: Decoder,
    data: bytes,
    kind: type[ProtocolError],
    reason: str,
    reason_code: int | None,
) -> ProtocolError:
    """Feed ``data``; check the decoder raises ``kind(reason)`` with ``reason_code``."""
    decoder.receive_data(data)
    with pytest.raises(kind) as info:
        decoder.next_packet()
    assert info.value.reason == reason
    assert info.value.reason_code == reason_code
    return info.value


MALFORMED = ReasonCode.MALFORMED_PACKET
PROTOCOL = ReasonCode.PROTOCOL_ERROR

# --- Table 2-4, written out from the spec -------------------------------------------------------

#: identifier -> (Properties field, packet types it may appear in (WILL: Will Properties),
#: valid value bytes, that value decoded)
TABLE_2_4: dict[int, tuple[str, tuple[int, ...], bytes, object]] = {
    0x01: ("payload_format_indicator", (PUBLISH, WILL), b"\x01", 1),
    0x02: ("message_expiry_interval", (PUBLISH, WILL), u32(10), 10),
    0x03: ("content_type", (PUBLISH, WILL), s("text/plain"), "text/plain"),
    0x08: ("response_topic", (PUBLISH, WILL), s("resp/t"), "resp/t"),
    0x09: ("correlation_data", (PUBLISH, WILL), b(b"\x00\x01"), b"\x00\x01"),
    0x0B: ("subscription_identifiers", (PUBLISH, SUBSCRIBE), wire.varint(300), (300,)),
    0x11: ("session_expiry_interval", (CONNECT, CONNACK, DISCONNECT), u32(60), 60),
    0x12: ("assigned_client_identifier", (CONNACK,), s("assigned"), "assigned"),
    0x13: ("server_keep_alive", (CONNACK,), wire.u16(30), 30),
    0x15: ("authentication_method", (CONNECT, CONNACK, AUTH), s("SCRAM"), "SCRAM"),
    0x16: ("authentication_data", (CONNECT, CONNACK, AUTH), b(b"data"), b"data"),
    0x17: ("request_problem_information", (CONNECT,), b"\x00", 0),
    0x18: ("will_delay_interval", (WILL,), u32(5), 5),
    0x19: ("request_response_information", (CONNECT,), b"\x01", 1),
    0x1A: ("response_information", (CONNACK,), s("info"), "info"),
    0x1C: ("server_reference", (CONNACK, DISCONNECT), s("other:1883"), "other:1883"),
    0x1F: (
        "reason_string",
        (CONNACK, *ACKS, SUBACK, UNSUBACK, DISCONNECT, AUTH),
        s("why"),
        "why",
    ),
    0x21: ("receive_maximum", (CONNECT, CONNACK), wire.u16(10), 10),
    0x22: ("topic_alias_maximum", (CONNECT, CONNACK), wire.u16(5), 5),
    0x23: ("topic_alias", (PUBLISH,), wire.u16(1), 1),
    0x24: ("maximum_qos", (CONNACK,), b"\x01", 1),
    0x25: ("retain_available", (CONNACK,), b"\x00", 0),
    0x26: ("user_properties", EVERY_CONTEXT, s("k") + s("v"), (("k", "v"),)),
    0x27: ("maximum_packet_size", (CONNECT, CONNACK), u32(1024), 1024),
    0x28: ("wildcard_subscription_available", (CONNACK,), b"\x01", 1),
    0x29: ("subscription_identifier_available", (CONNACK,), b"\x01", 1),
    0x2A: ("shared_subscription_available", (CONNACK,), b"\x01", 1),
}
REPEATABLE = {0x26: EVERY_CONTEXT, 0x0B: (PUBLISH,)}


def in_context(context: int, block: bytes) -> tuple[Decoder, bytes]:
    """A decoder and the bytes of a minimal packet of ``context`` carrying the property
    ``block`` (Property Length included), on the side that receives that packet type."""
    if context == CONNECT:
        return Decoder(mqtt5=True), connect5(properties=block)
    if context == WILL:
        return Decoder(mqtt5=True), connect5(flags=0x06, tail=block + s("w") + b(b"m"))
    if context == CONNACK:
        return client5(), connack5(0, 0, block)
    if context == PUBLISH:
        return client5(), publish5("t", properties=block)
    if context in ACKS:
        return client5(), ack5(ACK_FIRST[context], 1, b"\x00" + block)
    if context == SUBSCRIBE:
        return server5(), subscribe5(1, [("a", 0)], block)
    if context == SUBACK:
        return client5(), codes5(0x90, 1, [0], block)
    if context == UNSUBSCRIBE:
        return server5(), unsubscribe5(1, ["a"], block)
    if context == UNSUBACK:
        return client5(), codes5(0xB0, 1, [0], block)
    if context == DISCONNECT:
        return server5(), wire.packet(0xE0, b"\x00" + block)
    assert context == AUTH
    return client5(), wire.packet(0xF0, b"\x00" + block)


def properties_of(packet: Packet, context: int) -> Properties:
    """The properties a packet of ``context`` was decoded with."""
    if context == WILL:
        assert isinstance(packet, Connect)
        assert packet.will is not None
        return packet.will.properties
    result = packet.properties  # type: ignore[union-attr]
    assert isinstance(result, Properties)
    return result


def test_table_2_4_matches_the_codec_table() -> None:
    """The codec's PROPERTY_PACKETS says what Table 2-4 says, for all 27 properties."""
    assert {int(k): set(v) for k, v in PROPERTY_PACKETS.items()} == {
        ident: set(row[1]) for ident, row in TABLE_2_4.items()
    }
    assert {int(p) for p in PropertyId} == set(TABLE_2_4)
    assert [row[0] for row in TABLE_2_4.values()] == list(Properties.__slots__)


@pytest.mark.parametrize("context", EVERY_CONTEXT)
@pytest.mark.parametrize("ident", sorted(TABLE_2_4))
def test_each_property_is_accepted_exactly_where_table_2_4_allows_it(
    ident: int, context: int
) -> None:
    """Table 2-4: a property decodes in the packet types listed for it, and anywhere else is a
    Malformed Packet (0x81)."""
    field, allowed, value, decoded = TABLE_2_4[ident]
    items = [prop(ident, value)]
    if ident == 0x16 and context == CONNECT:
        # 3.1.2.11.10: Authentication Data needs an Authentication Method beside it.
        items.insert(0, prop(0x15, s("SCRAM")))
    decoder, data = in_context(context, props(*items))
    if context in allowed:
        packet = decode_one(decoder, data)
        assert getattr(properties_of(packet, context), field) == decoded
    else:
        reject(decoder, data, MalformedPacket, "property_not_allowed", MALFORMED)


@pytest.mark.parametrize(
    ("ident", "context"),
    [(i, row[1][0]) for i, row in TABLE_2_4.items() if i not in REPEATABLE] + [(0x0B, SUBSCRIBE)],
)
def test_a_property_given_twice_is_a_protocol_error(ident: int, context: int) -> None:
    """'It is a Protocol Error to include the ... more than once' (every non-repeatable
    property; the Subscription Identifier of a SUBSCRIBE, 3.8.2.1.2)."""
    field, _, value, _ = TABLE_2_4[ident]
    decoder, data = in_context(context, props(prop(ident, value), prop(ident, value)))
    reject(decoder, data, MalformedPacket, f"duplicate_{field}", PROTOCOL)


@pytest.mark.parametrize("context", EVERY_CONTEXT)
def test_user_properties_repeat_in_order(context: int) -> None:
    """User Property may appear many times; the order is kept ([MQTT-3.3.2-18],
    [MQTT-3.1.3-10]), duplicates included ([MQTT-1.5.7-1] pairs)."""
    pairs = [("b", "2"), ("a", "1"), ("b", "2"), ("", "")]
    block = props(*(prop(0x26, s(k) + s(v)) for k, v in pairs))
    decoder, data = in_context(context, block)
    assert properties_of(decode_one(decoder, data), context).user_properties == tuple(pairs)


def test_subscription_identifiers_repeat_in_a_publish_to_a_client() -> None:
    """A server may send several Subscription Identifiers in one PUBLISH [MQTT-3.3.4-4]."""
    block = props(prop(0x0B, wire.varint(1)), prop(0x0B, wire.varint(268_435_455)))
    packet = decode_one(client5(), publish5("t", properties=block))
    assert packet == Publish("t", properties=Properties(subscription_identifiers=(1, 268_435_455)))


@pytest.mark.parametrize(
    ("ident", "context", "value", "reason", "code"),
    [
        (0x01, PUBLISH, b"\x02", "payload_format_indicator_not_0_or_1", PROTOCOL),
        (0x01, WILL, b"\xff", "payload_format_indicator_not_0_or_1", PROTOCOL),
        (0x17, CONNECT, b"\x02", "request_problem_information_not_0_or_1", PROTOCOL),
        (0x19, CONNECT, b"\x02", "request_response_information_not_0_or_1", PROTOCOL),
        (0x24, CONNACK, b"\x02", "maximum_qos_not_0_or_1", PROTOCOL),
        (0x25, CONNACK, b"\x02", "retain_available_not_0_or_1", PROTOCOL),
        (0x28, CONNACK, b"\x02", "wildcard_subscription_available_not_0_or_1", PROTOCOL),
        (0x29, CONNACK, b"\x02", "subscription_identifier_available_not_0_or_1", PROTOCOL),
        (0x2A, CONNACK, b"\x02", "shared_subscription_available_not_0_or_1", PROTOCOL),
        (0x21, CONNECT, wire.u16(0), "receive_maximum_zero", PROTOCOL),
        (0x21, CONNACK, wire.u16(0), "receive_maximum_zero", PROTOCOL),
        (0x27, CONNECT, u32(0), "maximum_packet_size_zero", PROTOCOL),
        (0x0B, SUBSCRIBE, b"\x00", "subscription_identifiers_zero", PROTOCOL),
        (0x0B, PUBLISH, b"\x00", "subscription_identifiers_zero", PROTOCOL),
        # [MQTT-3.3.2-8] Topic Alias 0: 0x94 Topic Alias invalid.
        (0x23, PUBLISH, wire.u16(0), "topic_alias_zero", ReasonCode.TOPIC_ALIAS_INVALID),
        # [MQTT-3.3.2-14] no wildcards; [MQTT-4.7.3-1] not empty.
        (0x08, PUBLISH, s("a/+"), "invalid_response_topic", PROTOCOL),
        (0x08, WILL, s("a/#"), "invalid_response_topic", PROTOCOL),
        (0x08, PUBLISH, s(""), "invalid_response_topic", PROTOCOL),
    ],
)
def test_out_of_range_property_values(
    ident: int, context: int, value: bytes, reason: str, code: int
) -> None:
    """Values the spec calls a Protocol Error (or a Topic Alias of 0) are refused."""
    decoder, data = in_context(context, props(prop(ident, value)))
    reject(decoder, data, MalformedPacket, reason, code)


@pytest.mark.parametrize(
    ("block", "reason"),
    [
        (props(prop(0x00, b"")), "unknown_property"),
        (props(prop(0x04, b"\x00")), "unknown_property"),
        (props(prop(0x7F, b"\x00")), "unknown_property"),
        # A two-byte identifier: none is defined in MQTT 5.0 (2.2.2.2).
        (props(b"\x81\x01" + b"\x01"), "unknown_property"),
        (wire.varint(10) + prop(0x02, u32(1)), "truncated_properties"),
        (props(b"\x02\x00\x00"), "truncated_property"),  # a Four Byte Integer cut short
        (props(b"\x23\x00"), "truncated_property"),
        (props(b"\x01"), "truncated_property"),
        (props(b"\x03\x00\x05ab"), "truncated_string"),
        (props(b"\x09\x00\x05ab"), "truncated_binary"),
        (props(b"\x26" + s("k")), "truncated_string"),  # a pair with one string
        (props(prop(0x03, b"\x00\x02\xc3\x28")), "invalid_utf8"),  # [MQTT-1.5.4-1]
        (props(prop(0x03, b"\x00\x03\xed\xa0\x80")), "invalid_utf8"),  # U+D800 [MQTT-1.5.4-1]
        (props(prop(0x26, s("k\x00") + s("v"))), "null_character_in_string"),  # [MQTT-1.5.4-2]
        (props(prop(0x26, s("k") + s("\x07"))), "control_character_in_string"),
        (props(prop(0x0B, b"\x80\x00")), "varint_not_minimal"),  # [MQTT-1.5.5-1]
        (props(prop(0x0B, b"\xff\xff\xff\xff\x01")), "varint_too_long"),
        (props(prop(0x0B, b"\x80")), "truncated_varint"),
        (b"\x80\x00", "varint_not_minimal"),  # a Property Length of 0 in two bytes
        (b"", "truncated_publish"),
    ],
)
def test_malformed_property_blocks(block: bytes, reason: str) -> None:
    """Unknown identifiers, lengths past the block or packet, bad UTF-8 and non-minimal
    Variable Byte Integers are a Malformed Packet (0x81)."""
    reject(client5(), publish5("t", properties=block), MalformedPacket, reason, MALFORMED)


def test_property_length_may_not_run_into_the_payload_check() -> None:
    """The Property Length bounds the properties: a value may not run past it into the payload."""
    block = wire.varint(3) + b"\x02\x00\x00"  # Message Expiry Interval needs 4 bytes, 2 given
    data = publish5("t", b"\x00\x00\x00\x00", properties=block)
    reject(client5(), data, MalformedPacket, "truncated_property", MALFORMED)


def test_a_long_property_block_uses_a_multi_byte_property_length() -> None:
    """Property Lengths of two bytes and more decode (1.5.5)."""
    pairs = [(f"key{i}", "v" * 20) for i in range(20)]
    block = props(*(prop(0x26, s(k) + s(v)) for k, v in pairs))
    assert block[0] & 0x80
    packet = decode_one(client5(), publish5("t", b"pay", properties=block))
    assert packet == Publish("t", b"pay", properties=Properties(user_properties=tuple(pairs)))


# --- strategies -----------------------------------------------------------------------------------

_char = st.characters(blacklist_categories=("Cs", "Cc"))
_level_char = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/+#")
utf8_text = st.text(_char, max_size=20)
packet_ids = st.integers(1, 0xFFFF)
qos_levels = st.integers(0, 2)


def binaries(max_size: int) -> st.SearchStrategy[bytes]:
    """Binary data drawn as ints, never as a bytes choice: with ``python -bb`` hypothesis's
    cache would otherwise compare a drawn b"" with a drawn 0 or "" (equal hashes) and raise
    BytesWarning."""
    return st.lists(st.integers(0, 255), max_size=max_size).map(bytes)


# Short ones, and long ones that cross the 1-byte Remaining Length boundary.
payloads = binaries(40) | st.integers(0, 300).map(lambda n: b"\xa5" * n)
bits = st.integers(0, 1)
u16s = st.integers(0, 0xFFFF)
u32s = st.integers(0, 0xFFFF_FFFF)
topic_names = (
    st.lists(st.text(_level_char, max_size=8), min_size=1, max_size=4).map("/".join).filter(bool)
)


@st.composite
def topic_filters(draw: st.DrawFn) -> str:
    """Valid filters: plain levels and whole-level '+', optionally ending in '#'; some shared."""
    levels = draw(st.lists(st.one_of(st.just("+"), st.text(_level_char, max_size=6)), max_size=4))
    if draw(st.booleans()) or not levels:
        levels.append("#")
    result = "/".join(levels) or "#"
    if draw(st.integers(0, 4)) == 0:
        result = "$share/" + draw(st.text(_level_char, min_size=1, max_size=5)) + "/" + result
    return result


VALUES: dict[str, st.SearchStrategy[Any]] = {
    "payload_format_indicator": bits,
    "message_expiry_interval": u32s,
    "content_type": utf8_text,
    "response_topic": topic_names,
    "correlation_data": binaries(20),
    "session_expiry_interval": u32s,
    "assigned_client_identifier": utf8_text,
    "server_keep_alive": u16s,
    "authentication_method": utf8_text,
    "authentication_data": binaries(20),
    "request_problem_information": bits,
    "will_delay_interval": u32s,
    "request_response_information": bits,
    "response_information": utf8_text,
    "server_reference": utf8_text,
    "reason_string": utf8_text,
    "receive_maximum": st.integers(1, 0xFFFF),
    "topic_alias_maximum": u16s,
    "topic_alias": st.integers(1, 0xFFFF),
    "maximum_qos": bits,
    "retain_available": bits,
    "user_properties": st.lists(st.tuples(utf8_text, utf8_text), min_size=1, max_size=3).map(tuple),
    "maximum_packet_size": st.integers(1, 0xFFFF_FFFF),
    "wildcard_subscription_available": bits,
    "subscription_identifier_available": bits,
    "shared_subscription_available": bits,
}


@st.composite
def properties(draw: st.DrawFn, context: int, *, without: frozenset[str] = frozenset()) -> Any:
    """Properties valid in ``context``: a random subset of what Table 2-4 allows there."""
    kwargs: dict[str, Any] = {}
    for ident, (field, allowed, _, _) in TABLE_2_4.items():
        if context not in allowed or field in without or not draw(st.booleans()):
            continue
        if ident == 0x0B:
            most = 3 if context == PUBLISH else 1
            values = st.lists(st.integers(1, 268_435_455), min_size=1, max_size=most)
            kwargs[field] = tuple(draw(values))
        else:
            kwargs[field] = draw(VALUES[field])
    if context == CONNECT and "authentication_data" in kwargs:
        kwargs.setdefault("authentication_method", "m")  # 3.1.2.11.10
    return Properties(**kwargs)


@st.composite
def publishes5(draw: st.DrawFn, *, to_server: bool) -> Publish:
    """PUBLISH, possibly with an empty topic and a Topic Alias; a client's carries no
    Subscription Identifier [MQTT-3.3.4-6]."""
    without = frozenset({"subscription_identifiers"}) if to_server else frozenset()
    props_ = draw(properties(PUBLISH, without=without))
    topic = draw(topic_names)
    if props_.topic_alias is not None and draw(st.booleans()):
        topic = ""
    qos = draw(qos_levels)
    return Publish(
        topic,
        draw(payloads),
        qos,
        draw(st.booleans()),
        draw(st.booleans()) if qos else False,
        draw(packet_ids) if qos else None,
        props_,
    )


@st.composite
def acks5(draw: st.DrawFn) -> Packet:
    """PUBACK, PUBREC, PUBREL or PUBCOMP with a reason code and properties."""
    ptype = draw(st.sampled_from(ACKS))
    codes = PUBACK_REASON_CODES if ptype in (PUBACK, PUBREC) else PUBREL_REASON_CODES
    return ACK_CLASS[ptype](  # type: ignore[no-any-return]
        draw(packet_ids),
        reason_code=draw(st.sampled_from(sorted(codes))),
        properties=draw(properties(ptype)),
    )


@st.composite
def options(draw: st.DrawFn, topic_filter: str) -> int:
    """A valid subscription options byte (3.8.3.1); no No Local on a shared subscription."""
    no_local = draw(bits) if not topic_filter.startswith("$share/") else 0
    return (
        draw(qos_levels)
        | no_local << 2
        | draw(bits) << 3  # Retain As Published
        | draw(st.integers(0, 2)) << 4  # Retain Handling
    )


@st.composite
def subscribes5(draw: st.DrawFn) -> Subscribe:
    """SUBSCRIBE with options bytes and properties."""
    filters = draw(st.lists(topic_filters(), min_size=1, max_size=4))
    subscriptions = tuple((f, draw(options(f))) for f in filters)
    return Subscribe(draw(packet_ids), subscriptions, draw(properties(SUBSCRIBE)))


@st.composite
def connects5(draw: st.DrawFn) -> Connect:
    """MQTT 5 CONNECT: any ClientID (even empty), Will with Will Properties, a Password with or
    without a User Name."""
    will = None
    if draw(st.booleans()):
        will = Will(
            draw(topic_names),
            draw(payloads),
            draw(qos_levels),
            draw(st.booleans()),
            draw(properties(WILL)),
        )
    return Connect(
        client_id=draw(st.text(_char, max_size=30)),
        clean_session=draw(st.booleans()),
        keepalive=draw(u16s),
        will=will,
        username=draw(st.none() | utf8_text),
        password=draw(st.none() | binaries(40)),
        protocol_name="MQTT",
        protocol_level=5,
        properties=draw(properties(CONNECT)),
    )


client_packets5 = st.one_of(
    publishes5(to_server=True),
    acks5(),
    subscribes5(),
    st.builds(
        Unsubscribe,
        packet_ids,
        st.lists(topic_filters(), min_size=1, max_size=4).map(tuple),
        properties(UNSUBSCRIBE),
    ),
    st.just(Pingreq()),
    st.builds(Disconnect, st.sampled_from(sorted(DISCONNECT_REASON_CODES)), properties(DISCONNECT)),
    st.builds(Auth, st.sampled_from(sorted(AUTH_REASON_CODES)), properties(AUTH)),
)

server_packets5 = st.one_of(
    st.builds(Connack, st.just(True), st.just(0), properties(CONNACK)),
    st.builds(
        Connack,
        st.just(False),
        st.sampled_from(sorted(CONNACK_REASON_CODES)),
        properties(CONNACK),
    ),
    publishes5(to_server=False),
    acks5(),
    st.builds(
        Suback,
        packet_ids,
        st.lists(st.sampled_from(sorted(SUBACK_REASON_CODES)), min_size=1, max_size=5).map(tuple),
        properties(SUBACK),
    ),
    st.builds(
        Unsuback,
        packet_ids,
        st.lists(st.sampled_from(sorted(UNSUBACK_REASON_CODES)), min_size=1, max_size=5).map(tuple),
        properties(UNSUBACK),
    ),
    st.just(Pingresp()),
    # [MQTT-3.14.2-2] no Session Expiry Interval on a server's DISCONNECT.
    st.builds(
        Disconnect,
        st.sampled_from(sorted(DISCONNECT_REASON_CODES)),
        properties(DISCONNECT, without=frozenset({"session_expiry_interval"})),
    ),
    st.builds(Auth, st.sampled_from(sorted(AUTH_REASON_CODES)), properties(AUTH)),
)

# --- round trips ----------------------------------------------------------------------------------


@no_deadline
@given(client_packets5)
def test_roundtrip_client_to_server(packet: Packet) -> None:
    """decode(encode(p, version=5)) == p for every client-to-server type, server side."""
    assert decode_all(server5(), encode(packet, version=5)) == [packet]


@no_deadline
@given(server_packets5)
def test_roundtrip_server_to_client(packet: Packet) -> None:
    """decode(encode(p, version=5)) == p for every server-to-client type, client side."""
    assert decode_all(client5(), encode(packet, version=5)) == [packet]


@no_deadline
@given(connects5())
def test_roundtrip_connect5(packet: Connect) -> None:
    """An MQTT 5 CONNECT round-trips as the first packet, server side and client side, and
    switches the decoder to MQTT 5."""
    for server in (True, False):
        decoder = Decoder(server=server, mqtt5=True)
        assert decode_all(decoder, encode(packet, version=5)) == [packet]
        assert decoder.protocol_level == 5


@no_deadline
@given(st.lists(server_packets5, max_size=10), st.data())
def test_stream_split_anywhere_gives_same_packets5(
    packets: list[Packet], data: st.DataObject
) -> None:
    """Splitting an MQTT 5 stream at arbitrary points gives the same packets, then CLOSED."""
    stream = b"".join(encode(p, version=5) for p in packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    decoder = client5()
    got: list[Packet] = []
    for start, stop in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        if start < stop:
            got.extend(decode_all(decoder, stream[start:stop]))
    decoder.receive_data(b"")
    assert decoder.next_packet() is CLOSED
    assert got == packets


@no_deadline
@given(connects5(), st.lists(client_packets5, max_size=6), st.integers(1, 7))
def test_server_stream_fed_a_few_bytes_at_a_time5(
    connect: Connect, packets: list[Packet], step: int
) -> None:
    """A server-side MQTT 5 stream, CONNECT first, fed a few bytes at a time."""
    stream = b"".join(encode(p, version=5) for p in [connect, *packets])
    decoder = Decoder(mqtt5=True)
    got: list[Packet] = []
    for i in range(0, len(stream), step):
        got.extend(decode_all(decoder, stream[i : i + step]))
    assert got == [connect, *packets]


# --- fuzzing --------------------------------------------------------------------------------------

_PACKET_TYPES = frozenset(
    {Connect, Connack, Publish, Puback, Pubrec, Pubrel, Pubcomp, Subscribe, Suback}
    | {Unsubscribe, Unsuback, Pingreq, Pingresp, Disconnect, Auth}
)
_EVERY_REASON_CODE = frozenset(int(code) for code in ReasonCode)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.booleans(),
    st.binary(max_size=512),
    st.lists(st.integers(0, 512), max_size=8),
    st.integers(0, 300),
)
def test_arbitrary_bytes_to_a_v5_decoder_only_yield_packets_or_protocol_errors(
    server: bool, noise: bytes, cuts: list[int], max_size: int
) -> None:
    """Any bytes after an MQTT 5 CONNECT (server side) or to an MQTT 5 client-side decoder give
    only packets, NEED_DATA, CLOSED or a ProtocolError carrying an MQTT 5 reason code."""
    decoder = Decoder(mqtt5=True, max_packet_size=max_size + 40) if server else None
    if decoder is not None:
        decode_all(decoder, connect5())
    else:
        decoder = client5(max_packet_size=max_size + 40)
    offsets = sorted({0, len(noise), *(min(c, len(noise)) for c in cuts)})
    chunks = [noise[x:y] for x, y in itertools.pairwise(offsets) if x < y]
    error: ProtocolError | None = None
    try:
        for chunk in [*chunks, b""]:
            decoder.receive_data(chunk)
            while True:
                result = decoder.next_packet()
                if result is NEED_DATA or result is CLOSED:
                    break
                assert type(result) in _PACKET_TYPES
    except ProtocolError as exc:
        error = exc
    if error is None:
        assert decoder.next_packet() is CLOSED
        return
    assert isinstance(error, MalformedPacket | ProtocolViolation)
    assert error.reason_code in DISCONNECT_REASON_CODES  # it can go in a DISCONNECT
    with pytest.raises(type(error)) as again:
        decoder.next_packet()
    assert again.value.reason_code == error.reason_code


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(server_packets5, connects5()), st.data())
def test_mutated_v5_packets_only_yield_packets_or_protocol_errors(
    packet: Packet, data: st.DataObject
) -> None:
    """Valid MQTT 5 packets with a few bytes changed give only packets or a ProtocolError."""
    raw = bytearray(encode(packet, version=5))
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    decoder = client5() if not isinstance(packet, Connect) else Decoder(mqtt5=True)
    try:
        decoder.receive_data(bytes(raw))
        decoder.receive_data(b"")
        while (result := decoder.next_packet()) is not CLOSED:
            assert type(result) in _PACKET_TYPES
    except ProtocolError:
        pass


# --- CONNECT --------------------------------------------------------------------------------------


def test_connect5_with_everything() -> None:
    """[MQTT-3.1.3-1] ClientID, Will Properties, Will Topic, Will Payload, User Name, Password,
    each as its flag says."""
    data = connect5(
        "dev",
        flags=0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80,  # will QoS 1, will retain
        keepalive=30,
        properties=props(prop(0x11, u32(3600)), prop(0x21, wire.u16(20))),
        tail=props(prop(0x01, b"\x01"), prop(0x18, u32(10)))  # identifier order, as encode()
        + s("will/t")
        + b(b"bye")
        + s("user")
        + b(b"pw"),
    )
    decoder = Decoder(mqtt5=True)
    packet = decode_one(decoder, data)
    assert packet == Connect(
        "dev",
        True,
        30,
        Will(
            "will/t",
            b"bye",
            1,
            True,
            Properties(will_delay_interval=10, payload_format_indicator=1),
        ),
        "user",
        b"pw",
        "MQTT",
        5,
        Properties(session_expiry_interval=3600, receive_maximum=20),
    )
    assert (decoder.protocol_level, decoder.bridge) == (5, False)
    assert encode(packet, version=5) == data


def test_password_without_user_name_is_allowed_in_mqtt5() -> None:
    """MQTT 5 drops 3.1.1's [MQTT-3.1.2-22]: a Password may come without a User Name."""
    data = connect5(flags=0x42, tail=b(b"secret"))
    assert decode_one(Decoder(mqtt5=True), data) == Connect(
        "c", keepalive=60, password=b"secret", protocol_level=5
    )


@pytest.mark.parametrize("clean", [0x00, 0x02])
def test_empty_client_id_is_left_to_the_broker(clean: int) -> None:
    """A zero-length ClientID decodes with either Clean Start: the broker assigns one
    [MQTT-3.1.3-6] or refuses with 0x85 [MQTT-3.1.3-8]."""
    packet = decode_one(Decoder(mqtt5=True), connect5("", flags=clean))
    assert isinstance(packet, Connect)
    assert packet.client_id == ""
    assert packet.clean_session is bool(clean)


def test_bridge_bit_on_level_5() -> None:
    """A bridge's level 0x85 (Mosquitto's try_private) is an MQTT 5 bridge client."""
    decoder = Decoder(mqtt5=True)
    packet = decode_one(decoder, connect5(level=0x85))
    assert isinstance(packet, Connect)
    assert packet.protocol_level == 5
    assert (decoder.protocol_level, decoder.bridge) == (5, True)


def test_level_5_is_refused_like_any_other_level_unless_enabled() -> None:
    """Without mqtt5=True an MQTT 5 CONNECT is refused as before: CONNACK 0x01, no reason
    code (the 3.1.1 answer [MQTT-3.1.2-2])."""
    error = reject(Decoder(), connect5(), ProtocolViolation, "unacceptable_protocol_level", None)
    assert error.connack_code == 1


@pytest.mark.parametrize(("name", "level"), [("MQTT", 6), ("MQTT", 0), ("MQIsdp", 5)])
def test_other_levels_still_get_connack_1_with_mqtt5_on(name: str, level: int) -> None:
    """[MQTT-3.1.2-2] An unsupported level gets CONNACK 0x01 in the 3.1.1 format (the client's
    version is unknown), with no MQTT 5 reason code."""
    data = wire.connect("c", proto=(name, level))
    error = reject(
        Decoder(mqtt5=True), data, ProtocolViolation, "unacceptable_protocol_level", None
    )
    assert error.connack_code == 1


@pytest.mark.parametrize(
    ("data", "kind", "reason", "code"),
    [
        (connect5(first=0x11), MalformedPacket, "invalid_fixed_header_flags", MALFORMED),
        (connect5(flags=0x03), MalformedPacket, "connect_reserved_flag", MALFORMED),
        (
            connect5(flags=0x1E, tail=NONE + s("w") + b(b"m")),
            MalformedPacket,
            "will_qos_3",
            MALFORMED,
        ),
        (connect5(flags=0x0A), MalformedPacket, "will_fields_without_will_flag", MALFORMED),
        (connect5(flags=0x22), MalformedPacket, "will_fields_without_will_flag", MALFORMED),
        (
            connect5(flags=0x06, tail=NONE + s("w/#") + b(b"m")),
            MalformedPacket,
            "wildcard_in_topic_name",
            MALFORMED,
        ),
        # A 3.1.1-style Will (no Will Properties): 00 read as Property Length, then nonsense.
        (
            connect5(flags=0x06, tail=s("w") + b(b"m")),
            MalformedPacket,
            "truncated_string",
            MALFORMED,
        ),
        (connect5(flags=0x82), MalformedPacket, "truncated_string", MALFORMED),
        (connect5(tail=b"x"), MalformedPacket, "trailing_bytes", MALFORMED),
        (connect5(properties=b""), MalformedPacket, "truncated_string", MALFORMED),
        (connect5(b"\xff"), MalformedPacket, "invalid_utf8", MALFORMED),
        (
            connect5(properties=props(prop(0x16, b(b"d")))),
            ProtocolViolation,
            "authentication_data_without_method",
            PROTOCOL,
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_connect5_errors_carry_reason_codes(
    data: bytes, kind: type[ProtocolError], reason: str, code: int
) -> None:
    """Once a CONNECT names MQTT 5, its errors carry the reason code for the CONNACK
    [MQTT-3.1.2-3] [MQTT-3.1.2-11] [MQTT-3.1.2-12] [MQTT-3.1.2-13] [MQTT-3.1.3-1]."""
    error = reject(Decoder(mqtt5=True), data, kind, reason, code)
    assert error.connack_code is None


def test_oversized_v5_connect_has_no_reason_code_yet() -> None:
    """A CONNECT over the limit is refused from its fixed header, before its version is known."""
    reject(
        Decoder(mqtt5=True, max_packet_size=10),
        b"\x10\x0b",
        ProtocolViolation,
        "packet_too_large",
        None,
    )


def test_packet_too_large_after_v5_connect_is_0x95() -> None:
    """Above max_packet_size on an MQTT 5 connection: 0x95 Packet too large."""
    reject(server5(max_packet_size=50), b"\x30\x33", ProtocolViolation, "packet_too_large", 0x95)


def test_second_connect_and_auth_before_connect() -> None:
    """A second CONNECT is a Protocol Error (0x82) [MQTT-3.1.0-2]; AUTH before any CONNECT is
    refused (its version is not known yet) [MQTT-3.1.0-1]."""
    reject(server5(), connect5(), ProtocolViolation, "second_connect", PROTOCOL)
    reject(Decoder(mqtt5=True), b"\xf0\x00", MalformedPacket, "reserved_packet_type", None)


# --- PUBLISH --------------------------------------------------------------------------------------


def test_publish5_with_properties_after_the_packet_id() -> None:
    """3.3.2: Topic Name, Packet Identifier, Properties, then the payload."""
    block = props(prop(0x02, u32(30)), prop(0x03, s("json")), prop(0x09, b(b"id")))
    data = publish5("a/b", b"{}", qos=1, pid=7, properties=block)
    expected = Publish(
        "a/b",
        b"{}",
        1,
        packet_id=7,
        properties=Properties(
            message_expiry_interval=30, content_type="json", correlation_data=b"id"
        ),
    )
    assert decode_one(server5(), data) == expected
    assert encode(expected, version=5) == data


def test_publish5_without_properties_shares_no_properties() -> None:
    """A Property Length of 0 gives the shared NO_PROPERTIES object."""
    packet = decode_one(server5(), publish5("t", b"x"))
    assert isinstance(packet, Publish)
    assert packet.properties is NO_PROPERTIES


def test_empty_topic_with_topic_alias_is_left_to_the_broker() -> None:
    """A zero-length Topic Name with a Topic Alias decodes as "" (3.3.2.3.4): the broker maps
    the alias."""
    data = publish5("", b"x", properties=props(prop(0x23, wire.u16(3))))
    assert decode_one(server5(), data) == Publish("", b"x", properties=Properties(topic_alias=3))


def test_empty_topic_without_topic_alias_is_a_protocol_error() -> None:
    """3.3.2.1: a zero-length Topic Name and no Topic Alias is a Protocol Error."""
    reject(server5(), publish5("", b"x"), ProtocolViolation, "empty_topic_without_alias", PROTOCOL)


def test_subscription_identifier_from_a_client_is_a_protocol_error() -> None:
    """[MQTT-3.3.4-6] A PUBLISH from a client carries no Subscription Identifier."""
    data = publish5("t", properties=props(prop(0x0B, wire.varint(1))))
    reject(server5(), data, MalformedPacket, "subscription_identifier_from_client", PROTOCOL)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (publish5("a/+"), "wildcard_in_topic_name"),  # [MQTT-3.3.2-2]
        (publish5("t", qos=1, pid=0), "zero_packet_id"),
        (publish5(b"\xc3\x28"), "invalid_utf8"),  # [MQTT-1.5.4-1]
        (publish5("a\x00"), "null_character_in_string"),  # [MQTT-1.5.4-2]
        (wire.packet(0x32, s("t") + b"\x00"), "truncated_publish"),
        (wire.packet(0x30, s("t")), "truncated_publish"),  # no Property Length
        (wire.packet(0x30, b"\x00"), "truncated_publish"),
    ],
)
def test_malformed_publish5(data: bytes, reason: str) -> None:
    """Malformed PUBLISH packets are refused with 0x81."""
    reject(server5(), data, MalformedPacket, reason, MALFORMED)


@pytest.mark.parametrize(("first", "reason"), [(0x36, "publish_qos_3"), (0x38, "dup_on_qos0")])
def test_publish5_fixed_header_rules(first: int, reason: str) -> None:
    """[MQTT-3.3.1-4] QoS 3 and [MQTT-3.3.1-2] DUP on QoS 0 are refused at the fixed header."""
    reject(server5(), bytes((first,)), MalformedPacket, reason, MALFORMED)


# --- acknowledgements ---------------------------------------------------------------------------


@pytest.mark.parametrize("ptype", ACKS)
def test_ack_remaining_length_2_3_and_more(ptype: int) -> None:
    """3.4.2.1 and twins: Remaining Length 2 means reason 0x00 and no properties; 3 a reason
    code and no properties; more a reason code and properties."""
    first, cls = ACK_FIRST[ptype], ACK_CLASS[ptype]
    code = 0x80 if ptype in (PUBACK, PUBREC) else 0x92
    decoder = client5()
    assert decode_one(decoder, ack5(first, 9)) == cls(9)
    assert decode_one(decoder, ack5(first, 9, bytes((code,)))) == cls(9, reason_code=code)
    block = props(prop(0x1F, s("no")), prop(0x26, s("k") + s("v")))
    expected = cls(
        9,
        reason_code=code,
        properties=Properties(reason_string="no", user_properties=(("k", "v"),)),
    )
    assert decode_one(decoder, ack5(first, 9, bytes((code,)) + block)) == expected
    assert encode(cls(9), version=5) == ack5(first, 9)
    assert encode(cls(9, reason_code=code), version=5) == ack5(first, 9, bytes((code,)))
    assert encode(expected, version=5) == ack5(first, 9, bytes((code,)) + block)


@pytest.mark.parametrize("ptype", ACKS)
def test_ack_rules5(ptype: int) -> None:
    """Fixed header: under 2 bytes is refused at once; reason codes outside the packet's table
    ([MQTT-3.4.2-1] [MQTT-3.5.2-1] [MQTT-3.6.2-1] [MQTT-3.7.2-1]); trailing bytes; PUBREL
    flags [MQTT-3.6.1-1]."""
    first = ACK_FIRST[ptype]
    reject(client5(), bytes((first, 1)), MalformedPacket, "invalid_remaining_length", MALFORMED)
    reject(client5(), bytes((first, 0)), MalformedPacket, "invalid_remaining_length", MALFORMED)
    bad = 0x10 if ptype in (PUBREL, PUBCOMP) else 0x92
    reject(
        client5(), ack5(first, 1, bytes((bad,))), MalformedPacket, "invalid_reason_code", MALFORMED
    )
    reject(client5(), ack5(first, 1, b"\x00\x00\x00"), MalformedPacket, "trailing_bytes", MALFORMED)
    reject(client5(), ack5(first, 0), MalformedPacket, "zero_packet_id", MALFORMED)
    if ptype == PUBREL:
        reject(
            server5(), b"\x60\x02\x00\x01", MalformedPacket, "invalid_fixed_header_flags", MALFORMED
        )
        reject(
            server5(), b"\x6a\x02\x00\x01", MalformedPacket, "invalid_fixed_header_flags", MALFORMED
        )


def test_acks_reason_codes_accepted() -> None:
    """Every reason code of each ack's table decodes."""
    for ptype in ACKS:
        codes = PUBACK_REASON_CODES if ptype in (PUBACK, PUBREC) else PUBREL_REASON_CODES
        for code in codes:
            packet = decode_one(client5(), ack5(ACK_FIRST[ptype], 1, bytes((code,))))
            assert packet.reason_code == code  # type: ignore[union-attr]


# --- SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK ----------------------------------------------------


def test_subscribe5_keeps_the_whole_options_byte() -> None:
    """3.8.3.1: the int is the subscription options byte (QoS, No Local, Retain As Published,
    Retain Handling), and a Subscription Identifier rides along."""
    subs = [("a/#", 0x2E), ("b", 0x01), ("$share/g/c", 0x1A)]
    block = props(prop(0x0B, wire.varint(42)))
    packet = decode_one(server5(), subscribe5(3, subs, block))
    expected = Subscribe(3, tuple(subs), Properties(subscription_identifiers=(42,)))
    assert packet == expected
    assert encode(expected, version=5) == subscribe5(3, subs, block)


@pytest.mark.parametrize(
    ("opts", "kind", "reason", "code"),
    [
        (0x40, MalformedPacket, "subscription_options_reserved_bits", MALFORMED),  # [MQTT-3.8.3-5]
        (0x80, MalformedPacket, "subscription_options_reserved_bits", MALFORMED),
        (0x03, MalformedPacket, "invalid_requested_qos", PROTOCOL),  # 3.8.3.1
        (0x30, MalformedPacket, "retain_handling_3", PROTOCOL),  # 3.8.3.1
    ],
)
def test_subscription_options_rules(
    opts: int, kind: type[ProtocolError], reason: str, code: int
) -> None:
    """Reserved bits 6-7, QoS 3 and Retain Handling 3 are refused."""
    reject(server5(), subscribe5(1, [("a", opts)]), kind, reason, code)


def test_no_local_on_a_shared_subscription_is_a_protocol_error() -> None:
    """[MQTT-3.8.3-4] No Local on a $share/ filter is a Protocol Error; elsewhere it is fine."""
    data = subscribe5(1, [("$share/g/a", 0x04)])
    reject(server5(), data, ProtocolViolation, "no_local_on_shared_subscription", PROTOCOL)
    assert decode_one(server5(), subscribe5(1, [("$sharex/a", 0x04)])) == Subscribe(
        1, (("$sharex/a", 0x04),)
    )


@pytest.mark.parametrize(
    ("data", "kind", "reason", "code"),
    [
        (
            subscribe5(1, []),
            ProtocolViolation,
            "subscribe_without_filters",
            PROTOCOL,
        ),  # [MQTT-3.8.3-2]
        (wire.packet(0x82, wire.u16(1)), MalformedPacket, "truncated_properties", MALFORMED),
        (
            wire.packet(0x82, wire.u16(1) + NONE + s("a")),
            MalformedPacket,
            "truncated_subscribe",
            MALFORMED,
        ),
        (
            subscribe5(1, [("a/#/b", 0)]),
            MalformedPacket,
            "misplaced_multi_level_wildcard",
            MALFORMED,
        ),
        (
            unsubscribe5(1, []),
            ProtocolViolation,
            "unsubscribe_without_filters",
            PROTOCOL,
        ),  # [MQTT-3.10.3-2]
        (unsubscribe5(1, ["a", ""]), MalformedPacket, "empty_topic_filter", MALFORMED),
        (
            wire.packet(0xA2, wire.u16(1) + NONE + b"\x00"),
            MalformedPacket,
            "truncated_string",
            MALFORMED,
        ),
        (
            wire.packet(0x80, wire.u16(1) + NONE + s("a") + b"\x00"),
            MalformedPacket,
            "invalid_fixed_header_flags",
            MALFORMED,
        ),  # [MQTT-3.8.1-1]
        (
            wire.packet(0xA0, wire.u16(1) + NONE + s("a")),
            MalformedPacket,
            "invalid_fixed_header_flags",
            MALFORMED,
        ),  # [MQTT-3.10.1-1]
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_subscribe_and_unsubscribe5_errors(
    data: bytes, kind: type[ProtocolError], reason: str, code: int
) -> None:
    """SUBSCRIBE and UNSUBSCRIBE errors on MQTT 5."""
    decoder = server5()
    decoder.receive_data(data)
    with pytest.raises(kind) as info:
        decoder.next_packet()
    if reason != "misplaced_multi_level_wildcard":  # the wording is mqttd.topics'
        assert info.value.reason == reason
    assert info.value.reason_code == code


def test_suback_and_unsuback5() -> None:
    """SUBACK and UNSUBACK carry properties, then one reason code per filter
    ([MQTT-3.9.3-1], [MQTT-3.11.3-1]); codes outside their tables are refused
    ([MQTT-3.9.3-2], [MQTT-3.11.3-2]); at least one code."""
    block = props(prop(0x1F, s("r")))
    suback = Suback(5, (0, 1, 2, 0x8F, 0xA2), Properties(reason_string="r"))
    assert decode_one(client5(), codes5(0x90, 5, [0, 1, 2, 0x8F, 0xA2], block)) == suback
    assert encode(suback, version=5) == codes5(0x90, 5, [0, 1, 2, 0x8F, 0xA2], block)
    unsuback = Unsuback(5, (0, 0x11, 0x87))
    assert decode_one(client5(), codes5(0xB0, 5, [0, 0x11, 0x87])) == unsuback
    assert encode(unsuback, version=5) == codes5(0xB0, 5, [0, 0x11, 0x87])
    reject(client5(), codes5(0x90, 5, [0x11]), MalformedPacket, "invalid_reason_code", MALFORMED)
    reject(client5(), codes5(0xB0, 5, [0x01]), MalformedPacket, "invalid_reason_code", MALFORMED)
    reject(
        client5(),
        codes5(0x90, 5, [], block),
        ProtocolViolation,
        "suback_without_reason_codes",
        PROTOCOL,
    )
    reject(
        client5(),
        codes5(0xB0, 5, [], block),
        ProtocolViolation,
        "unsuback_without_reason_codes",
        PROTOCOL,
    )
    reject(client5(), codes5(0x90, 5, []), MalformedPacket, "invalid_remaining_length", MALFORMED)
    reject(client5(), codes5(0xB0, 5, []), MalformedPacket, "invalid_remaining_length", MALFORMED)


# --- CONNACK, DISCONNECT, AUTH, PINGs -----------------------------------------------------------


def test_connack5() -> None:
    """CONNACK: flags, reason code, properties [MQTT-3.2.2-1] [MQTT-3.2.2-8]."""
    block = props(prop(0x12, s("auto-1")), prop(0x13, wire.u16(30)), prop(0x24, b"\x01"))
    expected = Connack(
        False,
        0,
        Properties(assigned_client_identifier="auto-1", server_keep_alive=30, maximum_qos=1),
    )
    assert decode_one(client5(), connack5(0, 0, block)) == expected
    assert encode(expected, version=5) == connack5(0, 0, block)
    assert decode_one(client5(), connack5(0, 0x9C)) == Connack(False, 0x9C)
    reject(client5(), connack5(2, 0), MalformedPacket, "connack_reserved_flags", MALFORMED)
    reject(client5(), connack5(0, 0x01), MalformedPacket, "invalid_reason_code", MALFORMED)
    reject(client5(), b"\x20\x02\x00\x00", MalformedPacket, "invalid_remaining_length", MALFORMED)


def test_connack5_trailing_bytes() -> None:
    """Bytes after a CONNACK's properties are malformed."""
    data = wire.packet(0x20, b"\x00\x00" + NONE + b"x")
    reject(client5(), data, MalformedPacket, "trailing_bytes", MALFORMED)


@pytest.mark.parametrize(("first", "cls"), [(0xE0, Disconnect), (0xF0, Auth)])
def test_disconnect_and_auth_short_forms(first: int, cls: Any) -> None:
    """3.14.2.1 / 3.15.2.1: Remaining Length 0 is reason 0x00 with no properties; 1 a reason
    code alone; more a reason code and properties."""
    code = 0x8E if cls is Disconnect else 0x18
    decoder = server5() if cls is Disconnect else client5()
    assert decode_one(decoder, bytes((first, 0))) == cls()
    assert decode_one(decoder, bytes((first, 1, code))) == cls(code)
    block = props(prop(0x1F, s("bye")))
    expected = cls(code, Properties(reason_string="bye"))
    assert decode_one(decoder, wire.packet(first, bytes((code,)) + block)) == expected
    assert encode(cls(), version=5) == bytes((first, 0))
    assert encode(cls(code), version=5) == bytes((first, 1, code))
    assert encode(cls(0), version=5) == bytes((first, 0))
    assert encode(expected, version=5) == wire.packet(first, bytes((code,)) + block)


@pytest.mark.parametrize(
    ("data", "kind", "reason", "code"),
    [
        (b"\xe1\x00", MalformedPacket, "invalid_fixed_header_flags", MALFORMED),  # [MQTT-3.14.1-1]
        (b"\xf2\x00", MalformedPacket, "invalid_fixed_header_flags", MALFORMED),  # [MQTT-3.15.1-1]
        (b"\xe0\x01\x01", MalformedPacket, "invalid_reason_code", MALFORMED),  # [MQTT-3.14.2-1]
        (b"\xf0\x01\x04", MalformedPacket, "invalid_reason_code", MALFORMED),  # [MQTT-3.15.2-1]
        (b"\xe0\x03\x00\x00\x00", MalformedPacket, "trailing_bytes", MALFORMED),
        (b"\xf0\x02\x19\x05", MalformedPacket, "truncated_properties", MALFORMED),
        (b"\xc0\x01\x00", MalformedPacket, "invalid_remaining_length", MALFORMED),
        (b"\x20", MalformedPacket, "server_only_packet_type", MALFORMED),
        (b"\x90", MalformedPacket, "server_only_packet_type", MALFORMED),
    ],
)
def test_disconnect_auth_and_ping_errors_server_side(
    data: bytes, kind: type[ProtocolError], reason: str, code: int
) -> None:
    """DISCONNECT and AUTH rules, PINGREQ's fixed length, server-only types, on MQTT 5."""
    reject(server5(), data, kind, reason, code)


def test_session_expiry_in_a_server_disconnect_is_a_protocol_error() -> None:
    """[MQTT-3.14.2-2] A Server's DISCONNECT carries no Session Expiry Interval (a client's may)."""
    data = wire.packet(0xE0, b"\x00" + props(prop(0x11, u32(0))))
    reject(client5(), data, MalformedPacket, "session_expiry_from_server", PROTOCOL)
    assert decode_one(server5(), data) == Disconnect(0, Properties(session_expiry_interval=0))


def test_pings5() -> None:
    """PINGREQ and PINGRESP are unchanged in MQTT 5."""
    assert decode_one(server5(), wire.pingreq()) == Pingreq()
    assert decode_one(client5(), wire.pingresp()) == Pingresp()
    assert encode(Pingreq(), version=5) == wire.pingreq()
    assert encode(Pingresp(), version=5) == wire.pingresp()


def test_auth_is_refused_outside_mqtt5() -> None:
    """AUTH (type 15) exists only in MQTT 5: on 3.1.1 it is a reserved type, and encode()
    refuses it for versions 4 and 3."""
    decoder = Decoder()
    decode_all(decoder, wire.connect("c"))
    reject(decoder, b"\xf0\x00", MalformedPacket, "reserved_packet_type", None)
    reject(Decoder(server=False), b"\xf0\x00", MalformedPacket, "reserved_packet_type", None)
    for version in (3, 4):
        with pytest.raises(LocalProtocolError):
            encode(Auth(), version=version)


def test_errors_before_mqtt5_carry_no_reason_code() -> None:
    """On 3.1.1 connections ProtocolError.reason_code stays None."""
    decoder = Decoder(mqtt5=True)
    decode_all(decoder, wire.connect("c"))
    reject(decoder, b"\x36", MalformedPacket, "publish_qos_3", None)


def test_error_state_keeps_the_reason_code() -> None:
    """After an error every next_packet() raises again with the same reason code."""
    decoder = server5()
    reject(decoder, publish5("", b"x"), ProtocolViolation, "empty_topic_without_alias", PROTOCOL)
    for _ in range(2):
        with pytest.raises(ProtocolViolation) as info:
            decoder.next_packet()
        assert info.value.reason_code == PROTOCOL


def test_client_side_protocol_level_argument() -> None:
    """protocol_level is for client-side decoders only, and must be 5, 4 or 3."""
    assert Decoder(server=False, protocol_level=5).protocol_level == 5
    assert Decoder(server=False, protocol_level=3).protocol_level == 3
    for bad in ({"server": True, "protocol_level": 5}, {"server": False, "protocol_level": 6}):
        with pytest.raises(LocalProtocolError):
            Decoder(**bad)  # type: ignore[arg-type]


def test_client_side_31_decoder_accepts_dup_on_pubrel() -> None:
    """A client-side decoder told MQTT 3.1 uses the 3.1 rules (DUP on PUBREL)."""
    assert decode_one(Decoder(server=False, protocol_level=3), b"\x6a\x02\x00\x01") == Pubrel(
        1, True
    )


def test_counts_include_auth() -> None:
    """The shared counters count AUTH packets (type 15) too."""
    counts = [0] * 33
    decoder = client5(counts=counts)
    decode_all(decoder, b"\xf0\x00" + b"\xf0\x01\x18")
    assert (counts[15], counts[31]) == (2, 5)


# --- encoder --------------------------------------------------------------------------------------


def test_encode_properties_bytes() -> None:
    """encode_properties writes the Property Length and the properties in identifier order,
    repeated ones in their order; NO_PROPERTIES is one zero byte [MQTT-2.2.2-1]."""
    assert encode_properties(NO_PROPERTIES) == b"\x00"
    assert encode_properties(Properties()) == b"\x00"
    got = encode_properties(
        Properties(
            user_properties=(("b", "2"), ("a", "1")),
            topic_alias=7,
            subscription_identifiers=(1, 128),
            payload_format_indicator=1,
        )
    )
    assert got == props(
        prop(0x01, b"\x01"),
        prop(0x0B, b"\x01"),
        prop(0x0B, b"\x80\x01"),
        prop(0x23, wire.u16(7)),
        prop(0x26, s("b") + s("2")),
        prop(0x26, s("a") + s("1")),
    )
    will = Properties(will_delay_interval=3)
    assert encode_properties(will, 0) == props(prop(0x18, u32(3)))
    assert encode_properties(Properties(reason_string="r"), PacketType.AUTH) == props(
        prop(0x1F, s("r"))
    )


@pytest.mark.parametrize(
    ("props_", "packet_type"),
    [
        (Properties(will_delay_interval=1), PacketType.PUBLISH),  # Table 2-4
        (Properties(topic_alias=1), PacketType.CONNECT),
        (Properties(reason_string="r"), PacketType.PUBLISH),
        (Properties(session_expiry_interval=1), 0),
        (Properties(subscription_identifiers=(1, 2)), PacketType.SUBSCRIBE),  # at most one
        (Properties(subscription_identifiers=(0,)), PacketType.PUBLISH),
        (Properties(subscription_identifiers=(268_435_456,)), PacketType.PUBLISH),
        (Properties(subscription_identifiers=[1]), PacketType.PUBLISH),  # type: ignore[arg-type]
        (Properties(topic_alias=0), PacketType.PUBLISH),  # [MQTT-3.3.2-8]
        (Properties(topic_alias=65536), PacketType.PUBLISH),
        (Properties(receive_maximum=0), PacketType.CONNECT),
        (Properties(maximum_packet_size=0), PacketType.CONNACK),
        (Properties(maximum_packet_size=2**32), PacketType.CONNACK),
        (Properties(message_expiry_interval=-1), PacketType.PUBLISH),
        (Properties(payload_format_indicator=2), PacketType.PUBLISH),
        (Properties(maximum_qos=2), PacketType.CONNACK),
        (Properties(retain_available=True), PacketType.CONNACK),  # an int, not a bool
        (Properties(content_type=b"x"), PacketType.PUBLISH),  # type: ignore[arg-type]
        (Properties(content_type="a\x00"), PacketType.PUBLISH),
        (Properties(correlation_data="x"), PacketType.PUBLISH),  # type: ignore[arg-type]
        (Properties(response_topic="a/#"), PacketType.PUBLISH),  # [MQTT-3.3.2-14]
        (Properties(user_properties=(("k",),)), PacketType.PUBLISH),  # type: ignore[arg-type]
        (Properties(user_properties=(("k", 1),)), PacketType.PUBLISH),  # type: ignore[arg-type]
        ("not properties", PacketType.PUBLISH),
    ],
    ids=repr,
)
def test_encode_properties_refuses_what_the_decoder_would_refuse(
    props_: Any, packet_type: int
) -> None:
    """A property not allowed in the packet, repeated where it may not be, or out of range is
    a LocalProtocolError."""
    with pytest.raises(LocalProtocolError):
        encode_properties(props_, packet_type)


@pytest.mark.parametrize(
    "packet",
    [
        Connect("c"),  # a 3.1.1 CONNECT is not written on an MQTT 5 connection
        Connect("c", protocol_level=5, properties=Properties(authentication_data=b"d")),
        Connect("c", protocol_level=5, properties=Properties(topic_alias=1)),
        Connect("c", protocol_level=5, will=Will("w", b"m", properties=Properties(topic_alias=1))),
        Connect("c", protocol_level=5, keepalive=-1),
        Connack(True, 0x80),  # [MQTT-3.2.2-6]
        Connack(False, 0x01),  # [MQTT-3.2.2-8]
        Publish(""),  # no Topic Alias for an empty topic
        Publish("t", properties=Properties(reason_string="r")),
        Publish("t", qos=0, packet_id=1),
        Publish("t", qos=0, dup=True),
        Publish("t", "x"),  # type: ignore[arg-type]
        Puback(1, 0x92),  # [MQTT-3.4.2-1]
        Pubrec(1, 0x92),
        Pubrel(1, reason_code=0x10),  # [MQTT-3.6.2-1]
        Pubcomp(1, 0x10),
        Pubrel(1, dup=True),
        Puback(1, "0"),  # type: ignore[arg-type]
        Puback(1, properties=Properties(topic_alias=1)),
        Subscribe(1, ()),
        Subscribe(1, (("a", 3),)),
        Subscribe(1, (("a", 0x30),)),
        Subscribe(1, (("a", 0x40),)),
        Subscribe(1, (("$share/g/a", 0x04),)),  # [MQTT-3.8.3-4]
        Subscribe(1, (("a", 0),), Properties(subscription_identifiers=(1, 2))),
        Suback(1, ()),
        Suback(1, (0x11,)),  # [MQTT-3.9.3-2]
        Unsubscribe(1, ()),
        Unsuback(1),  # MQTT 5 needs a reason code per filter
        Unsuback(1, (0x01,)),  # [MQTT-3.11.3-2]
        Disconnect(0x01),  # [MQTT-3.14.2-1]
        Disconnect(0, Properties(topic_alias=1)),
        Auth(0x80),  # [MQTT-3.15.2-1]
        Auth(0, Properties(session_expiry_interval=1)),
    ],
    ids=repr,
)
def test_encoder5_refuses_invalid_packets(packet: Packet) -> None:
    """Invalid local MQTT 5 packets raise LocalProtocolError."""
    with pytest.raises(LocalProtocolError):
        encode(packet, version=5)


def test_encoder_refuses_unknown_versions_and_mismatched_connects() -> None:
    """version is 5, 4 or 3; a CONNECT must name the version it is encoded for."""
    with pytest.raises(LocalProtocolError):
        encode(Pingreq(), version=6)
    with pytest.raises(LocalProtocolError):
        encode(Connect("c", protocol_level=5), version=4)


def test_version_4_ignores_mqtt5_fields() -> None:
    """encode(version=4) writes 3.1.1 bytes whatever the properties and reason codes say."""
    p = Properties(reason_string="r")
    assert encode(Puback(1, 0x80, p)) == wire.puback(1)
    assert encode(Pubrel(2, reason_code=0x92, properties=p), version=3) == wire.pubrel(2)
    assert encode(Unsuback(3, (0x11,), p)) == wire.unsuback(3)
    assert encode(Disconnect(0x8E, p)) == wire.disconnect()
    pub = Publish("t", b"x", properties=Properties(topic_alias=1, content_type="c"))
    assert encode(pub) == wire.publish("t", b"x")
    assert encode(Subscribe(1, (("a", 1),), Properties(subscription_identifiers=(4,)))) == (
        wire.subscribe(1, [("a", 1)])
    )


def test_publish5_encoding_bytes() -> None:
    """encode(Publish, version=5) splices the properties after the packet id."""
    pub = Publish("a", b"pay", 2, True, True, 9, Properties(message_expiry_interval=1))
    block = props(prop(0x02, u32(1)))
    assert encode(pub, version=5) == publish5("a", b"pay", flags=0x0D, pid=9, properties=block)
    big = Publish("t", b"x" * 200)
    assert encode(big, version=5) == publish5("t", b"x" * 200)


def test_reason_code_enum_and_tables() -> None:
    """ReasonCode names every MQTT 5 reason code (2.4); each table holds only known codes and
    the per-packet sets are as the spec's tables say."""
    aliases = (ReasonCode.NORMAL_DISCONNECTION, ReasonCode.SUCCESS, ReasonCode.GRANTED_QOS_0)
    assert {int(code) for code in aliases} == {0}
    assert len({int(code) for code in ReasonCode}) == 43
    for table in (
        CONNACK_REASON_CODES,
        PUBACK_REASON_CODES,
        PUBREL_REASON_CODES,
        SUBACK_REASON_CODES,
        UNSUBACK_REASON_CODES,
        DISCONNECT_REASON_CODES,
        AUTH_REASON_CODES,
    ):
        assert table <= _EVERY_REASON_CODE
    assert len(CONNACK_REASON_CODES) == 22
    assert len(PUBACK_REASON_CODES) == 9
    assert {0x00, 0x92} == PUBREL_REASON_CODES
    assert len(SUBACK_REASON_CODES) == 12
    assert len(UNSUBACK_REASON_CODES) == 7
    assert len(DISCONNECT_REASON_CODES) == 29
    assert {0x00, 0x18, 0x19} == AUTH_REASON_CODES


def test_properties_repr_shows_only_what_is_present() -> None:
    """Properties' repr lists the properties present only."""
    assert repr(NO_PROPERTIES) == "Properties()"
    assert repr(Properties(topic_alias=3)) == "Properties(topic_alias=3)"


def test_a_repeated_property_block_is_decoded_once() -> None:
    """A client repeating the same small property block (its Topic Alias, say) gets the same,
    immutable Properties object back; the same bytes in another packet type are decoded (and
    checked) on their own."""
    from mqttd.codec import properties as module

    block = props(prop(0x23, wire.u16(4)))
    decoder = server5()
    first, second = decode_all(decoder, publish5("t", properties=block) * 2)
    assert first.properties is second.properties  # type: ignore[union-attr]
    decoder, data = in_context(CONNACK, block)
    reject(decoder, data, MalformedPacket, "property_not_allowed", MALFORMED)
    # Bounded: filling it with distinct blocks never grows it past its limit.
    for i in range(module._CACHE_MAX_ENTRIES + 10):
        decode_one(client5(), publish5("t", properties=props(prop(0x02, u32(i)))))
    assert 0 < len(module._CACHE) <= module._CACHE_MAX_ENTRIES
