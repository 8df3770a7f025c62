"""The cluster's packed forms of messages, deliveries and Wills (``mqttd.cluster.wire``): MQTT
3.1.1 messages keep the form written before MQTT 5, MQTT 5 state round-trips, and any bytes
unpack to a message or a ValueError."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mqttd.cluster.wire import (
    pack_delivery,
    pack_forwards,
    pack_message,
    pack_will,
    unpack_delivery,
    unpack_forwards,
    unpack_message,
    unpack_will,
)
from mqttd.codec.packets import NO_PROPERTIES, Properties, Will
from mqttd.message import Message

TEXT = st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=12)
PROPERTIES = st.builds(
    Properties,
    payload_format_indicator=st.none() | st.integers(0, 1),
    content_type=st.none() | TEXT,
    response_topic=st.none() | st.text("ab/é", min_size=1, max_size=8),  # a topic name
    correlation_data=st.none() | st.binary(max_size=16),
    user_properties=st.lists(st.tuples(TEXT, TEXT), max_size=3).map(tuple),
)
IDENTIFIERS = st.lists(st.integers(1, 268_435_455), max_size=3).map(tuple)


def test_mqtt311_message_keeps_the_old_form() -> None:
    """No properties, no expiry: qos | retain | topic length | topic | payload, as nodes wrote
    before MQTT 5 (a node of either version reads the other's during a rolling upgrade)."""
    assert pack_message("a/b", b"xy", 1, True) == b"\x01\x01\x00\x03a/bxy"
    assert pack_delivery(Message("a/b", b"xy", 2), 1, False) == b"\x01\x00\x00\x03a/bxy"
    assert pack_will(Will("w", b"gone", 1, False)) == b"\x01\x00\x00\x01wgone"
    message = unpack_message(b"\x02\x01\x00\x03a/bxy")
    assert (message.topic, message.payload, message.qos, message.retain) == ("a/b", b"xy", 2, True)
    assert message.properties is NO_PROPERTIES
    assert message.expires_at is None


def test_mqtt5_message_layout() -> None:
    """The second form: flags (0x80 | expiry 0x10 | properties 0x08 | retain << 2 | qos), the
    topic, the expiry time as a double, the property block as on the wire, the payload."""
    packed = pack_message(
        "t", b"p", 2, True, properties=Properties(content_type="c"), expires_at=1.5
    )
    assert packed == b"\x9e\x00\x01t" + b"\x3f\xf8" + bytes(6) + b"\x04\x03\x00\x01c" + b"p"


@given(
    topic=TEXT,
    payload=st.binary(max_size=40),
    qos=st.integers(0, 2),
    retain=st.booleans(),
    properties=st.just(NO_PROPERTIES) | PROPERTIES,
    expires_at=st.none() | st.floats(0, 4e9),
    identifiers=IDENTIFIERS,
)
def test_delivery_round_trip(
    topic: str,
    payload: bytes,
    qos: int,
    retain: bool,
    properties: Properties,
    expires_at: float | None,
    identifiers: tuple[int, ...],
) -> None:
    """A delivery unpacks to its message -- properties in order, expiry time -- at the packed
    QoS and RETAIN, with its Subscription Identifiers apart from the message's properties."""
    message = Message(topic, payload, 1, properties=properties, expires_at=expires_at)
    got, got_identifiers = unpack_delivery(pack_delivery(message, qos, retain, identifiers))
    assert (got.topic, got.payload, got.qos, got.retain) == (topic, payload, qos, retain)
    assert got.properties == properties
    assert got.expires_at == expires_at
    assert got_identifiers == identifiers
    forwarded = unpack_message(
        pack_message(topic, payload, qos, False, properties=properties, expires_at=expires_at)
    )
    assert (forwarded.properties, forwarded.expires_at) == (properties, expires_at)


@given(properties=PROPERTIES, delay=st.none() | st.integers(0, 2**32 - 1))
def test_will_round_trip(properties: Properties, delay: int | None) -> None:
    """A Will keeps its Will Properties: Will Delay Interval, Message Expiry Interval (still
    an interval) and the properties its message carries."""
    will_properties = Properties(
        **{
            name: getattr(properties, name)
            for name in ("payload_format_indicator", "content_type", "response_topic")
        },
        correlation_data=properties.correlation_data,
        user_properties=properties.user_properties,
        will_delay_interval=delay,
        message_expiry_interval=60,
    )
    will = Will("last/words", b"bye", 1, True, will_properties)
    assert unpack_will(pack_will(will)) == will


@given(st.binary(max_size=64))
def test_any_bytes_unpack_or_raise_value_error(data: bytes) -> None:
    """Whatever a Redis value holds, unpacking gives a message or a ValueError."""
    for unpack in (unpack_message, unpack_delivery, unpack_will, unpack_forwards):
        try:
            unpack(data)
        except ValueError:
            pass


def test_forwards_layout() -> None:
    """Each forwarded message of a batch entry: three 4-byte big-endian lengths (cluster id,
    groups, packed message), then the three."""
    packed = pack_message("t", b"p", 1, False)
    assert pack_forwards([(b"n:e:1", b"", packed), (b"n:e:2", b"g1\ng2", packed)]) == (
        b"\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00\x06n:e:1" + packed
        + b"\x00\x00\x00\x05\x00\x00\x00\x05\x00\x00\x00\x06n:e:2g1\ng2" + packed
    )  # fmt: skip
    assert unpack_forwards(b"") == []


FORWARDS = st.lists(
    st.tuples(st.binary(max_size=20), st.binary(max_size=20), st.binary(max_size=40))
)


@given(FORWARDS)
def test_forwards_round_trip(items: list[tuple[bytes, bytes, bytes]]) -> None:
    """A batch entry unpacks to its messages in order, each with its cluster id and groups."""
    assert unpack_forwards(pack_forwards(items)) == items


@given(FORWARDS.filter(bool), st.data())
def test_truncated_forwards_raise_value_error(
    items: list[tuple[bytes, bytes, bytes]], data: st.DataObject
) -> None:
    """A batch entry cut anywhere inside an item is refused, not read short."""
    packed = pack_forwards(items)
    bounds = {0}
    for message_id, groups, message in items:
        bounds.add(max(bounds) + 12 + len(message_id) + len(groups) + len(message))
    cut = data.draw(st.integers(1, len(packed) - 1).filter(lambda n: n not in bounds))
    try:
        unpack_forwards(packed[:cut])
    except ValueError:
        return
    raise AssertionError(f"cut at {cut} of {len(packed)} unpacked")
