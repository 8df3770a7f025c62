"""MQTT 5.0 PUBLISH: QoS flows and their reason codes, properties passed through, message
expiry, topic aliases both ways, Receive Maximum and Maximum Packet Size, redelivery."""

from __future__ import annotations

import trio

from conformance import wire
from conformance.core import CaseFunc, Client, Context, Fail, Skip, case5


async def _pair(
    ctx: Context, topic: str, qos: int = 1, **sub_kwargs: object
) -> tuple[Client, Client]:
    """A subscriber to ``topic`` at ``qos`` (its CONNECT takes ``sub_kwargs``) and a publisher."""
    s = await ctx.client("sub")
    await s.connect(**sub_kwargs)  # type: ignore[arg-type]
    await s.subscribe([(topic, qos)])
    p = await ctx.connected("pub")
    return s, p


def _published(pkts: list[wire.Packet]) -> list[wire.Packet]:
    return [p for p in pkts if p.type == wire.PUBLISH]


@case5(
    "v5-publish-qos0-delivery-bytes",
    "MQTT-2.2.1-2",
    "MQTT-2.2.2-1",
    "MQTT-4.3.1-1",
    "MQTT-3.3.1-2",
    "MQTT-3.3.2-3",
    title="QoS 0 delivery is exactly 30 len topic 00 payload: QoS 0, DUP 0, no packet id, "
    "Property Length 0",
)
async def qos0_bytes(ctx: Context) -> None:
    topic = ctx.topic("q0")
    s, p = await _pair(ctx, topic, 0)
    await p.publish(topic, b"payload-0", qos=0)
    got = (await s.publishes(1))[0]
    want = wire.publish(topic, b"payload-0", version=5)
    if got.raw != want:
        raise Fail(f"got {got.raw.hex(' ')}, expected {want.hex(' ')}")


@case5(
    "v5-publish-qos-responses",
    "MQTT-3.3.4-1",
    "MQTT-2.2.1-5",
    "MQTT-4.3.2-4",
    "MQTT-4.3.3-8",
    "MQTT-4.3.3-11",
    "MQTT-3.4.2-1",
    "MQTT-3.5.2-1",
    "MQTT-3.7.2-1",
    title="QoS 0: no answer; QoS 1: PUBACK; QoS 2: PUBREC, then PUBCOMP for PUBREL; same pids",
)
async def qos_responses(ctx: Context) -> None:
    topic = ctx.topic("r")
    s, p = await _pair(ctx, topic, 2)
    p.requires(qos=2)
    await p.ensure_marker()
    await p.send(wire.publish(topic, b"q0", version=5))
    before = await p.flush()
    if before:
        raise Fail("QoS 0 PUBLISH was answered with " + before[0].describe())
    await p.send(wire.publish(topic, b"q1", 1, pid=0x1234, version=5))
    ack = await p.recv(what="PUBACK")
    if ack.type != wire.PUBACK or ack.pid != 0x1234 or (ack.reason or 0) >= 0x80:
        raise Fail(f"QoS 1 PUBLISH pid 0x1234 answered with {ack.describe()}")
    await p.send(wire.publish(topic, b"q2", 2, pid=0x4321, version=5))
    rec = await p.recv(what="PUBREC")
    if rec.type != wire.PUBREC or rec.pid != 0x4321 or (rec.reason or 0) >= 0x80:
        raise Fail(f"QoS 2 PUBLISH pid 0x4321 answered with {rec.describe()}")
    await p.send(wire.pubrel(0x4321))
    comp = await p.recv(what="PUBCOMP")
    if comp.type != wire.PUBCOMP or comp.pid != 0x4321 or comp.reason != 0:
        raise Fail(f"PUBREL pid 0x4321 answered with {comp.describe()}")
    got = await s.publishes(3)
    if [g.payload for g in got] != [b"q0", b"q1", b"q2"]:
        raise Fail("delivered: " + ", ".join(g.describe() for g in got))


@case5(
    "v5-publish-no-matching-subscribers",
    "MQTT-3.4.2-1",
    "MQTT-3.5.2-1",
    title="PUBACK/PUBREC for a topic nobody subscribes to: 0x00 or 0x10; with a subscriber: 0x00",
)
async def no_subscribers(ctx: Context) -> None:
    p = await ctx.connected("pub")
    p.requires(qos=2)
    codes = []
    for qos, kind in ((1, wire.PUBACK), (2, wire.PUBREC)):
        pid = p.pid()
        await p.send(wire.publish(ctx.topic("nobody"), b"x", qos, pid=pid, version=5))
        ack = await p.expect_type(kind, pid)
        if ack.reason not in (wire.SUCCESS, wire.NO_MATCHING_SUBSCRIBERS):
            raise Fail(f"QoS {qos} to a topic without subscribers: {ack.describe()}")
        codes.append(ack.reason or 0)
        if qos == 2:
            await p.send(wire.pubrel(pid))
            await p.expect_type(wire.PUBCOMP, pid)
    topic = ctx.topic("some")
    s = await ctx.connected("sub")
    await s.subscribe([(topic, 1)])
    pid = p.pid()
    await p.send(wire.publish(topic, b"x", 1, pid=pid, version=5))
    ack = await p.expect_type(wire.PUBACK, pid)
    if ack.reason != wire.SUCCESS:
        raise Fail(f"QoS 1 to a subscribed topic answered with {ack.describe()}")
    ctx.choice(
        "no matching subscribers is reported with 0x10"
        if wire.NO_MATCHING_SUBSCRIBERS in codes
        else "no matching subscribers: 0x00 (0x10 is optional)"
    )


@case5(
    "v5-publish-dup-not-propagated",
    "MQTT-3.3.1-3",
    "MQTT-4.3.2-2",
    title="QoS 1 PUBLISH sent with DUP 1 reaches a QoS 1 subscriber with DUP 0",
)
async def dup_not_propagated(ctx: Context) -> None:
    topic = ctx.topic("d")
    s, p = await _pair(ctx, topic, 1)
    await p.publish(topic, b"dup", qos=1, dup=True)
    got = (await s.publishes(1))[0]
    if got.dup or got.qos != 1 or not got.pid:
        raise Fail(f"got {got.describe()}")


