"""Data-driven cases: exact bytes to send, exact bytes (or a close) to expect.

Each entry: ``id``, ``statements``, ``title``, ``connect`` (open with a valid CONNECT first) and
``steps``. A step is ``("send", B)``, ``("expect", B)`` (the next packet must be exactly B),
``("closed",)`` (the broker closes the connection, sending nothing first) or ``("alive",)``
(a PINGREQ is answered, so the connection is still open). ``B`` is bytes or a function of
``(ctx, client)`` returning bytes, for values that depend on the run (client ids, topics).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conformance import wire
from conformance.core import Client, Context, Fail, case

Builder = bytes | Callable[[Context, Client], bytes]


def _topic(suffix: str = "t") -> Callable[[Context, Client], bytes]:
    return lambda ctx, c: ctx.topic(suffix).encode()


def _pub(raw_topic: bytes, payload: bytes = b"x", **kw: Any) -> Callable[[Context, Client], bytes]:
    """PUBLISH to ``conf/<run>/`` + ``raw_topic`` (raw bytes kept as they are)."""
    return lambda ctx, c: wire.publish(ctx.topic("").encode() + raw_topic, payload, **kw)


def _sub(raw_filter: bytes, qos: int = 0, **kw: Any) -> Callable[[Context, Client], bytes]:
    return lambda ctx, c: wire.subscribe(1, [(ctx.topic("").encode() + raw_filter, qos)], **kw)


def _unsub(raw_filter: bytes, **kw: Any) -> Callable[[Context, Client], bytes]:
    return lambda ctx, c: wire.unsubscribe(1, [ctx.topic("").encode() + raw_filter], **kw)


def _connect(**kw: Any) -> Callable[[Context, Client], bytes]:
    return lambda ctx, c: wire.connect(ctx.cid("raw"), **kw)


CLOSED = ("closed",)
ALIVE = ("alive",)

BAD_UTF8 = {
    "overlong-nul": b"\xc0\x80",
    "surrogate": b"\xed\xa0\x80",
    "truncated": b"\xe2\x82",
    "invalid-byte": b"\xff",
}

BYTE_CASES: list[dict[str, Any]] = [
    # ---- 2.2.2 reserved fixed-header flags ------------------------------------------------
    {
        "id": "flags-connect-reserved",
        "statements": ["MQTT-2.2.2-1", "MQTT-2.2.2-2", "MQTT-3.1.4-1"],
        "title": "CONNECT with fixed-header flags 0001 is closed without CONNACK",
        "connect": False,
        "steps": [("send", lambda ctx, c: wire.connect(ctx.cid(), first_byte=0x11)), CLOSED],
    },
    {
        "id": "flags-puback-reserved",
        "statements": ["MQTT-2.2.2-1", "MQTT-2.2.2-2"],
        "title": "PUBACK with flags 0010 closes the connection",
        "connect": True,
        "steps": [("send", wire.ack(wire.PUBACK, 7, flags=0x02)), CLOSED],
    },
    {
        "id": "flags-pubrec-reserved",
        "statements": ["MQTT-2.2.2-1", "MQTT-2.2.2-2"],
        "title": "PUBREC with flags 0001 closes the connection",
        "connect": True,
        "steps": [("send", wire.ack(wire.PUBREC, 7, flags=0x01)), CLOSED],
    },
    {
        "id": "flags-pubcomp-reserved",
        "statements": ["MQTT-2.2.2-1", "MQTT-2.2.2-2"],
        "title": "PUBCOMP with flags 1000 closes the connection",
        "connect": True,
        "steps": [("send", wire.ack(wire.PUBCOMP, 7, flags=0x08)), CLOSED],
    },
    {
        "id": "flags-pingreq-reserved",
        "statements": ["MQTT-2.2.2-1", "MQTT-2.2.2-2"],
        "title": "PINGREQ with flags 0001 closes the connection",
        "connect": True,
        "steps": [("send", wire.pingreq(flags=0x01)), CLOSED],
    },
    {
        "id": "flags-pubrel-0000",
        "statements": ["MQTT-2.2.2-1", "MQTT-2.2.2-2", "MQTT-3.6.1-1"],
        "title": "PUBREL with flags 0000 (after a QoS 2 PUBLISH) closes the connection",
        "connect": True,
        "steps": [
            ("send", _pub(b"t", qos=2, pid=5)),
            ("expect", wire.pubrec(5)),
            ("send", wire.ack(wire.PUBREL, 5, flags=0x00)),
            CLOSED,
        ],
    },
    {
        "id": "flags-pubrel-0011",
        "statements": ["MQTT-3.6.1-1"],
        "title": "PUBREL with flags 0011 closes the connection",
        "connect": True,
        "steps": [
            ("send", _pub(b"t", qos=2, pid=5)),
            ("expect", wire.pubrec(5)),
            ("send", wire.ack(wire.PUBREL, 5, flags=0x03)),
            CLOSED,
        ],
    },
    {
        "id": "flags-subscribe-0000",
        "statements": ["MQTT-2.2.2-1", "MQTT-2.2.2-2", "MQTT-3.8.1-1"],
        "title": "SUBSCRIBE with flags 0000 closes the connection",
        "connect": True,
        "steps": [("send", _sub(b"t", flags=0x00)), CLOSED],
    },
    {
        "id": "flags-subscribe-1010",
        "statements": ["MQTT-3.8.1-1"],
        "title": "SUBSCRIBE with flags 1010 closes the connection",
        "connect": True,
        "steps": [("send", _sub(b"t", flags=0x0A)), CLOSED],
    },
    {
        "id": "flags-unsubscribe-0000",
        "statements": ["MQTT-2.2.2-1", "MQTT-2.2.2-2", "MQTT-3.10.1-1"],
        "title": "UNSUBSCRIBE with flags 0000 closes the connection",
        "connect": True,
        "steps": [("send", _unsub(b"t", flags=0x00)), CLOSED],
    },
    {
        "id": "flags-unsubscribe-0011",
        "statements": ["MQTT-3.10.1-1"],
        "title": "UNSUBSCRIBE with flags 0011 closes the connection",
        "connect": True,
        "steps": [("send", _unsub(b"t", flags=0x03)), CLOSED],
    },
    {
        "id": "flags-disconnect-reserved",
        "statements": ["MQTT-2.2.2-1", "MQTT-2.2.2-2", "MQTT-3.14.1-1"],
        "title": "DISCONNECT with flags 0001 disconnects the client",
        "connect": True,
        "steps": [("send", wire.disconnect(flags=0x01)), CLOSED],
    },
    {
        "id": "publish-qos3",
        "statements": ["MQTT-3.3.1-4", "MQTT-2.2.2-2"],
        "title": "PUBLISH with both QoS bits set closes the connection",
        "connect": True,
        "steps": [
            ("send", lambda ctx, c: wire.packet(0x36, wire.string(ctx.topic()) + b"\x00\x01x")),
            CLOSED,
        ],
    },
    {
        "id": "publish-qos0-dup",
        "statements": ["MQTT-3.3.1-2", "MQTT-4.8.0-1"],
        "title": "QoS 0 PUBLISH with DUP 1 (first byte 38) closes the connection",
        "connect": True,
        "steps": [("send", _pub(b"t", dup=True)), CLOSED],
    },
    # ---- 2.3.1 packet identifiers ------------------------------------------------------------
    {
        "id": "pid-zero-publish-qos1",
        "statements": ["MQTT-2.3.1-1"],
        "title": "QoS 1 PUBLISH with packet identifier 0 closes the connection",
        "connect": True,
        "steps": [("send", _pub(b"t", qos=1, pid=0)), CLOSED],
    },
    {
        "id": "pid-zero-publish-qos2",
        "statements": ["MQTT-2.3.1-1"],
        "title": "QoS 2 PUBLISH with packet identifier 0 closes the connection",
        "connect": True,
        "steps": [("send", _pub(b"t", qos=2, pid=0)), CLOSED],
    },
    {
        "id": "pid-zero-subscribe",
        "statements": ["MQTT-2.3.1-1"],
        "title": "SUBSCRIBE with packet identifier 0 closes the connection",
        "connect": True,
        "steps": [
            ("send", lambda ctx, c: wire.subscribe(0, [(ctx.topic(), 0)])),
            CLOSED,
        ],
    },
    {
        "id": "pid-zero-unsubscribe",
        "statements": ["MQTT-2.3.1-1"],
        "title": "UNSUBSCRIBE with packet identifier 0 closes the connection",
        "connect": True,
        "steps": [("send", lambda ctx, c: wire.unsubscribe(0, [ctx.topic()])), CLOSED],
    },
    {
        "id": "pid-echo-puback",
        "statements": ["MQTT-2.3.1-6", "MQTT-3.3.4-1", "MQTT-4.3.2-2"],
        "title": "QoS 1 PUBLISH pid 0x1234 is answered by exactly 40 02 12 34",
        "connect": True,
        "steps": [("send", _pub(b"t", qos=1, pid=0x1234)), ("expect", wire.puback(0x1234))],
    },
    {
        "id": "pid-echo-pubrec-pubcomp",
        "statements": ["MQTT-2.3.1-6", "MQTT-3.3.4-1", "MQTT-4.3.3-2"],
        "title": "QoS 2 PUBLISH pid 0xBEEF: PUBREC 50 02 be ef, PUBREL → PUBCOMP 70 02 be ef",
        "connect": True,
        "steps": [
            ("send", _pub(b"t", qos=2, pid=0xBEEF)),
            ("expect", wire.pubrec(0xBEEF)),
            ("send", wire.pubrel(0xBEEF)),
            ("expect", wire.pubcomp(0xBEEF)),
        ],
    },
    {
        "id": "pid-echo-suback",
        "statements": ["MQTT-2.3.1-7", "MQTT-3.8.4-1", "MQTT-3.8.4-2"],
        "title": "SUBSCRIBE pid 0x0102 at QoS 1 is answered by exactly 90 03 01 02 01",
        "connect": True,
        "steps": [
            ("send", lambda ctx, c: wire.subscribe(0x0102, [(ctx.topic(), 1)])),
            ("expect", bytes.fromhex("9003010201")),
        ],
    },
    {
        "id": "pid-echo-unsuback",
        "statements": ["MQTT-2.3.1-7", "MQTT-3.10.4-4", "MQTT-3.10.4-5"],
        "title": "UNSUBSCRIBE pid 0xFFFF (nothing subscribed) is answered by b0 02 ff ff",
        "connect": True,
        "steps": [
            ("send", lambda ctx, c: wire.unsubscribe(0xFFFF, [ctx.topic()])),
            ("expect", bytes.fromhex("b002ffff")),
        ],
    },
    {
        "id": "pingreq-pingresp",
        "statements": ["MQTT-3.12.4-1"],
        "title": "PINGREQ is answered by exactly d0 00",
        "connect": True,
        "steps": [("send", wire.pingreq()), ("expect", bytes.fromhex("d000"))],
    },
    # ---- 3.1.0 / 3.1.2 / 3.1.4 CONNECT -------------------------------------------------------
    {
        "id": "connect-accepted-bytes",
        "statements": ["MQTT-3.1.4-4", "MQTT-3.2.2-1", "MQTT-7.0.0-2", "MQTT-3.2.0-1"],
        "title": "A plain clean-session CONNECT is answered by exactly 20 02 00 00",
        "connect": False,
        "steps": [("send", _connect()), ("expect", wire.connack(False, 0)), ALIVE],
    },
    {
        "id": "connect-second-connect",
        "statements": ["MQTT-3.1.0-2", "MQTT-4.8.0-1"],
        "title": "A second CONNECT on the same connection is a protocol violation: closed",
        "connect": True,
        "steps": [("send", _connect()), CLOSED],
    },
    {
        "id": "connect-first-not-connect",
        "statements": ["MQTT-4.8.0-1"],
        "title": "A PINGREQ before CONNECT closes the connection with nothing sent",
        "connect": False,
        "steps": [("send", wire.pingreq()), CLOSED],
    },
    {
        "id": "connect-bad-level",
        "statements": ["MQTT-3.1.2-2", "MQTT-3.2.2-4", "MQTT-3.2.2-5"],
        "title": "Protocol level 42 is refused with exactly 20 02 00 01, then closed",
        "connect": False,
        "steps": [
            ("send", _connect(proto=("MQTT", 42))),
            ("expect", wire.connack(False, 1)),
            CLOSED,
        ],
    },
    {
        "id": "connect-reserved-flag",
        "statements": ["MQTT-3.1.2-3", "MQTT-3.1.4-1", "MQTT-3.2.2-6"],
        "title": "CONNECT flags reserved bit 0 set: closed without CONNACK",
        "connect": False,
        "steps": [("send", _connect(flags=0x03)), CLOSED],
    },
    {
        "id": "connect-will-qos-without-will",
        "statements": ["MQTT-3.1.4-1", "MQTT-3.2.2-6"],
        "title": "Will Flag 0 with Will QoS 1 (3.1.2-13): closed without CONNACK",
        "connect": False,
        "steps": [("send", _connect(flags=0x0A)), CLOSED],
    },
    {
        "id": "connect-will-retain-without-will",
        "statements": ["MQTT-3.1.4-1"],
        "title": "Will Flag 0 with Will Retain 1 (3.1.2-15): closed without CONNACK",
        "connect": False,
        "steps": [("send", _connect(flags=0x22)), CLOSED],
    },
    {
        "id": "connect-will-qos3",
        "statements": ["MQTT-3.1.4-1"],
        "title": "Will QoS 3 (3.1.2-14): closed without CONNACK",
        "connect": False,
        "steps": [
            (
                "send",
                lambda ctx, c: wire.connect(ctx.cid(), will=(ctx.topic("w"), b"w"), flags=0x1E),
            ),
            CLOSED,
        ],
    },
    {
        "id": "connect-password-without-username",
        "statements": ["MQTT-3.1.4-1"],
        "title": "Password flag set, User Name flag 0 (3.1.2-22): closed without CONNACK",
        "connect": False,
        "steps": [
            (
                "send",
                lambda ctx, c: wire.packet(
                    0x10,
                    wire.string("MQTT")
                    + b"\x04\x42\x00\x3c"
                    + wire.string(ctx.cid())
                    + wire.string(b"pw"),
                ),
            ),
            CLOSED,
        ],
    },
    {
        "id": "connect-username-flag-missing-field",
        "statements": ["MQTT-3.1.4-1"],
        "title": "User Name flag set but no User Name in the payload (3.1.2-19): closed",
        "connect": False,
        "steps": [
            (
                "send",
                lambda ctx, c: wire.packet(
                    0x10, wire.string("MQTT") + b"\x04\x82\x00\x3c" + wire.string(ctx.cid())
                ),
            ),
            CLOSED,
        ],
    },
    {
        "id": "connect-will-flag-missing-fields",
        "statements": ["MQTT-3.1.4-1"],
        "title": "Will Flag set but no Will Topic/Message in the payload (3.1.2-9): closed",
        "connect": False,
        "steps": [
            (
                "send",
                lambda ctx, c: wire.packet(
                    0x10, wire.string("MQTT") + b"\x04\x06\x00\x3c" + wire.string(ctx.cid())
                ),
            ),
            CLOSED,
        ],
    },
    {
        "id": "connect-missing-client-id",
        "statements": ["MQTT-3.1.4-1"],
        "title": "CONNECT ending after the variable header (no ClientId, 3.1.3-3): closed",
        "connect": False,
        "steps": [("send", wire.packet(0x10, wire.string("MQTT") + b"\x04\x02\x00\x3c")), CLOSED],
    },
    {
        "id": "connect-bad-protocol-name",
        "statements": ["MQTT-3.1.2-1", "MQTT-3.2.2-6"],
        "title": "Protocol name 'MQTX': disconnected (processing as 3.1.1 is not allowed)",
        "connect": False,
        "steps": [("send", _connect(proto=("MQTX", 4))), CLOSED],
    },
    {
        "id": "connect-empty-id-persistent",
        "statements": ["MQTT-3.1.3-8", "MQTT-3.2.2-4", "MQTT-3.2.2-5", "MQTT-3.1.3-9"],
        "title": "Zero-byte ClientId with CleanSession 0: exactly 20 02 00 02, then closed",
        "connect": False,
        "steps": [
            ("send", wire.connect("", clean=False)),
            ("expect", wire.connack(False, 2)),
            CLOSED,
        ],
    },
    {
        "id": "connect-then-ping-same-write",
        "statements": ["MQTT-3.2.0-1"],
        "title": "CONNECT+PINGREQ in one write: CONNACK comes first, then PINGRESP",
        "connect": False,
        "steps": [
            ("send", lambda ctx, c: wire.connect(ctx.cid()) + wire.pingreq()),
            ("expect", wire.connack(False, 0)),
            ("expect", bytes.fromhex("d000")),
        ],
    },
    {
        "id": "connect-client-id-bad-utf8",
        "statements": ["MQTT-1.5.3-1", "MQTT-3.1.4-1"],
        "title": "ClientId with ill-formed UTF-8 (C0 80) closes the connection",
        "connect": False,
        "steps": [("send", wire.connect(b"ab\xc0\x80cd")), CLOSED],
    },
    {
        "id": "connect-will-topic-surrogate",
        "statements": ["MQTT-1.5.3-1", "MQTT-3.1.4-1"],
        "title": "Will Topic containing an encoded surrogate (ED A0 80) closes the connection",
        "connect": False,
        "steps": [
            (
                "send",
                lambda ctx, c: wire.connect(
                    ctx.cid(),
                    will=(ctx.topic("").encode() + b"\xed\xa0\x80", b"w"),
                ),
            ),
            CLOSED,
        ],
    },
    {
        "id": "connect-username-nul",
        "statements": ["MQTT-1.5.3-2", "MQTT-3.1.4-1"],
        "title": "User Name containing U+0000 closes the connection",
        "connect": False,
        "steps": [("send", _connect(username=b"us\x00er")), CLOSED],
    },
    # ---- PUBLISH topic names -----------------------------------------------------------------
    {
        "id": "publish-topic-plus",
        "statements": ["MQTT-3.3.2-2", "MQTT-4.7.1-1"],
        "title": "PUBLISH to a topic name containing '+' closes the connection",
        "connect": True,
        "steps": [("send", _pub(b"a/+/b")), CLOSED],
    },
    {
        "id": "publish-topic-hash",
        "statements": ["MQTT-3.3.2-2", "MQTT-4.7.1-1"],
        "title": "PUBLISH to a topic name containing '#' closes the connection",
        "connect": True,
        "steps": [("send", _pub(b"a/#", qos=1, pid=3)), CLOSED],
    },
    {
        "id": "publish-topic-empty",
        "statements": ["MQTT-4.7.3-1", "MQTT-3.3.2-1"],
        "title": "PUBLISH with a zero-length topic name closes the connection",
        "connect": True,
        "steps": [("send", wire.publish(b"", b"x")), CLOSED],
    },
    {
        "id": "publish-topic-missing",
        "statements": ["MQTT-3.3.2-1"],
        "title": "PUBLISH whose body is one byte (no room for the topic length) closes",
        "connect": True,
        "steps": [("send", bytes.fromhex("300100")), CLOSED],
    },
    {
        "id": "publish-topic-nul",
        "statements": ["MQTT-1.5.3-2", "MQTT-4.7.3-2"],
        "title": "PUBLISH topic containing U+0000 closes the connection",
        "connect": True,
        "steps": [("send", _pub(b"a\x00b")), CLOSED],
    },
    {
        "id": "subscribe-filter-nul",
        "statements": ["MQTT-1.5.3-2", "MQTT-4.7.3-2"],
        "title": "SUBSCRIBE filter containing U+0000 closes the connection",
        "connect": True,
        "steps": [("send", _sub(b"a\x00b")), CLOSED],
    },
    {
        "id": "unsubscribe-filter-nul",
        "statements": ["MQTT-1.5.3-2", "MQTT-4.7.3-2"],
        "title": "UNSUBSCRIBE filter containing U+0000 closes the connection",
        "connect": True,
        "steps": [("send", _unsub(b"a\x00b")), CLOSED],
    },
    # ---- SUBSCRIBE / UNSUBSCRIBE payload -----------------------------------------------------
    {
        "id": "subscribe-empty-payload",
        "statements": ["MQTT-3.8.3-3", "MQTT-4.8.0-1"],
        "title": "SUBSCRIBE with a packet identifier and no filters closes the connection",
        "connect": True,
        "steps": [("send", bytes.fromhex("82020001")), CLOSED],
    },
    {
        "id": "subscribe-qos3",
        "statements": ["MQTT-3.8.3-4"],
        "title": "SUBSCRIBE requesting QoS 3 closes the connection",
        "connect": True,
        "steps": [("send", _sub(b"t", qos=3)), CLOSED],
    },
    {
        "id": "subscribe-reserved-bits",
        "statements": ["MQTT-3.8.3-4"],
        "title": "SUBSCRIBE with a reserved bit set in the QoS byte (0x41) closes",
        "connect": True,
        "steps": [("send", _sub(b"t", qos=0x41)), CLOSED],
    },
    {
        "id": "unsubscribe-empty-payload",
        "statements": ["MQTT-3.10.3-2", "MQTT-4.8.0-1"],
        "title": "UNSUBSCRIBE with a packet identifier and no filters closes the connection",
        "connect": True,
        "steps": [("send", bytes.fromhex("a2020001")), CLOSED],
    },
    # ---- packets a client must never send ----------------------------------------------------
    {
        "id": "client-sends-connack",
        "statements": ["MQTT-4.8.0-1"],
        "title": "A CONNACK sent by a client is a protocol violation: closed",
        "connect": True,
        "steps": [("send", wire.connack(False, 0)), CLOSED],
    },
    {
        "id": "client-sends-suback",
        "statements": ["MQTT-4.8.0-1"],
        "title": "A SUBACK sent by a client is a protocol violation: closed",
        "connect": True,
        "steps": [("send", bytes.fromhex("9003000100")), CLOSED],
    },
    {
        "id": "client-sends-pingresp",
        "statements": ["MQTT-4.8.0-1"],
        "title": "A PINGRESP sent by a client is a protocol violation: closed",
        "connect": True,
        "steps": [("send", bytes.fromhex("d000")), CLOSED],
    },
    {
        "id": "client-sends-reserved-type-0",
        "statements": ["MQTT-4.8.0-1"],
        "title": "Packet type 0 (reserved) closes the connection",
        "connect": True,
        "steps": [("send", bytes.fromhex("0000")), CLOSED],
    },
    {
        "id": "client-sends-reserved-type-15",
        "statements": ["MQTT-4.8.0-1"],
        "title": "Packet type 15 (reserved in 3.1.1) closes the connection",
        "connect": True,
        "steps": [("send", bytes.fromhex("f000")), CLOSED],
    },
    {
        "id": "remaining-length-5-bytes",
        "statements": ["MQTT-4.8.0-1"],
        "title": "A Remaining Length of five bytes is malformed: closed",
        "connect": True,
        "steps": [("send", bytes.fromhex("30ffffffff01")), CLOSED],
    },
]

for _name, _bad in BAD_UTF8.items():
    BYTE_CASES.append(
        {
            "id": f"publish-topic-utf8-{_name}",
            "statements": ["MQTT-1.5.3-1", "MQTT-3.3.2-1"],
            "title": f"PUBLISH topic with ill-formed UTF-8 ({_bad.hex(' ')}) closes",
            "connect": True,
            "steps": [("send", _pub(b"x" + _bad)), CLOSED],
        }
    )
BYTE_CASES.append(
    {
        "id": "subscribe-filter-utf8-surrogate",
        "statements": ["MQTT-1.5.3-1"],
        "title": "SUBSCRIBE filter with an encoded surrogate (ED A0 80) closes",
        "connect": True,
        "steps": [("send", _sub(b"x\xed\xa0\x80")), CLOSED],
    }
)
BYTE_CASES.append(
    {
        "id": "unsubscribe-filter-utf8-invalid",
        "statements": ["MQTT-1.5.3-1"],
        "title": "UNSUBSCRIBE filter with an invalid byte (FF) closes",
        "connect": True,
        "steps": [("send", _unsub(b"x\xff")), CLOSED],
    }
)


def _build(ctx: Context, c: Client, b: Builder) -> bytes:
    return b if isinstance(b, bytes) else b(ctx, c)


def _make(spec: dict[str, Any]) -> Callable[[Context], Any]:
    async def run(ctx: Context) -> None:
        c = await ctx.client("raw")
        if spec["connect"]:
            await c.connect()
        for step in spec["steps"]:
            kind = step[0]
            if kind == "send":
                await c.send(_build(ctx, c, step[1]))
            elif kind == "expect":
                await c.expect_bytes(_build(ctx, c, step[1]))
            elif kind == "closed":
                await c.expect_closed()
            elif kind == "alive":
                await c.send(wire.pingreq())
                pkt = await c.recv(what="PINGRESP")
                if pkt.type != wire.PINGRESP:
                    raise Fail(f"expected PINGRESP, got {pkt.describe()}")
            else:
                raise ValueError(f"unknown step {kind!r}")

    return run


for _spec in BYTE_CASES:
    case(_spec["id"], *_spec["statements"], title=_spec["title"])(_make(_spec))
