"""SUBSCRIBE / UNSUBSCRIBE and routing (MQTT 3.1.1 sections 3.8 - 3.11, 4.7)."""

from __future__ import annotations

from mqttd.server import Server
from tests.helpers import wire
from tests.helpers.client import connect_client, subscribe, sync


async def test_single_level_wildcard_routes(server: Server) -> None:
    """`/news/+/sport` gets `/news/europe/sport` but not `/news/europe/tech` [MQTT-4.7.1-3]."""
    sub = await connect_client(server.port(), "sub")
    await subscribe(sub, 1, ("/news/+/sport", 1))
    pub = await connect_client(server.port(), "pub")
    await pub.send(wire.publish("/news/europe/tech", b"tech"))
    await pub.send(wire.publish("/news/europe/sport", b"sport"))
    await sub.expect(wire.publish("/news/europe/sport", b"sport"))


async def test_multi_level_wildcard_matches_parent(server: Server) -> None:
    """`sport/#` matches `sport` itself and everything below it [MQTT-4.7.1-2]."""
    sub = await connect_client(server.port(), "sub")
    await subscribe(sub, 1, ("sport/#", 0))
    await sub.send(wire.publish("sport", b"a"))
    await sub.send(wire.publish("sport/tennis/player1", b"b"))
    await sub.send(wire.publish("sports", b"no"))
    await sub.send(wire.publish("sport/", b"c"))
    await sub.expect(wire.publish("sport", b"a"))
    await sub.expect(wire.publish("sport/tennis/player1", b"b"))
    await sub.expect(wire.publish("sport/", b"c"))


async def test_dollar_topics_not_matched_by_leading_wildcards(server: Server) -> None:
    """`#` and `+/...` do not match `$SYS/...` topics; `$SYS/#` does [MQTT-4.7.2-1]."""
    sub = await connect_client(server.port(), "sub")
    await subscribe(sub, 1, ("#", 0), ("+/info", 0))
    dollar = await connect_client(server.port(), "dollar")
    await subscribe(dollar, 1, ("$internal/#", 0))
    # Clients may not publish to $-topics: the broker itself does.
    server.broker.publish("$internal/info", b"hidden", 0, False)
    await sub.send(wire.publish("marker", b"m"))
    await sub.expect(wire.publish("marker", b"m"))
    await dollar.expect(wire.publish("$internal/info", b"hidden"))


async def test_sys_topics_retained_and_hidden_from_wildcards(server: Server) -> None:
    """$SYS/broker/... status is retained for `$SYS/#` subscribers and invisible to `#`
    [MQTT-4.7.2-1]."""
    everything = await connect_client(server.port(), "everything")
    await subscribe(everything, 1, ("#", 0))
    await sync(everything)
    sys = await connect_client(server.port(), "sys")
    await subscribe(sys, 1, ("$SYS/broker/version", 0))
    from mqttd import __version__

    await sys.expect(
        wire.publish("$SYS/broker/version", f"mqttd version {__version__}".encode(), retain=True)
    )


async def test_client_cannot_publish_to_dollar_topics(server: Server) -> None:
    """A client's PUBLISH to a `$` topic is acknowledged but never routed nor retained."""
    sub = await connect_client(server.port(), "sub")
    await subscribe(sub, 1, ("$SYS/broker/fake", 0), ("$x/#", 0), ("marker", 0))
    retained_before = len(server.broker.retained)
    await sub.send(wire.publish("$SYS/broker/fake", b"x", qos=1, retain=True, pid=1))
    await sub.expect(wire.puback(1))
    await sub.send(wire.publish("$x/y", b"x"))
    await sub.send(wire.publish("marker", b"m"))
    await sub.expect(wire.publish("marker", b"m"))
    assert len(server.broker.retained) == retained_before


async def test_delivered_qos_is_minimum(server: Server) -> None:
    """Delivered QoS = min(published, granted) [MQTT-3.8.4-6]."""
    sub = await connect_client(server.port(), "sub")
    await subscribe(sub, 1, ("q/low", 0), ("q/high", 2))
    pub = await connect_client(server.port(), "pub")
    await pub.send(wire.publish("q/low", b"x", qos=2, pid=5))
    await pub.expect(wire.pubrec(5))
    await sub.expect(wire.publish("q/low", b"x"))
    await pub.send(wire.publish("q/high", b"y", qos=1, pid=6))
    await pub.expect(wire.puback(6))
    await sub.expect(wire.publish("q/high", b"y", qos=1, pid=1))


async def test_overlapping_subscriptions_deliver_once_at_max_qos(server: Server) -> None:
    """Overlapping filters give one delivery at the highest granted QoS [MQTT-3.3.5-1]
    (Mosquitto 2.0.11 delivers at QoS 1 here)."""
    sub = await connect_client(server.port(), "sub")
    await subscribe(sub, 1, ("TopicA/#", 2), ("TopicA/+", 1))
    pub = await connect_client(server.port(), "pub")
    await pub.send(wire.publish("TopicA/B", b"once", qos=2, pid=1))
    await pub.expect(wire.pubrec(1))
    await sub.expect(wire.publish("TopicA/B", b"once", qos=2, pid=1))
    await sync(sub)


