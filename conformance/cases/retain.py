"""Retained messages (3.3.1-5 … -12)."""

from __future__ import annotations

from conformance import wire
from conformance.core import Context, Fail, case


async def _retained_for(ctx: Context, topic_filter: str, qos: int = 2) -> list[wire.Packet]:
    """Subscribe a fresh client; return the PUBLISHes that arrive before a marker."""
    s = await ctx.connected("late")
    await s.ensure_marker()
    await s.subscribe([(topic_filter, qos)])
    return [g for g in await s.flush() if g.type == wire.PUBLISH]


@case(
    "retain-stored-with-qos",
    "MQTT-3.3.1-5",
    "MQTT-3.3.1-8",
    title="Retained QoS 2 and QoS 1 messages are stored with their QoS and sent with RETAIN 1",
)
async def stored_qos(ctx: Context) -> None:
    t1, t2 = ctx.topic("r/q1"), ctx.topic("r/q2")
    p = await ctx.connected("pub")
    await p.publish(t1, b"one", qos=1, retain=True)
    await p.publish(t2, b"two", qos=2, retain=True)
    got = sorted(await _retained_for(ctx, ctx.topic("r/+")), key=lambda g: g.payload)
    if [(g.topic, g.payload, g.qos, g.retain) for g in got] != [
        (t1.encode(), b"one", 1, True),
        (t2.encode(), b"two", 2, True),
    ]:
        raise Fail("new subscriber got: " + ", ".join(g.describe() for g in got))


@case(
    "retain-last-per-topic",
    "MQTT-3.3.1-6",
    "MQTT-3.3.1-8",
    title="A new wildcard subscription gets the last retained message of each matching topic",
)
async def last_per_topic(ctx: Context) -> None:
    ta, tb = ctx.topic("r/a"), ctx.topic("r/b")
    p = await ctx.connected("pub")
    await p.publish(ta, b"a-old", qos=1, retain=True)
    await p.publish(ta, b"a-new", qos=1, retain=True)
    await p.publish(tb, b"b", qos=0, retain=True)
    await p.ping()  # the QoS 0 PUBLISH has been read before we subscribe
    got = await _retained_for(ctx, ctx.topic("r/#"), qos=1)
    pairs = sorted((g.topic, g.payload) for g in got)
    if pairs != [(ta.encode(), b"a-new"), (tb.encode(), b"b")]:
        raise Fail(f"retained delivered: {pairs}")
    if not all(g.retain for g in got):
        raise Fail("a message sent because of a new subscription has RETAIN 0")


@case(
    "retain-qos0-replaces",
    "MQTT-3.3.1-7",
    title="A retained QoS 0 message replaces the previous one (which must never come back)",
)
async def qos0_replaces(ctx: Context) -> None:
    t = ctx.topic("r0")
    p = await ctx.connected("pub")
    await p.publish(t, b"old-qos1", qos=1, retain=True)
    await p.publish(t, b"new-qos0", qos=0, retain=True)
    await p.ping()
    got = [g.payload for g in await _retained_for(ctx, t)]
    if got == [b"new-qos0"]:
        return
    if got == []:
        ctx.choice("the retained QoS 0 message was discarded (allowed)")
        return
    raise Fail(f"new subscriber got {got}")


@case(
    "retain-flag-0-for-live-messages",
    "MQTT-3.3.1-9",
    title="A retained PUBLISH forwarded to an existing subscription arrives with RETAIN 0",
)
async def live_retain_0(ctx: Context) -> None:
    t = ctx.topic("live")
    s = await ctx.connected("sub")
    await s.subscribe([(t, 1)])
    p = await ctx.connected("pub")
    await p.publish(t, b"live", qos=1, retain=True)
    got = (await s.publishes(1))[0]
    if got.retain or got.payload != b"live":
        raise Fail(f"existing subscriber got {got.describe()}")


@case(
    "retain-empty-deletes",
    "MQTT-3.3.1-10",
    title="Empty retained PUBLISH is forwarded normally and removes the retained message",
)
async def empty_deletes(ctx: Context) -> None:
    t = ctx.topic("del")
    p = await ctx.connected("pub")
    await p.publish(t, b"to-delete", qos=1, retain=True)
    s = await ctx.connected("sub")
    await s.subscribe([(t, 1)])
    await s.publishes(1, "retained message")
    await p.publish(t, b"", qos=1, retain=True)
    got = (await s.publishes(1, "empty message"))[0]
    if got.payload != b"" or got.retain:
        raise Fail(f"existing subscriber got {got.describe()}")
    late = await _retained_for(ctx, t)
    if late:
        raise Fail("retained message still delivered after deletion: " + late[0].describe())


@case(
    "retain-empty-not-stored",
    "MQTT-3.3.1-11",
    title="An empty retained PUBLISH on a fresh topic is not stored",
)
async def empty_not_stored(ctx: Context) -> None:
    t = ctx.topic("empty")
    p = await ctx.connected("pub")
    await p.publish(t, b"", qos=1, retain=True)
    late = await _retained_for(ctx, t)
    if late:
        raise Fail("a zero-byte retained message was stored: " + late[0].describe())


@case(
    "retain-0-neither-stores-nor-removes",
    "MQTT-3.3.1-12",
    title="RETAIN 0 PUBLISH neither stores a message nor replaces/removes the retained one",
)
async def retain0(ctx: Context) -> None:
    kept, fresh = ctx.topic("k/kept"), ctx.topic("k/fresh")
    p = await ctx.connected("pub")
    await p.publish(kept, b"retained", qos=1, retain=True)
    await p.publish(kept, b"not-retained", qos=1)
    await p.publish(kept, b"", qos=1)
    await p.publish(fresh, b"not-retained", qos=1)
    got = [(g.topic, g.payload) for g in await _retained_for(ctx, ctx.topic("k/+"))]
    if got != [(kept.encode(), b"retained")]:
        raise Fail(f"new subscriber got {got}")
