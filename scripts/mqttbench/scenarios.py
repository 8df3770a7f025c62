"""The scenarios ``--scenarios`` selects: what each one measures (a ``FlowSpec`` for message
flows, a marker for idle connections and the big payload) and which table rows it fills."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .clusterprobes import run_churn, run_quiet, run_routes
from .flow import FlowSpec, run_flow
from .load import Target
from .probes import run_big, run_idle
from .report import Metric

#: What a run without ``--scenarios`` measures.
DEFAULT_SCENARIOS = ["qos0", "qos1", "qos2", "qos2w20", "fanout", "many", "latency", "idle", "mb1"]
#: Every scenario: the defaults, QoS 1 fan-out and many→many, 100 publisher/subscriber pairs
#: (QoS 0 and 1), and the Redis cost probes of a cluster (``clusterprobes``: an idle broker,
#: route changes, connect/disconnect churn).
SCENARIOS = [
    *DEFAULT_SCENARIOS,
    "fanout1",
    "many1",
    "pairs",
    "pairs1",
    "quiet",
    "routes",
    "churn",
]
#: The probes that only mean something for mqttd in cluster mode.
CLUSTER_PROBES = ("quiet", "routes", "churn")


@dataclass
class Settings:
    """Durations and sizes, from the command line."""

    duration_s: float
    quick: bool
    idle_conns: int
    big_reps: int
    big_timeout_s: float
    probes: int
    quiet_s: float = 10.0
    route_changes: int = 1000
    churn_conns: int = 2000
    protocol: int = 4  # the clients' protocol level (the cluster probes speak 3.1.1)


def scenario_units(name: str, transport: str, st: Settings, tag: str) -> list[Any]:
    """FlowSpec or a marker tuple for each measurement a scenario makes."""
    d = st.duration_s
    if name in ("qos0", "qos1", "qos2", "qos2w20"):
        qos = {"qos0": 0, "qos1": 1, "qos2": 2, "qos2w20": 2}[name]
        window = 20 if name == "qos2w20" else 100
        # QoS 2: the publisher keeps at most `window` messages undelivered end to end, because
        # Mosquitto 2.0.11 releases queued QoS 2 messages to a subscriber whose 20-message
        # inflight window was full only when another message arrives: a deeper backlog strands.
        e2e = window if qos == 2 else 20_000
        return [
            FlowSpec(
                transport,
                protocol=st.protocol,
                qos=qos,
                window=window,
                e2e_window=e2e,
                duration_s=d,
                tag=tag,
            )
        ]
    if name in ("fanout", "fanout1"):
        return [
            FlowSpec(
                transport,
                protocol=st.protocol,
                qos=1 if name == "fanout1" else 0,
                n_sub=1000,
                sub_procs=2,
                e2e_window=50_000,
                batch=8,
                duration_s=d,
                probes=st.probes,
                record_arrival=True,
                tag=tag,
            )
        ]
    if name in ("many", "many1"):
        return [
            FlowSpec(
                transport,
                protocol=st.protocol,
                qos=1 if name == "many1" else 0,
                n_pub=100,
                n_sub=100,
                sub_procs=2,
                shared_topic=False,
                e2e_window=100_000,
                batch=4,
                duration_s=d,
                tag=tag,
            )
        ]
    if name in ("pairs", "pairs1"):
        # Subscriber i takes publisher i's topic only: every message has one subscriber, so
        # on several workers a message either stays on its worker or crosses, whole.
        return [
            FlowSpec(
                transport,
                protocol=st.protocol,
                qos=1 if name == "pairs1" else 0,
                n_pub=100,
                n_sub=100,
                sub_procs=2,
                shared_topic=False,
                pairs=True,
                e2e_window=20_000,
                batch=16,
                duration_s=d,
                tag=tag,
            )
        ]
    if name == "latency":
        return [
            FlowSpec(
                transport,
                protocol=st.protocol,
                rate=1000.0,
                duration_s=max(d, 2.0),
                record_latency=True,
                tag=tag,
            )
        ]
    if name == "idle":
        return [("idle", transport, st.idle_conns)]
    if name == "mb1":
        return [("big", transport, 1024 * 1024)]
    if name == "quiet":
        return [("quiet", transport, st.quiet_s)]
    if name == "routes":
        return [("routes", transport, st.route_changes)]
    if name == "churn":
        return [("churn", transport, st.churn_conns)]
    raise ValueError(name)


def measure(unit: Any, target: Target, st: Settings, tag: str) -> dict[str, Metric]:
    """Run one unit against one broker and turn it into metrics keyed by row suffix."""
    return metrics_of(unit, run_unit(unit, target, st, tag), st)


def run_unit(unit: Any, target: Target, st: Settings, tag: str) -> dict[str, Any]:
    """Run one unit against one broker; its raw results."""
    if isinstance(unit, FlowSpec):
        unit.tag = tag
        return run_flow(unit, target)
    kind, transport, n = unit
    if kind == "idle":
        return run_idle(target, transport, n, tag, st.protocol)
    if kind == "quiet":
        return run_quiet(target, n)
    if kind == "routes":
        return run_routes(target, transport, n, tag)
    if kind == "churn":
        return run_churn(target, transport, n, tag)
    return run_big(target, transport, n, st.big_reps, st.big_timeout_s, st.protocol)


def metrics_of(unit: Any, r: dict[str, Any], st: Settings) -> dict[str, Metric]:
    """The table's metrics, keyed by row suffix, from a unit's raw results."""
    if isinstance(unit, FlowSpec):
        common = {"cpu": r["cpu"], "lost": r["lost"], "dup": r["dup"]}
        note = _flow_note(r)
        if unit.rate:
            lat = r["lat_ms"]
            return {
                "p50": Metric(lat["p50"], note=note, **common),
                "p99": Metric(lat["p99"], **common),
                "max": Metric(lat["max"], **common),
            }
        out = {"rate": Metric(r["rate"], note=note, **common)}
        if unit.probes:
            ra = r["reach_all_ms"]
            out["reach50"] = Metric(ra["p50"], **common)
            out["reach99"] = Metric(ra["p99"], **common)
        return out
    kind = unit[0]
    if kind == "idle":
        return {
            "cps": Metric(r["connects_per_s"], r["cpu"], 0, 0),
            "kib": Metric(r["kib_per_conn"], r["cpu"], 0, 0),
        }
    if kind in CLUSTER_PROBES:
        return {k: Metric(v, r["cpu"], 0, 0) for k, v in r["metrics"].items()}
    note = "" if r["secs"] is not None else f"not delivered within {st.big_timeout_s:.0f} s"
    return {"secs": Metric(r["secs"], r["cpu"], r["lost"], 0, note)}


def _flow_note(r: dict[str, Any]) -> str:
    bits = []
    if r["ooo"]:
        bits.append(f"{r['ooo']} out of order")
    if r["bad"]:
        bits.append(f"{r['bad']} unexpected packets")
    if r["unacked"]:
        bits.append(f"{r['unacked']} unacknowledged")
    if r.get("refused"):
        bits.append(f"{r['refused']} refused by the broker")
    return ", ".join(bits)


ROW_INFO = {
    ("qos0", "rate"): ("QoS 0 1→1", "msg/s", True),
    ("qos1", "rate"): ("QoS 1 1→1 (window 100)", "msg/s", True),
    ("qos2", "rate"): ("QoS 2 1→1 (window 100)", "msg/s", True),
    ("qos2w20", "rate"): ("QoS 2 1→1 (window 20)", "msg/s", True),
    ("fanout", "rate"): ("fan-out 1→1000", "deliveries/s", True),
    ("fanout", "reach50"): ("fan-out: one msg reaches all 1000, p50", "ms", False),
    ("fanout", "reach99"): ("fan-out: one msg reaches all 1000, p99", "ms", False),
    ("many", "rate"): ("many→many 100→100 (+ filter)", "deliveries/s", True),
    ("fanout1", "rate"): ("fan-out 1→1000 QoS 1", "deliveries/s", True),
    ("fanout1", "reach50"): ("fan-out QoS 1: one msg reaches all 1000, p50", "ms", False),
    ("fanout1", "reach99"): ("fan-out QoS 1: one msg reaches all 1000, p99", "ms", False),
    ("many1", "rate"): ("many→many 100→100 QoS 1 (+ filter)", "deliveries/s", True),
    ("pairs", "rate"): ("pairs: 100 of 1→1, own topics", "msg/s", True),
    ("pairs1", "rate"): ("pairs: 100 of 1→1, QoS 1", "msg/s", True),
    ("latency", "p50"): ("latency @1000 msg/s p50", "ms", False),
    ("latency", "p99"): ("latency @1000 msg/s p99", "ms", False),
    ("latency", "max"): ("latency @1000 msg/s max", "ms", False),
    ("idle", "cps"): ("idle connections: connects", "conn/s", True),
    ("idle", "kib"): ("idle connections: RSS each", "KiB", False),
    ("mb1", "secs"): ("1 MB payload delivery", "s", False),
    ("quiet", "redis_us_per_s"): ("idle cluster: Redis CPU per second", "µs", False),
    ("routes", "redis_us_add"): ("route added: Redis CPU each", "µs", False),
    ("routes", "redis_us_del"): ("route removed: Redis CPU each", "µs", False),
    ("churn", "redis_us_connect"): ("connect: Redis CPU each", "µs", False),
    ("churn", "redis_us_disconnect"): ("disconnect: Redis CPU each", "µs", False),
    ("churn", "broker_us_connect"): ("connect: broker CPU each", "µs", False),
}
