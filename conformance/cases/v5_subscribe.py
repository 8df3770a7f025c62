"""MQTT 5.0 SUBSCRIBE / UNSUBSCRIBE: subscription options (No Local, Retain As Published,
Retain Handling), Subscription Identifiers, shared subscriptions, reason codes, retained
messages and topic matching."""

from __future__ import annotations

import unicodedata

import trio

from conformance import wire
from conformance.core import Client, Context, Fail, Skip, case5

opts = wire.subscription_options
GRANTED = {wire.GRANTED_QOS_0, wire.GRANTED_QOS_1, wire.GRANTED_QOS_2}


def _published(pkts: list[wire.Packet]) -> list[wire.Packet]:
    return [p for p in pkts if p.type == wire.PUBLISH]


async def _feature(ctx: Context, ident: int) -> bool:
    """Whether the broker's CONNACK leaves a feature on (absent or 1): Retain Available,
    Wildcard/Subscription Identifier/Shared Subscription Available."""
    probe = await ctx.client("probe")
    value = (await probe.connect()).prop(ident, 1)
    await probe.disconnect()
    return value == 1


async def _need_shared(ctx: Context) -> None:
    if not await _feature(ctx, wire.SHARED_SUBSCRIPTION_AVAILABLE):
        c = await ctx.connected("shared")
        suback = await c.subscribe([(f"$share/g/{ctx.topic('x')}", 1)], check=False)
        if list(suback.codes) != [wire.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED]:
            raise Fail(f"Shared Subscription Available 0, yet SUBACK {suback.describe()}")
        raise Skip("the broker announces Shared Subscription Available 0 (and refuses with 0x9E)")


async def _need_sub_ids(ctx: Context) -> None:
    if not await _feature(ctx, wire.SUBSCRIPTION_IDENTIFIER_AVAILABLE):
        c = await ctx.connected("subid")
        props: list[wire.PropertyIn] = [(wire.SUBSCRIPTION_IDENTIFIER, 1)]
        await c.send(wire.subscribe(1, [(ctx.topic("x"), 1)], version=5, properties=props))
        await c.expect_closed(reasons={wire.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED})
        raise Skip(
            "the broker announces Subscription Identifier Available 0 (and refuses "
            "them with DISCONNECT 0xA1)"
        )


@case5(
    "v5-subscribe-multi-filter",
    "MQTT-3.8.4-1",
    "MQTT-3.8.4-2",
    "MQTT-3.8.4-5",
    "MQTT-3.8.4-6",
    "MQTT-3.9.3-1",
    "MQTT-3.9.3-2",
    "MQTT-2.2.1-6",
    title="One SUBSCRIBE with three filters (QoS 2, 0, 1): one SUBACK with the same pid, codes "
    "in order, all work",
)
async def multi(ctx: Context) -> None:
    a, b, c = ctx.topic("a"), ctx.topic("b"), ctx.topic("c")
    s = await ctx.connected("sub")
    s.requires(qos=2)
    await s.send(wire.subscribe(0x5A5A, [(a, 2), (b, 0), (c, 1)], version=5))
    suback = await s.recv(what="SUBACK")
    if suback.type != wire.SUBACK or suback.pid != 0x5A5A or list(suback.codes) != [2, 0, 1]:
        raise Fail(f"SUBSCRIBE pid 0x5a5a [2, 0, 1] answered with {suback.describe()}")
    p = await ctx.connected("pub")
    for t in (a, b, c):
        await p.publish(t, t.encode(), qos=2)
    got = {g.topic: g.qos for g in await s.publishes(3)}
    if got != {a.encode(): 2, b.encode(): 0, c.encode(): 1}:
        raise Fail(f"deliveries (topic -> QoS): {got}")


@case5(
    "v5-subscribe-granted-qos-valid",
    "MQTT-3.8.4-7",
    "MQTT-3.9.3-2",
    title="Each SUBACK code is the granted QoS (<= requested) or a failure code, nothing else",
)
async def granted(ctx: Context) -> None:
    s = await ctx.connected("sub")
    for q in (0, 1, 2):
        suback = await s.subscribe([(ctx.topic(f"g{q}"), q)], check=False)
        code = suback.codes[0] if len(suback.codes) == 1 else None
        if code is None or (code < 0x80 and code > q) or (code >= 0x80 and q < 2):
            raise Fail(f"requested QoS {q}, SUBACK codes {list(suback.codes)}")


