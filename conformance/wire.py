"""The client side of MQTT 5.0, 3.1.1 and 3.1 on the wire: one library for everything that is
not the broker (the conformance suite, the tests, the benchmarks).

Theory of operation
-------------------
Three layers, each usable alone:

- **Builders** (``connect``, ``publish``, ``subscribe``, ``ack``, ...) return the exact bytes of
  one packet. They take every field literally and check nothing, so a caller can build malformed
  packets on purpose: strings may be ``bytes`` (ill-formed UTF-8, forbidden characters), a
  packet id is written whenever one is given (even at QoS 0), flag bytes can be overridden.
  Only ``varint`` refuses what cannot be encoded at all.
- **Framer** splits a byte stream into whole packets by the fixed header alone (type byte and
  Remaining Length), without looking at the body: callers that compare exact bytes get the
  bytes as received, callers that measure get ``(first byte, body)`` pairs cheaply.
- **Parsers** read the packets a client receives: ``parse`` turns raw bytes into a ``Packet``
  (type, flags, packet id, topic, payload, SUBACK codes, and in MQTT 5 the reason code and
  the properties) and ``parse_publish`` is the fast path for PUBLISH bodies.

MQTT 5.0 (protocol level 5) adds Properties to most variable headers and Reason Codes to the
acknowledgements. The protocol version is a parameter of the builders and parsers whose bytes
differ between versions (``version=5``); it defaults to 4 (3.1.1), whose bytes are unchanged.
Properties are an ordered sequence of ``(identifier, value)`` pairs, so repeated properties
(User Property, Subscription Identifier) keep their order and a caller can also repeat one that
must not be repeated. Values by the property's type (``PROPERTY_TYPES``): ``int`` for Byte,
Two Byte, Four Byte and Variable Byte Integers, ``str`` (or raw ``bytes``) for UTF-8 strings,
``bytes`` for Binary Data, a ``(name, value)`` pair for the UTF-8 String Pair. Parsed string
values are ``str``. ``check_packet`` tells what in a received MQTT 5 packet breaks the rules
that bind its sender (reason codes, properties allowed in the packet, repeats).

It deliberately does not import ``mqttd``: the tests compare the broker's bytes with these and the
conformance suite judges any broker, so a bug in the broker's codec cannot hide itself here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14
AUTH = 15  # MQTT 5 only (type 15 is reserved in 3.1.1)

NAMES = {
    CONNECT: "CONNECT",
    CONNACK: "CONNACK",
    PUBLISH: "PUBLISH",
    PUBACK: "PUBACK",
    PUBREC: "PUBREC",
    PUBREL: "PUBREL",
    PUBCOMP: "PUBCOMP",
    SUBSCRIBE: "SUBSCRIBE",
    SUBACK: "SUBACK",
    UNSUBSCRIBE: "UNSUBSCRIBE",
    UNSUBACK: "UNSUBACK",
    PINGREQ: "PINGREQ",
    PINGRESP: "PINGRESP",
    DISCONNECT: "DISCONNECT",
}
#: ``NAMES`` plus AUTH, the packet type MQTT 5 adds.
NAMES_5 = {**NAMES, AUTH: "AUTH"}

#: The largest Remaining Length four bytes can encode (section 2.2.3).
MAX_REMAINING_LENGTH = 268_435_455
#: The largest Variable Byte Integer (MQTT 5 section 1.5.5): the same four-byte limit.
MAX_VARINT = MAX_REMAINING_LENGTH

Text = str | bytes
#: A Will as ``connect`` takes it: ``(topic, message[, qos[, retain]])``.
Will = tuple[Text, bytes] | tuple[Text, bytes, int] | tuple[Text, bytes, int, bool]

# ---------------------------------------------------------------------------------------------
# MQTT 5.0 properties (section 2.2.2.2) and reason codes (section 2.4)
# ---------------------------------------------------------------------------------------------

PAYLOAD_FORMAT_INDICATOR = 0x01
MESSAGE_EXPIRY_INTERVAL = 0x02
CONTENT_TYPE = 0x03
RESPONSE_TOPIC = 0x08
CORRELATION_DATA = 0x09
SUBSCRIPTION_IDENTIFIER = 0x0B
SESSION_EXPIRY_INTERVAL = 0x11
ASSIGNED_CLIENT_IDENTIFIER = 0x12
SERVER_KEEP_ALIVE = 0x13
AUTHENTICATION_METHOD = 0x15
AUTHENTICATION_DATA = 0x16
REQUEST_PROBLEM_INFORMATION = 0x17
WILL_DELAY_INTERVAL = 0x18
REQUEST_RESPONSE_INFORMATION = 0x19
RESPONSE_INFORMATION = 0x1A
SERVER_REFERENCE = 0x1C
REASON_STRING = 0x1F
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS_MAXIMUM = 0x22
TOPIC_ALIAS = 0x23
MAXIMUM_QOS = 0x24
RETAIN_AVAILABLE = 0x25
USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27
WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
SHARED_SUBSCRIPTION_AVAILABLE = 0x2A

# The seven property data types (section 2.2.2.2).
BYTE = "byte"
TWO_BYTE = "two-byte integer"
FOUR_BYTE = "four-byte integer"
VARIABLE_BYTE = "variable byte integer"
UTF8 = "UTF-8 string"
BINARY = "binary data"
STRING_PAIR = "UTF-8 string pair"

#: identifier -> (name, data type), as in Table 2-4.
PROPERTIES: dict[int, tuple[str, str]] = {
    PAYLOAD_FORMAT_INDICATOR: ("Payload Format Indicator", BYTE),
    MESSAGE_EXPIRY_INTERVAL: ("Message Expiry Interval", FOUR_BYTE),
    CONTENT_TYPE: ("Content Type", UTF8),
    RESPONSE_TOPIC: ("Response Topic", UTF8),
    CORRELATION_DATA: ("Correlation Data", BINARY),
    SUBSCRIPTION_IDENTIFIER: ("Subscription Identifier", VARIABLE_BYTE),
    SESSION_EXPIRY_INTERVAL: ("Session Expiry Interval", FOUR_BYTE),
    ASSIGNED_CLIENT_IDENTIFIER: ("Assigned Client Identifier", UTF8),
    SERVER_KEEP_ALIVE: ("Server Keep Alive", TWO_BYTE),
    AUTHENTICATION_METHOD: ("Authentication Method", UTF8),
    AUTHENTICATION_DATA: ("Authentication Data", BINARY),
    REQUEST_PROBLEM_INFORMATION: ("Request Problem Information", BYTE),
    WILL_DELAY_INTERVAL: ("Will Delay Interval", FOUR_BYTE),
    REQUEST_RESPONSE_INFORMATION: ("Request Response Information", BYTE),
    RESPONSE_INFORMATION: ("Response Information", UTF8),
    SERVER_REFERENCE: ("Server Reference", UTF8),
    REASON_STRING: ("Reason String", UTF8),
    RECEIVE_MAXIMUM: ("Receive Maximum", TWO_BYTE),
    TOPIC_ALIAS_MAXIMUM: ("Topic Alias Maximum", TWO_BYTE),
    TOPIC_ALIAS: ("Topic Alias", TWO_BYTE),
    MAXIMUM_QOS: ("Maximum QoS", BYTE),
    RETAIN_AVAILABLE: ("Retain Available", BYTE),
    USER_PROPERTY: ("User Property", STRING_PAIR),
    MAXIMUM_PACKET_SIZE: ("Maximum Packet Size", FOUR_BYTE),
    WILDCARD_SUBSCRIPTION_AVAILABLE: ("Wildcard Subscription Available", BYTE),
    SUBSCRIPTION_IDENTIFIER_AVAILABLE: ("Subscription Identifier Available", BYTE),
    SHARED_SUBSCRIPTION_AVAILABLE: ("Shared Subscription Available", BYTE),
}
#: identifier -> data type.
PROPERTY_TYPES: dict[int, str] = {k: v[1] for k, v in PROPERTIES.items()}

#: Where the Will Properties go, in ``ALLOWED_PROPERTIES`` (they are not a packet).
WILL = 0
#: packet type (or ``WILL``) -> the properties it may carry (Table 2-4).
ALLOWED_PROPERTIES: dict[int, frozenset[int]] = {
    CONNECT: frozenset(
        {
            SESSION_EXPIRY_INTERVAL,
            AUTHENTICATION_METHOD,
            AUTHENTICATION_DATA,
            REQUEST_PROBLEM_INFORMATION,
            REQUEST_RESPONSE_INFORMATION,
            RECEIVE_MAXIMUM,
            TOPIC_ALIAS_MAXIMUM,
            USER_PROPERTY,
            MAXIMUM_PACKET_SIZE,
        }
    ),
    CONNACK: frozenset(
        {
            SESSION_EXPIRY_INTERVAL,
            ASSIGNED_CLIENT_IDENTIFIER,
            SERVER_KEEP_ALIVE,
            AUTHENTICATION_METHOD,
            AUTHENTICATION_DATA,
            RESPONSE_INFORMATION,
            SERVER_REFERENCE,
            REASON_STRING,
            RECEIVE_MAXIMUM,
            TOPIC_ALIAS_MAXIMUM,
            MAXIMUM_QOS,
            RETAIN_AVAILABLE,
            USER_PROPERTY,
            MAXIMUM_PACKET_SIZE,
            WILDCARD_SUBSCRIPTION_AVAILABLE,
            SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            SHARED_SUBSCRIPTION_AVAILABLE,
        }
    ),
    PUBLISH: frozenset(
        {
            PAYLOAD_FORMAT_INDICATOR,
            MESSAGE_EXPIRY_INTERVAL,
            CONTENT_TYPE,
            RESPONSE_TOPIC,
            CORRELATION_DATA,
            SUBSCRIPTION_IDENTIFIER,
            TOPIC_ALIAS,
            USER_PROPERTY,
        }
    ),
    WILL: frozenset(
        {
            PAYLOAD_FORMAT_INDICATOR,
            MESSAGE_EXPIRY_INTERVAL,
            CONTENT_TYPE,
            RESPONSE_TOPIC,
            CORRELATION_DATA,
            WILL_DELAY_INTERVAL,
            USER_PROPERTY,
        }
    ),
    PUBACK: frozenset({REASON_STRING, USER_PROPERTY}),
    PUBREC: frozenset({REASON_STRING, USER_PROPERTY}),
    PUBREL: frozenset({REASON_STRING, USER_PROPERTY}),
    PUBCOMP: frozenset({REASON_STRING, USER_PROPERTY}),
    SUBSCRIBE: frozenset({SUBSCRIPTION_IDENTIFIER, USER_PROPERTY}),
    SUBACK: frozenset({REASON_STRING, USER_PROPERTY}),
    UNSUBSCRIBE: frozenset({USER_PROPERTY}),
    UNSUBACK: frozenset({REASON_STRING, USER_PROPERTY}),
    DISCONNECT: frozenset(
        {SESSION_EXPIRY_INTERVAL, SERVER_REFERENCE, REASON_STRING, USER_PROPERTY}
    ),
    AUTH: frozenset({AUTHENTICATION_METHOD, AUTHENTICATION_DATA, REASON_STRING, USER_PROPERTY}),
}
#: Properties that may appear more than once in one packet (all others: a Protocol Error).
REPEATABLE_PROPERTIES = frozenset({USER_PROPERTY, SUBSCRIPTION_IDENTIFIER})

#: A property value as the builders take it (see the module docstring).
PropertyValue = int | Text | tuple[Text, Text]
#: A property as the builders take it: ``(identifier, value)``.
PropertyIn = tuple[int, PropertyValue]
#: A parsed property value: ``int``, ``str`` (UTF-8 string), ``bytes`` (binary data) or a
#: ``(name, value)`` pair of ``str`` (user property).
Value = int | str | bytes | tuple[str, str]
#: A parsed property: ``(identifier, value)``.
Property = tuple[int, Value]

# Reason codes (section 2.4, Table 2-6), by their first name in the table.
SUCCESS = 0x00
NORMAL_DISCONNECTION = 0x00
GRANTED_QOS_0 = 0x00
GRANTED_QOS_1 = 0x01
GRANTED_QOS_2 = 0x02
DISCONNECT_WITH_WILL_MESSAGE = 0x04
NO_MATCHING_SUBSCRIBERS = 0x10
NO_SUBSCRIPTION_EXISTED = 0x11
CONTINUE_AUTHENTICATION = 0x18
RE_AUTHENTICATE = 0x19
UNSPECIFIED_ERROR = 0x80
MALFORMED_PACKET = 0x81
PROTOCOL_ERROR = 0x82
IMPLEMENTATION_SPECIFIC_ERROR = 0x83
UNSUPPORTED_PROTOCOL_VERSION = 0x84
CLIENT_IDENTIFIER_NOT_VALID = 0x85
BAD_USER_NAME_OR_PASSWORD = 0x86
NOT_AUTHORIZED = 0x87
SERVER_UNAVAILABLE = 0x88
SERVER_BUSY = 0x89
BANNED = 0x8A
SERVER_SHUTTING_DOWN = 0x8B
BAD_AUTHENTICATION_METHOD = 0x8C
KEEP_ALIVE_TIMEOUT = 0x8D
SESSION_TAKEN_OVER = 0x8E
TOPIC_FILTER_INVALID = 0x8F
TOPIC_NAME_INVALID = 0x90
PACKET_IDENTIFIER_IN_USE = 0x91
PACKET_IDENTIFIER_NOT_FOUND = 0x92
RECEIVE_MAXIMUM_EXCEEDED = 0x93
TOPIC_ALIAS_INVALID = 0x94
PACKET_TOO_LARGE = 0x95
MESSAGE_RATE_TOO_HIGH = 0x96
QUOTA_EXCEEDED = 0x97
ADMINISTRATIVE_ACTION = 0x98
PAYLOAD_FORMAT_INVALID = 0x99
RETAIN_NOT_SUPPORTED = 0x9A
QOS_NOT_SUPPORTED = 0x9B
USE_ANOTHER_SERVER = 0x9C
SERVER_MOVED = 0x9D
SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
CONNECTION_RATE_EXCEEDED = 0x9F
MAXIMUM_CONNECT_TIME = 0xA0
SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1
WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2

#: reason code -> name (Table 2-6; 0x00-0x02 named as in SUBACK, which uses all three).
REASON_NAMES: dict[int, str] = {
    0x00: "Success",
    0x01: "Granted QoS 1",
    0x02: "Granted QoS 2",
    0x04: "Disconnect with Will Message",
    0x10: "No matching subscribers",
    0x11: "No subscription existed",
    0x18: "Continue authentication",
    0x19: "Re-authenticate",
    0x80: "Unspecified error",
    0x81: "Malformed Packet",
    0x82: "Protocol Error",
    0x83: "Implementation specific error",
    0x84: "Unsupported Protocol Version",
    0x85: "Client Identifier not valid",
    0x86: "Bad User Name or Password",
    0x87: "Not authorized",
    0x88: "Server unavailable",
    0x89: "Server busy",
    0x8A: "Banned",
    0x8B: "Server shutting down",
    0x8C: "Bad authentication method",
    0x8D: "Keep Alive timeout",
    0x8E: "Session taken over",
    0x8F: "Topic Filter invalid",
    0x90: "Topic Name invalid",
    0x91: "Packet Identifier in use",
    0x92: "Packet Identifier not found",
    0x93: "Receive Maximum exceeded",
    0x94: "Topic Alias invalid",
    0x95: "Packet too large",
    0x96: "Message rate too high",
    0x97: "Quota exceeded",
    0x98: "Administrative action",
    0x99: "Payload format invalid",
    0x9A: "Retain not supported",
    0x9B: "QoS not supported",
    0x9C: "Use another server",
    0x9D: "Server moved",
    0x9E: "Shared Subscriptions not supported",
    0x9F: "Connection rate exceeded",
    0xA0: "Maximum connect time",
    0xA1: "Subscription Identifiers not supported",
    0xA2: "Wildcard Subscriptions not supported",
}

#: packet type -> the reason codes its sender may use (sections 3.2.2.2, 3.4.2.1, 3.5.2.1,
#: 3.6.2.1, 3.7.2.1, 3.9.3, 3.11.3, 3.14.2.1, 3.15.2.1).
REASON_CODES: dict[int, frozenset[int]] = {
    CONNACK: frozenset(
        {0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C}
        | {0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F}
    ),
    PUBACK: frozenset({0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99}),
    PUBREC: frozenset({0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99}),
    PUBREL: frozenset({0x00, 0x92}),
    PUBCOMP: frozenset({0x00, 0x92}),
    SUBACK: frozenset({0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2}),
    UNSUBACK: frozenset({0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91}),
    DISCONNECT: frozenset(
        {0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90}
        | {0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F}
        | {0xA0, 0xA1, 0xA2}
    ),
    AUTH: frozenset({0x00, 0x18, 0x19}),
}


class WireError(Exception):
    """The peer sent bytes that cannot be framed or parsed as an MQTT packet."""


# ---------------------------------------------------------------------------------------------
# Builders: exact bytes, fields taken literally
# ---------------------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    """Encode a Remaining Length or Variable Byte Integer (7 bits per byte, low bits first,
    high bit = continuation).

    Raises:
        ValueError: ``n`` is outside 0 ... 268 435 455 (it has no 1-4 byte encoding).
    """
    if not 0 <= n <= MAX_REMAINING_LENGTH:
        raise ValueError(f"remaining length out of range: {n}")
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        if n:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def u16(n: int) -> bytes:
    """A big-endian 16-bit integer."""
    return n.to_bytes(2, "big")


def u32(n: int) -> bytes:
    """A big-endian 32-bit integer."""
    return n.to_bytes(4, "big")


def string(s: Text) -> bytes:
    """A 2-byte-length-prefixed string; ``str`` is UTF-8 encoded, ``bytes`` are used as given."""
    raw = s.encode("utf-8") if isinstance(s, str) else s
    return u16(len(raw)) + raw


def packet(first_byte: int, body: bytes = b"") -> bytes:
    """A whole packet: first byte, Remaining Length varint, body."""
    return bytes([first_byte]) + varint(len(body)) + body


def property_bytes(props: Iterable[PropertyIn]) -> bytes:
    """The encoded properties, without the Property Length.

    Each value is written by its property's type (``PROPERTY_TYPES``). To build a malformed
    property on purpose, give ``bytes`` for a non-string type (they are written as they are
    after the identifier), or an identifier the table does not know with ``bytes``.

    Raises:
        ValueError: a value that does not fit its type (an integer out of range, a str for an
            integer), or an unknown identifier with a value that is not ``bytes``.
    """
    out = bytearray()
    for ident, value in props:
        out += varint(ident)
        kind = PROPERTY_TYPES.get(ident)
        if isinstance(value, bytes) and kind not in (UTF8, BINARY):
            out += value  # raw bytes, as given
        elif kind in (BYTE, TWO_BYTE, FOUR_BYTE) and isinstance(value, int):
            out += value.to_bytes({BYTE: 1, TWO_BYTE: 2, FOUR_BYTE: 4}[kind], "big")
        elif kind == VARIABLE_BYTE and isinstance(value, int):
            out += varint(value)
        elif kind in (UTF8, BINARY) and isinstance(value, str | bytes):
            out += string(value)
        elif kind == STRING_PAIR and isinstance(value, tuple):
            out += string(value[0]) + string(value[1])
        else:
            raise ValueError(f"property {ident:#04x} ({kind or 'unknown'}) cannot hold {value!r}")
    return bytes(out)


def properties(props: Iterable[PropertyIn] | None = None) -> bytes:
    """A property section: Property Length, then the properties (``b"\\x00"`` for none,
    [MQTT-2.2.2-1])."""
    body = property_bytes(props or ())
    return varint(len(body)) + body


def _props5(version: int, props: Iterable[PropertyIn] | None, what: str) -> bytes:
    """The property section of a packet of protocol ``version``: none before MQTT 5."""
    if version == 5:
        return properties(props)
    if props is not None:
        raise ValueError(f"{what} properties need version=5")
    return b""


def connect(
    client_id: Text,
    clean: bool = True,
    keepalive: int = 0,
    will: Will | None = None,
    username: Text | None = None,
    password: bytes | None = None,
    proto: tuple[Text, int] | None = None,
    *,
    flags: int | None = None,
    first_byte: int = 0x10,
    version: int = 4,
    properties: Iterable[PropertyIn] | None = None,
    will_properties: Iterable[PropertyIn] | None = None,
) -> bytes:
    """CONNECT. ``will`` is ``(topic, message[, qos[, retain]])``; ``proto`` is the protocol
    name and level (default ``("MQTT", version)``, ``("MQIsdp", 3)`` for MQTT 3.1); ``flags``
    overrides the computed connect-flags byte (to test reserved bits and inconsistent flags).

    With ``version=5`` the CONNECT has the MQTT 5 layout: ``clean`` is Clean Start, the
    variable header ends with ``properties`` and the Will with ``will_properties`` (both may
    be None: Property Length 0). ``proto`` can then name another level to send an MQTT 5
    layout with a wrong level.
    """
    computed = 0x02 if clean else 0x00
    payload = string(client_id)
    if will is not None:
        topic, message, *rest = will
        qos = rest[0] if rest else 0
        retain = rest[1] if len(rest) > 1 else False
        computed |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        will_props = _props5(version, will_properties, "Will")
        payload += will_props + string(topic) + string(message)
    elif will_properties is not None:
        raise ValueError("Will properties without a Will")
    if username is not None:
        computed |= 0x80
        payload += string(username)
    if password is not None:
        computed |= 0x40
        payload += string(password)
    if proto is None:
        proto = ("MQIsdp", 3) if version == 3 else ("MQTT", version)
    name, level = proto
    header = string(name) + bytes([level, computed if flags is None else flags]) + u16(keepalive)
    header += _props5(version, properties, "CONNECT")
    return packet(first_byte, header + payload)


def connack(
    sp: bool | int,
    rc: int,
    *,
    version: int = 4,
    properties: Iterable[PropertyIn] | None = None,
) -> bytes:
    """CONNACK with the Session Present flag ``sp`` and return (reason) code ``rc``; with
    ``version=5`` the properties follow (Property Length 0 if None)."""
    return packet(0x20, bytes([int(sp), rc]) + _props5(version, properties, "CONNACK"))


def publish(
    topic: Text,
    payload: bytes = b"",
    qos: int = 0,
    retain: bool = False,
    dup: bool = False,
    pid: int | None = None,
    *,
    version: int = 4,
    properties: Iterable[PropertyIn] | None = None,
) -> bytes:
    """PUBLISH; ``pid`` is written whenever it is given (even at QoS 0) and only then. With
    ``version=5`` the properties follow the packet id (Property Length 0 if None)."""
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = string(topic) + (u16(pid) if pid is not None else b"")
    body += _props5(version, properties, "PUBLISH") + payload
    return packet(first, body)


def _reason_tail(reason: int | None, props: Iterable[PropertyIn] | None) -> bytes:
    """Reason Code and properties of an MQTT 5 ack, DISCONNECT or AUTH: both omitted when
    neither is given, the Property Length omitted when there are no properties."""
    if reason is None and props is None:
        return b""
    out = bytes([SUCCESS if reason is None else reason])
    return out if props is None else out + properties(props)


def ack(
    kind: int,
    pid: int,
    *,
    flags: int | None = None,
    reason: int | None = None,
    properties: Iterable[PropertyIn] | None = None,
) -> bytes:
    """A packet of fixed header + packet id (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK).

    ``flags`` overrides the fixed-header flags (0010 for PUBREL [MQTT-3.6.1-1], else 0000).
    MQTT 5: a ``reason`` code (and ``properties``) follow the packet id when given; with
    neither the packet is the short form both versions share (Reason Code 0x00, no
    properties).
    """
    if flags is None:
        flags = 0x02 if kind == PUBREL else 0x00
    tail = _reason_tail(reason, properties)
    if not tail:
        return bytes(((kind << 4) | flags, 2)) + u16(pid)
    return packet((kind << 4) | flags, u16(pid) + tail)


def puback(
    pid: int, *, reason: int | None = None, properties: Iterable[PropertyIn] | None = None
) -> bytes:
    """PUBACK (MQTT 5: with an optional reason code and properties)."""
    return ack(PUBACK, pid, reason=reason, properties=properties)


def pubrec(
    pid: int, *, reason: int | None = None, properties: Iterable[PropertyIn] | None = None
) -> bytes:
    """PUBREC (MQTT 5: with an optional reason code and properties)."""
    return ack(PUBREC, pid, reason=reason, properties=properties)


def pubrel(
    pid: int,
    dup: bool = False,
    *,
    reason: int | None = None,
    properties: Iterable[PropertyIn] | None = None,
) -> bytes:
    """PUBREL (flags 0010; ``dup`` sets 1010 as MQTT 3.1 clients may; MQTT 5: with an optional
    reason code and properties)."""
    return ack(PUBREL, pid, flags=0x0A if dup else 0x02, reason=reason, properties=properties)


def pubcomp(
    pid: int, *, reason: int | None = None, properties: Iterable[PropertyIn] | None = None
) -> bytes:
    """PUBCOMP (MQTT 5: with an optional reason code and properties)."""
    return ack(PUBCOMP, pid, reason=reason, properties=properties)


def subscription_options(
    qos: int,
    *,
    no_local: bool = False,
    retain_as_published: bool = False,
    retain_handling: int = 0,
) -> int:
    """The MQTT 5 Subscription Options byte (section 3.8.3.1): QoS in bits 0-1, No Local bit
    2, Retain As Published bit 3, Retain Handling bits 4-5 (values are not checked)."""
    return (
        qos
        | (0x04 if no_local else 0)
        | (0x08 if retain_as_published else 0)
        | (retain_handling << 4)
    )


def subscribe(
    pid: int,
    subscriptions: Iterable[tuple[Text, int]],
    *,
    flags: int = 0x02,
    version: int = 4,
    properties: Iterable[PropertyIn] | None = None,
) -> bytes:
    """SUBSCRIBE with ``(filter, requested QoS byte)`` pairs; the QoS byte is sent as given
    (so reserved bits can be set on purpose), as are the fixed-header ``flags``. In MQTT 5
    (``version=5``) the byte is the Subscription Options (``subscription_options``) and the
    properties follow the packet id."""
    body = u16(pid) + _props5(version, properties, "SUBSCRIBE")
    body += b"".join(string(f) + bytes([qos]) for f, qos in subscriptions)
    return packet(0x80 | flags, body)


def suback(
    pid: int,
    codes: Sequence[int],
    *,
    version: int = 4,
    properties: Iterable[PropertyIn] | None = None,
) -> bytes:
    """SUBACK with one return (reason) code per filter."""
    return packet(0x90, u16(pid) + _props5(version, properties, "SUBACK") + bytes(codes))


def unsubscribe(
    pid: int,
    filters: Iterable[Text],
    *,
    flags: int = 0x02,
    version: int = 4,
    properties: Iterable[PropertyIn] | None = None,
) -> bytes:
    """UNSUBSCRIBE (MQTT 5: properties after the packet id)."""
    body = u16(pid) + _props5(version, properties, "UNSUBSCRIBE")
    return packet(0xA0 | flags, body + b"".join(string(f) for f in filters))


def unsuback(
    pid: int,
    codes: Sequence[int] = (),
    *,
    version: int = 4,
    properties: Iterable[PropertyIn] | None = None,
) -> bytes:
    """UNSUBACK: the packet id only (3.1.1), or with ``version=5`` the properties and one
    reason code per filter."""
    if version != 5:
        if codes or properties is not None:
            raise ValueError("UNSUBACK reason codes and properties need version=5")
        return ack(UNSUBACK, pid)
    return packet(0xB0, u16(pid) + _props5(5, properties, "UNSUBACK") + bytes(codes))


def pingreq(*, flags: int = 0) -> bytes:
    """PINGREQ (``flags`` sets the reserved fixed-header bits)."""
    return bytes((0xC0 | flags, 0))


def pingresp() -> bytes:
    """PINGRESP."""
    return b"\xd0\x00"


def disconnect(
    *,
    flags: int = 0,
    reason: int | None = None,
    properties: Iterable[PropertyIn] | None = None,
) -> bytes:
    """DISCONNECT (``flags`` sets the reserved fixed-header bits). MQTT 5: an optional
    ``reason`` code and ``properties``; with neither it is ``e0 00`` (Normal disconnection)."""
    return packet(0xE0 | flags, _reason_tail(reason, properties))


def auth(
    reason: int | None = None,
    properties: Iterable[PropertyIn] | None = None,
    *,
    flags: int = 0,
) -> bytes:
    """AUTH (MQTT 5 only): an optional ``reason`` code and ``properties``; with neither it is
    ``f0 00`` (Success)."""
    return packet(0xF0 | flags, _reason_tail(reason, properties))


# ---------------------------------------------------------------------------------------------
# Framer: whole packets out of a byte stream, by the fixed header only
# ---------------------------------------------------------------------------------------------


class Framer:
    """Splits a byte stream into whole MQTT packets, whatever the chunks it arrives in.

    ``feed`` returns ``(first byte, body)`` pairs, ``feed_raw`` the packets' exact bytes (fixed
    header included). Buffering is O(bytes read): complete packets are cut off once per call.
    After a ``WireError`` the stream is beyond repair and the framer must not be fed again.

    Args:
        max_packet_size: a larger Remaining Length is a ``WireError`` (default: the most four
            bytes can encode).
    """

    def __init__(self, max_packet_size: int = MAX_REMAINING_LENGTH) -> None:
        self._buf = bytearray()
        self._max = max_packet_size

    def feed(self, data: bytes | bytearray) -> list[tuple[int, bytes]]:
        """Buffer ``data``; return every packet now complete as ``(first byte, body)``, in order.

        Raises:
            WireError: a Remaining Length longer than 4 bytes, or above ``max_packet_size``.
        """
        buf = self._buf
        buf += data
        n = len(buf)
        pos = 0
        out: list[tuple[int, bytes]] = []
        while n - pos >= 2:
            remaining = buf[pos + 1]
            if remaining < 0x80:  # fast path: one-byte Remaining Length
                end = pos + 2 + remaining
                if end > n:
                    break
                out.append((buf[pos], bytes(buf[pos + 2 : end])))
                pos = end
                continue
            start = self._body_start(pos)
            if start is None:
                break
            body_at, remaining = start
            end = body_at + remaining
            if end > n:
                break
            out.append((buf[pos], bytes(buf[body_at:end])))
            pos = end
        if pos:
            del buf[:pos]
        return out

    def feed_raw(self, data: bytes | bytearray) -> list[bytes]:
        """Buffer ``data``; return the exact bytes of every packet now complete, in order.

        Raises:
            WireError: as ``feed``.
        """
        buf = self._buf
        buf += data
        pos = 0
        out: list[bytes] = []
        while (start := self._body_start(pos)) is not None:
            body_at, remaining = start
            end = body_at + remaining
            if end > len(buf):
                break
            out.append(bytes(buf[pos:end]))
            pos = end
        if pos:
            del buf[:pos]
        return out

    def _body_start(self, pos: int) -> tuple[int, int] | None:
        """(index of the body, Remaining Length) of the packet at ``pos``; None if the fixed
        header is not complete yet."""
        buf = self._buf
        i = pos + 1
        remaining = 0
        shift = 0
        while True:
            if i >= len(buf):
                return None
            digit = buf[i]
            i += 1
            remaining |= (digit & 0x7F) << shift
            if digit < 0x80:
                break
            shift += 7
            if shift > 21:
                raise WireError("remaining length longer than 4 bytes")
        if remaining > self._max:
            raise WireError(f"packet of {remaining} bytes exceeds the limit")
        return i, remaining

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a packet."""
        return len(self._buf)

    def unparsed(self) -> bytes:
        """The bytes held back (the start of a packet not complete yet)."""
        return bytes(self._buf)


