"""Retained messages (MQTT 3.1.1 section 3.3.1.3)."""

from __future__ import annotations

from mqttd.server import Server
from tests.helpers import wire
from tests.helpers.client import connect_client, subscribe, sync


async def test_retained_delivered_on_subscribe_with_retain_flag(server: Server) -> None:
    """A retained message goes to new subscribers with RETAIN=1 [MQTT-3.3.1-5] [MQTT-3.3.1-6]
    [MQTT-3.3.1-8]."""
    pub = await connect_client(server.port(), "pub")
    await pub.send(wire.publish("ret/a", b"kept", qos=1, retain=True, pid=1))
    await pub.expect(wire.puback(1))
    sub = await connect_client(server.port(), "sub")
    await subscribe(sub, 1, ("ret/+", 1))
    await sub.expect(wire.publish("ret/a", b"kept", qos=1, retain=True, pid=1))


async def test_retain_flag_cleared_on_normal_forwarding(server: Server) -> None:
    """Live forwarding of a retained publish has RETAIN=0 [MQTT-3.3.1-9]."""
    sub = await connect_client(server.port(), "sub")
    await subscribe(sub, 1, ("live", 0))
    await sub.send(wire.publish("live", b"x", retain=True))
    await sub.expect(wire.publish("live", b"x"))


async def test_retained_replaced_and_qos0_replaces(server: Server) -> None:
    """A new retained message replaces the old, including at QoS 0 [MQTT-3.3.1-7]."""
    pub = await connect_client(server.port(), "pub")
    await pub.send(wire.publish("rep", b"old", qos=1, retain=True, pid=1))
    await pub.expect(wire.puback(1))
    await pub.send(wire.publish("rep", b"new", qos=0, retain=True))
    await sync(pub)
    sub = await connect_client(server.port(), "sub")
    await subscribe(sub, 1, ("rep", 2))
    await sub.expect(wire.publish("rep", b"new", retain=True))
    await sync(sub)


async def test_empty_retained_deletes_but_is_forwarded(server: Server) -> None:
    """A zero-byte retained publish is forwarded [MQTT-3.3.1-10] and deletes the retained
    message instead of being stored [MQTT-3.3.1-11]."""
    pub = await connect_client(server.port(), "pub")
    await pub.send(wire.publish("del", b"x", retain=True))
    live = await connect_client(server.port(), "live")
    await subscribe(live, 1, ("del", 0))
    await live.expect(wire.publish("del", b"x", retain=True))
    await pub.send(wire.publish("del", b"", retain=True))
    await live.expect(wire.publish("del", b""))
    late = await connect_client(server.port(), "late")
    await subscribe(late, 1, ("del", 0))
    await sync(late)
    assert server.broker.retained.get("del") is None


async def test_non_retained_publish_leaves_retained_alone(server: Server) -> None:
    """RETAIN=0 neither stores nor removes the retained message [MQTT-3.3.1-12]."""
    pub = await connect_client(server.port(), "pub")
    await pub.send(wire.publish("keep", b"r", retain=True))
    await pub.send(wire.publish("keep", b"plain"))
    await pub.send(wire.publish("keep", b""))
    await sync(pub)
    sub = await connect_client(server.port(), "sub")
    await subscribe(sub, 1, ("keep", 0))
    await sub.expect(wire.publish("keep", b"r", retain=True))


async def test_resubscribe_resends_retained(server: Server) -> None:
    """Re-subscribing to an identical filter re-sends matching retained messages
    [MQTT-3.8.4-3]."""
    pub = await connect_client(server.port(), "pub")
    await pub.send(wire.publish("again", b"r", retain=True))
    await sync(pub)
    sub = await connect_client(server.port(), "sub")
    await subscribe(sub, 1, ("again", 0))
    await sub.expect(wire.publish("again", b"r", retain=True))
    await subscribe(sub, 2, ("again", 0))
    await sub.expect(wire.publish("again", b"r", retain=True))


async def test_retained_survive_session_end(server: Server) -> None:
    """Retained messages are not part of a session and outlive it [MQTT-3.1.2-7]."""
    pub = await connect_client(server.port(), "pub")
    await pub.send(wire.publish("survive", b"r", retain=True) + wire.disconnect())
    await pub.expect_closed()
    sub = await connect_client(server.port(), "sub")
    await subscribe(sub, 1, ("#", 0))
    await sub.expect(wire.publish("survive", b"r", retain=True))
