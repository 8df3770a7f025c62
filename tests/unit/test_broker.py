"""Broker without sockets: sessions by client id, routing, retained messages and their limits,
persistent-session ownership and expiry."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mqttd.broker import Broker, retained_cost
from mqttd.config import LimitsConfig
from mqttd.message import Message
from mqttd.session import Session
from mqttd.store import StoredDelivery, StoredSession, StoredState


def broker(**limits: object) -> Broker:
    return Broker(dataclasses.replace(LimitsConfig(), **limits))  # type: ignore[arg-type]


def online(b: Broker, client_id: str, clean: bool = True) -> Session:
    session, _ = b.open_session(client_id, clean)
    session.attach(lambda: None)
    return session


@settings(max_examples=100, deadline=None)
@given(published=st.integers(0, 2), granted=st.lists(st.integers(0, 2), min_size=1, max_size=3))
def test_delivered_qos_is_min_of_published_and_best_granted(
    published: int, granted: list[int]
) -> None:
    """Overlapping subscriptions deliver once, at min(published QoS, the highest granted QoS)
    ([MQTT-3.3.5-1], [MQTT-3.8.4-6])."""
    b = broker()
    sub = online(b, "sub")
    filters = ["t", "+", "#"][: len(granted)]
    b.subscribe(sub, list(zip(filters, granted, strict=True)))
    sub.take_outbox()
    b.publish("t", b"x", published, False)
    data = sub.take_outbox()
    assert data[0] >> 4 == 3  # one PUBLISH ...
    assert (data[0] >> 1) & 3 == min(published, max(granted))
    assert data.count(b"x") == 1  # ... delivered once


def test_clean_session_discards_and_persistent_resumes() -> None:
    """CleanSession=1 discards a previous session ([MQTT-3.1.2-6]) and answers Session Present
    0; CleanSession=0 resumes one (Present 1, [MQTT-3.2.2-2]) or starts one (0)."""
    b = broker()
    first, present = b.open_session("c", False)
    assert not present
    b.subscribe(first, [("t", 1)])
    b.end_session(first)
    again, present = b.open_session("c", False)
    assert present
    assert again is first
    assert again.subscriptions == {"t": 1}
    clean, present = b.open_session("c", True)
    assert not present
    assert clean is not first
    assert not b.tree.match("t")


def test_persistent_session_belongs_to_its_owner() -> None:
    """Another user (or anonymous) connecting with a persistent client id gets a new session;
    the owner gets its own back; with check_owner=False anyone resumes it."""
    b = broker()
    alice, _ = b.open_session("phone", False, "alice")
    b.subscribe(alice, [("t", 1)])
    b.end_session(alice)
    mallory, present = b.open_session("phone", False, "mallory")
    assert not present
    assert mallory is not alice
    assert not mallory.subscriptions
    assert b.stats.sessions_reowned == 1
    b.end_session(mallory)
    same, present = b.open_session("phone", False, "mallory")
    assert present
    loose, present = b.open_session("phone", False, "bob", check_owner=False)
    assert present
    assert loose is same
    assert loose.owner == "mallory"


def test_unowned_stored_session_is_claimed_by_its_next_user() -> None:
    """A session stored before owners were recorded (owned=False) goes to the next user."""
    b = broker()
    old, _ = b.open_session("x", False)
    old.owned = False
    old.owner = None
    b.end_session(old)
    claimed, present = b.open_session("x", False, "carol")
    assert present
    assert (claimed.owner, claimed.owned) == ("carol", True)


def test_retained_set_replace_delete() -> None:
    """RETAIN=1 stores (replacing [MQTT-3.3.1-5]); an empty payload deletes the retained
    message ([MQTT-3.3.1-11]) but is still routed ([MQTT-3.3.1-10])."""
    b = broker()
    sub = online(b, "sub")
    b.subscribe(sub, [("r", 0)])
    b.publish("r", b"1", 0, True)
    b.publish("r", b"2", 0, True)
    retained = b.retained.get("r")
    assert retained is not None
    assert retained.payload == b"2"
    b.publish("r", b"", 0, True)
    assert b.retained.get("r") is None
    assert (b.retained_count, b.retained_bytes) == (0, 0)
    assert sub.take_outbox().count(b"\x00\x01r") == 3


def test_retained_limits_refuse_new_topics_but_route_them() -> None:
    """Beyond max_retained_messages a new topic is not retained (publish returns False) and
    is still routed; replacing and deleting stay possible; $SYS values do not count."""
    b = broker(max_retained_messages=2)
    sub = online(b, "sub")
    b.subscribe(sub, [("#", 0)])
    assert b.publish("a", b"1", 0, True)
    assert b.publish("b", b"1", 0, True)
    assert not b.publish("c", b"1", 0, True)
    assert b.stats.retained_refused == 1
    assert b"\x00\x01c" in sub.take_outbox()
    assert b.publish("a", b"2", 0, True)
    assert b.publish("$SYS/x", b"v", 0, True, durable=False)
    assert b.publish("b", b"", 0, True)
    assert b.publish("c", b"1", 0, True)
    assert b.retained_count == 2


def test_retained_bytes_count_topic_payload_and_levels() -> None:
    """max_retained_bytes counts topic + payload + 256 bytes a level; an update that would
    exceed it is refused and the old message stays."""
    message = Message("a/b", b"xyz")
    assert retained_cost(message) == 3 + 3 + 2 * 256
    b = broker(max_retained_bytes=1000)
    assert b.publish("a/b", b"xyz", 0, True)
    assert not b.publish("a/b", b"x" * 1000, 0, True)
    kept = b.retained.get("a/b")
    assert kept is not None
    assert kept.payload == b"xyz"
    assert b.retained_bytes == retained_cost(message)


def test_unsubscribe_cancels_retained_not_yet_sent() -> None:
    """Retained messages of a subscription not yet sent are dropped by its UNSUBSCRIBE."""
    b = broker(max_outbox_bytes=1024)
    for i in range(1000):
        b.publish(f"r/{i}", b"p" * 20, 0, True)
    sub = online(b, "sub")
    b.subscribe(sub, [("r/#", 0)])
    b.deliver_retained(sub, "r/#", 0)
    assert sub.retained_pending() == 1
    b.unsubscribe(sub, ["r/#"])
    assert sub.retained_pending() == 0


def test_expire_sessions_removes_long_offline_persistent_ones() -> None:
    """persistent_client_expiration: offline persistent sessions older than the age go."""
    b = broker()
    old, _ = b.open_session("old", False)
    b.end_session(old)
    fresh, _ = b.open_session("fresh", False)
    b.end_session(fresh)
    old.last_seen = 100.0
    fresh.last_seen = 1000.0
    assert b.expire_sessions(500.0, now=1100.0) == 1
    assert set(b.sessions) == {"fresh"}


class SavedSessions:
    """A store fake that keeps what ``session_saved``/``session_deleted`` were told."""

    def __init__(self) -> None:
        self.saved: list[tuple[str, int | None, bool]] = []
        self.deleted: list[str] = []
        self.recorded = 0

    def session_saved(
        self,
        client_id: str,
        owner: str | None,
        expiry_interval: int | None = None,
        *,
        connected: bool = False,
    ) -> None:
        self.saved.append((client_id, expiry_interval, connected))

    def session_deleted(self, client_id: str, messages: Iterable[Message]) -> None:
        self.deleted.append(client_id)

    def subscription_set(self, client_id: str, topic_filter: str, qos: int) -> None:
        pass


def test_store_learns_every_session_expiry_interval() -> None:
    """A persistent MQTT 5 session is saved with its Session Expiry Interval at CONNECT, when a
    new CONNECT resumes it with another one, and when a DISCONNECT changed it (3.14.2.2.2)."""
    store = SavedSessions()
    b = Broker(LimitsConfig(), store)  # type: ignore[arg-type]
    session, _ = b.open_session("c", False, mqtt5=True, expiry=60)
    b.end_session(session)
    session, present = b.open_session("c", False, mqtt5=True, expiry=120)
    assert present
    session.expiry_interval = 30  # what a DISCONNECT with Session Expiry Interval 30 sets
    b.end_session(session)
    assert store.saved == [("c", 60, True), ("c", 60, False), ("c", 120, True), ("c", 30, False)]


def test_session_expiry_zero_ends_the_session_with_the_connection() -> None:
    """A persistent MQTT 5 session whose DISCONNECT set Session Expiry Interval 0 ends when the
    connection does, at once (3.1.2.11.2; [MQTT-3.1.2-23] keeps only sessions above 0): a
    CONNECT right after (here, or another node asking for it) finds no session, and the store
    forgets it too."""
    store = SavedSessions()
    b = Broker(LimitsConfig(), store)  # type: ignore[arg-type]
    session, _ = b.open_session("c", False, mqtt5=True, expiry=60)
    session.expiry_interval = 0  # what a DISCONNECT with Session Expiry Interval 0 sets
    b.end_session(session)
    assert "c" not in b.sessions  # no schedule has run
    assert store.deleted == ["c"]
    _, present = b.open_session("c", False, mqtt5=True, expiry=60)
    assert not present


def stored_v5(client_id: str, last_seen: float, interval: int, **fields: Any) -> StoredSession:
    return StoredSession(client_id, last_seen, expiry_interval=interval, **fields)


def test_restored_session_expires_after_its_interval() -> None:
    """A restored offline MQTT 5 session keeps its interval and expires at last_seen plus it;
    one whose deadline passed while nobody hosted it is expired at once, and counted."""
    store = SavedSessions()
    b = Broker(LimitsConfig(), store)  # type: ignore[arg-type]
    kept = b.restore_session(stored_v5("kept", 1000.0, 100, subscriptions={"t": 1}), now=1050.0)
    assert kept.expiry_interval == 100
    b.restore_session(stored_v5("late", 1000.0, 40), now=1050.0)
    assert set(b.sessions) == {"kept"}
    assert b.stats.sessions_expired == 1
    assert store.deleted == ["late"]
    b.schedule.run_due(1099.0)
    assert "kept" in b.sessions
    b.schedule.run_due(1100.0)
    assert "kept" not in b.sessions
    assert not b.tree.matches("t")
    assert b.stats.sessions_expired == 2


def test_restored_session_whose_client_was_connected_counts_from_now() -> None:
    """A session saved while its client was connected (the broker, or its node, stopped)
    lost its connection no later than now: its interval counts from the restore."""
    store = SavedSessions()
    b = Broker(LimitsConfig(), store)  # type: ignore[arg-type]
    session = b.restore_session(stored_v5("c", 1000.0, 60, connected=True), now=5000.0)
    assert session.last_seen == 5000.0
    assert store.saved == [("c", 60, False)]
    b.schedule.run_due(5059.0)
    assert "c" in b.sessions
    b.schedule.run_due(5060.0)
    assert "c" not in b.sessions


def test_restored_deliveries_keep_their_subscription_identifiers() -> None:
    """Queued and in-flight deliveries are sent with the Subscription Identifiers they were
    stored with ([MQTT-3.3.4-3])."""
    b = broker()
    stored = StoredSession("c", 0.0)
    stored.deliveries = [
        StoredDelivery(1, Message("a", b"1", 1), 1, False, 1, False, (7,)),
        StoredDelivery(2, Message("b", b"2", 1), 1, False, None, False, (3, 9)),
    ]
    session = b.restore_session(stored)
    assert session.inflight[1].subscription_ids == (7,)
    assert session.queue[0][4] == (3, 9)  # type: ignore[index]


def test_restored_retained_message_leaves_when_it_expires() -> None:
    """A retained message restored from the store still leaves when its Message Expiry
    Interval passes."""
    b = broker()
    expiring = Message("r", b"x", 0, True, expires_at=1000.0)
    b.restore(StoredState({}, [expiring, Message("k", b"y", 0, True)]))
    b.schedule.run_due(999.0)
    assert b.retained.get("r") is expiring
    b.schedule.run_due(1000.0)
    assert b.retained.get("r") is None
    assert b.retained_count == 1