# ---------------------------------------------------------------------------------------------
# Parsers: the packets a client receives
# ---------------------------------------------------------------------------------------------


def decode_varint(data: bytes, pos: int = 0) -> tuple[int, int]:
    """(value, index after it) of the Variable Byte Integer at ``data[pos]``.

    Raises:
        WireError: truncated, longer than four bytes, or not in its shortest form
            ([MQTT-1.5.5-1]: ``80 00`` for 0 is malformed).
    """
    value = 0
    for k in range(4):
        if pos + k >= len(data):
            raise WireError("truncated variable byte integer")
        digit = data[pos + k]
        value |= (digit & 0x7F) << (7 * k)
        if not digit & 0x80:
            if k and not digit:
                raise WireError(
                    f"variable byte integer {data[pos : pos + k + 1].hex(' ')} is not minimal"
                )
            return value, pos + k + 1
    raise WireError("variable byte integer longer than 4 bytes")


def _read_string(data: bytes, pos: int, what: str) -> tuple[bytes, int]:
    if pos + 2 > len(data):
        raise WireError(f"{what}: truncated string length")
    end = pos + 2 + ((data[pos] << 8) | data[pos + 1])
    if end > len(data):
        raise WireError(f"{what}: string runs past the end of the properties")
    return data[pos + 2 : end], end


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")  # strict: surrogates and overlong forms are refused
    except UnicodeDecodeError as exc:
        raise WireError(f"{what} is not well-formed UTF-8 ({raw!r}): {exc}") from None


