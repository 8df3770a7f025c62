"""The application message as the broker routes it, with its wire encoding cached.

A PUBLISH fanned out to a thousand subscribers is encoded once per (QoS, RETAIN, DUP) combination:
the fixed header and topic are cached as bytes and only the two packet-identifier bytes differ per
subscriber. ``publish_chunks`` returns the pieces without copying the payload; the connection's
writer joins everything queued for one ``send_all``.

MQTT 5 (``publish_chunks5``) adds the properties between the packet identifier and the payload:
the publisher's own (Payload Format Indicator, Content Type, Response Topic, Correlation Data,
User Properties -- passed on unchanged and in order, [MQTT-3.3.2-4], [MQTT-3.3.2-17..20]) are
encoded once per message; what differs per delivery -- the Message Expiry Interval left
([MQTT-3.3.2-6]), Subscription Identifiers ([MQTT-3.3.4-3]), a Topic Alias -- is written for
that delivery only, and a delivery with none of them shares the cached header as MQTT 3.1.1
deliveries do: at QoS 0 the header holds the properties too, and a message with no properties
shares the packet id with its Property Length 0 as one chunk, so an MQTT 5 delivery costs the
outbox as many chunks as a 3.1.1 one.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Final

from mqttd.codec.fields import write_varint
from mqttd.codec.packets import NO_PROPERTIES, Properties
from mqttd.codec.properties import encode_properties

_VARINT_LIMIT: Final = 268_435_455

#: Packet identifiers as the two bytes on the wire, made once each and shared by every
#: delivery (at most 65,535 small objects), so a QoS 1/2 delivery in an outbox costs list
#: slots only, never an object of its own.
_PACKET_ID_BYTES: list[bytes | None] = [None] * 65536


#: The same for MQTT 5 deliveries with no properties: the packet id, then Property Length 0
#: (filled as packet ids are used, so a broker with no MQTT 5 client holds none).
_PACKET_ID_BYTES5: dict[int, bytes] = {}
#: The property block of a message without properties: Property Length 0 ([MQTT-2.2.2-1]).
_NO_PROPERTIES5: Final = b"\x00"


def packet_id_bytes(packet_id: int) -> bytes:
    """The two bytes of ``packet_id`` (1..65535), shared."""
    cached = _PACKET_ID_BYTES[packet_id]
    if cached is None:
        cached = _PACKET_ID_BYTES[packet_id] = packet_id.to_bytes(2, "big")
    return cached


def _packet_id_bytes5(packet_id: int) -> bytes:
    """``packet_id`` (1..65535) and Property Length 0, shared."""
    cached = _PACKET_ID_BYTES5.get(packet_id)
    if cached is None:
        cached = _PACKET_ID_BYTES5[packet_id] = packet_id.to_bytes(2, "big") + _NO_PROPERTIES5
    return cached


def _fixed_header(first: int, remaining: int) -> bytes:
    """A fixed header: the first byte, then the Remaining Length (2.2.3)."""
    # Local copy of the 2.2.3 varint so this hot path needs no import of the codec module's
    # validation machinery; values are bounded by the decoder's max_packet_size.
    if remaining < 128:
        return bytes((first, remaining))
    out = bytearray((first,))
    while True:
        digit = remaining & 0x7F
        remaining >>= 7
        if remaining:
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
        "_properties5",
        "_topic_field",
        "cluster_id",
        "expires_at",
        "payload",
        "properties",
        "qos",
        "retain",
        "store_id",
        "topic",
    )

    def __init__(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        *,
        properties: Properties = NO_PROPERTIES,
        expires_at: float | None = None,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        #: the publisher's MQTT 5 properties that travel with the message (never a Topic
        #: Alias or Subscription Identifier, nor the Message Expiry Interval: ``expires_at``)
        self.properties = properties
        #: wall-clock time (``time.time()``) the message expires at, None when it never does
        #: (MQTT 5 Message Expiry Interval, 3.3.2.3.3)
        self.expires_at = expires_at
        self._properties5: bytes | None = None  # the encoded ``properties`` (MQTT 5)
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

    @classmethod
    def from_publish(
        cls, topic: str, payload: bytes, qos: int, retain: bool, properties: Properties, now: float
    ) -> Message:
        """A message from an MQTT 5 PUBLISH (or Will) with its properties, arriving at ``now``.

        The Topic Alias is the connection's (the decoder refuses Subscription Identifiers from
        clients), the Will Delay Interval the Will's, not the message's; the Message Expiry
        Interval becomes ``expires_at``.
        """
        if properties is NO_PROPERTIES:
            return cls(topic, payload, qos, retain)
        expiry = properties.message_expiry_interval
        if (
            properties.topic_alias is not None
            or expiry is not None
            or properties.will_delay_interval is not None
        ):
            properties = replace(
                properties,
                topic_alias=None,
                message_expiry_interval=None,
                will_delay_interval=None,  # a Will's, not the message's
            )
            if properties == NO_PROPERTIES:
                properties = NO_PROPERTIES
        return cls(
            topic,
            payload,
            qos,
            retain,
            properties=properties,
            expires_at=None if expiry is None else now + expiry,
        )

    def expired(self, now: float | None = None) -> bool:
        """Whether the Message Expiry Interval has passed ([MQTT-3.3.2-5]: not delivered)."""
        expires_at = self.expires_at
        if expires_at is None:
            return False
        return expires_at <= (time.time() if now is None else now)

    def __repr__(self) -> str:
        return (
            f"Message(topic={self.topic!r}, payload=<{len(self.payload)} bytes>, "
            f"qos={self.qos}, retain={self.retain})"
        )

    @property
    def size(self) -> int:
        """Bytes this message costs in a queue (topic + payload)."""
        return len(self._topic_field) + len(self.payload)

    def header(self, qos: int, retain: bool = False, dup: bool = False) -> bytes:
        """The fixed header and topic name of a PUBLISH delivering this message (MQTT 3.1.1),
        made once per flag combination; a packet identifier, if any, and the payload follow."""
        flags = (dup << 3) | (qos << 1) | retain
        header = self._headers.get(flags)
        if header is None:
            remaining = len(self._topic_field) + (2 if qos else 0) + len(self.payload)
            if remaining < 128:  # inlined: one bytes object, one concatenation
                header = bytes((0x30 | flags, remaining)) + self._topic_field
            else:
                header = _fixed_header(0x30 | flags, remaining) + self._topic_field
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
            return (self.header(0, retain), self.payload)
        return (self.header(qos, retain, dup), packet_id_bytes(packet_id), self.payload)

    def publish_chunks5(
        self,
        qos: int,
        retain: bool,
        dup: bool,
        packet_id: int,
        *,
        subscription_ids: tuple[int, ...] = (),
        alias: int = 0,
        send_topic: bool = True,
        now: float = 0.0,
    ) -> tuple[bytes, ...]:
        """The MQTT 5 PUBLISH delivering this message (arguments as ``publish_chunks``).

        Args:
            subscription_ids: the identifiers of the subscriptions it matched ([MQTT-3.3.4-3]).
            alias: the Topic Alias to send (0: none).
            send_topic: False sends an empty Topic Name with ``alias`` (the client knows it).
            now: the time (``time.time()``), for the Message Expiry Interval left.
        """
        static = self._properties5
        if static is None:
            static = self._encode_properties5()
        if qos == 0:
            dup = False
        if not (alias or subscription_ids or self.expires_at is not None):
            # Nothing differs per delivery (the common case): the header is cached, with the
            # publisher's properties folded in at QoS 0, and after the shared packet id bytes
            # when there are none -- as many chunks as an MQTT 3.1.1 delivery.
            flags = 0x100 | (dup << 3) | (qos << 1) | retain
            header = self._headers.get(flags)
            if header is None:
                header = self._header5(flags, static)
            if qos == 0:
                return (header, self.payload)
            if static == _NO_PROPERTIES5:
                return (header, _packet_id_bytes5(packet_id), self.payload)
            return (header, packet_id_bytes(packet_id), static, self.payload)
        extra = b""
        if self.expires_at is not None:
            # The interval left, rounded up: a message waiting no time keeps its value.
            left = max(1, math.ceil(self.expires_at - now))
            extra = b"\x02" + min(left, 0xFFFFFFFF).to_bytes(4, "big")
        for identifier in subscription_ids:
            extra += b"\x0b" + write_varint(identifier)
        if alias:
            extra += b"\x23" + alias.to_bytes(2, "big")
        # Per delivery: the properties' body is the extra ones, then the publisher's.
        body_length = len(extra) + _varint_body_length(static)
        publisher_properties = static[len(static) - _varint_body_length(static) :]
        block = write_varint(body_length) + extra + publisher_properties
        topic_field = self._topic_field if send_topic else b"\x00\x00"
        remaining = len(topic_field) + (2 if qos else 0) + len(block) + len(self.payload)
        header = _fixed_header(0x30 | (dup << 3) | (qos << 1) | retain, remaining) + topic_field
        if qos == 0:
            return (header, block, self.payload)
        return (header, packet_id_bytes(packet_id), block, self.payload)

    def header5_qos0(self, retain: bool = False) -> bytes:
        """``publish_chunks5``'s first chunk at QoS 0 when the delivery has nothing of its own
        (no alias, Subscription Identifier or expiry): fixed header, topic and the publisher's
        properties, made once; the payload follows."""
        header = self._headers.get(0x100 | retain)
        if header is None:
            static = self._properties5
            header = self._header5(
                0x100 | retain, static if static is not None else self._encode_properties5()
            )
        return header

    def _encode_properties5(self) -> bytes:
        """The publisher's properties as an MQTT 5 property block, encoded once."""
        properties = self.properties
        static = _NO_PROPERTIES5 if properties is NO_PROPERTIES else encode_properties(properties)
        self._properties5 = static
        return static

    def _header5(self, flags: int, static: bytes) -> bytes:
        """The cached MQTT 5 header for ``flags`` (0x100 | DUP, QoS, RETAIN bits): fixed
        header and topic, then at QoS 0 the property block ``static``."""
        qos = (flags >> 1) & 3
        remaining = len(self._topic_field) + (2 if qos else 0) + len(static) + len(self.payload)
        header = _fixed_header(0x30 | (flags & 0xFF), remaining) + self._topic_field
        if not qos:
            header += static
        self._headers[flags] = header
        return header


def _varint_body_length(block: bytes) -> int:
    """The body length of an encoded property block (its leading varint's value)."""
    value = shift = index = 0
    while True:
        byte = block[index]
        value |= (byte & 0x7F) << shift
        index += 1
        if not byte & 0x80:
            return value
        shift += 7