@case5(
    "v5-publish-downgrade-dup-cleared",
    "MQTT-3.3.1-2",
    "MQTT-3.3.1-3",
    "MQTT-3.8.4-8",
    title="QoS 1 PUBLISH with DUP 1 to a QoS 0 subscriber arrives with DUP 0, QoS 0",
)
async def dup_cleared(ctx: Context) -> None:
    topic = ctx.topic("d")
    s, p = await _pair(ctx, topic, 0)
    await p.publish(topic, b"dup", qos=1, dup=True)
    got = (await s.publishes(1))[0]
    if got.raw != wire.publish(topic, b"dup", version=5):
        raise Fail(f"got {got.describe()}")


@case5(
    "v5-publish-qos1-pid-reuse-is-new",
    "MQTT-4.3.2-5",
    title="After PUBACK, a PUBLISH reusing the pid (even DUP 1) is a new message: delivered again",
)
async def qos1_reuse(ctx: Context) -> None:
    topic = ctx.topic("r")
    s, p = await _pair(ctx, topic, 1)
    await p.send(wire.publish(topic, b"one", 1, pid=9, version=5))
    await p.expect_type(wire.PUBACK, 9)
    await p.send(wire.publish(topic, b"two", 1, dup=True, pid=9, version=5))
    await p.expect_type(wire.PUBACK, 9)
    got = await s.publishes(2)
    if [g.payload for g in got] != [b"one", b"two"]:
        raise Fail("delivered: " + ", ".join(g.describe() for g in got))


@case5(
    "v5-publish-qos2-duplicate-before-pubrel",
    "MQTT-4.3.3-10",
    "MQTT-4.3.3-11",
    "MQTT-4.3.3-12",
    title="QoS 2 PUBLISH re-sent before PUBREL: PUBREC again, delivered once; after PUBCOMP the "
    "pid is new",
)
async def qos2_dedup(ctx: Context) -> None:
    topic = ctx.topic("q2")
    s, p = await _pair(ctx, topic, 2)
    p.requires(qos=2)
    await p.send(wire.publish(topic, b"once", 2, pid=77, version=5))
    await p.expect_type(wire.PUBREC, 77)
    await p.send(wire.publish(topic, b"once", 2, dup=True, pid=77, version=5))
    await p.expect_type(wire.PUBREC, 77)
    await p.send(wire.pubrel(77))
    comp = await p.expect_type(wire.PUBCOMP, 77)
    if comp.reason != 0:
        raise Fail(f"PUBREL answered with {comp.describe()}")
    got = _published(await s.flush(via=p))
    if [g.payload for g in got] != [b"once"]:
        raise Fail(f"subscriber received {[g.payload for g in got]}")
    await p.send(wire.publish(topic, b"new", 2, pid=77, version=5))
    await p.expect_type(wire.PUBREC, 77)
    await p.send(wire.pubrel(77))
    await p.expect_type(wire.PUBCOMP, 77)
    got = _published(await s.flush(via=p))
    if [g.payload for g in got] != [b"new"]:
        raise Fail(f"after PUBCOMP, pid 77 reuse delivered {[g.payload for g in got]}")


@case5(
    "v5-publish-qos2-sender-flow",
    "MQTT-4.3.3-2",
    "MQTT-4.3.3-4",
    "MQTT-2.2.1-5",
    "MQTT-3.6.2-1",
    title="Broker as QoS 2 sender: PUBLISH DUP 0, PUBREC -> PUBREL (0x00) same pid, PUBCOMP "
    "ends it",
)
async def qos2_sender(ctx: Context) -> None:
    topic = ctx.topic("q2")
    s, p = await _pair(ctx, topic, 2)
    s.auto_ack = False
    await p.publish(topic, b"x", qos=2)
    pub = (await s.publishes(1))[0]
    if pub.qos != 2 or pub.dup or not pub.pid:
        raise Fail(f"got {pub.describe()}")
    await s.send(wire.pubrec(pub.pid))
    rel = await s.expect_type(wire.PUBREL, pub.pid)
    if rel.reason != 0:
        raise Fail(f"PUBREL for a successful PUBREC: {rel.describe()}")
    await s.send(wire.pubcomp(pub.pid))
    s.auto_ack = True
    before = await s.flush(via=p)
    if before:
        raise Fail("after PUBCOMP the broker sent " + ", ".join(b.describe() for b in before))


@case5(
    "v5-publish-outbound-pids-unique",
    "MQTT-2.2.1-4",
    "MQTT-4.3.2-1",
    "MQTT-4.3.3-1",
    title="Unacknowledged QoS 1/2 deliveries carry distinct non-zero packet identifiers",
)
async def outbound_pids(ctx: Context) -> None:
    topic = ctx.topic("ids")
    s, p = await _pair(ctx, topic, 2)
    s.auto_ack = False
    for i in range(6):
        await p.publish(topic, f"m{i}".encode(), qos=1 + i % 2)
    got = await s.publishes(6)
    pids = [g.pid for g in got]
    if 0 in pids or None in pids or len(set(pids)) != len(pids):
        raise Fail(f"packet identifiers of in-flight deliveries: {pids}")


@case5(
    "v5-pubrel-unknown-pid",
    "MQTT-3.7.2-1",
    "MQTT-4.3.3-11",
    title="PUBREL for a packet id never used: PUBCOMP with that pid (0x00 or 0x92)",
)
async def pubrel_unknown(ctx: Context) -> None:
    c = await ctx.connected()
    await c.send(wire.pubrel(4242))
    comp = await c.expect_type(wire.PUBCOMP, 4242)
    if comp.reason not in (wire.SUCCESS, wire.PACKET_IDENTIFIER_NOT_FOUND):
        raise Fail(f"got {comp.describe()}")


@case5(
    "v5-publish-qos2-expired-continues",
    "MQTT-4.3.3-13",
    title="QoS 2 PUBLISH with Message Expiry 1 s, PUBREL 1.5 s later: PUBCOMP 0x00 all the same",
)
async def qos2_expired(ctx: Context) -> None:
    p = await ctx.connected("pub")
    p.requires(qos=2)
    await p.send(
        wire.publish(
            ctx.topic("exp"),
            b"x",
            2,
            pid=5,
            version=5,
            properties=[(wire.MESSAGE_EXPIRY_INTERVAL, 1)],
        )
    )
    await p.expect_type(wire.PUBREC, 5)
    await trio.sleep(1.5)  # the message expiry under test, not a synchronisation
    await p.send(wire.pubrel(5))
    comp = await p.expect_type(wire.PUBCOMP, 5)
    if comp.reason != 0:
        raise Fail(f"PUBREL after the message expired answered with {comp.describe()}")


