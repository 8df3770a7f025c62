"""A small MQTT 3.1.1 wire encoder/decoder written for the conformance suite.

It is deliberately independent of ``mqttd.codec``: the suite checks a broker's codec, so it must
not share its bugs. Builders return exact ``bytes``; they accept raw ``bytes`` wherever a string
goes so that cases can send ill-formed UTF-8 or forbidden characters on purpose.
"""

from __future__ import annotations

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

Text = str | bytes


class WireError(Exception):
    """The broker sent bytes this decoder cannot parse as an MQTT 3.1.1 packet."""


def varint(n: int) -> bytes:
    """Encode a Remaining Length (0 … 268 435 455) as 1-4 bytes."""
    if not 0 <= n <= 268_435_455:
        raise ValueError(f"remaining length out of range: {n}")
    out = bytearray()
    while True:
        digit, n = n % 128, n // 128
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _b(s: Text) -> bytes:
    return s.encode("utf-8") if isinstance(s, str) else s


def string(s: Text) -> bytes:
    """A length-prefixed MQTT string (raw bytes are sent as given)."""
    data = _b(s)
    return len(data).to_bytes(2, "big") + data


def packet(first_byte: int, body: bytes = b"") -> bytes:
    """Fixed header + body."""
    return bytes([first_byte]) + varint(len(body)) + body


def connect(
    client_id: Text,
    *,
    clean: bool = True,
    keepalive: int = 60,
    will_topic: Text | None = None,
    will_payload: bytes = b"",
    will_qos: int = 0,
    will_retain: bool = False,
    username: Text | None = None,
    password: bytes | None = None,
    protocol_name: Text = "MQTT",
    level: int = 4,
    flags: int | None = None,
    first_byte: int = 0x10,
) -> bytes:
    """A CONNECT packet; ``flags`` overrides the computed connect-flags byte."""
    computed = 0
    if clean:
        computed |= 0x02
    if will_topic is not None:
        computed |= 0x04 | (will_qos << 3) | (0x20 if will_retain else 0)
    if username is not None:
        computed |= 0x80
    if password is not None:
        computed |= 0x40
    body = (
        string(protocol_name)
        + bytes([level, computed if flags is None else flags])
        + keepalive.to_bytes(2, "big")
    )
    payload = string(client_id)
    if will_topic is not None:
        payload += string(will_topic) + string(will_payload)
    if username is not None:
        payload += string(username)
    if password is not None:
        payload += string(password)
    return packet(first_byte, body + payload)


def publish(
    topic: Text,
    payload: bytes = b"",
    *,
    qos: int = 0,
    retain: bool = False,
    dup: bool = False,
    pid: int | None = None,
) -> bytes:
    """A PUBLISH packet; ``pid`` is written whenever it is given, whatever the QoS."""
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = string(topic)
    if pid is not None:
        body += pid.to_bytes(2, "big")
    elif qos > 0:
        raise ValueError("QoS > 0 needs a packet identifier")
    return packet(first, body + payload)


def ack(kind: int, pid: int, *, flags: int | None = None) -> bytes:
    """PUBACK/PUBREC/PUBREL/PUBCOMP/UNSUBACK-shaped packet: fixed header + packet id."""
    if flags is None:
        flags = 0x02 if kind == PUBREL else 0x00
    return packet((kind << 4) | flags, pid.to_bytes(2, "big"))


def puback(pid: int) -> bytes:
    return ack(PUBACK, pid)


def pubrec(pid: int) -> bytes:
    return ack(PUBREC, pid)


def pubrel(pid: int, *, flags: int = 0x02) -> bytes:
    return ack(PUBREL, pid, flags=flags)


def pubcomp(pid: int) -> bytes:
    return ack(PUBCOMP, pid)


def subscribe(pid: int, filters: list[tuple[Text, int]], *, flags: int = 0x02) -> bytes:
    """SUBSCRIBE; the QoS byte is sent as given (so reserved bits can be set on purpose)."""
    body = pid.to_bytes(2, "big")
    for topic_filter, qos_byte in filters:
        body += string(topic_filter) + bytes([qos_byte])
    return packet(0x80 | flags, body)


