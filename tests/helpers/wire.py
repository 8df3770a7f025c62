"""Hand-written MQTT 3.1.1 / 3.1 packet bytes for tests.

Deliberately independent of ``mqttd.codec``: tests compare the broker's bytes with these, so a
bug in the codec cannot hide itself. Strings may be given as ``bytes`` to put arbitrary (even
invalid UTF-8) data on the wire; every builder takes its fields literally and checks nothing,
so tests can build malformed packets too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Text = str | bytes


def varint(n: int) -> bytes:
    """Remaining Length encoding (7 bits per byte, low bits first, high bit = continuation)."""
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


def string(s: Text) -> bytes:
    """A 2-byte-length-prefixed string; ``str`` is UTF-8 encoded, ``bytes`` are used as given."""
    raw = s.encode("utf-8") if isinstance(s, str) else s
    return u16(len(raw)) + raw


def packet(first_byte: int, body: bytes = b"") -> bytes:
    """A whole packet: first byte, Remaining Length varint, body."""
    return bytes([first_byte]) + varint(len(body)) + body


def connect(
    client_id: Text,
    clean: bool = True,
    keepalive: int = 0,
    will: tuple[Text, bytes]
    | tuple[Text, bytes, int]
    | tuple[Text, bytes, int, bool]
    | None = None,
    username: Text | None = None,
    password: bytes | None = None,
    proto: tuple[Text, int] = ("MQTT", 4),
    *,
    flags: int | None = None,
    first_byte: int = 0x10,
) -> bytes:
    """CONNECT. ``will`` is ``(topic, message[, qos[, retain]])``; ``flags`` overrides the
    computed connect-flags byte (to test reserved bits and inconsistent flags)."""
    computed = 0x02 if clean else 0x00
    payload = string(client_id)
    if will is not None:
        topic, message, *rest = will
        qos = rest[0] if rest else 0
        retain = rest[1] if len(rest) > 1 else False
        computed |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += string(topic) + u16(len(message)) + message
    if username is not None:
        computed |= 0x80
        payload += string(username)
    if password is not None:
        computed |= 0x40
        payload += u16(len(password)) + password
    name, level = proto
    header = string(name) + bytes([level, computed if flags is None else flags]) + u16(keepalive)
    return packet(first_byte, header + payload)


def connack(sp: bool | int, rc: int) -> bytes:
    """CONNACK with the Session Present flag ``sp`` and return code ``rc``."""
    return packet(0x20, bytes([int(sp), rc]))


def publish(
    topic: Text,
    payload: bytes = b"",
    qos: int = 0,
    retain: bool = False,
    dup: bool = False,
    pid: int | None = None,
) -> bytes:
    """PUBLISH; ``pid`` is written whenever it is given (even at QoS 0)."""
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = string(topic) + (u16(pid) if pid is not None else b"") + payload
    return packet(first, body)


def puback(pid: int) -> bytes:
    """PUBACK."""
    return packet(0x40, u16(pid))


def pubrec(pid: int) -> bytes:
    """PUBREC."""
    return packet(0x50, u16(pid))


def pubrel(pid: int, dup: bool = False) -> bytes:
    """PUBREL (flags 0010; ``dup`` sets 1010 as MQTT 3.1 clients may)."""
    return packet(0x6A if dup else 0x62, u16(pid))


def pubcomp(pid: int) -> bytes:
    """PUBCOMP."""
    return packet(0x70, u16(pid))


def subscribe(pid: int, subscriptions: Iterable[tuple[Text, int]]) -> bytes:
    """SUBSCRIBE with ``(filter, requested QoS byte)`` pairs."""
    body = u16(pid) + b"".join(string(f) + bytes([qos]) for f, qos in subscriptions)
    return packet(0x82, body)


def suback(pid: int, codes: Sequence[int]) -> bytes:
    """SUBACK with one return code per filter."""
    return packet(0x90, u16(pid) + bytes(codes))


def unsubscribe(pid: int, filters: Iterable[Text]) -> bytes:
    """UNSUBSCRIBE."""
    return packet(0xA2, u16(pid) + b"".join(string(f) for f in filters))


def unsuback(pid: int) -> bytes:
    """UNSUBACK."""
    return packet(0xB0, u16(pid))


def pingreq() -> bytes:
    """PINGREQ."""
    return b"\xc0\x00"


def pingresp() -> bytes:
    """PINGRESP."""
    return b"\xd0\x00"


def disconnect() -> bytes:
    """DISCONNECT."""
    return b"\xe0\x00"
