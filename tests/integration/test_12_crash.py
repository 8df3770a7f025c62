"""Crash tests: a real mqttd process is killed with SIGKILL mid-stream; after a restart every
message it acknowledged is delivered (QoS 1: duplicates allowed; QoS 2: exactly once), payloads
intact, and every acknowledged retained message is there."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from conformance import wire as wire5
from conformance.broker_process import run_mqttd
from tests.helpers import wire
from tests.helpers.client import OPEN_CLIENTS, WireClient
from tests.integration.test_23_mqtt5 import (
    SESSION_EXPIRY,
    SUBSCRIPTION_ID,
    USER_PROPERTY,
    Client5,
)

pytestmark = pytest.mark.slow

MESSAGES = 2500
WINDOW = 100
KILL_AFTER_ACKS = 1200
TIMEOUT_S = 60


def parse_publish(packet: bytes) -> tuple[str, int, int | None, bytes]:
    """(topic, qos, packet id, payload) of a PUBLISH packet."""
    publish = wire.parse(packet)
    assert publish.topic is not None  # a PUBLISH always has one
    return publish.topic.decode(), publish.qos, publish.pid, publish.payload


async def connect(port: int, client_id: str, *, clean: bool, present: bool | None) -> WireClient:
    client = await WireClient.open(port)
    await client.send(wire.connect(client_id, clean=clean))
    connack = await client.read_packet()
    assert connack[:2] == b"\x20\x02"
    assert connack[3] == 0
    if present is not None:
        assert connack[2] == int(present)
    return client


async def publish_until_killed(port: int, process: trio.Process, qos: int) -> set[int]:
    """Publish MESSAGES numbered messages (every 10th also retained on its own topic), keeping
    WINDOW unacknowledged; SIGKILL the broker after KILL_AFTER_ACKS acks. Returns the acked."""
    pub = await connect(port, "crash-pub", clean=True, present=None)
    acked: set[int] = set()
    pending: dict[int, int] = {}  # packet id -> message number
    sent = 0
    killed = False
    try:
        while len(acked) < MESSAGES:
            while sent < MESSAGES and len(pending) < WINDOW:
                number = sent
                packet_id = number % 65535 + 1
                topic = f"crash/retained/{number}" if number % 10 == 0 else "crash/stream"
                await pub.send(
                    wire.publish(
                        topic,
                        b"payload-%06d" % number,
                        qos=qos,
                        retain=number % 10 == 0,
                        pid=packet_id,
                    )
                )
                pending[packet_id] = number
                sent += 1
            packet = await pub.read_packet(timeout=TIMEOUT_S)
            packet_id = int.from_bytes(packet[2:4], "big")
            if qos == 1:
                assert packet[0] == 0x40
                acked.add(pending.pop(packet_id))
            elif packet[0] == 0x50:  # PUBREC: the broker owns the message now
                acked.add(pending[packet_id])
                await pub.send(wire.pubrel(packet_id))
            else:
                assert packet[0] == 0x70
                pending.pop(packet_id)
            if len(acked) >= KILL_AFTER_ACKS and not killed:
                process.kill()
                killed = True
    except (EOFError, trio.BrokenResourceError, ConnectionResetError):
        pass
    assert killed, "the broker was never killed"
    assert KILL_AFTER_ACKS <= len(acked) < MESSAGES
    return acked


async def receive_all(port: int, acked: set[int], qos: int) -> list[int]:
    """Reconnect the persistent subscriber and read until every acked stream message came."""
    sub = await connect(port, "crash-sub", clean=False, present=True)
    expected = {n for n in acked if n % 10}
    received: list[int] = []
    with trio.fail_after(TIMEOUT_S):
        while not expected <= set(received):
            packet = await sub.read_packet()
            if packet[0] & 0xF0 == 0x60:  # PUBREL (also of deliveries released before the crash)
                await sub.send(wire.pubcomp(int.from_bytes(packet[2:4], "big")))
                continue
            topic, got_qos, packet_id, payload = parse_publish(packet)
            assert topic == "crash/stream"
            number = int(payload.removeprefix(b"payload-"))
            assert payload == b"payload-%06d" % number
            received.append(number)
            assert packet_id is not None
            if got_qos == 1:
                await sub.send(wire.puback(packet_id))
            else:
                await sub.send(wire.pubrec(packet_id))
    return received


async def retained_numbers(port: int) -> set[int]:
    """Subscribe to every retained topic and collect the retained messages' numbers."""
    client = await connect(port, "crash-retained", clean=True, present=None)
    await client.send(wire.subscribe(1, [("crash/retained/#", 0)]))
    assert await client.read_packet() == wire.suback(1, [0])
    await client.send(wire.pingreq())
    numbers = set()
    with trio.fail_after(TIMEOUT_S):
        while (packet := await client.read_packet()) != wire.pingresp():
            topic, _qos, _pid, payload = parse_publish(packet)
            assert packet[0] & 1  # RETAIN=1
            numbers.add(int(topic.rsplit("/", 1)[1]))
            assert payload == b"payload-%06d" % int(topic.rsplit("/", 1)[1])
    return numbers


