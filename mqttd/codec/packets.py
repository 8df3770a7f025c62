"""MQTT 5.0, 3.1.1 and 3.1 control packets as plain, immutable data.

Every packet type of section 3 is one frozen, slotted dataclass. They carry decoded values only
(``str`` topics, ``bytes`` payloads, ``int`` QoS); the wire format lives in ``decoder.py``,
``encoder.py`` and ``properties.py``. Nothing here does I/O.

The MQTT 5 additions (``properties``, ``reason_code``, ``Auth``) all have defaults, so a 3.1.1
packet is built exactly as before, and every 3.1.1/3.1 packet carries the shared
``NO_PROPERTIES``. On an MQTT 5 connection ``Connack.return_code`` and ``Suback.return_codes``
hold MQTT 5 reason codes (``ReasonCode``), and ``Subscribe.subscriptions`` holds the whole
subscription options byte (3.8.3.1) where 3.1.1 has the requested QoS.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final

__all__ = [
    "AUTH_REASON_CODES",
    "CLIENT_TO_SERVER",
    "CONNACK_REASON_CODES",
    "DISCONNECT_REASON_CODES",
    "MAX_REMAINING_LENGTH",
    "NO_PROPERTIES",
    "PROTOCOL_MQTT_5",
    "PROTOCOL_MQTT_31",
    "PROTOCOL_MQTT_311",
    "PUBACK_REASON_CODES",
    "PUBCOMP_REASON_CODES",
    "PUBREC_REASON_CODES",
    "PUBREL_REASON_CODES",
    "REASON_CODES",
    "SUBACK_FAILURE",
    "SUBACK_REASON_CODES",
    "UNSUBACK_REASON_CODES",
    "Auth",
    "Connack",
    "ConnackCode",
    "Connect",
    "Disconnect",
    "Packet",
    "PacketType",
    "Pingreq",
    "Pingresp",
    "Properties",
    "PropertyId",
    "Puback",
    "Pubcomp",
    "Publish",
    "Pubrec",
    "Pubrel",
    "ReasonCode",
    "Suback",
    "Subscribe",
    "Unsuback",
    "Unsubscribe",
    "Will",
]


class PacketType(IntEnum):
    """The control packet type, the high nibble of the fixed header's first byte (2.2.1)."""

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
    AUTH = 15  # MQTT 5 only (3.15)


class ConnackCode(IntEnum):
    """CONNACK return codes (3.2.2.3, Table 3.1); the same values in MQTT 3.1."""

    ACCEPTED = 0x00
    UNACCEPTABLE_PROTOCOL_VERSION = 0x01
    IDENTIFIER_REJECTED = 0x02
    SERVER_UNAVAILABLE = 0x03
    BAD_USERNAME_OR_PASSWORD = 0x04
    NOT_AUTHORIZED = 0x05


class ReasonCode(IntEnum):
    """MQTT 5 reason codes (2.4, Table 2-6). Several names share a value (0x00 is Success,
    Normal disconnection and Granted QoS 0); which codes a packet may carry is in the
    ``*_REASON_CODES`` sets below."""

    SUCCESS = 0x00
    NORMAL_DISCONNECTION = 0x00
    GRANTED_QOS_0 = 0x00
    GRANTED_QOS_1 = 0x01
    GRANTED_QOS_2 = 0x02
    DISCONNECT_WITH_WILL = 0x04
    NO_MATCHING_SUBSCRIBERS = 0x10
    NO_SUBSCRIPTION_EXISTED = 0x11
    CONTINUE_AUTHENTICATION = 0x18
    REAUTHENTICATE = 0x19
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


_R = ReasonCode