# ---- redelivery ------------------------------------------------------------------------------


@case5(
    "v5-session-redeliver-unacked-qos1",
    "MQTT-4.4.0-1",
    "MQTT-3.3.1-1",
    "MQTT-4.3.2-3",
    title="Unacknowledged QoS 1 PUBLISH is re-sent on reconnect with DUP 1 and the same pid",
)
async def redeliver_qos1(ctx: Context) -> None:
    a, cid, topic = await ctx.persistent_subscriber(1)
    a.auto_ack = False
    p = await ctx.connected("pub")
    await p.publish(topic, b"unacked", qos=1)
    first = (await a.publishes(1))[0]
    if first.qos != 1 or first.dup or not first.pid:
        raise Fail(f"first delivery {first.describe()}")
    await a.aclose()
    b = await ctx.client("a2")
    await b.connect(cid, clean=False, session_expiry=300)
    again = (await b.publishes(1))[0]
    if again.pid != first.pid or not again.dup or again.payload != b"unacked":
        raise Fail(f"re-delivery {again.describe()}; first was pid {first.pid}")


@case5(
    "v5-session-redeliver-unacked-qos2",
    "MQTT-4.4.0-1",
    "MQTT-4.3.3-3",
    "MQTT-3.3.1-1",
    title="QoS 2 PUBLISH without PUBREC is re-sent on reconnect (DUP 1, same pid); several keep "
    "their order",
)
async def redeliver_qos2(ctx: Context) -> None:
    a, cid, topic = await ctx.persistent_subscriber(2)
    a.auto_ack = False
    p = await ctx.connected("pub")
    for i in range(3):
        await p.publish(topic, f"m{i}".encode(), qos=2)
    first = await a.publishes(3)
    await a.aclose()
    b = await ctx.client("a2")
    await b.connect(cid, clean=False, session_expiry=300)
    again = await b.publishes(3)
    resent, sent = [(g.pid, g.payload) for g in again], [(g.pid, g.payload) for g in first]
    if resent != sent:
        raise Fail(f"re-sent {resent}, first {sent}")
    if not all(g.dup and g.qos == 2 for g in again):
        raise Fail("re-sent: " + ", ".join(g.describe() for g in again))


@case5(
    "v5-session-redeliver-pubrel",
    "MQTT-4.4.0-1",
    "MQTT-4.3.3-5",
    "MQTT-4.3.3-6",
    title="QoS 2 outbound after PUBREC: on reconnect the broker re-sends PUBREL, not the PUBLISH",
)
async def redeliver_pubrel(ctx: Context) -> None:
    a, cid, topic = await ctx.persistent_subscriber(2)
    a.auto_ack = False
    p = await ctx.connected("pub")
    await p.publish(topic, b"exactly-once", qos=2)
    pub = (await a.publishes(1))[0]
    assert pub.pid is not None
    await a.send(wire.pubrec(pub.pid))
    await a.expect_type(wire.PUBREL, pub.pid)
    await a.aclose()
    b = await ctx.client("a2")
    b.auto_ack = False
    await b.connect(cid, clean=False, session_expiry=300)
    pkt = await b.recv(what="re-sent PUBREL")
    if pkt.type != wire.PUBREL or pkt.pid != pub.pid:
        raise Fail(f"after reconnect got {pkt.describe()}, expected PUBREL pid {pub.pid}")
    await b.send(wire.pubcomp(pub.pid))
    b.auto_ack = True
    before = await b.flush(via=p)
    if any(x.type == wire.PUBLISH and x.payload == b"exactly-once" for x in before):
        raise Fail("the PUBLISH was re-sent after its PUBREL")


@case5(
    "v5-puback-error-not-retransmitted",
    "MQTT-4.4.0-2",
    title="PUBACK 0x80 and PUBREC 0x80 acknowledge: no PUBREL, nothing re-sent on reconnect",
)
async def error_ack(ctx: Context) -> None:
    a, cid, topic = await ctx.persistent_subscriber(2)
    a.auto_ack = False
    p = await ctx.connected("pub")
    await p.publish(topic, b"q1", qos=1)
    await p.publish(topic, b"q2", qos=2)
    got = await a.publishes(2)
    for g in got:
        assert g.pid is not None
        kind = wire.PUBACK if g.qos == 1 else wire.PUBREC
        await a.send(wire.ack(kind, g.pid, reason=wire.UNSPECIFIED_ERROR))
    await a.ping()  # a PUBREL for the refused QoS 2 message would come before the PINGRESP
    if any(x.type == wire.PUBREL for x in a.backlog):
        raise Fail("PUBREL after PUBREC 0x80")
    await a.aclose()
    b = await ctx.client("a2")
    await b.connect(cid, clean=False, session_expiry=300)
    before = await b.flush(via=p)
    if before:
        raise Fail("re-sent after an error acknowledgement: " + before[0].describe())


@case5(
    "v5-message-expiry-not-applied-after-send",
    "MQTT-4.3.3-7",
    "MQTT-4.4.0-1",
    title="Message Expiry 1 s, QoS 2 PUBLISH sent but not acknowledged: re-sent 2 s later on "
    "reconnect",
)
async def expiry_after_send(ctx: Context) -> None:
    a, cid, topic = await ctx.persistent_subscriber(2)
    a.auto_ack = False
    p = await ctx.connected("pub")
    await p.publish(topic, b"sent", qos=2, properties=[(wire.MESSAGE_EXPIRY_INTERVAL, 1)])
    first = (await a.publishes(1))[0]
    await a.aclose()
    await trio.sleep(2.0)  # the message expiry under test, not a synchronisation
    b = await ctx.client("a2")
    await b.connect(cid, clean=False, session_expiry=300)
    again = (await b.publishes(1, "re-sent PUBLISH"))[0]
    if again.pid != first.pid or again.payload != b"sent":
        raise Fail(f"re-sent {again.describe()}, first {first.describe()}")


# ---- ordering and fan-out ---------------------------------------------------------------------


