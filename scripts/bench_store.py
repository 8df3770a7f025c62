#!/usr/bin/env python3
"""Benchmark mqttd's durable store: every ``[store] durability`` mode, measured in one run.

Theory of operation
-------------------
For each scenario the script starts a fresh mqttd per durability mode ("memory", "os",
"fsync", in that order, so the modes take turns under the same machine load), each with its own
empty SQLite file, and drives it with a small MQTT 3.1.1 client of its own (raw blocking
sockets and one ``selectors`` loop; mqttd is never imported). Every payload carries a sequence
number and a send time, so each subscriber records which messages it saw: a run reports lost
and duplicate deliveries and unacknowledged publishes next to its speed.

Scenarios (QoS 1 throughout, subscribers are persistent sessions, CleanSession=0):

- ``1to1``: one subscriber online and acknowledging; one publisher keeps up to ``window``
  messages unacknowledged; msg/s delivered end to end.
- ``1to100``: the same with 100 subscribers; deliveries/s.
- ``offline``: 100 subscribers subscribe and disconnect; the publisher sends ``--offline-messages``
  messages, each queued (on disk, except with "memory") for all 100; then the subscribers
  reconnect and the drain of the stored queues is timed (deliveries/s from the first CONNECT).
- ``latency``: one message at a time at a low rate, the publisher waiting for each PUBACK;
  PUBACK round-trip p50/p99. A persistent subscriber is online, so every PUBACK waits for the
  delivery it created to be committed.

Nothing the broker does is taken on trust: the broker's stderr (JSON log lines) is read
continuously by a thread, which finds the bound port (``listener_started``) and counts warnings
and errors; every wait has a deadline; brokers listen on 127.0.0.1 only and are stopped
(SIGTERM, then SIGKILL) after each measurement.

Usage: ``python scripts/bench_store.py [--quick] [--markdown FILE]`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import json
import math
import os
import platform
import selectors
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODES = ("memory", "os", "fsync")

# The wire basics (framing, PUBLISH parsing) are bench.py's, next to this script.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import (  # noqa: E402
    PacketReader,
    WireError,
    _mqtt_str,
    _packet,
    parse_publish,
)
from bench import encode_varint as encode_varint  # noqa: E402 - re-exported

# --------------------------------------------------------------------------------------------
# Wire codec: just the MQTT 3.1.1 this benchmark needs.
# --------------------------------------------------------------------------------------------

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, DISCONNECT = 1, 2, 3, 4, 8, 9, 14
DISCONNECT_BYTES = b"\xe0\x00"
MAX_REMAINING_LENGTH = 268_435_455
#: Payload head: sequence number, send time (CLOCK_MONOTONIC, ns).
PAYLOAD_HEAD = struct.Struct(">Qq")
_U16 = struct.Struct(">H")


def encode_connect(client_id: str, clean_session: bool, keepalive_s: int = 600) -> bytes:
    """CONNECT, protocol level 4, no will, no credentials."""
    flags = 0x02 if clean_session else 0x00
    body = _mqtt_str("MQTT") + bytes([4, flags]) + _U16.pack(keepalive_s) + _mqtt_str(client_id)
    return _packet(0x10, body)


def encode_subscribe(packet_id: int, topic_filter: str, qos: int = 1) -> bytes:
    """SUBSCRIBE to one filter."""
    return _packet(0x82, _U16.pack(packet_id) + _mqtt_str(topic_filter) + bytes([qos]))


def encode_publish(topic: str, payload: bytes, packet_id: int) -> bytes:
    """A QoS 1 PUBLISH (no DUP, no RETAIN)."""
    return _packet(0x32, _mqtt_str(topic) + _U16.pack(packet_id) + payload)


def encode_puback(packet_id: int) -> bytes:
    """PUBACK for ``packet_id``."""
    return b"\x40\x02" + _U16.pack(packet_id)


def packet_id_for(seq: int) -> int:
    """The packet id the publisher uses for sequence number ``seq`` (1 ... 65535)."""
    return seq % 65535 + 1


def make_payload(seq: int, t_ns: int, size: int) -> bytes:
    """A benchmark payload: sequence number and send time, zero-padded to ``size`` bytes."""
    return PAYLOAD_HEAD.pack(seq, t_ns) + bytes(max(0, size - PAYLOAD_HEAD.size))


def read_payload(payload: bytes) -> tuple[int, int]:
    """(sequence number, send time in ns) from a benchmark payload."""
    if len(payload) < PAYLOAD_HEAD.size:
        raise WireError(f"payload of {len(payload)} bytes is not from this benchmark")
    seq, t_ns = PAYLOAD_HEAD.unpack_from(payload)
    return seq, t_ns


# --------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------


class Client:
    """One MQTT connection over a blocking socket (with a timeout)."""

    __slots__ = ("backlog", "cid", "reader", "session_present", "sock")

    def __init__(self, sock: socket.socket, cid: str) -> None:
        self.sock = sock
        self.cid = cid
        self.reader = PacketReader()
        self.backlog: list[tuple[int, bytes]] = []  # read while waiting for something else
        self.session_present = False

    @classmethod
    def open(cls, port: int, cid: str, timeout_s: float = 30.0) -> Client:
        """A TCP connection to 127.0.0.1:``port`` (no MQTT yet)."""
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, cid)

    def send(self, data: bytes) -> None:
        """Send bytes (blocking, bounded by the socket timeout)."""
        self.sock.sendall(data)

    def read(self) -> list[tuple[int, bytes]]:
        """One ``recv``; the packets it completed.

        Raises:
            WireError: the broker closed the connection.
        """
        data = self.sock.recv(65536)
        if not data:
            raise WireError(f"{self.cid}: connection closed by the broker")
        return self.reader.feed(data)

    def expect(self, kind: int, deadline: float) -> bytes:
        """Read until a packet of type ``kind``; return its body. Others go to ``backlog``."""
        while True:
            for i, (first, body) in enumerate(self.backlog):
                if first >> 4 == kind:
                    del self.backlog[i]
                    return body
            if time.monotonic() > deadline:
                raise WireError(f"{self.cid}: no packet of type {kind} in time")
            self.backlog.extend(self.read())

    def wait_closed(self, deadline: float) -> None:
        """Read until the broker closes the connection (after our DISCONNECT)."""
        while time.monotonic() < deadline:
            try:
                self.backlog.extend(self.read())
            except WireError:
                return
            except OSError:
                return
        raise WireError(f"{self.cid}: the broker did not close the connection")

    def close(self) -> None:
        """Close the socket, ignoring errors."""
        with contextlib.suppress(OSError):
            self.sock.close()


def connect_all(
    port: int, client_ids: list[str], clean_session: bool, timeout_s: float = 60.0
) -> list[Client]:
    """Open every connection and send every CONNECT first, then collect the CONNACKs.

    Pipelining matters with "fsync": a persistent session's CONNACK waits for a commit, and
    one commit can carry many sessions.
    """
    deadline = time.monotonic() + timeout_s
    clients = [Client.open(port, cid) for cid in client_ids]
    try:
        for c in clients:
            c.send(encode_connect(c.cid, clean_session))
        for c in clients:
            body = c.expect(CONNACK, deadline)
            if len(body) != 2 or body[1] != 0:
                raise WireError(f"{c.cid}: CONNECT refused: {body.hex()}")
            c.session_present = bool(body[0] & 1)
    except BaseException:
        for c in clients:
            c.close()
        raise
    return clients


def subscribe_all(clients: list[Client], topic_filter: str, timeout_s: float = 60.0) -> None:
    """SUBSCRIBE every client to ``topic_filter`` at QoS 1 and check each SUBACK grants it."""
    deadline = time.monotonic() + timeout_s
    for c in clients:
        c.send(encode_subscribe(1, topic_filter))
    for c in clients:
        body = c.expect(SUBACK, deadline)
        if body[2:] != b"\x01":
            raise WireError(f"{c.cid}: SUBACK {body.hex()} does not grant QoS 1")


def disconnect_all(clients: list[Client], wait: bool = False, timeout_s: float = 30.0) -> None:
    """Send DISCONNECT on each client; with ``wait``, until the broker has closed each one."""
    deadline = time.monotonic() + timeout_s
    for c in clients:
        with contextlib.suppress(OSError):
            c.send(DISCONNECT_BYTES)
    try:
        if wait:
            for c in clients:
                c.wait_closed(deadline)
    finally:
        for c in clients:
            c.close()


# --------------------------------------------------------------------------------------------
# Measuring: one publisher, N subscribers, one selector loop, correctness checks.
# --------------------------------------------------------------------------------------------


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
            parts.append(encode_publish(topic, make_payload(self.seq, now, size), pid))
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
            sent = self.outstanding.pop(_U16.unpack_from(body)[0], None)
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
            topic, qos, pid, payload = parse_publish(first, body)
            if qos != 1 or topic != self.topic:
                self.unexpected += 1
                continue
            acks.append(encode_puback(pid))
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


@dataclass
class Settings:
    """How long and how much each scenario measures."""

    duration_s: float = 10.0  # throughput scenarios
    window: int = 100  # publisher's unacknowledged QoS 1 messages
    e2e_window: int = 10_000  # deliveries published but not yet received
    fanout: int = 100
    offline_messages: int = 1000  # per subscriber, in the offline scenario
    samples: int = 500  # latency scenario
    gap_s: float = 0.005  # pause between latency samples
    payload_size: int = 64
    stall_s: float = 15.0  # no progress for this long ends a drain (and counts losses)


@dataclass
class Result:
    """One scenario on one broker: figures by row key, and what was checked."""

    values: dict[str, float]
    check: Check
    seconds: float = 0.0


def _percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


def run_online(port: int, st: Settings, subscribers: int, tag: str) -> Result:
    """Throughput with ``subscribers`` persistent subscribers online and acknowledging."""
    topic = f"bench/{tag}"
    subs = connect_all(port, [f"s-{tag}-{i}" for i in range(subscribers)], clean_session=False)
    pub: Client | None = None
    flow: Flow | None = None
    try:
        subscribe_all(subs, topic)
        pub = connect_all(port, [f"p-{tag}"], clean_session=True)[0]
        flow = Flow(pub, subs, topic, st.payload_size)
        t0 = time.monotonic()
        end = t0 + st.duration_s
        while time.monotonic() < end:
            pending = flow.seq * subscribers - flow.log.unique
            room = min(st.window - len(flow.outstanding), (st.e2e_window - pending) // subscribers)
            if room > 0:
                flow.publish(room)
            flow.poll(0 if room > 0 else 0.01)
        f = flow
        f.run_until(
            lambda: not f.outstanding and f.log.unique >= f.seq * subscribers,
            st.stall_s,
            120.0,
        )
        elapsed = flow.t_last_delivery - t0
        check = Check(
            expected=flow.seq * subscribers,
            delivered=flow.seq * subscribers - flow.log.missing(flow.seq),
            duplicates=flow.log.duplicates,
            unacked=len(flow.outstanding),
            unexpected=flow.unexpected,
        )
        key = "msgs" if subscribers == 1 else "deliveries"
        rate = (flow.log.unique / elapsed) if elapsed > 0 else float("nan")
        return Result({key: rate}, check, elapsed)
    finally:
        if flow is not None:
            flow.close()
        disconnect_all([*subs, *([pub] if pub else [])])


def run_offline(port: int, st: Settings, subscribers: int, tag: str) -> Result:
    """Queue messages for offline persistent subscribers, then time the drain on reconnect."""
    topic = f"bench/{tag}"
    ids = [f"s-{tag}-{i}" for i in range(subscribers)]
    first = connect_all(port, ids, clean_session=False)
    try:
        subscribe_all(first, topic)
    finally:
        # Wait until the broker has closed each one: the sessions are offline before we publish.
        disconnect_all(first, wait=True)
    check = Check(expected=st.offline_messages * subscribers)
    pub = connect_all(port, [f"p-{tag}"], clean_session=True)[0]
    flow = Flow(pub, [], topic, st.payload_size)
    try:
        t0 = time.monotonic()
        while flow.seq < st.offline_messages:
            room = min(st.window - len(flow.outstanding), st.offline_messages - flow.seq)
            if room > 0:
                flow.publish(room)
            flow.poll(0 if room > 0 else 0.01)
        flow.run_until(lambda: not flow.outstanding, st.stall_s, 120.0)
        queue_s = flow.t_last_ack - t0
        check.unacked = len(flow.outstanding)
        check.unexpected = flow.unexpected
    finally:
        flow.close()
        disconnect_all([pub])
    t1 = time.monotonic()
    subs = connect_all(port, ids, clean_session=False)
    if not all(c.session_present for c in subs):
        check.notes.append("session not present on reconnect")
    drain = Flow(None, subs, topic, st.payload_size)
    try:
        drain.run_until(
            lambda: drain.log.unique >= check.expected or bool(drain.unexpected),
            st.stall_s,
            300.0,
        )
        drain_s = drain.t_last_delivery - t1
        check.delivered = check.expected - drain.log.missing(st.offline_messages)
        check.duplicates = drain.log.duplicates
        check.unexpected += drain.unexpected
    finally:
        drain.close()
        disconnect_all(subs)
    values = {
        "queue": st.offline_messages / queue_s if queue_s > 0 else float("nan"),
        "drain": drain.log.unique / drain_s if drain_s > 0 else float("nan"),
    }
    return Result(values, check, time.monotonic() - t0)


def run_latency(port: int, st: Settings, tag: str) -> Result:
    """PUBACK round trips of single messages at a low rate, a persistent subscriber online."""
    topic = f"bench/{tag}"
    subs = connect_all(port, [f"s-{tag}"], clean_session=False)
    pub: Client | None = None
    flow: Flow | None = None
    try:
        subscribe_all(subs, topic)
        pub = connect_all(port, [f"p-{tag}"], clean_session=True)[0]
        flow = Flow(pub, subs, topic, st.payload_size)
        t0 = time.monotonic()
        for i in range(st.samples):
            flow.publish(1)
            if not flow.run_until(
                lambda n=i + 1, f=flow: f.acked >= n and f.log.unique >= n, st.stall_s, 30.0
            ):
                break
            time.sleep(st.gap_s)
        rtts_ms = [ns / 1e6 for ns in flow.ack_rtts_ns]
        check = Check(
            expected=flow.seq,
            delivered=flow.seq - flow.log.missing(flow.seq),
            duplicates=flow.log.duplicates,
            unacked=len(flow.outstanding),
            unexpected=flow.unexpected,
        )
        values = {"p50": _percentile(rtts_ms, 50), "p99": _percentile(rtts_ms, 99)}
        return Result(values, check, time.monotonic() - t0)
    finally:
        if flow is not None:
            flow.close()
        disconnect_all([*subs, *([pub] if pub else [])])


SCENARIOS: dict[str, Callable[[int, Settings, str], Result]] = {
    "1to1": lambda port, st, tag: run_online(port, st, 1, tag),
    "1to100": lambda port, st, tag: run_online(port, st, st.fanout, tag),
    "offline": lambda port, st, tag: run_offline(port, st, st.fanout, tag),
    "latency": run_latency,
}


@dataclass(frozen=True)
class RowSpec:
    """One line of the table."""

    scenario: str
    key: str
    label: str
    unit: str
    higher_is_better: bool = True


ROWS = [
    RowSpec("1to1", "msgs", "QoS 1, 1→1, subscriber online (window 100)", "msg/s"),
    RowSpec("1to100", "deliveries", "QoS 1, 1→100, subscribers online", "deliveries/s"),
    RowSpec("offline", "queue", "QoS 1, 1→100 offline: publish (queued for 100)", "msg/s"),
    RowSpec("offline", "drain", "QoS 1, 1→100 offline: drain on reconnect", "deliveries/s"),
    RowSpec("latency", "p50", "PUBACK latency p50, 1 msg at a time", "ms", False),
    RowSpec("latency", "p99", "PUBACK latency p99, 1 msg at a time", "ms", False),
]


# --------------------------------------------------------------------------------------------
# Brokers
# --------------------------------------------------------------------------------------------


def broker_toml(mode: str, data_dir: Path) -> str:
    """The generated mqttd configuration for one durability mode."""
    return (
        f'[broker]\ndata_dir = "{data_dir}"\nsys_interval_s = 0\n\n'
        '[[listeners]]\ntype = "tcp"\nhost = "127.0.0.1"\nport = 0\n\n'
        f'[store]\ndurability = "{mode}"\npath = "{data_dir / "m.db"}"\n\n'
        "[limits]\nmax_queued_messages = 1000000\nmax_queued_bytes = 1073741824\n"
    )


class BrokerProcess:
    """An mqttd subprocess; a thread drains its stderr (JSON lines) as long as it runs."""

    def __init__(self, mode: str, workdir: Path) -> None:
        self.mode = mode
        self.workdir = workdir
        self.port: int | None = None
        self.errors = 0
        self.warnings = 0
        self.tail: collections.deque[str] = collections.deque(maxlen=20)
        self._port_known = threading.Event()
        workdir.mkdir(parents=True)
        conf = workdir / "mqttd.toml"
        conf.write_text(broker_toml(mode, workdir))
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mqttd", "--config", str(conf), "--log-format", "json"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=env,
        )
        self._reader = threading.Thread(target=self._drain, name=f"stderr-{mode}", daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").strip()
            self.tail.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict):
                continue
            level = event.get("level")
            if level == "error":
                self.errors += 1
            elif level == "warning":
                self.warnings += 1
            if event.get("event") == "listener_started" and "port" in event:
                self.port = int(event["port"])
                self._port_known.set()
        self._port_known.set()  # the process ended: stop waiting for a port

    def wait_ready(self, timeout_s: float = 30.0) -> int:
        """The bound port, once the broker has logged it.

        Raises:
            RuntimeError: the broker exited or logged no port in time.
        """
        self._port_known.wait(timeout_s)
        if self.port is None:
            self.stop()
            raise RuntimeError(
                f"mqttd ({self.mode}) did not start (exit {self.proc.returncode}): "
                + " | ".join(list(self.tail)[-3:])
            )
        return self.port

    def stop(self) -> None:
        """SIGTERM (graceful shutdown), then SIGKILL if it takes more than 20 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(10)
        if self.proc.stderr is not None and not self._reader.is_alive():
            self.proc.stderr.close()


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _fmt(value: float | None, unit: str) -> str:
    if value is None or value != value:
        return "n/a"
    if unit == "ms":
        return f"{value:.2f}" if value < 100 else f"{value:.0f}"
    return f"{value:,.0f}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or base is None or value != value or base != base or base == 0:
        return "n/a"
    return f"{value / base:.2f}"


