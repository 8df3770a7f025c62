"""The broker's shared state: sessions, subscriptions and retained messages, pure and synchronous.

A PUBLISH is routed with no ``await``: the topic tree yields every subscribed client id with its
maximum granted QoS ([MQTT-3.3.5-1]), and each session's ``offer`` writes, queues or drops the
message at min(published QoS, granted QoS) ([MQTT-3.8.4-6]). Because nothing here awaits, no lock
is needed between trio checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from mqttd.config import LimitsConfig
from mqttd.message import Message
from mqttd.retain import RetainStore
from mqttd.session import OfferResult, Session
from mqttd.topics import TopicTree

if TYPE_CHECKING:
    from mqttd.store import Store, StoredState

log = structlog.get_logger("mqttd.broker")


@dataclass(slots=True)
class BrokerStats:
    """Counters a monitoring system (and ``$SYS``) can read."""

    messages_received: int = 0
    messages_routed: int = 0
    deliveries: int = 0
    messages_dropped: int = 0


class Broker:
    """Sessions by client id, the subscription tree and the retained-message store."""

    def __init__(self, limits: LimitsConfig, store: Store | None = None) -> None:
        self.limits = limits
        self.sessions: dict[str, Session] = {}
        self.tree = TopicTree()
        self.retained: RetainStore[Message] = RetainStore()
        self.stats = BrokerStats()
        #: durable store for persistent sessions and retained messages (None = memory only)
        self.store = store

    def restore(self, state: StoredState) -> None:
        """Rebuild persistent sessions and retained messages loaded from the store."""
        for stored in state.sessions.values():
            session = Session(stored.client_id, clean_session=False, limits=self.limits)
            session.store = self.store
            session.last_seen = stored.last_seen
            for topic_filter, qos in stored.subscriptions.items():
                session.subscriptions[topic_filter] = qos
                self.tree.subscribe(topic_filter, stored.client_id, qos)
            session.restore(
                [
                    (d.seq, d.message, d.qos, d.retain, d.packet_id, d.released)
                    for d in stored.deliveries
                ],
                stored.incoming,
            )
            self.sessions[stored.client_id] = session
        for message in state.retained:
            self.retained.set(message.topic, message)

    def expire_sessions(self, max_age_s: float, now: float | None = None) -> int:
        """Remove persistent sessions offline for longer than ``max_age_s``; returns how many
        (Mosquitto's ``persistent_client_expiration``)."""
        cutoff = (time.time() if now is None else now) - max_age_s
        expired = [
            session
            for session in self.sessions.values()
            if not session.connected and not session.clean_session and session.last_seen < cutoff
        ]
        for session in expired:
            self._discard(session)
        return len(expired)

    # -- sessions ---------------------------------------------------------------------------

    def open_session(self, client_id: str, clean_session: bool) -> tuple[Session, bool]:
        """The session a newly accepted connection attaches to, and the Session Present flag.

        CleanSession=1 discards any previous session ([MQTT-3.1.2-6]) and answers Session
        Present 0 ([MQTT-3.2.2-1]); CleanSession=0 resumes a stored persistent session
        ([MQTT-3.1.2-4], Session Present 1, [MQTT-3.2.2-2]) or starts one (0, [MQTT-3.2.2-3]).
        """
        existing = self.sessions.get(client_id)
        if existing is not None:
            if not clean_session and not existing.clean_session:
                self._seen(existing)
                return existing, True
            self._discard(existing)
        session = Session(client_id, clean_session=clean_session, limits=self.limits)
        self.sessions[client_id] = session
        if not clean_session:
            session.store = self.store
            self._seen(session)
        return session, False

    def _seen(self, session: Session) -> None:
        session.last_seen = time.time()
        if session.store is not None:
            session.store.session_saved(session.client_id)

    def end_session(self, session: Session) -> None:
        """The session's network connection ended: detach it, and forget a clean session."""
        session.detach()
        if session.clean_session:
            self._discard(session)
        else:
            self._seen(session)

    def _discard(self, session: Session) -> None:
        for topic_filter in session.subscriptions:
            self.tree.unsubscribe(topic_filter, session.client_id)
        session.subscriptions.clear()
        if session.store is not None:
            session.store.session_deleted(session.client_id, session.pending_messages())
            session.store = None
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]

    # -- publishing -------------------------------------------------------------------------

    def publish(
        self, topic: str, payload: bytes, qos: int, retain: bool, *, durable: bool = True
    ) -> Message:
        """Accept an application message from a client (or a Will) and route it.

        RETAIN=1 stores the message as the topic's retained message, replacing the previous one
        ([MQTT-3.3.1-5], [MQTT-3.3.1-7]); an empty payload deletes it instead
        ([MQTT-3.3.1-11]) but is still routed as normal ([MQTT-3.3.1-10]). RETAIN=0 leaves the
        store alone ([MQTT-3.3.1-12]). Retained messages outlive sessions ([MQTT-3.1.2-7]).
        ``durable=False`` keeps a retained message out of the durable store (``$SYS`` values,
        which are regenerated at start-up).
        """
        message = Message(topic, payload, qos, retain)
        self.stats.messages_received += 1
        if retain:
            new = message if payload else None
            if self.store is not None and durable:
                old = self.retained.get(topic)
                if old is not None or new is not None:
                    self.store.retained_set(topic, old, new)
            self.retained.set(topic, new)
        self.route(message)
        return message

    def route(self, message: Message) -> None:
        """Offer ``message`` to every matching session, RETAIN=0 on the wire ([MQTT-3.3.1-9])."""
        matches = self.tree.matches(message.topic)
        if not matches:
            return
        sessions = self.sessions
        published_qos = message.qos
        stats = self.stats
        stats.messages_routed += 1
        topic = message.topic
        for client_id, granted in matches.items():
            session = sessions[client_id]
            if session.may_receive is not None and not session.may_receive(topic):
                continue  # the ACL refuses this delivery (read access)
            result = session.offer(message, granted if granted < published_qos else published_qos)
            if result is OfferResult.DROPPED:
                self._dropped(session)
            elif result is not OfferResult.NOT_KEPT:
                stats.deliveries += 1

    def _dropped(self, session: Session) -> None:
        self.stats.messages_dropped += 1
        if session.on_overflow is not None and session.connected:
            session.on_overflow()  # slow_consumer = "disconnect"
        if session.drop_episode_started():
            # Once per episode, never per message: a flood must not become a log flood.
            log.warning(
                "messages_dropped",
                client_id=session.client_id,
                reason="queue_full" if len(session.queue) else "outbox_full",
                queued=len(session.queue),
                queued_bytes=session.queued_bytes,
                dropped_total=session.dropped,
            )

    # -- subscriptions ----------------------------------------------------------------------

    def subscribe(self, session: Session, subscriptions: Iterable[tuple[str, int]]) -> list[int]:
        """Add or replace subscriptions; returns the SUBACK return codes in order.

        Every requested QoS is granted as asked (this broker supports QoS 0-2,
        [MQTT-3.8.4-5], [MQTT-3.9.3-1]); an identical filter replaces the old subscription
        ([MQTT-3.8.4-3]). Retained messages are sent by ``deliver_retained`` after the SUBACK.
        """
        codes = []
        client_id = session.client_id
        for topic_filter, qos in subscriptions:
            session.subscriptions[topic_filter] = qos
            self.tree.subscribe(topic_filter, client_id, qos)
            if session.store is not None:
                session.store.subscription_set(client_id, topic_filter, qos)
            codes.append(qos)
        return codes

    def deliver_retained(self, session: Session, topic_filter: str, granted_qos: int) -> None:
        """Send the retained messages matching a new subscription, RETAIN=1 ([MQTT-3.3.1-6])."""
        may_receive = session.may_receive
        for topic, message in self.retained.matching(topic_filter):
            if may_receive is not None and not may_receive(topic):
                continue
            qos = message.qos if message.qos < granted_qos else granted_qos
            if session.offer(message, qos, retain=True) is OfferResult.DROPPED:
                self._dropped(session)

    def unsubscribe(self, session: Session, topic_filters: Iterable[str]) -> None:
        """Remove subscriptions by exact filter string ([MQTT-3.10.4-1]); unknown ones are fine.

        Messages already in flight or queued for the session are still delivered
        ([MQTT-3.10.4-3]).
        """
        for topic_filter in topic_filters:
            if session.subscriptions.pop(topic_filter, None) is not None:
                self.tree.unsubscribe(topic_filter, session.client_id)
                if session.store is not None:
                    session.store.subscription_removed(session.client_id, topic_filter)
