"""The SQLite store on its own: MQTT 5 state (schema version 3) written and read back, expired
messages left out at start-up, and databases of version 2 upgraded in place."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio

from mqttd.codec.packets import NO_PROPERTIES, Properties
from mqttd.errors import StartupError
from mqttd.message import Message
from mqttd.store import _MIGRATIONS, SCHEMA_VERSION, Store, StoredState

NOW = 1_700_000_000.0
PROPERTIES = Properties(
    payload_format_indicator=1,
    content_type="text/plain",
    response_topic="reply/here",
    correlation_data=b"\x00id",
    user_properties=(("b", "2"), ("a", "1"), ("b", "3")),
)


async def commit(store: Store) -> None:
    """Commit everything recorded, then stop the writer (the store is closed after)."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(store.writer)
            await store.durable(store.mark())
            store.close()


def load(db: Path) -> StoredState:
    """Open the store, read it at ``NOW``, close it."""
    store = Store.open(db, "fsync")
    try:
        return store.load(now=NOW)
    finally:
        store._db.close()


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as check:
        return check.execute(sql).fetchall()


async def test_mqtt5_state_survives_a_reopen(tmp_path: Path) -> None:
    """A session's expiry interval and connected flag, a message's properties (in order) and
    expiry time, a delivery's Subscription Identifiers and a retained message's properties
    are read back as written."""
    db = tmp_path / "mqttd.db"
    store = Store.open(db, "fsync")
    store.load()
    store.session_saved("v5", "alice", 300)
    store.session_saved("online", None, None, connected=True)
    message = Message("t/x", b"hello", 1, properties=PROPERTIES, expires_at=NOW + 60)
    plain = Message("t/y", b"3.1.1", 2)
    store.delivery_added("v5", 1, message, 1, False, None, (7, 9))
    store.delivery_added("v5", 2, plain, 2, True, 5)
    store.retained_set("kept", None, Message("kept", b"r", 1, True, properties=PROPERTIES))
    await commit(store)

    state = load(db)
    v5 = state.sessions["v5"]
    assert (v5.owner, v5.expiry_interval, v5.connected) == ("alice", 300, False)
    online = state.sessions["online"]
    assert (online.expiry_interval, online.connected) == (None, True)
    first, second = v5.deliveries
    assert first.message.properties == PROPERTIES
    assert first.message.expires_at == NOW + 60
    assert (first.seq, first.qos, first.packet_id, first.subscription_ids) == (1, 1, None, (7, 9))
    assert second.message.properties is NO_PROPERTIES
    assert second.message.expires_at is None
    assert (second.retain, second.packet_id, second.subscription_ids) == (True, 5, ())
    (retained,) = state.retained
    assert retained.properties == PROPERTIES
    assert retained.properties.user_properties == PROPERTIES.user_properties  # order kept


async def test_messages_expired_while_down_are_dropped(tmp_path: Path) -> None:
    """A queued or retained message whose Message Expiry Interval ended before start-up is not
    restored ([MQTT-3.3.2-5]), and its rows are gone after the first commit; the rest stay."""
    db = tmp_path / "mqttd.db"
    store = Store.open(db, "fsync")
    store.load()
    store.session_saved("s", None, 600)
    stale = Message("t", b"stale", 1, expires_at=NOW - 1)
    fresh = Message("t", b"fresh", 1, expires_at=NOW + 1)
    store.delivery_added("s", 1, stale, 1, False, None)
    store.delivery_added("s", 2, fresh, 1, False, None)
    store.retained_set("r/stale", None, Message("r/stale", b"x", 0, True, expires_at=NOW - 5))
    store.retained_set("r/kept", None, Message("r/kept", b"y", 0, True))
    await commit(store)

    store = Store.open(db, "fsync")
    state = store.load(now=NOW)
    assert [d.message.payload for d in state.sessions["s"].deliveries] == [b"fresh"]
    assert [m.topic for m in state.retained] == ["r/kept"]
    await commit(store)
    assert rows(db, "SELECT seq FROM deliveries") == [(2,)]
    assert rows(db, "SELECT topic FROM retained") == [("r/kept",)]
    assert sorted(rows(db, "SELECT payload FROM messages")) == [(b"fresh",), (b"y",)]


def make_v2_database(db: Path) -> None:
    """A database as mqttd wrote it with schema version 2 (before MQTT 5)."""
    with sqlite3.connect(db) as v2:
        v2.executescript(_MIGRATIONS[0] + _MIGRATIONS[1] + "PRAGMA user_version = 2;")
        v2.execute(
            "INSERT INTO sessions (client_id, last_seen, owner, owned) VALUES (?, ?, ?, 1)",
            ("old", NOW - 10, "bob"),
        )
        v2.execute("INSERT INTO subscriptions VALUES ('old', 'q/#', 1)")
        v2.execute("INSERT INTO messages VALUES (1, 'q/1', x'6f6e65', 1, 0)")
        v2.execute("INSERT INTO messages VALUES (2, 'kept', x'72', 0, 1)")
        v2.execute(
            "INSERT INTO deliveries (client_id, seq, message_id, qos, retain, packet_id)"
            " VALUES ('old', 3, 1, 1, 0, 4)"
        )
        v2.execute("INSERT INTO retained VALUES ('kept', 2)")


async def test_version_2_database_is_upgraded(tmp_path: Path) -> None:
    """A version 2 database opens as version 3 with everything it held: its sessions never
    expire, its messages have no properties and no expiry; MQTT 5 state is then kept."""
    db = tmp_path / "mqttd.db"
    make_v2_database(db)
    store = Store.open(db, "fsync")
    assert rows(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)] == [(3,)]
    state = store.load(now=NOW)
    old = state.sessions["old"]
    assert (old.owner, old.owned, old.expiry_interval, old.connected) == ("bob", True, None, False)
    assert old.subscriptions == {"q/#": 1}
    (delivery,) = old.deliveries
    assert (delivery.seq, delivery.packet_id, delivery.subscription_ids) == (3, 4, ())
    assert delivery.message.payload == b"one"
    assert delivery.message.properties is NO_PROPERTIES
    assert delivery.message.expires_at is None
    assert [(m.topic, m.payload) for m in state.retained] == [("kept", b"r")]
    # New rows take MQTT 5 state; message ids go on after the old ones.
    store.session_saved("old", "bob", 60)
    message = Message("q/2", b"two", 1, properties=PROPERTIES, expires_at=NOW + 30)
    store.delivery_added("old", 4, message, 1, False, None, (2,))
    assert message.store_id == 3
    await commit(store)
    state = load(db)
    old = state.sessions["old"]
    assert old.expiry_interval == 60
    assert [(d.message.payload, d.subscription_ids) for d in old.deliveries] == [
        (b"one", ()),
        (b"two", (2,)),
    ]
    assert old.deliveries[1].message.properties == PROPERTIES


async def test_malformed_stored_properties_stop_start_up(tmp_path: Path) -> None:
    """A property block mqttd cannot read (the file was altered) is a start-up error."""
    db = tmp_path / "mqttd.db"
    store = Store.open(db, "fsync")
    store.load()
    store.retained_set("r", None, Message("r", b"x", 0, True, properties=PROPERTIES))
    await commit(store)
    with sqlite3.connect(db) as alter:
        alter.execute("UPDATE messages SET properties = x'05ff'")
    store = Store.open(db, "fsync")
    try:
        with pytest.raises(StartupError, match="malformed MQTT 5 properties"):
            store.load()
    finally:
        store._db.close()