@pytest.mark.parametrize("qos", [1, 2])
async def test_kill_9_loses_no_acknowledged_message(tmp_path: Path, qos: int) -> None:
    """SIGKILL mid-stream: every PUBACKed/PUBRECed message reaches the persistent subscriber
    after restart, QoS 2 exactly once, and acknowledged retained messages are all kept."""
    config = tmp_path / "mqttd.toml"
    config.write_text(
        "[[listeners]]\nport = 0\n"
        "[limits]\nmax_queued_messages = 100000\n"
        '[store]\ndurability = "fsync"\npath = "state/mqttd.db"\n'
    )
    async with run_mqttd(config) as broker:
        process, port = broker.proc, broker.ports["tcp"]
        sub = await connect(port, "crash-sub", clean=False, present=False)
        await sub.send(wire.subscribe(1, [("crash/stream", qos)]))
        assert await sub.read_packet() == wire.suback(1, [qos])
        await sub.send(wire.disconnect())
        await sub.aclose()
        acked = await publish_until_killed(port, process, qos)
        with trio.fail_after(TIMEOUT_S):
            await process.wait()
        assert process.returncode == -9

    async with run_mqttd(config) as broker:
        port = broker.ports["tcp"]
        received = await receive_all(port, acked, qos)
        if qos == 2:
            assert len(received) == len(set(received)), "QoS 2 delivered a message twice"
        retained = await retained_numbers(port)
        assert {n for n in acked if n % 10 == 0} <= retained


async def connect5(port: int, client_id: str, properties: list[tuple[int, Any]]) -> Client5:
    """An MQTT 5 client with Clean Start 0 (its CONNACK read: accepted)."""
    with trio.fail_after(TIMEOUT_S):
        client = Client5(await trio.open_tcp_stream("127.0.0.1", port))
    OPEN_CLIENTS.append(client)  # type: ignore[arg-type]  # closed after the test
    await client.send(wire5.connect(client_id, False, version=5, properties=properties))
    connack = await client.read()
    assert (connack.name, connack.reason) == ("CONNACK", 0)
    return client


async def test_kill_9_keeps_a_connected_mqtt5_session(tmp_path: Path) -> None:
    """SIGKILL while an MQTT 5 client with Session Expiry Interval 60 is connected, an hour
    after its CONNECT: its connection ended no earlier than the kill, so after the restart
    the session is there (Session Present 1), its unacknowledged message re-sent with DUP=1
    [MQTT-4.4.0-1], its User Property and Subscription Identifier kept."""
    config = tmp_path / "mqttd.toml"
    config.write_text(
        '[[listeners]]\nport = 0\n[store]\ndurability = "fsync"\npath = "mqttd.db"\n'
    )
    expiry = [(SESSION_EXPIRY, 60)]
    async with run_mqttd(config) as broker:
        process, port = broker.proc, broker.ports["tcp"]
        sub = await connect5(port, "phone", expiry)
        await sub.subscribe(1, ("k/#", 1), properties=[(SUBSCRIPTION_ID, 3)])
        pub = await connect5(port, "pub", [])
        user = [(USER_PROPERTY, ("k", "v"))]
        await pub.send(wire5.publish("k/1", b"unacked", 1, pid=1, version=5, properties=user))
        assert (await pub.read()).name == "PUBACK"
        got = await sub.read()
        assert got.payload == b"unacked"
        process.kill()
        with trio.fail_after(TIMEOUT_S):
            await process.wait()
    database = tmp_path / "mqttd.db"
    with sqlite3.connect(database) as shift:  # the CONNECT was an hour before the kill
        shift.execute("UPDATE sessions SET last_seen = last_seen - 3600")

    async with run_mqttd(config) as broker:
        sub = await connect5(broker.ports["tcp"], "phone", expiry)
        got = await sub.read()
        assert (got.payload, got.dup) == (b"unacked", True)
        assert got.user_properties == [("k", "v")]
        assert got.props_all(SUBSCRIPTION_ID) == [3]