#: Connect Reason Codes (3.2.2.2) [MQTT-3.2.2-8].
CONNACK_REASON_CODES: Final = frozenset(
    {
        _R.SUCCESS,
        _R.UNSPECIFIED_ERROR,
        _R.MALFORMED_PACKET,
        _R.PROTOCOL_ERROR,
        _R.IMPLEMENTATION_SPECIFIC_ERROR,
        _R.UNSUPPORTED_PROTOCOL_VERSION,
        _R.CLIENT_IDENTIFIER_NOT_VALID,
        _R.BAD_USER_NAME_OR_PASSWORD,
        _R.NOT_AUTHORIZED,
        _R.SERVER_UNAVAILABLE,
        _R.SERVER_BUSY,
        _R.BANNED,
        _R.BAD_AUTHENTICATION_METHOD,
        _R.TOPIC_NAME_INVALID,
        _R.PACKET_TOO_LARGE,
        _R.QUOTA_EXCEEDED,
        _R.PAYLOAD_FORMAT_INVALID,
        _R.RETAIN_NOT_SUPPORTED,
        _R.QOS_NOT_SUPPORTED,
        _R.USE_ANOTHER_SERVER,
        _R.SERVER_MOVED,
        _R.CONNECTION_RATE_EXCEEDED,
    }
)
#: PUBACK Reason Codes (3.4.2.1) [MQTT-3.4.2-1].
PUBACK_REASON_CODES: Final = frozenset(
    {
        _R.SUCCESS,
        _R.NO_MATCHING_SUBSCRIBERS,
        _R.UNSPECIFIED_ERROR,
        _R.IMPLEMENTATION_SPECIFIC_ERROR,
        _R.NOT_AUTHORIZED,
        _R.TOPIC_NAME_INVALID,
        _R.PACKET_IDENTIFIER_IN_USE,
        _R.QUOTA_EXCEEDED,
        _R.PAYLOAD_FORMAT_INVALID,
    }
)
#: PUBREC Reason Codes (3.5.2.1), the same as PUBACK's [MQTT-3.5.2-1].
PUBREC_REASON_CODES: Final = PUBACK_REASON_CODES
#: PUBREL Reason Codes (3.6.2.1) [MQTT-3.6.2-1].
PUBREL_REASON_CODES: Final = frozenset({_R.SUCCESS, _R.PACKET_IDENTIFIER_NOT_FOUND})
#: PUBCOMP Reason Codes (3.7.2.1), the same as PUBREL's [MQTT-3.7.2-1].
PUBCOMP_REASON_CODES: Final = PUBREL_REASON_CODES
#: Subscribe Reason Codes (3.9.3) [MQTT-3.9.3-2].
SUBACK_REASON_CODES: Final = frozenset(
    {
        _R.GRANTED_QOS_0,
        _R.GRANTED_QOS_1,
        _R.GRANTED_QOS_2,
        _R.UNSPECIFIED_ERROR,
        _R.IMPLEMENTATION_SPECIFIC_ERROR,
        _R.NOT_AUTHORIZED,
        _R.TOPIC_FILTER_INVALID,
        _R.PACKET_IDENTIFIER_IN_USE,
        _R.QUOTA_EXCEEDED,
        _R.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
        _R.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
        _R.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
    }
)
#: Unsubscribe Reason Codes (3.11.3) [MQTT-3.11.3-2].
UNSUBACK_REASON_CODES: Final = frozenset(
    {
        _R.SUCCESS,
        _R.NO_SUBSCRIPTION_EXISTED,
        _R.UNSPECIFIED_ERROR,
        _R.IMPLEMENTATION_SPECIFIC_ERROR,
        _R.NOT_AUTHORIZED,
        _R.TOPIC_FILTER_INVALID,
        _R.PACKET_IDENTIFIER_IN_USE,
    }
)
#: Disconnect Reason Codes (3.14.2.1) [MQTT-3.14.2-1].
DISCONNECT_REASON_CODES: Final = frozenset(
    {
        _R.NORMAL_DISCONNECTION,
        _R.DISCONNECT_WITH_WILL,
        _R.UNSPECIFIED_ERROR,
        _R.MALFORMED_PACKET,
        _R.PROTOCOL_ERROR,
        _R.IMPLEMENTATION_SPECIFIC_ERROR,
        _R.NOT_AUTHORIZED,
        _R.SERVER_BUSY,
        _R.SERVER_SHUTTING_DOWN,
        _R.KEEP_ALIVE_TIMEOUT,
        _R.SESSION_TAKEN_OVER,
        _R.TOPIC_FILTER_INVALID,
        _R.TOPIC_NAME_INVALID,
        _R.RECEIVE_MAXIMUM_EXCEEDED,
        _R.TOPIC_ALIAS_INVALID,
        _R.PACKET_TOO_LARGE,
        _R.MESSAGE_RATE_TOO_HIGH,
        _R.QUOTA_EXCEEDED,
        _R.ADMINISTRATIVE_ACTION,
        _R.PAYLOAD_FORMAT_INVALID,
        _R.RETAIN_NOT_SUPPORTED,
        _R.QOS_NOT_SUPPORTED,
        _R.USE_ANOTHER_SERVER,
        _R.SERVER_MOVED,
        _R.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
        _R.CONNECTION_RATE_EXCEEDED,
        _R.MAXIMUM_CONNECT_TIME,
        _R.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
        _R.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
    }
)
#: Authenticate Reason Codes (3.15.2.1) [MQTT-3.15.2-1].
AUTH_REASON_CODES: Final = frozenset({_R.SUCCESS, _R.CONTINUE_AUTHENTICATION, _R.REAUTHENTICATE})
#: The reason codes each MQTT 5 packet type may carry, by packet type.
REASON_CODES: Final = {
    PacketType.CONNACK: CONNACK_REASON_CODES,
    PacketType.PUBACK: PUBACK_REASON_CODES,
    PacketType.PUBREC: PUBREC_REASON_CODES,
    PacketType.PUBREL: PUBREL_REASON_CODES,
    PacketType.PUBCOMP: PUBCOMP_REASON_CODES,
    PacketType.SUBACK: SUBACK_REASON_CODES,
    PacketType.UNSUBACK: UNSUBACK_REASON_CODES,
    PacketType.DISCONNECT: DISCONNECT_REASON_CODES,
    PacketType.AUTH: AUTH_REASON_CODES,
}


