"""The SQLite store: every kind of persistent state survives a restart; faults are loud."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from structlog.testing import capture_logs

from conformance import wire as wire5
from mqttd.config import Config, ListenerConfig, StoreConfig
from mqttd.errors import StartupError
from mqttd.server import Server, serve
from mqttd.store import SCHEMA_VERSION, Store
from tests.helpers import wire
from tests.helpers.client import OPEN_CLIENTS, connect_client, subscribe, sync
from tests.integration.test_23_mqtt5 import (
    CONTENT_TYPE,
    MESSAGE_EXPIRY,
    SESSION_EXPIRY,
    SUBSCRIPTION_ID,
    USER_PROPERTY,
    Client5,
)


@asynccontextmanager
async def running(db: Path, durability: str = "fsync", **store: Any) -> AsyncIterator[Server]:
    """A broker on the store ``db``; shut down gracefully on exit, clients closed first."""
    config = Config(
        listeners=(ListenerConfig(port=0),),
        store=StoreConfig(durability=durability, path=db, **store),  # type: ignore[arg-type]
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


@pytest.mark.parametrize("durability", ["fsync", "os"])
async def test_everything_survives_restart(tmp_path: Path, durability: str) -> None:
    """Persistent sessions, subscriptions, queued and in-flight QoS 1/2 messages (re-sent with
    DUP=1), released QoS 2, incoming QoS 2 ids and retained messages survive a restart
    [MQTT-3.1.2-4] [MQTT-3.1.2-5] [MQTT-4.4.0-1]."""
    db = tmp_path / "mqttd.db"
    async with running(db, durability) as server:
        port = server.port()
        offline = await connect_client(port, "offline", clean=False)
        await subscribe(offline, 1, ("q/#", 2), ("b", 1))
        await offline.send(wire.disconnect())
        await offline.expect_closed()
        inflight = await connect_client(port, "inflight", clean=False)
        await subscribe(inflight, 1, ("f/#", 2))
        pub = await connect_client(port, "pub")
        await pub.send(wire.publish("q/0", b"zero"))
        await pub.send(wire.publish("q/1", b"one", qos=1, pid=1))
        await pub.expect(wire.puback(1))
        await pub.send(wire.publish("q/2", b"two", qos=2, pid=2))
        await pub.expect(wire.pubrec(2))
        await pub.send(wire.publish("kept", b"retained", qos=1, retain=True, pid=3))
        await pub.expect(wire.puback(3))
        await pub.send(wire.publish("f/1", b"unacked", qos=1, pid=4))
        await pub.expect(wire.puback(4))
        await pub.send(wire.publish("f/2", b"released", qos=2, pid=5))
        await pub.expect(wire.pubrec(5))
        await inflight.expect(wire.publish("f/1", b"unacked", qos=1, pid=1))
        await inflight.expect(wire.publish("f/2", b"released", qos=2, pid=2))
        await inflight.send(wire.pubrec(2))
        await inflight.expect(wire.pubrel(2))
        twice = await connect_client(port, "twice", clean=False)
        await twice.send(wire.publish("q/once", b"exactly-once", qos=2, pid=77))
        await twice.expect(wire.pubrec(77))

    async with running(db, durability) as server:
        port = server.port()
        offline = await connect_client(port, "offline", clean=False, session_present=True)
        await offline.expect(wire.publish("q/1", b"one", qos=1, pid=1))
        await offline.expect(wire.publish("q/2", b"two", qos=2, pid=2))
        await offline.expect(wire.publish("q/once", b"exactly-once", qos=2, pid=3))
        await sync(offline)  # q/0 was QoS 0: not kept
        inflight = await connect_client(port, "inflight", clean=False, session_present=True)
        await inflight.expect(wire.publish("f/1", b"unacked", qos=1, dup=True, pid=1))
        await inflight.expect(wire.pubrel(2))
        # The publisher re-sends its unreleased QoS 2 message: it must not be routed again.
        twice = await connect_client(port, "twice", clean=False, session_present=True)
        await twice.send(wire.publish("q/once", b"exactly-once", qos=2, dup=True, pid=77))
        await twice.expect(wire.pubrec(77))
        await twice.send(wire.pubrel(77))
        await twice.expect(wire.pubcomp(77))
        await twice.send(wire.publish("b", b"marker", qos=1, pid=78))
        await twice.expect(wire.puback(78))
        await offline.expect(wire.publish("b", b"marker", qos=1, pid=4))
        fresh = await connect_client(port, "fresh")
        await subscribe(fresh, 1, ("kept", 1))
        await fresh.expect(wire.publish("kept", b"retained", qos=1, retain=True, pid=1))


async def test_acknowledged_state_is_removed_and_file_stays_small(tmp_path: Path) -> None:
    """Acked deliveries, deleted retained messages and clean-session takeovers leave no rows."""
    db = tmp_path / "mqttd.db"
    async with running(db) as server:
        port = server.port()
        sub = await connect_client(port, "s", clean=False)
        await subscribe(sub, 1, ("t", 1))
        for i in range(1, 51):
            await sub.send(wire.publish("t", b"x", qos=1, pid=i))
            await sub.expect(wire.puback(i))
            await sub.expect(wire.publish("t", b"x", qos=1, pid=i))
            await sub.send(wire.puback(i))
        await sub.send(wire.publish("r", b"x", retain=True) + wire.publish("r", b"", retain=True))
        await sync(sub)
        await sub.send(wire.disconnect())
        await sub.expect_closed()
        # A clean session discards the stored one.
        await connect_client(port, "s", clean=True)
    with sqlite3.connect(db) as check:
        counts = {
            table: check.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("sessions", "subscriptions", "deliveries", "messages", "retained")
        }
    assert counts == dict.fromkeys(counts, 0)


async def test_fanout_stores_message_once(tmp_path: Path) -> None:
    """A message queued for many persistent sessions is stored once and referenced."""
    db = tmp_path / "mqttd.db"
    async with running(db) as server:
        port = server.port()
        for i in range(20):
            client = await connect_client(port, f"p{i}", clean=False)
            await subscribe(client, 1, ("fan", 1))
            await client.send(wire.disconnect())
            await client.expect_closed()
        pub = await connect_client(port, "pub")
        await pub.send(wire.publish("fan", b"payload", qos=1, pid=1))
        await pub.expect(wire.puback(1))
    with sqlite3.connect(db) as check:
        assert check.execute("SELECT count(*) FROM messages").fetchone()[0] == 1
        assert check.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 20


async def test_expired_sessions_removed(tmp_path: Path) -> None:
    """persistent_client_expiration drops sessions offline for longer than the limit."""
    db = tmp_path / "mqttd.db"
    async with running(db, persistent_client_expiration="1h") as server:
        session, _present = server.broker.open_session("old", clean_session=False)
        server.broker.end_session(session)
        session.last_seen -= 7200
        server.broker.open_session("recent", clean_session=False)
        assert server.broker.expire_sessions(3600) == 1
        assert set(server.broker.sessions) == {"recent"}


async def test_corrupt_database_refuses_to_start(tmp_path: Path) -> None:
    """A file that is not a valid database stops start-up with the path and what to do."""
    db = tmp_path / "mqttd.db"
    db.write_bytes(b"this is not an SQLite database" * 100)
    with pytest.raises(StartupError, match=r"mqttd\.db.*cannot open the database.*backup"):
        Store.open(db, "fsync")


async def test_newer_schema_refuses_to_start(tmp_path: Path) -> None:
    """A database written by a newer mqttd is never opened (nor silently emptied)."""
    db = tmp_path / "mqttd.db"
    with sqlite3.connect(db) as newer:
        newer.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StartupError, match="newer than this mqttd supports"):
        Store.open(db, "fsync")


async def test_unreadable_path_refuses_to_start(tmp_path: Path) -> None:
    """A store path that cannot be created is a clear start-up error."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StartupError, match="store"):
        Store.open(blocker / "sub" / "mqttd.db", "fsync")


