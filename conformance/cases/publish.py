"""PUBLISH flows: QoS 0/1/2 as receiver and sender, DUP, packet identifiers, ordering."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from conformance import wire
from conformance.core import Context, Fail, case


@case(
    "publish-qos0-no-response",
    "MQTT-3.3.4-1",
    title="QoS 0 PUBLISH gets no response (proved by a later marker)",
)
async def qos0_no_response(ctx: Context) -> None:
    c = await ctx.connected()
    await c.ensure_marker()
    await c.publish(ctx.topic("nobody"), b"x", qos=0)
    before = await c.flush()
    if before:
        raise Fail("QoS 0 PUBLISH was answered with " + ", ".join(p.describe() for p in before))


@case(
    "publish-qos0-delivery-bytes",
    "MQTT-2.3.1-5",
    "MQTT-4.3.1-1",
    "MQTT-3.3.1-2",
    "MQTT-3.3.2-3",
    title="QoS 0 delivery is exactly 30 len topic payload: QoS 0, DUP 0, no packet identifier",
)
async def qos0_bytes(ctx: Context) -> None:
    topic = ctx.topic("q0")
    s = await ctx.connected("sub")
    await s.subscribe([(topic, 0)])
    p = await ctx.connected("pub")
    await p.publish(topic, b"payload-0", qos=0)
    got = (await s.publishes(1))[0]
    if got.raw != wire.publish(topic, b"payload-0"):
        raise Fail(f"got {got.raw.hex(' ')}, expected {wire.publish(topic, b'payload-0').hex(' ')}")


@case(
    "publish-downgrade-dup-cleared",
    "MQTT-3.3.1-2",
    "MQTT-3.3.1-3",
    title="QoS 1 PUBLISH with DUP 1 to a QoS 0 subscriber arrives with DUP 0, QoS 0",
)
async def dup_cleared_qos0(ctx: Context) -> None:
    topic = ctx.topic("d")
    s = await ctx.connected("sub")
    await s.subscribe([(topic, 0)])
    p = await ctx.connected("pub")
    await p.publish(topic, b"dup", qos=1, dup=True)
    got = (await s.publishes(1))[0]
    if got.raw != wire.publish(topic, b"dup"):
        raise Fail(f"got {got.describe()}")


@case(
    "publish-dup-not-propagated",
    "MQTT-3.3.1-3",
    "MQTT-4.3.2-1",
    title="QoS 1 PUBLISH sent with DUP 1 reaches a QoS 1 subscriber with DUP 0",
)
async def dup_not_propagated(ctx: Context) -> None:
    topic = ctx.topic("d")
    s = await ctx.connected("sub")
    await s.subscribe([(topic, 1)])
    p = await ctx.connected("pub")
    await p.publish(topic, b"dup", qos=1, dup=True)
    got = (await s.publishes(1))[0]
    if got.dup or got.qos != 1 or not got.pid:
        raise Fail(f"got {got.describe()}")


@case(
    "publish-qos1-pid-reuse-is-new",
    "MQTT-4.3.2-2",
    title="After PUBACK, a PUBLISH reusing the pid (even DUP 1) is a new message: delivered again",
)
async def qos1_reuse(ctx: Context) -> None:
    topic = ctx.topic("r")
    s = await ctx.connected("sub")
    await s.subscribe([(topic, 1)])
    p = await ctx.connected("pub")
    await p.send(wire.publish(topic, b"one", qos=1, pid=9))
    await p.expect_bytes(wire.puback(9), "PUBACK")
    await p.send(wire.publish(topic, b"two", qos=1, pid=9, dup=True))
    await p.expect_bytes(wire.puback(9), "PUBACK")
    got = await s.publishes(2)
    if [g.payload for g in got] != [b"one", b"two"]:
        raise Fail("delivered: " + ", ".join(g.describe() for g in got))


@case(
    "publish-qos2-duplicate-before-pubrel",
    "MQTT-4.3.3-2",
    title="QoS 2 PUBLISH re-sent before PUBREL gets PUBREC again and is delivered only once",
)
async def qos2_dedup(ctx: Context) -> None:
    topic = ctx.topic("q2")
    s = await ctx.connected("sub")
    await s.subscribe([(topic, 2)])
    p = await ctx.connected("pub")
    await p.send(wire.publish(topic, b"once", qos=2, pid=77))
    await p.expect_bytes(wire.pubrec(77), "PUBREC")
    await p.send(wire.publish(topic, b"once", qos=2, pid=77, dup=True))
    await p.expect_bytes(wire.pubrec(77), "second PUBREC")
    await p.send(wire.pubrel(77))
    await p.expect_bytes(wire.pubcomp(77), "PUBCOMP")
    got = await s.flush(via=p)
    copies = [g for g in got if g.type == wire.PUBLISH and g.payload == b"once"]
    if len(copies) != 1:
        raise Fail(f"subscriber received {len(copies)} copies")
    # After PUBCOMP, the same packet identifier starts a new publication.
    await p.publish(topic, b"again", qos=2)  # uses the client's next pid
    await p.send(wire.publish(topic, b"new", qos=2, pid=77))
    await p.expect_bytes(wire.pubrec(77), "PUBREC")
    await p.send(wire.pubrel(77))
    await p.expect_bytes(wire.pubcomp(77), "PUBCOMP")
    got = await s.flush(via=p)
    payloads = [g.payload for g in got if g.type == wire.PUBLISH]
    if payloads != [b"again", b"new"]:
        raise Fail(f"after PUBCOMP, pid 77 reuse delivered {payloads}")


@case(
    "publish-qos2-sender-flow",
    "MQTT-4.3.3-1",
    "MQTT-2.3.1-6",
    title="Broker as QoS 2 sender: PUBLISH QoS 2 DUP 0, PUBREC → PUBREL same pid, PUBCOMP ends it",
)
async def qos2_sender(ctx: Context) -> None:
    topic = ctx.topic("q2")
    s = await ctx.connected("sub")
    await s.subscribe([(topic, 2)])
    s.auto_ack = False
    p = await ctx.connected("pub")
    await p.publish(topic, b"x", qos=2)
    pub = (await s.publishes(1))[0]
    if pub.qos != 2 or pub.dup or not pub.pid:
        raise Fail(f"got {pub.describe()}")
    await s.send(wire.pubrec(pub.pid))
    await s.expect_bytes(wire.pubrel(pub.pid), "PUBREL")
    await s.send(wire.pubcomp(pub.pid))
    s.auto_ack = True
    before = await s.flush(via=p)
    if before:
        raise Fail("after PUBCOMP the broker sent " + ", ".join(b.describe() for b in before))


@case(
    "publish-outbound-pids-unique",
    "MQTT-2.3.1-4",
    "MQTT-4.3.2-1",
    "MQTT-4.3.3-1",
    title="Unacknowledged QoS 1/2 deliveries carry distinct non-zero packet identifiers",
)
async def outbound_pids(ctx: Context) -> None:
    topic = ctx.topic("ids")
    s = await ctx.connected("sub")
    await s.subscribe([(topic, 2)])
    s.auto_ack = False
    p = await ctx.connected("pub")
    for i in range(6):
        await p.publish(topic, f"m{i}".encode(), qos=1 + i % 2)
    got = await s.publishes(6)
    pids = [g.pid for g in got]
    if 0 in pids or None in pids or len(set(pids)) != len(pids):
        raise Fail(f"packet identifiers of in-flight deliveries: {pids}")
    if any(g.dup for g in got):
        raise Fail("first deliveries must have DUP 0")


@case(
    "publish-qos2-pubrel-order",
    "MQTT-4.6.0-4",
    title="Broker sends PUBRELs in the order the PUBRECs were received (3, 1, 2)",
)
async def pubrel_order(ctx: Context) -> None:
    topic = ctx.topic("o")
    s = await ctx.connected("sub")
    await s.subscribe([(topic, 2)])
    s.auto_ack = False
    p = await ctx.connected("pub")
    for i in range(3):
        await p.publish(topic, f"m{i}".encode(), qos=2)
    got = await s.publishes(3)
    order = [got[2].pid, got[0].pid, got[1].pid]
    for pid in order:
        assert pid is not None
        await s.send(wire.pubrec(pid))
    rels = [await s.expect_type(wire.PUBREL) for _ in range(3)]
    if [r.pid for r in rels] != order:
        raise Fail(f"PUBRECs sent for {order}, PUBRELs came for {[r.pid for r in rels]}")
    for pid in order:
        assert pid is not None
        await s.send(wire.pubcomp(pid))


# An acknowledgement of the wrong kind for a packet identifier the broker has in flight is a
# protocol violation ([MQTT-4.8.0-1]): a QoS 1 delivery ends only with PUBACK ([MQTT-4.3.2-1]),
# a QoS 2 delivery with PUBREC, then PUBCOMP after the broker's PUBREL ([MQTT-4.3.3-1]).
WRONG_ACKS = (
    ("publish-qos1-answered-by-pubrec", 1, wire.PUBREC, "PUBREC answers a QoS 1 delivery"),
    ("publish-qos1-answered-by-pubcomp", 1, wire.PUBCOMP, "PUBCOMP answers a QoS 1 delivery"),
    ("publish-qos2-answered-by-puback", 2, wire.PUBACK, "PUBACK answers a QoS 2 delivery"),
    ("publish-qos2-pubcomp-before-pubrec", 2, wire.PUBCOMP, "PUBCOMP before PUBREC for QoS 2"),
)


def _wrong_ack(qos: int, kind: int) -> Callable[[Context], Awaitable[None]]:
    async def run(ctx: Context) -> None:
        topic = ctx.topic("ack")
        s = await ctx.connected("sub")
        await s.subscribe([(topic, qos)])
        s.auto_ack = False
        p = await ctx.connected("pub")
        await p.publish(topic, b"x", qos=qos)
        pub = (await s.publishes(1))[0]
        if pub.qos != qos or not pub.pid:
            raise Fail(f"expected a QoS {qos} delivery, got {pub.describe()}")
        await s.send(wire.ack(kind, pub.pid))
        await s.expect_closed()

    return run


for _case_id, _qos, _kind, _what in WRONG_ACKS:
    case(
        _case_id,
        "MQTT-4.8.0-1",
        title=f"{_what} (same packet identifier): a protocol violation, closed",
    )(_wrong_ack(_qos, _kind))


async def _ordered(ctx: Context, qos: int, n: int = 30) -> None:
    topic = ctx.topic(f"ord{qos}")
    s = await ctx.connected("sub")
    await s.subscribe([(topic, qos)])
    p = await ctx.connected("pub")
    payloads = [f"{i:03d}".encode() for i in range(n)]
    # Pipelined: send every PUBLISH before reading any acknowledgement.
    data = b""
    for i, pl in enumerate(payloads):
        data += wire.publish(topic, pl, qos=qos, pid=i + 1 if qos else None)
    await p.send(data)
    if qos:
        for i in range(n):
            ack = await p.expect_type(wire.PUBACK if qos == 1 else wire.PUBREC, i + 1)
            if qos == 2:
                await p.send(wire.pubrel(ack.pid or 0))
    got = await s.publishes(n)
    if [g.payload for g in got] != payloads:
        raise Fail(f"QoS {qos} order received: {[g.payload.decode() for g in got]}")


@case(
    "order-qos0",
    "MQTT-4.6.0-5",
    "MQTT-4.6.0-6",
    title="30 pipelined QoS 0 messages reach a subscriber in the order they were published",
)
async def order_qos0(ctx: Context) -> None:
    await _ordered(ctx, 0)


@case(
    "order-qos1",
    "MQTT-4.6.0-5",
    "MQTT-4.6.0-6",
    title="30 pipelined QoS 1 messages reach a subscriber in the order they were published",
)
async def order_qos1(ctx: Context) -> None:
    await _ordered(ctx, 1)


@case(
    "order-qos2",
    "MQTT-4.6.0-5",
    "MQTT-4.6.0-6",
    title="10 pipelined QoS 2 messages reach a subscriber in the order they were published",
)
async def order_qos2(ctx: Context) -> None:
    await _ordered(ctx, 2, n=10)


@case(
    "publish-qos2-many-unreleased",
    "MQTT-4.3.3-2",
    "MQTT-4.5.0-1",
    title="30 QoS 2 PUBLISHes sent before any PUBREL: each PUBREC'd message is delivered",
)
async def many_unreleased(ctx: Context) -> None:
    await _ordered(ctx, 2, n=30)


@case(
    "publish-fanout-all-sessions",
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


@case(
    "transport-large-payload",
    "MQTT-7.1.1-1",
    title="A 256 KiB QoS 1 payload arrives byte-for-byte intact",
)
async def large_payload(ctx: Context) -> None:
    topic = ctx.topic("big")
    payload = bytes(range(256)) * 1024
    s = await ctx.connected("sub")
    await s.subscribe([(topic, 1)])
    p = await ctx.connected("pub")
    await p.publish(topic, payload, qos=1)
    got = (await s.publishes(1))[0]
    if got.payload != payload:
        raise Fail(f"payload of {len(got.payload)} bytes differs from the {len(payload)} sent")


@case(
    "transport-trickled-bytes",
    "MQTT-7.1.1-1",
    title="CONNECT and PUBLISH sent one byte per write are processed normally",
)
async def trickle(ctx: Context) -> None:
    topic = ctx.topic("tr")
    s = await ctx.connected("sub")
    await s.subscribe([(topic, 1)])
    c = await ctx.client("trickle")
    for b in wire.connect(ctx.cid()):
        await c.send(bytes([b]))
    await c.expect_bytes(wire.connack(False, 0), "CONNACK")
    for b in wire.publish(topic, b"slow", qos=1, pid=3):
        await c.send(bytes([b]))
    await c.expect_bytes(wire.puback(3), "PUBACK")
    got = (await s.publishes(1))[0]
    if got.payload != b"slow":
        raise Fail(f"got {got.describe()}")