async def _ordered(ctx: Context, qos: int, n: int = 20) -> None:
    topic = ctx.topic(f"ord{qos}")
    s, p = await _pair(ctx, topic, qos)
    p.requires(qos=qos)
    payloads = [f"{i:03d}".encode() for i in range(n)]
    data = b"".join(
        wire.publish(topic, pl, qos, pid=i + 1 if qos else None, version=5)
        for i, pl in enumerate(payloads)
    )
    await p.send(data)
    if qos:
        for i in range(n):
            ack = await p.expect_type(wire.PUBACK if qos == 1 else wire.PUBREC, i + 1)
            if qos == 2:
                await p.send(wire.pubrel(ack.pid or 0))
    got = await s.publishes(n)
    if [g.payload for g in got] != payloads:
        raise Fail(f"QoS {qos} order received: {[g.payload.decode() for g in got]}")


for _qos in (0, 1, 2):

    def _make(qos: int) -> CaseFunc:
        async def run(ctx: Context) -> None:
            await _ordered(ctx, qos, 20 if qos < 2 else 10)

        return run

    case5(
        f"v5-order-qos{_qos}",
        "MQTT-4.6.0-5",
        "MQTT-4.6.0-6",
        title=f"Pipelined QoS {_qos} messages reach a subscriber in the order they were published",
    )(_make(_qos))


@case5(
    "v5-publish-fanout",
    "MQTT-4.5.0-1",
    "MQTT-3.3.2-3",
    title="A message goes to every matching subscription (exact, '+', '#') of several clients",
)
async def fanout(ctx: Context) -> None:
    base = ctx.topic("f")
    filters = [f"{base}/a/b", f"{base}/+/b", f"{base}/#", f"{base}/a/+"]
    subs = []
    for i, flt in enumerate(filters):
        s = await ctx.connected(f"s{i}")
        await s.subscribe([(flt, 1)])
        subs.append(s)
    p = await ctx.connected("pub")
    await p.publish(f"{base}/a/b", b"fan", qos=1)
    for s in subs:
        got = (await s.publishes(1))[0]
        if got.topic != f"{base}/a/b".encode() or got.payload != b"fan":
            raise Fail(f"{s.label} got {got.describe()}")


@case5(
    "v5-transport-large-payload",
    "MQTT-4.2.0-1",
    "MQTT-1.5.5-1",
    title="A 256 KiB QoS 1 payload arrives intact (Remaining Length in its shortest form)",
)
async def large_payload(ctx: Context) -> None:
    topic = ctx.topic("big")
    payload = bytes(range(256)) * 1024
    s, p = await _pair(ctx, topic, 1)
    p.requires(size=len(payload) + 100)
    await p.publish(topic, payload, qos=1)
    got = (await s.publishes(1))[0]
    if got.payload != payload:
        raise Fail(f"payload of {len(got.payload)} bytes differs from the {len(payload)} sent")


@case5(
    "v5-transport-trickled-bytes",
    "MQTT-4.2.0-1",
    title="CONNECT and PUBLISH sent one byte per write are processed normally",
)
async def trickle(ctx: Context) -> None:
    topic = ctx.topic("tr")
    s, _ = await _pair(ctx, topic, 1)
    c = await ctx.client("trickle")
    c.version = c.decoder.version = 5
    for b in wire.connect(ctx.cid(), version=5):
        await c.send(bytes([b]))
    connack = await c.recv(what="CONNACK")
    if connack.type != wire.CONNACK or connack.reason != 0:
        raise Fail(f"got {connack.describe()}")
    for b in wire.publish(topic, b"slow", 1, pid=3, version=5):
        await c.send(bytes([b]))
    await c.expect_type(wire.PUBACK, 3)
    got = (await s.publishes(1))[0]
    if got.payload != b"slow":
        raise Fail(f"got {got.describe()}")


# ---- properties passed through --------------------------------------------------------------

PASSED: list[wire.PropertyIn] = [
    (wire.PAYLOAD_FORMAT_INDICATOR, 1),
    (wire.CONTENT_TYPE, "application/json; \u00e9"),
    (wire.RESPONSE_TOPIC, "resp/\u00fc/\ufeffx"),
    (wire.CORRELATION_DATA, bytes(range(256))),
    *[(wire.USER_PROPERTY, (k, v)) for k, v in [("z", "1"), ("a", "2"), ("z", "0"), ("", "")]],
    *[(wire.USER_PROPERTY, (f"k{i}", f"v{i}" * i)) for i in range(12)],
]


@case5(
    "v5-properties-passed-through",
    "MQTT-3.3.2-4",
    "MQTT-3.3.2-15",
    "MQTT-3.3.2-16",
    "MQTT-3.3.2-17",
    "MQTT-3.3.2-18",
    "MQTT-3.3.2-20",
    "MQTT-1.5.4-3",
    "MQTT-1.5.7-1",
    title="Payload Format, Content Type, Response Topic, Correlation Data and 16 User Properties "
    "(repeated names, empty strings) arrive unaltered, in order, at QoS 0, 1 and 2",
)
async def passed_through(ctx: Context) -> None:
    topic = ctx.topic("props")
    s, p = await _pair(ctx, topic, 2)
    for qos in (0, 1, 2):
        await p.publish(topic, "\u00e9t\u00e9".encode(), qos=qos, properties=PASSED)
    for got in await s.publishes(3):
        for ident, value in PASSED:
            if ident != wire.USER_PROPERTY and got.prop(ident) != value:
                name = wire.PROPERTIES[ident][0]
                raise Fail(f"QoS {got.qos}: {name} {value!r} arrived as {got.prop(ident)!r}")
        want = [v for k, v in PASSED if k == wire.USER_PROPERTY]
        if got.user_properties != want:
            raise Fail(f"QoS {got.qos}: User Properties arrived as {got.user_properties}")


@case5(
    "v5-publish-no-properties-added",
    "MQTT-3.3.2-4",
    "MQTT-2.2.2-1",
    title="A message without properties arrives without Payload Format Indicator, Content Type "
    "or User Properties",
)
async def none_added(ctx: Context) -> None:
    topic = ctx.topic("plain")
    s, p = await _pair(ctx, topic, 1)
    await p.publish(topic, b"plain", qos=1)
    got = (await s.publishes(1))[0]
    extra = [
        wire.PROPERTIES[k][0]
        for k, _ in got.props
        if k in (wire.PAYLOAD_FORMAT_INDICATOR, wire.CONTENT_TYPE, wire.USER_PROPERTY)
        or k in (wire.RESPONSE_TOPIC, wire.CORRELATION_DATA, wire.MESSAGE_EXPIRY_INTERVAL)
    ]
    if extra:
        raise Fail(f"properties the publisher never sent: {extra}")


