"""The application message as the broker routes it, with its wire encoding cached.

A PUBLISH fanned out to a thousand subscribers is encoded once per (QoS, RETAIN, DUP) combination:
the fixed header and topic are cached as bytes and only the two packet-identifier bytes differ per
subscriber. ``publish_chunks`` returns the pieces without copying the payload; the connection's
writer joins everything queued for one ``send_all``.
"""

from __future__ import annotations

from typing import Final

_VARINT_LIMIT: Final = 268_435_455

#: Packet identifiers as the two bytes on the wire, made once each and shared by every
#: delivery (at most 65,535 small objects), so a QoS 1/2 delivery in an outbox costs list
#: slots only, never an object of its own.
_PACKET_ID_BYTES: list[bytes | None] = [None] * 65536


def packet_id_bytes(packet_id: int) -> bytes:
    """The two bytes of ``packet_id`` (1..65535), shared."""
    cached = _PACKET_ID_BYTES[packet_id]
    if cached is None:
        cached = _PACKET_ID_BYTES[packet_id] = packet_id.to_bytes(2, "big")
    return cached


def _remaining_length(n: int) -> bytes:
    # Local copy of the 2.2.3 varint so this hot path needs no import of the codec module's
    # validation machinery; values are bounded by the decoder's max_packet_size.
    if n < 128:
        return bytes((n,))
    out = bytearray()
    while True:
        digit = n & 0x7F
        n >>= 7
        if n:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


class Message:
    """An application message: topic, payload, QoS and RETAIN as the publisher sent them.

    Instances are immutable by convention and shared by every session they are delivered to.
    """

    __slots__ = (
        "_headers",
        "_topic_field",
        "cluster_id",
        "payload",
        "qos",
        "retain",
        "store_id",
        "topic",
    )

    def __init__(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        encoded = topic.encode("utf-8")
        self._topic_field = len(encoded).to_bytes(2, "big") + encoded
        self._headers: dict[int, bytes] = {}
        #: row id in the durable store while any persistent session or the retained store
        #: references the message (see ``mqttd.store``)
        self.store_id: int | None = None
        #: in a cluster, the message's id across nodes (origin node, its run, a counter), set
        #: when it is first sent to another node: a node receiving it twice during a session
        #: handover delivers it once
        self.cluster_id: bytes | None = None

    def __repr__(self) -> str:
        return (
            f"Message(topic={self.topic!r}, payload=<{len(self.payload)} bytes>, "
            f"qos={self.qos}, retain={self.retain})"
        )

    @property
    def size(self) -> int:
        """Bytes this message costs in a queue (topic + payload)."""
        return len(self._topic_field) + len(self.payload)

    def _header(self, qos: int, retain: bool, dup: bool) -> bytes:
        flags = (dup << 3) | (qos << 1) | retain
        header = self._headers.get(flags)
        if header is None:
            remaining = len(self._topic_field) + (2 if qos else 0) + len(self.payload)
            header = bytes((0x30 | flags,)) + _remaining_length(remaining) + self._topic_field
            self._headers[flags] = header
        return header

    def publish_chunks(
        self, qos: int, retain: bool = False, dup: bool = False, packet_id: int = 0
    ) -> tuple[bytes, ...]:
        """The PUBLISH packet delivering this message, as byte chunks to write in order.

        Args:
            qos: the delivered QoS (min of published and granted, [MQTT-3.8.4-6]).
            retain: RETAIN flag on the wire: 1 only for retained messages sent because of a new
                subscription ([MQTT-3.3.1-8], [MQTT-3.3.1-9]).
            dup: DUP flag, 1 only on re-delivery ([MQTT-3.3.1-1]); always 0 at QoS 0
                ([MQTT-3.3.1-2]).
            packet_id: required (non-zero) when ``qos`` > 0.
        """
        if qos == 0:
            return (self._header(0, retain, False), self.payload)
        return (self._header(qos, retain, dup), packet_id_bytes(packet_id), self.payload)