@case5(
    "v5-subscribe-qos-min-matrix",
    "MQTT-3.8.4-8",
    "MQTT-4.3.1-1",
    title="Delivered QoS = min(published QoS, granted QoS) for all nine combinations",
)
async def qos_matrix(ctx: Context) -> None:
    s = await ctx.connected("sub")
    topics = {g: ctx.topic(f"g{g}") for g in (0, 1, 2)}
    suback = await s.subscribe([(topics[g], g) for g in (0, 1, 2)], check=False)
    granted_qos = dict(zip((0, 1, 2), suback.codes, strict=False))
    p = await ctx.connected("pub")
    for g, t in topics.items():
        for q in (0, 1, 2):
            await p.publish(t, f"{g}{q}".encode(), qos=q)
    for m in await s.publishes(9):
        g, q = int(m.payload[0:1]), int(m.payload[1:2])
        if m.qos != min(q, granted_qos[g]):
            raise Fail(f"QoS {q} to a QoS {granted_qos[g]} subscription arrived at QoS {m.qos}")


@case5(
    "v5-subscribe-overlapping-max-qos",
    "MQTT-3.3.4-2",
    title="Overlapping '#' (QoS 2) and '+' (QoS 1) subscriptions: a copy arrives at QoS 2",
)
async def overlapping(ctx: Context) -> None:
    base = ctx.topic("ov")
    s = await ctx.connected("sub")
    await s.subscribe([(f"{base}/#", 2), (f"{base}/+", 1)])
    p = await ctx.connected("pub")
    await p.publish(f"{base}/x", b"max", qos=2)
    got = [g for g in _published(await s.flush(via=p)) if g.payload == b"max"]
    if not got or max(g.qos for g in got) != 2:
        raise Fail("delivered only as " + ", ".join(g.describe() for g in got))


@case5(
    "v5-subscribe-replace-identical",
    "MQTT-3.8.4-3",
    "MQTT-3.8.4-4",
    "MQTT-3.3.1-9",
    title="Re-subscribing an identical filter replaces it (new QoS, one copy) and re-sends the "
    "retained message (Retain Handling 0)",
)
async def replace(ctx: Context) -> None:
    topic = ctx.topic("rep")
    p = await ctx.connected("pub")
    await p.publish(topic, b"retained", qos=1, retain=True)
    s = await ctx.connected("sub")
    await s.subscribe([(topic, 0)])
    first = (await s.publishes(1, "retained message"))[0]
    if first.payload != b"retained" or not first.retain:
        raise Fail(f"got {first.describe()}")
    await s.subscribe([(topic, 1)])
    again = (await s.publishes(1, "re-sent retained message"))[0]
    if again.payload != b"retained" or not again.retain:
        raise Fail(f"retained message not re-sent on re-subscribe: {again.describe()}")
    await p.publish(topic, b"live", qos=1)
    got = _published(await s.flush(via=p))
    if [(g.payload, g.qos) for g in got] != [(b"live", 1)]:
        raise Fail("after re-subscribe at QoS 1: " + ", ".join(g.describe() for g in got))


# ---- subscription options ---------------------------------------------------------------------


@case5(
    "v5-subscribe-no-local",
    "MQTT-3.8.3-3",
    title="No Local: the subscriber's own messages are not sent back; another client's are",
)
async def no_local(ctx: Context) -> None:
    topic = ctx.topic("nl")
    s = await ctx.connected("self")
    await s.subscribe([(topic, opts(1, no_local=True))])
    await s.publish(topic, b"own", qos=1)
    other = await ctx.connected("other")
    await other.publish(topic, b"other", qos=1)
    got = [g.payload for g in _published(await s.flush())]
    if got != [b"other"]:
        raise Fail(f"with No Local, received {got}")


@case5(
    "v5-subscribe-retain-as-published-0",
    "MQTT-3.3.1-12",
    title="Retain As Published 0: a retained PUBLISH is forwarded to a live subscriber with "
    "RETAIN 0",
)
async def rap0(ctx: Context) -> None:
    topic = ctx.topic("rap0")
    s = await ctx.connected("sub")
    await s.subscribe([(topic, opts(1))])
    p = await ctx.connected("pub")
    await p.publish(topic, b"r", qos=1, retain=True)
    got = (await s.publishes(1))[0]
    if got.retain:
        raise Fail(f"Retain As Published 0, yet {got.describe()}")


@case5(
    "v5-subscribe-retain-as-published-1",
    "MQTT-3.3.1-13",
    title="Retain As Published 1: RETAIN is kept as published (1 for a retained PUBLISH, 0 "
    "otherwise)",
)
async def rap1(ctx: Context) -> None:
    topic = ctx.topic("rap1")
    s = await ctx.connected("sub")
    await s.subscribe([(topic, opts(1, retain_as_published=True))])
    p = await ctx.connected("pub")
    await p.publish(topic, b"r", qos=1, retain=True)
    await p.publish(topic, b"n", qos=1)
    got = [(g.payload, g.retain) for g in await s.publishes(2)]
    if got != [(b"r", True), (b"n", False)]:
        raise Fail(f"Retain As Published 1: received {got}")


