"""Durable broker state in SQLite (WAL), written by one thread with group commit.

Theory of operation: the broker's synchronous code records every change to persistent state
(sessions with CleanSession=0, their subscriptions, their queued and in-flight QoS 1/2 messages,
incoming QoS 2 packet ids awaiting PUBREL, and retained messages) by appending an operation to
``Store``; nothing blocks. One writer thread takes everything recorded so far, applies it in one
transaction and commits -- many changes per commit, from every connection at once. Each
recorded operation has a sequence number; ``await store.durable(store.mark())`` returns once
everything recorded before the mark is committed (and, with durability "fsync", synced).

Each connection's output passes an ``OutputGate``: every batch of output gets the mark of the
changes it depends on -- those its own input recorded, those made to its session -- and is
written only once they are committed, so no PUBACK, PUBREC, CONNACK or delivery ever leaves the
broker before the state that produced it is durable: an acknowledged message survives
``kill -9``. The gate also remembers which operations
the connection's own packets recorded; if a commit carrying any of them fails (disk full, I/O
error), ``wait`` raises ``StoreError`` and that connection is closed without its
acknowledgements while every other client carries on.

A message fanned out to many persistent sessions is stored once and referenced by each delivery
row; it is deleted when the last reference goes.

MQTT 5 state (schema version 3): a session's Session Expiry Interval, and whether a connection
was attached when it was last saved (its expiry then counts from the restart, the earliest
moment known to be after the connection ended); a message's properties as their wire block and
its expiry time; a delivery's Subscription Identifiers. ``load`` leaves out messages that
expired while the broker was down (their rows go with the first commit).
"""

from __future__ import annotations

import bisect
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog
import trio

from mqttd.codec.packets import NO_PROPERTIES, PacketType, Properties
from mqttd.codec.properties import encode_properties, read_properties
from mqttd.errors import MQTTError, ProtocolError, StartupError
from mqttd.message import Message

log = structlog.get_logger("mqttd.store")

#: Schema version kept in ``PRAGMA user_version``; ``_MIGRATIONS[n]`` upgrades n -> n + 1.
SCHEMA_VERSION: Final = 3

_SCHEMA_V1 = """
CREATE TABLE sessions (
    client_id TEXT PRIMARY KEY,
    last_seen REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE subscriptions (
    client_id TEXT NOT NULL,
    topic_filter TEXT NOT NULL,
    qos INTEGER NOT NULL,
    PRIMARY KEY (client_id, topic_filter)
) WITHOUT ROWID;
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL
);
CREATE TABLE deliveries (
    client_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    message_id INTEGER NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    packet_id INTEGER,
    released INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (client_id, seq)
) WITHOUT ROWID;
CREATE TABLE incoming (
    client_id TEXT NOT NULL,
    packet_id INTEGER NOT NULL,
    PRIMARY KEY (client_id, packet_id)
) WITHOUT ROWID;
CREATE TABLE retained (
    topic TEXT PRIMARY KEY,
    message_id INTEGER NOT NULL
) WITHOUT ROWID;
"""

#: Version 2: a persistent session belongs to the user name that created it (NULL owner =
#: anonymous); sessions from version 1 have ``owned = 0`` and are claimed by their next user.
_SCHEMA_V2 = """
ALTER TABLE sessions ADD COLUMN owner TEXT;
ALTER TABLE sessions ADD COLUMN owned INTEGER NOT NULL DEFAULT 0;
"""

#: Version 3, MQTT 5: a session's Session Expiry Interval (NULL = never, as for every session
#: stored before) and whether a connection was attached when it was saved; a message's
#: properties (their encoded property block, NULL = none) and expiry time (``time.time()``,
#: NULL = never); a delivery's Subscription Identifiers (decimal, comma-separated, NULL = none).
_SCHEMA_V3 = """
ALTER TABLE sessions ADD COLUMN expiry_interval INTEGER;
ALTER TABLE sessions ADD COLUMN connected INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN properties BLOB;
ALTER TABLE messages ADD COLUMN expires_at REAL;
ALTER TABLE deliveries ADD COLUMN subscription_ids TEXT;
"""

