"""Load against one in-process broker: thousands of sockets that never send CONNECT, and a
subscriber that never reads while a publisher floods it.

Nothing here asserts how fast the broker is (the machine is shared); every wait is on an event
or on the peer, under an overall ``trio.fail_after``. Measured figures are printed (``-s``) and
recorded as junit properties.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import resource
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from mqttd.config import Config, LimitsConfig, ListenerConfig, StoreConfig
from mqttd.server import Server, serve
from tests.helpers import wire
from tests.helpers.client import WireClient, connect_client, subscribe

pytestmark = pytest.mark.slow

Record = Callable[[str, Any], None]

#: Idle sockets the first test aims for; each costs two descriptors (client and broker side).
IDLE_SOCKETS = 5_000
#: Descriptors kept free for everything else in the process.
SPARE_FDS = 256


def _config(**limits: Any) -> Config:
    return Config(
        listeners=(ListenerConfig(type="tcp", host="127.0.0.1", port=0),),
        limits=dataclasses.replace(LimitsConfig(), **limits),
        store=StoreConfig(durability="memory"),
    )


async def _start(nursery: trio.Nursery, **limits: Any) -> Server:
    with trio.fail_after(10):
        server: Server = await nursery.start(serve, _config(**limits))
    return server


@contextmanager
def _descriptors_for(sockets: int) -> Iterator[int]:
    """Raise RLIMIT_NOFILE (up to the hard limit) for ``sockets`` connections in this process;
    yields how many sockets fit, and restores the old limit afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * sockets + SPARE_FDS
    wanted = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield min(sockets, (wanted - SPARE_FDS) // 2)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def _round_trip(client: WireClient, topic: str, payload: bytes) -> None:
    """Publish to our own subscription and PINGREQ: both answers come back, in order."""
    await client.send(wire.publish(topic, payload) + wire.pingreq())
    await client.expect(wire.publish(topic, payload))
    await client.expect(wire.pingresp())


async def test_sockets_that_never_send_connect_are_closed(
    nursery: trio.Nursery, record_property: Record
) -> None:
    """5,000 sockets that never send CONNECT are all closed by connect_timeout_s (each sees
    EOF, nothing before it) while a healthy client's round trip completes."""
    with _descriptors_for(IDLE_SOCKETS) as count, capture_logs() as logs:
        server = await _start(nursery, connect_timeout_s=3.0)
        port = server.port()
        sockets: list[trio.socket.SocketType] = []
        limiter = trio.CapacityLimiter(100)
        outcomes = {"eof": 0, "reset": 0}

        async def open_idle() -> None:
            async with limiter:
                sock = trio.socket.socket()
                sockets.append(sock)
                await sock.connect(("127.0.0.1", port))

        async def wait_closed(sock: trio.socket.SocketType) -> None:
            try:
                data = await sock.recv(1)
            except ConnectionResetError:
                outcomes["reset"] += 1
            else:
                assert data == b"", f"the broker sent {data!r} to a client without CONNECT"
                outcomes["eof"] += 1

        start = trio.current_time()
        try:
            with trio.fail_after(180):
                async with trio.open_nursery() as openers:
                    for _ in range(count):
                        openers.start_soon(open_idle)
                opened = trio.current_time()
                healthy = await connect_client(port, "healthy")
                await subscribe(healthy, 1, ("load/healthy", 0))
                await _round_trip(healthy, "load/healthy", b"during")
                async with trio.open_nursery() as waiters:
                    for sock in sockets:
                        waiters.start_soon(wait_closed, sock)
                all_closed = trio.current_time()
                await _round_trip(healthy, "load/healthy", b"after")
        finally:
            for sock in sockets:
                sock.close()
    assert outcomes["eof"] + outcomes["reset"] == count
    timeouts = [e for e in logs if e.get("event") == "connect_timeout"]
    assert len(timeouts) == count
    assert not [e for e in logs if e.get("log_level") in ("error", "critical")]
    figures = {
        "idle_sockets": count,
        "open_s": round(opened - start, 2),
        "all_closed_s": round(all_closed - start, 2),
        "resets": outcomes["reset"],
    }
    if count < IDLE_SOCKETS:
        figures["note"] = f"RLIMIT_NOFILE allows only {count} sockets"
    print(f"\nidle sockets: {figures}")
    for key, value in figures.items():
        record_property(key, value)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def _release_free_memory() -> None:
    """Collect garbage and hand free heap pages back to the OS (glibc ``malloc_trim``), so that
    memory freed by earlier tests does not hide growth from the RSS baseline."""
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc: the baseline is merely less tight
    libc.malloc_trim(0)


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs 5); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


