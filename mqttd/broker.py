"""The broker's shared state: sessions, subscriptions and retained messages, pure and synchronous.

A PUBLISH is routed with no ``await``: the topic tree yields every subscribed client id with its
maximum granted QoS ([MQTT-3.3.5-1]), and each session's ``offer`` writes, queues or drops the
message at min(published QoS, granted QoS) ([MQTT-3.8.4-6]). Because nothing here awaits, no lock
is needed between trio checkpoints.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import structlog

from mqttd.config import LimitsConfig
from mqttd.message import Message
from mqttd.retain import RetainStore
from mqttd.schedule import Schedule, Timer
from mqttd.session import OfferResult, Ready, RetainedBatch, Session
from mqttd.subscription import (
    NO_LOCAL,
    RETAIN_AS_PUBLISHED,
    SHARE_PREFIX,
    SHARED,
    SUBSCRIPTION_ID_SHIFT,
    SharedGroup,
    parse_shared,
    shared_key,
)
from mqttd.topics import OVERLAP, TopicTree, topic_matches, validate_topic_filter

if TYPE_CHECKING:
    from mqttd.codec.packets import Will
    from mqttd.store import Store, StoredSession, StoredState

log = structlog.get_logger("mqttd.broker")


#: Size of a traffic counter list (``BrokerStats.traffic_in`` / ``traffic_out``): ``[t]``
#: counts MQTT control packets of type ``t`` (1-14), ``[16 + t]`` their bytes (fixed header
#: included), ``[TRAFFIC_PUBLISH_PAYLOAD]`` the payload bytes of PUBLISH packets.
TRAFFIC_SLOTS = 33
TRAFFIC_PUBLISH_PAYLOAD = 32


def new_traffic() -> list[int]:
    """A zeroed traffic counter list (layout: ``TRAFFIC_SLOTS``)."""
    return [0] * TRAFFIC_SLOTS


@dataclass(slots=True)
class BrokerStats:
    """Counters a monitoring system (and ``$SYS``) can read; ``mqttd.metrics`` and
    ``mqttd.sysinfo`` read them when asked, nothing is pushed."""

    messages_received: int = 0
    messages_routed: int = 0
    deliveries: int = 0
    messages_dropped: int = 0
    #: ``messages_dropped`` by reason: the session's queue was full (max_queued_messages or
    #: max_queued_bytes), or an online client's unsent output was (max_outbox_bytes)
    dropped_queue_full: int = 0
    dropped_outbox_full: int = 0
    #: retained messages not kept for max_retained_messages / max_retained_bytes
    retained_refused: int = 0
    #: persistent sessions discarded because another user took their client id over
    sessions_reowned: int = 0
    #: persistent sessions removed by persistent_client_expiration
    sessions_expired: int = 0
    #: CONNECTs by outcome: "accepted", or the reason of the refusing CONNACK
    connects: dict[str, int] = field(default_factory=dict)
    #: ended MQTT connections by close reason
    disconnects: dict[str, int] = field(default_factory=dict)
    #: packets and bytes read from clients, counted by the decoders (layout: TRAFFIC_SLOTS)
    traffic_in: list[int] = field(default_factory=new_traffic)
    #: packets and bytes queued for clients, counted by the sessions (layout: TRAFFIC_SLOTS)
    traffic_out: list[int] = field(default_factory=new_traffic)


#: What one topic level costs the retained store (a trie node and its dict entry), counted
#: against ``max_retained_bytes`` (measured: 250 bytes per level of a topic sharing no prefix).
RETAINED_LEVEL_BYTES = 256


def retained_cost(message: Message) -> int:
    """Bytes ``message`` is counted for while it is retained: topic + payload + levels."""
    return (
        len(message.topic)
        + len(message.payload)
        + RETAINED_LEVEL_BYTES * (message.topic.count("/") + 1)
    )


class ClusterLink(Protocol):
    """What the broker tells the cluster (``mqttd.cluster.node``), when there is one; all of
    it synchronous, recorded for the cluster's writer."""

    def forward(self, message: Message) -> Container[str]:
        """A message published here: send it to the other nodes with matching subscribers,
        choosing one node per shared group; returns the groups another node serves."""

    def has_routes(self, topic: str) -> bool:
        """Whether another node has a subscriber matching ``topic``."""

    def filter_added(self, topic_filter: str) -> None:
        """A session here subscribed to ``topic_filter``."""

    def filter_removed(self, topic_filter: str) -> None:
        """A session here no longer subscribes to ``topic_filter``."""

    def retained_ready(self) -> Ready | None:
        """What a new subscription's retained messages must wait for (None: nothing)."""

    def client_attached(self, client_id: str, will: Will | None) -> None:
        """A client's connection here was accepted (its Will, if any, must outlive us)."""

    def client_detached(self, client_id: str) -> None:
        """A client's connection here ended."""

    def session_released(self, client_id: str) -> None:
        """This node no longer hosts the persistent session of ``client_id``."""