#: Upgrade scripts: index n holds the SQL taking a version-n database to version n + 1.
_MIGRATIONS: Final[dict[int, str]] = {0: _SCHEMA_V1, 1: _SCHEMA_V2, 2: _SCHEMA_V3}

_SQL: Final = {
    "session_put": (
        "INSERT OR REPLACE INTO sessions"
        " (client_id, last_seen, owner, owned, expiry_interval, connected)"
        " VALUES (?, ?, ?, 1, ?, ?)"
    ),
    "session_del": "DELETE FROM sessions WHERE client_id = ?",
    "subs_del_all": "DELETE FROM subscriptions WHERE client_id = ?",
    "deliveries_del_all": "DELETE FROM deliveries WHERE client_id = ?",
    "incoming_del_all": "DELETE FROM incoming WHERE client_id = ?",
    "sub_put": (
        "INSERT OR REPLACE INTO subscriptions (client_id, topic_filter, qos) VALUES (?, ?, ?)"
    ),
    "sub_del": "DELETE FROM subscriptions WHERE client_id = ? AND topic_filter = ?",
    "msg_put": (
        "INSERT OR REPLACE INTO messages (id, topic, payload, qos, retain, properties, expires_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)"
    ),
    "msg_del": "DELETE FROM messages WHERE id = ?",
    "delivery_put": (
        "INSERT OR REPLACE INTO deliveries"
        " (client_id, seq, message_id, qos, retain, packet_id, subscription_ids)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)"
    ),
    "delivery_sent": "UPDATE deliveries SET packet_id = ? WHERE client_id = ? AND seq = ?",
    "delivery_released": "UPDATE deliveries SET released = 1 WHERE client_id = ? AND seq = ?",
    "delivery_del": "DELETE FROM deliveries WHERE client_id = ? AND seq = ?",
    "incoming_put": "INSERT OR IGNORE INTO incoming (client_id, packet_id) VALUES (?, ?)",
    "incoming_del": "DELETE FROM incoming WHERE client_id = ? AND packet_id = ?",
    "retained_put": "INSERT OR REPLACE INTO retained (topic, message_id) VALUES (?, ?)",
    "retained_del": "DELETE FROM retained WHERE topic = ?",
}

#: Most operations one transaction applies; more wait for the next commit.
MAX_BATCH_OPS: Final = 50_000

#: Upper bounds, in seconds, of the buckets of the commit latency histogram
#: (``Store.commit_buckets``): what one transaction took, sync included.
COMMIT_BUCKETS_S: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class StoreError(MQTTError):
    """A commit failed: the state it carried is not durable and must not be acknowledged."""


@dataclass(slots=True)
class StoredDelivery:
    """A queued or in-flight message of a persistent session, as loaded at start-up."""

    seq: int
    message: Message
    qos: int
    retain: bool
    packet_id: int | None
    released: bool
    #: MQTT 5 Subscription Identifiers sent with it ([MQTT-3.3.4-3])
    subscription_ids: tuple[int, ...] = ()


@dataclass(slots=True)
class StoredSession:
    """A persistent session as loaded at start-up."""

    client_id: str
    last_seen: float
    owner: str | None = None
    owned: bool = True
    #: MQTT 5 Session Expiry Interval in seconds (None: never; MQTT 3.1.1 sessions)
    expiry_interval: int | None = None
    #: a connection was attached when the session was last saved (the broker stopped, or
    #: its node died, while the client was connected)
    connected: bool = False
    subscriptions: dict[str, int] = field(default_factory=dict)
    deliveries: list[StoredDelivery] = field(default_factory=list)
    incoming: set[int] = field(default_factory=set)


@dataclass(slots=True)
class StoredState:
    """Everything ``Store.load`` restores."""

    sessions: dict[str, StoredSession]
    retained: list[Message]