@case5(
    "v5-payload-format-invalid",
    "MQTT-3.3.2-4",
    title="Payload Format Indicator 1 with ill-formed UTF-8: PUBACK 0x99, DISCONNECT 0x99, or "
    "forwarded unaltered — a choice",
)
async def payload_format_invalid(ctx: Context) -> None:
    topic = ctx.topic("pfi")
    s, p = await _pair(ctx, topic, 1)
    props: list[wire.PropertyIn] = [(wire.PAYLOAD_FORMAT_INDICATOR, 1)]
    await p.send(wire.publish(topic, b"\xff\xfe", 1, pid=7, version=5, properties=props))
    try:
        ack = await p.recv(what="PUBACK")
    except Fail:
        if p.closed and p.disconnect_packet is not None:
            if p.disconnect_packet.reason != wire.PAYLOAD_FORMAT_INVALID:
                raise Fail(f"closed with {p.disconnect_packet.describe()}") from None
            ctx.choice("invalid UTF-8 with Payload Format 1: DISCONNECT 0x99")
            return
        raise
    if ack.type != wire.PUBACK or ack.pid != 7:
        raise Fail(f"got {ack.describe()}")
    if ack.reason == wire.PAYLOAD_FORMAT_INVALID:
        got = _published(await s.flush(via=p))
        if got:
            raise Fail("refused with PUBACK 0x99, yet delivered: " + got[0].describe())
        ctx.choice("invalid UTF-8 with Payload Format 1: PUBACK 0x99, not forwarded")
        return
    fwd = (await s.publishes(1))[0]
    if fwd.payload != b"\xff\xfe" or fwd.prop(wire.PAYLOAD_FORMAT_INDICATOR) != 1:
        raise Fail(f"forwarded as {fwd.describe()}")
    ctx.choice("the payload is not checked: forwarded unaltered with Payload Format 1")


@case5(
    "v5-publish-response-topic-wildcard",
    "MQTT-3.3.2-14",
    "MQTT-3.3.2-15",
    title="Response Topic 'r/#' (wildcards are not allowed): closed, or refused with PUBACK >= "
    "0x80 — never forwarded",
)
async def response_topic_wildcard(ctx: Context) -> None:
    topic = ctx.topic("rt")
    s, p = await _pair(ctx, topic, 1)
    props: list[wire.PropertyIn] = [(wire.RESPONSE_TOPIC, "r/#")]
    await p.send(wire.publish(topic, b"x", 1, pid=3, version=5, properties=props))
    try:
        ack = await p.recv(what="PUBACK or close")
    except Fail:
        if p.closed:
            ctx.choice("a Response Topic with a wildcard closes the connection")
            return
        raise
    if ack.type == wire.DISCONNECT:
        await p.expect_closed()
        ctx.choice(f"a Response Topic with a wildcard: DISCONNECT {ack.reason or 0:#04x}")
        return
    fwd = _published(await s.flush())
    if fwd:
        raise Fail(
            f"forwarded with Response Topic {fwd[0].prop(wire.RESPONSE_TOPIC)!r} "
            f"(after {ack.describe()})"
        )
    if ack.type != wire.PUBACK or (ack.reason or 0) < 0x80:
        raise Fail(f"accepted with {ack.describe()} but not delivered")
    ctx.choice(f"a Response Topic with a wildcard is refused with PUBACK {ack.reason:#04x}")


# ---- message expiry ----------------------------------------------------------------------------


@case5(
    "v5-message-expiry-offline",
    "MQTT-3.3.2-5",
    "MQTT-3.3.2-6",
    title="Offline session: a message with expiry 1 s is gone 2 s later; one with 60 s arrives "
    "with at most 59 s left",
)
async def expiry_offline(ctx: Context) -> None:
    a, cid, topic = await ctx.persistent_subscriber(1)
    await a.disconnect()
    p = await ctx.connected("pub")
    await p.publish(topic, b"short", qos=1, properties=[(wire.MESSAGE_EXPIRY_INTERVAL, 1)])
    await p.publish(topic, b"long", qos=1, properties=[(wire.MESSAGE_EXPIRY_INTERVAL, 60)])
    await trio.sleep(2.1)  # the message expiry under test, not a synchronisation
    b = await ctx.client("back")
    await b.connect(cid, clean=False, session_expiry=300)
    got = _published(await b.flush(via=p))
    if [g.payload for g in got] != [b"long"]:
        raise Fail("after 2 s offline: " + ", ".join(g.describe() for g in got))
    left = got[0].prop(wire.MESSAGE_EXPIRY_INTERVAL)
    if not isinstance(left, int) or not 1 <= left <= 59:
        raise Fail(f"Message Expiry Interval after 2 s of 60: {left!r}")


@case5(
    "v5-message-expiry-online",
    "MQTT-3.3.2-6",
    title="Message Expiry 60 to a connected subscriber: delivered with at most 60 s left",
)
async def expiry_online(ctx: Context) -> None:
    topic = ctx.topic("e")
    s, p = await _pair(ctx, topic, 1)
    await p.publish(topic, b"e", qos=1, properties=[(wire.MESSAGE_EXPIRY_INTERVAL, 60)])
    left = (await s.publishes(1))[0].prop(wire.MESSAGE_EXPIRY_INTERVAL)
    if not isinstance(left, int) or not 1 <= left <= 60:
        raise Fail(f"Message Expiry Interval 60 arrived as {left!r}")


