"""Pure encoder: MQTT packets in, bytes out (MQTT 5.0, 3.1.1 and 3.1).

``encode()`` refuses to produce a packet the receiving side would have to treat as malformed
(QoS 3, a missing or zero Packet Identifier, a Packet Identifier at QoS 0, a topic that is not a
valid UTF-8 string of at most 65535 bytes, on MQTT 5 a property the packet may not carry or a
reason code it may not use, ...): such a packet is a bug in mqttd, reported as
``LocalProtocolError``. Whatever ``encode(packet, version=v)`` returns, a ``Decoder`` of the
same version decodes back to an equal packet.

With ``version=4`` (or 3) the MQTT 5 fields (``properties``, ``reason_code``,
``Unsuback.reason_codes``) are ignored and ``Auth`` is refused. With ``version=5`` the
acknowledgements, DISCONNECT and AUTH are written as short as the spec allows (3.4.2.1,
3.14.2.1, 3.15.2.1: no reason code when it is 0x00 and there are no properties).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from mqttd.codec.fields import MAX_U16 as _MAX_U16
from mqttd.codec.fields import pack_u16 as _pack_u16
from mqttd.codec.fields import write_binary as _binary
from mqttd.codec.fields import write_utf8 as _utf8
from mqttd.codec.fields import write_varint
from mqttd.codec.packets import (
    AUTH_REASON_CODES,
    CONNACK_REASON_CODES,
    DISCONNECT_REASON_CODES,
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
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
)
from mqttd.codec.properties import WILL_PROPERTIES, encode_properties
from mqttd.errors import LocalProtocolError, MalformedPacket
from mqttd.topics import validate_topic_filter

__all__ = ["encode", "encode_properties", "encode_remaining_length"]

_PROTOCOLS: Final = frozenset({PROTOCOL_MQTT_311, PROTOCOL_MQTT_31})
_CONNACK_CODES: Final = frozenset(int(code) for code in ConnackCode)
_SUBACK_CODES: Final = frozenset({0x00, 0x01, 0x02, 0x80})  # [MQTT-3.9.3-2]
_SHARE_PREFIX: Final = "$share/"

#: Encode ``n`` as a Remaining Length varint (2.2.3): 7 bits per byte, low bits first; raises
#: ``LocalProtocolError`` when ``n`` is negative or above 268 435 455 (the 4-byte maximum).
encode_remaining_length: Final = write_varint


def encode(packet: Packet, *, version: int = 4) -> bytes:
    """Serialise one packet to its wire form.

    Args:
        packet: the packet.
        version: the protocol level of the connection: 5 (MQTT 5), 4 (3.1.1) or 3 (3.1). A
            CONNECT must name the same protocol; 4 and 3 write the same bytes otherwise.

    Raises:
        LocalProtocolError: ``packet`` is not a packet, not a valid one, or not one this
            version has (AUTH before MQTT 5).
    """
    if version == 4 or version == 3:
        encoder = _ENCODERS.get(type(packet))
    elif version == 5:
        encoder = _ENCODERS_5.get(type(packet))
    else:
        raise LocalProtocolError("unknown_protocol_version")
    if encoder is None:
        raise LocalProtocolError("not_a_packet")
    return encoder(packet)


# --- field helpers --------------------------------------------------------------------------------


def _frame(first: int, *parts: bytes) -> bytes:
    body = b"".join(parts)
    n = len(body)
    if n < 0x80:
        return bytes((first, n)) + body
    return bytes((first,)) + write_varint(n) + body


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
    head = bytes((first, n)) if n < 0x80 else bytes((first,)) + write_varint(n)
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


def _encode_auth_3(p: Auth) -> bytes:
    raise LocalProtocolError("auth_is_mqtt5_only")  # 3.15: AUTH is new in MQTT 5


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
    Auth: _encode_auth_3,
}


# --- MQTT 5 ---------------------------------------------------------------------------------------


def _props(props: Any, packet_type: int) -> bytes:
    """The Property Length and properties; the common empty case without a call."""
    if props is NO_PROPERTIES:
        return b"\x00"  # [MQTT-2.2.2-1]
    return encode_properties(props, packet_type)


def _reason(code: Any, allowed: frozenset[int]) -> int:
    """A reason code this packet type may carry (an int or a ``ReasonCode``)."""
    if not isinstance(code, int) or code not in allowed:
        raise LocalProtocolError("invalid_reason_code")
    return int(code)


def _encode_connect5(p: Connect) -> bytes:
    if (p.protocol_name, p.protocol_level) != PROTOCOL_MQTT_5:
        raise LocalProtocolError("unknown_protocol")
    if type(p.keepalive) is not int or not 0 <= p.keepalive <= _MAX_U16:
        raise LocalProtocolError("invalid_keepalive")
    props = p.properties
    if (
        isinstance(props, Properties)
        and props.authentication_data is not None
        and props.authentication_method is None
    ):
        raise LocalProtocolError("authentication_data_without_method")  # 3.1.2.11.10
    flags = 0x02 if p.clean_session else 0x00
    parts = [_utf8(p.client_id, "client_id")]
    if p.will is not None:
        flags |= 0x04 | (_qos(p.will.qos) << 3) | (0x20 if p.will.retain else 0)
        parts.append(_props(p.will.properties, WILL_PROPERTIES))
        parts.append(_topic_name(p.will.topic, "will_topic"))
        parts.append(_binary(p.will.message, "will_message"))
    if p.username is not None:
        flags |= 0x80
        parts.append(_utf8(p.username, "username"))
    if p.password is not None:  # MQTT 5 allows a Password without a User Name (3.1.2.9)
        flags |= 0x40
        parts.append(_binary(p.password, "password"))
    variable_header = (
        _utf8(p.protocol_name, "protocol_name")
        + bytes((p.protocol_level, flags))
        + _pack_u16(p.keepalive)
        + _props(props, PacketType.CONNECT)
    )
    return _frame(0x10, variable_header, *parts)


def _encode_connack5(p: Connack) -> bytes:
    code = _reason(p.return_code, CONNACK_REASON_CODES)  # [MQTT-3.2.2-8]
    if p.session_present and code:
        raise LocalProtocolError("session_present_with_refusal")  # [MQTT-3.2.2-6]
    return _frame(
        0x20,
        bytes((1 if p.session_present else 0, code)),
        _props(p.properties, PacketType.CONNACK),
    )


def _encode_publish5(p: Publish) -> bytes:
    qos = _qos(p.qos)
    if qos == 0:
        if p.packet_id is not None:
            raise LocalProtocolError("packet_id_at_qos_0")  # [MQTT-2.2.1-2]
        if p.dup:
            raise LocalProtocolError("dup_at_qos_0")  # [MQTT-3.3.1-2]
        packet_id = b""
    else:
        packet_id = _packet_id(p.packet_id)  # [MQTT-2.2.1-3] [MQTT-2.2.1-4]
    props = p.properties
    if p.topic == "" and isinstance(props, Properties) and props.topic_alias is not None:
        topic = b"\x00\x00"  # 3.3.2.3.4: the Topic Alias stands for the topic
    else:
        topic = _topic_name(p.topic, "topic")
    properties = b"\x00" if props is NO_PROPERTIES else encode_properties(props)
    payload = p.payload
    if not isinstance(payload, bytes | bytearray):
        raise LocalProtocolError("payload_not_bytes")
    n = len(topic) + len(packet_id) + len(properties) + len(payload)
    first = 0x30 | (qos << 1) | (0x08 if p.dup else 0) | (0x01 if p.retain else 0)
    head = bytes((first, n)) if n < 0x80 else bytes((first,)) + write_varint(n)
    return b"".join((head, topic, packet_id, properties, payload))


def _ack5(first: int, p: Puback | Pubrec | Pubrel | Pubcomp, codes: frozenset[int]) -> bytes:
    packet_id = _packet_id(p.packet_id)
    code = _reason(p.reason_code, codes)  # [MQTT-3.4.2-1] [MQTT-3.5.2-1] [-3.6.2-1] [-3.7.2-1]
    if p.properties is NO_PROPERTIES:
        if not code:
            return bytes((first, 2)) + packet_id  # 3.4.2.1: no reason code means 0x00
        return bytes((first, 3)) + packet_id + bytes((code,))
    props = encode_properties(p.properties, first >> 4)
    if props == b"\x00" and not code:
        return bytes((first, 2)) + packet_id
    return _frame(first, packet_id, bytes((code,)), props)


def _encode_puback5(p: Puback) -> bytes:
    return _ack5(0x40, p, PUBACK_REASON_CODES)


def _encode_pubrec5(p: Pubrec) -> bytes:
    return _ack5(0x50, p, PUBREC_REASON_CODES)


def _encode_pubrel5(p: Pubrel) -> bytes:
    if p.dup:
        raise LocalProtocolError("dup_on_pubrel")  # [MQTT-3.6.1-1] flags are 0010 in MQTT 5
    return _ack5(0x62, p, PUBREL_REASON_CODES)


def _encode_pubcomp5(p: Pubcomp) -> bytes:
    return _ack5(0x70, p, PUBCOMP_REASON_CODES)


def _encode_subscribe5(p: Subscribe) -> bytes:
    if not p.subscriptions:
        raise LocalProtocolError("subscribe_without_filters")  # [MQTT-3.8.3-2]
    parts = [_packet_id(p.packet_id), _props(p.properties, PacketType.SUBSCRIBE)]
    for topic_filter, options in p.subscriptions:
        parts.append(_topic_filter(topic_filter))
        if type(options) is not int or not 0 <= options <= 0x3F:
            raise LocalProtocolError("invalid_subscription_options")  # [MQTT-3.8.3-5]
        if options & 0x03 == 3:
            raise LocalProtocolError("invalid_qos")  # 3.8.3.1
        if options & 0x30 == 0x30:
            raise LocalProtocolError("retain_handling_3")  # 3.8.3.1
        if options & 0x04 and topic_filter.startswith(_SHARE_PREFIX):
            raise LocalProtocolError("no_local_on_shared_subscription")  # [MQTT-3.8.3-4]
        parts.append(bytes((options,)))
    return _frame(0x82, *parts)  # [MQTT-3.8.1-1]


def _encode_suback5(p: Suback) -> bytes:
    if not p.return_codes:
        raise LocalProtocolError("suback_without_reason_codes")  # [MQTT-3.9.3-2]
    if not SUBACK_REASON_CODES.issuperset(p.return_codes):
        raise LocalProtocolError("invalid_reason_code")  # [MQTT-3.9.3-2]
    return _frame(
        0x90,
        _packet_id(p.packet_id),
        _props(p.properties, PacketType.SUBACK),
        bytes(p.return_codes),
    )


def _encode_unsubscribe5(p: Unsubscribe) -> bytes:
    if not p.topic_filters:
        raise LocalProtocolError("unsubscribe_without_filters")  # [MQTT-3.10.3-2]
    parts = [_packet_id(p.packet_id), _props(p.properties, PacketType.UNSUBSCRIBE)]
    parts.extend(_topic_filter(topic_filter) for topic_filter in p.topic_filters)
    return _frame(0xA2, *parts)  # [MQTT-3.10.1-1]


def _encode_unsuback5(p: Unsuback) -> bytes:
    if not p.reason_codes:
        raise LocalProtocolError("unsuback_without_reason_codes")  # [MQTT-3.11.3-2]
    if not UNSUBACK_REASON_CODES.issuperset(p.reason_codes):
        raise LocalProtocolError("invalid_reason_code")  # [MQTT-3.11.3-2]
    return _frame(
        0xB0,
        _packet_id(p.packet_id),
        _props(p.properties, PacketType.UNSUBACK),
        bytes(p.reason_codes),
    )


def _reason_and_properties(
    first: int, code: int, props: Properties, packet_type: PacketType
) -> bytes:
    """DISCONNECT and AUTH: nothing for 0x00 and no properties, the code alone without them."""
    raw = _props(props, packet_type)
    if raw == b"\x00":
        return bytes((first, 1, code)) if code else bytes((first, 0))
    return _frame(first, bytes((code,)), raw)


def _encode_disconnect5(p: Disconnect) -> bytes:
    code = _reason(p.reason_code, DISCONNECT_REASON_CODES)  # [MQTT-3.14.2-1]
    return _reason_and_properties(0xE0, code, p.properties, PacketType.DISCONNECT)


def _encode_auth5(p: Auth) -> bytes:
    code = _reason(p.reason_code, AUTH_REASON_CODES)  # [MQTT-3.15.2-1]
    return _reason_and_properties(0xF0, code, p.properties, PacketType.AUTH)


_ENCODERS_5: Final[dict[type, Callable[[Any], bytes]]] = {
    Connect: _encode_connect5,
    Connack: _encode_connack5,
    Publish: _encode_publish5,
    Puback: _encode_puback5,
    Pubrec: _encode_pubrec5,
    Pubrel: _encode_pubrel5,
    Pubcomp: _encode_pubcomp5,
    Subscribe: _encode_subscribe5,
    Suback: _encode_suback5,
    Unsubscribe: _encode_unsubscribe5,
    Unsuback: _encode_unsuback5,
    Pingreq: _encode_pingreq,
    Pingresp: _encode_pingresp,
    Disconnect: _encode_disconnect5,
    Auth: _encode_auth5,
}
