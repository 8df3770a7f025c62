"""QoS 1 and QoS 2 flows in both directions (MQTT 3.1.1 sections 3.3 - 3.7, 4.3)."""

from __future__ import annotations

from mqttd.server import Server
from tests.helpers import wire
from tests.helpers.client import connect_client, subscribe, sync


async def test_qos1_inbound_puback(server: Server) -> None:
    """A QoS 1 PUBLISH is answered with PUBACK carrying its packet id [MQTT-3.3.4-1]
    [MQTT-4.3.2-2] [MQTT-2.3.1-6]."""
    pub = await connect_client(server.port(), "pub")
    await pub.send(wire.publish("t", b"x", qos=1, pid=4242))
    await pub.expect(wire.puback(4242))


async def test_qos2_inbound_flow(server: Server) -> None:
    """QoS 2: PUBREC, then PUBCOMP for the PUBREL [MQTT-4.3.3-2] [MQTT-3.3.4-1]."""
    pub = await connect_client(server.port(), "pub")
    await pub.send(wire.publish("t", b"x", qos=2, pid=7))
    await pub.expect(wire.pubrec(7))
    await pub.send(wire.pubrel(7))
    await pub.expect(wire.pubcomp(7))


async def test_qos2_inbound_exactly_once(server: Server) -> None:
    """A QoS 2 PUBLISH re-sent (DUP) before PUBREL is not delivered again [MQTT-4.3.3-2]."""
    sub = await connect_client(server.port(), "sub")
    await subscribe(sub, 1, ("once", 0), ("marker", 0))
    pub = await connect_client(server.port(), "pub")
    await pub.send(wire.publish("once", b"1", qos=2, pid=9))
    await pub.expect(wire.pubrec(9))
    await pub.send(wire.publish("once", b"1", qos=2, dup=True, pid=9))
    await pub.expect(wire.pubrec(9))
    await pub.send(wire.pubrel(9))
    await pub.expect(wire.pubcomp(9))
    await pub.send(wire.publish("marker", b"m"))
    await sub.expect(wire.publish("once", b"1"))
    await sub.expect(wire.publish("marker", b"m"))


async def test_pubrel_for_unknown_id_gets_pubcomp(server: Server) -> None:
    """PUBREL is always answered with PUBCOMP [MQTT-4.3.3-2]."""
    pub = await connect_client(server.port(), "pub")
    await pub.send(wire.pubrel(321))
    await pub.expect(wire.pubcomp(321))


async def test_qos2_publisher_with_100_unreleased_loses_nothing(server: Server) -> None:
    """100 QoS 2 messages left unreleased are all delivered exactly once (Mosquitto 2.0.11
    drops those past 20)."""
    sub = await connect_client(server.port(), "sub")
    await subscribe(sub, 1, ("bulk/#", 0))
    pub = await connect_client(server.port(), "pub")
    await pub.send(
        b"".join(wire.publish(f"bulk/{i}", b"%d" % i, qos=2, pid=i) for i in range(1, 101))
    )
    for i in range(1, 101):
        await pub.expect(wire.pubrec(i))
    for i in range(1, 101):
        await sub.expect(wire.publish(f"bulk/{i}", b"%d" % i))
    await pub.send(b"".join(wire.pubrel(i) for i in range(1, 101)))
    for i in range(1, 101):
        await pub.expect(wire.pubcomp(i))
    await sync(sub)


async def test_qos1_outbound_needs_puback(server: Server) -> None:
    """Outbound QoS 1: the broker sends PUBLISH with a packet id; PUBACK completes it
    [MQTT-4.3.2-1]."""
    sub = await connect_client(server.port(), "sub")
    await subscribe(sub, 1, ("o1", 1))
    await sub.send(wire.publish("o1", b"x", qos=1, pid=50))
    await sub.expect(wire.puback(50))
    await sub.expect(wire.publish("o1", b"x", qos=1, pid=1))
    assert list(server.broker.sessions["sub"].inflight) == [1]
    await sub.send(wire.puback(1))
    await sync(sub)
    assert not server.broker.sessions["sub"].inflight


async def test_qos2_outbound_flow(server: Server) -> None:
    """Outbound QoS 2: PUBLISH, PUBREC → PUBREL (flags 0010), PUBCOMP [MQTT-4.3.3-1]
    [MQTT-3.6.1-1]."""
    sub = await connect_client(server.port(), "sub")
    await subscribe(sub, 1, ("o2", 2))
    pub = await connect_client(server.port(), "pub")
    await pub.send(wire.publish("o2", b"x", qos=2, pid=1))
    await pub.expect(wire.pubrec(1))
    await sub.expect(wire.publish("o2", b"x", qos=2, pid=1))
    await sub.send(wire.pubrec(1))
    await sub.expect(wire.pubrel(1))
    await sub.send(wire.pubcomp(1))
    await sync(sub)
    assert not server.broker.sessions["sub"].inflight


async def test_inflight_window_limits_unacked(start_server) -> None:  # type: ignore[no-untyped-def]
    """At most max_inflight_messages unacknowledged QoS 1 messages; acks release the rest in
    order [MQTT-4.6.0-2]."""
    server = await start_server(max_inflight_messages=3)
    sub = await connect_client(server.port(), "sub")
    await subscribe(sub, 1, ("w", 1))
    pub = await connect_client(server.port(), "pub")
    for i in range(1, 6):
        await pub.send(wire.publish("w", b"%d" % i, qos=1, pid=i))
        await pub.expect(wire.puback(i))
    for i in range(1, 4):
        await sub.expect(wire.publish("w", b"%d" % i, qos=1, pid=i))
    await sync(sub)  # nothing more arrives while the window is full
    assert len(server.broker.sessions["sub"].queue) == 2
    await sub.send(wire.puback(1) + wire.puback(2))
    await sub.expect(wire.publish("w", b"4", qos=1, pid=4))
    await sub.expect(wire.publish("w", b"5", qos=1, pid=5))


async def test_qos0_publish_packet_has_no_packet_id(server: Server) -> None:
    """QoS 0 deliveries carry no packet id and DUP=0 [MQTT-2.3.1-5] [MQTT-3.3.1-2]."""
    sub = await connect_client(server.port(), "sub")
    await subscribe(sub, 1, ("z", 0))
    await sub.send(wire.publish("z", b"p", qos=2, pid=8))
    await sub.expect(wire.pubrec(8))
    await sub.expect(bytes.fromhex("30 04 00 01 7a 70".replace(" ", "")))


async def test_large_message_arrives_intact(server: Server) -> None:
    """A 3 MiB payload, far more than one non-blocking send takes, arrives whole and in order
    with a small one after it (the writer task finishes what the direct send could not)."""
    payload = bytes(range(256)) * (3 * 4096)
    sub = await connect_client(server.port(), "sub")
    await subscribe(sub, 1, ("big/#", 1))
    pub = await connect_client(server.port(), "pub")
    await pub.send(wire.publish("big/1", payload, qos=1, pid=1) + wire.publish("big/2", b"after"))
    await pub.expect(wire.puback(1))
    await sub.expect(wire.publish("big/1", payload, qos=1, pid=1))
    await sub.expect(wire.publish("big/2", b"after"))