#: Limits of the flood test, small so an unbounded buffer would stand out.
FLOOD_LIMITS: dict[str, Any] = {
    "max_outbox_bytes": 256 * 1024,
    "max_queued_messages": 1000,
    "max_queued_bytes": 1024 * 1024,
    "max_inflight_messages": 20,
}
FLOOD_PAYLOAD = 4096
FLOOD_MESSAGES = 32_768  # 128 MiB of payload, half QoS 0 and half QoS 1
#: What the broker may hold for the stuck client, per the limits, with a generous 1 KiB of
#: bookkeeping per queued or in-flight message.
FLOOD_HELD_BYTES = (
    FLOOD_LIMITS["max_outbox_bytes"]
    + FLOOD_LIMITS["max_queued_bytes"]
    + (FLOOD_LIMITS["max_queued_messages"] + FLOOD_LIMITS["max_inflight_messages"])
    * (FLOOD_PAYLOAD + 1024)
)
#: Fixed allowance over the baseline: allocator slack, read buffers, the test clients.
RSS_ALLOWANCE = 48 * 1024 * 1024


@pytest.mark.parametrize("write_timeout_s", [2.0, 600.0], ids=["write_timeout", "drop"])
async def test_stuck_subscriber_does_not_grow_memory_or_block_publisher(
    nursery: trio.Nursery, record_property: Record, write_timeout_s: float
) -> None:
    """A subscriber that never reads while 128 MiB of QoS 0 and QoS 1 flood in: the broker's
    RSS stays within its limits plus a fixed allowance, every PUBACK reaches the publisher, and
    the stuck client is closed by write_timeout_s or its messages are dropped and counted."""
    server = await _start(nursery, write_timeout_s=write_timeout_s, **FLOOD_LIMITS)
    port = server.port()
    # A small receive buffer keeps the kernel from absorbing the flood on the stuck side.
    raw = trio.socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with trio.fail_after(10):
        await raw.connect(("127.0.0.1", port))
    stuck = WireClient(trio.SocketStream(raw))
    await stuck.send(wire.connect("stuck"))
    await stuck.expect(wire.connack(0, 0))
    await subscribe(stuck, 1, ("flood/#", 1))
    stuck_connection = server.state.clients["stuck"]
    publisher = await connect_client(port, "publisher")
    healthy = await connect_client(port, "healthy")
    await subscribe(healthy, 1, ("load/healthy", 0))

    payload = bytes(FLOOD_PAYLOAD)
    qos1_sent = FLOOD_MESSAGES // 2
    pubacks = 0
    _release_free_memory()
    baseline = _rss_kib("VmRSS")
    peak_from_hwm = _reset_peak_rss()
    peak = baseline

    async def read_pubacks() -> None:
        nonlocal pubacks
        while pubacks < qos1_sent:
            packet = await publisher.read_packet()
            assert packet == wire.puback(pubacks % 65535 + 1)  # in order [MQTT-4.6.0-2]
            pubacks += 1

    with capture_logs() as logs, trio.fail_after(300):
        async with trio.open_nursery() as flood:
            flood.start_soon(read_pubacks)
            batch = []
            for i in range(FLOOD_MESSAGES):
                if i % 2:
                    pid = (i // 2) % 65535 + 1
                    batch.append(wire.publish("flood/x", payload, qos=1, pid=pid))
                else:
                    batch.append(wire.publish("flood/x", payload))
                if len(batch) == 64:
                    await publisher.send(b"".join(batch))
                    batch.clear()
                    peak = max(peak, _rss_kib("VmRSS"))
            await publisher.send(b"".join(batch))
        if write_timeout_s < 60:
            await stuck_connection.closed.wait()
        await _round_trip(healthy, "load/healthy", b"after the flood")
    peak = max(peak, _rss_kib("VmHWM") if peak_from_hwm else _rss_kib("VmRSS"))

    dropped = server.broker.stats.messages_dropped
    figures = {
        "baseline_rss_kib": baseline,
        "peak_rss_kib": peak,
        "growth_kib": peak - baseline,
        "bound_kib": (FLOOD_HELD_BYTES + RSS_ALLOWANCE) // 1024,
        "messages_dropped": dropped,
        "stuck_close_reason": stuck_connection.close_reason,
    }
    print(f"\nstuck subscriber ({write_timeout_s} s write timeout): {figures}")
    for key, value in figures.items():
        record_property(key, value)

    assert pubacks == qos1_sent
    assert (peak - baseline) * 1024 <= FLOOD_HELD_BYTES + RSS_ALLOWANCE
    if write_timeout_s < 60:
        assert stuck_connection.close_reason == "write_timeout"
        assert any(e.get("event") == "write_timeout" for e in logs)
    else:
        # Still connected: everything beyond its window, queue and outbox was dropped.
        assert not stuck_connection.closed.is_set()
        assert dropped > 0
        assert any(e.get("event") == "messages_dropped" for e in logs)
    assert not [e for e in logs if e.get("log_level") in ("error", "critical")]
