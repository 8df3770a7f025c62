"""Will messages (3.1.2-8 … -17, 3.14.4-3)."""

from __future__ import annotations

from conformance import wire
from conformance.core import Client, Context, Fail, case


async def _watch(ctx: Context, topic: str) -> Client:
    s = await ctx.connected("watch")
    await s.ensure_marker()
    await s.subscribe([(topic, 1)])
    return s


@case(
    "will-published-on-network-close",
    "MQTT-3.1.2-8",
    "MQTT-3.1.2-16",
    title="Closing the socket without DISCONNECT publishes the Will (RETAIN 0, not stored)",
)
async def will_on_close(ctx: Context) -> None:
    wt = ctx.topic("will")
    s = await _watch(ctx, wt)
    c = await ctx.client("dying")
    await c.connect(will=(wt, b"gone", 1))
    await c.aclose()
    got = (await s.publishes(1, "Will message"))[0]
    if (got.topic, got.payload, got.qos, got.retain) != (wt.encode(), b"gone", 1, False):
        raise Fail(f"Will arrived as {got.describe()}")
    late = await _watch(ctx, wt)
    before = [g for g in await late.flush() if g.type == wire.PUBLISH]
    if before:
        raise Fail("a Will with Will Retain 0 was retained: " + before[0].describe())


@case(
    "will-retained",
    "MQTT-3.1.2-17",
    "MQTT-3.1.2-8",
    title="Will Retain 1: the Will is published as a retained message",
)
async def will_retained(ctx: Context) -> None:
    wt = ctx.topic("will")
    ctx.retained_topics.add(wt)
    c = await ctx.client("dying")
    await c.connect(will=(wt, b"retained-will", 0, True))
    s = await _watch(ctx, wt)
    await c.aclose()
    await s.publishes(1, "Will message")
    late = await ctx.connected("late")
    await late.subscribe([(wt, 1)])
    got = (await late.publishes(1, "retained Will"))[0]
    if got.payload != b"retained-will" or not got.retain:
        raise Fail(f"late subscriber got {got.describe()}")


@case(
    "will-not-published-after-disconnect",
    "MQTT-3.14.4-3",
    "MQTT-3.1.2-10",
    title="DISCONNECT discards the Will: nothing is published when the socket then closes",
)
async def will_disconnect(ctx: Context) -> None:
    wt = ctx.topic("will")
    s = await _watch(ctx, wt)
    c = await ctx.client("polite")
    await c.connect(will=(wt, b"must-not"))
    await c.disconnect()
    # A second connection with the same id ends abruptly: the discarded Will stays gone.
    again = await ctx.client("again")
    await again.connect(c.client_id)
    await again.aclose()
    p = await ctx.connected("pub")
    await p.ping()
    before = [g for g in await s.flush(via=p) if g.type == wire.PUBLISH]
    if before:
        raise Fail("Will published after DISCONNECT: " + before[0].describe())


@case(
    "will-flag-0-nothing-published",
    "MQTT-3.1.2-12",
    title="Will Flag 0: an abrupt close publishes nothing",
)
async def no_will(ctx: Context) -> None:
    base = ctx.topic("nw")
    s = await _watch(ctx, f"{base}/#")
    c = await ctx.client("nowill")
    await c.connect()
    await c.publish(f"{base}/alive", b"hello", qos=1)
    await c.aclose()
    got = await s.publishes(1)
    if got[0].payload != b"hello":
        raise Fail(f"got {got[0].describe()}")
    before = [g for g in await s.flush() if g.type == wire.PUBLISH]
    if before:
        raise Fail("something was published for a client without Will: " + before[0].describe())


@case(
    "will-published-once",
    "MQTT-3.1.2-10",
    "MQTT-3.1.2-8",
    title="A Will is published once; the resumed session (no Will) ends without another",
)
async def will_once(ctx: Context) -> None:
    wt = ctx.topic("will")
    s = await _watch(ctx, wt)
    cid = ctx.cid("w")
    c = await ctx.client("dying")
    await c.connect(cid, clean=False, will=(wt, b"once", 1))
    await c.aclose()
    await s.publishes(1, "Will message")
    c2 = await ctx.client("back")
    await c2.connect(cid, clean=False)
    await c2.aclose()
    p = await ctx.connected("pub")
    before = [g for g in await s.flush(via=p) if g.type == wire.PUBLISH]
    if before:
        raise Fail("the Will was published again: " + before[0].describe())


@case(
    "will-on-keepalive-timeout",
    "MQTT-3.1.2-8",
    "MQTT-3.1.2-24",
    title="A client that goes silent past 1.5 x Keep Alive is closed and its Will published",
)
async def will_keepalive(ctx: Context) -> None:
    wt = ctx.topic("will")
    s = await _watch(ctx, wt)
    c = await ctx.client("silent")
    await c.connect(keepalive=1, will=(wt, b"timeout"))
    await c.expect_closed(grace=1.5)
    got = (await s.publishes(1, "Will message"))[0]
    if got.payload != b"timeout":
        raise Fail(f"got {got.describe()}")


@case(
    "will-on-protocol-violation",
    "MQTT-3.1.2-8",
    "MQTT-4.8.0-1",
    title="A connection closed for a protocol violation (second CONNECT) publishes its Will",
)
async def will_violation(ctx: Context) -> None:
    wt = ctx.topic("will")
    s = await _watch(ctx, wt)
    c = await ctx.client("bad")
    await c.connect(will=(wt, b"violation"))
    await c.send(wire.connect(ctx.cid()))
    await c.expect_closed()
    got = (await s.publishes(1, "Will message"))[0]
    if got.payload != b"violation":
        raise Fail(f"got {got.describe()}")
