"""CONNECT / CONNACK, ClientId, takeover, keep-alive and session (CleanSession) cases."""

from __future__ import annotations

import trio

from conformance import wire
from conformance.core import Context, Fail, case, rand


@case(
    "connect-client-id-23-alnum",
    "MQTT-3.1.3-5",
    "MQTT-3.1.4-4",
    title="A 23-character alphanumeric ClientId is accepted with 20 02 00 00",
)
async def client_id_23(ctx: Context) -> None:
    c = await ctx.client()
    await c.send(wire.connect(("Z" + ctx.run_id + rand(23))[:23]))
    await c.expect_bytes(wire.connack(False, 0), "CONNACK")
    await c.ping()


@case(
    "connect-client-id-1-char",
    "MQTT-3.1.3-5",
    title="A 1-character ClientId is accepted",
)
async def client_id_1(ctx: Context) -> None:
    c = await ctx.client()
    await c.send(wire.connect(rand(1)))
    await c.expect_bytes(wire.connack(False, 0), "CONNACK")


@case(
    "connect-client-id-long",
    "MQTT-3.1.3-9",
    title="A 64-character ClientId: accepted (MAY) or CONNACK 0x02 then close — a choice",
)
async def client_id_long(ctx: Context) -> None:
    c = await ctx.client()
    pkt = await c.connect(("L" + ctx.run_id) * 7 + rand(1), expect_code=None)
    code = pkt.raw[3]
    if code == 0:
        ctx.choice("ClientIds longer than 23 bytes are accepted")
    elif pkt.raw == wire.connack(False, 2):
        await c.expect_closed()
        ctx.choice("ClientIds longer than 23 bytes are rejected with 0x02")
    else:
        raise Fail(f"long ClientId answered with {pkt.raw.hex(' ')} (only 00 or 02 allowed)")


@case(
    "connect-client-id-punctuation",
    "MQTT-3.1.3-9",
    title="ClientId 'a-b_c/d': accepted, or CONNACK 0x02 then close — a choice",
)
async def client_id_punct(ctx: Context) -> None:
    c = await ctx.client()
    pkt = await c.connect(f"a-b_c/d.{ctx.run_id}", expect_code=None)
    if pkt.raw == wire.connack(False, 0):
        ctx.choice("ClientIds with non-alphanumeric characters are accepted")
    elif pkt.raw == wire.connack(False, 2):
        await c.expect_closed()
        ctx.choice("ClientIds with non-alphanumeric characters are rejected with 0x02")
    else:
        raise Fail(f"answered with {pkt.raw.hex(' ')}")


@case(
    "connect-empty-id-clean",
    "MQTT-3.1.3-6",
    "MQTT-3.1.3-9",
    title="Zero-byte ClientId with CleanSession 1: unique id assigned (two coexist), or 0x02",
)
async def empty_id_clean(ctx: Context) -> None:
    a = await ctx.client("a")
    pkt = await a.connect("", expect_code=None)
    if pkt.raw == wire.connack(False, 2):
        await a.expect_closed()
        ctx.choice("zero-byte ClientIds are rejected with 0x02")
        return
    if pkt.raw != wire.connack(False, 0):
        raise Fail(f"zero-byte ClientId answered with {pkt.raw.hex(' ')}")
    b = await ctx.client("b")
    await b.connect("")
    # Both must still be connected: the second did not take over the first's (assigned) id.
    topic = ctx.topic("t")
    await a.subscribe([(topic, 0)])
    await b.subscribe([(topic, 0)])
    await b.publish(topic, b"both", qos=1)
    for c in (a, b):
        got = await c.publishes(1)
        if got[0].payload != b"both":
            raise Fail(f"{c.label} received {got[0].describe()}")
    ctx.choice("zero-byte ClientIds are accepted with a unique assigned id")


@case(
    "connect-keepalive-expiry",
    "MQTT-3.1.2-24",
    title="Keep Alive 1 s and silence: the broker closes the connection (1.5 x keep alive)",
)
async def keepalive(ctx: Context) -> None:
    c = await ctx.client()
    await c.connect(keepalive=1)
    start = trio.current_time()
    await c.expect_closed(grace=1.5)
    if trio.current_time() - start < 1.0:
        raise Fail(f"closed after {trio.current_time() - start:.2f}s, before the keep-alive period")


