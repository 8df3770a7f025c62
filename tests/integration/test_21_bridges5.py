"""MQTT 5 bridges (``protocol = "5"``) over real sockets: mqttd bridging to Mosquitto 2.0.11
and to a second mqttd, both speaking MQTT 5.

The brokers are ``test_21_bridges``'s (an in-process mqttd with the durable store; Mosquitto as
a child process on a fixed port, restarted there where a test needs it). The test clients speak
raw MQTT 5 (``conformance.wire``'s ``version=5`` builders), so each test sees exactly which
properties arrived. Every wait is bounded.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from conformance import wire
from conformance.wire import Packet
from mqttd.access import AccessControl
from mqttd.bridge.link import Bridge
from mqttd.broker import Broker
from mqttd.config import BridgeConfig, BridgeTopicConfig, Config, LimitsConfig
from mqttd.shared import ServerState
from tests.helpers.client import OPEN_CLIENTS, TIMEOUT_S
from tests.integration.test_21_bridges import (
    REMOTES,
    InProcess,
    MosquittoRemote,
    MqttdRemote,
    Peer,
    Remote,
    assert_complete_in_order,
    bridge_to,
    exchange_markers,
    mqttd_config,
    needs_mosquitto,
    numbered,
    start_local,
)

T = BridgeTopicConfig

#: Properties a publisher sets, as the wire carries them (User Properties in its order, one
#: name twice); each must reach the subscriber on the other side unchanged and in this order.
PROPERTIES: list[tuple[int, Any]] = [
    (wire.PAYLOAD_FORMAT_INDICATOR, 1),
    (wire.CONTENT_TYPE, "application/json"),
    (wire.RESPONSE_TOPIC, "replies/42"),
    (wire.CORRELATION_DATA, b"\x00\xffcorrelation"),
    (wire.USER_PROPERTY, ("site", "edge-17")),
    (wire.USER_PROPERTY, ("trace", "a1b2")),
    (wire.USER_PROPERTY, ("site", "again")),
]
EXPIRY_S = 3600


class Peer5:
    """A raw MQTT 5 client that completes its QoS flows, so tests deal in messages."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = wire.Decoder(version=5)
        self._next_pid = 0
        #: QoS 2 packet ids received and not yet released (a re-send is not a new message)
        self.awaiting_release: set[int] = set()

    @classmethod
    async def connect(
        cls, port: int, client_id: str, *, clean: bool = True, expiry: int | None = None
    ) -> Peer5:
        with trio.fail_after(TIMEOUT_S):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        peer = cls(stream)
        OPEN_CLIENTS.append(peer)  # type: ignore[arg-type]  # closed after the test
        properties = [(wire.SESSION_EXPIRY_INTERVAL, expiry)] if expiry is not None else None
        await peer.send(wire.connect(client_id, clean, version=5, properties=properties))
        connack = await peer.read()
        assert connack.type == wire.CONNACK, connack.describe()
        assert connack.reason == 0, connack.describe()
        return peer

    async def send(self, data: bytes) -> None:
        with trio.fail_after(TIMEOUT_S):
            await self.stream.send_all(data)

    async def read(self, timeout: float = TIMEOUT_S) -> Packet:
        with trio.fail_after(timeout):
            while True:
                packet = self.decoder.next()
                if packet is not None:
                    return packet
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError("closed")
                self.decoder.feed(data)

    def pid(self) -> int:
        self._next_pid = self._next_pid % 65535 + 1
        return self._next_pid

    async def subscribe(self, *filters: tuple[str, int]) -> None:
        pid = self.pid()
        await self.send(wire.subscribe(pid, filters, version=5))
        suback = await self.read()
        assert (suback.type, suback.codes) == (wire.SUBACK, tuple(q for _, q in filters))

    async def publish_many(
        self,
        messages: list[tuple[str, bytes]],
        qos: int,
        properties: list[tuple[int, Any]] | None = None,
    ) -> None:
        """PUBLISH everything at once, then complete every flow."""
        pids = [self.pid() if qos else None for _ in messages]
        await self.send(
            b"".join(
                wire.publish(topic, payload, qos, pid=pid, version=5, properties=properties)
                for (topic, payload), pid in zip(messages, pids, strict=True)
            )
        )
        pending = {pid for pid in pids if pid is not None}
        while pending:
            packet = await self.read()
            assert packet.reason is not None, packet.describe()
            assert packet.reason < 0x80, packet.describe()
            if packet.type == wire.PUBREC:
                await self.send(wire.pubrel(packet.pid or 0))
            elif packet.type in (wire.PUBACK, wire.PUBCOMP):
                pending.discard(packet.pid)
            else:
                raise AssertionError(f"unexpected {packet.describe()}")

    async def receive(self, timeout: float = TIMEOUT_S) -> Packet:
        """The next message, acknowledged as its QoS requires ([MQTT-4.3.3-2] method A)."""
        while True:
            packet = await self.read(timeout)
            pid = packet.pid or 0
            if packet.type == wire.PUBREL:
                self.awaiting_release.discard(pid)
                await self.send(wire.pubcomp(pid))
                continue
            assert packet.type == wire.PUBLISH, packet.describe()
            if packet.qos == 1:
                await self.send(wire.puback(pid))
            elif packet.qos == 2:
                await self.send(wire.pubrec(pid))
                if pid in self.awaiting_release:
                    continue
                self.awaiting_release.add(pid)
            return packet

    async def receive_until(self, payload: bytes, timeout: float = 30.0) -> list[Packet]:
        """Every PUBLISH up to and including the first with ``payload``."""
        with trio.fail_after(timeout):
            got = []
            while True:
                packet = await self.receive()
                got.append(packet)
                if packet.payload == payload:
                    return got

    async def aclose(self) -> None:
        with trio.move_on_after(1):
            await self.stream.aclose()