class PropertyId(IntEnum):
    """MQTT 5 property identifiers (2.2.2.2, Table 2-4). Where each may appear, and its
    type, is in ``mqttd.codec.properties``."""

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


#: SUBACK return code for a refused subscription ([MQTT-3.9.3-2]; MQTT 3.1.1 only).
SUBACK_FAILURE: Final = 0x80

#: Protocol names and levels this broker speaks.
PROTOCOL_MQTT_311: Final = ("MQTT", 4)
PROTOCOL_MQTT_31: Final = ("MQIsdp", 3)
PROTOCOL_MQTT_5: Final = ("MQTT", 5)

#: Largest value the Remaining Length field can carry (2.2.3): 4 bytes of 7 bits.
MAX_REMAINING_LENGTH: Final = 268_435_455


@dataclass(frozen=True, slots=True, repr=False)
class Properties:
    """The MQTT 5 properties of a packet (2.2.2), every one optional: ``None`` (or ``()`` for
    the repeatable ones) when absent. Field order is property-identifier order.

    ``subscription_identifiers`` may hold several values in a server-to-client PUBLISH
    ([MQTT-3.3.4-4]) and at most one in a SUBSCRIBE; ``user_properties`` keeps the order of the
    wire ([MQTT-3.3.2-18]). Which property may appear in which packet (Table 2-4) is checked by
    the decoder and the encoder (``mqttd.codec.properties``), not here.
    """

    payload_format_indicator: int | None = None
    message_expiry_interval: int | None = None
    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    subscription_identifiers: tuple[int, ...] = ()
    session_expiry_interval: int | None = None
    assigned_client_identifier: str | None = None
    server_keep_alive: int | None = None
    authentication_method: str | None = None
    authentication_data: bytes | None = None
    request_problem_information: int | None = None
    will_delay_interval: int | None = None
    request_response_information: int | None = None
    response_information: str | None = None
    server_reference: str | None = None
    reason_string: str | None = None
    receive_maximum: int | None = None
    topic_alias_maximum: int | None = None
    topic_alias: int | None = None
    maximum_qos: int | None = None
    retain_available: int | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    maximum_packet_size: int | None = None
    wildcard_subscription_available: int | None = None
    subscription_identifier_available: int | None = None
    shared_subscription_available: int | None = None

    def __repr__(self) -> str:
        """Only the properties present: ``Properties(topic_alias=3)``."""
        present = []
        for name in self.__slots__:
            value = getattr(self, name)
            if value is not None and value != ():
                present.append(f"{name}={value!r}")
        return f"Properties({', '.join(present)})"


#: The properties of every packet that has none, and of every MQTT 3.1.1/3.1 packet (shared).
NO_PROPERTIES: Final = Properties()


