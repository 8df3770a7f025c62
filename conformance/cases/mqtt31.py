"""MQTT 3.1 ("MQIsdp", level 3) clients, which a 3.1.1 broker may serve on the same port."""

from __future__ import annotations

from conformance import wire
from conformance.core import Context, Fail, case

V31 = ("MQIsdp", 3)


@case(
    "mqtt31-connect-accepted",
    title="CONNECT MQIsdp/3 is answered by exactly 20 02 00 00",
    mqtt31=True,
)
async def accepted(ctx: Context) -> None:
    c = await ctx.client()
    await c.send(wire.connect(ctx.cid(), proto=V31))
    await c.expect_bytes(wire.connack(False, 0), "CONNACK")
    await c.ping()


@case(
    "mqtt31-empty-client-id",
    title="MQIsdp CONNECT with a zero-byte ClientId: 20 02 00 02, then closed",
    mqtt31=True,
)
async def empty_id(ctx: Context) -> None:
    c = await ctx.client()
    await c.send(wire.connect("", proto=V31))
    await c.expect_bytes(wire.connack(False, 2), "CONNACK 0x02")
    await c.expect_closed()


@case(
    "mqtt31-no-session-present",
    title="MQIsdp CleanSession 0 reconnect: CONNACK byte 1 stays 0 (no Session Present in 3.1)",
    mqtt31=True,
)
async def no_sp(ctx: Context) -> None:
    cid = ctx.cid("v31")
    topic = ctx.topic("v31")
    a = await ctx.client("a")
    await a.connect(cid, clean=False, proto=V31)
    await a.subscribe([(topic, 1)])
    await a.disconnect()
    p = await ctx.connected("pub")
    await p.publish(topic, b"queued", qos=1)
    b = await ctx.client("b")
    await b.send(wire.connect(cid, clean=False, proto=V31))
    await b.expect_bytes(wire.connack(False, 0), "CONNACK 20 02 00 00")
    got = (await b.publishes(1, "queued message"))[0]
    if got.payload != b"queued":
        raise Fail(f"got {got.describe()}")


@case(
    "mqtt31-wrong-level",
    title="MQIsdp with level 4: refused with 0x01 then closed, or closed — never accepted",
    mqtt31=True,
)
async def wrong_level(ctx: Context) -> None:
    c = await ctx.client()
    await c.send(wire.connect(ctx.cid(), proto=("MQIsdp", 4)))
    seen = await c.expect_closed(allow_packets=True)
    if not seen:
        ctx.choice("closed without CONNACK")
    elif [p.raw for p in seen] == [wire.connack(False, 1)]:
        ctx.choice("refused with CONNACK 0x01")
    else:
        raise Fail("answered with " + ", ".join(p.describe() for p in seen))


@case(
    "mqtt31-pubsub",
    title="An MQIsdp client subscribes (SUBACK granted 0-2) and gets messages at QoS 0/1/2",
    mqtt31=True,
)
async def pubsub(ctx: Context) -> None:
    topic = ctx.topic("v31")
    s = await ctx.client("sub")
    await s.connect(proto=V31)
    suback = await s.subscribe([(topic, 2)], check=False)
    if list(suback.codes) not in ([0], [1], [2]):
        raise Fail(f"SUBACK to a 3.1 client: {list(suback.codes)}")
    p = await ctx.client("pub")
    await p.connect(proto=V31)
    for q in (0, 1, 2):
        await p.publish(topic, f"q{q}".encode(), qos=q)
    got = await s.publishes(3)
    if [g.payload for g in got] != [b"q0", b"q1", b"q2"]:
        raise Fail("received " + ", ".join(g.describe() for g in got))


@case(
    "mqtt31-long-client-id",
    title="MQIsdp ClientId of 30 characters: 0x02 (3.1 text) or accepted — a choice",
    mqtt31=True,
)
async def long_id(ctx: Context) -> None:
    c = await ctx.client()
    pkt = await c.connect((ctx.run_id * 4)[:30], expect_code=None, proto=V31)
    if pkt.raw == wire.connack(False, 0):
        ctx.choice("3.1 ClientIds over 23 characters are accepted")
    elif pkt.raw == wire.connack(False, 2):
        await c.expect_closed()
        ctx.choice("3.1 ClientIds over 23 characters are rejected with 0x02")
    else:
        raise Fail(f"answered with {pkt.raw.hex(' ')}")


@case(
    "mqtt31-will",
    title="An MQIsdp client's Will is published when its connection drops",
    mqtt31=True,
)
async def will31(ctx: Context) -> None:
    wt = ctx.topic("will31")
    s = await ctx.connected("watch")
    await s.subscribe([(wt, 1)])
    c = await ctx.client("dying")
    await c.connect(will=(wt, b"bye31"), proto=V31)
    await c.aclose()
    got = (await s.publishes(1, "Will"))[0]
    if got.payload != b"bye31":
        raise Fail(f"got {got.describe()}")
