"""Topic names, topic filters, and the subscription tree (MQTT 3.1.1 section 4.7).

Validation here is shared by the decoder (bad names/filters are malformed packets) and by the
configuration (ACL filters).
"""

from __future__ import annotations

from mqttd.errors import MalformedPacket

#: Longest topic in UTF-8 bytes: the 2-byte length prefix allows no more ([MQTT-4.7.3-3]).
MAX_TOPIC_BYTES = 65_535


def validate_topic_name(topic: str) -> None:
    """Check a PUBLISH Topic Name (already decoded from valid UTF-8 without U+0000).

    Raises:
        MalformedPacket: empty ([MQTT-4.7.3-1]) or containing a wildcard ([MQTT-3.3.2-2],
            [MQTT-4.7.1-1]).
    """
    if not topic:
        raise MalformedPacket("empty_topic_name")  # [MQTT-4.7.3-1]
    if "+" in topic or "#" in topic:
        raise MalformedPacket("wildcard_in_topic_name")  # [MQTT-3.3.2-2] [MQTT-4.7.1-1]


def validate_topic_filter(topic_filter: str) -> None:
    """Check a SUBSCRIBE/UNSUBSCRIBE Topic Filter.

    Invalid wildcard placement is treated as a malformed packet (the connection is closed), as
    Mosquitto does; the spec leaves the reaction open.

    Raises:
        MalformedPacket: empty ([MQTT-4.7.3-1]), ``#`` not alone in the last level
            ([MQTT-4.7.1-2]), or ``+`` not alone in its level ([MQTT-4.7.1-3]).
    """
    if not topic_filter:
        raise MalformedPacket("empty_topic_filter")  # [MQTT-4.7.3-1]
    if "+" not in topic_filter and "#" not in topic_filter:
        return
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != last):
            raise MalformedPacket("misplaced_multi_level_wildcard")  # [MQTT-4.7.1-2]
        if "+" in level and level != "+":
            raise MalformedPacket("misplaced_single_level_wildcard")  # [MQTT-4.7.1-3]