class Broker:
    """Sessions by client id, the subscription tree and the retained-message store."""

    def __init__(self, limits: LimitsConfig, store: Store | None = None) -> None:
        self.limits = limits
        self.sessions: dict[str, Session] = {}
        self.tree = TopicTree()
        #: shared subscriptions' groups by their tree key (``mqttd.subscription``)
        self.shared: dict[str, SharedGroup] = {}
        self.retained: RetainStore[Message] = RetainStore()
        #: how many retained messages came from clients, and what they cost (``retained_cost``);
        #: the broker's own ``$SYS`` values are not counted against the limits
        self.retained_count = 0
        self.retained_bytes = 0
        self.stats = BrokerStats()
        #: durable store for persistent sessions and retained messages (None = memory only)
        self.store = store
        #: the cluster this broker is a node of (None = a broker on its own)
        self.cluster: ClusterLink | None = None
        #: MQTT 5 session expiry and delayed Wills (a server task runs what comes due)
        self.schedule = Schedule()
        #: client id -> the timer of its delayed Will (MQTT 5 Will Delay Interval)
        self.delayed_wills: dict[str, tuple[Timer, Callable[[], None]]] = {}

    def restore(self, state: StoredState) -> None:
        """Rebuild persistent sessions and retained messages loaded from the store (an MQTT 5
        retained message still leaves when its Message Expiry Interval passes)."""
        for stored in state.sessions.values():
            self.restore_session(stored)
        for message in state.retained:
            self.retained.set(message.topic, message)
            self.retained_count += 1
            self.retained_bytes += retained_cost(message)
            if message.expires_at is not None:
                self.schedule.call_at(
                    message.expires_at, functools.partial(self._retained_expired, message)
                )

    def restore_session(self, stored: StoredSession, now: float | None = None) -> Session:
        """Rebuild one persistent session loaded from the store (or handed over by another
        node of the cluster).

        An MQTT 5 session with a Session Expiry Interval is offline now: it expires at
        ``last_seen`` + the interval, at once if that passed while nobody hosted it (the
        returned session is then already discarded). One saved with a connection attached
        (the broker, or its node, stopped meanwhile) lost it no later than ``now``: its
        interval counts from then.
        """
        if now is None:
            now = time.time()
        session = Session(
            stored.client_id,
            clean_session=False,
            limits=self.limits,
            traffic=self.stats.traffic_out,
        )
        session.store = self.store
        session.last_seen = stored.last_seen
        session.owner = stored.owner
        session.owned = stored.owned
        session.expiry_interval = stored.expiry_interval
        for topic_filter, options in stored.subscriptions.items():
            self._add_subscription(session, topic_filter, options)
        deliveries = stored.deliveries
        session.restore(
            [(d.seq, d.message, d.qos, d.retain, d.packet_id, d.released) for d in deliveries],
            stored.incoming,
            {d.seq: d.subscription_ids for d in deliveries if d.subscription_ids},
        )
        self.sessions[stored.client_id] = session
        if stored.connected:
            self._seen(session, now=now)
        interval = session.expiry_interval
        if interval is not None:
            deadline = session.last_seen + interval
            if deadline <= now:
                self._expire(session, deadline)  # its time passed while it was not hosted
            else:
                self.schedule.call_at(deadline, lambda: self._expire(session, deadline))
        return session

    def release_session(self, client_id: str, forwarder: Session | None = None) -> None:
        """Another node takes this persistent session over: forget it here, keeping what the
        store holds of it (the other node loads it from there).

        Args:
            client_id: the session's client id.
            forwarder: takes the session's place, with its subscriptions, until
                ``drop_forwarder``: messages still routed here meanwhile go on to the new node.
        """
        # The client connected again, on another node: a delayed Will of its last
        # connection here is not sent ([MQTT-3.1.3-9]).
        self._will_on_reconnect(client_id, session_ended=False)
        session = self.sessions.pop(client_id, None)
        if session is None:
            return
        session.store = None
        if self.cluster is not None:
            self.cluster.session_released(client_id)
        if forwarder is None:
            self._unsubscribe_all(session)
            return
        forwarder.subscriptions = session.subscriptions
        session.subscriptions = {}
        self.sessions[client_id] = forwarder

    def discard_session(self, client_id: str) -> None:
        """End a session here and in the store (a clean session takes its client id); a
        delayed Will of its last connection here goes now (the session ended, 3.1.3.2)."""
        session = self.sessions.get(client_id)
        if session is not None:
            self._discard(session)
        self._will_on_reconnect(client_id, session_ended=True)

    def drop_forwarder(self, client_id: str, forwarder: Session) -> None:
        """The new node routes the session's messages itself now: the forwarder goes."""
        if self.sessions.get(client_id) is forwarder:
            del self.sessions[client_id]
            self._unsubscribe_all(forwarder)

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
        self.stats.sessions_expired += len(expired)
        return len(expired)

    # -- sessions ---------------------------------------------------------------------------

    def open_session(
        self,
        client_id: str,
        clean_session: bool,
        owner: str | None = None,
        *,
        check_owner: bool = True,
        restored: StoredSession | None = None,
        mqtt5: bool = False,
        expiry: int | None = None,
    ) -> tuple[Session, bool]:
        """The session a newly accepted connection attaches to, and the Session Present flag.

        CleanSession=1 discards any previous session ([MQTT-3.1.2-6]) and answers Session
        Present 0 ([MQTT-3.2.2-1]); CleanSession=0 resumes a stored persistent session
        ([MQTT-3.1.2-4], Session Present 1, [MQTT-3.2.2-2]) or starts one (0, [MQTT-3.2.2-3]).

        A persistent session belongs to ``owner``, the user name that created it: with
        ``check_owner``, another user (or anonymous) connecting with its client id gets a new
        session and the old one is discarded -- its messages were meant for someone else.
        A session stored before owners were recorded is claimed by its next user. ``restored``
        is the client's persistent session as another node of the cluster left it.

        With ``mqtt5``, ``clean_session`` is Clean Start ([MQTT-3.1.2-4], [MQTT-3.1.2-5]) and
        ``expiry`` the Session Expiry Interval in seconds (None: never expires); for MQTT
        3.1.1 a persistent session never expires by itself.
        """
        if restored is not None and client_id not in self.sessions:
            self.restore_session(restored)
        # MQTT 5: Clean Start decides whether a session is resumed, the Session Expiry
        # Interval how long it outlives the connection (0: it ends with it, None: never).
        ends_with_connection = expiry == 0 if mqtt5 else clean_session
        expiry_interval = expiry if mqtt5 else None
        existing = self.sessions.get(client_id)
        if existing is not None:
            if not clean_session and not existing.clean_session:
                if not check_owner or not existing.owned or existing.owner == owner:
                    if not existing.owned:  # stored before owners were recorded: claimed
                        existing.owner, existing.owned = owner, True
                    self._will_on_reconnect(client_id, session_ended=False)
                    existing.clean_session = ends_with_connection
                    existing.expiry_interval = expiry_interval
                    self._seen(existing, connected=True)
                    return existing, True
                self.stats.sessions_reowned += 1
                log.warning(
                    "session_owner_changed",
                    client_id=client_id,
                    owner=existing.owner,
                    username=owner,
                    discarded_messages=len(existing.inflight) + len(existing.queue),
                )
            self._discard(existing)
        self._will_on_reconnect(client_id, session_ended=True)
        session = Session(
            client_id,
            clean_session=ends_with_connection,
            limits=self.limits,
            traffic=self.stats.traffic_out,
        )
        session.owner = owner
        session.expiry_interval = expiry_interval
        self.sessions[client_id] = session
        if not ends_with_connection:
            session.store = self.store
            self._seen(session, connected=True)
        return session, False

    def _will_on_reconnect(self, client_id: str, *, session_ended: bool) -> None:
        """A new connection for ``client_id``: its delayed Will, if any, is not sent when the
        session goes on ([MQTT-3.1.3-9]); it is sent now when the session ended (Clean Start,
        another owner), as when it expires (3.1.3.2)."""
        pending = self.delayed_wills.pop(client_id, None)
        if pending is not None:
            timer, publish = pending
            timer.cancel()
            if session_ended:
                publish()

    def delay_will(self, client_id: str, delay: float, publish: Callable[[], None]) -> None:
        """Publish a Will (``publish``) after ``delay`` seconds unless the client reconnects
        first; the session ending first sends it then (MQTT 5 Will Delay Interval, 3.1.3.2)."""

        def due() -> None:
            if self.delayed_wills.get(client_id, (None,))[0] is timer:
                del self.delayed_wills[client_id]
                publish()

        self._will_on_reconnect(client_id, session_ended=True)  # an older one goes first
        timer = self.schedule.call_at(time.time() + delay, due)
        self.delayed_wills[client_id] = (timer, publish)

    def _seen(
        self, session: Session, *, connected: bool = False, now: float | None = None
    ) -> None:
        """The session's client connected (``connected``) or went away: note the time, and
        save the session with its Session Expiry Interval -- every change of the interval
        (a CONNECT resuming it, a DISCONNECT setting it) comes through here."""
        session.last_seen = time.time() if now is None else now
        if session.store is not None:
            session.store.session_saved(
                session.client_id, session.owner, session.expiry_interval, connected=connected
            )

    def client_attached(self, client_id: str, will: Will | None) -> None:
        """A client's connection was accepted here (the cluster keeps its Will)."""
        if self.cluster is not None:
            self.cluster.client_attached(client_id, will)

    def client_detached(self, client_id: str) -> None:
        """A client's connection here ended."""
        if self.cluster is not None:
            self.cluster.client_detached(client_id)

    def end_session(self, session: Session) -> None:
        """The session's network connection ended: detach it, and forget a clean session (or
        an MQTT 5 one with Session Expiry Interval 0); one with an interval ends after it."""
        session.detach()
        if session.clean_session:
            self._discard(session)
            return
        self._seen(session)
        interval = session.expiry_interval
        if interval == 0:
            # MQTT 5 Session Expiry Interval 0 (a DISCONNECT may set it): the session ends
            # with the connection (3.1.2.11.2, [MQTT-3.1.2-23]), now -- at the schedule's next
            # turn a new CONNECT (here, or on another cluster node asking this one for the
            # session) could still find it.
            self._expire(session, session.last_seen)
        elif interval is not None:
            deadline = session.last_seen + interval
            self.schedule.call_at(deadline, lambda: self._expire(session, deadline))

    def _expire(self, session: Session, deadline: float) -> None:
        """A session's expiry timer came due: end it if it is still offline and its deadline
        unchanged (a reconnect, a later disconnect or a new interval made the timer stale)."""
        interval = session.expiry_interval
        if (
            self.sessions.get(session.client_id) is not session
            or session.connected
            or interval is None
            or session.last_seen + interval != deadline
        ):
            return
        self.stats.sessions_expired += 1
        log.info("session_expired", client_id=session.client_id, expiry_interval=interval)
        self._discard(session)
        self._will_on_reconnect(session.client_id, session_ended=True)  # its Will goes now

    def _unsubscribe_all(self, session: Session) -> None:
        for topic_filter in session.subscriptions:
            self._remove_subscription(session.client_id, topic_filter)
        session.subscriptions.clear()

    def _discard(self, session: Session) -> None:
        self._unsubscribe_all(session)
        if session.store is not None:
            session.store.session_deleted(session.client_id, session.pending_messages())
            session.store = None
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]

    # -- publishing -------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        *,
        durable: bool = True,
        publisher: str | None = None,
    ) -> bool:
        """Accept an application message from a client (or a Will) and route it.

        RETAIN=1 stores the message as the topic's retained message, replacing the previous one
        ([MQTT-3.3.1-5], [MQTT-3.3.1-7]); an empty payload deletes it instead
        ([MQTT-3.3.1-11]) but is still routed as normal ([MQTT-3.3.1-10]). RETAIN=0 leaves the
        store alone ([MQTT-3.3.1-12]). Retained messages outlive sessions ([MQTT-3.1.2-7]).
        ``durable=False`` is for the broker's own values (``$SYS``): kept out of the durable
        store (they are regenerated at start-up) and, in a cluster, not sent to other nodes
        (each node publishes its own). ``publisher`` is the client id of the client that sent
        it: its own subscriptions with No Local do not get it ([MQTT-3.8.3-3]).

        Returns:
            False when a retained message was not kept because of ``max_retained_messages`` or
            ``max_retained_bytes`` (it is routed all the same; the old one, if any, stays).
        """
        message = Message(topic, payload, qos, retain)
        return self.publish_message(message, durable=durable, publisher=publisher)

    def publish_message(
        self, message: Message, *, durable: bool = True, publisher: str | None = None
    ) -> bool:
        """``publish`` for a message already made (MQTT 5: with its properties)."""
        self.stats.messages_received += 1
        kept = True
        if message.retain:
            kept = self._retain(message, durable)
        self.route(message, from_cluster=not durable, publisher=publisher)
        return kept

    def has_subscribers(self, topic: str) -> bool:
        """Whether any subscription, here or on another node, matches ``topic`` (MQTT 5's
        0x10, No matching subscribers, in PUBACK and PUBREC)."""
        if self.tree.matches(topic):
            return True
        return self.cluster is not None and self.cluster.has_routes(topic)

    def apply_retained(self, topic: str, message: Message | None) -> None:
        """Another node (or this one, through the cluster's log) changed a retained message:
        take it as it is, with no limit check (the publishing node made it) and no store
        write (the store already has it)."""
        old = self.retained.get(topic)
        self.retained.set(topic, message)
        self.retained_count += (message is not None) - (old is not None)
        self.retained_bytes += (retained_cost(message) if message is not None else 0) - (
            retained_cost(old) if old is not None else 0
        )

    def _retain(self, message: Message, durable: bool) -> bool:
        topic = message.topic
        old = self.retained.get(topic)
        new = message if message.payload else None
        if not durable:  # the broker's own $SYS values: few, and not the clients' to limit
            self.retained.set(topic, new)
            return True
        cost = retained_cost(new) if new is not None else 0
        freed = retained_cost(old) if old is not None else 0
        limits = self.limits
        if new is not None and (
            (old is None and self.retained_count >= limits.max_retained_messages)
            or self.retained_bytes - freed + cost > limits.max_retained_bytes
        ):
            self.stats.retained_refused += 1
            return False
        if self.store is not None and (old is not None or new is not None):
            self.store.retained_set(topic, old, new)
        self.retained.set(topic, new)
        self.retained_count += (new is not None) - (old is not None)
        self.retained_bytes += cost - freed
        if new is not None and new.expires_at is not None:
            # An MQTT 5 retained message leaves when its Message Expiry Interval passes.
            self.schedule.call_at(new.expires_at, lambda: self._retained_expired(new))
        return True

    def _retained_expired(self, message: Message) -> None:
        """Remove ``message`` from the retained store if it is still the topic's one."""
        topic = message.topic
        if self.retained.get(topic) is not message:
            return
        if self.store is not None:
            self.store.retained_set(topic, message, None)
        self.retained.set(topic, None)
        self.retained_count -= 1
        self.retained_bytes -= retained_cost(message)

    def route(
        self,
        message: Message,
        *,
        from_cluster: bool = False,
        skip: Container[str] = (),
        publisher: str | None = None,
        groups: Container[str] | None = None,
    ) -> None:
        """Offer ``message`` to every matching session, RETAIN=0 on the wire ([MQTT-3.3.1-9])
        unless a subscription asks for Retain As Published ([MQTT-3.3.1-13]); in a cluster
        also to the other nodes with matching subscribers, unless the message came from one
        of them (``from_cluster``). Sessions in ``skip`` already have it (a cluster's session
        handover); ``publisher``'s subscriptions with No Local are passed over.

        Shared groups: one node of the cluster serves each (the publishing node chooses);
        ``groups`` names the only ones this node serves for a message from another node."""
        elsewhere: Container[str] = ()
        if self.cluster is not None and not from_cluster:
            elsewhere = self.cluster.forward(message)
        matches = self.tree.matches(message.topic)
        if not matches:
            return
        sessions = self.sessions
        published_qos = message.qos
        stats = self.stats
        stats.messages_routed += 1
        topic = message.topic
        delivered = 0  # added to the stats once: a fan-out's loop is the hot one
        for client_id, granted in matches.items():
            if skip and client_id in skip:
                continue
            if granted > 2:  # options beyond a QoS, overlapping ones, or a shared group
                if granted == SHARED and (
                    client_id in elsewhere or (groups is not None and client_id not in groups)
                ):
                    continue  # another node of the cluster serves this group this time
                self._route_special(client_id, granted, message, publisher, skip)
                continue
            session = sessions[client_id]
            if session.may_receive is not None and not session.may_receive(topic):
                continue  # the ACL refuses this delivery (read access)
            result = session.offer(message, granted if granted < published_qos else published_qos)
            if result is OfferResult.SENT or result is OfferResult.QUEUED:
                delivered += 1
            elif result is OfferResult.DROPPED:
                self._dropped(session)
        stats.deliveries += delivered

    def _route_special(
        self,
        key: str,
        value: int,
        message: Message,
        publisher: str | None,
        skip: Container[str],
    ) -> None:
        """Deliver to a subscription with options, a client's overlapping subscriptions, or
        one member of a shared group (``mqttd.subscription``)."""
        if value == SHARED:
            group = self.shared[key]
            qos = message.qos
            sessions = self.sessions

            def can_take(client_id: str) -> int:
                session = sessions[client_id]
                if not session.connected or client_id in skip:
                    return 0
                if qos and (session.queue or len(session.inflight) >= session.window):
                    return 1
                return 1 if session.outbox_bytes > self.limits.max_outbox_bytes else 2

            member = group.pick(can_take)
            if member is not None:
                self._deliver(self.sessions[member], message, group.members[member])
            return
        session = self.sessions[key]
        if value == OVERLAP:
            # One delivery for all of the client's matching subscriptions: the highest QoS
            # ([MQTT-3.3.4-2]), RETAIN as published if any of them asks for it.
            qos = -1
            retain_as_published = 0
            identifiers: list[int] = []
            topic = message.topic
            for topic_filter, options in session.subscriptions.items():
                if topic_filter.startswith(SHARE_PREFIX) or not topic_matches(topic_filter, topic):
                    continue
                if options & NO_LOCAL and key == publisher:
                    continue  # [MQTT-3.8.3-3]
                qos = max(qos, options & 3)
                retain_as_published |= options & RETAIN_AS_PUBLISHED
                if options >> SUBSCRIPTION_ID_SHIFT:
                    identifiers.append(options >> SUBSCRIPTION_ID_SHIFT)
            if qos >= 0:
                # Every matching subscription's identifier ([MQTT-3.3.4-3]), in one message.
                self._deliver(session, message, qos | retain_as_published, tuple(identifiers))
            return
        if value & NO_LOCAL and key == publisher:
            return  # [MQTT-3.8.3-3]
        self._deliver(session, message, value)

    def _deliver(
        self,
        session: Session,
        message: Message,
        options: int,
        subscription_ids: tuple[int, ...] | None = None,
    ) -> None:
        """Offer ``message`` to ``session`` as the subscription ``options`` ask (with its
        Subscription Identifier, or ``subscription_ids`` for several subscriptions)."""
        if session.may_receive is not None and not session.may_receive(message.topic):
            return
        granted = options & 3
        qos = granted if granted < message.qos else message.qos
        retain = message.retain if options & RETAIN_AS_PUBLISHED else False
        if subscription_ids is None:
            identifier = options >> SUBSCRIPTION_ID_SHIFT
            subscription_ids = (identifier,) if identifier else ()
        result = session.offer(message, qos, retain, subscription_ids)
        if result is OfferResult.DROPPED:
            self._dropped(session)
        elif result is not OfferResult.NOT_KEPT:
            self.stats.deliveries += 1

    def _dropped(self, session: Session) -> None:
        stats = self.stats
        stats.messages_dropped += 1
        if not session.queue and session.outbox_bytes > self.limits.max_outbox_bytes:
            stats.dropped_outbox_full += 1  # QoS 0 to an online client that does not read
        else:
            stats.dropped_queue_full += 1
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
        """Add or replace subscriptions; returns the granted QoS of each, in order.

        Each subscription is a filter and its options (``mqttd.subscription``; a plain QoS for
        MQTT 3.1.1). Every requested QoS is granted as asked (this broker supports QoS 0-2,
        [MQTT-3.8.4-5], [MQTT-3.9.3-1]); an identical filter replaces the old subscription
        ([MQTT-3.8.4-3]). Retained messages are sent by ``deliver_retained`` after the SUBACK.
        """
        codes = []
        client_id = session.client_id
        for topic_filter, options in subscriptions:
            self._add_subscription(session, topic_filter, options)
            if session.store is not None:
                session.store.subscription_set(client_id, topic_filter, options)
            codes.append(options & 3)
        return codes

    def _add_subscription(self, session: Session, topic_filter: str, options: int) -> None:
        """Record one subscription in the session, the tree (or its shared group) and the
        cluster's routes."""
        is_new = topic_filter not in session.subscriptions
        session.subscriptions[topic_filter] = options
        client_id = session.client_id
        shared = parse_shared(topic_filter)
        if shared is None:
            self.tree.subscribe(topic_filter, client_id, options)
        else:
            group_name, inner = shared
            key = shared_key(group_name, inner)
            group = self.shared.get(key)
            if group is None:
                group = self.shared[key] = SharedGroup(group_name, inner)
                self.tree.subscribe(inner, key, SHARED)
            group.add(client_id, options)
        if is_new and self.cluster is not None:
            # A shared subscription's route is the whole $share/ filter: the other nodes
            # learn the group, and pick one node per group per message.
            self.cluster.filter_added(topic_filter)

    def _remove_subscription(self, client_id: str, topic_filter: str) -> None:
        """Undo ``_add_subscription`` (the caller removes it from the session)."""
        shared = parse_shared(topic_filter)
        if shared is None:
            self.tree.unsubscribe(topic_filter, client_id)
        else:
            group_name, inner = shared
            key = shared_key(group_name, inner)
            group = self.shared.get(key)
            if group is not None:
                group.remove(client_id)
                if not group.members:
                    del self.shared[key]
                    self.tree.unsubscribe(inner, key)
        if self.cluster is not None:
            self.cluster.filter_removed(topic_filter)

    def deliver_retained(
        self,
        session: Session,
        topic_filter: str,
        granted_qos: int,
        subscription_ids: tuple[int, ...] = (),
    ) -> None:
        """Send the retained messages matching a new subscription, RETAIN=1 ([MQTT-3.3.1-6]).

        They go lazily, paced by the client (``Session.add_retained``): a filter matching
        200,000 retained messages is neither cut at the outbox limit nor walked in one go.
        Messages retained after this call reach the subscriber as live messages instead.
        """
        retained = self.retained

        def source() -> Iterator[tuple[str, Message]]:
            return retained.iter_matching(topic_filter)

        validate_topic_filter(topic_filter)
        if topic_filter.startswith(SHARE_PREFIX):
            return  # a shared subscription gets no retained messages, as with Mosquitto
        ready = self.cluster.retained_ready() if self.cluster is not None else None
        session.add_retained(
            RetainedBatch(topic_filter, granted_qos, source, ready, subscription_ids)
        )

    def unsubscribe(self, session: Session, topic_filters: Iterable[str]) -> None:
        """Remove subscriptions by exact filter string ([MQTT-3.10.4-1]); unknown ones are fine.

        Messages already in flight or queued for the session are still delivered
        ([MQTT-3.10.4-3]).
        """
        for topic_filter in topic_filters:
            if session.subscriptions.pop(topic_filter, None) is not None:
                self._remove_subscription(session.client_id, topic_filter)
                session.cancel_retained(topic_filter)  # not yet sent: no longer wanted
                if session.store is not None:
                    session.store.subscription_removed(session.client_id, topic_filter)
