"""bench_store's scenarios (QoS 1 throughout, subscribers are persistent sessions):

- ``1to1``: one subscriber online and acknowledging; one publisher keeps up to ``window``
  messages unacknowledged; msg/s delivered end to end.
- ``1to100``: the same with 100 subscribers; deliveries/s.
- ``offline``: 100 subscribers subscribe and disconnect; the publisher sends ``offline_messages``
  messages, each queued (on disk, except with "memory") for all 100; then the subscribers
  reconnect and the drain of the stored queues is timed (deliveries/s from the first CONNECT).
- ``latency``: one message at a time at a low rate, the publisher waiting for each PUBACK;
  PUBACK round-trip p50/p99.

and the mqttd each one runs against: a fresh process per (scenario, durability mode), with its
own empty SQLite file.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from conformance.broker_process import BrokerProcess, listeners_toml, start_mqttd

from .client import Client, connect_all, disconnect_all, subscribe_all
from .flow import Check, Flow


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


def nearest_rank(values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``; NaN for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


@contextlib.contextmanager
def online_flow(port: int, st: Settings, subscriber_ids: list[str], tag: str) -> Iterator[Flow]:
    """Persistent subscribers (CleanSession 0) online on ``bench/<tag>`` and a publisher, in
    one ``Flow``; everyone sends DISCONNECT at the end."""
    topic = f"bench/{tag}"
    subs = connect_all(port, subscriber_ids, clean_session=False)
    pub: Client | None = None
    flow: Flow | None = None
    try:
        subscribe_all(subs, topic)
        pub = connect_all(port, [f"p-{tag}"], clean_session=True)[0]
        flow = Flow(pub, subs, topic, st.payload_size)
        yield flow
    finally:
        if flow is not None:
            flow.close()
        disconnect_all([*subs, *([pub] if pub else [])])


def delivery_check(flow: Flow) -> Check:
    """What an online flow verified: every message published reached every subscriber."""
    expected = flow.seq * len(flow.subscribers)
    return Check(
        expected=expected,
        delivered=expected - flow.log.missing(flow.seq),
        duplicates=flow.log.duplicates,
        unacked=len(flow.outstanding),
        unexpected=flow.unexpected,
    )


def run_online(port: int, st: Settings, subscribers: int, tag: str) -> Result:
    """Throughput with ``subscribers`` persistent subscribers online and acknowledging."""
    ids = [f"s-{tag}-{i}" for i in range(subscribers)]
    with online_flow(port, st, ids, tag) as flow:
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
        key = "msgs" if subscribers == 1 else "deliveries"
        rate = (flow.log.unique / elapsed) if elapsed > 0 else float("nan")
        return Result({key: rate}, delivery_check(flow), elapsed)


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
    with online_flow(port, st, [f"s-{tag}"], tag) as flow:
        t0 = time.monotonic()
        for i in range(st.samples):
            flow.publish(1)

            def settled(n: int = i + 1, f: Flow = flow) -> bool:
                return f.acked >= n and f.log.unique >= n

            if not flow.run_until(settled, st.stall_s, 30.0):
                break
            time.sleep(st.gap_s)
        rtts_ms = [ns / 1e6 for ns in flow.ack_rtts_ns]
        values = {"p50": nearest_rank(rtts_ms, 50), "p99": nearest_rank(rtts_ms, 99)}
        return Result(values, delivery_check(flow), time.monotonic() - t0)


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


def broker_toml(mode: str, data_dir: Path) -> str:
    """The generated mqttd configuration for one durability mode."""
    return (
        f'[broker]\ndata_dir = "{data_dir}"\nsys_interval_s = 0\n\n'
        + listeners_toml("tcp", host="127.0.0.1")
        + f'\n[store]\ndurability = "{mode}"\npath = "{data_dir / "m.db"}"\n\n'
        + "[limits]\nmax_queued_messages = 1000000\nmax_queued_bytes = 1073741824\n"
    )


def start_broker(mode: str, workdir: Path) -> BrokerProcess:
    """A fresh mqttd in ``workdir`` (created) for one durability mode, once it listens.

    Raises:
        RuntimeError: it exited or did not report its listener in time.
    """
    workdir.mkdir(parents=True)
    conf = workdir / "mqttd.toml"
    conf.write_text(broker_toml(mode, workdir))
    return start_mqttd(conf, cwd=workdir)
