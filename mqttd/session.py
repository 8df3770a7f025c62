"""A client's session state (MQTT 3.1.1 section 4.1), pure and synchronous.

Theory of operation: the broker owns one ``Session`` per client id. A connection attaches to it
after CONNECT and detaches when the network connection ends; a persistent session
(CleanSession=0) outlives the connection and keeps collecting QoS 1/2 messages.

Outgoing deliveries go through ``offer()``: a message is written to the ``outbox`` (a list of byte
chunks the connection's writer drains) when the client is online and the in-flight window has
room, queued when it does not, and dropped -- counted, and reported once per episode -- when the
queue is full. Publishers never wait for subscribers. The connection installs a ``wake`` callback
that is called when the empty outbox gains bytes (until the connection takes them all, it knows
there is output: one call per flush, not one per packet).

The outbox counts what it really holds: control packets (acknowledgements, PINGRESP) are copied
into one growing ``bytearray`` at its tail instead of each being a Python object of its own, so a
client that floods PINGREQ and never reads costs ``max_outbox_bytes``, not ten times that; a
delivery's chunks (cached header, shared packet-id bytes, payload) are references shared with
the other subscribers, counted with their list slots.

Retained messages for a new subscription are a ``RetainedBatch`` in the queue: a lazy walk of
the retained store, drained in steps of at most ``RETAINED_STEP`` messages while the window and
half the outbox have room. A subscription matching 200,000 retained messages is delivered
whole, paced by what the client reads, and no single step holds the event loop for long. When a
step ends for lack of budget or outbox room, ``resume_wanted`` is set and the connection calls
``resume()`` once it has written what is there.

Every queued or in-flight message is checked against ``may_receive`` -- the read ACL of the
connection attached now -- when it is sent, not only when it was queued: an ACL reload, or
another user resuming the session, can only take messages away.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from enum import IntEnum
from typing import TYPE_CHECKING, Protocol, cast

from mqttd.codec.encoder import encode
from mqttd.codec.packets import Puback, Pubcomp, Pubrec, Pubrel, ReasonCode
from mqttd.config import LimitsConfig
from mqttd.errors import ProtocolViolation
from mqttd.message import Message

if TYPE_CHECKING:
    from mqttd.store import Store

_PUBACK = b"\x40\x02"
_PUBREC = b"\x50\x02"
_PUBREL = b"\x62\x02"  # PUBREL fixed-header flags are 0010 ([MQTT-3.6.1-1])
_PUBCOMP = b"\x70\x02"


#: the shared empty ``awaiting_release`` until a QoS 2 message arrives (an empty set is 216 B)
_NONE_AWAITING = cast("set[int]", frozenset())

#: Control packets (acknowledgements, PINGRESP) shorter than this are copied into the outbox's
#: tail ``bytearray``; longer ones are kept by reference.
COALESCE_BYTES = 512
#: What one referenced chunk costs an outbox beyond its bytes (a list slot), counted against
#: ``max_outbox_bytes`` so the cap holds for tiny deliveries too.
CHUNK_SLOT_BYTES = 8
#: Most retained messages one ``_pump`` step sends: bounds how long a subscription matching a
#: huge retained set holds the event loop.
RETAINED_STEP = 256


class Peer:
    """How an MQTT 5 connection takes PUBLISH packets: what its CONNECT asked for, and the
    Topic Aliases this server gave it (they live as long as the network connection,
    [MQTT-3.3.2-7]).

    Args:
        maximum_packet_size: the client's Maximum Packet Size (0: no limit); a PUBLISH larger
            than it is never sent ([MQTT-3.1.2-24], [MQTT-3.1.2-25]).
        topic_alias_maximum: how many Topic Aliases the server may use (0: none,
            [MQTT-3.1.2-26]); the first topics sent get one, in turn.
    """

    __slots__ = ("aliases", "maximum_packet_size", "plain", "topic_alias_maximum")

    def __init__(self, maximum_packet_size: int = 0, topic_alias_maximum: int = 0) -> None:
        self.maximum_packet_size = maximum_packet_size
        self.topic_alias_maximum = topic_alias_maximum
        self.aliases: dict[str, int] = {}
        #: no alias to give and no size to check: a delivery with nothing of its own is the
        #: message's cached MQTT 5 pieces, and ``Session`` writes them without ``chunks`` (a
        #: subclass that changes ``chunks`` sets this False)
        self.plain = not (topic_alias_maximum or maximum_packet_size)

    def chunks(
        self,
        message: Message,
        qos: int,
        retain: bool,
        dup: bool,
        packet_id: int,
        subscription_ids: tuple[int, ...],
    ) -> tuple[bytes, ...] | None:
        """The PUBLISH for this connection, or None when it is larger than the client takes."""
        if self.plain:
            # No alias to give, no size to check: the common case, kept short.
            return message.publish_chunks5(
                qos,
                retain,
                dup,
                packet_id,
                subscription_ids=subscription_ids,
                now=time.time() if message.expires_at is not None else 0.0,
            )
        alias = 0
        send_topic = True
        new_alias = False
        if self.topic_alias_maximum:
            alias = self.aliases.get(message.topic, 0)
            if alias:
                send_topic = False
            elif len(self.aliases) < self.topic_alias_maximum:
                alias = len(self.aliases) + 1  # [MQTT-3.3.2-10]: 1 .. the client's maximum
                new_alias = True
        chunks = message.publish_chunks5(
            qos,
            retain,
            dup,
            packet_id,
            subscription_ids=subscription_ids,
            alias=alias,
            send_topic=send_topic,
            now=time.time() if message.expires_at is not None else 0.0,
        )
        if self.maximum_packet_size and sum(map(len, chunks)) > self.maximum_packet_size:
            return None
        if new_alias:
            self.aliases[message.topic] = alias
        return chunks


class Ready(Protocol):
    """Something a retained batch may have to wait for (a cluster barrier; a trio.Event)."""

    def is_set(self) -> bool:
        """Whether it has happened."""


class RetainedBatch:
    """The retained messages matching a new subscription, not yet sent ([MQTT-3.3.1-6]).

    Args:
        topic_filter: the subscription's filter.
        qos: the QoS granted; each message goes at min(its QoS, this) ([MQTT-3.8.4-6]).
        source: makes the iterator of (topic, message) pairs (``RetainStore.iter_matching``),
            called once the batch may start; it skips messages retained after that moment,
            which reach the client as live messages.
        ready: when set, nothing is sent before ``ready.is_set()`` (in a cluster: this node
            has applied every retained change made anywhere before the SUBSCRIBE).
    """

    __slots__ = ("_next", "_source", "_start", "qos", "ready", "subscription_ids", "topic_filter")

    def __init__(
        self,
        topic_filter: str,
        qos: int,
        source: Callable[[], Iterator[tuple[str, Message]]],
        ready: Ready | None = None,
        subscription_ids: tuple[int, ...] = (),
    ) -> None:
        self.topic_filter = topic_filter
        self.qos = qos
        #: the subscription's identifier, sent with each message (MQTT 5, [MQTT-3.3.4-3])
        self.subscription_ids = subscription_ids
        self._start = source
        self._source: Iterator[tuple[str, Message]] | None = None
        self.ready = ready
        self._next: tuple[str, Message] | None = None

    def peek(self) -> tuple[str, Message] | None:
        """The next message to send, or None when the batch is done."""
        if self._next is None:
            if self._source is None:
                self._source = self._start()
            self._next = next(self._source, None)
        return self._next

    def advance(self) -> None:
        """The peeked message was handled."""
        self._next = None


#: A queue entry: a message waiting for the window -- (message, QoS, RETAIN, seq,
#: subscription identifiers) -- or a batch of retained messages.
QueueEntry = tuple[Message, int, bool, int, tuple[int, ...]] | RetainedBatch

#: The shared empty queue of every session that never queued anything (an empty deque is
#: ~600 B); swapped for a real deque on the first entry.
_NO_QUEUE = cast("deque[QueueEntry]", ())


class OfferResult(IntEnum):
    """What ``Session.offer`` did with a message."""

    SENT = 0
    QUEUED = 1
    DROPPED = 2  # a limit was hit: counted, and logged once per episode
    NOT_KEPT = 3  # QoS 0 for an offline client (policy), an expired message, one too large


class Outgoing:
    """An outgoing QoS 1/2 message in flight, awaiting PUBACK, PUBREC or (released) PUBCOMP."""

    __slots__ = ("message", "qos", "released", "retain", "seq", "subscription_ids")

    def __init__(
        self,
        message: Message,
        qos: int,
        retain: bool,
        seq: int,
        subscription_ids: tuple[int, ...] = (),
    ) -> None:
        self.message = message
        self.qos = qos
        self.retain = retain
        self.seq = seq  # the delivery's key in the durable store
        self.released = False  # QoS 2 only: PUBREC received and PUBREL sent
        self.subscription_ids = subscription_ids


class Session:
    """Subscriptions, in-flight and queued messages, and QoS 2 receive state of one client."""

    __slots__ = (
        "_dropping",
        "_next_packet_id",
        "_next_seq",
        "awaiting_release",
        "clean_session",
        "client_id",
        "connected",
        "dropped",
        "expiry_interval",
        "inflight",
        "last_seen",
        "limits",
        "may_receive",
        "on_overflow",
        "outbox",
        "outbox_bytes",
        "owned",
        "owner",
        "peer",
        "queue",
        "queued_bytes",
        "resume_wanted",
        "store",
        "store_mark",
        "subscriptions",
        "traffic",
        "wake",
        "window",
    )

    def __init__(
        self,
        client_id: str,
        *,
        clean_session: bool,
        limits: LimitsConfig,
        traffic: list[int] | None = None,
    ) -> None:
        self.client_id = client_id
        #: the broker's count of packets and bytes queued for clients (``BrokerStats.traffic_out``:
        #: ``[type]`` packets, ``[16 + type]`` bytes, ``[32]`` PUBLISH payload bytes)
        self.traffic = traffic if traffic is not None else [0] * 33
        self.clean_session = clean_session
        #: MQTT 5 Session Expiry Interval in seconds (None: never; persistent MQTT 3.1.1
        #: sessions too); a session with ``clean_session`` ends with its connection instead
        self.expiry_interval: int | None = None
        self.limits = limits
        #: most QoS 1/2 deliveries in flight at once: max_inflight_messages, or less when an
        #: MQTT 5 client's Receive Maximum asks for less
        self.window = limits.max_inflight_messages
        #: topic filter -> subscription options (``mqttd.subscription``; for MQTT 3.1.1 the
        #: granted QoS), mirrored in the broker's TopicTree
        self.subscriptions: dict[str, int] = {}
        #: packet id -> in-flight outgoing message, in send order ([MQTT-4.6.0-1])
        self.inflight: dict[int, Outgoing] = {}
        #: messages waiting for a window slot (or for the client to come back)
        #: (msg, qos, retain, seq) waiting for the window, and retained batches; the shared
        #: empty tuple until the first entry, because an idle session should not pay for an
        #: empty deque (~600 B)
        self.queue: deque[QueueEntry] = _NO_QUEUE
        self.queued_bytes = 0
        #: incoming QoS 2 packet ids PUBREC'd and awaiting PUBREL ([MQTT-4.3.3-2])
        self.awaiting_release: set[int] = _NONE_AWAITING
        #: byte chunks for the connection's writer, in order; small writes are coalesced into a
        #: ``bytearray`` at the tail
        self.outbox: list[bytes | bytearray] = []
        self.outbox_bytes = 0
        #: a retained batch stopped for lack of step budget or outbox room: call ``resume()``
        #: once the outbox has been written
        self.resume_wanted = False
        #: the user name that created this persistent session (None = anonymous), and whether
        #: that is known (sessions stored before owners were recorded are not)
        self.owner: str | None = None
        self.owned = True
        self.connected = False
        #: the attached connection's MQTT 5 needs (None: MQTT 3.1.1 or 3.1, or offline)
        self.peer: Peer | None = None
        self.wake: Callable[[], None] | None = None
        self.dropped = 0
        self._dropping = False
        self._next_packet_id = 1
        self._next_seq = 1
        #: the durable store, for persistent sessions when one is configured
        self.store: Store | None = None
        #: the store's ``recorded`` after this session's last change: output written after it
        #: (a delivery, a PUBREL, a PUBREC) waits until the store has committed that far
        self.store_mark = 0
        self.last_seen = 0.0  # wall-clock time of the last connect/disconnect
        #: the client's read ACL check (None = may receive everything it subscribes to)
        self.may_receive: Callable[[str], bool] | None = None
        #: called when a message is dropped for this online client (slow_consumer="disconnect")
        self.on_overflow: Callable[[], None] | None = None

    # -- connection lifecycle ---------------------------------------------------------------

    def attach(self, wake: Callable[[], None]) -> None:
        """A network connection takes this session over; resend everything unacknowledged.

        Unacknowledged PUBLISH packets go again with DUP=1 and unreleased QoS 2 messages get
        their PUBREL again, in the original order ([MQTT-4.4.0-1], [MQTT-3.3.1-1],
        [MQTT-4.6.0-1]).
        """
        self.connected = True
        self.wake = wake
        may_receive = self.may_receive
        refused = []
        for packet_id, outgoing in self.inflight.items():
            if outgoing.released:
                self._write(_PUBREL + packet_id.to_bytes(2, "big"))
            elif may_receive is not None and not may_receive(outgoing.message.topic):
                refused.append(packet_id)  # the reader attached now may not read it
            else:
                chunks = self._chunks(
                    outgoing.message,
                    outgoing.qos,
                    outgoing.retain,
                    True,
                    packet_id,
                    outgoing.subscription_ids,
                )
                if chunks is None:
                    refused.append(packet_id)  # too large for the client now: as if sent
                else:
                    self._write_chunks(chunks)
        for packet_id in refused:
            outgoing = self.inflight.pop(packet_id)
            if self.store is not None:
                self.store.delivery_removed(self.client_id, outgoing.seq, outgoing.message)
                self.store_mark = self.store.recorded
        self._pump()

    def detach(self) -> None:
        """The network connection ended. Unsent bytes are discarded; QoS 1/2 state is kept."""
        self.connected = False
        self.wake = None
        self.peer = None
        self.on_overflow = None
        self.outbox.clear()
        self.outbox_bytes = 0
        self.resume_wanted = False

    def take_outbox(self) -> bytes:
        """Everything queued for the wire, as one buffer (the writer's single ``send_all``)."""
        outbox = self.outbox
        data = bytes(outbox[0]) if len(outbox) == 1 else b"".join(outbox)
        outbox.clear()
        self.outbox_bytes = 0
        return data

    def unsend(self, data: bytes) -> None:
        """Put back bytes the transport did not take, to go first on the next write."""
        self.outbox.insert(0, data)
        self.outbox_bytes += len(data)

    def resume(self) -> None:
        """Carry on with a retained batch after the outbox was written (``resume_wanted``)."""
        self.resume_wanted = False
        self._pump()

    # -- writing ----------------------------------------------------------------------------

    def _append(self, data: bytes) -> None:
        """Add ``data`` to the outbox: small writes into the tail ``bytearray``."""
        outbox = self.outbox
        if len(data) < COALESCE_BYTES:
            if outbox and outbox[-1].__class__ is bytearray:
                outbox[-1] += data
            else:
                outbox.append(bytearray(data))
        else:
            outbox.append(data)
        self.outbox_bytes += len(data)

    def _write(self, data: bytes) -> None:
        """Queue one control packet (never a PUBLISH: those go through ``_write_chunks``)."""
        first = not self.outbox
        self._append(data)
        kind = data[0] >> 4
        traffic = self.traffic
        traffic[kind] += 1
        traffic[16 + kind] += len(data)
        if first and self.wake is not None:
            self.wake()

    def _write_chunks(self, chunks: tuple[bytes, ...]) -> None:
        """Queue one PUBLISH, as ``Message.publish_chunks`` made it (the payload last)."""
        # A delivery's chunks (header, packet id, payload) are shared objects: the outbox
        # keeps references, and counts each list slot besides the bytes.
        outbox = self.outbox
        first = not outbox
        size = 0
        for chunk in chunks:
            outbox.append(chunk)
            size += len(chunk)
        self.outbox_bytes += size + CHUNK_SLOT_BYTES * len(chunks)
        traffic = self.traffic
        traffic[3] += 1
        traffic[19] += size
        traffic[32] += len(chunks[-1])
        if first and self.wake is not None:
            self.wake()

    def _write_publish0(self, header: bytes, payload: bytes) -> None:
        """``_write_chunks`` for the most frequent delivery, an MQTT 3.1.1 PUBLISH at QoS 0:
        two chunks, no tuple (in-process core benchmark: 287 -> 219 ns a delivery)."""
        outbox = self.outbox
        first = not outbox
        outbox.append(header)
        outbox.append(payload)
        size = len(payload)
        wire = len(header) + size
        self.outbox_bytes += wire + 2 * CHUNK_SLOT_BYTES
        traffic = self.traffic
        traffic[3] += 1
        traffic[19] += wire
        traffic[32] += size
        if first and self.wake is not None:
            self.wake()

    def _chunks(
        self,
        message: Message,
        qos: int,
        retain: bool,
        dup: bool,
        packet_id: int,
        subscription_ids: tuple[int, ...],
    ) -> tuple[bytes, ...] | None:
        """The PUBLISH delivering ``message`` on the connection attached now, or None when
        it is larger than an MQTT 5 client's Maximum Packet Size ([MQTT-3.1.2-25])."""
        peer = self.peer
        if peer is None:
            return message.publish_chunks(qos, retain, dup, packet_id)
        return peer.chunks(message, qos, retain, dup, packet_id, subscription_ids)

    def send_packet(self, data: bytes) -> None:
        """Queue an encoded control packet (CONNACK, SUBACK, PINGRESP, ...) for the client."""
        self._write(data)

    # -- outgoing messages ------------------------------------------------------------------

    def offer(
        self,
        message: Message,
        qos: int,
        retain: bool = False,
        subscription_ids: tuple[int, ...] = (),
    ) -> OfferResult:
        """Deliver ``message`` to this client at ``qos`` (already min(published, granted)).

        Args:
            retain: the RETAIN flag on the wire (1 only for retained messages sent because of a
                new subscription, [MQTT-3.3.1-8], or as published, [MQTT-3.3.1-13]).
            subscription_ids: MQTT 5 Subscription Identifiers of the matching subscriptions.
        """
        if message.expires_at is not None and message.expired():
            return OfferResult.NOT_KEPT  # [MQTT-3.3.2-5]
        if not self.connected:
            if qos == 0:
                # QoS 0 is not kept for offline clients: the spec's MAY, Mosquitto's default
                # (queue_qos0_messages false).
                return OfferResult.NOT_KEPT
        elif not self.queue and (qos == 0 or len(self.inflight) < self.window):
            if qos == 0:
                if self.outbox_bytes > self.limits.max_outbox_bytes:
                    return self._drop()
                peer = self.peer
                if peer is None:
                    self._write_publish0(message.header(0, retain), message.payload)
                elif peer.plain and not subscription_ids and message.expires_at is None:
                    # MQTT 5 with nothing per delivery: the same two chunks, the publisher's
                    # properties inside the cached header (fan-out 1 -> 1,000: 1.69 -> 1.32 us
                    # of broker CPU a delivery).
                    self._write_publish0(message.header5_qos0(retain), message.payload)
                else:
                    chunks = peer.chunks(message, 0, retain, False, 0, subscription_ids)
                    if chunks is None:
                        return OfferResult.NOT_KEPT  # too large for the client
                    self._write_chunks(chunks)
            elif not self._send_inflight(message, qos, retain, 0, subscription_ids):
                return OfferResult.NOT_KEPT
            return OfferResult.SENT
        # Online with a full window (or messages already waiting: keep their order), or offline.
        if (
            len(self.queue) >= self.limits.max_queued_messages
            or self.queued_bytes + message.size > self.limits.max_queued_bytes
        ):
            return self._drop()
        seq = self._next_seq
        self._next_seq += 1
        if self.queue is _NO_QUEUE:
            self.queue = deque()
        self.queue.append((message, qos, retain, seq, subscription_ids))
        self.queued_bytes += message.size
        if self.store is not None and qos:
            self.store.delivery_added(
                self.client_id, seq, message, qos, retain, None, subscription_ids
            )
            self.store_mark = self.store.recorded
        return OfferResult.QUEUED

    def _drop(self) -> OfferResult:
        self.dropped += 1
        return OfferResult.DROPPED

    def drop_episode_started(self) -> bool:
        """True exactly once per run of drops, so the caller logs once, not per message."""
        if self._dropping:
            return False
        self._dropping = True
        return True

    def _allocate_packet_id(self) -> int:
        packet_id = self._next_packet_id
        inflight = self.inflight
        while packet_id in inflight:  # [MQTT-2.3.1-2] never reuse an id still in use
            packet_id = packet_id % 65535 + 1
        self._next_packet_id = packet_id % 65535 + 1
        return packet_id

    def _send_inflight(
        self,
        message: Message,
        qos: int,
        retain: bool,
        seq: int = 0,
        subscription_ids: tuple[int, ...] = (),
    ) -> bool:
        """Send a QoS 1/2 delivery into the window; False when it was larger than the client
        takes, which ends it as if it had been sent ([MQTT-3.1.2-25])."""
        packet_id = self._allocate_packet_id()
        store = self.store
        chunks = self._chunks(message, qos, retain, False, packet_id, subscription_ids)
        if chunks is None:
            if seq and store is not None:  # it was queued, so stored
                store.delivery_removed(self.client_id, seq, message)
                self.store_mark = store.recorded
            return False
        if not seq:  # straight to the window, never queued
            seq = self._next_seq
            self._next_seq += 1
            if store is not None:
                store.delivery_added(
                    self.client_id, seq, message, qos, retain, packet_id, subscription_ids
                )
                self.store_mark = store.recorded
        elif store is not None:
            store.delivery_sent(self.client_id, seq, packet_id)
            self.store_mark = store.recorded
        self.inflight[packet_id] = Outgoing(message, qos, retain, seq, subscription_ids)
        self._write_chunks(chunks)
        return True

    def _pump(self) -> None:
        """Move queued messages into the window while there is room and a connection.

        Each is checked against ``may_receive`` now, when it is sent: what the reader attached
        now may not read is dropped (and removed from the store).
        """
        queue = self.queue
        limit = self.window
        may_receive = self.may_receive
        while queue and self.connected:
            entry = queue[0]
            if entry.__class__ is RetainedBatch:
                if not self._pump_retained(entry):
                    break
                queue.popleft()
                continue
            message, qos, retain, seq, subscription_ids = entry  # type: ignore[misc]
            if qos and len(self.inflight) >= limit:
                break
            queue.popleft()
            self.queued_bytes -= message.size
            if (may_receive is not None and not may_receive(message.topic)) or (
                message.expires_at is not None and message.expired()  # [MQTT-3.3.2-5]
            ):
                if qos and self.store is not None:
                    self.store.delivery_removed(self.client_id, seq, message)
                    self.store_mark = self.store.recorded
                continue
            if qos:
                self._send_inflight(message, qos, retain, seq, subscription_ids)
            else:
                chunks = self._chunks(message, 0, retain, False, 0, subscription_ids)
                if chunks is not None:
                    self._write_chunks(chunks)
        if not queue:
            self._dropping = False

    def _pump_retained(self, batch: RetainedBatch) -> bool:
        """Send one step of a retained batch, RETAIN=1 ([MQTT-3.3.1-8]); True once it is done."""
        ready = batch.ready
        if ready is not None:
            if not ready.is_set():
                self.resume_wanted = True  # the connection waits for ``blocked_on``, then resumes
                return False
            batch.ready = None
        limit = self.window
        room = self.limits.max_outbox_bytes // 2
        may_receive = self.may_receive
        budget = RETAINED_STEP
        while (item := batch.peek()) is not None:
            topic, message = item
            qos = message.qos if message.qos < batch.qos else batch.qos
            if qos and len(self.inflight) >= limit:
                return False  # the client's PUBACKs/PUBCOMPs pump again
            if not budget or self.outbox_bytes >= room:
                self.resume_wanted = True  # the connection resumes once it has written
                return False
            batch.advance()
            if (may_receive is not None and not may_receive(topic)) or (
                message.expires_at is not None and message.expired()
            ):
                continue
            budget -= 1
            if qos:
                self._send_inflight(message, qos, True, 0, batch.subscription_ids)
            else:
                chunks = self._chunks(message, 0, True, False, 0, batch.subscription_ids)
                if chunks is not None:
                    self._write_chunks(chunks)
        return True

    def add_retained(self, batch: RetainedBatch) -> None:
        """Queue the retained messages of a new subscription, replacing any batch of the same
        filter not yet sent ([MQTT-3.8.4-3]: a repeated subscription re-sends them)."""
        self.cancel_retained(batch.topic_filter)
        if self.queue is _NO_QUEUE:
            self.queue = deque()
        self.queue.append(batch)
        if len(self.queue) == 1:
            self._pump()

    def cancel_retained(self, topic_filter: str) -> None:
        """Drop the unsent retained messages of ``topic_filter`` (it was unsubscribed)."""
        queue = self.queue
        if not queue:
            return
        for entry in [e for e in queue if e.__class__ is RetainedBatch]:
            if entry.topic_filter == topic_filter:
                queue.remove(entry)
        self.resume_wanted = False
        self._pump()  # what waited behind the cancelled batch may go now

    @property
    def blocked_on(self) -> Ready | None:
        """What the retained batch at the head of the queue waits for, if it waits."""
        queue = self.queue
        if queue:
            head = queue[0]
            if head.__class__ is RetainedBatch and head.ready is not None:
                return head.ready
        return None

    def retained_pending(self) -> int:
        """How many subscriptions still have retained messages to send."""
        return sum(1 for entry in self.queue if entry.__class__ is RetainedBatch)

    # An acknowledgement of the wrong kind for a packet id in flight (PUBREC or PUBCOMP for a
    # QoS 1 delivery, PUBACK for a QoS 2 one, PUBCOMP before PUBREC) is a protocol violation
    # that closes the connection ([MQTT-4.8.0-1]), as Mosquitto decides. An acknowledgement
    # for an id not in flight is ignored (PUBREC still gets its PUBREL): after a reconnect a
    # client may finish flows the session no longer knows.

    def on_puback(self, packet_id: int) -> None:
        """PUBACK: a QoS 1 delivery is complete ([MQTT-4.3.2-1])."""
        outgoing = self.inflight.get(packet_id)
        if outgoing is None:
            return
        if outgoing.qos != 1:
            raise ProtocolViolation("puback_for_qos2_delivery")
        self._complete(packet_id, outgoing)

    def on_pubrec(self, packet_id: int, reason_code: int = 0) -> None:
        """PUBREC: release a QoS 2 delivery with PUBREL ([MQTT-4.3.3-1]).

        A PUBREC for an unknown id is still answered with PUBREL, as Mosquitto does, so a
        client that lost track finishes its flow (on MQTT 5 with 0x92, Packet Identifier not
        found); a repeated PUBREC gets PUBREL again. An MQTT 5 PUBREC with an error reason code
        (0x80 or above) ends the delivery there: no PUBREL (4.3.3).
        """
        outgoing = self.inflight.get(packet_id)
        if outgoing is not None:
            if outgoing.qos != 2:
                raise ProtocolViolation("pubrec_for_qos1_delivery")
            if reason_code >= 0x80:
                self._complete(packet_id, outgoing)
                return
            if not outgoing.released:
                outgoing.released = True
                if self.store is not None:
                    self.store.delivery_released(self.client_id, outgoing.seq)
                    self.store_mark = self.store.recorded
        elif reason_code >= 0x80:
            return
        elif self.peer is not None:
            reason = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND
            self._write(encode(Pubrel(packet_id, reason_code=reason), version=5))
            return
        self._write(_PUBREL + packet_id.to_bytes(2, "big"))

    def _complete(self, packet_id: int, outgoing: Outgoing) -> None:
        """A delivery in flight is over: free its slot and let the queue move."""
        del self.inflight[packet_id]
        if self.store is not None:
            self.store.delivery_removed(self.client_id, outgoing.seq, outgoing.message)
            self.store_mark = self.store.recorded
        self._pump()

    def on_pubcomp(self, packet_id: int) -> None:
        """PUBCOMP: a QoS 2 delivery is complete."""
        outgoing = self.inflight.get(packet_id)
        if outgoing is None:
            return
        if outgoing.qos != 2:
            raise ProtocolViolation("pubcomp_for_qos1_delivery")
        if not outgoing.released:
            raise ProtocolViolation("pubcomp_before_pubrec")
        self._complete(packet_id, outgoing)

    # -- incoming messages ------------------------------------------------------------------

    def acknowledge_qos1(self, packet_id: int, reason_code: int = 0) -> None:
        """PUBACK an incoming QoS 1 PUBLISH ([MQTT-4.3.2-2]); MQTT 5 may give a reason code
        (0x10 no matching subscribers, 0x87 not authorised, 0x99 payload format invalid)."""
        if reason_code:
            self._write(encode(Puback(packet_id, reason_code), version=5))
        else:
            self._write(_PUBACK + packet_id.to_bytes(2, "big"))

    def receive_qos2(self, packet_id: int, reason_code: int = 0) -> bool:
        """Record an incoming QoS 2 PUBLISH and PUBREC it ([MQTT-4.3.3-2]).

        An MQTT 5 error reason code (0x80 or above) refuses the message: the PUBREC carries it
        and the flow ends there, with nothing recorded (4.3.3).

        Returns:
            True if the message is new and must be routed; False for a re-send of a packet id
            still awaiting PUBREL, which must not be delivered again (exactly once), or for a
            refused message.
        """
        if reason_code >= 0x80:
            self._write(encode(Pubrec(packet_id, reason_code), version=5))
            return False
        new = packet_id not in self.awaiting_release
        if new:
            if self.awaiting_release is _NONE_AWAITING:
                self.awaiting_release = set()
            self.awaiting_release.add(packet_id)
            if self.store is not None:
                self.store.incoming_added(self.client_id, packet_id)
                self.store_mark = self.store.recorded
        if reason_code:
            self._write(encode(Pubrec(packet_id, reason_code), version=5))
        else:
            self._write(_PUBREC + packet_id.to_bytes(2, "big"))
        return new

    def release_qos2(self, packet_id: int) -> None:
        """PUBREL: forget the packet id and answer PUBCOMP, known id or not ([MQTT-4.3.3-2];
        MQTT 5: an unknown one with 0x92, Packet Identifier not found)."""
        if packet_id in self.awaiting_release:
            self.awaiting_release.remove(packet_id)
            if self.store is not None:
                self.store.incoming_removed(self.client_id, packet_id)
                self.store_mark = self.store.recorded
        elif self.peer is not None:
            reason = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND
            self._write(encode(Pubcomp(packet_id, reason), version=5))
            return
        self._write(_PUBCOMP + packet_id.to_bytes(2, "big"))

    # -- persistence ------------------------------------------------------------------------

    def pending_messages(self) -> Iterator[Message]:
        """Every message still referenced by the queue or the in-flight window."""
        for outgoing in self.inflight.values():
            yield outgoing.message
        for entry in self.queue:
            if entry.__class__ is not RetainedBatch and entry[1]:  # type: ignore[index]
                yield entry[0]  # type: ignore[index]

    def restore(
        self,
        deliveries: list[tuple[int, Message, int, bool, int | None, bool]],
        incoming: set[int],
        subscription_ids: Mapping[int, tuple[int, ...]] | None = None,
    ) -> None:
        """Rebuild in-flight and queued messages from the durable store (at start-up).

        Args:
            deliveries: ``(seq, message, qos, retain, packet_id, released)`` in seq order; a
                packet id means the message was in flight (re-sent with DUP=1 on reconnect).
            incoming: QoS 2 packet ids awaiting PUBREL.
            subscription_ids: seq -> the MQTT 5 Subscription Identifiers of that delivery
                (deliveries not in it have none).
        """
        identifiers = subscription_ids or {}
        for seq, message, qos, retain, packet_id, released in deliveries:
            ids = identifiers.get(seq, ())
            if packet_id is not None:
                outgoing = Outgoing(message, qos, retain, seq, ids)
                outgoing.released = released
                self.inflight[packet_id] = outgoing
                self._next_packet_id = packet_id % 65535 + 1
            else:
                if self.queue is _NO_QUEUE:
                    self.queue = deque()
                self.queue.append((message, qos, retain, seq, ids))
                self.queued_bytes += message.size
            self._next_seq = max(self._next_seq, seq + 1)
        if incoming:
            self.awaiting_release = set(self.awaiting_release) | set(incoming)