@case5(
    "v5-subscribe-retain-handling-0",
    "MQTT-3.3.1-9",
    title="Retain Handling 0: the retained message is sent on subscribe, and again on re-subscribe",
)
async def rh0(ctx: Context) -> None:
    topic = ctx.topic("rh0")
    p = await ctx.connected("pub")
    await p.publish(topic, b"r", qos=1, retain=True)
    s = await ctx.connected("sub")
    for _ in range(2):
        await s.subscribe([(topic, opts(1, retain_handling=0))])
        got = (await s.publishes(1, "retained message"))[0]
        if got.payload != b"r" or not got.retain:
            raise Fail(f"got {got.describe()}")


@case5(
    "v5-subscribe-retain-handling-1",
    "MQTT-3.3.1-10",
    title="Retain Handling 1: the retained message is sent for a new subscription, not when it "
    "already existed",
)
async def rh1(ctx: Context) -> None:
    topic = ctx.topic("rh1")
    p = await ctx.connected("pub")
    await p.publish(topic, b"r", qos=1, retain=True)
    s = await ctx.connected("sub")
    await s.subscribe([(topic, opts(1, retain_handling=1))])
    got = (await s.publishes(1, "retained message"))[0]
    if got.payload != b"r" or not got.retain:
        raise Fail(f"got {got.describe()}")
    await s.subscribe([(topic, opts(1, retain_handling=1))])
    again = _published(await s.flush(via=p))
    if again:
        raise Fail("retained message re-sent for an existing subscription: " + again[0].describe())


@case5(
    "v5-subscribe-retain-handling-2",
    "MQTT-3.3.1-11",
    title="Retain Handling 2: no retained message on subscribe; live messages still arrive",
)
async def rh2(ctx: Context) -> None:
    topic = ctx.topic("rh2")
    p = await ctx.connected("pub")
    await p.publish(topic, b"r", qos=1, retain=True)
    s = await ctx.connected("sub")
    await s.subscribe([(topic, opts(1, retain_handling=2))])
    await p.publish(topic, b"live", qos=1)
    got = [(g.payload, g.retain) for g in _published(await s.flush(via=p))]
    if got != [(b"live", False)]:
        raise Fail(f"Retain Handling 2: received {got}")


# ---- retained messages --------------------------------------------------------------------------


@case5(
    "v5-retain-stored-and-replaced",
    "MQTT-3.3.1-5",
    title="RETAIN 1 stores the message for future subscribers, replacing the previous one",
)
async def retain_replace(ctx: Context) -> None:
    topic = ctx.topic("r")
    p = await ctx.connected("pub")
    await p.publish(topic, b"first", qos=1, retain=True)
    await p.publish(topic, b"second", qos=1, retain=True, properties=[(wire.CONTENT_TYPE, "t")])
    s = await ctx.connected("sub")
    await s.subscribe([(topic, 1)])
    got = _published(await s.flush())
    if [(g.payload, g.retain) for g in got] != [(b"second", True)]:
        raise Fail("retained: " + ", ".join(g.describe() for g in got))
    if got[0].prop(wire.CONTENT_TYPE) != "t":
        raise Fail(f"the retained message lost its properties: {got[0].describe()}")


@case5(
    "v5-retain-empty-removes",
    "MQTT-3.3.1-6",
    "MQTT-3.3.1-7",
    title="A zero-byte retained PUBLISH is delivered normally and removes the retained message",
)
async def retain_empty(ctx: Context) -> None:
    topic = ctx.topic("r")
    p = await ctx.connected("pub")
    await p.publish(topic, b"old", qos=1, retain=True)
    live = await ctx.connected("live")
    await live.subscribe([(topic, 1)])
    await live.publishes(1, "retained message")
    await p.publish(topic, b"", qos=1, retain=True)
    got = (await live.publishes(1, "the zero-byte message"))[0]
    if got.payload != b"":
        raise Fail(f"got {got.describe()}")
    s = await ctx.connected("late")
    await s.subscribe([(topic, 1)])
    before = _published(await s.flush())
    if before:
        raise Fail("retained message after a zero-byte retained PUBLISH: " + before[0].describe())


@case5(
    "v5-retain-0-not-stored",
    "MQTT-3.3.1-8",
    title="RETAIN 0 is not stored and leaves the existing retained message in place",
)
async def retain_0(ctx: Context) -> None:
    topic = ctx.topic("r")
    p = await ctx.connected("pub")
    await p.publish(topic, b"kept", qos=1, retain=True)
    await p.publish(topic, b"not-retained", qos=1)
    s = await ctx.connected("sub")
    await s.subscribe([(topic, 1)])
    got = [g.payload for g in _published(await s.flush())]
    if got != [b"kept"]:
        raise Fail(f"retained after a RETAIN 0 PUBLISH: {got}")


# ---- Subscription Identifiers -------------------------------------------------------------------