def parse_properties(data: bytes, pos: int = 0) -> tuple[tuple[Property, ...], int]:
    """The property section at ``data[pos]`` (Property Length first) and the index after it.

    String values come back as ``str``, binary data as ``bytes``, a user property as a
    ``(name, value)`` pair; repeats and order are kept.

    Raises:
        WireError: a truncated or over-long section, an unknown property identifier, a
            non-minimal variable byte integer or ill-formed UTF-8.
    """
    length, pos = decode_varint(data, pos)
    end = pos + length
    if end > len(data):
        raise WireError(f"Property Length {length} runs past the end of the packet")
    chunk = data[:end]
    out: list[Property] = []
    while pos < end:
        ident, pos = decode_varint(chunk, pos)
        kind = PROPERTY_TYPES.get(ident)
        name = PROPERTIES[ident][0] if kind else f"property {ident:#04x}"
        if kind is None:
            raise WireError(f"unknown property identifier {ident:#04x}")
        value: Value
        if kind in (BYTE, TWO_BYTE, FOUR_BYTE):
            size = {BYTE: 1, TWO_BYTE: 2, FOUR_BYTE: 4}[kind]
            if pos + size > end:
                raise WireError(f"{name}: truncated")
            value = int.from_bytes(chunk[pos : pos + size], "big")
            pos += size
        elif kind == VARIABLE_BYTE:
            value, pos = decode_varint(chunk, pos)
        elif kind == BINARY:
            value, pos = _read_string(chunk, pos, name)
        elif kind == UTF8:
            raw, pos = _read_string(chunk, pos, name)
            value = _utf8(raw, name)
        else:
            key, pos = _read_string(chunk, pos, name)
            val, pos = _read_string(chunk, pos, name)
            value = (_utf8(key, name), _utf8(val, name))
        out.append((ident, value))
    return tuple(out), end


