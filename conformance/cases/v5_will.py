"""MQTT 5.0 Will Messages: Will Properties, Will Delay Interval, DISCONNECT reason codes."""

from __future__ import annotations

import trio

from conformance import wire
from conformance.core import Client, Context, Fail, case5


async def _watch(ctx: Context, topic: str) -> Client:
    s = await ctx.connected("watch")
    await s.ensure_marker()
    await s.subscribe([(topic, 1)])
    return s


async def _nothing_on(s: Client, topic: str, what: str) -> None:
    """Nothing arrived on ``topic`` before a marker published now."""
    got = [g for g in await s.flush() if g.type == wire.PUBLISH and g.topic == topic.encode()]
    if got:
        raise Fail(f"{what}: " + got[0].describe())


@case5(
    "v5-will-published-on-network-close",
    "MQTT-3.1.2-7",
    "MQTT-3.1.2-8",
    "MQTT-3.1.2-14",
    title="Closing the socket without DISCONNECT publishes the Will, not retained",
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
    await _nothing_on(late, wt, "a Will with Will Retain 0 was retained")


@case5(
    "v5-will-retained",
    "MQTT-3.1.2-15",
    title="Will Retain 1: the Will is published as a retained message",
)
async def will_retained(ctx: Context) -> None:
    await ctx.requires(retain=True)
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


WILL_PROPS: list[wire.PropertyIn] = [
    (wire.PAYLOAD_FORMAT_INDICATOR, 1),
    (wire.CONTENT_TYPE, "text/plain; charset=utf-8"),
    (wire.RESPONSE_TOPIC, "reply/\u00e9/\ufeffx"),
    (wire.CORRELATION_DATA, b"\x00\x01\xff\xfe"),
    (wire.USER_PROPERTY, ("b", "2")),
    (wire.USER_PROPERTY, ("a", "1")),
    (wire.USER_PROPERTY, ("b", "")),
    (wire.USER_PROPERTY, ("\u00fc", "\U0001f600")),
]


@case5(
    "v5-will-properties-passed",
    "MQTT-3.1.3-10",
    "MQTT-3.3.2-4",
    "MQTT-3.3.2-15",
    "MQTT-3.3.2-16",
    "MQTT-3.3.2-17",
    "MQTT-3.3.2-18",
    "MQTT-3.3.2-20",
    title="Will Properties (format, content type, response topic, correlation data, four User "
    "Properties) arrive unaltered and in order",
)
async def will_props(ctx: Context) -> None:
    wt = ctx.topic("will")
    s = await _watch(ctx, wt)
    c = await ctx.client("dying")
    await c.connect(will=(wt, "caf\u00e9".encode(), 1), will_properties=WILL_PROPS)
    await c.aclose()
    got = (await s.publishes(1, "Will message"))[0]
    sent = [p for p in WILL_PROPS if p[0] != wire.USER_PROPERTY]
    for ident, value in sent:
        if got.prop(ident) != value:
            raise Fail(f"{wire.PROPERTIES[ident][0]} {value!r} arrived as {got.prop(ident)!r}")
    want = [v for k, v in WILL_PROPS if k == wire.USER_PROPERTY]
    if got.user_properties != want:
        raise Fail(f"Will User Properties {want} arrived as {got.user_properties}")


@case5(
    "v5-will-not-published-after-disconnect-0",
    "MQTT-3.14.4-3",
    "MQTT-3.1.2-8",
    "MQTT-3.1.2-10",
    title="DISCONNECT 0x00 discards the Will: nothing is published then, nor later",
)
async def will_disconnect(ctx: Context) -> None:
    wt = ctx.topic("will")
    s = await _watch(ctx, wt)
    c = await ctx.client("polite")
    await c.connect(will=(wt, b"must-not"))
    await c.disconnect(reason=wire.NORMAL_DISCONNECTION)
    # A second connection with the same id ends abruptly: the discarded Will stays gone.
    again = await ctx.client("again")
    await again.connect(c.client_id)
    await again.aclose()
    await _nothing_on(s, wt, "Will published after DISCONNECT 0x00")


@case5(
    "v5-will-disconnect-with-will-message",
    "MQTT-3.1.2-8",
    title="DISCONNECT 0x04 (Disconnect with Will Message): the Will is published",
)
async def will_disconnect_04(ctx: Context) -> None:
    wt = ctx.topic("will")
    s = await _watch(ctx, wt)
    c = await ctx.client("asks")
    await c.connect(will=(wt, b"asked-for", 1))
    await c.disconnect(reason=wire.DISCONNECT_WITH_WILL_MESSAGE)
    got = (await s.publishes(1, "Will message"))[0]
    if got.payload != b"asked-for":
        raise Fail(f"got {got.describe()}")


@case5(
    "v5-will-published-once",
    "MQTT-3.1.2-10",
    title="A Will is published once; the resumed session (no Will) ends without another",
)
async def will_once(ctx: Context) -> None:
    wt = ctx.topic("will")
    s = await _watch(ctx, wt)
    cid = ctx.cid("w")
    c = await ctx.client("dying")
    await c.connect(cid, clean=False, session_expiry=60, will=(wt, b"once", 1))
    await c.aclose()
    await s.publishes(1, "Will message")
    c2 = await ctx.client("back")
    await c2.connect(cid, clean=False, session_expiry=60)
    await c2.aclose()
    await _nothing_on(s, wt, "the Will was published again")


@case5(
    "v5-will-delay-published-after-delay",
    "MQTT-3.1.2-8",
    title="Will Delay 1 s (Session Expiry 10 s): the Will is published about 1 s after the close",
)
async def will_delay(ctx: Context) -> None:
    wt = ctx.topic("will")
    s = await _watch(ctx, wt)
    c = await ctx.client("dying")
    await c.connect(
        clean=False,
        session_expiry=10,
        will=(wt, b"delayed", 1),
        will_properties=[(wire.WILL_DELAY_INTERVAL, 1)],
    )
    await c.aclose()
    start = trio.current_time()
    got = (await s.publishes(1, "Will message"))[0]
    waited = trio.current_time() - start
    if got.payload != b"delayed":
        raise Fail(f"got {got.describe()}")
    if waited < 0.8:
        raise Fail(f"the Will came {waited:.2f}s after the close, before its 1 s delay")


@case5(
    "v5-will-delay-cancelled-by-reconnect",
    "MQTT-3.1.3-9",
    "MQTT-3.1.2-8",
    title="Will Delay 1 s, reconnect at once: no Will, even after the delay has passed",
)
async def will_delay_cancelled(ctx: Context) -> None:
    wt = ctx.topic("will")
    s = await _watch(ctx, wt)
    cid = ctx.cid("w")
    c = await ctx.client("dying")
    await c.connect(
        cid,
        clean=False,
        session_expiry=10,
        will=(wt, b"must-not", 1),
        will_properties=[(wire.WILL_DELAY_INTERVAL, 1)],
    )
    await c.aclose()
    back = await ctx.client("back")
    await back.connect(cid, clean=False, session_expiry=10)
    await trio.sleep(1.8)  # the Will Delay under test, not a synchronisation
    await _nothing_on(s, wt, "the Will was published although the client came back in time")


@case5(
    "v5-will-delay-session-end",
    "MQTT-3.1.2-8",
    "MQTT-4.1.0-2",
    title="Will Delay 30 s but Session Expiry 1 s: the Will is published when the session ends",
)
async def will_session_end(ctx: Context) -> None:
    wt = ctx.topic("will")
    s = await _watch(ctx, wt)
    c = await ctx.client("dying")
    await c.connect(
        clean=False,
        session_expiry=1,
        will=(wt, b"session-ended", 1),
        will_properties=[(wire.WILL_DELAY_INTERVAL, 30)],
    )
    await c.aclose()
    got = (await s.publishes(1, "Will message at session end"))[0]
    if got.payload != b"session-ended":
        raise Fail(f"got {got.describe()}")


@case5(
    "v5-will-on-protocol-error",
    "MQTT-3.1.2-8",
    "MQTT-4.13.1-1",
    title="A connection closed for a Protocol Error (Topic Alias 0) publishes its Will",
)
async def will_protocol_error(ctx: Context) -> None:
    wt = ctx.topic("will")
    s = await _watch(ctx, wt)
    c = await ctx.client("bad")
    await c.connect(will=(wt, b"violation", 1))
    await c.send(wire.publish(ctx.topic("a"), b"x", version=5, properties=[(wire.TOPIC_ALIAS, 0)]))
    await c.expect_closed()
    got = (await s.publishes(1, "Will message"))[0]
    if got.payload != b"violation":
        raise Fail(f"got {got.describe()}")