@case5(
    "v5-subscription-identifier-delivered",
    "MQTT-3.3.4-3",
    title="Subscription Identifier 7 comes with the message; a subscription without one adds none",
)
async def sub_id(ctx: Context) -> None:
    await _need_sub_ids(ctx)
    with_id, without = ctx.topic("i"), ctx.topic("n")
    s = await ctx.connected("sub")
    await s.subscribe([(with_id, 1)], properties=[(wire.SUBSCRIPTION_IDENTIFIER, 7)])
    await s.subscribe([(without, 1)])
    p = await ctx.connected("pub")
    await p.publish(with_id, b"i", qos=1)
    await p.publish(without, b"n", qos=1)
    got = {g.payload: g.props_all(wire.SUBSCRIPTION_IDENTIFIER) for g in await s.publishes(2)}
    if got != {b"i": [7], b"n": []}:
        raise Fail(f"Subscription Identifiers by message: {got}")


@case5(
    "v5-subscription-identifiers-overlapping",
    "MQTT-3.3.4-3",
    "MQTT-3.3.4-4",
    "MQTT-3.3.4-5",
    title="Overlapping subscriptions with identifiers 1 and 268435455: one copy with both, or "
    "one copy each with its own",
)
async def sub_ids_overlap(ctx: Context) -> None:
    await _need_sub_ids(ctx)
    base = ctx.topic("ov")
    s = await ctx.connected("sub")
    await s.subscribe([(f"{base}/#", 1)], properties=[(wire.SUBSCRIPTION_IDENTIFIER, 1)])
    await s.subscribe(
        [(f"{base}/+", 1)], properties=[(wire.SUBSCRIPTION_IDENTIFIER, wire.MAX_VARINT)]
    )
    await s.subscribe([(f"{base}/x", 1)])  # a third match, without an identifier
    p = await ctx.connected("pub")
    await p.publish(f"{base}/x", b"o", qos=1)
    got = [g for g in _published(await s.flush(via=p)) if g.payload == b"o"]
    ids = [
        sorted(i for i in g.props_all(wire.SUBSCRIPTION_IDENTIFIER) if isinstance(i, int))
        for g in got
    ]
    if len(got) == 1:
        if ids != [[1, wire.MAX_VARINT]]:
            raise Fail(f"one copy with Subscription Identifiers {ids[0]}, expected both")
        ctx.choice("overlapping subscriptions: one copy with every identifier")
        return
    if sorted(ids) != [[], [1], [wire.MAX_VARINT]]:
        raise Fail(f"{len(got)} copies with Subscription Identifiers {ids}")
    ctx.choice("overlapping subscriptions: one copy per subscription")


@case5(
    "v5-subscription-identifier-replaced",
    "MQTT-3.8.4-3",
    "MQTT-3.3.4-3",
    title="Re-subscribing with identifier 9 replaces identifier 5; without one, none is sent",
)
async def sub_id_replaced(ctx: Context) -> None:
    await _need_sub_ids(ctx)
    topic = ctx.topic("r")
    s = await ctx.connected("sub")
    p = await ctx.connected("pub")
    await s.subscribe([(topic, 1)], properties=[(wire.SUBSCRIPTION_IDENTIFIER, 5)])
    for props, want in (([(wire.SUBSCRIPTION_IDENTIFIER, 9)], [9]), ([], [])):
        await s.subscribe([(topic, 1)], properties=props)
        await p.publish(topic, b"x", qos=1)
        got = [g.props_all(wire.SUBSCRIPTION_IDENTIFIER) for g in _published(await s.flush(via=p))]
        if got != [want]:
            raise Fail(f"after re-subscribing: copies with identifiers {got}, expected [{want}]")


@case5(
    "v5-subscription-identifier-0",
    "MQTT-4.13.1-1",
    title="SUBSCRIBE with Subscription Identifier 0: a Protocol Error, closed",
)
async def sub_id_0(ctx: Context) -> None:
    s = await ctx.connected()
    props: list[wire.PropertyIn] = [(wire.SUBSCRIPTION_IDENTIFIER, 0)]
    await s.send(wire.subscribe(1, [(ctx.topic("z"), 1)], version=5, properties=props))
    await s.expect_closed(reasons={wire.PROTOCOL_ERROR, wire.MALFORMED_PACKET})


@case5(
    "v5-publish-with-subscription-identifier",
    "MQTT-4.13.1-1",
    title="A client PUBLISH carrying a Subscription Identifier: a Protocol Error, closed",
)
async def publish_sub_id(ctx: Context) -> None:
    c = await ctx.connected()
    props: list[wire.PropertyIn] = [(wire.SUBSCRIPTION_IDENTIFIER, 3)]
    await c.send(wire.publish(ctx.topic("p"), b"x", 1, pid=1, version=5, properties=props))
    await c.expect_closed(reasons={wire.PROTOCOL_ERROR, wire.MALFORMED_PACKET})


# ---- shared subscriptions ---------------------------------------------------------------------


