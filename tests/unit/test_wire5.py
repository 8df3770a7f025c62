"""conformance.wire's MQTT 5.0 layer: properties, reason codes and the MQTT 5 packet layouts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conformance import wire

# Strings the property codec must carry unchanged: any code point but surrogates (which UTF-8
# cannot encode).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
PAIR = st.tuples(TEXT, TEXT)


def _value(ident: int) -> st.SearchStrategy[wire.Value]:
    kind = wire.PROPERTY_TYPES[ident]
    if kind == wire.BYTE:
        return st.integers(0, 0xFF)
    if kind == wire.TWO_BYTE:
        return st.integers(0, 0xFFFF)
    if kind == wire.FOUR_BYTE:
        return st.integers(0, 0xFFFF_FFFF)
    if kind == wire.VARIABLE_BYTE:
        return st.integers(0, wire.MAX_VARINT)
    if kind == wire.BINARY:
        return st.binary(max_size=40)
    if kind == wire.UTF8:
        return TEXT
    return PAIR


ANY_PROPERTY = st.sampled_from(sorted(wire.PROPERTY_TYPES)).flatmap(
    lambda ident: st.tuples(st.just(ident), _value(ident))
)
PROPS = st.lists(ANY_PROPERTY, max_size=12).map(tuple)


def _props_of(kind: int) -> st.SearchStrategy[tuple[wire.Property, ...]]:
    """Properties a packet of ``kind`` may carry (repeats allowed: the codec keeps them)."""
    allowed = sorted(wire.ALLOWED_PROPERTIES[kind])
    one = st.sampled_from(allowed).flatmap(lambda i: st.tuples(st.just(i), _value(i)))
    return st.lists(one, max_size=6).map(tuple)


@given(props=PROPS)
def test_properties_round_trip_every_type(props: tuple[wire.Property, ...]) -> None:
    """Every property, by its type, decodes to what was encoded, repeats and order kept."""
    data = wire.properties(props)
    assert wire.parse_properties(data) == (props, len(data))
    # The section can sit anywhere in a packet: the end index counts from the start.
    assert wire.parse_properties(b"xy" + data, 2) == (props, len(data) + 2)


@given(n=st.integers(0, wire.MAX_VARINT))
def test_variable_byte_integer_round_trip(n: int) -> None:
    """decode_varint(varint(n)) == n, for 0 ... 268 435 455, in 1-4 bytes."""
    data = wire.varint(n)
    assert 1 <= len(data) <= 4
    assert wire.decode_varint(data + b"tail") == (n, len(data))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\x00", "not minimal"),
        (b"\xff\x80\x00", "not minimal"),
        (b"\xff\xff\xff\xff\x01", "longer than 4 bytes"),
        (b"\x80", "truncated"),
    ],
)
def test_variable_byte_integer_rejects(data: bytes, message: str) -> None:
    """Non-minimal [MQTT-1.5.5-1], five-byte and truncated encodings are refused."""
    with pytest.raises(wire.WireError, match=message):
        wire.decode_varint(data)


def test_property_encoding_matches_the_spec_types() -> None:
    """Each type's exact bytes: byte, two/four-byte ints, varint, string, binary, pair."""
    props: list[wire.PropertyIn] = [
        (wire.PAYLOAD_FORMAT_INDICATOR, 1),
        (wire.RECEIVE_MAXIMUM, 0x1234),
        (wire.SESSION_EXPIRY_INTERVAL, 0x01020304),
        (wire.SUBSCRIPTION_IDENTIFIER, 128),
        (wire.CONTENT_TYPE, "é"),
        (wire.CORRELATION_DATA, b"\x00\xff"),
        (wire.USER_PROPERTY, ("k", "v")),
        (wire.USER_PROPERTY, ("k", "w")),
    ]
    body = bytes.fromhex(
        "01 01  21 12 34  11 01 02 03 04  0b 80 01  03 00 02 c3 a9  09 00 02 00 ff"
        "  26 00 01 6b 00 01 76  26 00 01 6b 00 01 77"
    )
    assert wire.property_bytes(props) == body
    assert wire.properties(props) == bytes([len(body)]) + body
    assert wire.properties() == b"\x00"  # [MQTT-2.2.2-1]


