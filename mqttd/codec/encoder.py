"""Pure encoder: MQTT packets in, bytes out.

``encode()`` refuses to produce a packet the receiving side would have to treat as malformed
(QoS 3, a missing or zero Packet Identifier, a Packet Identifier at QoS 0, a topic that is not a
valid UTF-8 string of at most 65535 bytes, ...): such a packet is a bug in mqttd, reported as
``LocalProtocolError``. Whatever ``encode()`` returns, ``Decoder(server=False)`` decodes back to
an equal packet.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, Final

from mqttd.codec.packets import (
    MAX_REMAINING_LENGTH,
    PROTOCOL_MQTT_31,
    PROTOCOL_MQTT_311,
    Connack,
    ConnackCode,
    Connect,
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
)
from mqttd.errors import LocalProtocolError, MalformedPacket
from mqttd.topics import validate_topic_filter

__all__ = ["encode", "encode_remaining_length"]

_pack_u16: Final = struct.Struct(">H").pack
_MAX_U16: Final = 0xFFFF  # also the longest topic, MAX_TOPIC_BYTES [MQTT-4.7.3-3]
_PROTOCOLS: Final = frozenset({PROTOCOL_MQTT_311, PROTOCOL_MQTT_31})
_CONNACK_CODES: Final = frozenset(int(code) for code in ConnackCode)
_SUBACK_CODES: Final = frozenset({0x00, 0x01, 0x02, 0x80})  # [MQTT-3.9.3-2]


def encode_remaining_length(n: int) -> bytes:
    """Encode ``n`` as a Remaining Length varint (2.2.3): 7 bits per byte, low bits first.

    Raises:
        LocalProtocolError: ``n`` is negative or above 268 435 455 (the 4-byte maximum).
    """
    if type(n) is not int or not 0 <= n <= MAX_REMAINING_LENGTH:
        raise LocalProtocolError("remaining_length_out_of_range")
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode(packet: Packet) -> bytes:
    """Serialise one packet to its wire form.

    Raises:
        LocalProtocolError: ``packet`` is not a packet or not a valid one.
    """
    encoder = _ENCODERS.get(type(packet))
    if encoder is None:
        raise LocalProtocolError("not_a_packet")
    return encoder(packet)


# --- field helpers --------------------------------------------------------------------------------


def _frame(first: int, *parts: bytes) -> bytes:
    body = b"".join(parts)
    n = len(body)
    if n < 0x80:
        return bytes((first, n)) + body
    return bytes((first,)) + encode_remaining_length(n) + body


def _utf8(text: Any, what: str) -> bytes:
    """A 2-byte-length-prefixed UTF-8 string ([MQTT-1.5.3-1], [MQTT-1.5.3-2])."""
    if not isinstance(text, str):
        raise LocalProtocolError(f"{what}_not_a_string")
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        raise LocalProtocolError(f"{what}_not_utf8") from None
    if len(raw) > _MAX_U16:
        raise LocalProtocolError(f"{what}_too_long")
    if "\x00" in text:
        raise LocalProtocolError(f"{what}_contains_null")
    return _pack_u16(len(raw)) + raw


def _binary(data: Any, what: str) -> bytes:
    if not isinstance(data, bytes | bytearray):
        raise LocalProtocolError(f"{what}_not_bytes")
    if len(data) > _MAX_U16:
        raise LocalProtocolError(f"{what}_too_long")
    return _pack_u16(len(data)) + data


def _packet_id(packet_id: Any) -> bytes:
    if type(packet_id) is not int or not 0 < packet_id <= _MAX_U16:
        raise LocalProtocolError("invalid_packet_id")  # [MQTT-2.3.1-1]
    return _pack_u16(packet_id)


def _qos(qos: Any) -> int:
    if type(qos) is not int or not 0 <= qos <= 2:
        raise LocalProtocolError("invalid_qos")  # [MQTT-3.3.1-4]
    return qos


def _topic_name(topic: Any, what: str) -> bytes:
    raw = _utf8(topic, what)
    if len(raw) == 2:
        raise LocalProtocolError(f"{what}_empty")  # [MQTT-4.7.3-1]
    if "+" in topic or "#" in topic:
        raise LocalProtocolError(f"{what}_has_wildcard")  # [MQTT-3.3.2-2]
    return raw


def _topic_filter(topic_filter: Any) -> bytes:
    raw = _utf8(topic_filter, "topic_filter")
    try:
        validate_topic_filter(topic_filter)  # [MQTT-4.7.1-2] [MQTT-4.7.1-3] [MQTT-4.7.3-1]
    except MalformedPacket as exc:
        raise LocalProtocolError(exc.reason) from None
    return raw


# --- per-type encoders ----------------------------------------------------------------------------


def _encode_publish(p: Publish) -> bytes:
    qos = _qos(p.qos)
    if qos == 0:
        if p.packet_id is not None:
            raise LocalProtocolError("packet_id_at_qos_0")  # [MQTT-2.3.1-5]
        if p.dup:
            raise LocalProtocolError("dup_at_qos_0")  # [MQTT-3.3.1-2]
        packet_id = b""
    else:
        packet_id = _packet_id(p.packet_id)  # [MQTT-2.3.1-1]
    topic = _topic_name(p.topic, "topic")
    payload = p.payload
    if not isinstance(payload, bytes | bytearray):
        raise LocalProtocolError("payload_not_bytes")
    n = len(topic) + len(packet_id) + len(payload)
    first = 0x30 | (qos << 1) | (0x08 if p.dup else 0) | (0x01 if p.retain else 0)
    head = bytes((first, n)) if n < 0x80 else bytes((first,)) + encode_remaining_length(n)
    return b"".join((head, topic, packet_id, payload))


def _encode_connect(p: Connect) -> bytes:
    protocol = (p.protocol_name, p.protocol_level)
    if protocol not in _PROTOCOLS:
        raise LocalProtocolError("unknown_protocol")
    mqtt31 = protocol == PROTOCOL_MQTT_31
    if type(p.keepalive) is not int or not 0 <= p.keepalive <= _MAX_U16:
        raise LocalProtocolError("invalid_keepalive")
    flags = 0x02 if p.clean_session else 0x00
    parts = [_utf8(p.client_id, "client_id")]
    if p.will is not None:
        flags |= 0x04 | (_qos(p.will.qos) << 3) | (0x20 if p.will.retain else 0)
        parts.append(_topic_name(p.will.topic, "will_topic"))
        parts.append(_binary(p.will.message, "will_message"))
    if p.username is not None:
        flags |= 0x80
        parts.append(_utf8(p.username, "username"))
    if p.password is not None:
        if p.username is None and not mqtt31:
            raise LocalProtocolError("password_without_username")  # [MQTT-3.1.2-22]
        flags |= 0x40
        parts.append(_binary(p.password, "password"))
    variable_header = (
        _utf8(p.protocol_name, "protocol_name")
        + bytes((p.protocol_level, flags))
        + _pack_u16(p.keepalive)
    )
    return _frame(0x10, variable_header, *parts)


def _encode_connack(p: Connack) -> bytes:
    if p.return_code not in _CONNACK_CODES:
        raise LocalProtocolError("invalid_connack_code")
    if p.session_present and p.return_code:
        raise LocalProtocolError("session_present_with_refusal")  # [MQTT-3.2.2-4]
    return bytes((0x20, 2, 1 if p.session_present else 0, p.return_code))


def _encode_puback(p: Puback) -> bytes:
    return b"\x40\x02" + _packet_id(p.packet_id)


def _encode_pubrec(p: Pubrec) -> bytes:
    return b"\x50\x02" + _packet_id(p.packet_id)


def _encode_pubrel(p: Pubrel) -> bytes:
    # DUP is only ever set by MQTT 3.1 senders (3.1 section 3.6); 3.1.1 requires 0010.
    return (b"\x6a\x02" if p.dup else b"\x62\x02") + _packet_id(p.packet_id)  # [MQTT-3.6.1-1]


def _encode_pubcomp(p: Pubcomp) -> bytes:
    return b"\x70\x02" + _packet_id(p.packet_id)


def _encode_subscribe(p: Subscribe) -> bytes:
    if not p.subscriptions:
        raise LocalProtocolError("subscribe_without_filters")  # [MQTT-3.8.3-3]
    parts = [_packet_id(p.packet_id)]
    for topic_filter, qos in p.subscriptions:
        parts.append(_topic_filter(topic_filter))
        parts.append(bytes((_qos(qos),)))  # [MQTT-3.8.3-4]
    return _frame(0x82, *parts)  # [MQTT-3.8.1-1]


def _encode_suback(p: Suback) -> bytes:
    # An empty list is allowed: it answers an MQTT 3.1 SUBSCRIBE without filters.
    if not _SUBACK_CODES.issuperset(p.return_codes):
        raise LocalProtocolError("invalid_suback_code")  # [MQTT-3.9.3-2]
    return _frame(0x90, _packet_id(p.packet_id), bytes(p.return_codes))


def _encode_unsubscribe(p: Unsubscribe) -> bytes:
    if not p.topic_filters:
        raise LocalProtocolError("unsubscribe_without_filters")  # [MQTT-3.10.3-2]
    parts = [_packet_id(p.packet_id)]
    parts.extend(_topic_filter(topic_filter) for topic_filter in p.topic_filters)
    return _frame(0xA2, *parts)  # [MQTT-3.10.1-1]


def _encode_unsuback(p: Unsuback) -> bytes:
    return b"\xb0\x02" + _packet_id(p.packet_id)


def _encode_pingreq(p: Pingreq) -> bytes:
    return b"\xc0\x00"


def _encode_pingresp(p: Pingresp) -> bytes:
    return b"\xd0\x00"


def _encode_disconnect(p: Disconnect) -> bytes:
    return b"\xe0\x00"


_ENCODERS: Final[dict[type, Callable[[Any], bytes]]] = {
    Connect: _encode_connect,
    Connack: _encode_connack,
    Publish: _encode_publish,
    Puback: _encode_puback,
    Pubrec: _encode_pubrec,
    Pubrel: _encode_pubrel,
    Pubcomp: _encode_pubcomp,
    Subscribe: _encode_subscribe,
    Suback: _encode_suback,
    Unsubscribe: _encode_unsubscribe,
    Unsuback: _encode_unsuback,
    Pingreq: _encode_pingreq,
    Pingresp: _encode_pingresp,
    Disconnect: _encode_disconnect,
}