def render_table(
    results: dict[tuple[str, str], Result | str], modes: list[str], scenarios: list[str]
) -> str:
    """The results as a Markdown table.

    Args:
        results: (scenario, mode) -> its Result, or the error text of a failed measurement.
        modes: the column order.
        scenarios: which scenarios' rows to show, in this order.

    Returns:
        scenario | unit | one column per mode | fsync/memory | check.
    """
    ratio = "fsync" in modes and "memory" in modes
    head = ["scenario", "unit", *modes]
    if ratio:
        head.append("fsync/memory")
    head.append("check")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for scenario in scenarios:
        for row in (r for r in ROWS if r.scenario == scenario):
            unit = row.unit if row.higher_is_better else f"{row.unit} (lower is better)"
            cells = [row.label, unit]
            values: dict[str, float | None] = {}
            problems = []
            for mode in modes:
                res = results.get((scenario, mode))
                if isinstance(res, Result):
                    values[mode] = res.values.get(row.key)
                    if not res.check.ok:
                        problems.append(f"{mode}: {res.check.summary()}")
                else:
                    values[mode] = None
                    problems.append(f"{mode}: {'not run' if res is None else res}")
                cells.append(_fmt(values[mode], row.unit))
            if ratio:
                cells.append(_ratio(values["fsync"], values["memory"]))
            cells.append("; ".join(problems) if problems else "ok")
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def disk_info(path: Path) -> str:
    """File system type, device and whether the kernel calls it rotational, for ``path``."""
    best, fstype, source = "", "?", "?"
    with contextlib.suppress(OSError), open("/proc/self/mounts") as f:
        resolved = str(path.resolve())
        for line in f:
            parts = line.split()
            if len(parts) < 3:
                continue
            mount = parts[1]
            inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best):
                best, source, fstype = mount, parts[0], parts[2]
    text = f"{fstype} on {source}"
    st_dev = os.stat(path).st_dev
    sysdir = Path(f"/sys/dev/block/{os.major(st_dev)}:{os.minor(st_dev)}")
    for candidate in (sysdir, sysdir / ".."):
        rot = candidate / "queue" / "rotational"
        with contextlib.suppress(OSError):
            text += f" (rotational={rot.read_text().strip()})"
            break
    return text


