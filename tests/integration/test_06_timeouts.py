"""Keepalive, connect timeout and write timeout, on in-memory streams with trio's autojump clock
(no real time passes and nothing sleeps)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tests.helpers import wire
from tests.helpers.client import WireClient
from tests.helpers.memory import memory_client, serve_stream, server_state


async def test_keepalive_timeout_closes_after_one_and_a_half(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A client silent for 1.5 x Keep Alive is disconnected [MQTT-3.1.2-24]."""
    state = server_state()
    client = await memory_client(nursery, state, "ka", keepalive=10)
    start = trio.current_time()
    await client.expect_closed(timeout=100)
    assert trio.current_time() - start == pytest.approx(15, abs=0.01)


async def test_keepalive_reset_by_packets(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Each complete packet restarts the 1.5 x Keep Alive timer; PINGREQ gets PINGRESP
    [MQTT-3.12.4-1]."""
    state = server_state()
    client = await memory_client(nursery, state, "ka", keepalive=10)
    for _ in range(5):
        await trio.sleep(14)  # mock time: just under the 15 s grace
        await client.send(wire.pingreq())
        await client.expect(wire.pingresp())
    start = trio.current_time()
    await client.expect_closed(timeout=100)
    assert trio.current_time() - start == pytest.approx(15, abs=0.01)


async def test_trickled_bytes_do_not_extend_keepalive(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Bytes that never complete a packet do not count as a Control Packet [MQTT-3.1.2-24]."""
    state = server_state()
    client = await memory_client(nursery, state, "ka", keepalive=2)
    start = trio.current_time()
    partial = wire.publish("t", bytes(50))
    for i in range(4):
        await trio.sleep(0.7)  # mock time (autojump clock): a byte every 0.7 s
        await client.send(partial[i : i + 1])
    await client.expect_closed(timeout=100)
    assert trio.current_time() - start == pytest.approx(3, abs=0.01)


async def test_keepalive_zero_means_no_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Keep Alive 0 turns the mechanism off."""
    state = server_state()
    client = await memory_client(nursery, state, "ka0", keepalive=0)
    await trio.sleep(86_000)  # mock time: a day without a packet
    await client.send(wire.pingreq())
    await client.expect(wire.pingresp())


async def test_connect_timeout_closes_silent_socket(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A socket that never sends CONNECT is closed after connect_timeout_s."""
    state = server_state(connect_timeout_s=7)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    serve_stream(nursery, state, server_stream)
    client = WireClient(client_stream)
    start = trio.current_time()
    await client.expect_closed(timeout=100)
    assert trio.current_time() - start == pytest.approx(7, abs=0.01)


async def test_write_timeout_closes_client_that_never_reads(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A client that stops reading is closed after write_timeout_s; others are unaffected."""
    state = server_state(write_timeout_s=5)
    client_stream, server_stream = trio.testing.lockstep_stream_pair()
    serve_stream(nursery, state, server_stream)
    other_client, other_server = trio.testing.memory_stream_pair()
    serve_stream(nursery, state, other_server)
    stuck = WireClient(client_stream)
    other = WireClient(other_client)
    await other.send(wire.connect("other"))
    await other.expect(wire.connack(0, 0))
    await stuck.send(wire.connect("stuck"))
    # The lockstep stream only delivers while the peer reads: never read again after CONNACK.
    await stuck.expect(wire.connack(0, 0))
    await stuck.send(wire.subscribe(1, [("flood", 0)]))
    await trio.testing.wait_all_tasks_blocked()
    connection = state.clients["stuck"]
    start = trio.current_time()
    await other.send(wire.publish("flood", b"x"))
    with trio.fail_after(100):
        await connection.closed.wait()
    assert connection.close_reason == "write_timeout"
    assert trio.current_time() - start == pytest.approx(5, abs=0.01)
    await other.send(wire.pingreq())
    await other.expect(wire.pingresp())