@case(
    "connect-keepalive-kept",
    "MQTT-3.1.2-24",
    "MQTT-4.1.0-2",
    title="Keep Alive 1 s with PINGREQs every 0.4 s: the connection stays open for 3 s",
)
async def keepalive_kept(ctx: Context) -> None:
    c = await ctx.client()
    await c.connect(keepalive=1)
    for _ in range(6):
        await trio.sleep(0.4)  # the client's own keep-alive schedule, not a synchronisation
        await c.ping()


@case(
    "connect-takeover",
    "MQTT-3.1.4-2",
    title="A second connection with the same ClientId disconnects the first",
)
async def takeover(ctx: Context) -> None:
    cid = ctx.cid("dup")
    a = await ctx.client("first")
    await a.connect(cid)
    b = await ctx.client("second")
    await b.connect(cid)
    await a.expect_closed()
    await b.ping()


@case(
    "connect-rejected-ignores-following-data",
    "MQTT-3.1.4-5",
    "MQTT-3.2.2-5",
    title="CONNECT refused (level 42) + retained PUBLISH in the same write: PUBLISH not processed",
)
async def rejected_ignores(ctx: Context) -> None:
    topic = ctx.topic("rej")
    ctx.retained_topics.add(topic)
    c = await ctx.client()
    await c.send(
        wire.connect(ctx.cid(), proto=("MQTT", 42))
        + wire.publish(topic, b"must-not-exist", qos=1, retain=True, pid=1)
    )
    await c.expect_bytes(wire.connack(False, 1), "CONNACK 0x01")
    await c.expect_closed()
    s = await ctx.connected("check")
    await s.subscribe([(topic, 1)])
    before = await s.flush()
    if any(p.type == wire.PUBLISH for p in before):
        raise Fail("data after the refused CONNECT was processed: " + before[0].describe())


@case(
    "connect-rejected-empty-id-ignores-following-data",
    "MQTT-3.1.4-5",
    title="CONNECT refused (empty id, CleanSession 0) + retained PUBLISH: PUBLISH not processed",
)
async def rejected_ignores_2(ctx: Context) -> None:
    topic = ctx.topic("rej")
    ctx.retained_topics.add(topic)
    c = await ctx.client()
    await c.send(
        wire.connect("", clean=False) + wire.publish(topic, b"must-not-exist", qos=0, retain=True)
    )
    await c.expect_bytes(wire.connack(False, 2), "CONNACK 0x02")
    await c.expect_closed()
    s = await ctx.connected("check")
    await s.subscribe([(topic, 1)])
    before = await s.flush()
    if any(p.type == wire.PUBLISH for p in before):
        raise Fail("data after the refused CONNECT was processed: " + before[0].describe())


@case(
    "connect-first-packet-connack-with-retained",
    "MQTT-3.2.0-1",
    title="CONNECT+SUBSCRIBE (retained waiting) in one write: CONNACK is the first packet",
)
async def connack_first(ctx: Context) -> None:
    topic = ctx.topic("r")
    p = await ctx.connected("pub")
    await p.publish(topic, b"retained", qos=1, retain=True)
    c = await ctx.client("sub")
    await c.send(wire.connect(ctx.cid()) + wire.subscribe(1, [(topic, 0)]))
    first = await c.recv(what="CONNACK")
    if first.raw != wire.connack(False, 0):
        raise Fail(f"first packet from the broker was {first.describe()}, not CONNACK")
    await c.expect_type(wire.SUBACK, 1)
    await c.publishes(1, "retained message")


# ---- sessions -------------------------------------------------------------------------------


@case(
    "session-present-0-new-persistent",
    "MQTT-3.2.2-3",
    "MQTT-3.1.2-4",
    title="CleanSession 0 with no stored session: exactly 20 02 00 00",
)
async def sp0_new(ctx: Context) -> None:
    c = await ctx.client()
    cid = ctx.cid("p")
    ctx.persistent_ids.add((cid, 4))
    await c.send(wire.connect(cid, clean=False))
    await c.expect_bytes(wire.connack(False, 0), "CONNACK")