async def test_resubscribe_replaces(server: Server) -> None:
    """Subscribing again to an identical filter replaces the subscription [MQTT-3.8.4-3]."""
    sub = await connect_client(server.port(), "sub")
    await subscribe(sub, 1, ("r/x", 2))
    await subscribe(sub, 2, ("r/x", 0))
    await sub.send(wire.publish("r/x", b"p", qos=1, pid=9))
    await sub.expect(wire.puback(9))
    await sub.expect(wire.publish("r/x", b"p"))
    assert len(server.broker.tree) == 1


async def test_multiple_filters_one_suback(server: Server) -> None:
    """A multi-filter SUBSCRIBE gets one SUBACK with codes in order [MQTT-3.8.4-4]
    [MQTT-3.9.3-1]."""
    sub = await connect_client(server.port(), "sub")
    await sub.send(wire.subscribe(77, [("a", 2), ("b", 0), ("c/#", 1)]))
    await sub.expect(wire.suback(77, [2, 0, 1]))


async def test_unsubscribe_stops_delivery(server: Server) -> None:
    """After UNSUBACK no new messages arrive for the filter [MQTT-3.10.4-2] [MQTT-3.10.4-4]."""
    sub = await connect_client(server.port(), "sub")
    await subscribe(sub, 1, ("u/+", 0), ("marker", 0))
    await sub.send(wire.unsubscribe(2, ["u/+"]))
    await sub.expect(wire.unsuback(2))
    await sub.send(wire.publish("u/1", b"gone"))
    await sub.send(wire.publish("marker", b"m"))
    await sub.expect(wire.publish("marker", b"m"))


async def test_unsubscribe_unknown_filter_still_acked(server: Server) -> None:
    """UNSUBACK even when no filter matched [MQTT-3.10.4-5]; matching is exact [MQTT-3.10.4-1]."""
    sub = await connect_client(server.port(), "sub")
    await subscribe(sub, 1, ("exact/+", 0))
    await sub.send(wire.unsubscribe(3, ["exact/#"]))
    await sub.expect(wire.unsuback(3))
    await sub.send(wire.publish("exact/1", b"still"))
    await sub.expect(wire.publish("exact/1", b"still"))


async def test_invalid_filter_closes(server: Server) -> None:
    """A misplaced `#` closes the connection (Mosquitto's choice) [MQTT-4.7.1-2]."""
    sub = await connect_client(server.port(), "sub")
    await sub.send(wire.subscribe(1, [("a/#/b", 0)]))
    await sub.expect_closed()


async def test_wildcard_in_publish_topic_closes(server: Server) -> None:
    """A PUBLISH topic with a wildcard closes the connection [MQTT-3.3.2-2]."""
    pub = await connect_client(server.port(), "pub")
    await pub.send(wire.publish("a/+", b"x"))
    await pub.expect_closed()


async def test_dup_flag_not_propagated(server: Server) -> None:
    """The incoming DUP flag is not forwarded [MQTT-3.3.1-3]."""
    sub = await connect_client(server.port(), "sub")
    await subscribe(sub, 1, ("d", 1))
    pub = await connect_client(server.port(), "pub")
    await pub.send(wire.publish("d", b"x", qos=1, dup=True, pid=3))
    await pub.expect(wire.puback(3))
    await sub.expect(wire.publish("d", b"x", qos=1, pid=1))


async def test_shared_subscription_for_mqtt_311_clients(server: Server) -> None:
    """``$share/{group}/{filter}`` from MQTT 3.1.1 clients, as Mosquitto allows: each message
    reaches one member of the group (taking turns), an ordinary subscriber gets them all, and
    the retained message is not sent to the shared subscription."""
    pub = await connect_client(server.port(), "pub")
    await pub.send(wire.publish("work/old", b"retained", retain=True))
    members = [await connect_client(server.port(), f"m{i}") for i in range(2)]
    for member in members:
        await subscribe(member, 1, ("$share/pool/work/+", 0))
    watcher = await connect_client(server.port(), "watcher")
    await subscribe(watcher, 1, ("work/+", 0))
    await watcher.expect(wire.publish("work/old", b"retained", retain=True))
    for n in range(4):
        await pub.send(wire.publish(f"work/{n}", str(n).encode()))
    for n in range(4):
        await watcher.expect(wire.publish(f"work/{n}", str(n).encode()))
    await members[0].expect(wire.publish("work/0", b"0"))
    await members[1].expect(wire.publish("work/1", b"1"))
    await members[0].expect(wire.publish("work/2", b"2"))
    await members[1].expect(wire.publish("work/3", b"3"))
    for member in members:
        await sync(member)  # nothing else came: no retained message, no second copy


async def test_malformed_shared_subscription_closes(server: Server) -> None:
    """``$share/`` with an empty ShareName closes the connection, as Mosquitto does
    ([MQTT-4.8.2-1])."""
    sub = await connect_client(server.port(), "sub")
    await sub.send(wire.subscribe(1, [("$share//t", 0)]))
    await sub.expect_closed()