@dataclass(frozen=True, slots=True)
class Will:
    """The Will Message of a CONNECT (3.1.2.5 - 3.1.2.7, 3.1.3.2 - 3.1.3.4; MQTT 5: with its
    Will Properties, 3.1.3.2)."""

    topic: str
    message: bytes
    qos: int = 0
    retain: bool = False
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Connect:
    """CONNECT (3.1). ``protocol_name``/``protocol_level`` are ``MQTT``/5, ``MQTT``/4 or
    ``MQIsdp``/3. On MQTT 5 ``clean_session`` is Clean Start (3.1.2.4)."""

    client_id: str
    clean_session: bool = True
    keepalive: int = 0
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None
    protocol_name: str = "MQTT"
    protocol_level: int = 4
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Connack:
    """CONNACK (3.2). ``return_code`` is a ``ConnackCode`` value, or on MQTT 5 a Connect
    Reason Code (``CONNACK_REASON_CODES``)."""

    session_present: bool
    return_code: int
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Publish:
    """PUBLISH (3.3). ``packet_id`` is ``None`` exactly when ``qos`` is 0 ([MQTT-2.3.1-5])."""

    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Puback:
    """PUBACK (3.4): QoS 1 acknowledgement. ``reason_code`` and ``properties`` are MQTT 5 only."""

    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Pubrec:
    """PUBREC (3.5): QoS 2 delivery part 1. ``reason_code`` and ``properties`` are MQTT 5 only."""

    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Pubrel:
    """PUBREL (3.6): QoS 2 delivery part 2. ``dup`` is only meaningful for MQTT 3.1 senders;
    ``reason_code`` and ``properties`` are MQTT 5 only."""

    packet_id: int
    dup: bool = False
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Pubcomp:
    """PUBCOMP (3.7): QoS 2 delivery part 3. ``reason_code`` and ``properties`` are MQTT 5 only."""

    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Subscribe:
    """SUBSCRIBE (3.8): ``subscriptions`` is a non-empty tuple of ``(topic_filter, options)``.

    ``options`` is the whole subscription options byte (3.8.3.1). In MQTT 3.1.1 it is the
    requested QoS (the other bits must be 0); in MQTT 5 bits 0-1 are the QoS, bit 2 No Local,
    bit 3 Retain As Published and bits 4-5 Retain Handling.
    """

    packet_id: int
    subscriptions: tuple[tuple[str, int], ...]
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Suback:
    """SUBACK (3.9): one return code (0, 1, 2 or 0x80) per requested filter, in order; on
    MQTT 5 one Subscribe Reason Code (``SUBACK_REASON_CODES``) per filter."""

    packet_id: int
    return_codes: tuple[int, ...]
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """UNSUBSCRIBE (3.10): a non-empty tuple of topic filters."""

    packet_id: int
    topic_filters: tuple[str, ...]
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Unsuback:
    """UNSUBACK (3.11). ``reason_codes`` (one per filter, in order [MQTT-3.11.3-1]) and
    ``properties`` are MQTT 5 only; an MQTT 3.1.1 UNSUBACK has no payload."""

    packet_id: int
    reason_codes: tuple[int, ...] = ()
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Pingreq:
    """PINGREQ (3.12)."""


@dataclass(frozen=True, slots=True)
class Pingresp:
    """PINGRESP (3.13)."""


@dataclass(frozen=True, slots=True)
class Disconnect:
    """DISCONNECT (3.14). ``reason_code`` and ``properties`` are MQTT 5 only."""

    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Auth:
    """AUTH (3.15), MQTT 5 only: a step of enhanced authentication (4.12)."""

    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


Packet = (
    Connect
    | Connack
    | Publish
    | Puback
    | Pubrec
    | Pubrel
    | Pubcomp
    | Subscribe
    | Suback
    | Unsubscribe
    | Unsuback
    | Pingreq
    | Pingresp
    | Disconnect
    | Auth
)

#: Packet types a client may send to a server; the others are server-to-client only.
CLIENT_TO_SERVER: Final = frozenset(
    {
        PacketType.CONNECT,
        PacketType.PUBLISH,
        PacketType.PUBACK,
        PacketType.PUBREC,
        PacketType.PUBREL,
        PacketType.PUBCOMP,
        PacketType.SUBSCRIBE,
        PacketType.UNSUBSCRIBE,
        PacketType.PINGREQ,
        PacketType.DISCONNECT,
        PacketType.AUTH,  # MQTT 5 only
    }
)
