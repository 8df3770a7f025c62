"""MQTT 3.1.1 (and 3.1) control packets as plain, immutable data.

Every packet type of MQTT 3.1.1 section 3 is one frozen, slotted dataclass. They carry decoded
values only (``str`` topics, ``bytes`` payloads, ``int`` QoS); the wire format lives in
``decoder.py`` and ``encoder.py``. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final

__all__ = [
    "CLIENT_TO_SERVER",
    "MAX_REMAINING_LENGTH",
    "PROTOCOL_MQTT_31",
    "PROTOCOL_MQTT_311",
    "SUBACK_FAILURE",
    "Connack",
    "ConnackCode",
    "Connect",
    "Disconnect",
    "Packet",
    "PacketType",
    "Pingreq",
    "Pingresp",
    "Puback",
    "Pubcomp",
    "Publish",
    "Pubrec",
    "Pubrel",
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


class ConnackCode(IntEnum):
    """CONNACK return codes (3.2.2.3, Table 3.1); the same values in MQTT 3.1."""

    ACCEPTED = 0x00
    UNACCEPTABLE_PROTOCOL_VERSION = 0x01
    IDENTIFIER_REJECTED = 0x02
    SERVER_UNAVAILABLE = 0x03
    BAD_USERNAME_OR_PASSWORD = 0x04
    NOT_AUTHORIZED = 0x05


#: SUBACK return code for a refused subscription ([MQTT-3.9.3-2]; MQTT 3.1.1 only).
SUBACK_FAILURE: Final = 0x80

#: Protocol names and levels this broker speaks.
PROTOCOL_MQTT_311: Final = ("MQTT", 4)
PROTOCOL_MQTT_31: Final = ("MQIsdp", 3)

#: Largest value the Remaining Length field can carry (2.2.3): 4 bytes of 7 bits.
MAX_REMAINING_LENGTH: Final = 268_435_455


@dataclass(frozen=True, slots=True)
class Will:
    """The Will Message of a CONNECT (3.1.2.5 - 3.1.2.7, 3.1.3.2 - 3.1.3.3)."""

    topic: str
    message: bytes
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Connect:
    """CONNECT (3.1). ``protocol_name``/``protocol_level`` are ``MQTT``/4 or ``MQIsdp``/3."""

    client_id: str
    clean_session: bool = True
    keepalive: int = 0
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None
    protocol_name: str = "MQTT"
    protocol_level: int = 4


@dataclass(frozen=True, slots=True)
class Connack:
    """CONNACK (3.2). ``return_code`` is a ``ConnackCode`` value."""

    session_present: bool
    return_code: int


@dataclass(frozen=True, slots=True)
class Publish:
    """PUBLISH (3.3). ``packet_id`` is ``None`` exactly when ``qos`` is 0 ([MQTT-2.3.1-5])."""

    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None


@dataclass(frozen=True, slots=True)
class Puback:
    """PUBACK (3.4): QoS 1 acknowledgement."""

    packet_id: int


@dataclass(frozen=True, slots=True)
class Pubrec:
    """PUBREC (3.5): QoS 2 delivery part 1."""

    packet_id: int


@dataclass(frozen=True, slots=True)
class Pubrel:
    """PUBREL (3.6): QoS 2 delivery part 2. ``dup`` is only meaningful for MQTT 3.1 senders."""

    packet_id: int
    dup: bool = False


@dataclass(frozen=True, slots=True)
class Pubcomp:
    """PUBCOMP (3.7): QoS 2 delivery part 3."""

    packet_id: int


@dataclass(frozen=True, slots=True)
class Subscribe:
    """SUBSCRIBE (3.8): ``subscriptions`` is a non-empty tuple of ``(topic_filter, qos)``."""

    packet_id: int
    subscriptions: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Suback:
    """SUBACK (3.9): one return code (0, 1, 2 or 0x80) per requested filter, in order."""

    packet_id: int
    return_codes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """UNSUBSCRIBE (3.10): a non-empty tuple of topic filters."""

    packet_id: int
    topic_filters: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Unsuback:
    """UNSUBACK (3.11)."""

    packet_id: int


@dataclass(frozen=True, slots=True)
class Pingreq:
    """PINGREQ (3.12)."""


@dataclass(frozen=True, slots=True)
class Pingresp:
    """PINGRESP (3.13)."""


@dataclass(frozen=True, slots=True)
class Disconnect:
    """DISCONNECT (3.14)."""


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
    }
)
