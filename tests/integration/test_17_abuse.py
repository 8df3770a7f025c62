"""What a hostile client with a password and a read-only ACL tried, and what it gets now
(issue 16): Wills held to the publish rules, sessions that belong to their user, a log that
one connection cannot flood, memory that is counted, bounded caches and retained messages,
and a small first packet."""

from __future__ import annotations

import contextlib
import dataclasses
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

import mqttd.logging as mqttd_logging
from mqttd.auth import hash_password
from mqttd.config import AuthConfig, Config, LimitsConfig, ListenerConfig, StoreConfig
from mqttd.server import Server, serve
from tests.helpers import wire
from tests.helpers.client import OPEN_CLIENTS, WireClient, connect_client, subscribe, sync
from tests.helpers.memory import serve_stream, server_state

ACL = """\
topic read bob/#

user alice
topic readwrite home/alice/#
topic read news/#

user bob
topic read home/alice/#
topic deny home/alice/secret
topic read news/#
topic readwrite bob/#
"""


def _auth(tmp_path: Path, acl: str = ACL, **extra: Any) -> AuthConfig:
    passwords = tmp_path / "passwd"
    passwords.write_text(
        f"alice:{hash_password('wonderland')}\nbob:{hash_password('builder')}\n"
    )
    acl_file = tmp_path / "acl"
    acl_file.write_text(acl)
    return AuthConfig(
        allow_anonymous=True, password_file=passwords, acl_file=acl_file, **extra
    )


ALICE: dict[str, Any] = {"username": "alice", "password": b"wonderland"}
BOB: dict[str, Any] = {"username": "bob", "password": b"builder"}


# -- 1. A Will gets exactly the checks a PUBLISH gets ------------------------------------------


@pytest.mark.parametrize(
    "topic",
    ["home/alice/cmd", "$SYS/broker/pwned", "$share/x"],
    ids=["acl", "sys", "dollar"],
)
async def test_will_on_a_topic_the_user_may_not_write_is_refused(
    start_server, tmp_path: Path, topic: str
) -> None:  # type: ignore[no-untyped-def]
    """A Will on a topic the ACL does not let the user write, or on a $ topic, is refused at
    CONNECT with 0x05 (as Mosquitto does), so nothing is ever published or retained."""
    server = await start_server(auth=_auth(tmp_path))
    client = await WireClient.open(server.port())
    await client.send(wire.connect("bob-dev", will=(topic, b"pwned", 1, True), **BOB))
    await client.expect(wire.connack(0, 5))
    await client.expect_closed()
    assert server.broker.retained.get(topic) is None


async def test_will_deeper_than_max_topic_levels_closes(start_server) -> None:  # type: ignore[no-untyped-def]
    """A Will topic deeper than max_topic_levels closes the connection without CONNACK, as a
    PUBLISH that deep would."""
    server = await start_server(max_topic_levels=8)
    client = await WireClient.open(server.port())
    await client.send(wire.connect("deep", will=("a/" * 20 + "b", b"x")))
    await client.expect_closed()