class Store:
    """The durable store. Create with ``Store.open``; run ``writer`` in the broker's nursery.

    Args:
        path: the SQLite database file.
        durability: "fsync" (commit and sync before acknowledging) or "os" (commit only:
            survives a crash of mqttd, not of the machine).
    """

    def __init__(self, connection: sqlite3.Connection, path: Path, durability: str) -> None:
        self._db = connection
        self.path = path
        self.durability = durability
        self._lock = threading.Lock()
        self._has_work = threading.Condition(self._lock)
        self._ops: list[tuple[str, tuple[Any, ...]]] = []
        self._closing = False
        self.recorded = 0  # operations recorded so far (trio thread only)
        self.committed = 0  # operations known durable or failed (trio thread only)
        #: (first, last] operation ranges of recent failed commits
        self._failures: deque[tuple[int, int]] = deque(maxlen=64)
        self._commit_event = trio.Event()
        self._next_message_id = 1
        self._refs: dict[int, int] = {}  # message id -> delivery rows + retained rows
        self.commits = 0
        self.failures = 0
        #: commit latency (written by the writer thread, read by monitoring): ``[i]`` counts
        #: the commits that took at most ``COMMIT_BUCKETS_S[i]`` seconds, the last slot the
        #: longer ones; ``commit_seconds`` is the time all of them took
        self.commit_buckets = [0] * (len(COMMIT_BUCKETS_S) + 1)
        self.commit_seconds = 0.0
        #: whether the most recent commit failed (``/readyz`` reports the store unwritable)
        self.last_commit_failed = False

    # -- opening and loading ----------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, durability: str) -> Store:
        """Open (creating or migrating) the database.

        Raises:
            StartupError: the file is unreadable, not a database, corrupt, or from a newer mqttd.
        """
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(f"PRAGMA synchronous = {'FULL' if durability == 'fsync' else 'NORMAL'}")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {check}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StartupError(
                    f"store {path}: schema version {version} is newer than this mqttd supports "
                    f"({SCHEMA_VERSION}); run a newer mqttd or move the file away"
                )
            while version < SCHEMA_VERSION:
                db.executescript(
                    f"BEGIN; {_MIGRATIONS[version]} PRAGMA user_version = {version + 1}; COMMIT;"
                )
                version += 1
        except sqlite3.Error as exc:
            raise StartupError(
                f"store {path}: cannot open the database ({exc}); restore it from a backup or "
                f"move it away to start with an empty store"
            ) from None
        except OSError as exc:
            raise StartupError(f"store {path}: {exc.strerror or exc}") from None
        return cls(db, path, durability)

    def load(self, now: float | None = None) -> StoredState:
        """Read every persistent session and retained message (at start-up, before serving).

        Messages whose MQTT 5 Message Expiry Interval passed before ``now`` (default: the
        time) are left out, with their delivery and retained rows ([MQTT-3.3.2-5]).
        """
        db = self._db
        if now is None:
            now = time.time()
        messages: dict[int, Message] = {}
        expired: set[int] = set()
        for message_id, topic, payload, qos, retain, properties, expires_at in db.execute(
            "SELECT id, topic, payload, qos, retain, properties, expires_at FROM messages"
        ):
            self._next_message_id = max(self._next_message_id, message_id + 1)
            if expires_at is not None and expires_at <= now:
                expired.add(message_id)
                continue
            message = Message(
                topic,
                bytes(payload),
                qos,
                bool(retain),
                properties=_decode_properties(properties),
                expires_at=expires_at,
            )
            message.store_id = message_id
            messages[message_id] = message
        sessions: dict[str, StoredSession] = {
            client_id: StoredSession(
                client_id, last_seen, owner, bool(owned), expiry_interval, bool(connected)
            )
            for client_id, last_seen, owner, owned, expiry_interval, connected in db.execute(
                "SELECT client_id, last_seen, owner, owned, expiry_interval, connected"
                " FROM sessions"
            )
        }
        for client_id, topic_filter, qos in db.execute(
            "SELECT client_id, topic_filter, qos FROM subscriptions"
        ):
            if client_id in sessions:
                sessions[client_id].subscriptions[topic_filter] = qos
        for row in db.execute(
            "SELECT client_id, seq, message_id, qos, retain, packet_id, released,"
            " subscription_ids FROM deliveries ORDER BY client_id, seq"
        ):
            client_id, seq, message_id, qos, retain, packet_id, released, identifiers = row
            if message_id in expired:
                self._record("delivery_del", (client_id, seq))
                continue
            delivered = messages.get(message_id)
            if client_id in sessions and delivered is not None:
                sessions[client_id].deliveries.append(
                    StoredDelivery(
                        seq,
                        delivered,
                        qos,
                        bool(retain),
                        packet_id,
                        bool(released),
                        _decode_ids(identifiers),
                    )
                )
                self._refs[message_id] = self._refs.get(message_id, 0) + 1
        for client_id, packet_id in db.execute("SELECT client_id, packet_id FROM incoming"):
            if client_id in sessions:
                sessions[client_id].incoming.add(packet_id)
        retained = []
        for topic, message_id in db.execute("SELECT topic, message_id FROM retained"):
            if message_id in expired:
                self._record("retained_del", (topic,))
                continue
            kept = messages.get(message_id)
            if kept is not None:
                retained.append(kept)
                self._refs[message_id] = self._refs.get(message_id, 0) + 1
        # Messages nobody references (left by a failed batch) and expired ones are removed on
        # the first commit.
        for message_id in (messages.keys() - self._refs.keys()) | expired:
            self._record("msg_del", (message_id,))
        return StoredState(sessions, retained)

    # -- recording (trio thread, synchronous) -----------------------------------------------

    def _record(self, kind: str, params: tuple[Any, ...]) -> None:
        with self._lock:
            self._ops.append((kind, params))
            self._has_work.notify()
        self.recorded += 1

    def _ref(self, message: Message) -> int:
        message_id = message.store_id
        if message_id is None:
            message_id = self._next_message_id
            self._next_message_id += 1
            message.store_id = message_id
            self._refs[message_id] = 0
            properties = message.properties
            self._record(
                "msg_put",
                (
                    message_id,
                    message.topic,
                    message.payload,
                    message.qos,
                    int(message.retain),
                    None if properties is NO_PROPERTIES else encode_properties(properties),
                    message.expires_at,
                ),
            )
        self._refs[message_id] = self._refs.get(message_id, 0) + 1
        return message_id

    def _unref(self, message: Message) -> None:
        message_id = message.store_id
        if message_id is None:
            return
        count = self._refs.get(message_id, 0) - 1
        if count > 0:
            self._refs[message_id] = count
            return
        self._refs.pop(message_id, None)
        message.store_id = None
        self._record("msg_del", (message_id,))

    def session_saved(
        self,
        client_id: str,
        owner: str | None,
        expiry_interval: int | None = None,
        *,
        connected: bool = False,
    ) -> None:
        """A persistent session of user ``owner`` (None = anonymous) exists, or was seen now.

        Args:
            expiry_interval: its MQTT 5 Session Expiry Interval in seconds (None: never).
            connected: a connection is attached to it now (saved at CONNECT, not at the end).
        """
        self._record(
            "session_put", (client_id, time.time(), owner, expiry_interval, int(connected))
        )

    def session_deleted(self, client_id: str, messages: Iterable[Message]) -> None:
        """A persistent session is gone, with every delivery still referencing ``messages``."""
        self._record("session_del", (client_id,))
        self._record("subs_del_all", (client_id,))
        self._record("deliveries_del_all", (client_id,))
        self._record("incoming_del_all", (client_id,))
        for message in messages:
            self._unref(message)

    def subscription_set(self, client_id: str, topic_filter: str, qos: int) -> None:
        self._record("sub_put", (client_id, topic_filter, qos))

    def subscription_removed(self, client_id: str, topic_filter: str) -> None:
        self._record("sub_del", (client_id, topic_filter))

    def delivery_added(
        self,
        client_id: str,
        seq: int,
        message: Message,
        qos: int,
        retain: bool,
        packet_id: int | None,
        subscription_ids: tuple[int, ...] = (),
    ) -> None:
        message_id = self._ref(message)
        identifiers = ",".join(map(str, subscription_ids)) if subscription_ids else None
        self._record(
            "delivery_put",
            (client_id, seq, message_id, qos, int(retain), packet_id, identifiers),
        )

    def delivery_sent(self, client_id: str, seq: int, packet_id: int) -> None:
        self._record("delivery_sent", (packet_id, client_id, seq))

    def delivery_released(self, client_id: str, seq: int) -> None:
        self._record("delivery_released", (client_id, seq))

    def delivery_removed(self, client_id: str, seq: int, message: Message) -> None:
        self._record("delivery_del", (client_id, seq))
        self._unref(message)

    def incoming_added(self, client_id: str, packet_id: int) -> None:
        self._record("incoming_put", (client_id, packet_id))

    def incoming_removed(self, client_id: str, packet_id: int) -> None:
        self._record("incoming_del", (client_id, packet_id))

    def retained_set(self, topic: str, old: Message | None, new: Message | None) -> None:
        """The retained message of ``topic`` changed from ``old`` to ``new`` (None = none)."""
        if new is not None:
            self._record("retained_put", (topic, self._ref(new)))
        else:
            self._record("retained_del", (topic,))
        if old is not None:
            self._unref(old)

    # -- durability (trio thread) -----------------------------------------------------------

    def mark(self) -> int:
        """The sequence number covering everything recorded so far."""
        return self.recorded

    async def durable(self, upto: int) -> None:
        """Wait until every operation numbered up to ``upto`` has been through a commit."""
        while self.committed < upto:
            await self._commit_event.wait()

    def failed(self, first: int, last: int) -> bool:
        """Whether a commit carrying any operation numbered in (first, last] failed."""
        return any(lo < last and hi > first for lo, hi in self._failures)

    async def settled(self, first: int, last: int) -> None:
        """Operations here complete with their commit (a cluster store's barriers complete
        later; see ``mqttd.cluster.redis_store``): nothing more to wait for."""

    def backlog(self) -> int:
        """Operations recorded but not yet committed."""
        return self.recorded - self.committed

    async def drain(self, below: int) -> None:
        """Wait until fewer than ``below`` operations await their commit (reader backpressure:
        a client that produces state faster than the disk takes it is read more slowly)."""
        while self.recorded - self.committed >= below:
            await self._commit_event.wait()

    def _on_commit(self, upto: int, error: BaseException | None) -> None:
        if error is not None:
            self._failures.append((self.committed, upto))
        self.committed = upto
        event, self._commit_event = self._commit_event, trio.Event()
        event.set()

    # -- the writer thread ------------------------------------------------------------------

    async def writer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the writer thread until ``close()``; it commits everything recorded first.

        The thread is not abandoned on cancellation: call ``close()`` before leaving the
        nursery that runs this, so no recorded change is left behind.
        """
        token = trio.lowlevel.current_trio_token()
        task_status.started()
        await trio.to_thread.run_sync(self._write_loop, token)

    def _write_loop(self, token: trio.lowlevel.TrioToken) -> None:
        total = 0
        while True:
            with self._lock:
                while not self._ops and not self._closing:
                    self._has_work.wait()
                if not self._ops and self._closing:
                    break
                batch = self._ops[:MAX_BATCH_OPS]
                del self._ops[:MAX_BATCH_OPS]
            error: BaseException | None = None
            db = self._db
            started = time.perf_counter()
            try:
                db.execute("BEGIN")
                try:
                    for kind, params in batch:
                        db.execute(_SQL[kind], params)
                    db.execute("COMMIT")
                except BaseException:
                    # SQLite may already have rolled back by itself (SQLITE_FULL does): then
                    # ROLLBACK would fail with "no transaction is active" and hide the cause.
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
                self.commits += 1
            except sqlite3.Error as exc:
                error = exc
                self.failures += 1
                log.error(
                    "store_commit_failed",
                    path=str(self.path),
                    error=str(exc),
                    operations=len(batch),
                )
            elapsed = time.perf_counter() - started
            self.commit_seconds += elapsed
            self.commit_buckets[bisect.bisect_left(COMMIT_BUCKETS_S, elapsed)] += 1
            self.last_commit_failed = error is not None
            total += len(batch)
            try:
                token.run_sync_soon(self._on_commit, total, error)
            except trio.RunFinishedError:
                break
        self._db.close()

    def close(self) -> None:
        """Stop the writer thread after it has committed everything recorded (shutdown)."""
        with self._lock:
            self._closing = True
            self._has_work.notify()

    def gate(self, backlog_limit: int) -> OutputGate:
        """A new connection's gate (see ``OutputGate``)."""
        return OutputGate(self, backlog_limit)


