"""bench_store's measuring loop: one publisher and N subscribers served by one ``selectors``
loop, with the bookkeeping that turns deliveries into a verdict (lost, duplicated,
unacknowledged, unexpected)."""

from __future__ import annotations

import selectors
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from conformance import wire
from conformance.wire import PUBACK, PUBLISH, WireError

from ..load import packet_id_for
from .client import Client, make_payload, read_payload


@dataclass
class Check:
    """What a measurement verified besides its speed."""

    expected: int = 0  # deliveries that had to arrive
    delivered: int = 0  # distinct deliveries that did
    duplicates: int = 0
    unacked: int = 0  # PUBLISHes the broker never acknowledged
    unexpected: int = 0  # packets this client did not ask for
    broker_errors: int = 0  # ERROR lines in the broker's log
    notes: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        """Deliveries that never arrived."""
        return max(0, self.expected - self.delivered)

    @property
    def ok(self) -> bool:
        """No loss, every publish acknowledged, nothing odd, no broker errors."""
        return (
            self.lost == 0
            and self.unacked == 0
            and self.unexpected == 0
            and self.broker_errors == 0
            and not self.notes
        )

    def summary(self) -> str:
        """One line: the counts, and what went wrong if anything did."""
        text = f"{self.delivered:,}/{self.expected:,} delivered, {self.duplicates} dup"
        problems = []
        if self.lost:
            problems.append(f"{self.lost:,} LOST")
        if self.unacked:
            problems.append(f"{self.unacked} unacknowledged")
        if self.unexpected:
            problems.append(f"{self.unexpected} unexpected packets")
        if self.broker_errors:
            problems.append(f"{self.broker_errors} broker errors")
        problems += self.notes
        return text + ("; " + "; ".join(problems) if problems else "")


class DeliveryLog:
    """Which sequence numbers each subscriber has seen (one counter byte per message)."""

    def __init__(self, subscribers: int) -> None:
        self._seen = [bytearray() for _ in range(subscribers)]
        self.unique = 0
        self.duplicates = 0

    def record(self, subscriber: int, seq: int) -> bool:
        """Note a delivery; True if it is the first of ``seq`` to ``subscriber``."""
        seen = self._seen[subscriber]
        if seq >= len(seen):
            seen.extend(bytes(max(seq + 1 - len(seen), len(seen), 1024)))
        if seen[seq]:
            self.duplicates += 1
            return False
        seen[seq] = 1
        self.unique += 1
        return True

    def missing(self, published: int) -> int:
        """Deliveries of sequence numbers below ``published`` that some subscriber lacks."""
        total = 0
        for seen in self._seen:
            have = seen[:published]
            total += published - (len(have) - have.count(0))
        return total


class Flow:
    """A publisher (optional) and subscribers served by one ``selectors`` loop.

    Subscribers acknowledge every PUBLISH as soon as they read it; the publisher keeps at most
    ``window`` messages unacknowledged (``publish`` sends what the caller asks for).
    """

    def __init__(
        self,
        publisher: Client | None,
        subscribers: list[Client],
        topic: str,
        payload_size: int,
        first_seq: int = 0,
    ) -> None:
        self.publisher = publisher
        self.subscribers = subscribers
        self.topic = topic
        self.payload_size = payload_size
        self.log = DeliveryLog(len(subscribers))
        self.seq = first_seq  # next sequence number; == messages published when first_seq = 0
        self.outstanding: dict[int, int] = {}  # packet id -> send time (ns)
        self.acked = 0
        self.ack_rtts_ns: list[int] = []
        self.unexpected = 0
        self.t_last_delivery = 0.0
        self.t_last_ack = 0.0
        self.progress_at = time.monotonic()
        self._sel = selectors.DefaultSelector()
        if publisher is not None:
            self._sel.register(publisher.sock, selectors.EVENT_READ, -1)
        for i, c in enumerate(subscribers):
            self._sel.register(c.sock, selectors.EVENT_READ, i)
        # Packets that arrived with a CONNACK or SUBACK are handled first.
        for i, c in enumerate(subscribers):
            if c.backlog:
                packets, c.backlog = c.backlog, []
                self._on_subscriber(i, c, packets)

    def close(self) -> None:
        """Forget the sockets (the caller closes the clients)."""
        self._sel.close()

    def publish(self, count: int) -> None:
        """Send ``count`` QoS 1 PUBLISHes in one write."""
        assert self.publisher is not None
        parts = []
        size, topic = self.payload_size, self.topic
        for _ in range(count):
            now = time.monotonic_ns()
            pid = packet_id_for(self.seq)
            if pid in self.outstanding:
                raise WireError(f"packet id {pid} still unacknowledged: window too large")
            self.outstanding[pid] = now
            parts.append(wire.publish(topic, make_payload(self.seq, now, size), 1, pid=pid))
            self.seq += 1
        self.publisher.send(b"".join(parts))

    def poll(self, timeout_s: float) -> None:
        """Handle whatever arrives within ``timeout_s`` (0: only what is there now)."""
        for key, _ in self._sel.select(timeout_s):
            index = key.data
            if index < 0:
                assert self.publisher is not None
                self._on_publisher(self.publisher.read())
            else:
                c = self.subscribers[index]
                self._on_subscriber(index, c, c.read())

    def _on_publisher(self, packets: list[tuple[int, bytes]]) -> None:
        now_ns = time.monotonic_ns()
        for first, body in packets:
            if first >> 4 != PUBACK:
                self.unexpected += 1
                continue
            sent = self.outstanding.pop(wire.packet_id(body), None)
            if sent is None:
                self.unexpected += 1
                continue
            self.acked += 1
            self.ack_rtts_ns.append(now_ns - sent)
        self.t_last_ack = self.progress_at = time.monotonic()

    def _on_subscriber(self, index: int, c: Client, packets: list[tuple[int, bytes]]) -> None:
        acks = []
        got = False
        for first, body in packets:
            if first >> 4 != PUBLISH:
                self.unexpected += 1
                continue
            topic, qos, pid, payload = wire.parse_publish(first, body)
            if qos != 1 or topic != self.topic:
                self.unexpected += 1
                continue
            acks.append(wire.puback(pid))
            seq, _ = read_payload(payload)
            got = self.log.record(index, seq) or got
        if acks:
            c.send(b"".join(acks))
        if got:
            self.t_last_delivery = self.progress_at = time.monotonic()

    def run_until(self, done: Callable[[], bool], stall_s: float, limit_s: float) -> bool:
        """Poll until ``done()``, or nothing useful arrived for ``stall_s``, or ``limit_s``."""
        hard = time.monotonic() + limit_s
        self.progress_at = time.monotonic()
        while not done():
            now = time.monotonic()
            if now - self.progress_at > stall_s or now > hard:
                return False
            self.poll(0.05)
        return True