async def test_will_allowed_at_connect_but_revoked_by_reload_is_not_published(
    start_server, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The Will is checked again when it is published: an ACL reloaded in between wins."""
    auth = _auth(tmp_path)
    server = await start_server(auth=auth)
    watcher = await connect_client(server.port(), "watcher")  # anonymous: may read bob/#
    await subscribe(watcher, 1, ("bob/#", 0))
    bob = await connect_client(server.port(), "bob-dev", will=("bob/status", b"gone"), **BOB)
    assert auth.acl_file is not None
    auth.acl_file.write_text(ACL.replace("topic readwrite bob/#", "topic read bob/#"))
    await server.reload()
    await bob.aclose()  # no DISCONNECT: the Will is due
    # taking the client id over waits until the old connection has finished (Will included)
    await connect_client(server.port(), "bob-dev", **BOB)
    await sync(watcher)  # the PINGRESP comes first: no Will was published


async def test_will_within_the_rules_is_still_published(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A Will the user may write is accepted and published as before."""
    server = await start_server(auth=_auth(tmp_path))
    watcher = await connect_client(server.port(), "watcher")
    await subscribe(watcher, 1, ("bob/#", 0))
    bob = await connect_client(server.port(), "bob-dev", will=("bob/status", b"gone"), **BOB)
    await bob.aclose()
    await watcher.expect(wire.publish("bob/status", b"gone"))


# -- 2. A persistent session belongs to the user that made it ----------------------------------


async def test_another_user_taking_a_client_id_starts_a_clean_session(
    start_server, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Bob connecting with Alice's persistent client id gets Session Present 0 and none of
    Alice's queued messages or subscriptions; Alice's session is discarded and logged."""
    server = await start_server(auth=_auth(tmp_path))
    port = server.port()
    alice = await connect_client(port, "phone", clean=False, **ALICE)
    await subscribe(alice, 1, ("home/alice/#", 1))
    await alice.send(wire.disconnect())
    await alice.expect_closed()
    pub = await connect_client(port, "pub", **ALICE)
    await pub.send(wire.publish("home/alice/door", b"code 1234", qos=1, pid=1))
    await pub.expect(wire.puback(1))
    with capture_logs() as logs:
        bob = await connect_client(port, "phone", clean=False, session_present=False, **BOB)
        await sync(bob)  # nothing arrives before the PINGRESP
    assert any(entry["event"] == "session_owner_changed" for entry in logs)
    await pub.send(wire.publish("home/alice/door", b"code 5678", qos=1, pid=2))
    await pub.expect(wire.puback(2))
    await sync(bob)  # and Alice's subscription did not come with the client id


async def test_the_same_user_resumes_its_session(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The owner reconnecting gets its session back, with what was queued."""
    server = await start_server(auth=_auth(tmp_path))
    port = server.port()
    alice = await connect_client(port, "phone", clean=False, **ALICE)
    await subscribe(alice, 1, ("home/alice/#", 1))
    await alice.send(wire.disconnect())
    await alice.expect_closed()
    pub = await connect_client(port, "pub", **ALICE)
    await pub.send(wire.publish("home/alice/door", b"open", qos=1, pid=1))
    await pub.expect(wire.puback(1))
    alice = await connect_client(port, "phone", clean=False, session_present=True, **ALICE)
    await alice.expect(wire.publish("home/alice/door", b"open", qos=1, pid=1))


async def test_session_ownership_check_can_be_turned_off(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """session_owner_check = false is Mosquitto's behaviour: another user resumes the session,
    and only the queued messages it may read are delivered."""
    server = await start_server(auth=_auth(tmp_path, session_owner_check=False))
    port = server.port()
    alice = await connect_client(port, "phone", clean=False, **ALICE)
    await subscribe(alice, 1, ("home/alice/#", 1))
    await alice.send(wire.disconnect())
    await alice.expect_closed()
    pub = await connect_client(port, "pub", **ALICE)
    await pub.send(wire.publish("home/alice/secret", b"pin", qos=1, pid=1))
    await pub.expect(wire.puback(1))
    await pub.send(wire.publish("home/alice/door", b"open", qos=1, pid=2))
    await pub.expect(wire.puback(2))
    bob = await connect_client(port, "phone", clean=False, session_present=True, **BOB)
    # bob may read home/alice/# except home/alice/secret
    await bob.expect(wire.publish("home/alice/door", b"open", qos=1, pid=1))
    await sync(bob)


async def test_queued_messages_are_checked_against_the_reader_when_sent(
    start_server, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """After an ACL reload revokes read access, an offline session receives none of what was
    queued before or after the reload: every message is checked when it is sent."""
    auth = _auth(tmp_path)
    server = await start_server(auth=auth)
    port = server.port()
    alice = await connect_client(port, "phone", clean=False, **ALICE)
    await subscribe(alice, 1, ("news/#", 1))
    await alice.send(wire.disconnect())
    await alice.expect_closed()
    # news is published by a third user who may write it
    writer_acl = ACL + "\nuser carol\ntopic write news/#\n"
    assert auth.acl_file is not None
    assert auth.password_file is not None
    auth.password_file.write_text(
        auth.password_file.read_text() + f"carol:{hash_password('c')}\n"
    )
    auth.acl_file.write_text(writer_acl)
    await server.reload()
    carol = await connect_client(port, "carol", username="carol", password=b"c")
    await carol.send(wire.publish("news/1", b"before", qos=1, pid=1))
    await carol.expect(wire.puback(1))
    auth.acl_file.write_text(writer_acl.replace("topic read news/#", "", 1))  # alice loses it
    await server.reload()
    await carol.send(wire.publish("news/2", b"after", qos=1, pid=2))
    await carol.expect(wire.puback(2))
    alice = await connect_client(port, "phone", clean=False, session_present=True, **ALICE)
    await sync(alice)  # neither news/1 nor news/2 arrives


async def test_removed_user_is_disconnected_by_reload(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A user removed from the password file is disconnected by the reload (SIGHUP), as
    Mosquitto does; other users stay connected."""
    auth = _auth(tmp_path)
    server = await start_server(auth=auth)
    alice = await connect_client(server.port(), "a", **ALICE)
    bob = await connect_client(server.port(), "b", **BOB)
    assert auth.password_file is not None
    auth.password_file.write_text(f"alice:{hash_password('wonderland')}\n")
    with capture_logs() as logs:
        await server.reload()
        await bob.expect_closed()
    await sync(alice)
    assert any(
        entry["event"] == "client_disconnected" and entry["reason"] == "user_removed"
        for entry in logs
    )


async def test_session_owner_survives_a_restart(tmp_path: Path) -> None:
    """The owner of a persistent session is stored with it: after a restart another user
    still cannot resume it."""

    @asynccontextmanager
    async def running() -> AsyncIterator[Server]:
        config = Config(
            listeners=(ListenerConfig(port=0),),
            auth=_auth(tmp_path),
            store=StoreConfig(durability="fsync", path=tmp_path / "mqttd.db"),
        )
        async with trio.open_nursery() as nursery:
            with trio.fail_after(10):
                server: Server = await nursery.start(serve, config)
            try:
                yield server
            finally:
                while OPEN_CLIENTS:
                    await OPEN_CLIENTS.pop().aclose()
                server.shutdown()

    async with running() as server:
        alice = await connect_client(server.port(), "phone", clean=False, **ALICE)
        await subscribe(alice, 1, ("home/alice/#", 1))
        await alice.send(wire.disconnect())
        await alice.expect_closed()
    async with running() as server:
        await connect_client(server.port(), "phone", clean=False, session_present=False, **BOB)


# -- 3. One connection cannot flood the log ----------------------------------------------------


async def test_repeated_refused_subscribe_logs_once_with_a_count(
    start_server, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A client repeating a refused SUBSCRIBE with a 60 KB filter gets one warning line, the
    rest are counted in its disconnect line, and no line carries more than a bounded slice of
    the filter."""
    server = await start_server(auth=_auth(tmp_path))
    huge = "home/" + "x" * 60_000
    processors = [mqttd_logging.merge_connection, mqttd_logging.clip_client_text]
    with capture_logs(processors=processors) as logs:
        bob = await connect_client(server.port(), "bob", **BOB)
        for pid in range(1, 201):
            await bob.send(wire.subscribe(pid, [(huge, 0)]))
            await bob.expect(wire.suback(pid, [0x80]))
        await bob.send(wire.disconnect())
        await bob.expect_closed()
        await sync(await connect_client(server.port(), "other"))
    refused = [entry for entry in logs if entry["event"] == "subscribe_refused"]
    assert len(refused) == 1
    (summary,) = [
        entry
        for entry in logs
        if entry["event"] == "client_disconnected" and entry.get("client_id") == "bob"
    ]
    assert summary["suppressed"] == {"subscribe_refused": 199}
    total = sum(len(repr(entry)) for entry in logs)
    assert total < 20_000, total


async def test_client_text_is_clipped_in_every_line(start_server) -> None:  # type: ignore[no-untyped-def]
    """A 60 KB client id and topic appear in log lines cut to LOG_TEXT_LIMIT characters, with
    the full length."""
    server = await start_server(max_topic_levels=2)
    client_id = "c" * 60_000
    with capture_logs(processors=[mqttd_logging.clip_client_text]) as logs:
        client = await connect_client(server.port(), client_id)
        await client.send(wire.publish("a/b/c/" + "t" * 60_000, b"x"))  # too deep: closed
        await client.expect_closed()
        await sync(await connect_client(server.port(), "other"))
    assert logs
    for entry in logs:
        for key, value in entry.items():
            assert len(str(value)) <= mqttd_logging.LOG_TEXT_LIMIT + 40, (key, len(str(value)))
    assert any("60000" in str(entry.get("client_id", "")) for entry in logs)


# -- 4. Memory is counted, not estimated --------------------------------------------------------


async def test_flood_of_small_replies_is_held_to_the_outbox_cap(
    nursery: trio.Nursery,
) -> None:
    """A client that sends QoS 1 PUBLISH and PINGREQ packets and never reads costs the broker
    memory within a small factor of max_outbox_bytes, however small each reply is."""
    cap = 64 * 1024
    state = server_state(max_outbox_bytes=cap)
    client_stream, server_stream = trio.testing.lockstep_stream_pair()
    client = WireClient(client_stream)
    chunk = b"".join(
        wire.publish("t", b"", qos=1, pid=pid) + wire.pingreq() for pid in range(1, 501)
    )
    tracemalloc.start()
    try:
        serve_stream(nursery, state, server_stream)
        await client.send(wire.connect("flooder"))
        await client.expect(wire.connack(0, 0))
        await trio.testing.wait_all_tasks_blocked()
        before = tracemalloc.get_traced_memory()[0]

        async def flood() -> None:
            while True:  # blocks for good once the broker stops reading
                await client_stream.send_all(chunk)

        nursery.start_soon(flood)
        await trio.testing.wait_all_tasks_blocked()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # what the broker holds: the outbox (up to the cap), one read buffer and the chunk being
    # sent by the test; a list entry per 4-byte PUBACK would be about 10x the cap
    assert grown < 4 * cap + 2 * len(chunk) + 128 * 1024, grown


# -- 5. The topic-match cache is bounded in bytes ----------------------------------------------


async def test_match_cache_is_bounded_in_bytes() -> None:
    """5,000 publishes to distinct 65 KB topics leave at most MATCH_CACHE_BYTES of topics in
    the cache."""
    from mqttd.topics import MATCH_CACHE_BYTES, TopicTree

    tree = TopicTree()
    tree.subscribe("a/#", "c", 0)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(5000):
            tree.matches(f"b/{i:05d}/" + "x" * 65_000)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held <= 2 * MATCH_CACHE_BYTES, held


# -- 6. Retained messages: limits and paced delivery -------------------------------------------


async def test_retained_count_limit(start_server) -> None:  # type: ignore[no-untyped-def]
    """Beyond max_retained_messages a new retained topic is not retained (the message is still
    delivered to current subscribers); replacing or deleting an existing one still works."""
    server = await start_server(max_retained_messages=3)
    port = server.port()
    live = await connect_client(port, "live")
    await subscribe(live, 1, ("r/#", 0))
    pub = await connect_client(port, "pub")
    with capture_logs() as logs:
        for i in range(5):
            await pub.send(wire.publish(f"r/{i}", b"v%d" % i, retain=True))
            await live.expect(wire.publish(f"r/{i}", b"v%d" % i))
    assert server.broker.retained_count == 3
    assert sum(entry["event"] == "retained_refused" for entry in logs) == 1
    await pub.send(wire.publish("r/0", b"new", retain=True))  # replacing: allowed
    await pub.send(wire.publish("r/1", b"", retain=True))  # deleting: frees a place
    await pub.send(wire.publish("r/9", b"nine", retain=True))
    await sync(pub)
    late = await connect_client(port, "late")
    await late.send(wire.subscribe(1, [("r/#", 0)]))
    await late.expect(wire.suback(1, [0]))
    got = {await late.read_packet() for _ in range(3)}
    assert got == {
        wire.publish("r/0", b"new", retain=True),
        wire.publish("r/2", b"v2", retain=True),
        wire.publish("r/9", b"nine", retain=True),
    }
    assert server.broker.stats.retained_refused == 2


async def test_retained_bytes_limit(start_server) -> None:  # type: ignore[no-untyped-def]
    """max_retained_bytes bounds what the retained messages cost, topic levels included."""
    server = await start_server(max_retained_bytes=64 * 1024)
    pub = await connect_client(server.port(), "pub")
    for i in range(100):
        await pub.send(wire.publish(f"big/{i}", b"x" * 4096, retain=True))
    deep = "/".join(["d"] * 100)
    for i in range(100):
        await pub.send(wire.publish(f"{deep}/{i}", b"y", retain=True))
    await sync(pub)
    assert server.broker.retained_bytes <= 64 * 1024
    assert 0 < server.broker.retained_count < 100


@pytest.mark.parametrize("qos", [0, 1])
async def test_every_retained_message_reaches_a_slow_subscriber(
    start_server, qos: int
) -> None:  # type: ignore[no-untyped-def]
    """A subscription matching far more retained messages than max_outbox_bytes holds receives
    all of them, paced by what the subscriber reads (its window at QoS 1), none dropped."""
    server = await start_server(max_outbox_bytes=16 * 1024, max_inflight_messages=10)
    count = 3000
    pub = await connect_client(server.port(), "pub")
    batch = b"".join(wire.publish(f"r/{i}", b"p" * 40, qos=0, retain=True) for i in range(count))
    await pub.send(batch)
    await sync(pub)
    if qos:
        await pub.send(wire.publish("r/q1", b"q", qos=1, pid=1, retain=True))
        await pub.expect(wire.puback(1))
    sub = await connect_client(server.port(), "sub")
    await sub.send(wire.subscribe(1, [("r/#", qos)]))
    await sub.expect(wire.suback(1, [qos]))
    seen = set()
    for _ in range(count + qos):
        packet = await sub.read_packet()
        if packet[0] & 0x06:  # QoS 1: acknowledge
            pid = int.from_bytes(packet[-3:-1], "big")
            await sub.send(wire.puback(pid))
        seen.add(packet)
    assert len(seen) == count + qos
    assert server.broker.stats.messages_dropped == 0


async def test_subscribe_unsubscribe_loop_over_many_retained_stays_bounded(
    start_server,
) -> None:  # type: ignore[no-untyped-def]
    """A client that loops SUBSCRIBE/UNSUBSCRIBE '#' over many retained messages and never
    reads them holds at most one pending retained delivery, and other clients carry on."""
    server = await start_server(max_outbox_bytes=16 * 1024)
    pub = await connect_client(server.port(), "pub")
    await pub.send(
        b"".join(wire.publish(f"r/{i}", b"p" * 40, retain=True) for i in range(5000))
    )
    await sync(pub)
    looper = await connect_client(server.port(), "looper")
    for pid in range(1, 60, 2):
        await looper.send(wire.subscribe(pid, [("#", 0)]) + wire.unsubscribe(pid + 1, ["#"]))
    session = server.broker.sessions["looper"]
    await sync(pub)
    assert session.retained_pending() <= 1
    await sync(pub)


# -- 7. The first packet is small ---------------------------------------------------------------


async def test_oversized_first_packet_closes_at_its_header(start_server) -> None:  # type: ignore[no-untyped-def]
    """Before CONNECT nothing is known of the client: a first packet declaring more than
    max_connect_packet_size closes the connection at its fixed header."""
    server = await start_server(connect_timeout_s=600.0, max_connect_packet_size=64 * 1024)
    client = await WireClient.open(server.port())
    await client.send(b"\x10" + wire.varint(10 * 1024 * 1024) + b"\x00\x04MQTT")
    await client.expect_closed(timeout=5)
    # a CONNECT within the limit is fine
    await connect_client(server.port(), "ok", will=("w", b"x" * 60_000))


async def test_connect_packet_size_default_is_small() -> None:
    """The default first-packet limit is 64 KiB, whatever max_packet_size allows later."""
    assert LimitsConfig().max_connect_packet_size == 64 * 1024


# -- 9. A failed commit names its cause ---------------------------------------------------------


async def test_full_disk_is_logged_as_such(tmp_path: Path) -> None:
    """When the database cannot grow (SQLITE_FULL), the log line names the disk-full error,
    not the failed ROLLBACK that follows it."""
    config = Config(
        listeners=(ListenerConfig(port=0),),
        store=StoreConfig(durability="fsync", path=tmp_path / "mqttd.db"),
    )
    async with trio.open_nursery() as nursery:
        with trio.fail_after(10):
            server: Server = await nursery.start(serve, config)
        store = server.broker.store
        assert store is not None
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count = {pages + 2}")
        pub = await connect_client(server.port(), "pub")
        with capture_logs() as logs:
            with contextlib.suppress(trio.BrokenResourceError):
                for pid in range(1, 30):
                    data = wire.publish(f"r/{pid}", b"x" * 8000, qos=1, retain=True, pid=pid)
                    await pub.send(data)
            acknowledged = await _read_until_closed(pub)
        assert all(packet[0] == 0x40 for packet in acknowledged)  # PUBACKs, then the close
        failures = [entry for entry in logs if entry["event"] == "store_commit_failed"]
        assert failures
        assert all("full" in entry["error"] for entry in failures), failures
        while OPEN_CLIENTS:
            await OPEN_CLIENTS.pop().aclose()
        server.shutdown()


async def _read_until_closed(client: WireClient) -> list[bytes]:
    packets = []
    while True:
        try:
            packets.append(await client.read_packet())
        except EOFError:
            return packets


async def test_limits_default_are_finite() -> None:
    """Every new limit has a finite default."""
    limits = LimitsConfig()
    assert 0 < limits.max_retained_messages < 10**7
    assert 0 < limits.max_retained_bytes < 2**40
    assert dataclasses.replace(limits, max_retained_messages=1).max_retained_messages == 1
