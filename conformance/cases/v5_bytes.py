"""MQTT 5.0 data-driven cases: after a valid CONNECT, bytes that break a rule, and the close
(optionally after a DISCONNECT with a reason code of 0x80 or more) that must follow.

Each entry: ``id``, ``statements`` (5.0 ids), ``title``, ``send`` (bytes, or a function of the
case's context returning them) and ``reasons``: the DISCONNECT reason codes allowed before the
close (None: any). A broker may always close without a DISCONNECT.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from conformance import wire
from conformance.core import Context, case5

Builder = bytes | Callable[[Context], bytes]
MALFORMED = {wire.MALFORMED_PACKET}
PROTOCOL = {wire.PROTOCOL_ERROR}
EITHER = {wire.MALFORMED_PACKET, wire.PROTOCOL_ERROR}


def _pub(
    raw_topic: bytes = b"t",
    payload: bytes = b"x",
    props: list[wire.PropertyIn] | None = None,
    **kw: Any,
) -> Callable[[Context], bytes]:
    """PUBLISH to ``conf/<run>/`` + ``raw_topic`` (raw bytes kept as they are)."""
    return lambda ctx: wire.publish(
        ctx.topic("").encode() + raw_topic, payload, version=5, properties=props, **kw
    )


def _sub(raw_filter: bytes = b"t", options: int = 0, **kw: Any) -> Callable[[Context], bytes]:
    return lambda ctx: wire.subscribe(
        1, [(ctx.topic("").encode() + raw_filter, options)], version=5, **kw
    )


def _unsub(raw_filter: bytes = b"t", **kw: Any) -> Callable[[Context], bytes]:
    return lambda ctx: wire.unsubscribe(1, [ctx.topic("").encode() + raw_filter], version=5, **kw)


BAD_UTF8 = {
    "overlong-nul": b"\xc0\x80",
    "surrogate": b"\xed\xa0\x80",
    "truncated": b"\xe2\x82",
    "invalid-byte": b"\xff",
}

V5_BYTE_CASES: list[dict[str, Any]] = [
    # ---- reserved fixed-header flags (2.1.3) ----------------------------------------------------
    {
        "id": "v5-flags-puback-reserved",
        "statements": ["MQTT-2.1.3-1", "MQTT-4.13.1-1"],
        "title": "PUBACK with flags 0010: malformed, closed",
        "send": wire.ack(wire.PUBACK, 7, flags=0x02),
        "reasons": MALFORMED,
    },
    {
        "id": "v5-flags-pubrec-reserved",
        "statements": ["MQTT-2.1.3-1", "MQTT-4.13.1-1"],
        "title": "PUBREC with flags 0001: malformed, closed",
        "send": wire.ack(wire.PUBREC, 7, flags=0x01),
        "reasons": MALFORMED,
    },
    {
        "id": "v5-flags-pubcomp-reserved",
        "statements": ["MQTT-2.1.3-1", "MQTT-4.13.1-1"],
        "title": "PUBCOMP with flags 1000: malformed, closed",
        "send": wire.ack(wire.PUBCOMP, 7, flags=0x08),
        "reasons": MALFORMED,
    },
    {
        "id": "v5-flags-pingreq-reserved",
        "statements": ["MQTT-2.1.3-1", "MQTT-4.13.1-1"],
        "title": "PINGREQ with flags 0001: malformed, closed",
        "send": wire.pingreq(flags=0x01),
        "reasons": MALFORMED,
    },
    {
        "id": "v5-flags-pubrel-0000",
        "statements": ["MQTT-2.1.3-1", "MQTT-3.6.1-1"],
        "title": "PUBREL with flags 0000 (after a QoS 2 PUBLISH): malformed, closed",
        "send": lambda ctx: (
            wire.publish(ctx.topic("t"), b"x", 2, pid=5, version=5)
            + wire.ack(wire.PUBREL, 5, flags=0x00)
        ),
        "reasons": MALFORMED,
        "before": [wire.PUBREC],
        "qos": 2,
    },
    {
        "id": "v5-flags-subscribe-0000",
        "statements": ["MQTT-2.1.3-1", "MQTT-3.8.1-1"],
        "title": "SUBSCRIBE with flags 0000: malformed, closed",
        "send": _sub(flags=0x00),
        "reasons": MALFORMED,
    },
    {
        "id": "v5-flags-unsubscribe-0000",
        "statements": ["MQTT-2.1.3-1", "MQTT-3.10.1-1"],
        "title": "UNSUBSCRIBE with flags 0000: malformed, closed",
        "send": _unsub(flags=0x00),
        "reasons": MALFORMED,
    },
    {
        "id": "v5-flags-disconnect-reserved",
        "statements": ["MQTT-2.1.3-1", "MQTT-3.14.1-1"],
        "title": "DISCONNECT with flags 0001: malformed (DISCONNECT 0x81), closed",
        "send": wire.disconnect(flags=0x01),
        "reasons": MALFORMED,
    },
    # ---- PUBLISH --------------------------------------------------------------------------------
    {
        "id": "v5-publish-qos3",
        "statements": ["MQTT-3.3.1-4", "MQTT-4.13.1-1"],
        "title": "PUBLISH with QoS 3: malformed, closed",
        "send": _pub(qos=3, pid=1),
        "reasons": MALFORMED,
    },
    {
        "id": "v5-publish-qos0-dup",
        "statements": ["MQTT-3.3.1-2", "MQTT-4.13.1-1"],
        "title": "QoS 0 PUBLISH with DUP 1: a Protocol Error, closed",
        "send": _pub(dup=True),
        "reasons": EITHER,
    },
    {
        "id": "v5-publish-pid-zero",
        "statements": ["MQTT-4.13.1-1"],
        "title": "QoS 1 PUBLISH with packet id 0: a Protocol Error, closed",
        "send": _pub(qos=1, pid=0),
        "reasons": EITHER,
    },
    {
        "id": "v5-publish-topic-plus",
        "statements": ["MQTT-3.3.2-2", "MQTT-4.7.0-1", "MQTT-4.13.1-1"],
        "title": "PUBLISH to a Topic Name with '+': closed",
        "send": _pub(b"a/+/b"),
        "reasons": None,
    },
    {
        "id": "v5-publish-topic-hash",
        "statements": ["MQTT-3.3.2-2", "MQTT-4.7.0-1", "MQTT-4.13.1-1"],
        "title": "PUBLISH to a Topic Name with '#': closed",
        "send": _pub(b"a/#"),
        "reasons": None,
    },
    {
        "id": "v5-publish-topic-empty-no-alias",
        "statements": ["MQTT-3.3.2-1", "MQTT-4.7.3-1", "MQTT-4.13.1-1"],
        "title": "PUBLISH with an empty Topic Name and no Topic Alias: a Protocol Error, closed",
        "send": wire.publish("", b"x", version=5),
        "reasons": EITHER,
    },
    {
        "id": "v5-publish-topic-nul",
        "statements": ["MQTT-1.5.4-2", "MQTT-4.7.3-2", "MQTT-4.13.1-1"],
        "title": "PUBLISH Topic Name containing U+0000: malformed, closed",
        "send": _pub(b"a\x00b"),
        "reasons": None,
    },
    {
        "id": "v5-publish-unknown-property",
        "statements": ["MQTT-4.13.1-1"],
        "title": "PUBLISH with an unknown property identifier 0x7F: malformed, closed",
        "send": _pub(props=[(0x7F, b"\x01")]),
        "reasons": EITHER,
    },
    {
        "id": "v5-publish-property-not-allowed",
        "statements": ["MQTT-4.13.1-1"],
        "title": "PUBLISH carrying a Session Expiry Interval (a CONNECT property): closed",
        "send": _pub(props=[(wire.SESSION_EXPIRY_INTERVAL, 1)]),
        "reasons": EITHER,
    },
    {
        "id": "v5-publish-duplicate-property",
        "statements": ["MQTT-4.13.1-1"],
        "title": "PUBLISH with Content Type twice (a Protocol Error): closed",
        "send": _pub(props=[(wire.CONTENT_TYPE, "a"), (wire.CONTENT_TYPE, "b")]),
        "reasons": EITHER,
    },
    {
        "id": "v5-publish-property-length-overrun",
        "statements": ["MQTT-4.13.1-1"],
        "title": "PUBLISH whose Property Length runs past the packet: malformed, closed",
        "send": lambda ctx: wire.packet(0x30, wire.string(ctx.topic("t")) + b"\x10\x03\x00"),
        "reasons": MALFORMED,
    },
    {
        "id": "v5-publish-content-type-bad-utf8",
        "statements": ["MQTT-3.3.2-19", "MQTT-1.5.4-1", "MQTT-4.13.1-1"],
        "title": "PUBLISH Content Type of ill-formed UTF-8 (ED A0 80): malformed, closed",
        "send": _pub(props=[(wire.CONTENT_TYPE, b"t\xed\xa0\x80")]),
        "reasons": MALFORMED,
    },
    {
        "id": "v5-publish-content-type-nul",
        "statements": ["MQTT-3.3.2-19", "MQTT-1.5.4-2", "MQTT-4.13.1-1"],
        "title": "PUBLISH Content Type containing U+0000: malformed, closed",
        "send": _pub(props=[(wire.CONTENT_TYPE, b"t\x00")]),
        "reasons": MALFORMED,
    },
    {
        "id": "v5-publish-response-topic-bad-utf8",
        "statements": ["MQTT-3.3.2-13", "MQTT-1.5.4-1", "MQTT-4.13.1-1"],
        "title": "PUBLISH Response Topic of ill-formed UTF-8 (FF): malformed, closed",
        "send": _pub(props=[(wire.RESPONSE_TOPIC, b"r/\xff")]),
        "reasons": MALFORMED,
    },
    {
        "id": "v5-publish-user-property-name-bad-utf8",
        "statements": ["MQTT-1.5.7-1", "MQTT-1.5.4-1", "MQTT-4.13.1-1"],
        "title": "PUBLISH User Property whose name is ill-formed UTF-8: malformed, closed",
        "send": _pub(props=[(wire.USER_PROPERTY, (b"k\xc0\x80", "v"))]),
        "reasons": MALFORMED,
    },
    {
        "id": "v5-publish-user-property-value-nul",
        "statements": ["MQTT-1.5.7-1", "MQTT-1.5.4-2", "MQTT-4.13.1-1"],
        "title": "PUBLISH User Property whose value contains U+0000: malformed, closed",
        "send": _pub(props=[(wire.USER_PROPERTY, ("k", b"v\x00"))]),
        "reasons": MALFORMED,
    },
    # ---- SUBSCRIBE / UNSUBSCRIBE ---------------------------------------------------------------
    {
        "id": "v5-subscribe-options-reserved-bits",
        "statements": ["MQTT-3.8.3-5", "MQTT-4.13.1-1"],
        "title": "SUBSCRIBE options with reserved bit 6 set: malformed, closed",
        "send": _sub(options=0x41),
        "reasons": MALFORMED,
    },
    {
        "id": "v5-subscribe-options-bit-7",
        "statements": ["MQTT-3.8.3-5", "MQTT-4.13.1-1"],
        "title": "SUBSCRIBE options with reserved bit 7 set: malformed, closed",
        "send": _sub(options=0x80),
        "reasons": MALFORMED,
    },
    {
        "id": "v5-subscribe-retain-handling-3",
        "statements": ["MQTT-4.13.1-1"],
        "title": "SUBSCRIBE with Retain Handling 3: a Protocol Error, closed",
        "send": _sub(options=0x30),
        "reasons": EITHER,
    },
    {
        "id": "v5-subscribe-qos3",
        "statements": ["MQTT-4.13.1-1"],
        "title": "SUBSCRIBE with Maximum QoS 3: malformed, closed",
        "send": _sub(options=0x03),
        "reasons": EITHER,
    },
    {
        "id": "v5-subscribe-no-filter",
        "statements": ["MQTT-4.13.1-1"],
        "title": "SUBSCRIBE without any Topic Filter: a Protocol Error, closed",
        "send": wire.packet(0x82, b"\x00\x01\x00"),
        "reasons": EITHER,
    },
    {
        "id": "v5-subscribe-pid-zero",
        "statements": ["MQTT-4.13.1-1"],
        "title": "SUBSCRIBE with packet id 0: a Protocol Error, closed",
        "send": lambda ctx: wire.subscribe(0, [(ctx.topic("t"), 0)], version=5),
        "reasons": EITHER,
    },
    {
        "id": "v5-subscribe-filter-bad-utf8",
        "statements": ["MQTT-1.5.4-1", "MQTT-4.13.1-1"],
        "title": "SUBSCRIBE filter of ill-formed UTF-8 (ED A0 80): malformed, closed",
        "send": _sub(b"x\xed\xa0\x80"),
        "reasons": MALFORMED,
    },
    {
        "id": "v5-subscribe-filter-nul",
        "statements": ["MQTT-1.5.4-2", "MQTT-4.7.3-2", "MQTT-4.13.1-1"],
        "title": "SUBSCRIBE filter containing U+0000: malformed, closed",
        "send": _sub(b"x\x00"),
        "reasons": MALFORMED,
    },
    {
        "id": "v5-unsubscribe-no-filter",
        "statements": ["MQTT-4.13.1-1"],
        "title": "UNSUBSCRIBE without any Topic Filter: a Protocol Error, closed",
        "send": wire.packet(0xA2, b"\x00\x01\x00"),
        "reasons": EITHER,
    },
    {
        "id": "v5-unsubscribe-filter-bad-utf8",
        "statements": ["MQTT-1.5.4-1", "MQTT-4.13.1-1"],
        "title": "UNSUBSCRIBE filter with an invalid byte (FF): malformed, closed",
        "send": _unsub(b"x\xff"),
        "reasons": MALFORMED,
    },
    # ---- other packets --------------------------------------------------------------------------
    {
        "id": "v5-remaining-length-5-bytes",
        "statements": ["MQTT-4.13.1-1"],
        "title": "A Remaining Length of five bytes: malformed, closed",
        "send": bytes.fromhex("30ffffffff01"),
        "reasons": MALFORMED,
    },
    {
        "id": "v5-packet-type-0",
        "statements": ["MQTT-4.13.1-1"],
        "title": "Reserved packet type 0: malformed, closed",
        "send": b"\x00\x00",
        "reasons": EITHER,
    },
    {
        "id": "v5-client-sends-connack",
        "statements": ["MQTT-4.13.1-1"],
        "title": "A CONNACK from the client: a Protocol Error, closed",
        "send": wire.connack(False, 0, version=5),
        "reasons": EITHER,
    },
    {
        "id": "v5-client-sends-suback",
        "statements": ["MQTT-4.13.1-1"],
        "title": "A SUBACK from the client: a Protocol Error, closed",
        "send": wire.suback(1, [0], version=5),
        "reasons": EITHER,
    },
    {
        "id": "v5-client-sends-pingresp",
        "statements": ["MQTT-4.13.1-1"],
        "title": "A PINGRESP from the client: a Protocol Error, closed",
        "send": wire.pingresp(),
        "reasons": EITHER,
    },
]

for _name, _bad in BAD_UTF8.items():
    V5_BYTE_CASES.append(
        {
            "id": f"v5-publish-topic-utf8-{_name}",
            "statements": ["MQTT-1.5.4-1", "MQTT-3.3.2-1", "MQTT-4.13.1-1"],
            "title": f"PUBLISH Topic Name with ill-formed UTF-8 ({_bad.hex(' ')}): malformed, "
            "closed",
            "send": _pub(b"x" + _bad),
            "reasons": MALFORMED,
        }
    )


def _make(spec: dict[str, Any]) -> Callable[[Context], Any]:
    async def run(ctx: Context) -> None:
        c = await ctx.connected("raw")
        c.requires(qos=spec.get("qos", 0))
        send: Builder = spec["send"]
        await c.send(send if isinstance(send, bytes) else send(ctx))
        for kind in spec.get("before", []):
            await c.expect_type(kind)
        await c.expect_closed(reasons=spec["reasons"])

    return run


for _spec in V5_BYTE_CASES:
    case5(_spec["id"], *_spec["statements"], title=_spec["title"])(_make(_spec))
