"""[limits]: keepalive cap, topic depth, subscriptions per client, per-address connection
limits, publish rate, and the slow-consumer policy."""

from __future__ import annotations

import dataclasses

import pytest
import trio
import trio.testing

from mqttd.admission import Admission
from mqttd.config import LimitsConfig
from tests.helpers import wire
from tests.helpers.client import WireClient, connect_client, subscribe
from tests.helpers.memory import memory_client, serve_stream, server_state


async def test_keepalive_cap_applies_to_long_and_zero_keepalive(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """max_keepalive holds a client asking for more, or for none, to the cap (1.5 x cap)."""
    state = server_state(max_keepalive=10)
    for asked in (600, 0):
        client = await memory_client(nursery, state, f"ka{asked}", keepalive=asked)
        start = trio.current_time()
        await client.expect_closed(timeout=1000)
        assert trio.current_time() - start == pytest.approx(15, abs=0.01)


async def test_too_deep_topics_refused(start_server) -> None:  # type: ignore[no-untyped-def]
    """A PUBLISH deeper than max_topic_levels closes the connection; a filter that deep gets
    SUBACK 0x80."""
    server = await start_server(max_topic_levels=4)
    sub = await connect_client(server.port(), "sub")
    await sub.send(wire.subscribe(1, [("a/b/c/d", 0), ("a/b/c/d/e", 0)]))
    await sub.expect(wire.suback(1, [0, 0x80]))
    pub = await connect_client(server.port(), "pub")
    await pub.send(wire.publish("a/b/c/d/e", b"x"))
    await pub.expect_closed()


async def test_subscriptions_per_client_limit(start_server) -> None:  # type: ignore[no-untyped-def]
    """New filters beyond max_subscriptions_per_client get 0x80; re-subscribing is fine."""
    server = await start_server(max_subscriptions_per_client=2)
    sub = await connect_client(server.port(), "sub")
    await sub.send(wire.subscribe(1, [("a", 0), ("b", 1), ("c", 2)]))
    await sub.expect(wire.suback(1, [0, 1, 0x80]))
    await sub.send(wire.subscribe(2, [("b", 2), ("d", 0)]))
    await sub.expect(wire.suback(2, [2, 0x80]))
    await sub.send(wire.unsubscribe(3, ["a"]))
    await sub.expect(wire.unsuback(3))
    await subscribe(sub, 4, ("d", 0))


async def test_connections_per_ip_limit(start_server) -> None:  # type: ignore[no-untyped-def]
    """Beyond max_connections_per_ip, new connections from that address are closed at once;
    when one closes, the next is let in."""
    server = await start_server(max_connections_per_ip=2)
    first = await connect_client(server.port(), "one")
    await connect_client(server.port(), "two")
    third = await WireClient.open(server.port())
    await third.expect_closed()
    await first.send(wire.disconnect())
    await first.expect_closed()
    with trio.fail_after(10):
        while len(server.state.connections) > 1:
            await trio.testing.wait_all_tasks_blocked()
    await connect_client(server.port(), "three")


async def test_connect_rate_per_ip_limit(start_server) -> None:  # type: ignore[no-untyped-def]
    """max_connect_rate_per_ip is a token bucket: at 0.01/s only one connection gets in."""
    server = await start_server(max_connect_rate_per_ip=0.01)
    await connect_client(server.port(), "first")
    second = await WireClient.open(server.port())
    await second.expect_closed()


async def test_admission_token_bucket_refills() -> None:
    """The per-address bucket refills at the configured rate, with a burst of one second."""
    admission = Admission(dataclasses.replace(LimitsConfig(), max_connect_rate_per_ip=2))
    assert admission.refuse("198.51.100.1", 0.0) is None
    assert admission.refuse("198.51.100.1", 0.0) is None
    assert admission.refuse("198.51.100.1", 0.0) == "max_connect_rate_per_ip"
    assert admission.refuse("198.51.100.2", 0.0) is None  # another address has its own
    assert admission.refuse("198.51.100.1", 0.5) is None
    assert admission.first_refusal("198.51.100.1", "max_connect_rate_per_ip")
    assert not admission.first_refusal("198.51.100.1", "max_connect_rate_per_ip")


async def test_publish_rate_delays_but_never_drops(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """max_publish_rate slows a flooding publisher down (by reading it more slowly) and every
    message still arrives."""
    state = server_state(max_publish_rate=10)
    sub_stream, sub_server = trio.testing.memory_stream_pair()
    pub_stream, pub_server = trio.testing.memory_stream_pair()
    serve_stream(nursery, state, sub_server)
    serve_stream(nursery, state, pub_server)
    sub, pub = WireClient(sub_stream), WireClient(pub_stream)
    await sub.send(wire.connect("sub") + wire.subscribe(1, [("flood", 0)]))
    await sub.expect(wire.connack(0, 0))
    await sub.expect(wire.suback(1, [0]))
    await pub.send(wire.connect("pub"))
    await pub.expect(wire.connack(0, 0))
    start = trio.current_time()
    await pub.send(b"".join(wire.publish("flood", b"%d" % i) for i in range(50)))
    for i in range(50):
        await sub.expect(wire.publish("flood", b"%d" % i))
    assert trio.current_time() - start >= 3.9  # 50 at 10/s with a burst of 10


async def test_slow_consumer_disconnect_policy(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """slow_consumer = "disconnect" closes a client whose output is full instead of dropping
    its messages; the publisher is unaffected."""
    state = server_state(slow_consumer="disconnect", max_outbox_bytes=1000, write_timeout_s=1000)
    stuck_stream, stuck_server = trio.testing.lockstep_stream_pair()
    pub_stream, pub_server = trio.testing.memory_stream_pair()
    serve_stream(nursery, state, stuck_server)
    serve_stream(nursery, state, pub_server)
    stuck, pub = WireClient(stuck_stream), WireClient(pub_stream)
    await stuck.send(wire.connect("stuck"))
    await stuck.expect(wire.connack(0, 0))
    await stuck.send(wire.subscribe(1, [("fill", 0)]))
    await trio.testing.wait_all_tasks_blocked()
    connection = state.clients["stuck"]
    await pub.send(wire.connect("pub"))
    await pub.expect(wire.connack(0, 0))
    await pub.send(b"".join(wire.publish("fill", bytes(200)) for _ in range(20)))
    await pub.send(wire.pingreq())
    await pub.expect(wire.pingresp())
    with trio.fail_after(100):
        await connection.closed.wait()
    assert connection.close_reason == "slow_consumer"


async def test_per_address_limit_applies_before_http_and_tls(nursery: trio.Nursery) -> None:
    """On a ws listener the per-address limit counts connections from accept, before any HTTP:
    an address at its limit gets the next socket closed without a byte read."""
    from mqttd.config import Config, ListenerConfig, StoreConfig
    from mqttd.server import serve

    config = Config(
        listeners=(ListenerConfig(type="ws", port=0),),
        limits=dataclasses.replace(LimitsConfig(), max_connections_per_ip=2),
        store=StoreConfig(durability="memory"),
    )
    with trio.fail_after(10):
        server = await nursery.start(serve, config)
        port = server.port("ws")
        held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
        refused = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            assert await refused.receive_some(100) == b""
        except trio.BrokenResourceError:
            pass  # closed with a reset: refused just the same
        for stream in [*held, refused]:
            await stream.aclose()
        server.shutdown()