class FailingConnection:
    """Wraps the store's sqlite3 connection; while ``failing``, COMMIT fails like a full disk."""

    def __init__(self, inner: sqlite3.Connection) -> None:
        self.inner = inner
        self.failing = False

    def execute(self, sql: str, params: Any = ()) -> Any:
        if self.failing and sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self.inner.execute(sql, params)

    @property
    def in_transaction(self) -> bool:
        return self.inner.in_transaction

    def close(self) -> None:
        self.inner.close()


async def test_failed_commit_is_never_acknowledged(tmp_path: Path) -> None:
    """When a commit fails the publisher gets no PUBACK and is disconnected, the log says why,
    and other clients carry on; once the disk recovers, publishing works again."""
    db = tmp_path / "mqttd.db"
    async with running(db) as server:
        store = server.broker.store
        assert store is not None
        failing = FailingConnection(store._db)
        store._db = failing  # type: ignore[assignment]
        port = server.port()
        offline = await connect_client(port, "offline", clean=False)
        await subscribe(offline, 1, ("data", 1))
        await offline.send(wire.disconnect())
        await offline.expect_closed()
        healthy = await connect_client(port, "healthy")
        pub = await connect_client(port, "pub")
        failing.failing = True
        with capture_logs() as logs:
            await pub.send(wire.publish("data", b"lost?", qos=1, pid=1))
            await pub.expect_closed()
            await healthy.send(wire.pingreq())
            await healthy.expect(wire.pingresp())
        events = {entry["event"] for entry in logs}
        assert {"store_commit_failed", "not_acknowledged"} <= events
        failing.failing = False
        pub = await connect_client(port, "pub")
        await pub.send(wire.publish("data", b"kept", qos=1, pid=2))
        await pub.expect(wire.puback(2))