def test_malformed_properties_can_be_built_on_purpose() -> None:
    """Raw bytes stand for any value (and an unknown identifier); a wrong type is refused."""
    assert wire.property_bytes([(wire.TOPIC_ALIAS, b"\x00")]) == b"\x23\x00"
    assert wire.property_bytes([(0x7F, b"\x01\x02")]) == b"\x7f\x01\x02"
    assert wire.property_bytes([(wire.CONTENT_TYPE, b"\xff")]) == b"\x03\x00\x01\xff"
    with pytest.raises(ValueError, match="cannot hold"):
        wire.property_bytes([(wire.RECEIVE_MAXIMUM, "ten")])
    with pytest.raises(ValueError, match="cannot hold"):
        wire.property_bytes([(0x7F, 1)])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x02\x7f\x00", "unknown property"),
        (b"\x05\x03\x00\x01", "runs past"),
        (b"\x04\x03\x00\x01\xff", "not well-formed UTF-8"),
        (b"\x06\x03\x00\x03\xed\xa0\x80", "not well-formed UTF-8"),
        (b"\x02\x21\x01", "truncated"),
        (b"\x03\x0b\x80\x00", "not minimal"),
    ],
)
def test_parse_properties_rejects(data: bytes, message: str) -> None:
    """Unknown identifiers, overruns, ill-formed UTF-8 (surrogates too), short integers."""
    with pytest.raises(wire.WireError, match=message):
        wire.parse_properties(data)


def test_connect_v5_layout() -> None:
    """An MQTT 5 CONNECT: level 5, properties after Keep Alive, Will properties before the
    Will Topic; the 3.1.1 CONNECT is unchanged."""
    assert wire.connect("", keepalive=60, version=5) == bytes.fromhex(
        "10 0d 00 04 4d 51 54 54 05 02 00 3c 00 00 00"
    )
    got = wire.connect(
        "c",
        keepalive=10,
        will=("w", b"m", 1, True),
        username="u",
        password=b"p",
        version=5,
        properties=[(wire.SESSION_EXPIRY_INTERVAL, 30)],
        will_properties=[(wire.WILL_DELAY_INTERVAL, 2)],
    )
    assert got == bytes.fromhex(
        "10 25 00 04 4d 51 54 54 05 ee 00 0a 05 11 00 00 00 1e 00 01 63"
        " 05 18 00 00 00 02 00 01 77 00 01 6d 00 01 75 00 01 70"
    )
    assert wire.connect("c") == bytes.fromhex("10 0d 00 04 4d 51 54 54 04 02 00 00 00 01 63")
    assert wire.connect("c", proto=("MQIsdp", 3))[2:10] == b"\x00\x06MQIsdp"
    assert wire.connect("c", version=3)[2:11] == b"\x00\x06MQIsdp\x03"
    assert wire.connect("c", version=5, proto=("MQTT", 6))[8] == 6


def test_v5_only_fields_need_version_5() -> None:
    """Properties on a 3.1.1 packet are a caller's mistake, refused."""
    with pytest.raises(ValueError, match="version=5"):
        wire.publish("t", b"", properties=[])
    with pytest.raises(ValueError, match="version=5"):
        wire.unsuback(1, [0])
    with pytest.raises(ValueError, match="without a Will"):
        wire.connect("c", version=5, will_properties=[])


