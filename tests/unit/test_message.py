"""``Message``'s ready-made PUBLISH pieces against the codec's own encoding."""

from __future__ import annotations

import pytest

from mqttd.codec import Properties, Publish, encode
from mqttd.message import Message

# Remaining Lengths around each varint boundary (2.2.3): 127/128, 16,383/16,384, 2,097,151/152.
TOPIC = "a/b"  # a 5-byte topic field
SIZES = [0, 1, 120, 121, 122, 123, 16_376, 16_377, 16_378, 2_097_144, 2_097_145, 2_097_146]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(
    ("qos", "retain", "dup"),
    [(0, False, False), (0, True, False), (1, False, True), (2, True, False)],
)
def test_publish_chunks_are_the_codecs_bytes(size: int, qos: int, retain: bool, dup: bool) -> None:
    """[MQTT-2.2.3] The cached header's Remaining Length is right on both sides of every
    varint boundary, for each flag combination (MQTT 3.1.1 and MQTT 5)."""
    payload = bytes(size)
    message = Message(TOPIC, payload, qos, retain)
    packet_id = 7 if qos else 0
    expected = Publish(TOPIC, payload, qos, retain, dup and qos > 0, packet_id or None)
    for _ in range(2):  # made, then from the cache
        assert b"".join(message.publish_chunks(qos, retain, dup, packet_id)) == encode(expected)
        chunks5 = message.publish_chunks5(qos, retain, dup, packet_id)
        assert b"".join(chunks5) == encode(expected, version=5)
        if qos == 0:
            assert message.header5_qos0(retain) + payload == encode(expected, version=5)


def test_mqtt5_qos0_header_carries_the_publishers_properties() -> None:
    """The cached MQTT 5 QoS 0 header has the publisher's properties folded in, made first
    by itself or by ``publish_chunks5`` alike."""
    properties = Properties(content_type="text/plain", user_properties=(("k", "v"),))
    expected = encode(Publish(TOPIC, b"p", 0, True, False, None, properties), version=5)
    for first in ("header", "chunks"):
        message = Message(TOPIC, b"p", 0, True, properties=properties)
        if first == "chunks":
            message.publish_chunks5(0, True, False, 0)
        assert message.header5_qos0(True) + b"p" == expected
