"""MQTT 5.0 clients next to MQTT 3.1.1 ones on the same broker, and the section 6 WebSocket
rules over MQTT 5 (these run only with --ws/--wss)."""

from __future__ import annotations

from conformance import wire
from conformance.core import Context, Fail, Skip, case5
from conformance.transport import WebSocketStream

PROPS: list[wire.PropertyIn] = [
    (wire.CONTENT_TYPE, "text/plain"),
    (wire.USER_PROPERTY, ("k", "v")),
    (wire.MESSAGE_EXPIRY_INTERVAL, 60),
    (wire.RESPONSE_TOPIC, "r"),
]


@case5(
    "v5-interop-v5-publisher-v311-subscriber",
    "MQTT-4.5.0-1",
    title="An MQTT 5 PUBLISH with properties reaches a 3.1.1 subscriber as a plain 3.1.1 "
    "PUBLISH (QoS 0 and 1, retained too)",
)
async def v5_to_v311(ctx: Context) -> None:
    topic = ctx.topic("i")
    p = await ctx.connected("pub5")
    await p.publish(topic, b"retained", qos=1, retain=True, properties=PROPS)
    s = await ctx.client("sub311")
    await s.connect(version=4)
    await s.subscribe([(topic, 1)])
    retained = (await s.publishes(1, "retained message"))[0]
    if retained.raw[0] != 0x33 or retained.payload != b"retained":
        raise Fail(f"3.1.1 subscriber got the retained message as {retained.raw.hex(' ')}")
    await p.publish(topic, b"q0", qos=0, properties=PROPS)
    await p.publish(topic, b"q1", qos=1, properties=PROPS)
    got = await s.publishes(2)
    if got[0].raw != wire.publish(topic, b"q0"):
        raise Fail(f"3.1.1 subscriber got {got[0].raw.hex(' ')}")
    if got[1].raw != wire.publish(topic, b"q1", 1, pid=got[1].pid):
        raise Fail(f"3.1.1 subscriber got {got[1].raw.hex(' ')}")


@case5(
    "v5-interop-v311-publisher-v5-subscriber",
    "MQTT-4.5.0-1",
    "MQTT-2.2.2-1",
    title="A 3.1.1 PUBLISH reaches an MQTT 5 subscriber as an MQTT 5 PUBLISH without properties",
)
async def v311_to_v5(ctx: Context) -> None:
    topic = ctx.topic("i")
    s = await ctx.connected("sub5")
    await s.subscribe([(topic, 1)])
    p = await ctx.client("pub311")
    await p.connect(version=4)
    await p.publish(topic, b"q0", qos=0)
    await p.publish(topic, b"q1", qos=1)
    got = await s.publishes(2)
    if got[0].raw != wire.publish(topic, b"q0", version=5):
        raise Fail(f"MQTT 5 subscriber got {got[0].raw.hex(' ')}")
    if got[1].raw != wire.publish(topic, b"q1", 1, pid=got[1].pid, version=5):
        raise Fail(f"MQTT 5 subscriber got {got[1].raw.hex(' ')}")


@case5(
    "v5-interop-session-across-versions",
    "MQTT-3.1.3-2",
    title="A 3.1.1 client and an MQTT 5 client with the same ClientId: the second takes over",
)
async def takeover_across(ctx: Context) -> None:
    cid = ctx.cid("x")
    a = await ctx.client("v311")
    await a.connect(cid, version=4)
    b = await ctx.client("v5")
    await b.connect(cid)
    await a.expect_closed()
    await b.ping()


async def _ws(ctx: Context, name: str, subprotocols: list[str] | None = None):  # type: ignore[no-untyped-def]
    c = await ctx.client(name, subprotocols=subprotocols)
    if not isinstance(c.stream, WebSocketStream):
        raise Skip("not a WebSocket connection")
    return c, c.stream


@case5(
    "v5-ws-subprotocol-mqtt",
    "MQTT-6.0.0-4",
    title="WebSocket, offering 'foo, mqtt': 'mqtt' is selected, and an MQTT 5 CONNECT works",
    transport="ws",
)
async def ws_subprotocol(ctx: Context) -> None:
    c, ws = await _ws(ctx, "c", ["foo", "mqtt"])
    if ws.subprotocol != "mqtt":
        raise Fail(f"Sec-WebSocket-Protocol returned {ws.subprotocol!r}")
    await c.connect()
    await c.ping()


@case5(
    "v5-ws-binary-frames-only",
    "MQTT-6.0.0-1",
    title="WebSocket: a text frame from an MQTT 5 client closes the connection",
    transport="ws",
)
async def ws_text(ctx: Context) -> None:
    c, ws = await _ws(ctx, "c")
    await c.connect()
    await ws.send_frames([wire.pingreq()], text=True)
    await c.expect_closed()


@case5(
    "v5-ws-packet-split-across-frames",
    "MQTT-6.0.0-2",
    title="WebSocket: an MQTT 5 CONNECT over three frames, then SUBSCRIBE+PINGREQ in one frame",
    transport="ws",
)
async def ws_split(ctx: Context) -> None:
    c, ws = await _ws(ctx, "c")
    data = wire.connect(ctx.cid(), keepalive=60, version=5)
    c.version = c.decoder.version = 5
    await ws.send_frames([data[:1], data[1:5], data[5:]])
    connack = await c.recv(what="CONNACK")
    if connack.type != wire.CONNACK or connack.reason != 0:
        raise Fail(f"got {connack.describe()}")
    await ws.send_frames([wire.subscribe(1, [(ctx.topic(), 1)], version=5) + wire.pingreq()])
    suback = await c.expect_type(wire.SUBACK, 1)
    if list(suback.codes) != [1]:
        raise Fail(f"got {suback.describe()}")
    await c.expect_type(wire.PINGRESP)
    pub = wire.publish(ctx.topic(), b"split", 1, pid=2, version=5)
    await ws.send_frames([pub[:3], pub[3:] + wire.pingreq()])
    await c.expect_type(wire.PUBACK, 2)
    await c.expect_type(wire.PINGRESP)