def test_ack_forms() -> None:
    """Remaining length 2 (Success, no properties), 3 (reason only) and 4+ (with properties)."""
    assert wire.puback(5) == bytes.fromhex("40 02 00 05")
    assert wire.puback(5, reason=0x10) == bytes.fromhex("40 03 00 05 10")
    assert wire.puback(5, reason=0x10, properties=[(wire.REASON_STRING, "x")]) == bytes.fromhex(
        "40 08 00 05 10 04 1f 00 01 78"
    )
    assert wire.pubrel(5, properties=[]) == bytes.fromhex("62 04 00 05 00 00")
    for raw, reason in ((b"\x40\x02\x00\x05", 0), (b"\x40\x03\x00\x05\x10", 0x10)):
        pkt = wire.parse(raw, 5)
        assert (pkt.pid, pkt.reason, pkt.props) == (5, reason, ())
    assert wire.disconnect() == b"\xe0\x00"
    assert wire.disconnect(reason=0x04) == b"\xe0\x01\x04"
    assert wire.auth() == b"\xf0\x00"
    assert wire.auth(0x18, [(wire.AUTHENTICATION_METHOD, "m")]) == bytes.fromhex(
        "f0 06 18 04 15 00 01 6d"
    )


def test_subscribe_options_and_v5_layout() -> None:
    """The options byte packs QoS, No Local, Retain As Published and Retain Handling."""
    opts = wire.subscription_options(2, no_local=True, retain_as_published=True, retain_handling=2)
    assert opts == 0b0010_1110
    assert wire.subscribe(
        7, [("a", opts)], version=5, properties=[(wire.SUBSCRIPTION_IDENTIFIER, 3)]
    ) == bytes.fromhex("82 09 00 07 02 0b 03 00 01 61 2e")
    assert wire.unsubscribe(7, ["a"], version=5) == bytes.fromhex("a2 06 00 07 00 00 01 61")
    assert wire.subscribe(7, [("a", 1)]) == bytes.fromhex("82 06 00 07 00 01 61 01")


@given(
    topic=st.text(min_size=1, max_size=20),
    payload=st.binary(max_size=60),
    qos=st.integers(0, 2),
    retain=st.booleans(),
    props=_props_of(wire.PUBLISH),
)
def test_publish_v5_round_trip(
    topic: str, payload: bytes, qos: int, retain: bool, props: tuple[wire.Property, ...]
) -> None:
    """parse(publish(..., version=5), 5) gives the topic, pid, properties and payload back."""
    pid = 9 if qos else None
    raw = wire.publish(topic, payload, qos, retain, pid=pid, version=5, properties=props)
    pkt = wire.parse(raw, 5)
    got = (pkt.topic, pkt.qos, pkt.retain, pkt.pid, pkt.props, pkt.payload)
    assert got == (topic.encode(), qos, retain, pid, props, payload)


@given(
    kind=st.sampled_from([wire.PUBACK, wire.PUBREC, wire.PUBREL, wire.PUBCOMP]),
    pid=st.integers(1, 0xFFFF),
    reason=st.none() | st.integers(0, 0xFF),
    props=st.none() | _props_of(wire.PUBACK),
)
def test_ack_v5_round_trip(
    kind: int, pid: int, reason: int | None, props: tuple[wire.Property, ...] | None
) -> None:
    """Acks with or without reason code and properties read back (absent reason = 0x00)."""
    pkt = wire.parse(wire.ack(kind, pid, reason=reason, properties=props), 5)
    assert (pkt.type, pkt.pid, pkt.reason, pkt.props) == (kind, pid, reason or 0, props or ())


@given(
    sp=st.booleans(),
    reason=st.integers(0, 0xFF),
    props=_props_of(wire.CONNACK),
)
def test_connack_v5_round_trip(sp: bool, reason: int, props: tuple[wire.Property, ...]) -> None:
    """CONNACK: Session Present, reason code and properties read back."""
    pkt = wire.parse(wire.connack(sp, reason, version=5, properties=props), 5)
    assert (pkt.session_present, pkt.reason, pkt.props) == (sp, reason, props)


