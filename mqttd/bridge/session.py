"""A bridge's side in the local broker: a persistent session it owns, pure and synchronous.

Theory of operation: the broker routes a message to a bridge exactly as to a client, into a
``Session`` subscribed to the bridge's ``out`` filters. That session is persistent (in the
durable store when there is one), so what is queued for the remote while it is away survives a
restart of this broker, bounded by the bridge's own ``max_queued_messages`` /
``max_queued_bytes``; its in-flight window and its QoS 1/2 state are a client session's, so the
link to the remote acknowledges locally (PUBACK, PUBCOMP into the session) only what the remote
has acknowledged. Even the acknowledgements of what the remote sends come out of it: a QoS 2
message from the remote is PUBREC'd by ``receive_qos2`` and remembered durably until PUBREL,
as a client's would be.

``BridgeSession`` differs from a client's session in four ways, all in ``offer``:

* no loop: while the bridge publishes a message it received from the remote
  (``publishing``), its own session refuses it, so it does not go back where it came from;
* the topic is renamed for the remote (``TopicMap.to_remote``) before the message is queued,
  so what is stored and later sent is already the remote's name;
* RETAIN is passed on as the publisher set it (Mosquitto does the same for bridges), so a
  retained message published here is retained on the remote too;
* the QoS is capped at the remote's MQTT 5 Maximum QoS (``limit_qos``, which also caps what
  is already queued or in flight when a remote announces it).

An MQTT 5 link makes the session write MQTT 5 PUBLISH packets (``Session.peer``), so the
message's properties go with it; over MQTT 3.1.1 they are left behind.

Its client id starts with ``\\x1f``, a control character no client can send in a CONNECT (the
decoder refuses it, section 1.5.3), so no client can take a bridge's session over.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from typing import TYPE_CHECKING

import structlog

from mqttd.config import BridgeConfig, LimitsConfig
from mqttd.message import Message
from mqttd.session import OfferResult, QueueEntry, RetainedBatch, Session

if TYPE_CHECKING:
    from mqttd.bridge.topics import TopicMap
    from mqttd.broker import Broker

__all__ = [
    "SESSION_PREFIX",
    "BridgeSession",
    "bridge_limits",
    "discard_unconfigured",
    "open_bridge_session",
    "session_id",
]

log = structlog.get_logger("mqttd.bridge")

#: The local client id of bridge ``name`` is ``SESSION_PREFIX + name``.
SESSION_PREFIX = "\x1fbridge/"


def session_id(name: str) -> str:
    """The client id of the local session of bridge ``name``."""
    return SESSION_PREFIX + name


def bridge_limits(limits: LimitsConfig, config: BridgeConfig) -> LimitsConfig:
    """The broker's limits with the bridge's own window and queue bounds, where it sets them."""
    changes = {
        key: value
        for key in ("max_inflight_messages", "max_queued_messages", "max_queued_bytes")
        if (value := getattr(config, key)) is not None
    }
    return dataclasses.replace(limits, **changes) if changes else limits


class BridgeSession(Session):
    """The local session of one bridge (see the module docstring).

    Args:
        client_id: ``session_id(name)``.
        limits: ``bridge_limits(...)``.
        topics: the bridge's topic mapping.
    """

    __slots__ = ("max_qos", "publishing", "refused", "too_large", "topics")

    def __init__(self, client_id: str, limits: LimitsConfig, topics: TopicMap) -> None:
        super().__init__(client_id, clean_session=False, limits=limits)
        self.topics = topics
        #: the bridge is publishing a message from the remote: not to be sent back there
        self.publishing = False
        #: the highest QoS the remote takes (its MQTT 5 Maximum QoS; 2 until it says less)
        self.max_qos = 2
        #: messages an MQTT 5 remote refused (PUBACK/PUBREC 0x80 or more), and messages
        #: dropped because they were larger than its Maximum Packet Size
        self.refused = 0
        self.too_large = 0

    # A bridge's session lives as long as the bridge is configured: it never looks old to
    # ``persistent_client_expiration``, however long the remote has been away.
    @property
    def last_seen(self) -> float:
        """Always now."""
        return time.time()

    @last_seen.setter
    def last_seen(self, value: float) -> None:
        pass

    def offer(
        self,
        message: Message,
        qos: int,
        retain: bool = False,
        subscription_ids: tuple[int, ...] = (),
    ) -> OfferResult:
        """Queue or send ``message`` toward the remote, renamed, with RETAIN as published, at
        no more than the remote's Maximum QoS.

        Returns:
            ``NOT_KEPT`` for the bridge's own incoming message (no loop) and for a topic no
            ``out`` table renames; otherwise what ``Session.offer`` did.
        """
        if self.publishing:
            return OfferResult.NOT_KEPT
        if qos > self.max_qos:
            qos = self.max_qos
        topic = self.topics.to_remote(message.topic)
        if topic is None:
            return OfferResult.NOT_KEPT
        if topic != message.topic:
            message = Message(
                topic,
                message.payload,
                message.qos,
                message.retain,
                properties=message.properties,
                expires_at=message.expires_at,
            )
        return super().offer(message, qos, retain or message.retain, subscription_ids)

    def limit_qos(self, max_qos: int) -> None:
        """The remote takes QoS ``max_qos`` at most ([MQTT-3.2.2-11]): from now on, and for what
        waits in the queue or in flight (not yet released) at a higher QoS. Called before the
        session attaches, so the re-sends already go at the new QoS.

        A QoS 1/2 message that must now go at QoS 0 leaves the store (QoS 0 is not kept), and
        one in flight goes back to the head of the queue. Otherwise the store keeps the QoS a
        message was queued at: the cap is applied again at every connection.
        """
        self.max_qos = max_qos
        if max_qos == 2:
            return
        demoted: list[tuple[Message, int, bool, int, tuple[int, ...]]] = []
        for packet_id, outgoing in list(self.inflight.items()):
            if outgoing.qos <= max_qos or outgoing.released:
                continue
            if max_qos:
                outgoing.qos = max_qos
            else:
                del self.inflight[packet_id]
                self._forget(outgoing.seq, outgoing.message)
                demoted.append((outgoing.message, 0, outgoing.retain, outgoing.seq, ()))
        queue: deque[QueueEntry] = deque(demoted)
        for entry in self.queue:
            if not isinstance(entry, RetainedBatch) and entry[1] > max_qos:
                message, _, retain, seq, ids = entry
                if not max_qos:
                    self._forget(seq, message)
                entry = (message, max_qos, retain, seq, ids)
            queue.append(entry)
        self.queued_bytes += sum(message.size for message, *_ in demoted)
        if queue:
            self.queue = queue

    def _forget(self, seq: int, message: Message) -> None:
        """A delivery leaves the store (it goes at QoS 0 now)."""
        store = self.store
        if store is not None:
            store.delivery_removed(self.client_id, seq, message)
            self.store_mark = store.recorded


def open_bridge_session(broker: Broker, config: BridgeConfig, topics: TopicMap) -> BridgeSession:
    """The bridge's session in ``broker``: the stored one (restored from the durable store at
    start-up) with its queued and in-flight messages, or a new one; subscribed to exactly the
    bridge's ``out`` filters now.

    Args:
        broker: the local broker, after ``Broker.restore``.
        config: the bridge.
        topics: its topic mapping.

    Returns:
        The session, registered in ``broker.sessions``.
    """
    client_id = session_id(config.name)
    session = BridgeSession(client_id, bridge_limits(broker.limits, config), topics)
    session.store = broker.store
    old = broker.sessions.get(client_id)
    if old is not None:
        # Loaded by Broker.restore as a client's session: take its messages over, in order.
        deliveries: list[tuple[int, Message, int, bool, int | None, bool]] = [
            (out.seq, out.message, out.qos, out.retain, packet_id, out.released)
            for packet_id, out in old.inflight.items()
        ]
        for entry in old.queue:
            if not isinstance(entry, RetainedBatch):
                message, qos, retain, seq, _ = entry
                deliveries.append((seq, message, qos, retain, None, False))
        deliveries.sort(key=lambda delivery: delivery[0])
        session.restore(deliveries, set(old.awaiting_release))
        session.subscriptions = dict(old.subscriptions)  # the tree already has them
        session.store_mark = old.store_mark
    elif broker.store is not None:
        broker.store.session_saved(client_id, None)
    broker.sessions[client_id] = session
    wanted = topics.out_subscriptions
    stale = [f for f in session.subscriptions if f not in wanted]
    if stale:
        broker.unsubscribe(session, stale)
    changed = [(f, qos) for f, qos in wanted.items() if session.subscriptions.get(f) != qos]
    if changed:
        broker.subscribe(session, changed)
    return session


def discard_unconfigured(broker: Broker, names: set[str]) -> None:
    """Discard the stored sessions of bridges no longer configured, with what they queued."""
    for client_id in [c for c in broker.sessions if c.startswith(SESSION_PREFIX)]:
        name = client_id[len(SESSION_PREFIX) :]
        if name not in names:
            session = broker.sessions[client_id]
            log.warning(
                "bridge_session_discarded",
                bridge=name,
                reason="not_configured",
                discarded_messages=len(session.inflight) + len(session.queue),
            )
            broker.discard_session(client_id)
