"""Incremental, sans-IO decoder: bytes in, MQTT packets out.

Theory of operation
-------------------
``receive_data()`` only appends to a ``bytearray``; ``next_packet()`` parses from a read offset
into it. The buffer is compacted (the consumed prefix deleted) at most once per
``receive_data()`` call, so the work done is O(bytes received) however the stream is split.

``next_packet()`` works in two steps:

1. The fixed header. Its first byte is looked up in a 256-entry rule table chosen for the
   connection's state (awaiting CONNECT, MQTT 3.1.1, MQTT 3.1, or client side). The entry is
   either an error to raise at once (wrong packet type, reserved flag bits, CONNECT-first
   rules) or the fixed Remaining Length the type requires (-1 when it varies). Then the
   Remaining Length varint (at most 4 bytes) is read and checked against the fixed length and
   ``max_packet_size``. All of this happens *before* the body is buffered, so a bad or
   oversized packet is refused without waiting for (or storing) its body.
2. The body, once it is complete, goes to a per-type decoder picked from a tuple indexed by the
   packet type. PUBLISH and the acknowledgements are straight-line code slicing the buffer.

Any ``ProtocolError`` leaves the decoder in an error state: every later ``next_packet()``
raises again and further input is dropped. ``receive_data(b"")`` marks EOF: ``CLOSED`` if the
buffer ended on a packet boundary, else ``MalformedPacket("truncated_packet")``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from typing import Final, Literal

from mqttd.codec.packets import (
    CLIENT_TO_SERVER,
    MAX_REMAINING_LENGTH,
    PROTOCOL_MQTT_31,
    PROTOCOL_MQTT_311,
    Connack,
    ConnackCode,
    Connect,
    Disconnect,
    Packet,
    PacketType,
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
    Will,
)
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

# --- fixed-header rule tables -------------------------------------------------------------------

#: Rule value meaning "any Remaining Length" (otherwise the rule is the exact length required).
_VARIABLE: Final = -1

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

#: MQTT 3.1 re-sends these like a QoS 1 PUBLISH, so it may set DUP (3.1 sections 3.6, 3.8, 3.10).
_DUP_ALLOWED_31: Final = frozenset(
    {PacketType.PUBREL, PacketType.SUBSCRIBE, PacketType.UNSUBSCRIBE}
)


def _rule(first: int, *, server: bool, await_connect: bool, mqtt31: bool) -> _Rule:
    """Work out what to do with a packet whose first byte is ``first`` in the given state."""
    kind, flags = first >> 4, first & 0x0F
    if kind == 0 or kind == 15:
        return (MalformedPacket, "reserved_packet_type")
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
        # [MQTT-3.14.1-1]
        return (MalformedPacket, "invalid_fixed_header_flags")
    return _FIXED_LENGTH.get(ptype, _VARIABLE)


def _table(*, server: bool, await_connect: bool, mqtt31: bool) -> tuple[_Rule, ...]:
    return tuple(
        _rule(first, server=server, await_connect=await_connect, mqtt31=mqtt31)
        for first in range(256)
    )


_AWAIT_CONNECT: Final = _table(server=True, await_connect=True, mqtt31=False)
_SERVER_311: Final = _table(server=True, await_connect=False, mqtt31=False)
_SERVER_31: Final = _table(server=True, await_connect=False, mqtt31=True)
_CLIENT_311: Final = _table(server=False, await_connect=False, mqtt31=False)
_CLIENT_31: Final = _table(server=False, await_connect=False, mqtt31=True)

# --- body field readers ---------------------------------------------------------------------------

#: Control characters section 1.5.3 says a string SHOULD NOT contain, and lets the receiver close
#: the connection for: U+0001..U+001F and U+007F..U+009F. Mosquitto refuses them too.
_CONTROL: Final = re.compile("[\x01-\x1f\x7f-\x9f]")


def _check_text(text: str) -> None:
    """Refuse U+0000 ([MQTT-1.5.3-2]) and the control characters of section 1.5.3."""
    if text.isascii() and text.isprintable():
        return  # the common case, in C: no control character at all
    if "\x00" in text:
        raise MalformedPacket("null_character_in_string")  # [MQTT-1.5.3-2]
    if _CONTROL.search(text):
        raise MalformedPacket("control_character_in_string")  # section 1.5.3


def _read_utf8(buf: bytearray, pos: int, end: int) -> tuple[str, int]:
    """Read a 2-byte-length-prefixed UTF-8 string at ``pos``; return it and the next offset."""
    if pos + 2 > end:
        raise MalformedPacket("truncated_string")
    stop = pos + 2 + (buf[pos] << 8 | buf[pos + 1])
    if stop > end:
        raise MalformedPacket("truncated_string")
    try:
        # Python's strict decoder rejects surrogates and overlong forms. [MQTT-1.5.3-1]
        # U+FEFF is kept as it is, never stripped. [MQTT-1.5.3-3]
        text = buf[pos + 2 : stop].decode()
    except UnicodeDecodeError:
        raise MalformedPacket("invalid_utf8") from None
    _check_text(text)
    return text, stop


def _read_binary(buf: bytearray, pos: int, end: int) -> tuple[bytes, int]:
    """Read 2-byte-length-prefixed binary data at ``pos``; return it and the next offset."""
    if pos + 2 > end:
        raise MalformedPacket("truncated_binary")
    stop = pos + 2 + (buf[pos] << 8 | buf[pos + 1])
    if stop > end:
        raise MalformedPacket("truncated_binary")
    return bytes(buf[pos + 2 : stop]), stop


def _read_packet_id(buf: bytearray, pos: int, end: int) -> int:
    """Read a non-zero Packet Identifier at ``pos`` ([MQTT-2.3.1-1])."""
    if pos + 2 > end:
        raise MalformedPacket("truncated_packet_id")
    packet_id = buf[pos] << 8 | buf[pos + 1]
    if not packet_id:
        raise MalformedPacket("zero_packet_id")  # [MQTT-2.3.1-1]
    return packet_id


# --- per-type body decoders: (flags, view, body start, body end) -> packet ------------------------

_Decode = Callable[[int, bytearray, int, int], Packet]

_PINGREQ: Final = Pingreq()
_PINGRESP: Final = Pingresp()
_DISCONNECT: Final = Disconnect()
_SUBACK_CODES: Final = frozenset({0x00, 0x01, 0x02, 0x80})  # [MQTT-3.9.3-2]


# PUBLISH is the hot path. A frozen dataclass's __init__ sets each field through
# object.__setattr__, which costs about as much as the whole rest of the decoding; writing the
# slots through their descriptors builds the identical object in half the time. (Publish has no
# __post_init__ to skip.)
_new_object: Final = object.__new__
_set_topic, _set_payload, _set_qos, _set_retain, _set_dup, _set_packet_id = (
    getattr(Publish, field).__set__
    for field in ("topic", "payload", "qos", "retain", "dup", "packet_id")
)


def _decode_publish(flags: int, buf: bytearray, start: int, end: int) -> Publish:
    if start + 2 > end:
        raise MalformedPacket("truncated_publish")
    pos = start + 2 + (buf[start] << 8 | buf[start + 1])
    if pos > end:
        raise MalformedPacket("truncated_publish")
    try:
        topic = buf[start + 2 : pos].decode()  # [MQTT-3.3.2-1] [MQTT-1.5.3-1]
    except UnicodeDecodeError:
        raise MalformedPacket("invalid_utf8") from None
    _check_text(topic)
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
    _set_payload(packet, bytes(buf[pos:end]))
    _set_qos(packet, qos)
    _set_retain(packet, bool(flags & 0x1))
    _set_dup(packet, bool(flags & 0x8))
    _set_packet_id(packet, packet_id)
    return packet


def _decode_puback(flags: int, buf: bytearray, start: int, end: int) -> Puback:
    return Puback(_read_packet_id(buf, start, end))


def _decode_pubrec(flags: int, buf: bytearray, start: int, end: int) -> Pubrec:
    return Pubrec(_read_packet_id(buf, start, end))


def _decode_pubrel(flags: int, buf: bytearray, start: int, end: int) -> Pubrel:
    return Pubrel(_read_packet_id(buf, start, end), bool(flags & 0x8))


def _decode_pubcomp(flags: int, buf: bytearray, start: int, end: int) -> Pubcomp:
    return Pubcomp(_read_packet_id(buf, start, end))


def _decode_unsuback(flags: int, buf: bytearray, start: int, end: int) -> Unsuback:
    return Unsuback(_read_packet_id(buf, start, end))


def _decode_connack(flags: int, buf: bytearray, start: int, end: int) -> Connack:
    ack_flags = buf[start]
    if ack_flags & 0xFE:
        raise MalformedPacket("connack_reserved_flags")  # 3.2.2.1: bits 7-1 MUST be 0
    return Connack(bool(ack_flags), buf[start + 1])


def _decode_suback(flags: int, buf: bytearray, start: int, end: int) -> Suback:
    packet_id = _read_packet_id(buf, start, end)
    codes = tuple(buf[start + 2 : end])
    if not _SUBACK_CODES.issuperset(codes):
        raise MalformedPacket("invalid_suback_code")  # [MQTT-3.9.3-2]
    return Suback(packet_id, codes)


def _decode_pingreq(flags: int, buf: bytearray, start: int, end: int) -> Pingreq:
    return _PINGREQ


def _decode_pingresp(flags: int, buf: bytearray, start: int, end: int) -> Pingresp:
    return _PINGRESP


def _decode_disconnect(flags: int, buf: bytearray, start: int, end: int) -> Disconnect:
    return _DISCONNECT


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

    Attributes:
        protocol_level: ``None`` until a CONNECT was decoded, then 4 (MQTT 3.1.1) or 3 (MQTT 3.1).
        bridge: whether that CONNECT came from a bridge: its protocol level had the high bit
            set (0x84, 0x83), Mosquitto's ``try_private``.
    """

    # An idle connection keeps its decoder: no per-instance __dict__.
    __slots__ = (
        "_buf",
        "_counts",
        "_eof",
        "_error",
        "_limit",
        "_max_packet_size",
        "_pos",
        "_rules",
        "_server",
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
    ) -> None:
        if not 0 <= max_packet_size <= MAX_REMAINING_LENGTH:
            raise LocalProtocolError("max_packet_size_out_of_range")
        if max_connect_packet_size is None:
            max_connect_packet_size = max_packet_size
        if not 0 <= max_connect_packet_size <= MAX_REMAINING_LENGTH:
            raise LocalProtocolError("max_connect_packet_size_out_of_range")
        self.protocol_level: int | None = None
        self.bridge = False
        self._server = server
        self._max_packet_size = max_packet_size
        #: the Remaining Length limit in force: the CONNECT's until one has been decoded
        self._limit = min(max_connect_packet_size, max_packet_size) if server else max_packet_size
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._error: ProtocolError | None = None
        self._rules = _AWAIT_CONNECT if server else _CLIENT_311
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
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_packet(self) -> Packet | Literal[_Sentinel.NEED_DATA, _Sentinel.CLOSED]:
        """Return the next complete packet, ``NEED_DATA`` or ``CLOSED``.

        Raises:
            MalformedPacket: the bytes are not a valid packet (also: EOF inside a packet).
            ProtocolViolation: a valid packet that is not allowed here.
            ProtocolError: with ``connack_code`` set when a CONNACK must be sent before closing.
        """
        error = self._error
        if error is not None:
            raise type(error)(error.reason, connack_code=error.connack_code)
        try:
            buf = self._buf
            pos = self._pos
            size = len(buf)
            if pos >= size:
                if pos:
                    # All consumed: drop the buffer, so an idle connection does not keep its
                    # last (possibly large) read alive.
                    self._buf = bytearray()
                    self._pos = 0
                return CLOSED if self._eof else NEED_DATA
            first = buf[pos]
            rule = self._rules[first]
            if isinstance(rule, tuple):
                raise rule[0](rule[1])
            # Remaining Length (2.2.3): 1 to 4 bytes, 7 bits each, low byte first.
            i = pos + 1
            if i >= size:
                return self._short()
            byte = buf[i]
            length = byte & 0x7F
            shift = 7
            while byte & 0x80:
                if shift == 28:
                    raise MalformedPacket("remaining_length_too_long")
                i += 1
                if i >= size:
                    return self._short()
                byte = buf[i]
                length |= (byte & 0x7F) << shift
                shift += 7
            i += 1
            if length > self._limit:
                raise ProtocolViolation("packet_too_large")
            if rule >= 0 and length != rule:
                raise MalformedPacket("invalid_remaining_length")
            end = i + length
            if end > size:
                return self._short()
            kind = first >> 4
            packet: Packet
            if kind in _NEEDS_STATE:
                packet = _NEEDS_STATE[kind](self, first & 0x0F, buf, i, end)
            else:
                packet = _DECODERS[kind](first & 0x0F, buf, i, end)  # type: ignore[misc]
            self._pos = end
            counts = self._counts
            counts[kind] += 1
            counts[16 + kind] += end - pos
            if kind == 3:
                counts[32] += len(packet.payload)  # type: ignore[union-attr]
            return packet
        except ProtocolError as exc:
            self._error = exc
            raise

    def _short(self) -> Literal[_Sentinel.NEED_DATA]:
        """The buffer ends inside a packet: wait for more, unless the peer already sent EOF."""
        if self._eof:
            raise MalformedPacket("truncated_packet")
        return NEED_DATA

    def _decode_connect(self, flags: int, buf: bytearray, start: int, end: int) -> Connect:
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
        self.protocol_level = level
        self.bridge = bridge
        self._limit = self._max_packet_size
        if self._server:
            self._rules = _SERVER_31 if mqtt31 else _SERVER_311
        else:
            self._rules = _CLIENT_31 if mqtt31 else _CLIENT_311
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

    def _decode_subscribe(self, flags: int, buf: bytearray, start: int, end: int) -> Subscribe:
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
        if not subscriptions and self.protocol_level != _MQTT_31_LEVEL:
            raise ProtocolViolation("subscribe_without_filters")  # [MQTT-3.8.3-3]
        return Subscribe(packet_id, tuple(subscriptions))

    def _decode_unsubscribe(self, flags: int, buf: bytearray, start: int, end: int) -> Unsubscribe:
        packet_id = _read_packet_id(buf, start, end)  # [MQTT-2.3.1-1]
        pos = start + 2
        topic_filters = []
        while pos < end:
            topic_filter, pos = _read_utf8(buf, pos, end)  # [MQTT-3.10.3-1]
            validate_topic_filter(topic_filter)
            topic_filters.append(topic_filter)
        if not topic_filters and self.protocol_level != _MQTT_31_LEVEL:
            raise ProtocolViolation("unsubscribe_without_filters")  # [MQTT-3.10.3-2]
        return Unsubscribe(packet_id, tuple(topic_filters))


#: Decoders by packet type (the fixed header's high nibble). The rules table has already
#: refused the types a side must not receive, so every entry reached here is a function.
_DECODERS: tuple[_Decode | None, ...] = (
    None,
    None,  # CONNECT: see _NEEDS_STATE
    _decode_connack,
    _decode_publish,
    _decode_puback,
    _decode_pubrec,
    _decode_pubrel,
    _decode_pubcomp,
    None,  # SUBSCRIBE: see _NEEDS_STATE
    _decode_suback,
    None,  # UNSUBSCRIBE: see _NEEDS_STATE
    _decode_unsuback,
    _decode_pingreq,
    _decode_pingresp,
    _decode_disconnect,
    None,
)
#: The packets whose decoding depends on (or sets) the decoder's protocol level.
_NEEDS_STATE: dict[int, Callable[[Decoder, int, bytearray, int, int], Packet]] = {
    1: Decoder._decode_connect,
    8: Decoder._decode_subscribe,
    10: Decoder._decode_unsubscribe,
}