@given(
    kind=st.sampled_from([wire.SUBACK, wire.UNSUBACK]),
    codes=st.lists(st.integers(0, 0xFF), min_size=1, max_size=5),
    props=_props_of(wire.SUBACK),
)
def test_suback_unsuback_v5_round_trip(
    kind: int, codes: list[int], props: tuple[wire.Property, ...]
) -> None:
    """SUBACK/UNSUBACK: packet id, properties and one reason code per filter read back."""
    build = wire.suback if kind == wire.SUBACK else wire.unsuback
    pkt = wire.parse(build(3, codes, version=5, properties=props), 5)
    assert (pkt.type, pkt.pid, pkt.codes, pkt.props) == (kind, 3, tuple(codes), props)


@given(
    kind=st.sampled_from([wire.DISCONNECT, wire.AUTH]),
    reason=st.none() | st.integers(0, 0xFF),
    props=st.none() | _props_of(wire.AUTH),
)
def test_disconnect_auth_round_trip(
    kind: int, reason: int | None, props: tuple[wire.Property, ...] | None
) -> None:
    """DISCONNECT and AUTH: remaining length 0 means reason 0x00; reason and properties read
    back."""
    raw = (
        wire.disconnect(reason=reason, properties=props)
        if kind == wire.DISCONNECT
        else wire.auth(reason, props)
    )
    pkt = wire.parse(raw, 5)
    assert (pkt.type, pkt.reason, pkt.props) == (kind, reason or 0, props or ())


@given(
    props=_props_of(wire.PUBLISH),
    payload=st.binary(max_size=300),
    cuts=st.lists(st.integers(0, 400), max_size=5),
)
def test_decoder_v5_reassembles_split_packets(
    props: tuple[wire.Property, ...], payload: bytes, cuts: list[int]
) -> None:
    """An MQTT 5 stream fed in arbitrary pieces gives the same packets."""
    data = (
        wire.connack(False, 0, version=5, properties=[(wire.RECEIVE_MAXIMUM, 10)])
        + wire.publish("t", payload, 1, pid=4, version=5, properties=props)
        + wire.disconnect(reason=0x8E)
    )
    dec = wire.Decoder(version=5)
    got = []
    prev = 0
    for cut in sorted({min(c, len(data)) for c in cuts} | {len(data)}):
        dec.feed(data[prev:cut])
        prev = cut
        while (pkt := dec.next()) is not None:
            got.append(pkt)
    assert [p.type for p in got] == [wire.CONNACK, wire.PUBLISH, wire.DISCONNECT]
    assert (got[1].props, got[1].payload) == (props, payload)
    assert got[2].reason == 0x8E


def test_packet_property_accessors() -> None:
    """prop/props_all/has/user_properties read the parsed properties in order."""
    props: list[wire.PropertyIn] = [
        (wire.USER_PROPERTY, ("a", "1")),
        (wire.SUBSCRIPTION_IDENTIFIER, 4),
        (wire.USER_PROPERTY, ("a", "2")),
        (wire.SUBSCRIPTION_IDENTIFIER, 9),
    ]
    pkt = wire.parse(wire.publish("t", b"x", version=5, properties=props), 5)
    assert pkt.user_properties == [("a", "1"), ("a", "2")]
    assert pkt.props_all(wire.SUBSCRIPTION_IDENTIFIER) == [4, 9]
    assert pkt.prop(wire.SUBSCRIPTION_IDENTIFIER) == 4
    assert pkt.prop(wire.TOPIC_ALIAS) is None
    assert pkt.has(wire.USER_PROPERTY)
    assert not pkt.has(wire.TOPIC_ALIAS)
    assert "Subscription Identifier: 9" in pkt.describe()


