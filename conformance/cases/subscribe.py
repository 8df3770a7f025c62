"""SUBSCRIBE / SUBACK / UNSUBSCRIBE handling, topic matching and wildcards."""

from __future__ import annotations

import unicodedata

from conformance import wire
from conformance.core import Context, Fail, Skip, case

ALLOWED_CODES = {0x00, 0x01, 0x02, 0x80}


@case(
    "subscribe-multi-filter",
    "MQTT-3.8.4-4",
    "MQTT-3.8.4-5",
    "MQTT-3.9.3-1",
    "MQTT-3.9.3-2",
    title="One SUBSCRIBE with three filters (QoS 2, 0, 1): one SUBACK, codes in order, all work",
)
async def multi(ctx: Context) -> None:
    a, b, c = ctx.topic("a"), ctx.topic("b"), ctx.topic("c")
    s = await ctx.connected("sub")
    suback = await s.subscribe([(a, 2), (b, 0), (c, 1)], check=False)
    if not set(suback.codes) <= ALLOWED_CODES:
        raise Fail(f"reserved SUBACK codes {[hex(x) for x in suback.codes]}")
    if len(suback.codes) != 3:
        raise Fail(f"{len(suback.codes)} return codes for 3 filters")
    if list(suback.codes) != [2, 0, 1]:
        raise Fail(f"SUBACK codes {list(suback.codes)} for requested [2, 0, 1]")
    p = await ctx.connected("pub")
    for t in (a, b, c):
        await p.publish(t, t.encode(), qos=2)
    got = {g.topic: g.qos for g in await s.publishes(3)}
    if got != {a.encode(): 2, b.encode(): 0, c.encode(): 1}:
        raise Fail(f"deliveries (topic → QoS): {got}")


@case(
    "subscribe-granted-qos-valid",
    "MQTT-3.8.4-5",
    "MQTT-3.9.3-2",
    title="Each SUBACK code is the granted QoS (≤ requested) or 0x80, nothing else",
)
async def granted(ctx: Context) -> None:
    s = await ctx.connected("sub")
    for q in (0, 1, 2):
        suback = await s.subscribe([(ctx.topic(f"g{q}"), q)], check=False)
        code = suback.codes[0] if len(suback.codes) == 1 else None
        if code is None or code not in ALLOWED_CODES or (code != 0x80 and code > q):
            raise Fail(f"requested QoS {q}, SUBACK codes {list(suback.codes)}")


