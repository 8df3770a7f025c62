"""How the cluster writes messages, Wills and stored deliveries into Redis values, pure.

One compact binary form for everything that carries an application message, so a forwarded
message costs its payload plus a few bytes. A message with no MQTT 5 state is written in the
first form, byte for byte what nodes wrote before MQTT 5 (so nodes of both versions read each
other's MQTT 3.1.1 traffic during a rolling upgrade); one with properties or an expiry time
in the second, which a first byte of 0x80 or more tells apart (the first form's is its QoS,
0..2)::

    form 1:   qos (1) | retain (1) | topic length (2, big-endian) | topic | payload
    form 2:   flags (1) | topic length (2) | topic | [expires at (8)] | [properties] | payload
              flags = 0x80 | 0x10 if expires at | 0x08 if properties | retain << 2 | qos

``expires at`` is the wall-clock time (``time.time()``, an IEEE 754 double, big-endian) the
MQTT 5 Message Expiry Interval ends, absolute so a delivery waiting in Redis keeps counting
down (the nodes' clocks must agree, as NTP keeps them); ``properties`` is the property block
as on the wire (Property Length, then the properties). What uses the forms:

    message:   a forwarded message (its published QoS; RETAIN is 0) or a retained one
    delivery:  a stored delivery at its delivered QoS and RETAIN flag; its Subscription
               Identifiers travel as Subscription Identifier properties
    will:      the Will, its Will Properties (Will Delay Interval, Message Expiry Interval as
               an interval: it starts when the Will is published) in the property block

Forwarded messages travel in a node's inbox stream, one message per entry (fields ``m``: the
packed message, ``i``: its cluster id, ``G``: the shared groups the receiver serves) or, when
one pipeline sends several to the same node, several per entry (field ``b``, ``pack_forwards``:
for each, its cluster id, groups and packed message, each behind a 4-byte big-endian length).
A node that reads ``b`` entries reads ``m`` entries too; nodes older than ``b`` entries read
only ``m``, so a cluster is upgraded all at once (see the README, "Scaling out").

Keys are named here too. Every key of one persistent session shares the hash tag
``{prefix:s:<client id>}``, every key of one node's inbox ``{prefix:n:<node>}``, and the
cluster-wide keys ``{prefix}``, so a Lua script touches one slot and the layout works on Redis
Cluster as on one Redis.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import Final

from mqttd.codec.packets import NO_PROPERTIES, PacketType, Properties, Will
from mqttd.codec.properties import WILL_PROPERTIES, encode_properties, read_properties
from mqttd.errors import ProtocolError
from mqttd.message import Message

__all__ = [
    "Keys",
    "pack_delivery",
    "pack_forwards",
    "pack_message",
    "pack_will",
    "unpack_delivery",
    "unpack_forwards",
    "unpack_message",
    "unpack_will",
]

#: Flags of the second form's first byte.
_FORM2: Final = 0x80
_HAS_PROPERTIES: Final = 0x08
_HAS_EXPIRY: Final = 0x10
_EXPIRY: Final = struct.Struct(">d")


def pack_message(
    topic: str,
    payload: bytes,
    qos: int,
    retain: bool,
    *,
    properties: Properties = NO_PROPERTIES,
    expires_at: float | None = None,
) -> bytes:
    """The binary form of an application message (with its MQTT 5 properties and expiry)."""
    block = b"" if properties is NO_PROPERTIES else encode_properties(properties)
    return _pack(topic, payload, qos, retain, block, expires_at)


def pack_delivery(
    message: Message, qos: int, retain: bool, subscription_ids: tuple[int, ...] = ()
) -> bytes:
    """The binary form of a stored delivery: ``message`` at the delivered ``qos`` and
    ``retain``, with the Subscription Identifiers it is delivered with."""
    properties = message.properties
    if subscription_ids:
        properties = replace(properties, subscription_identifiers=subscription_ids)
    return pack_message(
        message.topic,
        message.payload,
        qos,
        retain,
        properties=properties,
        expires_at=message.expires_at,
    )


def _pack(
    topic: str, payload: bytes, qos: int, retain: bool, block: bytes, expires_at: float | None
) -> bytes:
    encoded = topic.encode("utf-8")
    head = len(encoded).to_bytes(2, "big") + encoded
    if not block and expires_at is None:
        return bytes((qos, retain)) + head + payload
    flags = _FORM2 | (qos | retain << 2)
    if expires_at is not None:
        flags |= _HAS_EXPIRY
        head += _EXPIRY.pack(expires_at)
    if block:
        flags |= _HAS_PROPERTIES
        head += block
    return bytes((flags,)) + head + payload


def _unpack(
    data: bytes, packet_type: int
) -> tuple[str, bytes, int, bool, Properties, float | None]:
    """(topic, payload, qos, retain, properties, expires at) of either form.

    Raises:
        ValueError: the bytes are neither form.
    """
    if len(data) < 4:
        raise ValueError("packed message too short")
    first = data[0]
    if first & _FORM2:
        qos, retain = first & 3, bool(first & 4)
        if qos > 2 or first & 0x60:
            raise ValueError("not a packed message")
        offset = 3
    else:
        qos, retain = first, bool(data[1])
        if qos > 2 or data[1] > 1:
            raise ValueError("not a packed message")
        offset = 4
    size = int.from_bytes(data[offset - 2 : offset], "big")
    pos = offset + size
    if len(data) < pos:
        raise ValueError("not a packed message")
    try:
        topic = data[offset:pos].decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("packed topic is not UTF-8") from None
    expires_at = None
    properties = NO_PROPERTIES
    if first & _HAS_EXPIRY:
        if len(data) < pos + 8:
            raise ValueError("packed expiry truncated")
        expires_at = _EXPIRY.unpack_from(data, pos)[0]
        pos += 8
    if first & _HAS_PROPERTIES:
        properties, pos = _read_block(data, pos, packet_type)
    return topic, data[pos:], qos, retain, properties, expires_at


def _read_block(data: bytes, pos: int, packet_type: int) -> tuple[Properties, int]:
    """The property block at ``pos`` and the offset after it."""
    length = shift = 0
    end = pos
    for _ in range(4):  # a Variable Byte Integer has at most four bytes (1.5.5)
        if end >= len(data):
            raise ValueError("packed properties truncated")
        byte = data[end]
        end += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    else:
        raise ValueError("packed property length malformed")
    stop = end + length
    block = bytearray(data[pos:stop])
    try:
        properties, used = read_properties(block, 0, len(block), packet_type)
    except ProtocolError as exc:
        raise ValueError(f"packed properties malformed: {exc}") from None
    if used != stop - pos:
        raise ValueError("packed properties truncated")
    return properties, stop


def unpack_delivery(data: bytes) -> tuple[Message, tuple[int, ...]]:
    """A ``Message`` (QoS and RETAIN as packed) and its Subscription Identifiers from
    ``pack_message`` or ``pack_delivery`` bytes.

    Raises:
        ValueError: the bytes are not a packed message.
    """
    topic, payload, qos, retain, properties, expires_at = _unpack(data, PacketType.PUBLISH)
    identifiers = properties.subscription_identifiers
    if identifiers:
        properties = replace(properties, subscription_identifiers=())
        if properties == NO_PROPERTIES:
            properties = NO_PROPERTIES
    message = Message(topic, payload, qos, retain, properties=properties, expires_at=expires_at)
    return message, identifiers


def unpack_message(data: bytes) -> Message:
    """A ``Message`` from ``pack_message`` bytes.

    Raises:
        ValueError: the bytes are not a packed message.
    """
    return unpack_delivery(data)[0]


_LENGTHS: Final = struct.Struct(">III")

#: One forwarded message in a batch entry: (cluster id, shared groups, packed message).
Forward = tuple[bytes, bytes, bytes]


def pack_forwards(items: list[Forward]) -> bytes:
    """Several forwarded messages as one inbox entry's ``b`` field (see above)."""
    pack = _LENGTHS.pack
    parts: list[bytes] = []
    for message_id, groups, packed in items:
        parts += (pack(len(message_id), len(groups), len(packed)), message_id, groups, packed)
    return b"".join(parts)