async def _group(ctx: Context, topic: str, n: int, qos: int = 1, **kwargs: object) -> list[Client]:
    group = f"g{ctx.run_id}"
    members = []
    for i in range(n):
        m = await ctx.client(f"m{i}")
        await m.connect(**kwargs)  # type: ignore[arg-type]
        await m.subscribe([(f"$share/{group}/{topic}", qos)])
        members.append(m)
    return members


@case5(
    "v5-shared-one-member-each",
    title="$share/group/filter with three members: each of 12 messages reaches exactly one",
    section="4.8.2",
)
async def shared_each(ctx: Context) -> None:
    await _need_shared(ctx)
    topic = ctx.topic("sh")
    members = await _group(ctx, topic, 3)
    p = await ctx.connected("pub")
    for i in range(12):
        await p.publish(topic, f"m{i}".encode(), qos=1)
    seen: list[bytes] = []
    for m in members:
        seen += [g.payload for g in _published(await m.flush(via=p)) if g.payload != b""]
    if sorted(seen) != sorted(f"m{i}".encode() for i in range(12)):
        raise Fail(f"the group received {sorted(seen)}")


@case5(
    "v5-shared-granted-qos",
    "MQTT-4.8.2-3",
    title="A shared subscription granted QoS 1: a QoS 2 message arrives at QoS 1",
)
async def shared_qos(ctx: Context) -> None:
    await _need_shared(ctx)
    topic = ctx.topic("sq")
    (m,) = await _group(ctx, topic, 1, qos=1)
    p = await ctx.connected("pub")
    await p.publish(topic, b"q2", qos=2)
    got = (await m.publishes(1))[0]
    if got.qos != 1:
        raise Fail(f"got {got.describe()}")


@case5(
    "v5-shared-no-retained",
    title="Subscribing to $share/group/filter sends no retained message (retained messages go "
    "to new Non-shared Subscriptions, 3.3.1.3)",
    section="3.3.1.3",
)
async def shared_no_retained(ctx: Context) -> None:
    await _need_shared(ctx)
    topic = ctx.topic("sr")
    p = await ctx.connected("pub")
    await p.publish(topic, b"retained", qos=1, retain=True)
    (m,) = await _group(ctx, topic, 1)
    got = [g for g in _published(await m.flush(via=p)) if g.payload == b"retained"]
    if got:
        raise Fail("retained message sent for a shared subscription: " + got[0].describe())


@case5(
    "v5-shared-no-local",
    "MQTT-3.8.3-4",
    "MQTT-4.13.1-1",
    title="No Local on a shared subscription: a Protocol Error, closed (DISCONNECT 0x82)",
)
async def shared_no_local(ctx: Context) -> None:
    await _need_shared(ctx)
    c = await ctx.connected()
    filt = f"$share/g{ctx.run_id}/{ctx.topic('nl')}"
    await c.send(wire.subscribe(1, [(filt, opts(1, no_local=True))], version=5))
    await c.expect_closed(reasons={wire.PROTOCOL_ERROR})


@case5(
    "v5-shared-qos2-completed-on-reconnect",
    "MQTT-4.8.2-4",
    title="A shared QoS 2 delivery cut off before PUBREC is completed to the same client when "
    "it reconnects",
)
async def shared_qos2_reconnect(ctx: Context) -> None:
    await _need_shared(ctx)
    topic = ctx.topic("s2")
    cid = ctx.cid("sh")
    a = await ctx.client("a")
    await a.connect(cid, clean=False, session_expiry=300)
    await a.subscribe([(f"$share/g{ctx.run_id}/{topic}", 2)])
    a.auto_ack = False
    p = await ctx.connected("pub")
    await p.publish(topic, b"exactly-once", qos=2)
    first = (await a.publishes(1))[0]
    await a.aclose()
    b = await ctx.client("back")
    await b.connect(cid, clean=False, session_expiry=300)
    again = (await b.publishes(1, "re-sent PUBLISH"))[0]
    if again.payload != b"exactly-once" or again.pid != first.pid:
        raise Fail(f"re-sent {again.describe()}, first {first.describe()}")


@case5(
    "v5-shared-session-ended-not-redirected",
    "MQTT-4.8.2-5",
    title="A shared message in flight to a client whose session then ends goes to no other member",
)
async def shared_session_end(ctx: Context) -> None:
    await _need_shared(ctx)
    topic = ctx.topic("se")
    group = f"$share/g{ctx.run_id}/{topic}"
    members = []
    for i in range(2):
        m = await ctx.client(f"m{i}")
        await m.connect(clean=True)  # Session Expiry 0: the session ends with the connection
        await m.subscribe([(group, 1)])
        m.auto_ack = False
        members.append(m)
    p = await ctx.connected("pub")
    await p.publish(topic, b"once", qos=1)
    with_msg = await _which_got_it(members)
    other = next(m for m in members if m is not with_msg)
    await with_msg.aclose()
    other.auto_ack = True
    got = [g for g in _published(await other.flush(via=p)) if g.payload == b"once"]
    if got:
        raise Fail("the message went to another member after the session ended")