@case5(
    "v5-message-expiry-retained",
    "MQTT-3.3.2-5",
    "MQTT-3.3.2-6",
    title="Retained messages with expiry 1 s and 60 s: 2 s later only the second is sent, with "
    "at most 59 s left",
)
async def expiry_retained(ctx: Context) -> None:
    short, long_ = ctx.topic("rs"), ctx.topic("rl")
    p = await ctx.connected("pub")
    await p.publish(
        short, b"short", qos=1, retain=True, properties=[(wire.MESSAGE_EXPIRY_INTERVAL, 1)]
    )
    await p.publish(
        long_, b"long", qos=1, retain=True, properties=[(wire.MESSAGE_EXPIRY_INTERVAL, 60)]
    )
    await trio.sleep(2.1)  # the message expiry under test, not a synchronisation
    s = await ctx.connected("late")
    await s.subscribe([(short, 1), (long_, 1)])
    got = _published(await s.flush())
    if [g.payload for g in got] != [b"long"]:
        raise Fail("retained after 2 s: " + ", ".join(g.describe() for g in got))
    left = got[0].prop(wire.MESSAGE_EXPIRY_INTERVAL)
    if not isinstance(left, int) or not 1 <= left <= 59:
        raise Fail(f"retained message's Message Expiry Interval after 2 s of 60: {left!r}")


# ---- topic aliases -----------------------------------------------------------------------------


async def _alias_max(ctx: Context) -> int:
    probe = await ctx.client("probe")
    tam = (await probe.connect()).prop(wire.TOPIC_ALIAS_MAXIMUM, 0)
    await probe.disconnect()
    assert isinstance(tam, int)
    return tam


@case5(
    "v5-topic-alias-client-mapping",
    "MQTT-3.3.2-12",
    "MQTT-3.3.2-3",
    title="Topic Alias 1 ... Topic Alias Maximum set up with their topics, then used alone: "
    "delivered on the right topics; an alias can be re-mapped",
)
async def alias_mapping(ctx: Context) -> None:
    tam = await _alias_max(ctx)
    if not tam:
        raise Skip("the broker announces no Topic Alias Maximum (0: it takes no aliases)")
    n = min(tam, 20)
    base = ctx.topic("al")
    s = await ctx.connected("sub")
    await s.subscribe([(f"{base}/#", 0)])
    p = await ctx.connected("pub")
    for i in range(1, n + 1):
        await p.publish(f"{base}/{i}", b"set", properties=[(wire.TOPIC_ALIAS, i)])
    for i in range(1, n + 1):
        await p.publish("", f"use{i}".encode(), properties=[(wire.TOPIC_ALIAS, i)])
    await p.publish(f"{base}/new", b"remap", properties=[(wire.TOPIC_ALIAS, 1)])
    await p.publish("", b"remapped", properties=[(wire.TOPIC_ALIAS, 1)])
    got = [(g.topic, g.payload) for g in await s.publishes(2 * n + 2)]
    want = [(f"{base}/{i}".encode(), b"set") for i in range(1, n + 1)]
    want += [(f"{base}/{i}".encode(), f"use{i}".encode()) for i in range(1, n + 1)]
    want += [(f"{base}/new".encode(), b"remap"), (f"{base}/new".encode(), b"remapped")]
    if got != want:
        bad = next(x for x in zip(got, want, strict=True) if x[0] != x[1])
        raise Fail(f"received {bad[0]}, expected {bad[1]}")


@case5(
    "v5-topic-alias-0",
    "MQTT-3.3.2-8",
    "MQTT-4.13.1-1",
    title="PUBLISH with Topic Alias 0: a Protocol Error, closed (DISCONNECT 0x94)",
)
async def alias_0(ctx: Context) -> None:
    c = await ctx.connected()
    await c.send(wire.publish(ctx.topic("a"), b"x", version=5, properties=[(wire.TOPIC_ALIAS, 0)]))
    await c.expect_closed(reasons={wire.TOPIC_ALIAS_INVALID})


@case5(
    "v5-topic-alias-above-maximum",
    "MQTT-4.13.1-1",
    title="Topic Alias above the broker's Topic Alias Maximum: closed (DISCONNECT 0x94)",
)
async def alias_above(ctx: Context) -> None:
    tam = await _alias_max(ctx)
    c = await ctx.connected()
    props: list[wire.PropertyIn] = [(wire.TOPIC_ALIAS, tam + 1)]
    await c.send(wire.publish(ctx.topic("a"), b"x", version=5, properties=props))
    await c.expect_closed(reasons={wire.TOPIC_ALIAS_INVALID})


@case5(
    "v5-topic-alias-unknown",
    "MQTT-4.13.1-1",
    "MQTT-3.3.2-12",
    title="Empty Topic Name with an alias never set up: a Protocol Error, closed (DISCONNECT 0x82)",
)
async def alias_unknown(ctx: Context) -> None:
    if not await _alias_max(ctx):
        raise Skip("the broker announces no Topic Alias Maximum")
    c = await ctx.connected()
    await c.send(wire.publish("", b"x", version=5, properties=[(wire.TOPIC_ALIAS, 1)]))
    await c.expect_closed(reasons={wire.PROTOCOL_ERROR})


@case5(
    "v5-topic-alias-not-carried-forward",
    "MQTT-3.3.2-7",
    title="An alias set on one connection is unknown on the next one of the same session: closed",
)
async def alias_not_carried(ctx: Context) -> None:
    if not await _alias_max(ctx):
        raise Skip("the broker announces no Topic Alias Maximum")
    cid = ctx.cid("al")
    a = await ctx.client("first")
    await a.connect(cid, clean=False, session_expiry=60)
    await a.publish(ctx.topic("x"), b"set", qos=1, properties=[(wire.TOPIC_ALIAS, 1)])
    await a.disconnect()
    b = await ctx.client("second")
    await b.connect(cid, clean=False, session_expiry=60)
    await b.send(wire.publish("", b"use", version=5, properties=[(wire.TOPIC_ALIAS, 1)]))
    await b.expect_closed(reasons={wire.PROTOCOL_ERROR})


@case5(
    "v5-topic-alias-server-within-maximum",
    "MQTT-3.1.2-26",
    "MQTT-3.3.2-11",
    "MQTT-3.3.2-3",
    title="Subscriber with Topic Alias Maximum 2: any alias the broker uses is 1 or 2 and maps "
    "to the right topic (10 messages on 3 topics)",
)
async def alias_server(ctx: Context) -> None:
    base = ctx.topic("sa")
    s, p = await _pair(ctx, f"{base}/#", 0, properties=[(wire.TOPIC_ALIAS_MAXIMUM, 2)])
    sent = [(f"{base}/{'abc'[i % 3]}", f"m{i}".encode()) for i in range(10)]
    for t, payload in sent:
        await p.publish(t, payload, qos=1)
    got = [(g.topic, g.payload) for g in await s.publishes(10)]
    if got != [(t.encode(), payload) for t, payload in sent]:
        raise Fail(f"received {got}")
    ctx.notes.append(f"the broker used {len(s.aliases)} topic alias(es)")


