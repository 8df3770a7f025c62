"""The client side of MQTT 3.1.1 (and 3.1) on the wire: one library for everything that is not
the broker (the conformance suite, the tests, the benchmarks).

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
  (type, flags, packet id, topic, payload, SUBACK codes) and ``parse_publish`` is the fast path
  for PUBLISH bodies.

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

#: The largest Remaining Length four bytes can encode (section 2.2.3).
MAX_REMAINING_LENGTH = 268_435_455

Text = str | bytes
#: A Will as ``connect`` takes it: ``(topic, message[, qos[, retain]])``.
Will = tuple[Text, bytes] | tuple[Text, bytes, int] | tuple[Text, bytes, int, bool]


class WireError(Exception):
    """The peer sent bytes that cannot be framed or parsed as an MQTT 3.1.1 packet."""


# ---------------------------------------------------------------------------------------------
# Builders: exact bytes, fields taken literally
# ---------------------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    """Encode a Remaining Length (7 bits per byte, low bits first, high bit = continuation).

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
    will: Will | None = None,
    username: Text | None = None,
    password: bytes | None = None,
    proto: tuple[Text, int] = ("MQTT", 4),
    *,
    flags: int | None = None,
    first_byte: int = 0x10,
) -> bytes:
    """CONNECT. ``will`` is ``(topic, message[, qos[, retain]])``; ``proto`` is the protocol
    name and level (``("MQIsdp", 3)`` for MQTT 3.1); ``flags`` overrides the computed
    connect-flags byte (to test reserved bits and inconsistent flags)."""
    computed = 0x02 if clean else 0x00
    payload = string(client_id)
    if will is not None:
        topic, message, *rest = will
        qos = rest[0] if rest else 0
        retain = rest[1] if len(rest) > 1 else False
        computed |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += string(topic) + string(message)
    if username is not None:
        computed |= 0x80
        payload += string(username)
    if password is not None:
        computed |= 0x40
        payload += string(password)
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
    """PUBLISH; ``pid`` is written whenever it is given (even at QoS 0) and only then."""
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = string(topic) + (u16(pid) if pid is not None else b"") + payload
    return packet(first, body)


def ack(kind: int, pid: int, *, flags: int | None = None) -> bytes:
    """A packet of fixed header + packet id (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK).

    ``flags`` overrides the fixed-header flags (0010 for PUBREL [MQTT-3.6.1-1], else 0000).
    """
    if flags is None:
        flags = 0x02 if kind == PUBREL else 0x00
    return bytes(((kind << 4) | flags, 2)) + u16(pid)


def puback(pid: int) -> bytes:
    """PUBACK."""
    return ack(PUBACK, pid)


def pubrec(pid: int) -> bytes:
    """PUBREC."""
    return ack(PUBREC, pid)


def pubrel(pid: int, dup: bool = False) -> bytes:
    """PUBREL (flags 0010; ``dup`` sets 1010 as MQTT 3.1 clients may)."""
    return ack(PUBREL, pid, flags=0x0A if dup else 0x02)


def pubcomp(pid: int) -> bytes:
    """PUBCOMP."""
    return ack(PUBCOMP, pid)


def subscribe(pid: int, subscriptions: Iterable[tuple[Text, int]], *, flags: int = 0x02) -> bytes:
    """SUBSCRIBE with ``(filter, requested QoS byte)`` pairs; the QoS byte is sent as given
    (so reserved bits can be set on purpose), as are the fixed-header ``flags``."""
    body = u16(pid) + b"".join(string(f) + bytes([qos]) for f, qos in subscriptions)
    return packet(0x80 | flags, body)


def suback(pid: int, codes: Sequence[int]) -> bytes:
    """SUBACK with one return code per filter."""
    return packet(0x90, u16(pid) + bytes(codes))


def unsubscribe(pid: int, filters: Iterable[Text], *, flags: int = 0x02) -> bytes:
    """UNSUBSCRIBE."""
    return packet(0xA0 | flags, u16(pid) + b"".join(string(f) for f in filters))


def unsuback(pid: int) -> bytes:
    """UNSUBACK."""
    return ack(UNSUBACK, pid)


def pingreq(*, flags: int = 0) -> bytes:
    """PINGREQ (``flags`` sets the reserved fixed-header bits)."""
    return bytes((0xC0 | flags, 0))


def pingresp() -> bytes:
    """PINGRESP."""
    return b"\xd0\x00"


def disconnect(*, flags: int = 0) -> bytes:
    """DISCONNECT (``flags`` sets the reserved fixed-header bits)."""
    return bytes((0xE0 | flags, 0))


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
    """(topic, QoS, packet id (0 at QoS 0), payload) of a PUBLISH, for clients that measure.

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
    """One packet a client received; ``raw`` holds its exact bytes."""

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
        """The packet type's name (``PUBLISH``), or ``type<N>`` for a reserved one."""
        return NAMES.get(self.type, f"type{self.type}")

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


def parse(raw: bytes) -> Packet:
    """A ``Packet`` from the exact bytes of one whole packet (as ``Framer.feed_raw`` gives).

    Raises:
        WireError: a reserved packet type, or a body too short for what its type carries.
    """
    i = 1
    while raw[i] & 0x80:
        i += 1
    body = raw[i + 1 :]
    kind, flags = raw[0] >> 4, raw[0] & 0x0F
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
    if kind in NAMES:
        return Packet(kind, flags, body, raw)
    raise WireError(f"reserved packet type {kind}")


class Decoder:
    """Incremental decoder: ``feed(bytes)`` only buffers, then ``next()`` until it returns None.

    Framing and parsing errors surface from ``next()`` as ``WireError``.
    """

    def __init__(self) -> None:
        self._framer = Framer()
        self._unframed = bytearray()
        self._ready: deque[bytes] = deque()

    def feed(self, data: bytes | bytearray) -> None:
        """Buffer ``data`` (nothing is parsed yet)."""
        self._unframed += data

    def next(self) -> Packet | None:
        """The next whole packet, or None until more bytes are fed."""
        if not self._ready and self._unframed:
            data, self._unframed = bytes(self._unframed), bytearray()
            self._ready.extend(self._framer.feed_raw(data))
        return parse(self._ready.popleft()) if self._ready else None
