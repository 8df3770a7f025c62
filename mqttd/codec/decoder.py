"""Incremental, sans-IO decoder: bytes in, MQTT 5.0, 3.1.1 and 3.1 packets out.

Theory of operation
-------------------
``receive_data()`` keeps the read itself when everything before it was decoded (the usual
case), or the unfinished packet followed by the read; a packet longer than 64 KiB accumulates in
a ``bytearray`` instead, so the work done is O(bytes received) however the stream is split.
``next_packets()`` parses every complete packet from a read offset into it (``next_packet()``
one); slices of a ``bytes`` buffer are the payloads themselves, with no second copy.

Each packet is decoded in two steps:

1. The fixed header. Its first byte is looked up in a 256-entry rule table chosen for the
   connection's state (awaiting CONNECT, MQTT 5, MQTT 3.1.1, MQTT 3.1; server or client side).
   The entry is either an error to raise at once (wrong packet type, reserved flag bits,
   CONNECT-first rules, AUTH outside MQTT 5) or what the type requires of the Remaining Length:
   an exact value (``>= 0``), any (``-1``), or a minimum ``m`` encoded as ``-2 - m`` (MQTT 5
   acknowledgements, which may carry a reason code and properties). Then the Remaining Length
   varint (at most 4 bytes) is read and checked against that rule and ``max_packet_size``. All
   of this happens *before* the body is buffered, so a bad or oversized packet is refused
   without waiting for (or storing) its body.
2. The body, once it is complete, goes to a per-type decoder picked from a tuple indexed by the
   packet type; there is one tuple for MQTT 3.1.1/3.1 and one for MQTT 5, switched together
   with the rule table when a CONNECT is decoded. PUBLISH and the acknowledgements are
   straight-line code slicing the buffer; MQTT 5 properties are read by
   ``mqttd.codec.properties`` (see its theory of operation).

Any ``ProtocolError`` leaves the decoder in an error state: every later ``next_packet()``
raises again and further input is dropped. On an MQTT 5 connection (from the moment its CONNECT
names protocol level 5) every error carries ``reason_code``, the reason code for the CONNACK or
DISCONNECT sent before closing [MQTT-4.13.1-1]: the raise site sets it where the spec names one,
otherwise it is 0x81 for ``MalformedPacket``, 0x82 for ``ProtocolViolation`` and 0x95 for a
packet above ``max_packet_size``. On 3.1.1/3.1 it stays ``None``.

``receive_data(b"")`` marks EOF: ``CLOSED`` if the buffer ended on a packet boundary, else
``MalformedPacket("truncated_packet")``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final, Literal

from mqttd.codec.fields import Buffer
from mqttd.codec.fields import check_text as _check_text
from mqttd.codec.fields import read_binary as _read_binary
from mqttd.codec.fields import read_utf8 as _read_utf8
from mqttd.codec.packets import (
    AUTH_REASON_CODES,
    CLIENT_TO_SERVER,
    CONNACK_REASON_CODES,
    DISCONNECT_REASON_CODES,
    MAX_REMAINING_LENGTH,
    NO_PROPERTIES,
    PROTOCOL_MQTT_5,
    PROTOCOL_MQTT_31,
    PROTOCOL_MQTT_311,
    PUBACK_REASON_CODES,
    PUBCOMP_REASON_CODES,
    PUBREC_REASON_CODES,
    PUBREL_REASON_CODES,
    SUBACK_REASON_CODES,
    UNSUBACK_REASON_CODES,
    Auth,
    Connack,
    ConnackCode,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    Pingreq,
    Pingresp,
    Properties,
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
)
from mqttd.codec.properties import WILL_PROPERTIES, read_properties
from mqttd.errors import LocalProtocolError, MalformedPacket, ProtocolError, ProtocolViolation
from mqttd.topics import validate_topic_filter, validate_topic_name

__all__ = ["CLOSED", "NEED_DATA", "Decoder"]


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"
    CLOSED = "CLOSED"

    def __repr__(self) -> str:
        return self.value

    __str__ = __repr__


#: ``next_packet()`` needs more bytes before it can return a packet.
NEED_DATA: Final = _Sentinel.NEED_DATA
#: The peer sent EOF and the buffer ended exactly on a packet boundary.
CLOSED: Final = _Sentinel.CLOSED

_MQTT_311_NAME: Final = PROTOCOL_MQTT_311[0].encode()
_MQTT_311_LEVEL: Final = PROTOCOL_MQTT_311[1]
_MQTT_31_NAME: Final = PROTOCOL_MQTT_31[0].encode()
_MQTT_31_LEVEL: Final = PROTOCOL_MQTT_31[1]
_MQTT_5_LEVEL: Final = PROTOCOL_MQTT_5[1]

# --- fixed-header rule tables -------------------------------------------------------------------

#: Rule value meaning "any Remaining Length"; ``>= 0`` is the exact length required, and
#: ``-2 - m`` (below -1) a minimum ``m``.
_VARIABLE: Final = -1


def _at_least(m: int) -> int:
    return -2 - m


_Rule = int | tuple[type[ProtocolError], str]

#: Required low nibble (Table 2.2) for every type except PUBLISH and CONNECT.
_FLAGS: Final = {
    PacketType.CONNACK: 0x0,
    PacketType.PUBACK: 0x0,
    PacketType.PUBREC: 0x0,
    PacketType.PUBREL: 0x2,  # [MQTT-3.6.1-1]
    PacketType.PUBCOMP: 0x0,
    PacketType.SUBSCRIBE: 0x2,  # [MQTT-3.8.1-1]
    PacketType.SUBACK: 0x0,
    PacketType.UNSUBSCRIBE: 0x2,  # [MQTT-3.10.1-1]
    PacketType.UNSUBACK: 0x0,
    PacketType.PINGREQ: 0x0,
    PacketType.PINGRESP: 0x0,
    PacketType.DISCONNECT: 0x0,  # [MQTT-3.14.1-1]
    PacketType.AUTH: 0x0,  # [MQTT-3.15.1-1]
}

#: Types whose Remaining Length is fixed.
_FIXED_LENGTH: Final = {
    PacketType.CONNACK: 2,
    PacketType.PUBACK: 2,
    PacketType.PUBREC: 2,
    PacketType.PUBREL: 2,
    PacketType.PUBCOMP: 2,
    PacketType.UNSUBACK: 2,
    PacketType.PINGREQ: 0,
    PacketType.PINGRESP: 0,
    PacketType.DISCONNECT: 0,
}

#: MQTT 5 Remaining Lengths: acknowledgements may add a reason code and properties (3.4.2.1:
#: "the Reason Code and Property Length can be omitted" when 0 and none), and CONNACK, SUBACK
#: and UNSUBACK always have a Property Length (CONNACK: flags, reason code, properties; SUBACK,
#: UNSUBACK: packet id, properties, at least one reason code). DISCONNECT and AUTH may be empty.
_FIXED_LENGTH_5: Final = {
    PacketType.CONNACK: _at_least(3),
    PacketType.PUBACK: _at_least(2),
    PacketType.PUBREC: _at_least(2),
    PacketType.PUBREL: _at_least(2),
    PacketType.PUBCOMP: _at_least(2),
    PacketType.SUBACK: _at_least(4),
    PacketType.UNSUBACK: _at_least(4),
    PacketType.PINGREQ: 0,
    PacketType.PINGRESP: 0,
}

#: MQTT 3.1 re-sends these like a QoS 1 PUBLISH, so it may set DUP (3.1 sections 3.6, 3.8, 3.10).
_DUP_ALLOWED_31: Final = frozenset(
    {PacketType.PUBREL, PacketType.SUBSCRIBE, PacketType.UNSUBSCRIBE}
)


def _rule(first: int, *, server: bool, await_connect: bool, level: int) -> _Rule:
    """Work out what to do with a packet whose first byte is ``first`` in the given state."""
    kind, flags = first >> 4, first & 0x0F
    mqtt31 = level == _MQTT_31_LEVEL
    mqtt5 = level == _MQTT_5_LEVEL
    if kind == 0 or (kind == 15 and not mqtt5):
        return (MalformedPacket, "reserved_packet_type")  # AUTH is MQTT 5 only (3.15)
    ptype = PacketType(kind)
    if server and ptype not in CLIENT_TO_SERVER:
        return (MalformedPacket, "server_only_packet_type")
    if ptype is PacketType.CONNECT:
        if server and not await_connect:
            return (ProtocolViolation, "second_connect")  # [MQTT-3.1.0-2]
        # The flags depend on the protocol level, so they are checked with the body.
        return _VARIABLE
    if await_connect:
        return (ProtocolViolation, "first_packet_not_connect")  # [MQTT-3.1.0-1]
    if ptype is PacketType.PUBLISH:
        if flags & 0x6 == 0x6:
            return (MalformedPacket, "publish_qos_3")  # [MQTT-3.3.1-4]
        if flags & 0x8 and not flags & 0x6:
            return (MalformedPacket, "dup_on_qos0")  # [MQTT-3.3.1-2]
        return _VARIABLE
    allowed = {_FLAGS[ptype]}
    if mqtt31 and ptype in _DUP_ALLOWED_31:
        allowed.add(_FLAGS[ptype] | 0x8)
    # MQTT 3.1 does not define DISCONNECT's flag bits; like Mosquitto, do not check them.
    if flags not in allowed and not (mqtt31 and ptype is PacketType.DISCONNECT):
        # [MQTT-2.2.2-1] [MQTT-2.2.2-2] [MQTT-3.6.1-1] [MQTT-3.8.1-1] [MQTT-3.10.1-1]
        # [MQTT-3.14.1-1] [MQTT-3.15.1-1] [MQTT-2.1.3-1]
        return (MalformedPacket, "invalid_fixed_header_flags")
    if mqtt5:
        return _FIXED_LENGTH_5.get(ptype, _VARIABLE)
    return _FIXED_LENGTH.get(ptype, _VARIABLE)


def _table(*, server: bool, await_connect: bool, level: int) -> tuple[_Rule, ...]:
    return tuple(
        _rule(first, server=server, await_connect=await_connect, level=level)
        for first in range(256)
    )


_AWAIT_CONNECT: Final = _table(server=True, await_connect=True, level=_MQTT_311_LEVEL)
_SERVER_5: Final = _table(server=True, await_connect=False, level=_MQTT_5_LEVEL)
_SERVER_311: Final = _table(server=True, await_connect=False, level=_MQTT_311_LEVEL)
_SERVER_31: Final = _table(server=True, await_connect=False, level=_MQTT_31_LEVEL)
_CLIENT_5: Final = _table(server=False, await_connect=False, level=_MQTT_5_LEVEL)
_CLIENT_311: Final = _table(server=False, await_connect=False, level=_MQTT_311_LEVEL)
_CLIENT_31: Final = _table(server=False, await_connect=False, level=_MQTT_31_LEVEL)

#: (server side, client side) rule tables by protocol level.
_TABLES: Final = {
    _MQTT_5_LEVEL: (_SERVER_5, _CLIENT_5),
    _MQTT_311_LEVEL: (_SERVER_311, _CLIENT_311),
    _MQTT_31_LEVEL: (_SERVER_31, _CLIENT_31),
}

# --- body field readers (the generic ones are in mqttd.codec.fields) ------------------------------


def _read_packet_id(buf: Buffer, pos: int, end: int) -> int:
    """Read a non-zero Packet Identifier at ``pos`` ([MQTT-2.3.1-1])."""
    if pos + 2 > end:
        raise MalformedPacket("truncated_packet_id")
    packet_id = buf[pos] << 8 | buf[pos + 1]
    if not packet_id:
        raise MalformedPacket("zero_packet_id")  # [MQTT-2.3.1-1]
    return packet_id


def _end_of_properties(buf: Buffer, pos: int, end: int, packet_type: int) -> Properties:
    """Read the properties that must end the packet exactly at ``end``."""
    props, pos = read_properties(buf, pos, end, packet_type)
    if pos != end:
        raise MalformedPacket("trailing_bytes")
    return props


# --- per-type body decoders: (decoder, flags, view, body start, body end) -> packet --------------

_Decode = Callable[["Decoder", int, Buffer, int, int], Packet]

_PINGREQ: Final = Pingreq()
_PINGRESP: Final = Pingresp()
_DISCONNECT: Final = Disconnect()
_AUTH: Final = Auth()
_SUBACK_CODES: Final = frozenset({0x00, 0x01, 0x02, 0x80})  # [MQTT-3.9.3-2]
_SHARE_PREFIX: Final = "$share/"


# PUBLISH is the hot path. A frozen dataclass's __init__ sets each field through
# object.__setattr__, which costs about as much as the whole rest of the decoding; writing the
# slots through their descriptors builds the identical object in half the time. (Publish has no
# __post_init__ to skip.)
_new_object: Final = object.__new__
(
    _set_topic,
    _set_payload,
    _set_qos,
    _set_retain,
    _set_dup,
    _set_packet_id,
    _set_properties,
) = (
    getattr(Publish, field).__set__
    for field in ("topic", "payload", "qos", "retain", "dup", "packet_id", "properties")
)


def _decode_publish(dec: Decoder, flags: int, buf: Buffer, start: int, end: int) -> Publish:
    if start + 2 > end:
        raise MalformedPacket("truncated_publish")
    pos = start + 2 + (buf[start] << 8 | buf[start + 1])
    if pos > end:
        raise MalformedPacket("truncated_publish")
    try:
        topic = buf[start + 2 : pos].decode()  # [MQTT-3.3.2-1] [MQTT-1.5.3-1]
    except UnicodeDecodeError:
        raise MalformedPacket("invalid_utf8") from None
    # The two checks are inlined for the common case (printable ASCII, no wildcard) and
    # called only to raise: this pays for setting the MQTT 5 ``properties`` slot below.
    if not (topic.isascii() and topic.isprintable()):
        _check_text(topic)  # [MQTT-1.5.3-2] and the control characters of 1.5.3
    if not topic or "+" in topic or "#" in topic:
        validate_topic_name(topic)  # [MQTT-3.3.2-2] [MQTT-4.7.3-1]
    qos = (flags >> 1) & 0x3
    if qos:
        if pos + 2 > end:
            raise MalformedPacket("truncated_publish")
        packet_id: int | None = buf[pos] << 8 | buf[pos + 1]
        if not packet_id:
            raise MalformedPacket("zero_packet_id")  # [MQTT-2.3.1-1]
        pos += 2
    else:
        packet_id = None  # [MQTT-2.3.1-5] no Packet Identifier at QoS 0: the rest is payload
    packet = _new_object(Publish)
    _set_topic(packet, topic)
    payload = buf[pos:end]
    _set_payload(packet, payload if payload.__class__ is bytes else bytes(payload))
    _set_qos(packet, qos)
    _set_retain(packet, bool(flags & 0x1))
    _set_dup(packet, bool(flags & 0x8))
    _set_packet_id(packet, packet_id)
    _set_properties(packet, NO_PROPERTIES)
    return packet


def _decode_puback(dec: Decoder, flags: int, buf: Buffer, start: int, end: int) -> Puback:
    return Puback(_read_packet_id(buf, start, end))


def _decode_pubrec(dec: Decoder, flags: int, buf: Buffer, start: int, end: int) -> Pubrec:
    return Pubrec(_read_packet_id(buf, start, end))


def _decode_pubrel(dec: Decoder, flags: int, buf: Buffer, start: int, end: int) -> Pubrel:
    return Pubrel(_read_packet_id(buf, start, end), bool(flags & 0x8))


def _decode_pubcomp(dec: Decoder, flags: int, buf: Buffer, start: int, end: int) -> Pubcomp:
    return Pubcomp(_read_packet_id(buf, start, end))


def _decode_unsuback(dec: Decoder, flags: int, buf: Buffer, start: int, end: int) -> Unsuback:
    return Unsuback(_read_packet_id(buf, start, end))


def _decode_connack(dec: Decoder, flags: int, buf: Buffer, start: int, end: int) -> Connack:
    ack_flags = buf[start]
    if ack_flags & 0xFE:
        raise MalformedPacket("connack_reserved_flags")  # 3.2.2.1: bits 7-1 MUST be 0
    return Connack(bool(ack_flags), buf[start + 1])


def _decode_suback(dec: Decoder, flags: int, buf: Buffer, start: int, end: int) -> Suback:
    packet_id = _read_packet_id(buf, start, end)
    codes = tuple(buf[start + 2 : end])
    if not _SUBACK_CODES.issuperset(codes):
        raise MalformedPacket("invalid_suback_code")  # [MQTT-3.9.3-2]
    return Suback(packet_id, codes)


def _decode_subscribe(dec: Decoder, flags: int, buf: Buffer, start: int, end: int) -> Subscribe:
    packet_id = _read_packet_id(buf, start, end)  # [MQTT-2.3.1-1]
    pos = start + 2
    subscriptions = []
    while pos < end:
        topic_filter, pos = _read_utf8(buf, pos, end)  # [MQTT-3.8.3-1]
        # Bad wildcard placement closes the connection, like Mosquitto. [MQTT-4.7.1-2]
        # [MQTT-4.7.1-3]
        validate_topic_filter(topic_filter)
        if pos >= end:
            raise MalformedPacket("truncated_subscribe")
        requested = buf[pos]
        pos += 1
        if requested & 0xFC or requested == 3:
            raise MalformedPacket("invalid_requested_qos")  # [MQTT-3.8.3-4]
        subscriptions.append((topic_filter, requested))
    if not subscriptions and dec.protocol_level != _MQTT_31_LEVEL:
        raise ProtocolViolation("subscribe_without_filters")  # [MQTT-3.8.3-3]
    return Subscribe(packet_id, tuple(subscriptions))


def _decode_unsubscribe(
    dec: Decoder, flags: int, buf: Buffer, start: int, end: int
) -> Unsubscribe:
    packet_id = _read_packet_id(buf, start, end)  # [MQTT-2.3.1-1]
    pos = start + 2
    topic_filters = []
    while pos < end:
        topic_filter, pos = _read_utf8(buf, pos, end)  # [MQTT-3.10.3-1]
        validate_topic_filter(topic_filter)
        topic_filters.append(topic_filter)
    if not topic_filters and dec.protocol_level != _MQTT_31_LEVEL:
        raise ProtocolViolation("unsubscribe_without_filters")  # [MQTT-3.10.3-2]
    return Unsubscribe(packet_id, tuple(topic_filters))


def _decode_pingreq(dec: Decoder, flags: int, buf: Buffer, start: int, end: int) -> Pingreq:
    return _PINGREQ


def _decode_pingresp(dec: Decoder, flags: int, buf: Buffer, start: int, end: int) -> Pingresp:
    return _PINGRESP


def _decode_disconnect(
    dec: Decoder, flags: int, buf: Buffer, start: int, end: int
) -> Disconnect:
    return _DISCONNECT


def _decode_connect(dec: Decoder, flags: int, buf: Buffer, start: int, end: int) -> Connect:
    return dec._decode_connect(flags, buf, start, end)


def _unreachable(dec: Decoder, flags: int, buf: Buffer, start: int, end: int) -> Packet:
    # The rule tables refuse these packet types before their body is read.
    raise LocalProtocolError("decoder_table_bug")


# --- MQTT 5 body decoders -------------------------------------------------------------------------


def _decode_publish5(dec: Decoder, flags: int, buf: Buffer, start: int, end: int) -> Publish:
    if start + 2 > end:
        raise MalformedPacket("truncated_publish")
    pos = start + 2 + (buf[start] << 8 | buf[start + 1])
    if pos > end:
        raise MalformedPacket("truncated_publish")
    try:
        topic = buf[start + 2 : pos].decode()  # [MQTT-3.3.2-1] [MQTT-1.5.4-1]
    except UnicodeDecodeError:
        raise MalformedPacket("invalid_utf8") from None
    if not (topic.isascii() and topic.isprintable()):
        _check_text(topic)  # [MQTT-1.5.4-2] and the control characters of 1.5.4
    if "+" in topic or "#" in topic:
        validate_topic_name(topic)  # [MQTT-3.3.2-2]; an empty topic is checked below
    qos = (flags >> 1) & 0x3
    if qos:
        if pos + 2 > end:
            raise MalformedPacket("truncated_publish")
        packet_id: int | None = buf[pos] << 8 | buf[pos + 1]
        if not packet_id:
            raise MalformedPacket("zero_packet_id")  # [MQTT-2.2.1-3]
        pos += 2
    else:
        packet_id = None  # [MQTT-2.2.1-2]
    if pos >= end:
        raise MalformedPacket("truncated_publish")  # the Property Length is not optional
    if buf[pos]:
        props, pos = read_properties(buf, pos, end, PacketType.PUBLISH)
        if props.subscription_identifiers and dec._server:
            raise MalformedPacket(  # [MQTT-3.3.4-6]
                "subscription_identifier_from_client", reason_code=ReasonCode.PROTOCOL_ERROR
            )
    else:
        props = NO_PROPERTIES
        pos += 1
    if not topic and props.topic_alias is None:
        # 3.3.2.1: "It is a Protocol Error if the Topic Name is zero length and there is no
        # Topic Alias." Whether the alias is known is the receiver's business.
        raise ProtocolViolation("empty_topic_without_alias")
    packet = _new_object(Publish)
    _set_topic(packet, topic)
    payload = buf[pos:end]
    _set_payload(packet, payload if payload.__class__ is bytes else bytes(payload))
    _set_qos(packet, qos)
    _set_retain(packet, bool(flags & 0x1))
    _set_dup(packet, bool(flags & 0x8))
    _set_packet_id(packet, packet_id)
    _set_properties(packet, props)
    return packet


def _ack5_decoder(
    cls: type[Puback | Pubrec | Pubrel | Pubcomp],
    packet_type: PacketType,
    codes: frozenset[int],
) -> _Decode:
    """A decoder for PUBACK, PUBREC, PUBREL or PUBCOMP on MQTT 5 (3.4.2 - 3.7.2)."""

    def decode(dec: Decoder, flags: int, buf: Buffer, start: int, end: int) -> Packet:
        packet_id = _read_packet_id(buf, start, end)
        if end - start == 2:
            return cls(packet_id)  # no reason code: 0x00 Success, no properties
        reason = buf[start + 2]
        if reason not in codes:
            # [MQTT-3.4.2-1] [MQTT-3.5.2-1] [MQTT-3.6.2-1] [MQTT-3.7.2-1]
            raise MalformedPacket("invalid_reason_code")
        if end - start == 3:
            # "If the Remaining Length is less than 4 there is no Property Length and the value
            # of 0 is used" (3.4.2.2 and its twins).
            return cls(packet_id, reason_code=reason)
        return cls(
            packet_id,
            reason_code=reason,
            properties=_end_of_properties(buf, start + 3, end, packet_type),
        )

    return decode


def _decode_connack5(dec: Decoder, flags: int, buf: Buffer, start: int, end: int) -> Connack:
    ack_flags = buf[start]
    if ack_flags & 0xFE:
        raise MalformedPacket("connack_reserved_flags")  # [MQTT-3.2.2-1]
    reason = buf[start + 1]
    if reason not in CONNACK_REASON_CODES:
        raise MalformedPacket("invalid_reason_code")  # [MQTT-3.2.2-8]
    props = _end_of_properties(buf, start + 2, end, PacketType.CONNACK)
    return Connack(bool(ack_flags), reason, props)


def _decode_subscribe5(dec: Decoder, flags: int, buf: Buffer, start: int, end: int) -> Subscribe:
    packet_id = _read_packet_id(buf, start, end)  # [MQTT-2.2.1-3]
    props, pos = read_properties(buf, start + 2, end, PacketType.SUBSCRIBE)
    subscriptions = []
    while pos < end:
        topic_filter, pos = _read_utf8(buf, pos, end)  # [MQTT-3.8.3-1]
        # Bad wildcard placement closes the connection, as on 3.1.1. [MQTT-4.7.1-2]
        validate_topic_filter(topic_filter)
        if pos >= end:
            raise MalformedPacket("truncated_subscribe")
        options = buf[pos]
        pos += 1
        if options & 0xC0:
            raise MalformedPacket("subscription_options_reserved_bits")  # [MQTT-3.8.3-5]
        if options & 0x03 == 3:
            # 3.8.3.1: "It is a Protocol Error if the Maximum QoS field has the value 3."
            raise MalformedPacket("invalid_requested_qos", reason_code=ReasonCode.PROTOCOL_ERROR)
        if options & 0x30 == 0x30:
            # 3.8.3.1: "It is a Protocol Error to send a Retain Handling value of 3."
            raise MalformedPacket("retain_handling_3", reason_code=ReasonCode.PROTOCOL_ERROR)
        if options & 0x04 and topic_filter.startswith(_SHARE_PREFIX):
            raise ProtocolViolation("no_local_on_shared_subscription")  # [MQTT-3.8.3-4]
        subscriptions.append((topic_filter, options))
    if not subscriptions:
        raise ProtocolViolation("subscribe_without_filters")  # [MQTT-3.8.3-2]
    return Subscribe(packet_id, tuple(subscriptions), props)


def _decode_suback5(dec: Decoder, flags: int, buf: Buffer, start: int, end: int) -> Suback:
    packet_id = _read_packet_id(buf, start, end)
    props, pos = read_properties(buf, start + 2, end, PacketType.SUBACK)
    codes = tuple(buf[pos:end])
    if not codes:
        raise ProtocolViolation("suback_without_reason_codes")  # [MQTT-3.9.3-2]
    if not SUBACK_REASON_CODES.issuperset(codes):
        raise MalformedPacket("invalid_reason_code")  # [MQTT-3.9.3-2]
    return Suback(packet_id, codes, props)


def _decode_unsubscribe5(
    dec: Decoder, flags: int, buf: Buffer, start: int, end: int
) -> Unsubscribe:
    packet_id = _read_packet_id(buf, start, end)  # [MQTT-2.2.1-3]
    props, pos = read_properties(buf, start + 2, end, PacketType.UNSUBSCRIBE)
    topic_filters = []
    while pos < end:
        topic_filter, pos = _read_utf8(buf, pos, end)  # [MQTT-3.10.3-1]
        validate_topic_filter(topic_filter)
        topic_filters.append(topic_filter)
    if not topic_filters:
        raise ProtocolViolation("unsubscribe_without_filters")  # [MQTT-3.10.3-2]
    return Unsubscribe(packet_id, tuple(topic_filters), props)


def _decode_unsuback5(dec: Decoder, flags: int, buf: Buffer, start: int, end: int) -> Unsuback:
    packet_id = _read_packet_id(buf, start, end)
    props, pos = read_properties(buf, start + 2, end, PacketType.UNSUBACK)
    codes = tuple(buf[pos:end])
    if not codes:
        raise ProtocolViolation("unsuback_without_reason_codes")  # [MQTT-3.11.3-2]
    if not UNSUBACK_REASON_CODES.issuperset(codes):
        raise MalformedPacket("invalid_reason_code")  # [MQTT-3.11.3-2]
    return Unsuback(packet_id, codes, props)


def _decode_disconnect5(
    dec: Decoder, flags: int, buf: Buffer, start: int, end: int
) -> Disconnect:
    if start == end:
        return _DISCONNECT  # 3.14.2.1: no Reason Code means 0x00 Normal disconnection
    reason = buf[start]
    if reason not in DISCONNECT_REASON_CODES:
        raise MalformedPacket("invalid_reason_code")  # [MQTT-3.14.2-1]
    if end - start == 1:
        return Disconnect(reason)  # 3.14.2.2.1: "less than 2": Property Length 0
    props = _end_of_properties(buf, start + 1, end, PacketType.DISCONNECT)
    if props.session_expiry_interval is not None and not dec._server:
        raise MalformedPacket(  # [MQTT-3.14.2-2]
            "session_expiry_from_server", reason_code=ReasonCode.PROTOCOL_ERROR
        )
    return Disconnect(reason, props)


def _decode_auth(dec: Decoder, flags: int, buf: Buffer, start: int, end: int) -> Auth:
    if start == end:
        return _AUTH  # 3.15.2.1: Remaining Length 0 means 0x00 Success and no properties
    reason = buf[start]
    if reason not in AUTH_REASON_CODES:
        raise MalformedPacket("invalid_reason_code")  # [MQTT-3.15.2-1]
    if end - start == 1:
        return Auth(reason)
    return Auth(reason, _end_of_properties(buf, start + 1, end, PacketType.AUTH))


#: Decoders by packet type (the fixed header's high nibble), MQTT 3.1.1 and 3.1. The rules table
#: has already refused the types a side must not receive.
_DECODERS_3: Final[tuple[_Decode, ...]] = (
    _unreachable,
    _decode_connect,
    _decode_connack,
    _decode_publish,
    _decode_puback,
    _decode_pubrec,
    _decode_pubrel,
    _decode_pubcomp,
    _decode_subscribe,
    _decode_suback,
    _decode_unsubscribe,
    _decode_unsuback,
    _decode_pingreq,
    _decode_pingresp,
    _decode_disconnect,
    _unreachable,
)
#: The same for MQTT 5.
_DECODERS_5: Final[tuple[_Decode, ...]] = (
    _unreachable,
    _decode_connect,
    _decode_connack5,
    _decode_publish5,
    _ack5_decoder(Puback, PacketType.PUBACK, PUBACK_REASON_CODES),
    _ack5_decoder(Pubrec, PacketType.PUBREC, PUBREC_REASON_CODES),
    _ack5_decoder(Pubrel, PacketType.PUBREL, PUBREL_REASON_CODES),
    _ack5_decoder(Pubcomp, PacketType.PUBCOMP, PUBCOMP_REASON_CODES),
    _decode_subscribe5,
    _decode_suback5,
    _decode_unsubscribe5,
    _decode_unsuback5,
    _decode_pingreq,
    _decode_pingresp,
    _decode_disconnect5,
    _decode_auth,
)

#: An MQTT 5 error's reason code when its raise site did not give one.
_REASON_BY_NAME: Final = {"packet_too_large": ReasonCode.PACKET_TOO_LARGE}


#: Up to this many bytes of an incomplete packet are copied into each new read; a longer one
#: grows in a bytearray instead.
_SPLICE_BYTES = 65536


class Decoder:
    """Turn a byte stream into MQTT packets, h11-style.

    Feed bytes with ``receive_data()``, then call ``next_packet()`` until it returns
    ``NEED_DATA`` (or ``CLOSED``).

    Args:
        server: ``True`` decodes what a client sends to a broker (CONNECT first, no
            server-to-client packet types); ``False`` decodes every packet type with no
            CONNECT-first rule (tests and clients).
        max_packet_size: the largest Remaining Length accepted; larger packets raise
            ``ProtocolViolation("packet_too_large")`` as soon as their fixed header is read.
        max_connect_packet_size: the same for the first packet of a server-side decoder (the
            CONNECT): nothing is known of the client yet, so it may be held to less.
        counts: a list of at least 33 ints, shared by every decoder of a broker, that counts
            what was decoded: ``[type]`` packets of each type, ``[16 + type]`` their bytes,
            ``[32]`` PUBLISH payload bytes (default: a list of this decoder's own).
        mqtt5: whether a CONNECT may choose MQTT 5 (protocol name ``MQTT``, level 5). When
            ``False`` (the default) such a CONNECT is refused like any unsupported level, with
            CONNACK 0x01 [MQTT-3.1.2-2] (3.1.1 section 3.1.2.2).
        protocol_level: client side only: the protocol the connection speaks, 5, 4 or 3, when
            it is not learnt from a CONNECT (a client knows what it sent). Default: 3.1.1.

    Attributes:
        protocol_level: ``None`` until a CONNECT was decoded (or ``protocol_level`` given), then
            5 (MQTT 5), 4 (MQTT 3.1.1) or 3 (MQTT 3.1).
        bridge: whether that CONNECT came from a bridge: its protocol level had the high bit
            set (0x84, 0x83, 0x85), Mosquitto's ``try_private``.
    """

    # An idle connection keeps its decoder: no per-instance __dict__.
    __slots__ = (
        "_buf",
        "_counts",
        "_decoders",
        "_eof",
        "_error",
        "_limit",
        "_max_packet_size",
        "_mqtt5",
        "_pos",
        "_rules",
        "_server",
        "_v5",
        "bridge",
        "protocol_level",
    )

    def __init__(
        self,
        *,
        server: bool = True,
        max_packet_size: int = MAX_REMAINING_LENGTH,
        max_connect_packet_size: int | None = None,
        counts: list[int] | None = None,
        mqtt5: bool = False,
        protocol_level: int | None = None,
    ) -> None:
        if not 0 <= max_packet_size <= MAX_REMAINING_LENGTH:
            raise LocalProtocolError("max_packet_size_out_of_range")
        if max_connect_packet_size is None:
            max_connect_packet_size = max_packet_size
        if not 0 <= max_connect_packet_size <= MAX_REMAINING_LENGTH:
            raise LocalProtocolError("max_connect_packet_size_out_of_range")
        if protocol_level is not None and (server or protocol_level not in _TABLES):
            raise LocalProtocolError("protocol_level_is_for_client_side_5_4_or_3")
        self.protocol_level: int | None = protocol_level
        self.bridge = False
        self._server = server
        self._mqtt5 = mqtt5
        self._max_packet_size = max_packet_size
        #: the Remaining Length limit in force: the CONNECT's until one has been decoded
        self._limit = min(max_connect_packet_size, max_packet_size) if server else max_packet_size
        self._buf: Buffer | bytearray = b""
        self._pos = 0
        self._eof = False
        self._error: ProtocolError | None = None
        #: errors carry MQTT 5 reason codes
        self._v5 = protocol_level == _MQTT_5_LEVEL
        self._decoders = _DECODERS_5 if self._v5 else _DECODERS_3
        if server:
            self._rules = _AWAIT_CONNECT
        else:
            self._rules = _TABLES[protocol_level or _MQTT_311_LEVEL][1]
        self._counts = counts if counts is not None else [0] * 33

    def receive_data(self, data: bytes | bytearray) -> None:
        """Buffer ``data`` from the peer; ``b""`` means the peer closed its side (EOF).

        Raises:
            LocalProtocolError: data after EOF (a bug in the caller).
        """
        if self._error is not None:
            return  # the connection is being closed; nothing more will be decoded
        if self._eof:
            if data:
                raise LocalProtocolError("receive_data_after_eof")
            return
        if not data:
            self._eof = True
            return
        buf = self._buf
        pos = self._pos
        self._pos = 0
        if pos >= len(buf):
            # The usual case, whole packets per read: decode from the read itself. A bytes
            # buffer lets a PUBLISH's payload be one slice (a bytearray's needs a second
            # copy into bytes: 119 -> 51 ns for 64 bytes).
            self._buf = bytes(data) if data.__class__ is not bytes else data
        elif buf.__class__ is bytearray:
            if pos:
                del buf[:pos]
            buf += data
        elif len(buf) - pos < _SPLICE_BYTES:
            self._buf = buf[pos:] + data  # the start of a packet, and the rest of it
        else:
            # A packet larger than one read: grow a bytearray (amortised, not a copy of
            # everything so far at every read).
            grown = bytearray(buf[pos:])
            grown += data
            self._buf = grown

    def next_packet(self) -> Packet | Literal[_Sentinel.NEED_DATA, _Sentinel.CLOSED]:
        """Return the next complete packet, ``NEED_DATA`` or ``CLOSED``.

        Raises:
            MalformedPacket: the bytes are not a valid packet (also: EOF inside a packet).
            ProtocolViolation: a valid packet that is not allowed here.
            ProtocolError: with ``connack_code`` set when a CONNACK must be sent before closing.
                On MQTT 5 every error has ``reason_code`` set.
        """
        packets = self.next_packets(1)
        if packets:
            return packets[0]
        return CLOSED if self._eof else NEED_DATA

    def next_packets(self, most: int = 1 << 30) -> list[Packet]:
        """Every complete packet in the buffer (at most ``most``), in order; ``[]`` when none
        is complete (see ``closed``).

        One call decodes a whole read: a connection's packets cost one call, not one each,
        and the PUBLISH traffic counts are added once. A CONNECT ends the batch: it changes
        the rules for the packets after it.

        Raises:
            The errors of ``next_packet``, when the first packet is in error; when packets
            come before it, they are returned and the next call raises.
        """
        error = self._error
        if error is not None:
            raise type(error)(
                error.reason, connack_code=error.connack_code, reason_code=error.reason_code
            )
        packets: list[Packet] = []
        buf = self._buf
        pos = self._pos
        size = len(buf)
        if pos >= size:
            if pos:
                # All consumed: drop the buffer, so an idle connection does not keep its
                # last (possibly large) read alive.
                self._buf = b""
                self._pos = 0
            return packets
        rules = self._rules
        decoders = self._decoders
        limit = self._limit
        counts = self._counts
        publishes = publish_bytes = payload_bytes = 0  # counted here, added once at the end
        try:
            while pos < size and len(packets) < most:
                first = buf[pos]
                rule = rules[first]
                if isinstance(rule, tuple):
                    raise rule[0](rule[1])
                # Remaining Length (2.2.3): 1 to 4 bytes, 7 bits each, low byte first.
                i = pos + 1
                if i >= size:
                    self._short()
                    break
                byte = buf[i]
                length = byte & 0x7F
                shift = 7
                while byte & 0x80:
                    if shift == 28:
                        raise MalformedPacket("remaining_length_too_long")
                    i += 1
                    if i >= size:
                        break
                    byte = buf[i]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                else:
                    i += 1
                    if length > limit:
                        raise ProtocolViolation("packet_too_large")
                    if rule != -1 and (length != rule if rule >= 0 else length < -2 - rule):
                        raise MalformedPacket("invalid_remaining_length")
                    end = i + length
                    if end <= size:
                        kind = first >> 4
                        packet = decoders[kind](self, first & 0x0F, buf, i, end)
                        packets.append(packet)
                        if kind == 3:
                            publishes += 1
                            publish_bytes += end - pos
                            payload_bytes += len(packet.payload)  # type: ignore[union-attr]
                        else:
                            counts[kind] += 1
                            counts[16 + kind] += end - pos
                        pos = end
                        if kind == 1:
                            break  # CONNECT: the rules change (``_switch``)
                        continue
                self._short()  # the buffer ends inside this packet
                break
        except ProtocolError as exc:
            if self._v5 and exc.reason_code is None:
                exc.reason_code = _REASON_BY_NAME.get(exc.reason) or (
                    ReasonCode.MALFORMED_PACKET
                    if isinstance(exc, MalformedPacket)
                    else ReasonCode.PROTOCOL_ERROR
                )
            self._error = exc
            if not packets:
                raise
        finally:
            self._pos = pos
            if publishes:
                counts[3] += publishes
                counts[19] += publish_bytes
                counts[32] += payload_bytes
        return packets

    @property
    def closed(self) -> bool:
        """Whether the peer closed its side and every packet before was returned."""
        return self._eof and self._pos >= len(self._buf)

    def _short(self) -> Literal[_Sentinel.NEED_DATA]:
        """The buffer ends inside a packet: wait for more, unless the peer already sent EOF."""
        if self._eof:
            raise MalformedPacket("truncated_packet")
        return NEED_DATA

    def _switch(self, level: int, bridge: bool) -> None:
        """A CONNECT was decoded: use the rules of its protocol level from now on."""
        self.protocol_level = level
        self.bridge = bridge
        self._limit = self._max_packet_size
        self._rules = _TABLES[level][0 if self._server else 1]
        self._decoders = _DECODERS_5 if level == _MQTT_5_LEVEL else _DECODERS_3

    def _decode_connect(self, flags: int, buf: Buffer, start: int, end: int) -> Connect:
        # Protocol name and level come first, before any other CONNECT rule. [MQTT-3.1.2-2]
        if start + 2 > end:
            raise MalformedPacket("truncated_connect")
        pos = start + 2 + (buf[start] << 8 | buf[start + 1])
        if pos + 1 > end:
            raise MalformedPacket("truncated_connect")
        name = bytes(buf[start + 2 : pos])
        level = buf[pos]
        pos += 1
        # A bridge sets the level's high bit (0x84, 0x83: Mosquitto's try_private) so that the
        # broker does not send its own messages back to it; it is otherwise a 3.1.1/3.1 client.
        # Outside [MQTT-3.1.2-2], as Mosquitto accepts it; see README "Bridges".
        bridge = level > 0x80
        if bridge:
            level -= 0x80
        if name == _MQTT_311_NAME:
            if level == _MQTT_5_LEVEL and self._mqtt5:
                return self._decode_connect5(flags, buf, pos, end, bridge)
            expected = _MQTT_311_LEVEL
        elif name == _MQTT_31_NAME:
            expected = _MQTT_31_LEVEL
        else:
            # [MQTT-3.1.2-1] another protocol: close without CONNACK, as Mosquitto does.
            raise ProtocolViolation("unknown_protocol_name")
        if level != expected:
            raise ProtocolViolation(  # [MQTT-3.1.2-2]
                "unacceptable_protocol_level",
                connack_code=ConnackCode.UNACCEPTABLE_PROTOCOL_VERSION,
            )
        mqtt31 = level == _MQTT_31_LEVEL
        # MQTT 3.1 does not use CONNECT's fixed-header flags nor the reserved connect flag.
        if flags and not mqtt31:
            raise MalformedPacket("invalid_fixed_header_flags")  # [MQTT-2.2.2-2]
        if pos + 3 > end:
            raise MalformedPacket("truncated_connect")
        connect_flags = buf[pos]
        keepalive = buf[pos + 1] << 8 | buf[pos + 2]
        pos += 3
        if connect_flags & 0x01 and not mqtt31:
            raise MalformedPacket("connect_reserved_flag")  # [MQTT-3.1.2-3]
        clean_session = bool(connect_flags & 0x02)
        will_flag = connect_flags & 0x04
        will_qos = (connect_flags >> 3) & 0x3
        will_retain = bool(connect_flags & 0x20)
        password_flag = connect_flags & 0x40
        username_flag = connect_flags & 0x80
        if will_qos == 3:
            raise MalformedPacket("will_qos_3")  # [MQTT-3.1.2-14]
        if not will_flag and (will_qos or will_retain) and not mqtt31:
            # [MQTT-3.1.2-11] [MQTT-3.1.2-13] [MQTT-3.1.2-15]
            raise MalformedPacket("will_fields_without_will_flag")
        if password_flag and not username_flag and not mqtt31:
            raise MalformedPacket("password_without_username")  # [MQTT-3.1.2-22]
        # Payload fields in order, present exactly as the flags say. [MQTT-3.1.3-1]
        client_id, pos = _read_utf8(buf, pos, end)  # [MQTT-3.1.3-3] [MQTT-3.1.3-4]
        will = None
        if will_flag:
            will_topic, pos = _read_utf8(buf, pos, end)  # [MQTT-3.1.3-10]
            validate_topic_name(will_topic)
            will_message, pos = _read_binary(buf, pos, end)
            will = Will(will_topic, will_message, will_qos, will_retain)
        username = None
        if username_flag:
            username, pos = _read_utf8(buf, pos, end)  # [MQTT-3.1.3-11]
        password = None
        # MQTT 3.1 clients may set the password flag and send no password (Mosquitto ignores it).
        if password_flag and not (mqtt31 and pos == end):
            password, pos = _read_binary(buf, pos, end)
        if pos != end:
            raise MalformedPacket("trailing_bytes")  # [MQTT-3.1.3-1]
        if not client_id:
            if mqtt31:
                # MQTT 3.1 section 3.1: the ClientId is 1 to 23 characters, else return code 2.
                raise ProtocolViolation(
                    "empty_client_id", connack_code=ConnackCode.IDENTIFIER_REJECTED
                )
            if not clean_session:
                raise ProtocolViolation(  # [MQTT-3.1.3-8]
                    "empty_client_id_without_clean_session",
                    connack_code=ConnackCode.IDENTIFIER_REJECTED,
                )
        self._switch(level, bridge)
        return Connect(
            client_id,
            clean_session,
            keepalive,
            will,
            username,
            password,
            PROTOCOL_MQTT_31[0] if mqtt31 else PROTOCOL_MQTT_311[0],
            level,
        )

    def _decode_connect5(
        self, flags: int, buf: Buffer, pos: int, end: int, bridge: bool
    ) -> Connect:
        """The rest of an MQTT 5 CONNECT (3.1.2.3 on), ``pos`` just after the level."""
        self._v5 = True  # from here on, errors carry MQTT 5 reason codes
        if flags:
            raise MalformedPacket("invalid_fixed_header_flags")  # [MQTT-2.1.3-1]
        if pos + 3 > end:
            raise MalformedPacket("truncated_connect")
        connect_flags = buf[pos]
        keepalive = buf[pos + 1] << 8 | buf[pos + 2]
        pos += 3
        if connect_flags & 0x01:
            raise MalformedPacket("connect_reserved_flag")  # [MQTT-3.1.2-3]
        clean_start = bool(connect_flags & 0x02)
        will_flag = connect_flags & 0x04
        will_qos = (connect_flags >> 3) & 0x3
        will_retain = bool(connect_flags & 0x20)
        if will_qos == 3:
            raise MalformedPacket("will_qos_3")  # [MQTT-3.1.2-12]
        if not will_flag and (will_qos or will_retain):
            raise MalformedPacket("will_fields_without_will_flag")  # [MQTT-3.1.2-11] [-13]
        # No [MQTT-3.1.2-22] of 3.1.1 here: MQTT 5 allows a Password without a User Name.
        props, pos = read_properties(buf, pos, end, PacketType.CONNECT)
        if props.authentication_data is not None and props.authentication_method is None:
            # 3.1.2.11.10: "It is a Protocol Error to include Authentication Data if there is
            # no Authentication Method."
            raise ProtocolViolation("authentication_data_without_method")
        # Payload fields in order, present exactly as the flags say. [MQTT-3.1.3-1]
        # A zero-length ClientID is the broker's to accept or refuse [MQTT-3.1.3-6] [-8].
        client_id, pos = _read_utf8(buf, pos, end)  # [MQTT-3.1.3-3] [MQTT-3.1.3-4]
        will = None
        if will_flag:  # [MQTT-3.1.2-9]
            will_props, pos = read_properties(buf, pos, end, WILL_PROPERTIES)
            will_topic, pos = _read_utf8(buf, pos, end)  # [MQTT-3.1.3-11]
            validate_topic_name(will_topic)
            will_message, pos = _read_binary(buf, pos, end)
            will = Will(will_topic, will_message, will_qos, will_retain, will_props)
        username = None
        if connect_flags & 0x80:  # [MQTT-3.1.2-16] [MQTT-3.1.2-17]
            username, pos = _read_utf8(buf, pos, end)  # [MQTT-3.1.3-12]
        password = None
        if connect_flags & 0x40:  # [MQTT-3.1.2-18] [MQTT-3.1.2-19]
            password, pos = _read_binary(buf, pos, end)
        if pos != end:
            raise MalformedPacket("trailing_bytes")  # [MQTT-3.1.3-1]
        self._switch(_MQTT_5_LEVEL, bridge)
        return Connect(
            client_id,
            clean_start,
            keepalive,
            will,
            username,
            password,
            PROTOCOL_MQTT_5[0],
            _MQTT_5_LEVEL,
            props,
        )