@case5(
    "v5-topic-alias-none-without-maximum",
    "MQTT-3.1.2-27",
    title="Subscriber without Topic Alias Maximum: no Topic Alias in 10 messages on one topic",
)
async def alias_none(ctx: Context) -> None:
    topic = ctx.topic("na")
    s, p = await _pair(ctx, topic, 0)
    for i in range(10):
        await p.publish(topic, f"m{i}".encode(), qos=1)
    await s.publishes(10)  # an alias fails the case as it arrives (Client._check5)


# ---- Receive Maximum ---------------------------------------------------------------------------


@case5(
    "v5-receive-maximum-respected",
    "MQTT-3.3.4-9",
    "MQTT-4.9.0-1",
    "MQTT-4.9.0-2",
    title="Receive Maximum 2: at most 2 unacknowledged QoS 1/2 deliveries; each ack lets one "
    "more through, until all 6 arrived",
)
async def receive_max(ctx: Context) -> None:
    topic = ctx.topic("rm")
    s, p = await _pair(ctx, topic, 2, properties=[(wire.RECEIVE_MAXIMUM, 2)])
    s.auto_ack = False
    for i in range(6):
        await p.publish(topic, f"m{i}".encode(), qos=1 + i % 2)
    got: list[wire.Packet] = []
    while len(got) < 6:
        # On one process the broker routed every message before this PINGREQ, so any
        # delivery beyond the quota comes before the PINGRESP (and fails the case as it
        # arrives: the client checks its Receive Maximum on every packet).
        await s.ping()
        window = [x for x in s.backlog if x.type == wire.PUBLISH]
        s.backlog = [x for x in s.backlog if x.type != wire.PUBLISH]
        if not window:
            # A broker spread over nodes may deliver a message published on another node
            # after the PINGRESP: wait for it (the case's timeout fails it if none comes).
            try:
                window = await s.publishes(1)
            except Fail:
                raise Fail(
                    f"after {len(got)} deliveries and their acks nothing more arrived"
                ) from None
        for pub in window:
            assert pub.pid is not None
            if pub.qos == 1:
                await s.send(wire.puback(pub.pid))
            else:
                await s.send(wire.pubrec(pub.pid))
                await s.expect_type(wire.PUBREL, pub.pid)
                await s.send(wire.pubcomp(pub.pid))
        got += window
    if [g.payload for g in got] != [f"m{i}".encode() for i in range(6)]:
        raise Fail(f"received {[g.payload for g in got]}")


@case5(
    "v5-receive-maximum-other-packets",
    "MQTT-3.3.4-10",
    "MQTT-4.9.0-3",
    title="Receive Maximum 1 used up: PINGRESP, SUBACK, UNSUBACK and PUBACK still come at once",
)
async def receive_max_other(ctx: Context) -> None:
    topic = ctx.topic("rm")
    s, p = await _pair(ctx, topic, 1, properties=[(wire.RECEIVE_MAXIMUM, 1)])
    s.auto_ack = False
    await p.publish(topic, b"m0", qos=1)
    await p.publish(topic, b"m1", qos=1)
    first = (await s.publishes(1))[0]
    await s.ping()
    await s.subscribe([(ctx.topic("other"), 1)])
    await s.unsubscribe([ctx.topic("other")])
    await s.publish(ctx.topic("own"), b"mine", qos=1)
    assert first.pid is not None
    await s.send(wire.puback(first.pid))
    second = await s.wait_for(lambda x: x.type == wire.PUBLISH and x.payload == b"m1", "m1")
    assert second.pid is not None
    await s.send(wire.puback(second.pid))


@case5(
    "v5-receive-maximum-exceeded",
    "MQTT-4.13.1-1",
    title="More unreleased QoS 2 PUBLISHes than the broker's Receive Maximum: DISCONNECT 0x93, "
    "closed",
)
async def receive_max_exceeded(ctx: Context) -> None:
    c = await ctx.client()
    rm = (await c.connect()).prop(wire.RECEIVE_MAXIMUM, 65535)
    assert isinstance(rm, int)
    if rm > 1000:
        raise Skip(f"the broker's Receive Maximum is {rm}")
    c.requires(qos=2)
    topic = ctx.topic("rmx")
    await c.send(b"".join(wire.publish(topic, b"x", 2, pid=i, version=5) for i in range(1, rm + 2)))
    seen = await c.expect_closed(allow_packets=True, reasons={wire.RECEIVE_MAXIMUM_EXCEEDED})
    if any(x.type not in (wire.PUBREC, wire.DISCONNECT) for x in seen):
        raise Fail("before closing: " + ", ".join(x.describe() for x in seen))


# ---- the limits the broker announces --------------------------------------------------------


async def _announced(ctx: Context, ident: int) -> wire.Value | None:
    probe = await ctx.client("probe")
    value = (await probe.connect()).prop(ident)
    await probe.disconnect()
    return value


@case5(
    "v5-publish-qos-above-maximum",
    "MQTT-4.13.1-1",
    title="PUBLISH above the announced Maximum QoS: closed (DISCONNECT 0x9B)",
)
async def qos_above_maximum(ctx: Context) -> None:
    max_qos = await _announced(ctx, wire.MAXIMUM_QOS)
    if not isinstance(max_qos, int):
        raise Skip("the broker announces no Maximum QoS (it supports QoS 2)")
    c = await ctx.connected()
    await c.send(wire.publish(ctx.topic("q"), b"x", max_qos + 1, pid=1, version=5))
    await c.expect_closed(reasons={wire.QOS_NOT_SUPPORTED})


@case5(
    "v5-publish-retain-unavailable",
    "MQTT-4.13.1-1",
    title="Retained PUBLISH when the broker announces Retain Available 0: closed (DISCONNECT 0x9A)",
)
async def retain_unavailable(ctx: Context) -> None:
    if await _announced(ctx, wire.RETAIN_AVAILABLE) != 0:
        raise Skip("the broker supports retained messages (Retain Available absent or 1)")
    c = await ctx.connected()
    await c.send(wire.publish(ctx.topic("r"), b"x", 0, True, version=5))
    await c.expect_closed(reasons={wire.RETAIN_NOT_SUPPORTED})


