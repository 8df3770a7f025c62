"""Cases that need broker configuration: credentials and ACLs. Skipped unless configured."""

from __future__ import annotations

from conformance import wire
from conformance.core import Context, Fail, Skip, case


@case(
    "auth-bad-password",
    "MQTT-3.2.2-4",
    "MQTT-3.2.2-5",
    title="Wrong password (needs --username/--password): CONNACK 0x04/0x05, SP 0, then closed",
)
async def bad_password(ctx: Context) -> None:
    if ctx.target.username is None:
        raise Skip("needs --username/--password of a broker that checks credentials")
    c = await ctx.client()
    await c.send(
        wire.connect(
            ctx.cid(),
            username=ctx.target.username,
            password=(ctx.target.password or "").encode() + b"-wrong",
        )
    )
    pkt = await c.recv(what="CONNACK")
    if pkt.raw not in (wire.connack(False, 4), wire.connack(False, 5)):
        raise Fail(f"wrong password answered with {pkt.describe()}")
    await c.expect_closed()
    ctx.choice(f"wrong password refused with code {pkt.raw[3]:#04x}")


@case(
    "acl-publish-denied",
    "MQTT-3.3.5-2",
    title="PUBLISH to an ACL-denied topic (needs --denied-topic): positive ack or close — a choice",
)
async def publish_denied(ctx: Context) -> None:
    topic = ctx.target.denied_topic
    if topic is None:
        raise Skip("needs --denied-topic: a topic the ACL forbids this identity to publish to")
    c = await ctx.connected()
    await c.send(wire.publish(topic, b"denied", qos=1, pid=11))
    try:
        pkt = await c.recv(what="PUBACK or close")
    except Fail:
        if c.closed:
            ctx.choice("an unauthorised PUBLISH closes the connection")
            return
        raise
    if pkt.raw != wire.puback(11):
        raise Fail(f"unauthorised QoS 1 PUBLISH answered with {pkt.describe()}")
    await c.send(wire.publish(topic, b"denied", qos=2, pid=12))
    await c.expect_bytes(wire.pubrec(12), "PUBREC")
    await c.send(wire.pubrel(12))
    await c.expect_bytes(wire.pubcomp(12), "PUBCOMP")
    ctx.choice("an unauthorised PUBLISH is acknowledged normally (and dropped)")