def _split_publish(flags: int, body: bytes) -> tuple[bytes, int | None, bytes]:
    """(topic bytes, packet id or None at QoS 0, payload) of a PUBLISH body."""
    if len(body) < 2:
        raise WireError("PUBLISH too short for a topic length")
    off = 2 + ((body[0] << 8) | body[1])
    qos = (flags >> 1) & 0x03
    if off + (2 if qos else 0) > len(body):
        raise WireError("PUBLISH shorter than its topic" + (" and packet id" if qos else ""))
    if not qos:
        return body[2:off], None, body[off:]
    return body[2:off], (body[off] << 8) | body[off + 1], body[off + 2 :]


def parse_publish(first_byte: int, body: bytes) -> tuple[str, int, int, bytes]:
    """(topic, QoS, packet id (0 at QoS 0), payload) of a 3.1.1 PUBLISH, for clients that
    measure.

    Raises:
        WireError: not a PUBLISH, QoS 3, a body shorter than its topic, a non-UTF-8 topic.
    """
    if first_byte >> 4 != PUBLISH:
        raise WireError(f"not a PUBLISH: 0x{first_byte:02x}")
    qos = (first_byte >> 1) & 3
    if qos == 3:
        raise WireError("malformed PUBLISH: QoS 3")
    topic, pid, payload = _split_publish(first_byte, body)
    try:
        return topic.decode(), qos, pid or 0, payload
    except UnicodeDecodeError as exc:
        raise WireError(f"PUBLISH topic is not UTF-8: {exc}") from None