@case(
    "session-resume",
    "MQTT-3.1.2-4",
    "MQTT-3.2.2-2",
    "MQTT-3.1.4-3",
    "MQTT-3.1.3-2",
    "MQTT-4.1.0-1",
    title="CleanSession 0 reconnect: Session Present 1 and the subscription still delivers",
)
async def session_resume(ctx: Context) -> None:
    a, cid, topic = await ctx.persistent_subscriber(1)
    await a.disconnect()
    b = await ctx.client("a2")
    await b.send(wire.connect(cid, clean=False))
    await b.expect_bytes(wire.connack(True, 0), "CONNACK with Session Present 1")
    other = await ctx.client("other")
    pkt = await other.connect(ctx.cid("o"), clean=False)
    if pkt.raw != wire.connack(False, 0):
        raise Fail(f"a different ClientId got {pkt.raw.hex(' ')}: session state not keyed by id")
    p = await ctx.connected("pub")
    await p.publish(topic, b"after-resume", qos=1)
    got = await b.publishes(1)
    if got[0].payload != b"after-resume":
        raise Fail(f"resumed session received {got[0].describe()}")


@case(
    "session-clean-discards",
    "MQTT-3.1.2-6",
    "MQTT-3.2.2-1",
    "MQTT-3.1.4-3",
    title="CleanSession 1 discards a stored session: SP 0, no old subscription, not reused later",
)
async def session_clean_discards(ctx: Context) -> None:
    a, cid, topic = await ctx.persistent_subscriber(1)
    await a.disconnect()
    b = await ctx.client("clean")
    await b.send(wire.connect(cid, clean=True))
    await b.expect_bytes(wire.connack(False, 0), "CONNACK with Session Present 0")
    p = await ctx.connected("pub")
    await p.publish(topic, b"old-subscription", qos=1)
    before = await b.flush(via=p)
    if any(x.type == wire.PUBLISH for x in before):
        raise Fail("the discarded session's subscription still delivered: " + before[0].describe())
    await b.disconnect()
    c = await ctx.client("again")
    await c.send(wire.connect(cid, clean=False))
    await c.expect_bytes(wire.connack(False, 0), "CONNACK with Session Present 0")


@case(
    "session-offline-qos12-stored",
    "MQTT-3.1.2-5",
    "MQTT-4.5.0-1",
    "MQTT-4.1.0-1",
    title="QoS 1 and 2 messages for a disconnected CleanSession 0 client are delivered on return",
)
async def offline_stored(ctx: Context) -> None:
    a, cid, topic = await ctx.persistent_subscriber(2)
    await a.disconnect()
    p = await ctx.connected("pub")
    await p.publish(topic, b"q1", qos=1)
    await p.publish(topic, b"q2", qos=2)
    b = await ctx.client("a2")
    await b.connect(cid, clean=False)
    got = await b.publishes(2)
    if sorted((x.payload, x.qos) for x in got) != [(b"q1", 1), (b"q2", 2)]:
        raise Fail("stored messages: " + ", ".join(x.describe() for x in got))


@case(
    "session-offline-qos0-choice",
    "MQTT-3.1.2-5",
    title="QoS 0 messages for a disconnected session: queued or not — a broker choice",
)
async def offline_qos0(ctx: Context) -> None:
    a, cid, topic = await ctx.persistent_subscriber(1)
    await a.disconnect()
    p = await ctx.connected("pub")
    await p.publish(topic, b"qos0", qos=0)
    await p.publish(topic, b"qos1", qos=1)
    b = await ctx.client("a2")
    await b.connect(cid, clean=False)
    got = await b.wait_for(lambda x: x.type == wire.PUBLISH and x.payload == b"qos1", "QoS 1 msg")
    if got.qos != 1:
        raise Fail(f"QoS 1 message delivered as {got.describe()}")
    if any(x.type == wire.PUBLISH and x.payload == b"qos0" for x in b.backlog):
        ctx.choice("QoS 0 messages are queued for offline sessions")
    else:
        ctx.choice("QoS 0 messages are not queued for offline sessions")


