"""Sessions: clean and persistent, offline queueing, redelivery (MQTT 3.1.1 sections 3.1.2.4,
4.1, 4.4)."""

from __future__ import annotations

from structlog.testing import capture_logs

from mqttd.server import Server
from tests.helpers import wire
from tests.helpers.client import connect_client, subscribe, sync


async def test_persistent_session_present_and_queued_messages(server: Server) -> None:
    """A persistent session keeps subscriptions and stores QoS 1/2 messages while offline
    [MQTT-3.1.2-4] [MQTT-3.1.2-5] [MQTT-3.2.2-2]; QoS 0 is not kept (Mosquitto's default)."""
    sub = await connect_client(server.port(), "p", clean=False)
    await subscribe(sub, 1, ("off/#", 2))
    await sub.send(wire.disconnect())
    await sub.expect_closed()
    pub = await connect_client(server.port(), "pub")
    await pub.send(wire.publish("off/0", b"zero"))
    await pub.send(wire.publish("off/1", b"one", qos=1, pid=1))
    await pub.expect(wire.puback(1))
    await pub.send(wire.publish("off/2", b"two", qos=2, pid=2))
    await pub.expect(wire.pubrec(2))
    sub = await connect_client(server.port(), "p", clean=False, session_present=True)
    await sub.expect(wire.publish("off/1", b"one", qos=1, pid=1))
    await sub.expect(wire.publish("off/2", b"two", qos=2, pid=2))
    await sync(sub)


async def test_new_persistent_session_not_present(server: Server) -> None:
    """CleanSession=0 with no stored session → Session Present 0 [MQTT-3.2.2-3]."""
    await connect_client(server.port(), "fresh", clean=False, session_present=False)


async def test_clean_session_discards_state(server: Server) -> None:
    """CleanSession=1 discards a stored session; Session Present 0 [MQTT-3.1.2-6]
    [MQTT-3.2.2-1]."""
    sub = await connect_client(server.port(), "c", clean=False)
    await subscribe(sub, 1, ("cs", 1))
    await sub.send(wire.disconnect())
    await sub.expect_closed()
    sub = await connect_client(server.port(), "c", clean=True, session_present=False)
    await sub.send(wire.publish("cs", b"x"))
    await sync(sub)
    await sub.send(wire.disconnect())
    await sub.expect_closed()
    assert "c" not in server.broker.sessions
    await connect_client(server.port(), "c", clean=False, session_present=False)


async def test_unacked_redelivered_with_dup_on_reconnect(server: Server) -> None:
    """Unacknowledged QoS 1/2 PUBLISH and unfinished PUBREL are re-sent in order on reconnect,
    PUBLISH with DUP=1 [MQTT-4.4.0-1] [MQTT-3.3.1-1] [MQTT-4.6.0-1]."""
    sub = await connect_client(server.port(), "r", clean=False)
    await subscribe(sub, 1, ("re/#", 2))
    pub = await connect_client(server.port(), "pub")
    await pub.send(wire.publish("re/1", b"a", qos=1, pid=1))
    await pub.send(wire.publish("re/2", b"b", qos=2, pid=2))
    await pub.send(wire.publish("re/3", b"c", qos=2, pid=3))
    await sub.expect(wire.publish("re/1", b"a", qos=1, pid=1))
    await sub.expect(wire.publish("re/2", b"b", qos=2, pid=2))
    await sub.expect(wire.publish("re/3", b"c", qos=2, pid=3))
    await sub.send(wire.pubrec(3))
    await sub.expect(wire.pubrel(3))
    await sub.aclose()  # drop the connection without acking
    sub = await connect_client(server.port(), "r", clean=False, session_present=True)
    await sub.expect(wire.publish("re/1", b"a", qos=1, dup=True, pid=1))
    await sub.expect(wire.publish("re/2", b"b", qos=2, dup=True, pid=2))
    await sub.expect(wire.pubrel(3))
    await sub.send(wire.puback(1) + wire.pubrec(2) + wire.pubcomp(3))
    await sub.expect(wire.pubrel(2))
    await sub.send(wire.pubcomp(2))
    await sync(sub)
    assert not server.broker.sessions["r"].inflight


async def test_offline_queue_limit_drops_counts_and_logs_once(start_server) -> None:  # type: ignore[no-untyped-def]
    """When max_queued_messages is reached, further messages are dropped, counted, and logged
    once -- but the publisher's messages were acknowledged only as accepted by the broker."""
    server = await start_server(max_queued_messages=3)
    sub = await connect_client(server.port(), "q", clean=False)
    await subscribe(sub, 1, ("lim", 1))
    await sub.send(wire.disconnect())
    await sub.expect_closed()
    pub = await connect_client(server.port(), "pub")
    with capture_logs() as logs:
        for i in range(1, 11):
            await pub.send(wire.publish("lim", b"%d" % i, qos=1, pid=i))
            await pub.expect(wire.puback(i))
    drops = [entry for entry in logs if entry["event"] == "messages_dropped"]
    assert len(drops) == 1
    assert drops[0]["client_id"] == "q"
    assert server.broker.sessions["q"].dropped == 7
    assert server.broker.stats.messages_dropped == 7
    sub = await connect_client(server.port(), "q", clean=False, session_present=True)
    for i in range(1, 4):
        await sub.expect(wire.publish("lim", b"%d" % i, qos=1, pid=i))
    await sync(sub)


async def test_offline_queue_byte_limit(start_server) -> None:  # type: ignore[no-untyped-def]
    """max_queued_bytes bounds the offline queue by size too."""
    server = await start_server(max_queued_bytes=250)
    sub = await connect_client(server.port(), "b", clean=False)
    await subscribe(sub, 1, ("big", 1))
    await sub.send(wire.disconnect())
    await sub.expect_closed()
    pub = await connect_client(server.port(), "pub")
    for i in range(1, 6):
        await pub.send(wire.publish("big", bytes(100), qos=1, pid=i))
        await pub.expect(wire.puback(i))
    session = server.broker.sessions["b"]
    assert len(session.queue) == 2
    assert session.dropped == 3