@case(
    "subscribe-qos-min-matrix",
    "MQTT-3.8.4-6",
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
    got = await s.publishes(9)
    for m in got:
        g, q = int(m.payload[0:1]), int(m.payload[1:2])
        want = min(q, granted_qos[g])
        if m.qos != want:
            raise Fail(
                f"published QoS {q} to a QoS {granted_qos[g]} subscription arrived at QoS {m.qos}"
            )
        if m.qos == 0 and (m.dup or m.pid is not None):
            raise Fail(f"QoS 0 delivery with DUP/pid: {m.raw.hex(' ')}")


@case(
    "subscribe-overlapping-max-qos",
    "MQTT-3.3.5-1",
    title="Overlapping '#' (QoS 2) and '+' (QoS 1) subscriptions: the message arrives at QoS 2",
)
async def overlapping(ctx: Context) -> None:
    base = ctx.topic("ov")
    s = await ctx.connected("sub")
    await s.subscribe([(f"{base}/#", 2), (f"{base}/+", 1)])
    p = await ctx.connected("pub")
    await p.publish(f"{base}/x", b"max", qos=2)
    got = [g for g in await s.flush(via=p) if g.type == wire.PUBLISH and g.payload == b"max"]
    if not got:
        raise Fail("the message did not arrive")
    if max(g.qos for g in got) != 2:
        raise Fail("delivered only as " + ", ".join(g.describe() for g in got))


@case(
    "subscribe-replace-identical",
    "MQTT-3.8.4-3",
    title="Re-subscribing an identical filter replaces it (new QoS, one copy), re-sends retained",
)
async def replace(ctx: Context) -> None:
    topic = ctx.topic("rep")
    p = await ctx.connected("pub")
    await p.publish(topic, b"retained", qos=1, retain=True)
    s = await ctx.connected("sub")
    await s.subscribe([(topic, 0)])
    first = (await s.publishes(1, "retained message"))[0]
    if first.payload != b"retained":
        raise Fail(f"got {first.describe()}")
    await s.subscribe([(topic, 1)])
    again = (await s.publishes(1, "re-sent retained message"))[0]
    if again.payload != b"retained" or not again.retain:
        raise Fail(f"retained message not re-sent on re-subscribe: {again.describe()}")
    await p.publish(topic, b"live", qos=1)
    got = [g for g in await s.flush(via=p) if g.type == wire.PUBLISH]
    if [(g.payload, g.qos) for g in got] != [(b"live", 1)]:
        raise Fail("after re-subscribe at QoS 1: " + ", ".join(g.describe() for g in got))


@case(
    "subscribe-wildcards-supported",
    "MQTT-3.8.3-2",
    title="Wildcard filters either work or are rejected with 0x80 (never accepted and ignored)",
)
async def wildcards(ctx: Context) -> None:
    base = ctx.topic("w")
    s = await ctx.connected("sub")
    suback = await s.subscribe([(f"{base}/+/x", 1), (f"{base}/#", 1)], check=False)
    if list(suback.codes) == [0x80, 0x80]:
        ctx.choice("wildcard subscriptions are not supported (rejected with 0x80)")
        return
    if list(suback.codes) != [1, 1]:
        raise Fail(f"SUBACK codes {list(suback.codes)}")
    p = await ctx.connected("pub")
    await p.publish(f"{base}/a/x", b"w", qos=1)
    got = [g for g in await s.flush(via=p) if g.type == wire.PUBLISH]
    if not got:
        raise Fail("wildcard subscriptions were granted but delivered nothing")


@case(
    "subscribe-bad-wildcard",
    "MQTT-4.8.0-1",
    "MQTT-3.8.4-5",
    title="Filter 'a/b#' (misplaced wildcard): connection closed or SUBACK 0x80 — a choice",
)
async def bad_wildcard(ctx: Context) -> None:
    s = await ctx.connected("sub")
    await s.send(wire.subscribe(5, [(ctx.topic("a/b#"), 0)]))
    try:
        pkt = await s.recv(what="SUBACK or close")
    except Fail:
        if s.closed:
            ctx.choice("an invalid wildcard closes the connection")
            return
        raise
    if pkt.raw == bytes.fromhex("90030005") + b"\x80":
        ctx.choice("an invalid wildcard is refused with SUBACK 0x80")
        return
    raise Fail(f"invalid filter answered with {pkt.describe()}")


@case(
    "subscribe-empty-filter",
    "MQTT-4.7.3-1",
    title="Zero-length topic filter: connection closed or SUBACK 0x80",
)
async def empty_filter(ctx: Context) -> None:
    s = await ctx.connected("sub")
    await s.send(wire.subscribe(6, [(b"", 0)]))
    try:
        pkt = await s.recv(what="SUBACK or close")
    except Fail:
        if s.closed:
            ctx.choice("an empty filter closes the connection")
            return
        raise
    if pkt.raw == bytes.fromhex("90030006") + b"\x80":
        ctx.choice("an empty filter is refused with SUBACK 0x80")
        return
    raise Fail(f"empty filter answered with {pkt.describe()}")


@case(
    "subscribe-dollar-topics-not-matched",
    "MQTT-4.7.2-1",
    title="'#' and '+/…' filters do not match a topic beginning with '$'; '$x/#' does",
)
async def dollar(ctx: Context) -> None:
    dollar_topic = f"$c{ctx.run_id}/d"
    wild = await ctx.connected("wild")
    await wild.subscribe([("#", 0), ("+/d", 0)])
    exact = await ctx.connected("exact")
    await exact.subscribe([(f"$c{ctx.run_id}/#", 0)])
    p = await ctx.connected("pub")
    await p.publish(dollar_topic, b"dollar", qos=1)
    got = await exact.flush(via=p)
    if any(g.type == wire.PUBLISH and g.topic == dollar_topic.encode() for g in got):
        before = await wild.flush(via=p)
        bad = [g for g in before if g.type == wire.PUBLISH and g.topic == dollar_topic.encode()]
        if bad:
            raise Fail("'#' or '+/d' matched a '$' topic: " + bad[0].describe())
        return
    # The broker refuses client publishes to '$' topics (allowed: they are reserved for the
    # server). Use the server's own retained '$SYS' topics instead, if it has them.
    ctx.choice("client PUBLISH to a '$' topic is not routed; checked with the broker's $SYS")
    sys_sub = await ctx.connected("sys")
    await sys_sub.subscribe([("$SYS/#", 0)])
    sys_got = [g for g in await sys_sub.flush() if g.type == wire.PUBLISH]
    if not sys_got:
        raise Skip("the broker neither routes client '$' topics nor publishes retained $SYS")
    late = await ctx.connected("late")
    await late.subscribe([("#", 0), ("+/broker/#", 0)])
    leaked = [
        g
        for g in await late.flush()
        if g.type == wire.PUBLISH and g.topic is not None and g.topic.startswith(b"$")
    ]
    if leaked:
        raise Fail("'#' or '+/broker/#' matched a '$' topic: " + leaked[0].describe())


@case(
    "topic-bom-not-stripped",
    "MQTT-1.5.3-3",
    "MQTT-4.7.3-4",
    title="U+FEFF in a topic is kept: 'x/\\ufeffa' matches itself only, never 'x/a'",
)
async def bom(ctx: Context) -> None:
    with_bom = ctx.topic("\ufeffa")
    plain = ctx.topic("a")
    s = await ctx.connected("sub")
    await s.subscribe([(with_bom, 1)])
    p = await ctx.connected("pub")
    await p.publish(plain, b"plain", qos=1)
    await p.publish(with_bom, b"bom", qos=1)
    got = [g for g in await s.flush(via=p) if g.type == wire.PUBLISH]
    if [(g.topic, g.payload) for g in got] != [(with_bom.encode(), b"bom")]:
        raise Fail("received: " + ", ".join(g.describe() for g in got))


@case(
    "topic-no-unicode-normalisation",
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
    got = [g for g in await s.flush(via=p) if g.type == wire.PUBLISH]
    if [(g.topic, g.payload) for g in got] != [(nfc.encode(), b"nfc")]:
        raise Fail("received: " + ", ".join(g.describe() for g in got))


@case(
    "topic-case-sensitive",
    "MQTT-4.7.3-4",
    "MQTT-3.3.2-3",
    title="Topic matching is case-sensitive and '+' matches exactly one level",
)
async def case_sensitive(ctx: Context) -> None:
    base = ctx.topic("m")
    s = await ctx.connected("sub")
    await s.subscribe([(f"{base}/+/b", 1)])
    p = await ctx.connected("pub")
    for t in (f"{base}/a/B", f"{base}/a/c/b", f"{base}/b", f"{base}/a/b"):
        await p.publish(t, t.encode(), qos=1)
    got = [g for g in await s.flush(via=p) if g.type == wire.PUBLISH]
    if [g.topic for g in got] != [f"{base}/a/b".encode()]:
        raise Fail("'+/b' matched: " + ", ".join(str(g.topic) for g in got))


# ---- UNSUBSCRIBE ------------------------------------------------------------------------------


@case(
    "unsubscribe-stops-delivery",
    "MQTT-3.10.4-2",
    "MQTT-3.10.4-4",
    title="After UNSUBACK no new messages for the removed filter are delivered",
)
async def unsub_stops(ctx: Context) -> None:
    topic = ctx.topic("u")
    s = await ctx.connected("sub")
    await s.subscribe([(topic, 1)])
    unsuback = await s.unsubscribe([topic])
    if len(unsuback.raw) != 4:
        raise Fail(f"UNSUBACK {unsuback.raw.hex(' ')}")
    p = await ctx.connected("pub")
    await p.publish(topic, b"late", qos=1)
    got = [g for g in await s.flush(via=p) if g.type == wire.PUBLISH]
    if got:
        raise Fail("delivered after UNSUBACK: " + got[0].describe())


@case(
    "unsubscribe-exact-match-only",
    "MQTT-3.10.4-1",
    title="UNSUBSCRIBE 'x/a/y' does not remove 'x/+/y'; UNSUBSCRIBE 'x/+/y' does",
)
async def unsub_exact(ctx: Context) -> None:
    base = ctx.topic("e")
    s = await ctx.connected("sub")
    await s.subscribe([(f"{base}/+/y", 1)])
    await s.unsubscribe([f"{base}/a/y"])
    p = await ctx.connected("pub")
    await p.publish(f"{base}/a/y", b"still", qos=1)
    got = [g.payload for g in await s.flush(via=p) if g.type == wire.PUBLISH]
    if got != [b"still"]:
        raise Fail(f"after unsubscribing a non-matching string, delivered {got}")
    await s.unsubscribe([f"{base}/+/y"])
    await p.publish(f"{base}/a/y", b"gone", qos=1)
    got = [g.payload for g in await s.flush(via=p) if g.type == wire.PUBLISH]
    if got:
        raise Fail(f"after unsubscribing the exact filter, delivered {got}")


@case(
    "unsubscribe-multi-filter",
    "MQTT-3.10.4-6",
    "MQTT-3.10.4-4",
    title="UNSUBSCRIBE with two of three filters: one UNSUBACK; only the third still delivers",
)
async def unsub_multi(ctx: Context) -> None:
    a, b, c = ctx.topic("a"), ctx.topic("b"), ctx.topic("c")
    s = await ctx.connected("sub")
    await s.subscribe([(a, 1), (b, 1), (c, 1)])
    await s.send(wire.unsubscribe(0x4242, [a, b]))
    await s.expect_bytes(bytes.fromhex("b0024242"), "UNSUBACK")
    p = await ctx.connected("pub")
    for t in (a, b, c):
        await p.publish(t, t.encode(), qos=1)
    got = list(await s.flush(via=p))
    if [(g.type, g.topic) for g in got] != [(wire.PUBLISH, c.encode())]:
        raise Fail("after UNSUBSCRIBE [a, b]: " + ", ".join(g.describe() for g in got))


@case(
    "unsubscribe-completes-inflight-qos2",
    "MQTT-3.10.4-3",
    title="A QoS 2 delivery started before UNSUBSCRIBE is completed (PUBREC → PUBREL)",
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
    await s.send(wire.unsubscribe(3, [topic]))
    await s.expect_type(wire.UNSUBACK, 3)
    await s.send(wire.pubrec(pub.pid))
    await s.expect_bytes(wire.pubrel(pub.pid), "PUBREL")
    await s.send(wire.pubcomp(pub.pid))
    await s.ping()


@case(
    "subscription-lasts-whole-connection",
    "MQTT-4.1.0-2",
    "MQTT-4.1.0-1",
    title="A subscription keeps delivering across other SUBSCRIBE/UNSUBSCRIBE/PINGREQ traffic",
)
async def lasts(ctx: Context) -> None:
    topic = ctx.topic("l")
    s = await ctx.connected("sub")
    await s.subscribe([(topic, 1)])
    p = await ctx.connected("pub")
    for i in range(3):
        await s.subscribe([(ctx.topic(f"other{i}"), 0)])
        await s.unsubscribe([ctx.topic(f"other{i}")])
        await s.ping()
        await p.publish(topic, f"r{i}".encode(), qos=1)
        got = (await s.publishes(1))[0]
        if got.payload != f"r{i}".encode():
            raise Fail(f"round {i}: {got.describe()}")