def packet_id(body: bytes) -> int:
    """The packet id that starts the body of a PUBACK/PUBREC/PUBREL/PUBCOMP/SUBACK/UNSUBACK.

    Raises:
        WireError: the body is shorter than a packet id.
    """
    if len(body) < 2:
        raise WireError("ack too short")
    return (body[0] << 8) | body[1]


@dataclass(frozen=True, slots=True)
class Packet:
    """One packet a client received; ``raw`` holds its exact bytes.

    MQTT 5 packets (``version`` 5) also carry their ``reason`` code (CONNACK, the acks,
    DISCONNECT, AUTH; 0x00 where the packet omits it) and their ``props`` in wire order;
    ``codes`` holds the SUBACK and UNSUBACK reason codes. A 3.1.1 CONNACK's return code is in
    ``reason`` too.
    """

    type: int
    flags: int
    body: bytes
    raw: bytes
    pid: int | None = None
    topic: bytes | None = None
    payload: bytes = b""
    codes: tuple[int, ...] = field(default=())
    reason: int | None = None
    props: tuple[Property, ...] = ()
    version: int = 4

    @property
    def name(self) -> str:
        """The packet type's name (``PUBLISH``), or ``type<N>`` for a reserved one."""
        names = NAMES_5 if self.version == 5 else NAMES
        return names.get(self.type, f"type{self.type}")

    @property
    def qos(self) -> int:
        """The QoS bits of the fixed header (meaningful for PUBLISH)."""
        return (self.flags >> 1) & 0x03

    @property
    def dup(self) -> bool:
        """The DUP flag (meaningful for PUBLISH)."""
        return bool(self.flags & 0x08)

    @property
    def retain(self) -> bool:
        """The RETAIN flag (meaningful for PUBLISH)."""
        return bool(self.flags & 0x01)

    @property
    def session_present(self) -> bool:
        """The Session Present flag (meaningful for CONNACK)."""
        return bool(self.body[:1]) and bool(self.body[0] & 0x01)

    def prop(self, ident: int, default: Value | None = None) -> Value | None:
        """The value of the first property ``ident``, else ``default``."""
        for k, v in self.props:
            if k == ident:
                return v
        return default

    def props_all(self, ident: int) -> list[Value]:
        """Every value of property ``ident``, in wire order."""
        return [v for k, v in self.props if k == ident]

    def has(self, ident: int) -> bool:
        """Whether property ``ident`` is present."""
        return any(k == ident for k, _ in self.props)

    @property
    def user_properties(self) -> list[tuple[str, str]]:
        """The User Properties, in wire order."""
        return [v for k, v in self.props if k == USER_PROPERTY and isinstance(v, tuple)]

    def describe(self) -> str:
        """A short human-readable summary, used in failure messages."""
        extra = ""
        if self.version == 5 and self.reason is not None and self.type != CONNACK:
            extra += f", reason={self.reason:#04x}"
        if self.props:
            extra += ", props=" + describe_properties(self.props)
        if self.type == PUBLISH:
            topic = self.topic.decode("utf-8", "replace") if self.topic is not None else "?"
            return (
                f"PUBLISH(topic={topic!r}, qos={self.qos}, retain={int(self.retain)}, "
                f"dup={int(self.dup)}, pid={self.pid}, payload={self.payload[:40]!r}{extra})"
            )
        if self.type == CONNACK:
            if self.version == 5:
                return f"CONNACK(sp={int(self.session_present)}, reason={self.reason:#04x}{extra})"
            return f"CONNACK({self.raw.hex(' ')})"
        if self.type == SUBACK or (self.type == UNSUBACK and self.version == 5):
            return f"{self.name}(pid={self.pid}, codes={[hex(c) for c in self.codes]}{extra})"
        if self.pid is not None:
            return f"{self.name}(pid={self.pid}{extra})"
        if self.version == 5 and self.type in (DISCONNECT, AUTH):
            return f"{self.name}({extra.lstrip(', ')})"
        return f"{self.name}({self.raw.hex(' ')})"