@case(
    "session-redeliver-unacked-qos1",
    "MQTT-4.4.0-1",
    "MQTT-3.3.1-1",
    "MQTT-4.3.2-1",
    title="Unacknowledged QoS 1 PUBLISH is re-sent on reconnect with DUP 1 and the same pid",
)
async def redeliver_qos1(ctx: Context) -> None:
    a, cid, topic = await ctx.persistent_subscriber(1)
    a.auto_ack = False
    p = await ctx.connected("pub")
    await p.publish(topic, b"unacked", qos=1)
    first = (await a.publishes(1))[0]
    if first.qos != 1 or first.dup or not first.pid:
        raise Fail(f"first delivery {first.describe()} (want QoS 1, DUP 0, pid ≠ 0)")
    await a.aclose()
    b = await ctx.client("a2")
    await b.connect(cid, clean=False)
    again = (await b.publishes(1))[0]
    if again.pid != first.pid or not again.dup or again.payload != b"unacked":
        raise Fail(f"re-delivery {again.describe()}; first was pid {first.pid}")


@case(
    "session-redeliver-order",
    "MQTT-4.6.0-1",
    "MQTT-4.4.0-1",
    title="Several unacknowledged QoS 1 messages are re-sent in their original order",
)
async def redeliver_order(ctx: Context) -> None:
    a, cid, topic = await ctx.persistent_subscriber(1)
    a.auto_ack = False
    p = await ctx.connected("pub")
    payloads = [f"m{i}".encode() for i in range(5)]
    for pl in payloads:
        await p.publish(topic, pl, qos=1)
    first = await a.publishes(5)
    await a.aclose()
    b = await ctx.client("a2")
    await b.connect(cid, clean=False)
    again = await b.publishes(5)
    if [x.payload for x in again] != [x.payload for x in first]:
        raise Fail(f"re-sent order {[x.payload for x in again]} vs {[x.payload for x in first]}")
    if [x.pid for x in again] != [x.pid for x in first]:
        raise Fail("re-sent packet identifiers differ from the original ones")


@case(
    "session-redeliver-pubrel",
    "MQTT-4.4.0-1",
    "MQTT-4.3.3-1",
    title="QoS 2 outbound: after PUBREC the broker sends PUBREL; on reconnect it re-sends PUBREL,"
    " not the PUBLISH",
)
async def redeliver_pubrel(ctx: Context) -> None:
    a, cid, topic = await ctx.persistent_subscriber(2)
    a.auto_ack = False
    p = await ctx.connected("pub")
    await p.publish(topic, b"exactly-once", qos=2)
    pub = (await a.publishes(1))[0]
    if pub.qos != 2 or pub.dup or not pub.pid:
        raise Fail(f"delivery {pub.describe()} (want QoS 2, DUP 0, pid ≠ 0)")
    await a.send(wire.pubrec(pub.pid))
    await a.expect_bytes(wire.pubrel(pub.pid), "PUBREL")
    await a.aclose()
    b = await ctx.client("a2")
    b.auto_ack = False
    await b.connect(cid, clean=False)
    pkt = await b.recv(what="re-sent PUBREL")
    if pkt.raw != wire.pubrel(pub.pid):
        raise Fail(f"after reconnect got {pkt.describe()}, expected PUBREL pid {pub.pid}")
    await b.send(wire.pubcomp(pub.pid))
    b.auto_ack = True
    before = await b.flush(via=p)
    if any(x.type == wire.PUBLISH and x.payload == b"exactly-once" for x in before):
        raise Fail("the PUBLISH was re-sent after its PUBREL")


@case(
    "session-retained-survives-session-end",
    "MQTT-3.1.2-7",
    title="A retained message outlives the (clean) session of the client that published it",
)
async def retained_survives(ctx: Context) -> None:
    topic = ctx.topic("r")
    p = await ctx.connected("pub")
    await p.publish(topic, b"keep-me", qos=1, retain=True)
    await p.disconnect()
    s = await ctx.connected("sub")
    await s.subscribe([(topic, 1)])
    got = (await s.publishes(1))[0]
    if got.payload != b"keep-me" or not got.retain:
        raise Fail(f"got {got.describe()}")