def test_check_packet_accepts_well_formed_packets() -> None:
    """Valid server packets have nothing to report."""
    for raw in (
        wire.connack(True, 0, version=5, properties=[(wire.RECEIVE_MAXIMUM, 20)]),
        wire.publish("a/b", b"x", 1, pid=1, version=5, properties=[(wire.TOPIC_ALIAS, 1)]),
        wire.puback(1, reason=0x10),
        wire.suback(1, [0, 1, 2, 0x80], version=5),
        wire.unsuback(1, [0, 0x11], version=5),
        wire.disconnect(reason=0x8E, properties=[(wire.REASON_STRING, "taken over")]),
        wire.pingresp(),
    ):
        assert wire.check_packet(wire.parse(raw, 5)) == [], raw.hex(" ")


@pytest.mark.parametrize(
    ("raw", "finding"),
    [
        (wire.puback(1, reason=0x05), "PUBACK reason code 0x05"),
        (wire.pubrel(1, reason=0x10), "PUBREL reason code 0x10"),
        (wire.suback(1, [0x03], version=5), "SUBACK reason code 0x03"),
        (wire.unsuback(1, [0x10], version=5), "UNSUBACK reason code 0x10"),
        (wire.connack(False, 0x04, version=5), "CONNACK reason code 0x04"),
        (wire.connack(True, 0x80, version=5), "Session Present 1 [MQTT-3.2.2-6]"),
        (wire.connack(2, 0, version=5), "bits 7-1 are reserved"),
        (wire.disconnect(reason=0x18), "DISCONNECT reason code 0x18"),
        (wire.auth(0x87), "AUTH reason code 0x87"),
        (wire.puback(1, reason=0, properties=[(wire.TOPIC_ALIAS, 1)]), "Topic Alias, which"),
        (
            wire.connack(
                False,
                0,
                version=5,
                properties=[(wire.RECEIVE_MAXIMUM, 1), (wire.RECEIVE_MAXIMUM, 2)],
            ),
            "more than once",
        ),
        (wire.connack(False, 0, version=5, properties=[(wire.MAXIMUM_QOS, 2)]), "only 0 or 1"),
        (wire.connack(False, 0, version=5, properties=[(wire.RECEIVE_MAXIMUM, 0)]), "= 0"),
        (wire.publish("a/+", b"", version=5), "wildcard"),
        (wire.publish("", b"", version=5), "empty Topic Name"),
        (wire.publish("a\x00", b"", version=5), "U+0000"),
        (wire.publish("a", b"", dup=True, version=5), "DUP 1"),
        (
            wire.publish("a", version=5, properties=[(wire.USER_PROPERTY, ("k\x00", "v"))]),
            "U+0000",
        ),
        (b"\x90\x84\x00" + b"\x00\x01\x00\x00", "not minimal"),
        (wire.ack(wire.PUBREL, 1, flags=0), "fixed-header flags 0000"),
    ],
)
def test_check_packet_findings(raw: bytes, finding: str) -> None:
    """Each broken rule is reported by name."""
    found = wire.check_packet(wire.parse(raw, 5))
    assert any(finding in f for f in found), found


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x20\x02\x00\x00", "CONNACK with remaining length 2"),
        (b"\x20\x04\x00\x00\x00\x00", "bytes after its properties"),
        (b"\x90\x03\x00\x01\x00", "without reason codes"),
        (b"\x40\x05\x00\x01\x00\x05\x1f", "runs past"),
        (b"\x30\x05\x00\x01t\x02\x01", "PUBLISH properties"),
    ],
)
def test_parse_v5_rejects(raw: bytes, message: str) -> None:
    """MQTT 5 layouts that cannot be read are a WireError."""
    with pytest.raises(wire.WireError, match=message):
        wire.parse(raw, 5)


def test_v311_parse_unchanged() -> None:
    """Version 4 (the default) reads a 3.1.1 PUBLISH without a property section."""
    pkt = wire.parse(wire.publish("t", b"\x00payload"))
    assert (pkt.topic, pkt.payload, pkt.props, pkt.version) == (b"t", b"\x00payload", (), 4)
    assert wire.parse(wire.connack(True, 0)).reason == 0
    with pytest.raises(wire.WireError, match="reserved packet type 15"):
        wire.parse(wire.auth())