def bridge5(port: int, *topics: BridgeTopicConfig, **options: Any) -> Any:
    """``bridge_to`` with ``protocol = "5"``."""
    return bridge_to(port, *topics, protocol="5", **options)


def assert_properties_crossed(packet: Packet) -> None:
    """The publisher's properties arrived unchanged and in order, with the expiry left."""
    expiry = packet.prop(wire.MESSAGE_EXPIRY_INTERVAL)
    assert isinstance(expiry, int), packet.describe()
    assert EXPIRY_S - 60 < expiry <= EXPIRY_S
    assert [p for p in packet.props if p[0] != wire.MESSAGE_EXPIRY_INTERVAL] == PROPERTIES
    assert packet.user_properties == [("site", "edge-17"), ("trace", "a1b2"), ("site", "again")]


@pytest.fixture
async def remote(
    request: pytest.FixtureRequest, nursery: trio.Nursery, tmp_path: Path
) -> AsyncIterator[Remote]:
    """The remote broker of the test's parameter, started."""
    broker: Remote = (
        MqttdRemote(nursery, tmp_path / "remote")
        if request.param == "mqttd"
        else MosquittoRemote(tmp_path / "remote")
    )
    await broker.start()
    yield broker
    if isinstance(broker, MosquittoRemote) and broker.process:
        await broker.stop()


# ---------------------------------------------------------------------------------------------
# Both directions, QoS, properties
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("remote", REMOTES, indirect=True)
@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_properties_cross_both_ways(
    nursery: trio.Nursery, tmp_path: Path, remote: Remote, qos: int
) -> None:
    """An MQTT 5 client publishes here with properties, an MQTT 5 client there receives them
    (renamed, at the bridge's QoS), and the other way round; topics outside the tables stay."""
    local = await start_local(
        nursery,
        tmp_path,
        bridge5(remote.port, T("a/#", "out", qos, "l/", "r/"), T("b/#", "in", qos, "l/", "r/")),
    )
    with trio.fail_after(TIMEOUT_S):
        await local.bridge.wait_up()
    remote_sub = await Peer5.connect(remote.port, "remote-sub")
    await remote_sub.subscribe(("r/#", 2))
    local_sub = await Peer5.connect(local.port, "local-sub")
    await local_sub.subscribe(("l/#", 2))
    local_pub = await Peer5.connect(local.port, "local-pub")
    remote_pub = await Peer5.connect(remote.port, "remote-pub")
    properties = [(wire.MESSAGE_EXPIRY_INTERVAL, EXPIRY_S), *PROPERTIES]

    def seen(packets: list[Packet]) -> list[tuple[bytes | None, bytes, int]]:
        return [(p.topic, p.payload, p.qos) for p in packets]

    await local_pub.publish_many([("l/a/x", b"out"), ("l/c", b"stays")], 2, properties)
    await local_pub.publish_many([("l/a/end", b"oe")], 2)
    got = await remote_sub.receive_until(b"oe")
    assert seen(got) == [(b"r/a/x", b"out", qos), (b"r/a/end", b"oe", qos)]
    assert_properties_crossed(got[0])
    assert got[1].props == ()  # a message without properties gets none on the way
    await local_sub.receive_until(b"oe")  # here too, directly

    await remote_pub.publish_many([("r/b/y", b"in"), ("r/c", b"stays")], 2, properties)
    await remote_pub.publish_many([("r/b/end", b"ie")], 2)
    got = await local_sub.receive_until(b"ie")
    assert seen(got) == [(b"l/b/y", b"in", qos), (b"l/b/end", b"ie", qos)]
    assert_properties_crossed(got[0])
    assert got[1].props == ()


