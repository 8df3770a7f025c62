"""Will messages (MQTT 3.1.1 sections 3.1.2.5 - 3.1.2.7, 3.14.4)."""

from __future__ import annotations

from mqttd.server import Server
from tests.helpers import wire
from tests.helpers.client import connect_client, subscribe, sync


async def test_will_published_on_abnormal_close(server: Server) -> None:
    """Closing without DISCONNECT publishes the Will [MQTT-3.1.2-8], non-retained when Will
    Retain is 0 [MQTT-3.1.2-16]."""
    watcher = await connect_client(server.port(), "watcher")
    await subscribe(watcher, 1, ("wills/#", 1))
    dying = await connect_client(server.port(), "dying", will=("wills/dying", b"gone", 1))
    await dying.aclose()
    await watcher.expect(wire.publish("wills/dying", b"gone", qos=1, pid=1))


async def test_will_not_published_after_disconnect(server: Server) -> None:
    """DISCONNECT discards the Will [MQTT-3.14.4-3] [MQTT-3.1.2-10]."""
    watcher = await connect_client(server.port(), "watcher")
    await subscribe(watcher, 1, ("wills/#", 0))
    polite = await connect_client(server.port(), "polite", will=("wills/polite", b"no"))
    await polite.send(wire.disconnect())
    await polite.expect_closed()
    await watcher.send(wire.publish("wills/marker", b"m"))
    await watcher.expect(wire.publish("wills/marker", b"m"))


async def test_no_will_flag_no_will(server: Server) -> None:
    """Without the Will flag nothing is published on an abnormal close [MQTT-3.1.2-12]."""
    watcher = await connect_client(server.port(), "watcher")
    await subscribe(watcher, 1, ("#", 0))
    plain = await connect_client(server.port(), "plain")
    await plain.aclose()
    await watcher.send(wire.publish("marker", b"m"))
    await watcher.expect(wire.publish("marker", b"m"))


async def test_retained_will(server: Server) -> None:
    """Will Retain 1 publishes the Will as a retained message [MQTT-3.1.2-17]."""
    dying = await connect_client(server.port(), "dying", will=("wills/ret", b"bye", 0, True))
    await dying.aclose()
    late = await connect_client(server.port(), "late")
    await late.send(wire.subscribe(1, [("wills/ret", 0)]))
    await late.expect(wire.suback(1, [0]))
    # The close may be noticed just after this subscribe: the Will then arrives live (RETAIN=0)
    # instead of from the store; either way a fresh subscriber must see it retained.
    await late.read_packet()
    again = await connect_client(server.port(), "again")
    await subscribe(again, 1, ("wills/ret", 0))
    await again.expect(wire.publish("wills/ret", b"bye", retain=True))


async def test_will_on_protocol_error(server: Server) -> None:
    """A connection closed for a protocol violation publishes its Will."""
    watcher = await connect_client(server.port(), "watcher")
    await subscribe(watcher, 1, ("wills/#", 0))
    bad = await connect_client(server.port(), "bad", will=("wills/bad", b"broken"))
    await bad.send(wire.connect("bad"))  # second CONNECT
    await bad.expect_closed()
    await watcher.expect(wire.publish("wills/bad", b"broken"))


async def test_will_on_takeover(server: Server) -> None:
    """When a client id is taken over, the old connection's Will is published (as Mosquitto)."""
    watcher = await connect_client(server.port(), "watcher")
    await subscribe(watcher, 1, ("wills/#", 0))
    await connect_client(server.port(), "same", will=("wills/same", b"old"))
    await connect_client(server.port(), "same")
    await watcher.expect(wire.publish("wills/same", b"old"))
    await sync(watcher)


async def test_will_topic_with_wildcard_closes(server: Server) -> None:
    """A Will Topic containing a wildcard is not a valid topic: close without CONNACK
    [MQTT-3.1.4-1]."""
    from tests.helpers.client import WireClient

    client = await WireClient.open(server.port())
    await client.send(wire.connect("w", will=("bad/#", b"x")))
    await client.expect_closed()