async def _which_got_it(members: list[Client]) -> Client:
    """The member a shared message went to, its PUBLISH left in its backlog: on one process
    the first whose PINGRESP comes after a PUBLISH (the publisher's PUBACK came first, so
    the message was routed before the PINGREQs); a broker spread over nodes may deliver it
    later, so then the first member a PUBLISH reaches within the timeout."""
    for m in members:
        await m.ping()
        if any(x.type == wire.PUBLISH for x in m.backlog):
            return m
    winner: list[Client] = []

    async def watch(m: Client, done: trio.CancelScope) -> None:
        try:
            pkt = await m.wait_for(lambda p: p.type == wire.PUBLISH, "PUBLISH")
        except Fail:
            return
        m.backlog.append(pkt)
        winner.append(m)
        done.cancel()

    async with trio.open_nursery() as nursery:
        for m in members:
            nursery.start_soon(watch, m, nursery.cancel_scope)
    if not winner:
        raise Fail("no member of the group received the message")
    return winner[0]


@case5(
    "v5-shared-error-ack-discarded",
    "MQTT-4.8.2-6",
    title="PUBACK 0x80 from the chosen member: the message is discarded, no other member gets it",
)
async def shared_error_ack(ctx: Context) -> None:
    await _need_shared(ctx)
    topic = ctx.topic("ea")
    members = await _group(ctx, topic, 2)
    for m in members:
        m.auto_ack = False
    p = await ctx.connected("pub")
    await p.publish(topic, b"refused", qos=1)
    chosen = await _which_got_it(members)
    pub = next(x for x in chosen.backlog if x.type == wire.PUBLISH)
    chosen.backlog.remove(pub)
    assert pub.pid is not None
    await chosen.send(wire.puback(pub.pid, reason=wire.UNSPECIFIED_ERROR))
    for m in members:
        m.auto_ack = True
        got = [g for g in _published(await m.flush(via=p)) if g.payload == b"refused"]
        if got:
            raise Fail(f"{m.label} got the refused message again: {got[0].describe()}")


# ---- UNSUBSCRIBE ------------------------------------------------------------------------------


@case5(
    "v5-unsubscribe-stops-delivery",
    "MQTT-3.10.4-2",
    "MQTT-3.10.4-4",
    "MQTT-3.11.3-2",
    title="After UNSUBACK (0x00) no new messages for the removed filter are delivered",
)
async def unsub_stops(ctx: Context) -> None:
    topic = ctx.topic("u")
    s = await ctx.connected("sub")
    await s.subscribe([(topic, 1)])
    unsuback = await s.unsubscribe([topic])
    if list(unsuback.codes) != [wire.SUCCESS]:
        raise Fail(f"UNSUBACK {unsuback.describe()}")
    p = await ctx.connected("pub")
    await p.publish(topic, b"late", qos=1)
    got = _published(await s.flush(via=p))
    if got:
        raise Fail("delivered after UNSUBACK: " + got[0].describe())


@case5(
    "v5-unsubscribe-exact-match-only",
    "MQTT-3.10.4-1",
    "MQTT-3.11.3-2",
    title="UNSUBSCRIBE 'x/a/y' does not remove 'x/+/y' (UNSUBACK 0x11); 'x/+/y' does (0x00)",
)
async def unsub_exact(ctx: Context) -> None:
    base = ctx.topic("e")
    s = await ctx.connected("sub")
    await s.subscribe([(f"{base}/+/y", 1)])
    unsuback = await s.unsubscribe([f"{base}/a/y"])
    if list(unsuback.codes) != [wire.NO_SUBSCRIPTION_EXISTED]:
        raise Fail(f"UNSUBSCRIBE of a filter never subscribed: {unsuback.describe()}")
    p = await ctx.connected("pub")
    await p.publish(f"{base}/a/y", b"still", qos=1)
    got = [g.payload for g in _published(await s.flush(via=p))]
    if got != [b"still"]:
        raise Fail(f"after unsubscribing a non-matching string, delivered {got}")
    unsuback = await s.unsubscribe([f"{base}/+/y"])
    if list(unsuback.codes) != [wire.SUCCESS]:
        raise Fail(f"UNSUBSCRIBE of the subscribed filter: {unsuback.describe()}")
    await p.publish(f"{base}/a/y", b"gone", qos=1)
    got = [g.payload for g in _published(await s.flush(via=p))]
    if got:
        raise Fail(f"after unsubscribing the exact filter, delivered {got}")