@pytest.mark.parametrize("remote", REMOTES, indirect=True)
async def test_a_31_bridge_leaves_the_properties_behind(
    nursery: trio.Nursery, tmp_path: Path, remote: Remote
) -> None:
    """The same publication over a 3.1.1 bridge reaches the MQTT 5 subscriber without them."""
    local = await start_local(nursery, tmp_path, bridge_to(remote.port, T("a/#", "out", 1)))
    with trio.fail_after(TIMEOUT_S):
        await local.bridge.wait_up()
    remote_sub = await Peer5.connect(remote.port, "remote-sub")
    await remote_sub.subscribe(("a/#", 1))
    local_pub = await Peer5.connect(local.port, "local-pub")
    await local_pub.publish_many([("a/x", b"v")], 1, PROPERTIES)
    packet = await remote_sub.receive()
    assert (packet.payload, packet.props) == (b"v", ())


@pytest.mark.parametrize("remote", REMOTES, indirect=True)
async def test_bridging_everything_both_ways_does_not_echo(
    nursery: trio.Nursery, tmp_path: Path, remote: Remote
) -> None:
    """`#` both ways over MQTT 5: No Local keeps the remote from sending the bridge its own
    messages back (there is no try_private bit), and nothing comes back here either."""
    local = await start_local(nursery, tmp_path, bridge5(remote.port, T("#", "both", 1)))
    with trio.fail_after(TIMEOUT_S):
        await local.bridge.wait_up()
    assert local.server is not None
    before = local.server.broker.stats.messages_received
    await exchange_markers(local.port, remote.port)
    # X and M2 published here, M bridged in: three messages, not a storm.
    assert local.server.broker.stats.messages_received - before == 3