def describe_properties(props: Iterable[Property]) -> str:
    """``{Name: value, ...}`` for failure messages (long values cut)."""
    parts = []
    for ident, value in props:
        name = PROPERTIES[ident][0] if ident in PROPERTIES else f"{ident:#04x}"
        text = repr(value)
        parts.append(f"{name}: {text[:60]}{'...' if len(text) > 60 else ''}")
    return "{" + ", ".join(parts) + "}"


def _parse5(kind: int, flags: int, body: bytes, raw: bytes) -> Packet:
    """An MQTT 5 packet's fields (see ``parse``)."""

    def props_at(pos: int, what: str) -> tuple[tuple[Property, ...], int]:
        try:
            return parse_properties(body, pos)
        except WireError as exc:
            raise WireError(f"{what}: {exc}") from None

    if kind == PUBLISH:
        topic, pid, rest = _split_publish(flags, body)
        at = len(body) - len(rest)
        props, end = props_at(at, "PUBLISH properties")
        return Packet(
            kind, flags, body, raw, pid=pid, topic=topic, payload=body[end:], props=props, version=5
        )
    if kind == CONNACK:
        if len(body) < 3:
            raise WireError(f"MQTT 5 CONNACK with remaining length {len(body)}")
        props, end = props_at(2, "CONNACK properties")
        if end != len(body):
            raise WireError("CONNACK has bytes after its properties")
        return Packet(kind, flags, body, raw, reason=body[1], props=props, version=5)
    if kind in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        pid = packet_id(body)
        if len(body) == 2:
            return Packet(kind, flags, body, raw, pid=pid, reason=SUCCESS, version=5)
        if len(body) == 3:
            return Packet(kind, flags, body, raw, pid=pid, reason=body[2], version=5)
        props, end = props_at(3, f"{NAMES[kind]} properties")
        if end != len(body):
            raise WireError(f"{NAMES[kind]} has bytes after its properties")
        return Packet(kind, flags, body, raw, pid=pid, reason=body[2], props=props, version=5)
    if kind in (SUBACK, UNSUBACK):
        pid = packet_id(body)
        props, end = props_at(2, f"{NAMES[kind]} properties")
        if end >= len(body):
            raise WireError(f"{NAMES[kind]} without reason codes")
        return Packet(
            kind, flags, body, raw, pid=pid, codes=tuple(body[end:]), props=props, version=5
        )
    if kind in (DISCONNECT, AUTH):
        if not body:
            return Packet(kind, flags, body, raw, reason=SUCCESS, version=5)
        if len(body) == 1:
            return Packet(kind, flags, body, raw, reason=body[0], version=5)
        props, end = props_at(1, f"{NAMES_5[kind]} properties")
        if end != len(body):
            raise WireError(f"{NAMES_5[kind]} has bytes after its properties")
        return Packet(kind, flags, body, raw, reason=body[0], props=props, version=5)
    if kind in NAMES:
        return Packet(kind, flags, body, raw, version=5)
    raise WireError(f"reserved packet type {kind}")