async def test_mqtt5_session_and_message_state_survive_restart(tmp_path: Path) -> None:
    """MQTT 5 with durability "fsync": a session keeps its Session Expiry Interval -- also one
    a DISCONNECT changed (3.14.2.2.2) -- and a queued message its properties, in order
    ([MQTT-3.3.2-17], [MQTT-3.3.2-18]), the Subscription Identifier it matched
    ([MQTT-3.3.4-3]) and the Message Expiry Interval left ([MQTT-3.3.2-6]); a message that
    expired while the broker was down is not delivered ([MQTT-3.3.2-5]), and a session whose
    interval ended meanwhile is gone at start-up."""
    db = tmp_path / "mqttd.db"
    expiry = [(SESSION_EXPIRY, 600)]
    user = [(USER_PROPERTY, ("b", "2")), (USER_PROPERTY, ("a", "1")), (USER_PROPERTY, ("b", "3"))]
    async with running(db) as server:
        sub, _ = await Client5.connect(server, "sub", clean=False, properties=expiry)
        await sub.subscribe(1, ("t/#", 1), properties=[(SUBSCRIPTION_ID, 5)])
        await sub.send(wire5.disconnect())
        await sub.closed()
        changed, _ = await Client5.connect(server, "changed", clean=False, properties=expiry)
        await changed.send(wire5.disconnect(properties=[(SESSION_EXPIRY, 30)]))
        await changed.closed()
        gone, _ = await Client5.connect(
            server, "gone", clean=False, properties=[(SESSION_EXPIRY, 60)]
        )
        await gone.send(wire5.disconnect())
        await gone.closed()
        pub, _ = await Client5.connect(server, "pub")
        kept = [(CONTENT_TYPE, "text/plain"), *user, (MESSAGE_EXPIRY, 300)]
        for payload, properties in ((b"stale", [(MESSAGE_EXPIRY, 60)]), (b"kept", kept)):
            await pub.send(
                wire5.publish("t/x", payload, 1, pid=1, version=5, properties=properties)
            )
            assert (await pub.read()).name == "PUBACK"
    # Two minutes pass while the broker is down: for the stale message and the "gone" session.
    with sqlite3.connect(db) as shift:
        shift.execute(
            "UPDATE messages SET expires_at = expires_at - 120 WHERE payload = ?", (b"stale",)
        )
        shift.execute("UPDATE sessions SET last_seen = last_seen - 120 WHERE client_id = 'gone'")

    async with running(db) as server:
        sessions = server.broker.sessions
        assert "gone" not in sessions
        assert server.broker.stats.sessions_expired == 1
        assert sessions["sub"].expiry_interval == 600
        assert sessions["changed"].expiry_interval == 30
        sub, connack = await Client5.connect(server, "sub", clean=False, properties=expiry)
        assert connack.session_present
        got = await sub.read()
        assert (got.topic, got.payload, got.qos) == (b"t/x", b"kept", 1)
        assert got.prop(CONTENT_TYPE) == "text/plain"
        assert got.user_properties == [("b", "2"), ("a", "1"), ("b", "3")]
        assert got.props_all(SUBSCRIPTION_ID) == [5]
        left = got.prop(MESSAGE_EXPIRY)
        assert isinstance(left, int)
        assert 0 < left <= 300
        await sub.send(wire5.puback(got.pid or 0))
        await sub.sync()  # the stale message never comes
        _gone, connack = await Client5.connect(server, "gone", clean=False, properties=expiry)
        assert not connack.session_present
    with sqlite3.connect(db) as check:
        assert check.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