def _decode_properties(block: bytes | None) -> Properties:
    """A message's properties from the property block the store keeps (None: none).

    Raises:
        StartupError: the block is not one (the database was altered outside mqttd).
    """
    if block is None:
        return NO_PROPERTIES
    data = bytearray(block)
    try:
        properties, end = read_properties(data, 0, len(data), PacketType.PUBLISH)
    except ProtocolError:
        end = -1
    if end != len(data):
        raise StartupError(
            "store: a stored message has malformed MQTT 5 properties; restore the database "
            "from a backup or move it away to start with an empty store"
        )
    return properties


def _decode_ids(text: str | None) -> tuple[int, ...]:
    """Subscription Identifiers as the store keeps them ("1,7"; None: none)."""
    return tuple(int(part) for part in text.split(",")) if text else ()


class OutputGate:
    """One connection's view of the store: what its input recorded, and when its output may go.

    The connection's protocol brackets the processing of its input with ``begin``/``end``; its
    session keeps ``store_mark``, the store's position after the last change made on its behalf
    (a delivery queued by another client's PUBLISH, a PUBREL). Output taken now depends on
    both, and on nothing else: ``wait`` blocks until the store has committed past them, so one
    connection's output never waits for another client's unrelated changes.

    Args:
        store: the store.
        backlog_limit: uncommitted operations above which the client is read more slowly
            (``[limits] store_backlog_limit``).
    """

    __slots__ = ("_backlog_limit", "_own", "_store")

    def __init__(self, store: Store, backlog_limit: int) -> None:
        self._store = store
        self._backlog_limit = backlog_limit
        #: (first, last] operation ranges this connection's input recorded, not yet checked
        self._own: list[tuple[int, int]] = []

    def begin(self) -> int:
        """Input is about to be processed; returns the token ``end`` takes."""
        return self._store.recorded

    def end(self, token: int) -> None:
        """Input processing begun with ``token`` is over: remember what it recorded."""
        recorded = self._store.recorded
        if recorded != token:
            self._own.append((token, recorded))

    def must_wait(self, session_mark: int) -> bool:
        """Whether output taken now must wait: this connection's input recorded something not
        yet checked, or its session changed past what is committed."""
        return bool(self._own) or session_mark > self._store.committed

    async def wait(self, session_mark: int) -> None:
        """Wait until everything the output just taken depends on is committed: the
        operations of this connection's input and the session's changes up to
        ``session_mark``.

        Raises:
            StoreError: a commit carrying an operation of this connection's input failed: its
                acknowledgements must not be sent.
        """
        store = self._store
        own = self._own
        upto = max(session_mark, own[-1][1] if own else 0)  # taken before any checkpoint
        if store.committed < upto:
            await store.durable(upto)
        while own and own[0][1] <= upto:
            first, last = own.pop(0)
            if store.failed(first, last):
                raise StoreError("commit_failed")
            await store.settled(first, last)

    def overloaded(self) -> bool:
        """Whether the store lags so far behind that this client must be read more slowly."""
        return self._store.backlog() >= self._backlog_limit

    async def catch_up(self) -> None:
        """Wait until the store's backlog is down to half the limit."""
        await self._store.drain(self._backlog_limit // 2)