def fsync_probe_ms(directory: Path, rounds: int = 100) -> float:
    """Median time of a 4 KiB write + ``fsync`` in ``directory``, in ms: what one durable
    commit costs this disk at least (a virtual disk may report rotational=1 and still answer
    flushes from a cache)."""
    path = directory / "fsync-probe"
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        block = bytes(4096)
        for _ in range(rounds):
            t0 = time.perf_counter()
            os.write(fd, block)
            os.fsync(fd)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    return _percentile(times, 50)


def machine_info(workdir: Path) -> dict[str, str]:
    """nproc, CPU model, RAM, disk, kernel, Python and SQLite versions, mqttd version."""
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    version = "?"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        version = (
            subprocess.run(
                [sys.executable, "-m", "mqttd", "--version"],
                capture_output=True,
                text=True,
                timeout=30,
                cwd=REPO,
            ).stdout.strip()
            or "?"
        )
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "ram": ram,
        "disk": disk_info(workdir),
        "fsync": f"{fsync_probe_ms(workdir):.2f} ms",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "mqttd": version,
    }


def markdown_report(table: str, info: dict[str, str], command: str, elapsed_s: float) -> str:
    """The table with the date, the machine and the command that produced it."""
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"Date: {date}  \n"
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram']} RAM, "
        f"Linux {info['kernel']}; database on {info['disk']}, "
        f"4 KiB write + fsync p50 {info['fsync']}  \n"
        f"Python {info['python']}, SQLite {info['sqlite']}, {info['mqttd']}  \n"
        f"Command: `{command}` ({elapsed_s:.0f} s)\n\n{table}\n"
    )


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts: a ~30 s smoke run")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated durability modes")
    ap.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"subset of {','.join(SCENARIOS)}"
    )
    ap.add_argument("--duration", type=float, help="seconds per throughput measurement")
    ap.add_argument("--offline-messages", type=int, help="messages queued per offline subscriber")
    ap.add_argument("--samples", type=int, help="PUBACK latency samples")
    ap.add_argument("--fanout", type=int, default=100, help="subscribers in 1→N scenarios")
    ap.add_argument("--dir", type=Path, help="where the databases go (default: a temp dir)")
    ap.add_argument("--markdown", type=Path, help="also write the table (with machine info)")
    return ap.parse_args(argv)