async def test_messages_larger_than_the_remote_takes_are_dropped(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A remote announcing a Maximum Packet Size: a larger message is dropped and counted, the
    link stays up and carries the next one."""
    remote = MqttdRemote(nursery, tmp_path / "remote", limits=LimitsConfig(max_packet_size=200))
    await remote.start()
    local = await start_local(nursery, tmp_path, bridge5(remote.port, T("s/#", "out", 1)))
    with trio.fail_after(TIMEOUT_S):
        await local.bridge.wait_up()
    subscriber = await Peer5.connect(remote.port, "sub")
    await subscriber.subscribe(("s/#", 1))
    publisher = await Peer5.connect(local.port, "pub")
    await publisher.publish_many([("s/big", b"x" * 1000), ("s/small", b"fits")], 1)
    packet = await subscriber.receive()
    assert (packet.topic, packet.payload) == (b"s/small", b"fits")
    bridge = local.bridge
    assert (bridge.session.too_large, bridge.links, bridge.up) == (1, 1, True)
    assert not bridge.session.inflight


# ---------------------------------------------------------------------------------------------
# Sessions: nothing lost while the link is down
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("remote", REMOTES, indirect=True)
@pytest.mark.parametrize("qos", [1, 2])
async def test_remote_restarted_while_messages_flow(
    nursery: trio.Nursery, tmp_path: Path, remote: Remote, qos: int
) -> None:
    """The remote stops with messages in flight and queued, and comes back: every message
    arrives, first deliveries in order (and at QoS 2 exactly once), properties included."""
    local = await start_local(nursery, tmp_path, bridge5(remote.port, T("s/#", "out", qos)))
    with trio.fail_after(TIMEOUT_S):
        await local.bridge.wait_up()
    subscriber = await Peer5.connect(remote.port, "sub", clean=False, expiry=0xFFFFFFFF)
    await subscriber.subscribe(("s/#", 2))
    publisher = await Peer5.connect(local.port, "pub")
    batches = [numbered(100, 0), numbered(100, 100), numbered(100, 200)]
    marked = [(wire.USER_PROPERTY, ("batch", "queued"))]

    await publisher.publish_many([("s/t", p) for p in batches[0]], qos)
    got = [p.payload for p in [await subscriber.receive() for _ in range(30)]]
    await remote.stop()  # with messages of the first batch still in flight or queued
    await subscriber.aclose()
    await publisher.publish_many([("s/t", p) for p in batches[1]], qos, marked)  # queued
    await remote.start()
    resumed = await Peer5.connect(remote.port, "sub", clean=False, expiry=0xFFFFFFFF)
    resumed.awaiting_release = subscriber.awaiting_release
    await publisher.publish_many([("s/t", p) for p in batches[2]], qos)
    packets = await resumed.receive_until(batches[2][-1], timeout=60.0)
    got += [p.payload for p in packets]
    assert_complete_in_order(got, [*batches[0], *batches[1], *batches[2]], exactly_once=qos == 2)
    queued = [p for p in packets if p.payload in set(batches[1])]
    assert {tuple(p.user_properties) for p in queued} == {(("batch", "queued"),)}
    assert local.bridge.links == 2  # the link really went down and came back


@pytest.mark.slow
@pytest.mark.parametrize("remote", REMOTES, indirect=True)
@pytest.mark.parametrize("qos", [1, 2])
async def test_remote_keeps_the_bridge_session_while_the_link_is_down(
    nursery: trio.Nursery, tmp_path: Path, remote: Remote, qos: int
) -> None:
    """clean_session = false is a Session Expiry Interval of 0xFFFFFFFF: while this broker is
    down, the remote queues what the bridge subscribed to, and it all arrives here after the
    restart, in order (Mosquitto 2.0's own MQTT 5 bridge would lose it: it sends no expiry)."""
    config = bridge5(remote.port, T("in/#", "in", qos))
    local = await start_local(nursery, tmp_path, config)
    with trio.fail_after(TIMEOUT_S):
        await local.bridge.wait_up()
    # A persistent subscriber here, so what the bridge brings in waits for it.
    subscriber = await Peer5.connect(local.port, "sub", clean=False, expiry=0xFFFFFFFF)
    await subscriber.subscribe(("in/#", 2))
    await subscriber.aclose()
    await local.stop()
    publisher = await Peer5.connect(remote.port, "pub")
    sent = numbered(50)
    for start in range(0, len(sent), 10):  # Mosquitto refuses more than 20 QoS 2 at once (0x97)
        await publisher.publish_many(
            [("in/t", p) for p in sent[start : start + 10]], qos, PROPERTIES
        )

    local = await start_local(nursery, tmp_path, config)
    subscriber = await Peer5.connect(local.port, "sub", clean=False, expiry=0xFFFFFFFF)
    packets = await subscriber.receive_until(sent[-1])
    assert_complete_in_order([p.payload for p in packets], sent, exactly_once=qos == 2)
    assert [p.props for p in packets] == [tuple(PROPERTIES)] * len(packets)
    assert local.bridge.links == 1


@needs_mosquitto
async def test_mosquitto_mqtt5_bridge_into_mqttd_does_not_storm(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Mosquitto's own MQTT 5 bridge into mqttd, `#` both ways, with its defaults: it sends no
    bridge bit, so mqttd sees a client, whose No Local subscriptions keep its messages from
    coming back; its notifications (a Will, and `1` on connecting, on
    `$SYS/broker/connection/<its client id>/state`) are the one `$` topic a client may write."""
    server = await InProcess(nursery, mqttd_config(tmp_path / "mqttd")).start()
    mosquitto = MosquittoRemote(
        tmp_path / "mosquitto",
        extra=(
            "connection into-mqttd\n"
            f"address 127.0.0.1:{server.port()}\n"
            "topic # both 1\n"
            "bridge_protocol_version mqttv50\n"
            "cleansession true\n"
            "remote_clientid mosquitto-bridge\n"
        ),
    )
    ready = await Peer.connect(server.port(), "ready")
    await ready.publish("ready/check", b"ready", 1, retain=True)
    await mosquitto.start()
    try:
        probe = await Peer.connect(mosquitto.port, "probe")
        await probe.subscribe(("ready/#", 1))
        # The retained message crossed: Mosquitto's bridge is subscribed on mqttd.
        assert (await probe.receive()).payload == b"ready"
        await probe.close()
        client = server.state.clients.get("mosquitto-bridge")
        assert client is not None
        decoder = client.protocol.decoder
        assert (decoder.protocol_level, decoder.bridge) == (5, False)
        state = server.broker.retained.get("$SYS/broker/connection/mosquitto-bridge/state")
        assert state is not None
        assert state.payload == b"1"
        before = server.broker.stats.messages_received
        await exchange_markers(server.port(), mosquitto.port)
        assert server.broker.stats.messages_received - before == 3
    finally:
        await mosquitto.stop()


# ---------------------------------------------------------------------------------------------
# The driver: remote DISCONNECTs and the backoff, the DISCONNECT after a protocol error
# ---------------------------------------------------------------------------------------------

#: What a fake remote does once it has answered the CONNECT: gets the stream and the framer.
Script = Callable[[trio.abc.Stream, wire.Framer], Awaitable[None]]


async def run_fake_remote(script: Script, seconds: float) -> tuple[Bridge, int]:
    """An MQTT 5 bridge (Mosquitto's delays: 5 s doubling to 30 s) to in-memory remotes that
    accept each CONNECT and then follow ``script``; runs ``seconds`` of (autojump) trio time.

    Returns:
        The bridge, and how many connections it opened.
    """
    connections = 0

    async def remote(stream: trio.abc.Stream) -> None:
        framer = wire.Framer()
        packets: list[bytes] = []
        while not packets:
            packets = framer.feed_raw(await stream.receive_some(4096))
        assert packets[0][0] == 0x10  # CONNECT
        await stream.send_all(wire.connack(False, 0, version=5))
        await script(stream, framer)
        await stream.aclose()

    async def connect(host: str, port: int) -> trio.abc.Stream:
        nonlocal connections
        connections += 1
        here, there = trio.testing.memory_stream_pair()
        nursery.start_soon(remote, there)
        return here

    config = Config(
        bridges=(
            BridgeConfig(
                name="b",
                address=("remote",),
                topics=(T("#", "out", 1),),
                keepalive=0,
                protocol="5",
            ),
        )
    )
    broker = Broker(LimitsConfig())
    state = ServerState(config=config, broker=broker, access=AccessControl(config))
    bridge = Bridge(state, config.bridges[0], connect=connect, rng=random.Random(5))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bridge.run)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()
    return bridge, connections


@pytest.mark.parametrize(("code", "expected"), [(0x8E, (18, 40)), (0x8B, (150, 260))])
async def test_remote_disconnects_are_retried_with_backoff(
    autojump_clock: trio.testing.MockClock, code: int, expected: tuple[int, int]
) -> None:
    """A remote that accepts the bridge and at once sends it away with 0x8E (a second bridge
    with the same client id) is retried ever more slowly, up to the cap: about 20 times in 10
    minutes, not a flapping loop; after 0x8B (server shutting down) each reconnection waits
    only the first delay (2.5 to 5 s: about 160 times)."""

    async def disconnect(stream: trio.abc.Stream, framer: wire.Framer) -> None:
        await stream.send_all(wire.disconnect(reason=code))

    bridge, connections = await run_fake_remote(disconnect, 600.0)
    low, high = expected
    assert low <= connections <= high, connections
    assert bridge.links == connections


async def test_protocol_error_gets_a_disconnect_with_its_reason(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A remote that sends a Topic Alias (the bridge allowed none) gets DISCONNECT 0x94 Topic
    Alias invalid before the bridge closes the connection."""
    received: list[bytes] = []

    async def alias(stream: trio.abc.Stream, framer: wire.Framer) -> None:
        properties = [(wire.TOPIC_ALIAS, 1)]
        await stream.send_all(wire.publish("t", b"x", version=5, properties=properties))
        while data := await stream.receive_some(4096):
            received.extend(framer.feed_raw(data))

    await run_fake_remote(alias, 1.0)
    assert received[0] == wire.disconnect(reason=0x94)
