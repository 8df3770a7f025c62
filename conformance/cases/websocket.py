"""Section 6 WebSocket rules; these run only with --ws/--wss."""

from __future__ import annotations

from conformance import wire
from conformance.core import Context, Fail, Skip, case
from conformance.transport import WebSocketStream


async def _ws_client(ctx: Context, name: str, subprotocols: list[str] | None = None):  # type: ignore[no-untyped-def]
    c = await ctx.client(name, subprotocols=subprotocols)
    if not isinstance(c.stream, WebSocketStream):
        raise Skip("not a WebSocket connection")
    return c, c.stream


@case(
    "ws-subprotocol-mqtt",
    "MQTT-6.0.0-4",
    title="Offering subprotocol 'mqtt': the handshake returns exactly 'mqtt'",
    transport="ws",
)
async def subprotocol(ctx: Context) -> None:
    _, ws = await _ws_client(ctx, "c", ["mqtt"])
    if ws.subprotocol != "mqtt":
        raise Fail(f"Sec-WebSocket-Protocol returned {ws.subprotocol!r}")


@case(
    "ws-subprotocol-mqtt-among-others",
    "MQTT-6.0.0-4",
    title="Offering 'foo, mqtt': the server selects 'mqtt'",
    transport="ws",
)
async def subprotocol_choice(ctx: Context) -> None:
    _, ws = await _ws_client(ctx, "c", ["foo", "mqtt"])
    if ws.subprotocol != "mqtt":
        raise Fail(f"Sec-WebSocket-Protocol returned {ws.subprotocol!r}")


@case(
    "ws-binary-frames-only",
    "MQTT-6.0.0-1",
    title="The broker sends binary frames; a text frame from the client closes the connection",
    transport="ws",
)
async def text_frame(ctx: Context) -> None:
    c, ws = await _ws_client(ctx, "c")
    await c.connect()
    await ws.send_frames([wire.pingreq()], text=True)
    await c.expect_closed()


@case(
    "ws-packet-split-across-frames",
    "MQTT-6.0.0-2",
    title="CONNECT split over three binary frames, then SUBSCRIBE+PINGREQ in one frame: all work",
    transport="ws",
)
async def split(ctx: Context) -> None:
    c, ws = await _ws_client(ctx, "c")
    data = wire.connect(ctx.cid())
    await ws.send_frames([data[:1], data[1:5], data[5:]])
    await c.expect_bytes(wire.connack(False, 0), "CONNACK")
    await ws.send_frames([wire.subscribe(1, [(ctx.topic(), 1)]) + wire.pingreq()])
    await c.expect_bytes(bytes.fromhex("9003000101"), "SUBACK")
    await c.expect_bytes(bytes.fromhex("d000"), "PINGRESP")
    # Half a packet, then the rest with a whole packet in the same frame.
    ping = wire.publish(ctx.topic(), b"split", qos=1, pid=2)
    await ws.send_frames([ping[:3], ping[3:] + wire.pingreq()])
    await c.wait_for(lambda p: p.type == wire.PUBACK and p.pid == 2, "PUBACK")
    await c.expect_type(wire.PINGRESP)
