"""Several nodes, one broker: in-process mqttd nodes joined through a real redis-server.

Each test starts its own nodes (``serve`` with a ``[cluster]`` section) in its trio nursery,
all on one private redis-server, each test under its own key prefix.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from mqttd.config import ClusterConfig, Config, LimitsConfig, ListenerConfig, StoreConfig
from mqttd.server import Server, serve
from tests.helpers import wire
from tests.helpers.client import connect_client, subscribe, sync
from tests.helpers.redis_server import RedisServer, redis_server

_prefixes = itertools.count(1)


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the module's tests (each uses its own key prefix)."""
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"t{next(_prefixes)}"


class Nodes:
    """Start nodes of one cluster in the test's nursery."""

    def __init__(self, nursery: trio.Nursery, redis: RedisServer, prefix: str) -> None:
        self.nursery = nursery
        self.redis = redis
        self.prefix = prefix
        self.servers: dict[str, Server] = {}

    async def start(self, node_id: str, **limits: Any) -> Server:
        config = Config(
            listeners=(ListenerConfig(type="tcp", host="127.0.0.1", port=0),),
            limits=dataclasses.replace(LimitsConfig(), **limits),
            store=StoreConfig(durability="memory"),
            cluster=ClusterConfig(
                redis_url=self.redis.url, node_id=node_id, key_prefix=self.prefix,
                node_timeout_s=2.0,
            ),
        )  # fmt: skip
        with trio.fail_after(10):
            server: Server = await self.nursery.start(serve, config)
        self.servers[node_id] = server
        return server


@pytest.fixture
def nodes(nursery: trio.Nursery, redis: RedisServer, prefix: str) -> Nodes:
    return Nodes(nursery, redis, prefix)


async def test_message_reaches_a_subscriber_on_another_node(nodes: Nodes) -> None:
    """A publish on node B reaches a subscriber on node A at min(QoS) [MQTT-3.8.4-6], in
    order [MQTT-4.6.0-6]; the SUBACK waited until B routes the filter."""
    a = await nodes.start("a")
    b = await nodes.start("b")
    sub = await connect_client(a.port(), "sub")
    await subscribe(sub, 1, ("t/#", 1))
    pub = await connect_client(b.port(), "pub")
    for pid in range(1, 6):
        await pub.send(wire.publish("t/x", b"m%d" % pid, qos=1, pid=pid))
        await pub.expect(wire.puback(pid))
    for pid in range(1, 6):
        await sub.expect(wire.publish("t/x", b"m%d" % pid, qos=1, pid=pid))
    await pub.send(wire.publish("t/y", b"zero"))
    await sub.expect(wire.publish("t/y", b"zero"))


async def test_no_message_travels_to_a_node_without_subscribers(nodes: Nodes) -> None:
    """Routing sends a message only to nodes with a matching route, not to every node."""
    a = await nodes.start("a")
    b = await nodes.start("b")
    c = await nodes.start("c")
    sub = await connect_client(a.port(), "sub")
    await subscribe(sub, 1, ("only/a", 0))
    pub = await connect_client(b.port(), "pub")
    for _ in range(10):
        await pub.send(wire.publish("only/a", b"x"))
    await sync(pub)
    for _ in range(10):
        await sub.expect(wire.publish("only/a", b"x"))
    node_c = c.state.cluster
    node_b = b.state.cluster
    assert node_c is not None
    assert node_b is not None
    assert node_c.received == 0
    assert node_b.forwarded == 10


async def test_retained_message_seen_by_a_later_subscription_on_another_node(
    nodes: Nodes,
) -> None:
    """A retained message acknowledged on one node reaches a subscription made afterwards on
    any node [MQTT-3.3.1-6]; deleting it works cluster-wide [MQTT-3.3.1-10]."""
    a = await nodes.start("a")
    b = await nodes.start("b")
    pub = await connect_client(a.port(), "pub")
    await pub.send(wire.publish("r/1", b"kept", qos=1, retain=True, pid=1))
    await pub.expect(wire.puback(1))
    sub = await connect_client(b.port(), "sub")
    await sub.send(wire.subscribe(1, [("r/#", 1)]))
    await sub.expect(wire.suback(1, [1]))
    await sub.expect(wire.publish("r/1", b"kept", qos=1, retain=True, pid=1))
    await pub.send(wire.publish("r/1", b"", qos=1, retain=True, pid=2))
    await pub.expect(wire.puback(2))
    late = await connect_client(b.port(), "late")
    await subscribe(late, 1, ("r/#", 0))
    await sync(late)  # nothing retained any more


async def test_client_id_is_unique_across_nodes(nodes: Nodes) -> None:
    """A second CONNECT with the same client id on another node takes the first over
    [MQTT-3.1.4-2]: the old connection is closed before the new CONNACK."""
    a = await nodes.start("a")
    b = await nodes.start("b")
    first = await connect_client(a.port(), "dev")
    second = await connect_client(b.port(), "dev")
    await first.expect_closed()
    await sync(second)


async def test_persistent_session_resumes_on_another_node(nodes: Nodes) -> None:
    """A persistent session made on node A, with messages queued while its client was away,
    resumes on node B: Session Present 1 [MQTT-3.2.2-2], its subscriptions, its queue."""
    a = await nodes.start("a")
    b = await nodes.start("b")
    client = await connect_client(a.port(), "phone", clean=False)
    await subscribe(client, 1, ("q/#", 1))
    await client.send(wire.disconnect())
    await client.expect_closed()
    pub = await connect_client(b.port(), "pub")
    await pub.send(wire.publish("q/1", b"while away", qos=1, pid=1))
    await pub.expect(wire.puback(1))
    client = await connect_client(b.port(), "phone", clean=False, session_present=True)
    await client.expect(wire.publish("q/1", b"while away", qos=1, pid=1))
    await client.send(wire.puback(1))
    await pub.send(wire.publish("q/2", b"now", qos=1, pid=2))
    await pub.expect(wire.puback(2))
    await client.expect(wire.publish("q/2", b"now", qos=1, pid=2))
    assert "phone" not in a.broker.sessions  # A let it go


async def test_clean_session_on_another_node_discards_the_old_one(nodes: Nodes) -> None:
    """CleanSession=1 discards the persistent session wherever it was [MQTT-3.1.2-6]."""
    a = await nodes.start("a")
    b = await nodes.start("b")
    client = await connect_client(a.port(), "phone", clean=False)
    await subscribe(client, 1, ("q/#", 1))
    await client.send(wire.disconnect())
    await client.expect_closed()
    await connect_client(b.port(), "phone", clean=True)
    again = await connect_client(a.port(), "phone", clean=False, session_present=False)
    await sync(again)
