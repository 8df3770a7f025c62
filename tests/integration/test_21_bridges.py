"""Bridges over real sockets: mqttd bridging to Mosquitto and to a second mqttd.

The local mqttd runs in-process (``serve``) with the durable store; the remote is Debian's
Mosquitto (a child process) or another in-process mqttd, restarted on the same port where a
test needs it. Test clients speak raw MQTT (``tests.helpers.wire``). Every wait is bounded; the
only timed waits measure something (the reconnection rate) and say so.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import random
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trustme
from structlog.testing import capture_logs

from conformance.broker_process import (
    MOSQUITTO,
    BrokerProcess,
    free_port,
    run_mqttd,
    start_mosquitto,
)
from mqttd.access import AccessControl
from mqttd.auth import hash_password
from mqttd.bridge.link import Bridge, state_topic
from mqttd.broker import Broker
from mqttd.config import (
    AuthConfig,
    BridgeConfig,
    BridgeTopicConfig,
    Config,
    LimitsConfig,
    ListenerConfig,
    StoreConfig,
)
from mqttd.errors import StartupError
from mqttd.server import Server, serve
from mqttd.shared import ServerState
from tests.helpers import wire
from tests.helpers.client import TIMEOUT_S, WireClient

needs_mosquitto = pytest.mark.skipif(
    shutil.which("mosquitto") is None and not Path(MOSQUITTO).exists(),
    reason="mosquitto is not installed",
)

T = BridgeTopicConfig


# ---------------------------------------------------------------------------------------------
# Test clients
# ---------------------------------------------------------------------------------------------


class Peer:
    """A raw MQTT client: waits for the acknowledgements of what it publishes and acknowledges
    what it receives (QoS 1 and 2), so tests deal in messages."""

    def __init__(self, client: WireClient, awaiting_release: set[int] | None = None) -> None:
        self.client = client
        self._next_pid = 0
        #: QoS 2 packet ids received and not yet released: a re-send is not a new message
        #: (kept across reconnections of a persistent session, as a client must)
        self.awaiting_release = awaiting_release if awaiting_release is not None else set()

    @classmethod
    async def connect(
        cls, port: int, client_id: str, *, clean: bool = True, resume: Peer | None = None
    ) -> Peer:
        client = await WireClient.open(port)
        await client.send(wire.connect(client_id, clean=clean))
        connack = wire.parse(await client.read_packet())
        assert connack.type == wire.CONNACK
        assert connack.body[1] == 0, f"CONNACK {connack.body[1]}"
        return cls(client, resume.awaiting_release if resume is not None else None)

    def pid(self) -> int:
        self._next_pid = self._next_pid % 65535 + 1
        return self._next_pid

    async def subscribe(self, *subscriptions: tuple[str, int]) -> None:
        pid = self.pid()
        await self.client.send(wire.subscribe(pid, subscriptions))
        await self.client.expect(wire.suback(pid, [qos for _, qos in subscriptions]))

    async def publish(
        self, topic: str, payload: bytes, qos: int = 0, *, retain: bool = False
    ) -> None:
        """PUBLISH and wait until the broker completed the flow."""
        await self.publish_many([(topic, payload)], qos, retain=retain)

    async def publish_many(
        self, messages: list[tuple[str, bytes]], qos: int, *, retain: bool = False
    ) -> None:
        """PUBLISH everything at once, then complete every flow (the broker took them all)."""
        pids = [self.pid() if qos else None for _ in messages]
        await self.client.send(
            b"".join(
                wire.publish(topic, payload, qos=qos, retain=retain, pid=pid)
                for (topic, payload), pid in zip(messages, pids, strict=True)
            )
        )
        pending = {pid for pid in pids if pid is not None}
        while pending:
            packet = wire.parse(await self.client.read_packet())
            if packet.type == wire.PUBREC:
                await self.client.send(wire.pubrel(packet.pid or 0))
            elif packet.type in (wire.PUBACK, wire.PUBCOMP):
                pending.discard(packet.pid)
            else:
                raise AssertionError(f"unexpected {packet.describe()}")

    async def receive(self, timeout: float = TIMEOUT_S) -> wire.Packet:
        """The next message (acknowledged as its QoS requires; a QoS 2 re-send of a packet id
        awaiting PUBREL is acknowledged and skipped, [MQTT-4.3.3-2] method A)."""
        while True:
            packet = wire.parse(await self.client.read_packet(timeout))
            pid = packet.pid or 0
            if packet.type == wire.PUBREL:
                self.awaiting_release.discard(pid)
                await self.client.send(wire.pubcomp(pid))
                continue
            assert packet.type == wire.PUBLISH, packet.describe()
            if packet.qos == 1:
                await self.client.send(wire.puback(pid))
            elif packet.qos == 2:
                await self.client.send(wire.pubrec(pid))
                if pid in self.awaiting_release:
                    continue
                self.awaiting_release.add(pid)
            return packet

    async def receive_until(self, payload: bytes, timeout: float = 30.0) -> list[wire.Packet]:
        """Every PUBLISH up to and including the first with ``payload``."""
        with trio.fail_after(timeout):
            got = []
            while True:
                packet = await self.receive()
                got.append(packet)
                if packet.payload == payload:
                    return got

    async def close(self) -> None:
        await self.client.aclose()


def payloads(packets: list[wire.Packet]) -> list[bytes]:
    return [p.payload for p in packets]


def numbered(count: int, start: int = 0, prefix: str = "") -> list[bytes]:
    return [f"{prefix}{i:05d}".encode() for i in range(start, start + count)]


def assert_complete_in_order(got: list[bytes], sent: list[bytes], *, exactly_once: bool) -> None:
    """Nothing lost; first deliveries in publishing order; no duplicate at all if asked."""
    firsts = list(dict.fromkeys(got))
    assert firsts == sent, f"lost or reordered: {len(set(sent) - set(got))} missing"
    if exactly_once:
        assert len(got) == len(sent), f"{len(got) - len(sent)} duplicates"


# ---------------------------------------------------------------------------------------------
# Brokers
# ---------------------------------------------------------------------------------------------


class InProcess:
    """An mqttd served in the test's nursery that can be stopped and started again."""

    def __init__(self, nursery: trio.Nursery, config: Config) -> None:
        self.nursery = nursery
        self.config = config
        self.server: Server | None = None
        self._done = trio.Event()

    async def start(self) -> Server:
        done = self._done = trio.Event()

        async def run(*, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                await serve(self.config, task_status=task_status)
            finally:
                done.set()

        with trio.fail_after(TIMEOUT_S):
            self.server = await self.nursery.start(run)
        return self.server

    async def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        with trio.fail_after(TIMEOUT_S):
            await self._done.wait()
        self.server = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port()

    @property
    def bridge(self) -> Bridge:
        assert self.server is not None
        return self.server.bridges[0]


def mqttd_config(
    directory: Path, port: int = 0, *, bridges: tuple[BridgeConfig, ...] = (), **extra: Any
) -> Config:
    """A broker on 127.0.0.1:``port`` with its SQLite store in ``directory``."""
    return Config(
        listeners=(ListenerConfig(type="tcp", host="127.0.0.1", port=port),),
        store=StoreConfig(durability="fsync", path=directory / "mqttd.db"),
        bridges=bridges,
        **extra,
    )


def bridge_to(port: int, *topics: BridgeTopicConfig, **options: Any) -> BridgeConfig:
    """A bridge named b1 to 127.0.0.1:``port`` that reconnects quickly."""
    values: dict[str, Any] = {
        "name": "b1",
        "address": (f"127.0.0.1:{port}",),
        "topics": topics,
        "client_id": "edge-bridge",
        "reconnect_delay_s": 0.05,
        "reconnect_delay_max_s": 0.5,
    }
    values.update(options)
    return BridgeConfig(**values)


class Remote:
    """The remote broker: Mosquitto or mqttd, on a fixed port so it can be restarted."""

    kind = ""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError


class MqttdRemote(Remote):
    kind = "mqttd"

    def __init__(self, nursery: trio.Nursery, directory: Path, **config: Any) -> None:
        super().__init__(directory)
        self.broker = InProcess(nursery, mqttd_config(directory, self.port, **config))

    async def start(self) -> None:
        await self.broker.start()

    async def stop(self) -> None:
        await self.broker.stop()


class MosquittoRemote(Remote):
    kind = "mosquitto"

    def __init__(self, directory: Path, extra: str = "") -> None:
        super().__init__(directory)
        self.extra = extra
        self.process: BrokerProcess | None = None

    def conf(self) -> str:
        return (
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            # mosquitto drops root privileges to this user: stay ourselves, to write the store
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
            "persistence true\n"
            f"persistence_location {self.directory}/\n"
            "set_tcp_nodelay true\n" + self.extra
        )

    async def start(self) -> None:
        self.process = await trio.to_thread.run_sync(
            start_mosquitto, self.conf(), self.directory, {"tcp": self.port}
        )

    async def stop(self) -> None:
        assert self.process is not None
        process, self.process = self.process, None
        await trio.to_thread.run_sync(process.stop)


REMOTES = [
    pytest.param("mqttd", id="mqttd"),
    pytest.param("mosquitto", id="mosquitto", marks=needs_mosquitto),
]


@pytest.fixture
async def remote(
    request: pytest.FixtureRequest, nursery: trio.Nursery, tmp_path: Path
) -> AsyncIterator[Remote]:
    """The remote broker of the test's parameter, started."""
    kind = request.param
    broker: Remote = (
        MqttdRemote(nursery, tmp_path / "remote")
        if kind == "mqttd"
        else MosquittoRemote(tmp_path / "remote")
    )
    await broker.start()
    yield broker
    if kind == "mosquitto" and isinstance(broker, MosquittoRemote) and broker.process:
        await broker.stop()


async def start_local(
    nursery: trio.Nursery, tmp_path: Path, *bridges: BridgeConfig, **extra: Any
) -> InProcess:
    local = InProcess(nursery, mqttd_config(tmp_path / "local", bridges=bridges, **extra))
    await local.start()
    return local


# ---------------------------------------------------------------------------------------------
# Both directions, prefixes, QoS
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("remote", REMOTES, indirect=True)
@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_both_directions_with_prefixes(
    nursery: trio.Nursery, tmp_path: Path, remote: Remote, qos: int
) -> None:
    """out: local l/a/x reaches remote r/a/x; in: remote r/b/y reaches local l/b/y; each at
    the bridge's QoS, once; topics outside the tables do not cross."""
    local = await start_local(
        nursery,
        tmp_path,
        bridge_to(
            remote.port,
            T("a/#", "out", qos, "l/", "r/"),
            T("b/#", "in", qos, "l/", "r/"),
        ),
    )
    with trio.fail_after(TIMEOUT_S):
        await local.bridge.wait_up()
    remote_sub = await Peer.connect(remote.port, "remote-sub")
    await remote_sub.subscribe(("r/#", 2))
    local_sub = await Peer.connect(local.port, "local-sub")
    await local_sub.subscribe(("l/#", 2))
    local_pub = await Peer.connect(local.port, "local-pub")
    remote_pub = await Peer.connect(remote.port, "remote-pub")

    def seen(packets: list[wire.Packet]) -> list[tuple[bytes | None, bytes, int]]:
        return [(p.topic, p.payload, p.qos) for p in packets]

    # Out: the end marker follows l/c over the same link, so l/c would have come first.
    await local_pub.publish_many([("l/a/x", b"out"), ("l/c", b"stays"), ("l/a/end", b"oe")], 2)
    assert seen(await remote_sub.receive_until(b"oe")) == [
        (b"r/a/x", b"out", qos),
        (b"r/a/end", b"oe", qos),
    ]
    assert seen(await local_sub.receive_until(b"oe")) == [
        (b"l/a/x", b"out", 2),
        (b"l/c", b"stays", 2),
        (b"l/a/end", b"oe", 2),
    ]
    # In.
    await remote_pub.publish_many([("r/b/y", b"in"), ("r/c", b"stays"), ("r/b/end", b"ie")], 2)
    assert seen(await local_sub.receive_until(b"ie")) == [
        (b"l/b/y", b"in", qos),
        (b"l/b/end", b"ie", qos),
    ]
    assert seen(await remote_sub.receive_until(b"ie")) == [
        (b"r/b/y", b"in", 2),
        (b"r/c", b"stays", 2),
        (b"r/b/end", b"ie", 2),
    ]


@pytest.mark.parametrize("remote", REMOTES, indirect=True)
@pytest.mark.parametrize("try_private", [True, False])
async def test_mqtt31_bridge(
    nursery: trio.Nursery, tmp_path: Path, remote: Remote, try_private: bool
) -> None:
    """protocol = "3.1" (MQIsdp, level 3, or 0x83 with try_private) carries QoS 2 both ways."""
    local = await start_local(
        nursery,
        tmp_path,
        bridge_to(
            remote.port,
            T("o/#", "out", 2),
            T("i/#", "in", 2),
            protocol="3.1",
            try_private=try_private,
            client_id="edge31",  # MQTT 3.1 allows 23 characters at most
        ),
    )
    with trio.fail_after(TIMEOUT_S):
        await local.bridge.wait_up()
    sub_there = await Peer.connect(remote.port, "sub-there")
    await sub_there.subscribe(("o/#", 2))
    sub_here = await Peer.connect(local.port, "sub-here")
    await sub_here.subscribe(("i/#", 2))
    await (await Peer.connect(local.port, "pub-here")).publish("o/x", b"out", 2)
    await (await Peer.connect(remote.port, "pub-there")).publish("i/y", b"in", 2)
    packet = await sub_there.receive()
    assert (packet.topic, packet.payload, packet.qos) == (b"o/x", b"out", 2)
    packet = await sub_here.receive()
    assert (packet.topic, packet.payload, packet.qos) == (b"i/y", b"in", 2)


@pytest.mark.parametrize("remote", REMOTES, indirect=True)
async def test_retained_message_is_retained_on_the_remote(
    nursery: trio.Nursery, tmp_path: Path, remote: Remote
) -> None:
    """A retained message published here is retained there (RETAIN passed as published)."""
    local = await start_local(nursery, tmp_path, bridge_to(remote.port, T("s/#", "out", 1)))
    with trio.fail_after(TIMEOUT_S):
        await local.bridge.wait_up()
    probe = await Peer.connect(remote.port, "probe")
    await probe.subscribe(("s/#", 1))
    publisher = await Peer.connect(local.port, "pub")
    await publisher.publish("s/status", b"online", 1, retain=True)
    await probe.receive_until(b"online")
    late = await Peer.connect(remote.port, "late")
    await late.subscribe(("s/#", 1))
    packet = await late.receive()
    assert (packet.topic, packet.payload, packet.retain) == (b"s/status", b"online", True)


async def test_link_state_is_published_retained(nursery: trio.Nursery, tmp_path: Path) -> None:
    """$SYS/broker/connection/<name>/state is 1 while the link is up, 0 when it went down."""
    remote = MqttdRemote(nursery, tmp_path / "remote")
    local = await start_local(nursery, tmp_path, bridge_to(remote.port, T("#", "out", 1)))
    watcher = await Peer.connect(local.port, "watcher")
    await watcher.subscribe((state_topic("b1"), 1))
    first = await watcher.receive()
    assert (first.payload, first.retain) == (b"0", True)
    await remote.start()
    assert (await watcher.receive()).payload == b"1"
    await remote.stop()
    assert (await watcher.receive()).payload == b"0"


@pytest.mark.parametrize("transport", ["ws", "wss"])
async def test_websocket_transports(nursery: trio.Nursery, tmp_path: Path, transport: str) -> None:
    """A bridge over ws and wss (verifying the remote against a private CA) carries messages
    both ways."""
    certs = Certificates(tmp_path / "certs")
    tls: dict[str, Any] = (
        {"certfile": certs.server_cert, "keyfile": certs.server_key} if transport == "wss" else {}
    )
    listeners = (
        ListenerConfig(type=transport, host="127.0.0.1", port=0, **tls),  # type: ignore[arg-type]
        ListenerConfig(type="tcp", host="127.0.0.1", port=0),  # for the test's own clients
    )
    remote = InProcess(
        nursery, dataclasses.replace(mqttd_config(tmp_path / "remote"), listeners=listeners)
    )
    server = await remote.start()
    local = await start_local(
        nursery,
        tmp_path,
        bridge_to(
            server.port(transport),
            T("o/#", "out", 1),
            T("i/#", "in", 1),
            transport=transport,
            **({"cafile": certs.ca_file} if transport == "wss" else {}),
        ),
    )
    with trio.fail_after(TIMEOUT_S):
        await local.bridge.wait_up()
    sub_here = await Peer.connect(local.port, "sub-here")
    await sub_here.subscribe(("i/#", 1))
    sub_there = await Peer.connect(server.port("tcp"), "sub-there")
    await sub_there.subscribe(("o/#", 1))
    await (await Peer.connect(local.port, "pub-here")).publish("o/x", b"over websocket", 1)
    await (await Peer.connect(server.port("tcp"), "pub-there")).publish("i/y", b"back", 1)
    packet = await sub_there.receive()
    assert (packet.topic, packet.payload) == (b"o/x", b"over websocket")
    packet = await sub_here.receive()
    assert (packet.topic, packet.payload) == (b"i/y", b"back")


# ---------------------------------------------------------------------------------------------
# Restarts: nothing lost at QoS 1/2, order kept
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("remote", REMOTES, indirect=True)
@pytest.mark.parametrize("qos", [1, 2])
async def test_remote_restarted_while_messages_flow(
    nursery: trio.Nursery, tmp_path: Path, remote: Remote, qos: int
) -> None:
    """The remote stops while messages are in flight and queued, and comes back: every
    message arrives, first deliveries in order (and at QoS 2 exactly once)."""
    local = await start_local(nursery, tmp_path, bridge_to(remote.port, T("s/#", "out", qos)))
    with trio.fail_after(TIMEOUT_S):
        await local.bridge.wait_up()
    subscriber = await Peer.connect(remote.port, "sub", clean=False)
    await subscriber.subscribe(("s/#", 2))
    publisher = await Peer.connect(local.port, "pub")
    batches = [numbered(100, 0), numbered(100, 100), numbered(100, 200)]

    await publisher.publish_many([("s/t", p) for p in batches[0]], qos)
    got = [p.payload for p in [await subscriber.receive() for _ in range(30)]]
    await remote.stop()  # with messages of the first batch still in flight or queued
    await subscriber.close()
    await publisher.publish_many([("s/t", p) for p in batches[1]], qos)  # queued meanwhile
    await remote.start()
    subscriber = await Peer.connect(remote.port, "sub", clean=False, resume=subscriber)
    await publisher.publish_many([("s/t", p) for p in batches[2]], qos)
    got += payloads(await subscriber.receive_until(batches[2][-1], timeout=60.0))
    assert_complete_in_order(got, [*batches[0], *batches[1], *batches[2]], exactly_once=qos == 2)
    assert local.bridge.links == 2  # the link really went down and came back


@pytest.mark.slow
async def test_local_broker_restart_keeps_what_is_queued(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Messages queued for an absent remote survive a restart of this broker (graceful), and
    reach the remote in order once it is there."""
    remote = MqttdRemote(nursery, tmp_path / "remote")
    config = bridge_to(remote.port, T("q/#", "out", 2))
    local = await start_local(nursery, tmp_path, config)
    publisher = await Peer.connect(local.port, "pub")
    sent = numbered(50)
    await publisher.publish_many([("q/1", p) for p in sent[:25]], 1)
    await publisher.publish_many([("q/2", p) for p in sent[25:]], 2)
    assert len(local.bridge.session.queue) == 50
    await local.stop()

    await remote.start()
    subscriber = await Peer.connect(remote.port, "sub")
    await subscriber.subscribe(("q/#", 2))
    local = await start_local(nursery, tmp_path, config)
    got = await subscriber.receive_until(sent[-1])
    assert payloads(got) == sent
    assert [p.qos for p in got] == [1] * 25 + [2] * 25
    assert local.bridge.links == 1


@pytest.mark.slow
@needs_mosquitto
async def test_local_broker_killed_keeps_what_is_queued(tmp_path: Path) -> None:
    """kill -9 of the bridging mqttd (a process) loses none of the QoS 1 messages it had
    acknowledged to their publisher while the remote (Mosquitto) was away."""
    remote = MosquittoRemote(tmp_path / "remote")
    config = tmp_path / "local.toml"
    config.write_text(
        f"""
[[listeners]]
port = 0
[store]
path = "{tmp_path / "local" / "mqttd.db"}"
[[bridges]]
name = "edge"
address = ["127.0.0.1:{remote.port}"]
reconnect_delay_s = 0.05
reconnect_delay_max_s = 0.5
[[bridges.topics]]
pattern = "k/#"
direction = "out"
qos = 1
"""
    )
    sent = numbered(200)
    with trio.fail_after(60):
        async with run_mqttd(config) as local:
            publisher = await Peer.connect(local.ports["tcp"], "pub")
            await publisher.publish_many([("k/t", p) for p in sent], 1)
            local.proc.kill()
            await local.proc.wait()
            await publisher.close()
        await remote.start()
        try:
            subscriber = await Peer.connect(remote.port, "sub")
            await subscriber.subscribe(("k/#", 1))
            async with run_mqttd(config):
                got = await subscriber.receive_until(sent[-1])
        finally:
            await remote.stop()
    assert_complete_in_order(payloads(got), sent, exactly_once=False)


# ---------------------------------------------------------------------------------------------
# Authentication and TLS
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_wrong_password_is_logged_once_and_retried_with_backoff(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """CONNACK 4 for every attempt: one warning, attempts one after the other, and the link
    never claims to be up. (The spacing of the attempts -- no busy loop -- is checked on trio's
    clock by test_backoff_schedule_without_busy_loop.)"""
    passwords = tmp_path / "passwd"
    passwords.write_text(f"edge:{hash_password('right', iterations=1000)}\n")
    remote = MqttdRemote(
        nursery,
        tmp_path / "remote",
        auth=AuthConfig(allow_anonymous=False, password_file=passwords),
    )
    await remote.start()
    with capture_logs() as logs:
        local = await start_local(
            nursery,
            tmp_path,
            bridge_to(
                remote.port,
                T("#", "out", 1),
                username="edge",
                password="wrong",
                reconnect_delay_s=0.1,
                reconnect_delay_max_s=0.4,
            ),
        )
        with trio.fail_after(TIMEOUT_S):
            await local.bridge.wait_for(lambda bridge: bridge.failures >= 5)
    bridge = local.bridge
    assert bridge.attempts - bridge.failures <= 1  # at most the one under way
    assert not bridge.up
    assert bridge.links == 0
    warnings = [
        e for e in logs if e["event"] == "bridge_connect_failed" and e["log_level"] == "warning"
    ]
    assert len(warnings) == 1
    assert warnings[0]["return_code"] == 4
    assert warnings[0]["reason"] == "connect_refused"


async def test_backoff_schedule_without_busy_loop(autojump_clock: trio.testing.MockClock) -> None:
    """With Mosquitto's delays (5 s doubling to 30 s) a refusing remote is tried about twice a
    minute, and the link comes up on the first attempt after the remote accepts."""
    remote_accepts = False
    connections = 0

    async def fake_remote(stream: trio.abc.Stream) -> None:
        data = b""
        while len(data) < 2 or len(data) < 2 + data[1]:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            data += chunk
        await stream.send_all(wire.connack(0, 0 if remote_accepts else 5))
        if remote_accepts:
            await stream.receive_some(4096)  # hold the link until the bridge closes it
        await stream.aclose()

    async def connect(host: str, port: int) -> trio.abc.Stream:
        nonlocal connections
        connections += 1
        here, there = trio.testing.memory_stream_pair()
        nursery.start_soon(fake_remote, there)
        return here

    config = Config(
        bridges=(
            BridgeConfig(name="b", address=("remote",), topics=(T("#", "out", 1),), keepalive=0),
        )
    )
    broker = Broker(LimitsConfig())
    state = ServerState(config=config, broker=broker, access=AccessControl(config))
    async with trio.open_nursery() as nursery:
        with capture_logs() as logs:
            bridge = Bridge(state, config.bridges[0], connect=connect, rng=random.Random(3))
            nursery.start_soon(bridge.run)
            await trio.sleep(600)
        assert 18 <= connections <= 40, connections
        assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
            "bridge_connect_failed"
        ]
        assert bridge.state.broker.retained.get(state_topic("b")) is not None
        remote_accepts = True
        started = trio.current_time()
        await bridge.wait_up()
        assert trio.current_time() - started <= 30.0
        retained = broker.retained.get(state_topic("b"))
        assert retained is not None
        assert retained.payload == b"1"
        nursery.cancel_scope.cancel()


class Certificates:
    """A private CA (trustme), a server certificate for 127.0.0.1 and a client certificate."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        self.ca_file = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.server_cert = directory / "server.pem"
        self.server_key = directory / "server.key"
        server.cert_chain_pems[0].write_to_path(str(self.server_cert))
        server.private_key_pem.write_to_path(str(self.server_key))
        client = self.ca.issue_cert("edge-bridge@example", common_name="edge-bridge")
        self.client_cert = directory / "client.pem"
        self.client_key = directory / "client.key"
        client.cert_chain_pems[0].write_to_path(str(self.client_cert))
        client.private_key_pem.write_to_path(str(self.client_key))


async def test_tls_with_a_private_ca_and_client_certificate(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """tls: the bridge verifies the remote against its CA file and presents its client
    certificate to a remote that requires one; a bridge trusting another CA never connects."""
    certs = Certificates(tmp_path / "certs")
    listeners = (
        ListenerConfig(
            type="tls",
            host="127.0.0.1",
            port=0,
            certfile=certs.server_cert,
            keyfile=certs.server_key,
            cafile=certs.ca_file,
            require_certificate=True,
        ),
        ListenerConfig(type="tcp", host="127.0.0.1", port=0),  # for the test's own clients
    )
    remote = InProcess(
        nursery, dataclasses.replace(mqttd_config(tmp_path / "remote"), listeners=listeners)
    )
    server = await remote.start()
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    good = bridge_to(
        server.port("tls"),
        T("t/#", "out", 1),
        transport="tls",
        cafile=certs.ca_file,
        certfile=certs.client_cert,
        keyfile=certs.client_key,
    )
    untrusting = dataclasses.replace(good, name="b2", cafile=other_ca, client_id="other")
    with capture_logs() as logs:
        local = await start_local(nursery, tmp_path, good, untrusting)
        assert local.server is not None
        first, second = local.server.bridges
        with trio.fail_after(TIMEOUT_S):
            await first.wait_up()
            await second.wait_for(lambda bridge: bridge.failures >= 1)
    assert not second.up
    failure = next(e for e in logs if e["event"] == "bridge_connect_failed" and e["bridge"] == "b2")
    assert failure["reason"].startswith("tls: "), failure
    subscriber = await Peer.connect(server.port("tcp"), "sub")
    await subscriber.subscribe(("t/#", 1))
    await (await Peer.connect(local.port, "pub")).publish("t/x", b"secret", 1)
    assert (await subscriber.receive()).payload == b"secret"


async def test_unreadable_tls_file_stops_start_up(tmp_path: Path) -> None:
    """A bridge's missing CA file is a start-up error naming the bridge, not a retry loop."""
    config = mqttd_config(
        tmp_path,
        bridges=(bridge_to(1, T("#", "out", 0), transport="tls", cafile=tmp_path / "no.pem"),),
    )
    with pytest.RaisesGroup(
        pytest.RaisesExc(StartupError, match="bridge b1: cannot load its TLS files"),
        flatten_subgroups=True,
    ):
        async with trio.open_nursery() as nursery:
            with trio.fail_after(TIMEOUT_S):
                await nursery.start(serve, config)


# ---------------------------------------------------------------------------------------------
# Loops
# ---------------------------------------------------------------------------------------------


async def exchange_markers(local_port: int, remote_port: int) -> None:
    """X is published here, then M there, then M2 here, each once the other side has the one
    before. An echo of X (or M) would be routed back before M (or M2) was even published, so it
    would come over the link ahead of it: each `#` subscriber must get exactly X, M, M2."""
    sub_here = await Peer.connect(local_port, "sub-here")
    await sub_here.subscribe(("#", 1))
    sub_there = await Peer.connect(remote_port, "sub-there")
    await sub_there.subscribe(("#", 1))
    pub_here = await Peer.connect(local_port, "pub-here")
    pub_there = await Peer.connect(remote_port, "pub-there")
    got_here: list[bytes] = []
    got_there: list[bytes] = []
    await pub_here.publish("loop/x", b"X", 1)
    got_there += payloads(await sub_there.receive_until(b"X"))
    await pub_there.publish("loop/m", b"M", 1)
    got_here += payloads(await sub_here.receive_until(b"M"))
    await pub_here.publish("loop/x", b"M2", 1)
    got_here += payloads(await sub_here.receive_until(b"M2"))
    got_there += payloads(await sub_there.receive_until(b"M2"))
    retained = b"ready"  # a retained message some tests leave
    assert [p for p in got_here if p != retained] == [b"X", b"M", b"M2"]
    assert [p for p in got_there if p != retained] == [b"X", b"M", b"M2"]


@pytest.mark.parametrize("remote", REMOTES, indirect=True)
async def test_bridging_everything_both_ways_does_not_storm(
    nursery: trio.Nursery, tmp_path: Path, remote: Remote
) -> None:
    """`#` both ways: no message comes back where it came from, none twice; the local broker
    received exactly the messages published plus those bridged in."""
    local = await start_local(nursery, tmp_path, bridge_to(remote.port, T("#", "both", 1)))
    with trio.fail_after(TIMEOUT_S):
        await local.bridge.wait_up()

    assert local.server is not None
    before = local.server.broker.stats.messages_received
    await exchange_markers(local.port, remote.port)
    # X and M2 published here, M bridged in: three messages, not a storm.
    assert local.server.broker.stats.messages_received - before == 3


@needs_mosquitto
async def test_mosquitto_bridging_to_mqttd_does_not_storm(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Mosquitto's bridge (try_private) into mqttd with `#` both ways: mqttd recognises the
    bridge bit and does not echo its messages back; nothing loops."""
    server = await InProcess(nursery, mqttd_config(tmp_path / "mqttd")).start()
    ready = await Peer.connect(server.port(), "ready")
    await ready.publish("ready/check", b"ready", 1, retain=True)
    mosquitto = MosquittoRemote(
        tmp_path / "mosquitto",
        extra=(
            "connection into-mqttd\n"
            f"address 127.0.0.1:{server.port()}\n"
            "topic # both 1\n"
            "try_private true\n"
            "cleansession true\n"
            "remote_clientid mosquitto-bridge\n"
            # notifications on (Mosquitto's default): its state and Will on mqttd's $SYS
        ),
    )
    await mosquitto.start()
    try:
        probe = await Peer.connect(mosquitto.port, "probe")
        await probe.subscribe(("ready/#", 1))
        # The retained message crossed: Mosquitto's bridge is subscribed on mqttd.
        assert (await probe.receive()).payload == b"ready"
        await probe.close()
        client = server.state.clients.get("mosquitto-bridge")
        assert client is not None
        assert client.protocol.decoder.bridge
        state = server.broker.retained.get("$SYS/broker/connection/mosquitto-bridge/state")
        assert state is not None
        assert state.payload == b"1"

        before = server.broker.stats.messages_received
        await exchange_markers(server.port(), mosquitto.port)
        assert server.broker.stats.messages_received - before == 3
    finally:
        await mosquitto.stop()


# ---------------------------------------------------------------------------------------------
# Throughput (a figure for docs/benchmarks.md, with its correctness checks)
# ---------------------------------------------------------------------------------------------

THROUGHPUT_MESSAGES = 20_000
#: Messages published and not yet received by the subscriber: bounded end to end, so no
#: queue on the way (the subscriber's, the bridge's) ever fills and drops.
THROUGHPUT_WINDOW = 500


async def stream_qos1(pub_port: int, sub_port: int, topic: str, count: int) -> float:
    """Messages per second of a 1→1 QoS 1 stream, checked: every message once, in order."""
    subscriber = await Peer.connect(sub_port, f"tp-sub-{topic}")
    await subscriber.subscribe((topic, 1))
    publisher = await Peer.connect(pub_port, f"tp-pub-{topic}")
    padding = b"x" * 48
    received: list[int] = []
    progress = trio.Event()

    async def read() -> None:
        nonlocal progress
        framer = wire.Framer()
        stream = subscriber.client.stream
        while len(received) < count:
            data = await stream.receive_some(65536)
            assert data, "subscriber connection closed"
            acks = []
            for raw in framer.feed_raw(data):
                body = raw[2:] if raw[1] < 128 else raw[3:]
                _topic, _qos, pid, payload = wire.parse_publish(raw[0], body)
                received.append(int(payload[:8]))
                acks.append(wire.puback(pid))
            await stream.send_all(b"".join(acks))
            progress.set()
            progress = trio.Event()

    async def drain_acks() -> None:
        framer = wire.Framer()
        acked = 0
        while acked < count:
            data = await publisher.client.stream.receive_some(65536)
            assert data, "publisher connection closed"
            acked += len(framer.feed_raw(data))

    async def write() -> None:
        sent = 0
        while sent < count:
            while sent - len(received) >= THROUGHPUT_WINDOW:
                await progress.wait()
            burst = min(THROUGHPUT_WINDOW - (sent - len(received)), count - sent, 100)
            await publisher.client.stream.send_all(
                b"".join(
                    wire.publish(topic, b"%08d" % n + padding, qos=1, pid=n % 65535 + 1)
                    for n in range(sent, sent + burst)
                )
            )
            sent += burst

    started = trio.current_time()
    with trio.fail_after(300):
        async with trio.open_nursery() as tasks:
            tasks.start_soon(read)
            tasks.start_soon(drain_acks)
            tasks.start_soon(write)
    elapsed = trio.current_time() - started
    assert received == list(range(count))
    return count / elapsed


@pytest.mark.slow
@pytest.mark.parametrize(
    ("store_durability", "bridge_window"), [("fsync", 0), ("os", 0), ("fsync", 1000)]
)
async def test_bridged_qos1_throughput(
    tmp_path: Path, store_durability: str, bridge_window: int
) -> None:
    """A bridged 1→1 QoS 1 stream (publisher on A, subscriber on B, A bridges to B) against a
    direct 1→1 QoS 1 stream on A, in the same run, with two mqttd processes. Prints the figures
    (run with -s); asserts only that every message arrived once and in order.

    ``bridge_window`` 0 keeps the default in-flight window (limits.max_inflight_messages, 20).
    """
    store = f'[store]\ndurability = "{store_durability}"\n'
    b_config = tmp_path / "b.toml"
    b_config.write_text(f'[[listeners]]\nport = 0\n{store}path = "{tmp_path / "b.db"}"\n')
    async with run_mqttd(b_config) as b:
        window = f"max_inflight_messages = {bridge_window}\n" if bridge_window else ""
        a_config = tmp_path / "a.toml"
        a_config.write_text(
            f'[[listeners]]\nport = 0\n{store}path = "{tmp_path / "a.db"}"\n'
            f'[[bridges]]\nname = "ab"\naddress = ["127.0.0.1:{b.ports["tcp"]}"]\n{window}'
            '[[bridges.topics]]\npattern = "bridged/#"\nqos = 1\n'
        )
        async with run_mqttd(a_config) as a:
            await a.wait_for_record(lambda r: r.get("event") == "bridge_connected", "link", 30)
            a_port, b_port = a.ports["tcp"], b.ports["tcp"]
            await stream_qos1(a_port, a_port, "direct/warmup", 2000)
            direct = await stream_qos1(a_port, a_port, "direct/t", THROUGHPUT_MESSAGES)
            bridged = await stream_qos1(a_port, b_port, "bridged/t", THROUGHPUT_MESSAGES)
    print(
        f"\nQoS 1 1→1, {THROUGHPUT_MESSAGES} messages of 56 bytes, end-to-end window "
        f"{THROUGHPUT_WINDOW}, durability {store_durability}, bridge window "
        f"{bridge_window or 20}: direct {direct:,.0f} msg/s, bridged {bridged:,.0f} msg/s, "
        f"ratio {bridged / direct:.2f}"
    )