@case5(
    "v5-unsubscribe-multi-filter",
    "MQTT-3.10.4-6",
    "MQTT-3.11.3-1",
    "MQTT-3.11.3-2",
    "MQTT-3.10.4-5",
    "MQTT-2.2.1-6",
    title="UNSUBSCRIBE [a, never-subscribed, b]: one UNSUBACK, same pid, codes 00 11 00; c still "
    "delivers",
)
async def unsub_multi(ctx: Context) -> None:
    a, b, c, never = ctx.topic("a"), ctx.topic("b"), ctx.topic("c"), ctx.topic("never")
    s = await ctx.connected("sub")
    await s.subscribe([(a, 1), (b, 1), (c, 1)])
    await s.send(wire.unsubscribe(0x4242, [a, never, b], version=5))
    unsuback = await s.recv(what="UNSUBACK")
    if unsuback.type != wire.UNSUBACK or unsuback.pid != 0x4242:
        raise Fail(f"UNSUBSCRIBE pid 0x4242 answered with {unsuback.describe()}")
    if list(unsuback.codes) != [0x00, 0x11, 0x00]:
        raise Fail(f"UNSUBACK codes {[hex(x) for x in unsuback.codes]}, expected 00 11 00")
    p = await ctx.connected("pub")
    for t in (a, b, c):
        await p.publish(t, t.encode(), qos=1)
    got = await s.flush(via=p)
    if [(g.type, g.topic) for g in got] != [(wire.PUBLISH, c.encode())]:
        raise Fail("after UNSUBSCRIBE [a, never, b]: " + ", ".join(g.describe() for g in got))


@case5(
    "v5-unsubscribe-nothing-deleted",
    "MQTT-3.10.4-5",
    "MQTT-3.10.4-4",
    title="UNSUBSCRIBE with no subscription at all: UNSUBACK with the same pid all the same",
)
async def unsub_nothing(ctx: Context) -> None:
    s = await ctx.connected()
    await s.send(wire.unsubscribe(0x0102, [ctx.topic("none")], version=5))
    unsuback = await s.recv(what="UNSUBACK")
    if unsuback.type != wire.UNSUBACK or unsuback.pid != 0x0102 or len(unsuback.codes) != 1:
        raise Fail(f"got {unsuback.describe()}")


@case5(
    "v5-unsubscribe-completes-inflight-qos2",
    "MQTT-3.10.4-3",
    title="A QoS 2 delivery started before UNSUBSCRIBE is completed (PUBREC -> PUBREL)",
)
async def unsub_inflight(ctx: Context) -> None:
    topic = ctx.topic("i")
    s = await ctx.connected("sub")
    await s.subscribe([(topic, 2)])
    s.auto_ack = False
    p = await ctx.connected("pub")
    await p.publish(topic, b"inflight", qos=2)
    pub = (await s.publishes(1))[0]
    assert pub.pid is not None
    await s.unsubscribe([topic])
    await s.send(wire.pubrec(pub.pid))
    await s.expect_type(wire.PUBREL, pub.pid)
    await s.send(wire.pubcomp(pub.pid))
    await s.ping()


# ---- topic filters and matching ---------------------------------------------------------------


async def _refused_filter(ctx: Context, flt: str | bytes, what: str) -> None:
    """An invalid filter: SUBACK 0x8F (or another failure code), or closed — a choice."""
    s = await ctx.connected("sub")
    await s.send(wire.subscribe(5, [(flt, 0)], version=5))
    try:
        pkt = await s.recv(what="SUBACK or close")
    except Fail:
        if s.closed:
            ctx.choice(f"{what} closes the connection")
            return
        raise
    if pkt.type == wire.SUBACK and pkt.pid == 5 and len(pkt.codes) == 1 and pkt.codes[0] >= 0x80:
        ctx.choice(f"{what} is refused with SUBACK {pkt.codes[0]:#04x}")
        return
    if pkt.type == wire.DISCONNECT and (pkt.reason or 0) >= 0x80:
        await s.expect_closed()
        ctx.choice(f"{what} closes the connection (DISCONNECT {pkt.reason:#04x})")
        return
    raise Fail(f"{what} answered with {pkt.describe()}")


@case5(
    "v5-subscribe-bad-wildcard",
    "MQTT-3.9.3-2",
    "MQTT-4.13.1-1",
    title="Filter 'a/b#' (misplaced wildcard): SUBACK 0x8F or closed — a choice",
)
async def bad_wildcard(ctx: Context) -> None:
    await _refused_filter(ctx, ctx.topic("a/b#"), "an invalid wildcard")


@case5(
    "v5-subscribe-empty-filter",
    "MQTT-4.7.3-1",
    title="Zero-length topic filter: SUBACK 0x8F or closed — a choice",
)
async def empty_filter(ctx: Context) -> None:
    await _refused_filter(ctx, b"", "an empty filter")