def unsubscribe(pid: int, filters: list[Text], *, flags: int = 0x02) -> bytes:
    body = pid.to_bytes(2, "big")
    for topic_filter in filters:
        body += string(topic_filter)
    return packet(0xA0 | flags, body)


def pingreq(flags: int = 0) -> bytes:
    return packet(0xC0 | flags)


def disconnect(flags: int = 0) -> bytes:
    return packet(0xE0 | flags)


def connack(session_present: bool, code: int) -> bytes:
    """The exact CONNACK a broker must send."""
    return bytes([0x20, 0x02, 0x01 if session_present else 0x00, code])


@dataclass(frozen=True, slots=True)
class Packet:
    """One decoded packet from the broker; ``raw`` holds its exact bytes."""

    type: int
    flags: int
    body: bytes
    raw: bytes
    pid: int | None = None
    topic: bytes | None = None
    payload: bytes = b""
    codes: tuple[int, ...] = field(default=())

    @property
    def name(self) -> str:
        return NAMES.get(self.type, f"type{self.type}")

    @property
    def qos(self) -> int:
        return (self.flags >> 1) & 0x03

    @property
    def dup(self) -> bool:
        return bool(self.flags & 0x08)

    @property
    def retain(self) -> bool:
        return bool(self.flags & 0x01)

    def describe(self) -> str:
        """A short human-readable summary, used in failure messages."""
        if self.type == PUBLISH:
            topic = self.topic.decode("utf-8", "replace") if self.topic is not None else "?"
            return (
                f"PUBLISH(topic={topic!r}, qos={self.qos}, retain={int(self.retain)}, "
                f"dup={int(self.dup)}, pid={self.pid}, payload={self.payload[:40]!r})"
            )
        if self.type == CONNACK:
            return f"CONNACK({self.raw.hex(' ')})"
        if self.type == SUBACK:
            return f"SUBACK(pid={self.pid}, codes={[hex(c) for c in self.codes]})"
        if self.pid is not None:
            return f"{self.name}(pid={self.pid})"
        return f"{self.name}({self.raw.hex(' ')})"


def _parse(first: int, body: bytes, raw: bytes) -> Packet:
    kind, flags = first >> 4, first & 0x0F
    if kind == PUBLISH:
        if len(body) < 2:
            raise WireError("PUBLISH too short for a topic length")
        tlen = int.from_bytes(body[:2], "big")
        topic = body[2 : 2 + tlen]
        if len(topic) != tlen:
            raise WireError("PUBLISH topic runs past the packet")
        rest = body[2 + tlen :]
        pid = None
        if (flags >> 1) & 0x03:
            if len(rest) < 2:
                raise WireError("PUBLISH QoS>0 without packet identifier")
            pid, rest = int.from_bytes(rest[:2], "big"), rest[2:]
        return Packet(kind, flags, body, raw, pid=pid, topic=topic, payload=rest)
    if kind in (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK):
        if len(body) != 2:
            raise WireError(f"{NAMES[kind]} with remaining length {len(body)}")
        return Packet(kind, flags, body, raw, pid=int.from_bytes(body, "big"))
    if kind == SUBACK:
        if len(body) < 3:
            raise WireError("SUBACK too short")
        return Packet(
            kind, flags, body, raw, pid=int.from_bytes(body[:2], "big"), codes=tuple(body[2:])
        )
    if kind in (CONNACK, PINGRESP) or kind in NAMES:
        return Packet(kind, flags, body, raw)
    raise WireError(f"reserved packet type {kind}")


class Decoder:
    """Incremental decoder: ``feed(bytes)`` then ``next()`` until it returns ``None``."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def pending(self) -> int:
        return len(self._buf)

    def next(self) -> Packet | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        length, mult, i = 0, 1, 1
        while True:
            if i >= len(buf):
                return None
            byte = buf[i]
            length += (byte & 0x7F) * mult
            i += 1
            if not byte & 0x80:
                break
            mult *= 128
            if i > 4:
                raise WireError("remaining length longer than 4 bytes")
        if len(buf) < i + length:
            return None
        raw = bytes(buf[: i + length])
        del buf[: i + length]
        return _parse(raw[0], raw[i:], raw)
