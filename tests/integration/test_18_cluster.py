"""Several nodes, one broker: in-process mqttd nodes joined through a real redis-server.

Each test starts its own nodes (``serve`` with a ``[cluster]`` section) in its trio nursery,
all on one private redis-server, each test under its own key prefix.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from conformance import wire as wire5
from conformance.broker_process import run_mqttd
from conformance.wire import Packet
from mqttd.cluster.client import RedisError, connect
from mqttd.cluster.redis_store import RedisStore
from mqttd.cluster.wire import Keys, unpack_forwards, unpack_message
from mqttd.config import (
    BrokerConfig,
    ClusterConfig,
    Config,
    LimitsConfig,
    ListenerConfig,
    StoreConfig,
)
from mqttd.message import Message
from mqttd.server import Server, serve
from tests.helpers import wire
from tests.helpers.client import OPEN_CLIENTS, WireClient, connect_client, subscribe, sync
from tests.helpers.redis_server import RedisServer, redis_sentinel, redis_server
from tests.integration.test_23_mqtt5 import (
    CONTENT_TYPE,
    CORRELATION_DATA,
    MESSAGE_EXPIRY,
    PAYLOAD_FORMAT,
    RESPONSE_TOPIC,
    SESSION_EXPIRY,
    SUBSCRIPTION_ID,
    USER_PROPERTY,
    WILL_DELAY,
    Client5,
)

_prefixes = itertools.count(1)

pytestmark = pytest.mark.usefixtures("coredis_garbage_collected")


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

    async def start(
        self,
        node_id: str,
        sys_interval_s: float = 10.0,
        sentinels: tuple[str, ...] = (),
        **limits: Any,
    ) -> Server:
        config = Config(
            listeners=(ListenerConfig(type="tcp", host="127.0.0.1", port=0),),
            limits=dataclasses.replace(LimitsConfig(), **limits),
            broker=BrokerConfig(sys_interval_s=sys_interval_s),
            store=StoreConfig(durability="memory"),
            cluster=ClusterConfig(
                redis_url=None if sentinels else self.redis.url, sentinels=sentinels,
                node_id=node_id, key_prefix=self.prefix, node_timeout_s=2.0,
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


async def test_forwards_to_one_node_share_an_inbox_entry(redis: RedisServer, prefix: str) -> None:
    """Consecutive messages a pipeline forwards to one node go as one inbox entry, in order;
    anything between them (a control message, a forward elsewhere or to one session) keeps
    its place, so a node reads everything in the order it was recorded."""
    keys = Keys(prefix)
    async with connect(ClusterConfig(redis_url=redis.url, key_prefix=prefix)) as client:
        store = RedisStore(client, keys, "b", "e1")
        messages = [Message(f"t/{n}", b"m%d" % n, n % 2) for n in range(6)]
        for message in messages[:3]:
            store.forward("a", message)
        store.control("a", {b"k": b"stop", b"c": b"x", b"f": b"b", b"r": b"1"})
        store.forward("c", messages[3])
        store.forward("a", messages[4], groups=["g1", "g2"])
        store.forward("a", messages[5])
        store.forward_to("a", "one", messages[5], 1)
        async with trio.open_nursery() as nursery:
            await nursery.start(store.writer)
            with trio.fail_after(10):
                await store.durable(store.recorded)
            nursery.cancel_scope.cancel()
        entries = [e.field_values for e in await client.xrange(keys.inbox("a"))]
    assert [sorted(fields) for fields in entries] == [
        [b"b", b"e", b"o", b"s"], [b"c", b"f", b"k", b"r"], [b"b", b"e", b"o", b"s"],
        [b"c", b"e", b"g", b"i", b"m", b"o", b"s"],
    ]  # fmt: skip
    first, _, second, _ = entries
    assert int(first[b"s"]) < int(second[b"s"])
    unpacked = [unpack_forwards(bytes(entry[b"b"])) for entry in (first, second)]
    sent = [(m.topic, m.payload, m.qos) for m in messages]
    got = [[unpack_message(packed) for _, _, packed in items] for items in unpacked]
    assert [[(m.topic, m.payload, m.qos) for m in ms] for ms in got] == [sent[:3], sent[4:]]
    assert [groups for _, groups, _ in unpacked[1]] == [b"g1\ng2", b""]
    assert len({message_id for items in unpacked for message_id, _, _ in items}) == 5


async def test_a_burst_of_messages_crosses_nodes_in_order(nodes: Nodes) -> None:
    """Hundreds of messages published in one write on node B (forwarded in shared inbox
    entries) reach the subscriber on node A all, once, in order [MQTT-4.6.0-6]."""
    a = await nodes.start("a")
    b = await nodes.start("b")
    sub = await connect_client(a.port(), "sub")
    await subscribe(sub, 1, ("burst/#", 1))
    pub = await connect_client(b.port(), "pub")
    burst = [wire.publish("burst/x", b"%d" % n) for n in range(300)]
    burst += [wire.publish("burst/y", b"q%d" % n, qos=1, pid=n) for n in range(1, 11)]
    await pub.send(b"".join(burst))
    for n in range(1, 11):
        await pub.expect(wire.puback(n))
    for n in range(300):
        await sub.expect(wire.publish("burst/x", b"%d" % n))
    for n in range(1, 11):
        await sub.expect(wire.publish("burst/y", b"q%d" % n, qos=1, pid=n))
    node_a = a.state.cluster
    assert node_a is not None
    assert node_a.received == 310


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
    fresh = await connect_client(b.port(), "phone", clean=True)
    pub = await connect_client(a.port(), "pub")
    await pub.send(wire.publish("q/1", b"for the old session", qos=1, pid=1))
    await pub.expect(wire.puback(1))
    await sync(fresh)  # the clean session subscribed to nothing: nothing arrives
    again = await connect_client(a.port(), "phone", clean=False, session_present=False)
    await sync(again)


class Qos2Receiver:
    """Plays a QoS 2 subscriber: PUBREC for each PUBLISH, PUBCOMP for each PUBREL; records
    every payload with its DUP flag."""

    def __init__(self, milestone: int) -> None:
        self.fresh: list[bytes] = []  # payloads received with DUP=0
        self.resent: list[bytes] = []  # payloads received with DUP=1
        self.done = trio.Event()
        self.milestone = milestone
        self.reached = trio.Event()  # set once ``milestone`` payloads arrived

    async def run(self, client: WireClient, until: int) -> None:
        try:
            while len(set(self.fresh) | set(self.resent)) < until:
                await self._answer(await client.read_packet(timeout=30), client)
        except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
            return  # taken over: the test goes on with the next connection
        self.done.set()

    async def _answer(self, packet: bytes, client: WireClient) -> None:
        kind = packet[0] >> 4
        if kind == 3:
            parsed = wire.parse(packet)
            (self.resent if parsed.dup else self.fresh).append(parsed.payload)
            if len(self.fresh) >= self.milestone:
                self.reached.set()
            assert parsed.pid is not None
            await client.send(wire.pubrec(parsed.pid))
        elif kind == 6:
            await client.send(wire.pubcomp(int.from_bytes(packet[2:4], "big")))


async def test_session_moves_between_nodes_while_qos2_messages_flow(
    nodes: Nodes, nursery: trio.Nursery
) -> None:
    """A persistent QoS 2 subscriber moves from node A to node B while a publisher on B sends:
    exactly one connection wins, every message arrives, and none arrives twice as new
    (re-sends of unfinished flows carry DUP=1) [MQTT-4.3.3-2] [MQTT-4.4.0-1]."""
    a = await nodes.start("a")
    b = await nodes.start("b")
    count = 200
    first = await connect_client(a.port(), "s", clean=False)
    await subscribe(first, 1, ("s/#", 2))
    receiver = Qos2Receiver(count // 4)
    nursery.start_soon(receiver.run, first, count)
    pub = await connect_client(b.port(), "pub")
    published = trio.Event()

    async def publish() -> None:
        for i in range(1, count + 1):
            await pub.send(wire.publish("s/x", b"%d" % i, qos=2, pid=i))
            await pub.expect(wire.pubrec(i))
            await pub.send(wire.pubrel(i))
            await pub.expect(wire.pubcomp(i))
        published.set()

    nursery.start_soon(publish)
    with trio.fail_after(30):
        await receiver.reached.wait()
    second = await connect_client(b.port(), "s", clean=False, session_present=True)
    await first.expect_closed()
    nursery.start_soon(receiver.run, second, count)
    with trio.fail_after(30):
        await published.wait()
        await receiver.done.wait()
    assert len(receiver.fresh) == len(set(receiver.fresh)), "a message arrived twice as new"
    assert set(receiver.fresh) | set(receiver.resent) == {b"%d" % i for i in range(1, count + 1)}


async def test_two_nodes_racing_for_one_client_id(nodes: Nodes) -> None:
    """Two CONNECTs with one client id at once on two nodes: exactly one connection stays
    (the loser is closed before the winner's CONNACK) [MQTT-3.1.4-2]."""
    a = await nodes.start("a")
    b = await nodes.start("b")
    accepted: list[WireClient] = []

    async def connect(port: int) -> None:
        client = await WireClient.open(port)
        await client.send(wire.connect("twin", clean=False))
        try:
            packet = await client.read_packet()
        except (EOFError, trio.BrokenResourceError):
            return  # closed before its CONNACK: it lost
        assert packet[0] == 0x20
        accepted.append(client)

    async with trio.open_nursery() as race:
        race.start_soon(connect, a.port())
        race.start_soon(connect, b.port())
    alive = 0
    for client in accepted:
        await client.send(wire.pingreq())
        try:
            await client.expect(wire.pingresp())
            alive += 1
        except (EOFError, trio.BrokenResourceError):
            pass
    assert alive == 1


async def test_concurrent_claims_go_to_redis_in_one_call(nodes: Nodes) -> None:
    """Claims of client ids made at once on a node travel in one Redis call, and each gets
    its own answer: none for new ids, the other node for an id connected there."""
    await nodes.start("a")
    b = await nodes.start("b")
    held = await connect_client(b.port(), "held", clean=False)
    node = nodes.servers["a"].state.cluster
    assert node is not None
    ids = ["new1", "held", "new2", "new3"]
    answers: dict[str, tuple[Any, Any]] = {}

    async def claim(client_id: str) -> None:
        answers[client_id] = await node.claim(client_id)

    calls = node.claim_calls
    async with trio.open_nursery() as claims:
        for client_id in ids:
            claims.start_soon(claim, client_id)
    assert node.claim_calls == calls + 1
    assert answers == {
        "new1": (None, None),
        "held": (b"b", b"b"),  # its connection and its persistent session are on b
        "new2": (None, None),
        "new3": (None, None),
    }
    assert await node.claim("new1") == (b"a", None)
    await sync(held)  # a bare claim takes nothing over: ``take_over`` does


async def test_concurrent_connects_with_a_takeover_among_them(nodes: Nodes) -> None:
    """CONNECTs arriving at once on one node, one of them for a client id connected to
    another node: each gets its CONNACK, and the one taken over is closed first, its
    persistent session resumed [MQTT-3.1.4-2] [MQTT-3.2.2-2]."""
    a = await nodes.start("a")
    b = await nodes.start("b")
    held = await connect_client(b.port(), "held", clean=False)
    await subscribe(held, 1, ("h/#", 1))
    ids = [f"storm{i}" for i in range(8)]
    ids.insert(3, "held")
    clients = [await WireClient.open(a.port()) for _ in ids]
    for client, client_id in zip(clients, ids, strict=True):
        await client.send(wire.connect(client_id, clean=client_id != "held"))
    for client, client_id in zip(clients, ids, strict=True):
        await client.expect(wire.connack(client_id == "held", 0))
    await held.expect_closed()
    pub = await connect_client(b.port(), "pub")
    await pub.send(wire.publish("h/1", b"moved", qos=1, pid=1))
    await pub.expect(wire.puback(1))
    await clients[3].expect(wire.publish("h/1", b"moved", qos=1, pid=1))
    for client in clients:
        await sync(client)


# coredis leaves the buffers of a connection that never connected unclosed (any call made
# while Redis is down does): they are collected at the end, where this warning is ignored.
@pytest.mark.filterwarnings("ignore:Unclosed <MemoryObject:ResourceWarning")
async def test_claims_fail_together_while_redis_is_down(tmp_path: Path) -> None:
    """Redis unreachable: every claim sent in the call fails with the Redis error, as a
    claim of its own would, and the next claims work once Redis is back."""
    errors: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        with redis_server(tmp_path / "r") as first:
            a = await Nodes(nursery, first, "down").start("a")
            port = first.port
        node = a.state.cluster
        assert node is not None

        async def claim(client_id: str) -> None:
            try:
                await node.claim(client_id)
            except RedisError as exc:
                errors.append(exc)

        with trio.fail_after(10):
            async with trio.open_nursery() as claims:
                for client_id in ("x", "y", "z"):
                    claims.start_soon(claim, client_id)
        assert len(errors) == 3
        assert len({id(e) for e in errors}) == 1, "not one call for the three claims"
        with redis_server(tmp_path / "r", port=port), trio.fail_after(10):
            assert await node.claim("x") == (None, None)
            nursery.cancel_scope.cancel()
    errors.clear()  # their tracebacks hold the failed connections
    gc.collect()


@pytest.mark.slow
async def test_a_killed_node_is_cleaned_up_by_a_survivor(
    nodes: Nodes, redis: RedisServer, prefix: str, tmp_path: Path
) -> None:
    """kill -9 of a node (a real process): within its node timeout a survivor publishes the
    Wills of its clients exactly once [MQTT-3.1.2-8], removes its routes, and adopts the
    persistent sessions it hosted: their clients reconnect to the survivor and find their
    subscriptions and every message acknowledged before and after the kill."""
    config = tmp_path / "a.toml"
    config.write_text(
        '[[listeners]]\ntype = "tcp"\nhost = "127.0.0.1"\nport = 0\n'
        '[store]\ndurability = "memory"\n'
        f'[cluster]\nredis_url = "{redis.url}"\nnode_id = "a"\nkey_prefix = "{prefix}"\n'
        "node_timeout_s = 1.5\n"
    )
    b = await nodes.start("b")
    watcher = await connect_client(b.port(), "watcher")
    await subscribe(watcher, 1, ("wills/#", 1))
    pub = await connect_client(b.port(), "pub")
    async with run_mqttd(config) as a:
        port_a = a.ports["tcp"]
        doomed = await connect_client(port_a, "doomed", will=("wills/doomed", b"gone", 1))
        phone = await connect_client(port_a, "phone", clean=False)
        await subscribe(phone, 1, ("p/#", 1))
        await phone.send(wire.disconnect())
        await phone.expect_closed()
        await pub.send(wire.publish("p/1", b"before", qos=1, pid=1))
        await pub.expect(wire.puback(1))
        a.proc.kill()  # SIGKILL: no Will, no goodbye
        await doomed.expect_closed()
    with trio.fail_after(15):
        await watcher.expect(wire.publish("wills/doomed", b"gone", qos=1, pid=1))
    await pub.send(wire.publish("p/2", b"after", qos=1, pid=2))
    await pub.expect(wire.puback(2))
    phone = await connect_client(b.port(), "phone", clean=False, session_present=True)
    await phone.expect(wire.publish("p/1", b"before", qos=1, pid=1))
    await phone.expect(wire.publish("p/2", b"after", qos=1, pid=2))
    await sync(watcher)  # the Will came once
    node_b = b.state.cluster
    assert node_b is not None
    assert not list(node_b.routes.nodes_for("wills/doomed"))  # a's routes are gone


async def test_sys_gives_node_figures_and_cluster_totals(nodes: Nodes) -> None:
    """$SYS/broker/... is this node's; $SYS/broker/cluster/total/... sums every live node."""
    a = await nodes.start("a", sys_interval_s=0.1)
    b = await nodes.start("b", sys_interval_s=0.1)
    await connect_client(b.port(), "on-b-1")
    await connect_client(b.port(), "on-b-2")
    watcher = await connect_client(a.port(), "watcher")
    await subscribe(
        watcher,
        1,
        ("$SYS/broker/cluster/total/clients/connected", 0),
        ("$SYS/broker/cluster/nodes", 0),
    )
    seen: dict[str, bytes] = {}
    with trio.fail_after(10):
        while seen.get("$SYS/broker/cluster/total/clients/connected") != b"3" or seen.get(
            "$SYS/broker/cluster/nodes"
        ) != b"2":
            packet = wire.parse(await watcher.read_packet())
            if packet.type == 3 and packet.topic is not None:
                seen[packet.topic.decode()] = packet.payload


@pytest.mark.slow
async def test_redis_restarted_with_its_data(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Redis stops and starts again with its data (append-only file, appendfsync always):
    local traffic never stops, a QoS 1 message for another node is acknowledged once Redis
    holds it and is then delivered; nothing acknowledged is lost."""
    with redis_server(tmp_path / "r", persistent=True) as first:
        nodes = Nodes(nursery, first, "restart")
        a = await nodes.start("a")
        b = await nodes.start("b")
        remote = await connect_client(a.port(), "remote")
        await subscribe(remote, 1, ("t", 1))
        local = await connect_client(b.port(), "local")
        await subscribe(local, 1, ("here", 0))
        pub = await connect_client(b.port(), "pub")
        port = first.port
    # Redis is down: local traffic goes on.
    await pub.send(wire.publish("here", b"still"))
    await local.expect(wire.publish("here", b"still"))
    await pub.send(wire.publish("t", b"across", qos=1, pid=1))
    with redis_server(tmp_path / "r", port=port, persistent=True):
        await pub.expect(wire.puback(1))  # only once Redis holds it
        await remote.expect(wire.publish("t", b"across", qos=1, pid=1))
        await pub.send(wire.publish("t", b"again", qos=1, pid=2))
        await pub.expect(wire.puback(2))
        await remote.expect(wire.publish("t", b"again", qos=1, pid=2))
        nursery.cancel_scope.cancel()


@pytest.mark.slow
async def test_redis_restarted_empty(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Redis comes back empty: every node writes its part of the cluster back (routes,
    hosted sessions with their queues, clients, Wills, retained messages), so routing,
    retained messages and session handovers work again."""
    with redis_server(tmp_path / "r") as first:
        nodes = Nodes(nursery, first, "empty")
        a = await nodes.start("a")
        b = await nodes.start("b")
        phone = await connect_client(a.port(), "phone", clean=False)
        await subscribe(phone, 1, ("p/#", 1))
        await phone.send(wire.disconnect())
        await phone.expect_closed()
        pub = await connect_client(b.port(), "pub")
        await pub.send(wire.publish("r", b"kept", qos=1, retain=True, pid=1))
        await pub.expect(wire.puback(1))
        port = first.port
    node_a, node_b = a.state.cluster, b.state.cluster
    assert node_a is not None
    assert node_b is not None
    with redis_server(tmp_path / "r2", port=port):
        with trio.fail_after(15):
            await node_a.restored.wait()
        await pub.send(wire.publish("p/1", b"after the restart", qos=1, pid=2))
        await pub.expect(wire.puback(2))
        phone = await connect_client(b.port(), "phone", clean=False, session_present=True)
        await phone.expect(wire.publish("p/1", b"after the restart", qos=1, pid=1))
        late = await connect_client(a.port(), "late")
        await late.send(wire.subscribe(1, [("r", 0)]))
        await late.expect(wire.suback(1, [0]))
        await late.expect(wire.publish("r", b"kept", retain=True))
        nursery.cancel_scope.cancel()


async def test_nodes_find_redis_through_sentinel(
    nodes: Nodes, redis: RedisServer, tmp_path: Path
) -> None:
    """[cluster] sentinels instead of redis_url: the nodes ask Sentinel for the primary and
    work as one broker through it."""
    with redis_sentinel(tmp_path / "sentinel", redis) as sentinel:
        address = (f"127.0.0.1:{sentinel.port}",)
        a = await nodes.start("a", sentinels=address)
        b = await nodes.start("b", sentinels=address)
        sub = await connect_client(a.port(), "sub")
        await subscribe(sub, 1, ("s/#", 1))
        pub = await connect_client(b.port(), "pub")
        await pub.send(wire.publish("s/1", b"via sentinel", qos=1, pid=1))
        await pub.expect(wire.puback(1))
        await sub.expect(wire.publish("s/1", b"via sentinel", qos=1, pid=1))


async def open5(
    port: int, client_id: str, *, clean: bool = True, **connect: Any
) -> tuple[Client5, Packet]:
    """An MQTT 5 client on ``port`` (its CONNACK read: accepted)."""
    with trio.fail_after(10):
        client = Client5(await trio.open_tcp_stream("127.0.0.1", port))
    OPEN_CLIENTS.append(client)  # type: ignore[arg-type]  # closed after the test
    await client.send(wire5.connect(client_id, clean, version=5, **connect))
    connack = await client.read()
    assert (connack.name, connack.reason) == ("CONNACK", 0), connack.describe()
    return client, connack


#: The properties a publisher's message carries across nodes, in this order.
CARRIED = [
    (PAYLOAD_FORMAT, 1),
    (CONTENT_TYPE, "text/plain"),
    (USER_PROPERTY, ("b", "2")),
    (RESPONSE_TOPIC, "reply/here"),
    (USER_PROPERTY, ("a", "1")),
    (CORRELATION_DATA, b"\x00id"),
]


def assert_carried(got: Packet) -> None:
    """``got`` carries the properties of ``CARRIED``, User Properties in order."""
    assert got.prop(PAYLOAD_FORMAT) == 1
    assert got.prop(CONTENT_TYPE) == "text/plain"
    assert got.prop(RESPONSE_TOPIC) == "reply/here"
    assert got.prop(CORRELATION_DATA) == b"\x00id"
    assert got.user_properties == [("b", "2"), ("a", "1")]


async def test_mqtt5_message_keeps_its_properties_across_nodes(nodes: Nodes) -> None:
    """An MQTT 5 message published on node A reaches an MQTT 5 subscriber on node B with its
    properties in order ([MQTT-3.3.2-17], [MQTT-3.3.2-18]), the Message Expiry Interval left
    ([MQTT-3.3.2-6]) and B's Subscription Identifier ([MQTT-3.3.4-3]); a retained one reaches
    a later subscription on B with them too."""
    a = await nodes.start("a")
    b = await nodes.start("b")
    sub, _ = await open5(b.port(), "sub")
    await sub.subscribe(1, ("t/#", 1), properties=[(SUBSCRIPTION_ID, 9)])
    pub, _ = await open5(a.port(), "pub")
    expiring = [*CARRIED, (MESSAGE_EXPIRY, 120)]
    await pub.send(wire5.publish("t/x", b"hello", 1, pid=1, version=5, properties=expiring))
    assert (await pub.read()).reason == 0  # a subscriber on another node counts
    got = await sub.read()
    assert (got.topic, got.payload, got.qos) == (b"t/x", b"hello", 1)
    assert_carried(got)
    assert got.props_all(SUBSCRIPTION_ID) == [9]
    left = got.prop(MESSAGE_EXPIRY)
    assert isinstance(left, int)
    assert 0 < left <= 120
    await sub.send(wire5.puback(got.pid or 0))
    await pub.send(
        wire5.publish("r/1", b"kept", 1, pid=2, retain=True, version=5, properties=CARRIED)
    )
    assert (await pub.read()).name == "PUBACK"
    late, _ = await open5(b.port(), "late")
    await late.subscribe(1, ("r/#", 0))
    got = await late.read()
    assert (got.payload, got.retain) == (b"kept", True)
    assert_carried(got)


async def test_mqtt5_session_moves_with_its_expiry_interval(nodes: Nodes) -> None:
    """A persistent MQTT 5 session made on node A is in Redis with its Session Expiry
    Interval and its queued delivery with properties and Subscription Identifier; it resumes
    on node B (Session Present 1) with that delivery as it was stored."""
    a = await nodes.start("a")
    b = await nodes.start("b")
    expiry = [(SESSION_EXPIRY, 600)]
    phone, _ = await open5(a.port(), "phone", clean=False, properties=expiry)
    await phone.subscribe(1, ("q/#", 1), properties=[(SUBSCRIPTION_ID, 4)])
    await phone.send(wire5.disconnect())
    await phone.closed()
    pub, _ = await open5(a.port(), "pub")
    await pub.send(wire5.publish("q/1", b"while away", 1, pid=1, version=5, properties=CARRIED))
    assert (await pub.read()).name == "PUBACK"
    node_b = b.state.cluster
    assert node_b is not None
    stored = await node_b.store.load_session("phone")
    assert stored is not None
    assert stored.expiry_interval == 600
    assert [d.subscription_ids for d in stored.deliveries] == [(4,)]
    phone, connack = await open5(b.port(), "phone", clean=False, properties=expiry)
    assert connack.session_present
    got = await phone.read()
    assert (got.topic, got.payload) == (b"q/1", b"while away")
    assert_carried(got)
    assert got.props_all(SUBSCRIPTION_ID) == [4]
    await phone.send(wire5.puback(got.pid or 0))
    await phone.send(wire5.disconnect(properties=[(SESSION_EXPIRY, 300)]))
    await phone.closed()
    await trio.testing.wait_all_tasks_blocked()  # B has ended the connection ...
    await node_b.store.durable(node_b.store.recorded)  # ... and Redis has what it recorded
    stored = await node_b.store.load_session("phone")
    assert stored is not None
    assert stored.expiry_interval == 300  # the DISCONNECT's, in Redis too


@pytest.mark.slow
async def test_a_killed_nodes_mqtt5_session_and_will_live_on(
    nodes: Nodes, redis: RedisServer, prefix: str, tmp_path: Path
) -> None:
    """kill -9 of a node: the survivor adopts its MQTT 5 persistent session with its Session
    Expiry Interval, which it then enforces (3.1.2.11.2), and publishes the Will of its
    client with the Will Properties' User Property (at once, Will Delay or not)."""
    config = tmp_path / "a.toml"
    config.write_text(
        '[[listeners]]\ntype = "tcp"\nhost = "127.0.0.1"\nport = 0\n'
        '[store]\ndurability = "memory"\n'
        f'[cluster]\nredis_url = "{redis.url}"\nnode_id = "a"\nkey_prefix = "{prefix}"\n'
        "node_timeout_s = 1.5\n"
    )
    b = await nodes.start("b")
    watcher, _ = await open5(b.port(), "watcher")
    await watcher.subscribe(1, ("wills/#", 0))
    expiry = [(SESSION_EXPIRY, 600)]
    async with run_mqttd(config) as a:
        port_a = a.ports["tcp"]
        phone, _ = await open5(port_a, "phone", clean=False, properties=expiry)
        await phone.subscribe(1, ("p/#", 1), properties=[(SUBSCRIPTION_ID, 2)])
        await phone.send(wire5.disconnect())
        await phone.closed()
        await open5(
            port_a,
            "doomed",
            clean=False,
            properties=expiry,
            will=("wills/doomed", b"gone"),
            will_properties=[(WILL_DELAY, 30), (USER_PROPERTY, ("why", "crash"))],
        )
        a.proc.kill()  # SIGKILL: no Will, no goodbye
    with trio.fail_after(15):
        will = await watcher.read()  # sent once the survivor has adopted the sessions
    assert (will.topic, will.payload) == (b"wills/doomed", b"gone")
    assert will.user_properties == [("why", "crash")]
    adopted = b.broker.sessions["phone"]
    assert adopted.expiry_interval == 600
    b.broker.schedule.run_due(adopted.last_seen + 599)
    assert "phone" in b.broker.sessions
    b.broker.schedule.run_due(adopted.last_seen + 600)
    assert "phone" not in b.broker.sessions


async def test_shared_group_across_nodes_gets_each_message_once(nodes: Nodes) -> None:
    """A shared group with members on two nodes and a publisher on a third: each message
    reaches one member of the group, cluster-wide ([MQTT-4.8.2-3]); both nodes' members get
    some; an ordinary subscriber gets them all."""
    a = await nodes.start("a")
    b = await nodes.start("b")
    c = await nodes.start("c")
    members = []
    for server, name in ((a, "ma"), (b, "mb")):
        member = await connect_client(server.port(), name)
        await subscribe(member, 1, ("$share/pool/jobs/+", 1))
        members.append(member)
    watcher = await connect_client(a.port(), "watcher")
    await subscribe(watcher, 1, ("jobs/+", 0))
    pub = await connect_client(c.port(), "pub")
    count = 10
    for pid in range(1, count + 1):
        await pub.send(wire.publish(f"jobs/{pid}", b"%d" % pid, qos=1, pid=pid))
        await pub.expect(wire.puback(pid))
    for pid in range(1, count + 1):
        await watcher.expect(wire.publish(f"jobs/{pid}", b"%d" % pid))
    got: list[list[bytes]] = [[], []]
    all_in = trio.Event()

    async def collect(index: int, member: WireClient) -> None:
        while True:
            packet = await member.read_packet()
            topic_length = int.from_bytes(packet[2:4], "big")
            packet_id = packet[4 + topic_length : 6 + topic_length]
            got[index].append(packet[6 + topic_length :])
            await member.send(wire.puback(int.from_bytes(packet_id, "big")))
            if sum(map(len, got)) == count:
                all_in.set()

    with trio.fail_after(30):
        async with trio.open_nursery() as collectors:
            for index, member in enumerate(members):
                collectors.start_soon(collect, index, member)
            await all_in.wait()
            collectors.cancel_scope.cancel()
        for member in members:
            await sync(member)  # nothing more was on its way: no message went twice
    assert sorted(got[0] + got[1], key=int) == [b"%d" % n for n in range(1, count + 1)]
    assert got[0]
    assert got[1]