def settings_for(args: argparse.Namespace) -> Settings:
    """Settings from the command line (``--quick`` picks small defaults)."""
    quick = args.quick
    return Settings(
        duration_s=args.duration or (1.0 if quick else 10.0),
        offline_messages=args.offline_messages or (100 if quick else 1000),
        samples=args.samples or (50 if quick else 500),
        gap_s=0.002 if quick else 0.005,
        fanout=args.fanout,
        stall_s=10.0 if quick else 15.0,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: run every scenario on every mode, print the table; 1 if a check failed."""
    args = parse_args(argv)
    modes = args.modes.split(",")
    scenarios = args.scenarios.split(",")
    for m in modes:
        if m not in MODES:
            print(f"unknown mode {m!r}; choose from {MODES}", file=sys.stderr)
            return 2
    for s in scenarios:
        if s not in SCENARIOS:
            print(f"unknown scenario {s!r}; choose from {list(SCENARIOS)}", file=sys.stderr)
            return 2
    st = settings_for(args)
    base = Path(tempfile.mkdtemp(prefix="mqttd-storebench-", dir=args.dir))
    if disk_info(base).startswith("tmpfs"):
        print(f"warning: {base} is on tmpfs: fsync costs nothing there", flush=True)
    results: dict[tuple[str, str], Result | str] = {}
    started = time.monotonic()
    plan = [(s, m) for s in scenarios for m in modes]
    print(
        f"bench_store: {len(plan)} measurements; databases under {base}: {disk_info(base)},"
        f" 4 KiB write + fsync p50 {fsync_probe_ms(base):.2f} ms",
        flush=True,
    )
    try:
        for i, (scenario, mode) in enumerate(plan, 1):
            print(f"[{i}/{len(plan)}] {scenario} on {mode} ...", end=" ", flush=True)
            broker = BrokerProcess(mode, base / f"{scenario}-{mode}")
            try:
                port = broker.wait_ready()
                cpu0, own0, wall0 = cpu_seconds(broker.proc.pid), time.process_time(), time.time()
                result = SCENARIOS[scenario](port, st, f"{scenario}-{mode}-{os.getpid()}")
                wall = max(time.time() - wall0, 1e-9)
                cpu1 = cpu_seconds(broker.proc.pid)
                busy = "n/a"
                if cpu0 is not None and cpu1 is not None:
                    busy = f"{(cpu1 - cpu0) / wall:.0%}"
                own = f"{(time.process_time() - own0) / wall:.0%}"
                result.check.broker_errors = broker.errors
                results[(scenario, mode)] = result
                figures = ", ".join(
                    f"{r.key}={_fmt(result.values.get(r.key), r.unit)} {r.unit}"
                    for r in ROWS
                    if r.scenario == scenario
                )
                print(
                    f"{figures}; {result.check.summary()}; CPU mqttd {busy}, client {own}"
                    f" ({result.seconds:.1f} s)",
                    flush=True,
                )
            except (OSError, WireError, RuntimeError) as exc:
                results[(scenario, mode)] = f"failed: {exc}"[:160]
                print(f"FAILED: {exc}", flush=True)
            finally:
                broker.stop()
                if broker.proc.returncode not in (0, None):
                    print(f"  mqttd exited {broker.proc.returncode}", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted; partial results follow", flush=True)
    elapsed = time.monotonic() - started
    table = render_table(results, modes, scenarios)
    print()
    print(table)
    print(f"\n(total {elapsed:.0f} s)")
    if args.markdown:
        command = "python scripts/bench_store.py " + " ".join(
            sys.argv[1:] if argv is None else argv
        )
        args.markdown.write_text(markdown_report(table, machine_info(base), command, elapsed))
    shutil.rmtree(base, ignore_errors=True)
    failed = any(not (isinstance(r, Result) and r.check.ok) for r in results.values())
    return 1 if failed or len(results) < len(plan) else 0


if __name__ == "__main__":
    sys.exit(main())