def unpack_forwards(data: bytes) -> list[Forward]:
    """The forwarded messages of a ``pack_forwards`` value, in order.

    Raises:
        ValueError: the bytes end inside an item.
    """
    items: list[Forward] = []
    unpack_from = _LENGTHS.unpack_from
    size, pos, end = _LENGTHS.size, 0, len(data)
    while pos < end:
        if end - pos < size:
            raise ValueError("packed forwards truncated")
        id_len, groups_len, packed_len = unpack_from(data, pos)
        pos += size
        groups_at = pos + id_len
        packed_at = groups_at + groups_len
        stop = packed_at + packed_len
        if stop > end:
            raise ValueError("packed forwards truncated")
        items.append((data[pos:groups_at], data[groups_at:packed_at], data[packed_at:stop]))
        pos = stop
    return items


def pack_will(will: Will) -> bytes:
    """The binary form of a Will (stored so a surviving node can publish it)."""
    properties = will.properties
    block = b"" if properties is NO_PROPERTIES else encode_properties(properties, WILL_PROPERTIES)
    return _pack(will.topic, will.message, will.qos, will.retain, block, None)


def unpack_will(data: bytes) -> Will:
    """A ``Will`` from ``pack_will`` bytes.

    Raises:
        ValueError: the bytes are not a packed Will.
    """
    topic, payload, qos, retain, properties, _expires_at = _unpack(data, WILL_PROPERTIES)
    return Will(topic, payload, qos, retain, properties)