def parse(raw: bytes, version: int = 4) -> Packet:
    """A ``Packet`` from the exact bytes of one whole packet (as ``Framer.feed_raw`` gives),
    read as protocol ``version`` (4: 3.1.1 and 3.1; 5: MQTT 5.0).

    Raises:
        WireError: a reserved packet type, a body too short for what its type carries, or
            (MQTT 5) a property section that cannot be read.
    """
    i = 1
    while raw[i] & 0x80:
        i += 1
    body = raw[i + 1 :]
    kind, flags = raw[0] >> 4, raw[0] & 0x0F
    if version == 5:
        return _parse5(kind, flags, body, raw)
    if kind == PUBLISH:
        topic, pid, payload = _split_publish(flags, body)
        return Packet(kind, flags, body, raw, pid=pid, topic=topic, payload=payload)
    if kind in (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK):
        if len(body) != 2:
            raise WireError(f"{NAMES[kind]} with remaining length {len(body)}")
        return Packet(kind, flags, body, raw, pid=packet_id(body))
    if kind == SUBACK:
        if len(body) < 3:
            raise WireError("SUBACK too short")
        return Packet(kind, flags, body, raw, pid=packet_id(body), codes=tuple(body[2:]))
    if kind == CONNACK and len(body) == 2:
        return Packet(kind, flags, body, raw, reason=body[1])
    if kind in NAMES:
        return Packet(kind, flags, body, raw)
    raise WireError(f"reserved packet type {kind}")


