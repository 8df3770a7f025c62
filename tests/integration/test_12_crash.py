"""Crash tests: a real mqttd process is killed with SIGKILL mid-stream; after a restart every
message it acknowledged is delivered (QoS 1: duplicates allowed; QoS 2: exactly once), payloads
intact, and every acknowledged retained message is there."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from conformance.broker_process import run_mqttd
from tests.helpers import wire
from tests.helpers.client import WireClient

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