@case5(
    "v5-subscribe-share-name-wildcard",
    "MQTT-3.9.3-2",
    "MQTT-4.13.1-1",
    title="'$share/a+b/t' (a wildcard in the ShareName): SUBACK 0x8F or closed — a choice",
)
async def share_name_wildcard(ctx: Context) -> None:
    await _need_shared(ctx)
    await _refused_filter(ctx, f"$share/a+b/{ctx.topic('t')}", "a ShareName with '+'")


@case5(
    "v5-subscribe-share-name-empty",
    "MQTT-3.9.3-2",
    "MQTT-4.13.1-1",
    title="'$share//t' (an empty ShareName): SUBACK 0x8F or closed — a choice",
)
async def share_name_empty(ctx: Context) -> None:
    await _need_shared(ctx)
    await _refused_filter(ctx, f"$share//{ctx.topic('t')}", "an empty ShareName")


@case5(
    "v5-subscribe-dollar-topics-not-matched",
    "MQTT-4.7.2-1",
    title="'#' and '+/...' filters do not match topics beginning with '$' ($SYS)",
)
async def dollar(ctx: Context) -> None:
    dollar_topic = f"$c{ctx.run_id}/d"
    wild = await ctx.connected("wild")
    await wild.subscribe([("#", 0), ("+/d", 0)])
    p = await ctx.connected("pub")
    await p.publish(dollar_topic, b"dollar", qos=1)
    bad = [g for g in _published(await wild.flush(via=p)) if g.topic == dollar_topic.encode()]
    if bad:
        raise Fail("'#' or '+/d' matched a '$' topic: " + bad[0].describe())
    late = await ctx.connected("late")
    await late.subscribe([("#", 0), ("+/broker/#", 0)])
    leaked = [
        g for g in _published(await late.flush()) if g.topic is not None and g.topic[:1] == b"$"
    ]
    if leaked:
        raise Fail("'#' or '+/broker/#' matched a '$' topic: " + leaked[0].describe())


@case5(
    "v5-topic-bom-not-stripped",
    "MQTT-1.5.4-3",
    "MQTT-4.7.3-4",
    title="U+FEFF in a topic is kept: 'x/\\ufeffa' matches itself only, never 'x/a'",
)
async def bom(ctx: Context) -> None:
    with_bom, plain = ctx.topic("\ufeffa"), ctx.topic("a")
    s = await ctx.connected("sub")
    await s.subscribe([(with_bom, 1)])
    p = await ctx.connected("pub")
    await p.publish(plain, b"plain", qos=1)
    await p.publish(with_bom, b"bom", qos=1)
    got = _published(await s.flush(via=p))
    if [(g.topic, g.payload) for g in got] != [(with_bom.encode(), b"bom")]:
        raise Fail("received: " + ", ".join(g.describe() for g in got))


@case5(
    "v5-topic-no-unicode-normalisation",
    "MQTT-4.7.3-4",
    title="NFC 'é' and NFD 'e\\u0301' are different topics (no normalisation when matching)",
)
async def no_normalisation(ctx: Context) -> None:
    nfc = ctx.topic(unicodedata.normalize("NFC", "caf\u00e9"))
    nfd = ctx.topic(unicodedata.normalize("NFD", "caf\u00e9"))
    s = await ctx.connected("sub")
    await s.subscribe([(nfc, 1)])
    p = await ctx.connected("pub")
    await p.publish(nfd, b"nfd", qos=1)
    await p.publish(nfc, b"nfc", qos=1)
    got = _published(await s.flush(via=p))
    if [(g.topic, g.payload) for g in got] != [(nfc.encode(), b"nfc")]:
        raise Fail("received: " + ", ".join(g.describe() for g in got))


@case5(
    "v5-subscribe-wildcards",
    "MQTT-3.3.2-3",
    "MQTT-4.7.3-4",
    title="'+' matches exactly one level and matching is case-sensitive (or wildcards are "
    "refused with 0xA2 when announced)",
)
async def wildcards(ctx: Context) -> None:
    base = ctx.topic("m")
    s = await ctx.connected("sub")
    suback = await s.subscribe([(f"{base}/+/b", 1)], check=False)
    if not await _feature(ctx, wire.WILDCARD_SUBSCRIPTION_AVAILABLE):
        if list(suback.codes) != [wire.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED]:
            raise Fail(f"Wildcard Subscription Available 0, yet {suback.describe()}")
        raise Skip("the broker announces Wildcard Subscription Available 0")
    if list(suback.codes) != [1]:
        raise Fail(f"got {suback.describe()}")
    p = await ctx.connected("pub")
    for t in (f"{base}/a/B", f"{base}/a/c/b", f"{base}/b", f"{base}/a/b"):
        await p.publish(t, t.encode(), qos=1)
    got = _published(await s.flush(via=p))
    if [g.topic for g in got] != [f"{base}/a/b".encode()]:
        raise Fail("'+/b' matched: " + ", ".join(str(g.topic) for g in got))