#: The fixed-header flags each packet type must carry (MQTT 5 section 2.1.3, Table 2-2);
#: PUBLISH is absent (its flags are DUP, QoS and RETAIN).
FIXED_FLAGS = {kind: (0x02 if kind in (PUBREL, SUBSCRIBE, UNSUBSCRIBE) else 0) for kind in NAMES_5}
del FIXED_FLAGS[PUBLISH]


def check_packet(pkt: Packet) -> list[str]:
    """What in a received MQTT 5 packet breaks the rules binding its sender (empty: nothing).

    Checks the fixed-header flags ([MQTT-2.1.3-1]), a minimal Remaining Length
    ([MQTT-1.5.5-1]), the reason codes the packet type allows (CONNACK, PUBACK, PUBREC,
    PUBREL, PUBCOMP, SUBACK, UNSUBACK, DISCONNECT, AUTH), the properties it may carry and
    their repeats, property values the spec limits (0 or 1, non-zero), U+0000 in strings
    ([MQTT-1.5.4-2]), the CONNACK reserved flag bits ([MQTT-3.2.2-1]) and Session Present
    with a failure code ([MQTT-3.2.2-6]), and for PUBLISH a QoS of 3, DUP at QoS 0 and
    wildcards in the topic. Decoding already refused ill-formed UTF-8 and unknown properties.
    """
    out: list[str] = []
    name = pkt.name
    if pkt.type in FIXED_FLAGS and pkt.flags != FIXED_FLAGS[pkt.type]:
        out.append(f"{name} with fixed-header flags {pkt.flags:04b} [MQTT-2.1.3-1]")
    length_bytes = pkt.raw[1 : len(pkt.raw) - len(pkt.body)]
    if len(length_bytes) > 1 and length_bytes[-1] == 0:
        out.append(f"Remaining Length {length_bytes.hex(' ')} is not minimal [MQTT-1.5.5-1]")
    allowed_codes = REASON_CODES.get(pkt.type)
    if allowed_codes is not None:
        codes = pkt.codes if pkt.type in (SUBACK, UNSUBACK) else (pkt.reason,)
        for code in codes:
            if code not in allowed_codes:
                out.append(f"{name} reason code {code:#04x} is not one the spec allows there")
    allowed = ALLOWED_PROPERTIES.get(pkt.type, frozenset())
    seen: set[int] = set()
    for ident, value in pkt.props:
        pname = PROPERTIES[ident][0]
        if ident not in allowed:
            out.append(f"{name} carries {pname}, which it may not")
        if ident in seen and ident not in REPEATABLE_PROPERTIES:
            out.append(f"{name} carries {pname} more than once")
        seen.add(ident)
        strings = value if isinstance(value, tuple) else (value,)
        if any(isinstance(x, str) and "\x00" in x for x in strings):
            out.append(f"{name} {pname} contains U+0000 [MQTT-1.5.4-2]")
        if ident in _ZERO_OR_ONE and value not in (0, 1):
            out.append(f"{name} {pname} = {value!r} (only 0 or 1) is a Protocol Error")
        if ident in _NON_ZERO and value == 0:
            out.append(f"{name} {pname} = 0 is a Protocol Error")
    if pkt.type == CONNACK and pkt.body:
        if pkt.body[0] & 0xFE:
            out.append(f"CONNACK flags {pkt.body[0]:08b}: bits 7-1 are reserved [MQTT-3.2.2-1]")
        if pkt.session_present and pkt.reason:
            out.append("CONNACK with a non-zero reason code and Session Present 1 [MQTT-3.2.2-6]")
    if pkt.type == PUBLISH:
        if pkt.qos == 3:
            out.append("PUBLISH with QoS 3 [MQTT-3.3.1-4]")
        if pkt.qos == 0 and pkt.dup:
            out.append("QoS 0 PUBLISH with DUP 1 [MQTT-3.3.1-2]")
        topic = pkt.topic or b""
        if b"+" in topic or b"#" in topic:
            out.append(f"PUBLISH Topic Name {topic!r} contains a wildcard [MQTT-3.3.2-2]")
        try:
            if "\x00" in topic.decode("utf-8"):
                out.append("PUBLISH Topic Name contains U+0000 [MQTT-1.5.4-2]")
        except UnicodeDecodeError:
            out.append(f"PUBLISH Topic Name {topic!r} is not UTF-8 [MQTT-1.5.4-1]")
        if not topic and not pkt.has(TOPIC_ALIAS):
            out.append("PUBLISH with an empty Topic Name and no Topic Alias")
    return out


_ZERO_OR_ONE = frozenset(
    {
        REQUEST_PROBLEM_INFORMATION,
        REQUEST_RESPONSE_INFORMATION,
        MAXIMUM_QOS,
        RETAIN_AVAILABLE,
        WILDCARD_SUBSCRIPTION_AVAILABLE,
        SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        SHARED_SUBSCRIPTION_AVAILABLE,
    }
)
_NON_ZERO = frozenset({SUBSCRIPTION_IDENTIFIER, RECEIVE_MAXIMUM, TOPIC_ALIAS, MAXIMUM_PACKET_SIZE})


class Decoder:
    """Incremental decoder: ``feed(bytes)`` only buffers, then ``next()`` until it returns None.

    Framing and parsing errors surface from ``next()`` as ``WireError``. ``version`` is the
    protocol the packets are read as (``parse``); a client sets it to 5 before reading the
    CONNACK of an MQTT 5 CONNECT.
    """

    def __init__(self, version: int = 4) -> None:
        self._framer = Framer()
        self._unframed = bytearray()
        self._ready: deque[bytes] = deque()
        self.version = version

    def feed(self, data: bytes | bytearray) -> None:
        """Buffer ``data`` (nothing is parsed yet)."""
        self._unframed += data

    def next(self) -> Packet | None:
        """The next whole packet, or None until more bytes are fed."""
        if not self._ready and self._unframed:
            data, self._unframed = bytes(self._unframed), bytearray()
            self._ready.extend(self._framer.feed_raw(data))
        return parse(self._ready.popleft(), self.version) if self._ready else None