@case5(
    "v5-packet-above-server-maximum",
    "MQTT-4.13.1-1",
    title="A PUBLISH one byte over the announced Maximum Packet Size: closed (DISCONNECT 0x95)",
)
async def above_server_maximum(ctx: Context) -> None:
    limit = await _announced(ctx, wire.MAXIMUM_PACKET_SIZE)
    if not isinstance(limit, int) or limit > 4 * 1024 * 1024:
        raise Skip(f"the broker announces no Maximum Packet Size of 4 MiB or less ({limit!r})")
    c = await ctx.connected()
    topic = ctx.topic("big")
    overhead = len(wire.publish(topic, b"", version=5))
    payload = b"x" * (limit + 1 - overhead)
    data = wire.publish(topic, payload, version=5)
    if len(data) != limit + 1:  # the Remaining Length took another byte: one less payload
        data = wire.publish(topic, payload[: len(payload) - (len(data) - limit - 1)], version=5)
    await c.send(data)
    await c.expect_closed(reasons={wire.PACKET_TOO_LARGE})


# ---- Maximum Packet Size ----------------------------------------------------------------------


@case5(
    "v5-maximum-packet-size-respected",
    "MQTT-3.1.2-24",
    "MQTT-3.1.2-25",
    title="Subscriber with Maximum Packet Size 128: a 200-byte message and one whose PUBLISH "
    "would be 129 bytes are dropped (not sent, not re-sent on reconnect); the next arrives",
)
async def max_packet_size(ctx: Context) -> None:
    cid = ctx.cid("mps")
    topic = ctx.topic("mps")
    s = await ctx.client("sub")
    limit: list[wire.PropertyIn] = [(wire.MAXIMUM_PACKET_SIZE, 128)]
    await s.connect(cid, clean=False, session_expiry=300, properties=limit)
    await s.subscribe([(topic, 1)])
    # The QoS 1 PUBLISH the subscriber would get, without properties: one byte over the limit.
    over = b"O" * (129 - len(wire.publish(topic, b"", 1, pid=1, version=5)))
    p = await ctx.connected("pub")
    await p.publish(topic, b"B" * 200, qos=1)
    await p.publish(topic, over, qos=1)
    await p.publish(topic, b"small", qos=1)
    got = (await s.publishes(1))[0]  # anything over 128 bytes fails the case as it arrives
    if got.payload != b"small":
        raise Fail(f"got {got.describe()}")
    await s.disconnect()
    b = await ctx.client("back")
    await b.connect(cid, clean=False, session_expiry=300, properties=limit)
    before = _published(await b.flush(via=p))
    if before:
        raise Fail("re-sent after reconnect: " + before[0].describe())


@case5(
    "v5-acks-within-maximum-packet-size",
    "MQTT-3.4.2-2",
    "MQTT-3.4.2-3",
    "MQTT-3.5.2-2",
    "MQTT-3.5.2-3",
    "MQTT-3.6.2-2",
    "MQTT-3.6.2-3",
    "MQTT-3.7.2-2",
    "MQTT-3.7.2-3",
    "MQTT-3.9.2-1",
    "MQTT-3.9.2-2",
    "MQTT-3.11.2-1",
    "MQTT-3.11.2-2",
    "MQTT-3.1.2-24",
    title="Maximum Packet Size 12: PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK (also "
    "failures) leave out any Reason String or User Property",
)
async def acks_small(ctx: Context) -> None:
    c = await ctx.client()
    await c.connect(
        properties=[(wire.MAXIMUM_PACKET_SIZE, 16), (wire.REQUEST_PROBLEM_INFORMATION, 1)]
    )
    # A topic short enough for a QoS 2 PUBLISH to fit in 16 bytes, so the broker sends PUBREL.
    short = ctx.run_id[:4]
    await c.subscribe([(short, 2)])
    await c.publish(ctx.topic("nobody"), b"x", qos=1)
    await c.publish(ctx.topic("nobody"), b"x", qos=2)
    await c.send(wire.pubrel(999))
    await c.expect_type(wire.PUBCOMP, 999)
    await c.unsubscribe([ctx.topic("never")])
    c.auto_ack = False
    await c.publish(short, b"x", qos=2)
    pub = (await c.publishes(1))[0]
    assert pub.pid is not None
    await c.send(wire.pubrec(pub.pid))
    await c.expect_type(wire.PUBREL, pub.pid)
    await c.send(wire.pubcomp(pub.pid))
    await c.ping()


@case5(
    "v5-varint-minimal-encodings",
    "MQTT-1.5.5-1",
    title="Subscription Identifier 16384 and a 300-byte payload: every Variable Byte Integer the "
    "broker sends is minimal",
)
async def varint_minimal(ctx: Context) -> None:
    topic = ctx.topic("vbi")
    s = await ctx.connected("sub")
    await s.subscribe([(topic, 1)], properties=[(wire.SUBSCRIPTION_IDENTIFIER, 16384)])
    p = await ctx.connected("pub")
    await p.publish(topic, b"v" * 300, qos=1)
    got = (await s.publishes(1))[0]  # a non-minimal encoding fails the case as it arrives
    if got.props_all(wire.SUBSCRIPTION_IDENTIFIER) != [16384]:
        raise Fail(f"got {got.describe()}")


@case5(
    "v5-publish-qos2-refused-pid-is-new",
    "MQTT-4.3.3-9",
    title="QoS 2 PUBLISH to an ACL-denied topic (needs --denied-topic): after PUBREC >= 0x80 "
    "the same pid starts a new message",
)
async def refused_pid_new(ctx: Context) -> None:
    topic = ctx.target.denied_topic
    if topic is None:
        raise Skip("needs --denied-topic: a topic the ACL forbids this identity to publish to")
    c = await ctx.connected()
    c.requires(qos=2)
    await c.send(wire.publish(topic, b"denied", 2, pid=31, version=5))
    rec = await c.expect_type(wire.PUBREC, 31)
    if (rec.reason or 0) < 0x80:
        raise Skip(f"the broker accepts the denied PUBLISH with {rec.describe()}")
    await c.send(wire.publish(topic, b"denied", 2, pid=31, version=5))
    again = await c.expect_type(wire.PUBREC, 31)
    if (again.reason or 0) < 0x80:
        raise Fail(f"the same pid after PUBREC >= 0x80: {again.describe()}")