@dataclass(frozen=True, slots=True)
class Keys:
    """Every Redis key and channel the cluster uses, under one prefix."""

    prefix: str = "mqttd"

    # -- cluster-wide (one hash tag, so Lua scripts may combine them) ---------------------------

    @property
    def epoch(self) -> str:
        """STRING: a random id set once per Redis data set: a new one means Redis lost it."""
        return f"{{{self.prefix}}}:epoch"

    @property
    def nodes(self) -> str:
        """ZSET node id -> last heartbeat (Redis time, ms)."""
        return f"{{{self.prefix}}}:nodes"

    def routes(self, node_id: str) -> str:
        """SET of the topic filters ``node_id`` has subscribers for."""
        return f"{{{self.prefix}}}:routes:{node_id}"

    @property
    def route_log(self) -> str:
        """STREAM of route changes: fields op (+/-), node, filter."""
        return f"{{{self.prefix}}}:routelog"

    @property
    def applied(self) -> str:
        """HASH node id -> the last route-log id it applied."""
        return f"{{{self.prefix}}}:applied"

    @property
    def applied_log(self) -> str:
        """STREAM: a node applied route-log entries (wakes barrier waiters)."""
        return f"{{{self.prefix}}}:appliedlog"

    @property
    def retained(self) -> str:
        """HASH topic -> packed retained message."""
        return f"{{{self.prefix}}}:retained"

    @property
    def retained_log(self) -> str:
        """STREAM of retained changes: fields topic, and message (absent = deleted)."""
        return f"{{{self.prefix}}}:retainedlog"

    @property
    def clients(self) -> str:
        """HASH client id -> the node its connection is on."""
        return f"{{{self.prefix}}}:clients"

    @property
    def hosts(self) -> str:
        """HASH client id -> the node hosting its persistent session."""
        return f"{{{self.prefix}}}:hosts"

    def hosted(self, node_id: str) -> str:
        """SET of client ids whose persistent sessions ``node_id`` hosts."""
        return f"{{{self.prefix}}}:hosted:{node_id}"

    def wills(self, node_id: str) -> str:
        """HASH client id -> packed Will, for the connections on ``node_id``."""
        return f"{{{self.prefix}}}:wills:{node_id}"

    def cleanup(self, node_id: str) -> str:
        """Lock taken by the node that cleans up after dead ``node_id``."""
        return f"{{{self.prefix}}}:cleanup:{node_id}"

    def stats(self, node_id: str) -> str:
        """HASH of ``node_id``'s counters, for cluster totals in $SYS."""
        return f"{{{self.prefix}}}:stats:{node_id}"

    # -- one node --------------------------------------------------------------------------------

    def inbox(self, node_id: str) -> str:
        """STREAM of what other nodes send ``node_id``: messages and control requests."""
        return f"{{{self.prefix}:n:{node_id}}}:inbox"

    # -- one persistent session --------------------------------------------------------------

    def session(self, client_id: str) -> str:
        """HASH owner, owned, last_seen."""
        return f"{{{self.prefix}:s:{client_id}}}:h"

    def subscriptions(self, client_id: str) -> str:
        """HASH topic filter -> granted QoS."""
        return f"{{{self.prefix}:s:{client_id}}}:subs"

    def deliveries(self, client_id: str) -> str:
        """HASH seq -> packed delivery (queued or in flight)."""
        return f"{{{self.prefix}:s:{client_id}}}:q"

    def packet_ids(self, client_id: str) -> str:
        """HASH seq -> packet id of a delivery in flight."""
        return f"{{{self.prefix}:s:{client_id}}}:pid"

    def released(self, client_id: str) -> str:
        """SET of seqs of QoS 2 deliveries released (PUBREL sent)."""
        return f"{{{self.prefix}:s:{client_id}}}:rel"

    def incoming(self, client_id: str) -> str:
        """SET of incoming QoS 2 packet ids awaiting PUBREL."""
        return f"{{{self.prefix}:s:{client_id}}}:in"

    def session_keys(self, client_id: str) -> tuple[str, ...]:
        """Every key of one persistent session."""
        return (
            self.session(client_id),
            self.subscriptions(client_id),
            self.deliveries(client_id),
            self.packet_ids(client_id),
            self.released(client_id),
            self.incoming(client_id),
        )
