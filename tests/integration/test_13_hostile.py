"""Hostile clients against one real broker per test: fuzzed byte streams, malformed packets,
huge lengths, 64K subscriptions, thousands of topic levels, ill-formed UTF-8.

Every hypothesis test starts ONE broker and runs all its examples against it (see
``tests.helpers.fuzz``). After each example: the serve task still runs, nothing was logged at
ERROR (``connection_failed`` is how a broker bug shows), the offender was answered as the case
requires or closed, and a healthy client connected all along still gets its publish back and a
PINGRESP. The number of examples is printed (``-s``) and recorded as a junit property.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from tests.helpers import wire
from tests.helpers.client import connect_client, sync
from tests.helpers.fuzz import (
    Case,
    FuzzHarness,
    bytes_before_connect,
    check_answer,
    deep_topics,
    forbidden_packets,
    huge_remaining_lengths,
    invalid_utf8,
    mutated_streams,
)

Record = Callable[[str, Any], None]

_SETTINGS: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


def _report(harness: FuzzHarness, name: str, record_property: Record) -> None:
    assert harness.examples > 0
    print(f"\n{harness.summary(name)}")
    record_property("hostile_examples", harness.examples)
    record_property("hostile_kinds", dict(harness.kinds))


async def test_mutated_and_truncated_streams(
    nursery: trio.Nursery, record_property: Record
) -> None:
    """A valid CONNECT followed by mutated or truncated packets gets only well-formed replies,
    then the connection ends; the broker and a healthy client are unaffected."""
    with capture_logs() as logs:
        harness = await FuzzHarness.start(nursery, logs)

        @settings(max_examples=1000, **_SETTINGS)
        @given(case=st.one_of(mutated_streams(), bytes_before_connect()))
        def fuzz(case: Case) -> None:
            check_answer(case, harness.example(case))

        await harness.run_examples(fuzz)
    _report(harness, "mutated_streams", record_property)


async def test_malformed_input_closes_the_connection(
    nursery: trio.Nursery, record_property: Record
) -> None:
    """Malformed packets close the connection with nothing answered to them [MQTT-4.8.0-1]:
    bytes before CONNECT [MQTT-3.1.0-1], huge Remaining Lengths, ill-formed UTF-8
    [MQTT-1.5.3-1] [MQTT-1.5.3-2] (in CONNECT: no CONNACK [MQTT-3.1.4-1]), packet types a
    client may not send, a second CONNECT [MQTT-3.1.0-2], bad fixed-header flags
    [MQTT-2.2.2-2], PUBLISH QoS 3 [MQTT-3.3.1-4]; an unsupported protocol level gets CONNACK
    0x01 first [MQTT-3.1.2-2]."""
    with capture_logs() as logs:
        harness = await FuzzHarness.start(nursery, logs)

        @settings(max_examples=1000, **_SETTINGS)
        @given(
            case=st.one_of(
                bytes_before_connect(),
                huge_remaining_lengths(),
                invalid_utf8(),
                forbidden_packets(),
            )
        )
        def fuzz(case: Case) -> None:
            check_answer(case, harness.example(case))

        await harness.run_examples(fuzz)
    _report(harness, "malformed_input", record_property)


@pytest.mark.parametrize("max_levels", [128, 40_000])
async def test_thousands_of_topic_levels(
    nursery: trio.Nursery, record_property: Record, max_levels: int
) -> None:
    """Topics and filters with up to 60,000 levels: beyond max_topic_levels a PUBLISH closes
    the connection and a SUBSCRIBE gets 0x80 [MQTT-3.9.3-2]; within it both succeed."""
    with capture_logs() as logs:
        harness = await FuzzHarness.start(nursery, logs, max_topic_levels=max_levels)

        @settings(max_examples=150, **_SETTINGS)
        @given(case=deep_topics(max_levels))
        def fuzz(case: Case) -> None:
            check_answer(case, harness.example(case))

        await harness.run_examples(fuzz)
    _report(harness, f"deep_topics_{max_levels}", record_property)


async def test_deepest_topic_is_routed(nursery: trio.Nursery) -> None:
    """A 65,535-byte topic of 32,768 levels reaches a '+'-per-level filter and '#'."""
    with capture_logs() as logs:
        harness = await FuzzHarness.start(nursery, logs, max_topic_levels=40_000)
        port = harness.server.port()
        topic = "/".join(["a"] * 32_768)
        plus_filter = "/".join(["+"] * 32_768)
        assert len(topic) == len(plus_filter) == 65_535
        sub = await connect_client(port, "deep-sub")
        await sub.send(wire.subscribe(1, [(plus_filter, 1), ("#", 0)]))
        await sub.expect(wire.suback(1, [1, 0]))
        pub = await connect_client(port, "deep-pub")
        await pub.send(wire.publish(topic, b"deep", qos=1, pid=5))
        await pub.expect(wire.puback(5))
        # One delivery at the maximum granted QoS of the overlapping filters [MQTT-3.3.5-1].
        delivered = await sub.read_packet()
        pid = int.from_bytes(delivered[-6:-4], "big")
        assert delivered == wire.publish(topic, b"deep", qos=1, pid=pid)
        await sync(sub)
        await harness.check_healthy()
        harness.check_broker()


async def test_64k_subscriptions_from_one_client(nursery: trio.Nursery) -> None:
    """65,536 filters in one SUBSCRIBE and 65,536 one-filter SUBSCRIBEs are all granted up to
    max_subscriptions_per_client (then 0x80), route, and leave no trie nodes behind."""
    count = 65_536
    with capture_logs() as logs:
        harness = await FuzzHarness.start(
            nursery, logs, max_subscriptions_per_client=count, max_packet_size=1 << 21
        )
        port = harness.server.port()
        tree = harness.server.broker.tree
        nodes_before = tree._node_count()

        one = await connect_client(port, "one-subscribe")
        filters = [f"one/{i}" for i in range(count)]
        await one.send(wire.subscribe(1, [(f, 0) for f in filters]))
        await one.expect(wire.suback(1, [0] * count))
        await one.send(wire.subscribe(2, [("one/65535", 1), ("one/extra", 0)]))
        await one.expect(wire.suback(2, [1, 0x80]))  # a replacement is fine, a new one is not

        many = await connect_client(port, "many-subscribes")
        expected = b"".join(wire.suback(i % 65535 + 1, [i % 3]) for i in range(count))
        received = bytearray()

        async def read_subacks() -> None:
            while len(received) < len(expected):
                received.extend(await many.read_packet())

        async with trio.open_nursery() as readers:
            readers.start_soon(read_subacks)
            await many.send(
                b"".join(
                    wire.subscribe(i % 65535 + 1, [(f"many/{i}", i % 3)]) for i in range(count)
                )
            )
        assert bytes(received) == expected

        pub = await connect_client(port, "publisher")
        await pub.send(wire.publish("one/40000", b"1") + wire.publish("many/65535", b"2"))
        await one.expect(wire.publish("one/40000", b"1"))
        await many.expect(wire.publish("many/65535", b"2"))
        await harness.check_healthy()
        harness.check_broker()

        for client in (one, many):
            await client.send(wire.disconnect())
            await client.expect_closed()
        assert tree._node_count() == nodes_before
        assert len(tree) == 1  # only the healthy client's subscription is left
        harness.check_broker()


async def test_oversized_packet_body_closes(nursery: trio.Nursery) -> None:
    """A PUBLISH bigger than max_packet_size is refused at its fixed header: the connection
    closes while the client is still sending its 3 MiB body."""
    with capture_logs() as logs:
        harness = await FuzzHarness.start(nursery, logs)
        case = Case(
            "oversized",
            wire.connect("big") + wire.publish("big", bytes(3 << 20)),
            closes=True,
            expected=wire.connack(0, 0),
        )
        check_answer(case, await harness.attack(case))
        await harness.check_healthy()
        harness.check_broker()
        errors = [e for e in logs if e.get("event") == "protocol_error"]
        assert [e["reason"] for e in errors] == ["packet_too_large"]
