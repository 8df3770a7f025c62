"""Hand-written MQTT 3.1.1 / 3.1 packet bytes for tests: the shared client-side wire library.

Everything here is ``conformance.wire`` (re-exported so tests keep writing ``wire.connect(...)``),
which is deliberately independent of ``mqttd.codec``: tests compare the broker's bytes with these,
so a bug in the codec cannot hide itself. Strings may be given as ``bytes`` to put arbitrary
(even invalid UTF-8) data on the wire; every builder takes its fields literally and checks
nothing, so tests can build malformed packets too.
"""

from __future__ import annotations

from conformance.wire import (
    Framer,
    Packet,
    Text,
    WireError,
    ack,
    connack,
    connect,
    disconnect,
    packet,
    packet_id,
    parse,
    parse_publish,
    pingreq,
    pingresp,
    puback,
    pubcomp,
    publish,
    pubrec,
    pubrel,
    string,
    suback,
    subscribe,
    u16,
    unsuback,
    unsubscribe,
    varint,
)

__all__ = [
    "Framer",
    "Packet",
    "Text",
    "WireError",
    "ack",
    "connack",
    "connect",
    "disconnect",
    "packet",
    "packet_id",
    "parse",
    "parse_publish",
    "pingreq",
    "pingresp",
    "puback",
    "pubcomp",
    "publish",
    "pubrec",
    "pubrel",
    "string",
    "suback",
    "subscribe",
    "u16",
    "unsuback",
    "unsubscribe",
    "varint",
]
