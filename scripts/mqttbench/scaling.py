"""``python scripts/bench.py --scaling``: mqttd on one core and on two, in cluster mode, and
Mosquitto, measured in interleaved rounds, with medians and ratios.

Theory of operation
-------------------
Each round measures every scenario on every broker form -- ``mqttd`` (one plain process),
``mqttd-cluster1`` (one process in cluster mode over a redis-server started here),
``mqttd-w1`` (``mqttd --workers 1``), ``mqttd-w2`` (``mqttd --workers 2``: supervisor, two
workers, private redis-server) and ``mosquitto`` -- each started fresh, measured and stopped.
The order of the brokers rotates from round to round, so none always runs first or last after a
given neighbour; the machine's load is read at every measurement.

A figure is the median over rounds; a ratio is the median of the per-round ratios (both
brokers measured minutes apart, under nearly the same load), not the ratio of medians.

Broker CPU is summed over every process of the broker: workers, supervisor and redis-server
(``meter.BrokerMeter``); the load generator's own CPU is given beside it, because on a 2-core
machine the two share the cores. For a broker of several workers each measurement also says
which worker got each connection (``/proc``) and, from that, the share of deliveries whose
publisher and subscriber are on different workers -- those cross through Redis.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .brokers import Broker, Certs
from .meter import Placement, Usage
from .model import Costs, Topology, forward_cost, split_delivery_cost
from .report import fmt
from .scenarios import ROW_INFO, Settings, metrics_of, run_unit, scenario_units

#: The broker forms a scaling run compares, in table order.
SCALING_BROKERS = ["mqttd", "mqttd-cluster1", "mqttd-w1", "mqttd-w2", "mosquitto"]
#: Scenarios a scaling run measures (all over TCP).
SCALING_SCENARIOS = ["idle", "fanout", "many", "pairs", "many1", "pairs1"]
#: The Redis cost probes ``--model`` adds, run on the cluster forms only.
MODEL_PROBES = ["quiet", "routes", "churn"]
#: Ratios the table shows: (numerator, denominator, heading).
RATIOS = [
    ("mqttd-w2", "mqttd-w1", "w2 / w1"),
    ("mqttd-w2", "mqttd-cluster1", "w2 / cluster1"),
    ("mqttd-cluster1", "mqttd", "cluster1 / single"),
    ("mqttd-w2", "mosquitto", "w2 / mosquitto"),
]
#: Rows of the main table: (scenario, metric key).
MAIN_ROWS = [
    ("idle", "cps"),
    ("idle", "kib"),
    ("fanout", "rate"),
    ("fanout", "reach50"),
    ("many", "rate"),
    ("pairs", "rate"),
    ("fanout1", "rate"),
    ("many1", "rate"),
    ("pairs1", "rate"),
]


@dataclass
class Sample:
    """One broker's measurement of one scenario in one round."""

    scenario: str
    broker: str
    round: int
    metrics: dict[str, float | None] = field(default_factory=dict)
    cpu: float | None = None
    cpu_by_role: dict[str, float] = field(default_factory=dict)
    gen_cpu: float | None = None  # the load generator's CPU %, over its own active time
    lost: int | None = None
    dup: int | None = None
    load: float | None = None
    per_worker: list[int] = field(default_factory=list)
    crossed: float | None = None
    forwards_per_message: float | None = None
    counts: dict[str, float] = field(default_factory=dict)  # deliveries, published, ...
    costs: dict[str, float | None] = field(default_factory=dict)  # µs per event
    calls: dict[str, int] = field(default_factory=dict)  # Redis commands run
    error: str = ""


def median(values: Iterable[float | None]) -> float | None:
    """Median of the values that exist (None if there are none)."""
    vs = [v for v in values if v is not None and v == v]
    return statistics.median(vs) if vs else None


def per_round_ratio(
    samples: Sequence[Sample], scenario: str, key: str, num: str, den: str
) -> tuple[float | None, list[float]]:
    """The median over rounds of ``num``'s figure / ``den``'s figure, each pair from one
    round; and the per-round ratios."""
    by = {(s.broker, s.round): s.metrics.get(key) for s in samples if s.scenario == scenario}
    rounds = sorted({r for (_, r) in by})
    ratios = []
    for r in rounds:
        a, b = by.get((num, r)), by.get((den, r))
        if a is not None and b:
            ratios.append(a / b)
    return median(ratios), ratios


def rotated(items: Sequence[str], k: int) -> list[str]:
    """``items`` rotated left by ``k`` (the broker order of round ``k``)."""
    if not items:
        return []
    k %= len(items)
    return [*items[k:], *items[:k]]


def _us(seconds: float | None, events: float | None) -> float | None:
    if seconds is None or not events:
        return None
    return seconds * 1e6 / events


def sample_of(scenario: str, broker: str, rnd: int, raw: dict[str, Any], st: Settings) -> Sample:
    """A ``Sample`` from one unit's raw results (``scenarios.run_unit``)."""
    units = scenario_units(scenario, "tcp", st, "x")
    metrics = metrics_of(units[0], raw, st)
    usage: Usage = raw["usage"]
    s = Sample(scenario, broker, rnd)
    s.metrics = {k: m.value for k, m in metrics.items()}
    s.cpu = usage.cpu
    s.cpu_by_role = dict(usage.cpu_by_role)
    s.load = usage.load
    s.lost, s.dup = raw.get("lost"), raw.get("dup")
    s.calls = {name: stat.calls for name, stat in usage.commands.items()}
    placement: Placement | None = raw.get("placement")
    if placement is not None:
        s.per_worker = list(placement.per_worker.values())
        s.crossed = placement.crossed
        s.forwards_per_message = placement.forwards_per_message
    gen_s, active_s = raw.get("gen_cpu_s"), raw.get("elapsed_s")
    if gen_s is not None and active_s:
        s.gen_cpu = 100.0 * gen_s / active_s
    broker_s, redis_s = usage.cpu_seconds("broker"), usage.cpu_seconds("redis")
    if scenario == "idle":
        n = raw["n"]
        s.counts = {"connects": n}
        s.costs = {
            "broker_us_per_connect": _us(broker_s, n),
            "redis_us_per_connect": _us(redis_s, n),
        }
    elif "delivered" in raw:
        s.counts = {"delivered": raw["delivered"], "published": raw["published"]}
        s.costs = {"broker_us_per_delivery": _us(broker_s, raw["delivered"])}
        fpm = placement.forwards_per_message if placement is not None else None
        if usage.commands and fpm is not None:
            # Several nodes: the copies forwarded to other nodes follow from where the
            # subscribers are (one per other worker with one); the XADDs are the inbox
            # entries that carried them, several copies each when a pipeline holds several
            # for one node (on one node the few XADDs are route-log entries).
            forwards = fpm * raw["published"]
            s.counts["forwards"] = round(forwards)
            s.counts["entries"] = usage.calls("xadd")
            s.costs["redis_us_per_forward"] = _us(redis_s, forwards)
            if raw["published"]:
                s.costs["forwards_per_published"] = fpm
                s.costs["entries_per_published"] = usage.calls("xadd") / raw["published"]
    else:  # a cluster probe
        s.costs = dict(raw["metrics"])
        for k in ("broker_us_add", "broker_us_del", "broker_us_disconnect"):
            if k in raw:
                s.costs[k] = raw[k]
        if raw.get("gen_cpu_s") is None:
            s.gen_cpu = None
    return s


def run_rounds(
    brokers: Sequence[str],
    starters: dict[str, Callable[[], Broker]],
    scenarios: Sequence[str],
    probes: Sequence[str],
    rounds: int,
    st: Settings,
    log: Callable[[str], None],
) -> list[Sample]:
    """Every round: every scenario (then every probe, on the cluster forms) on every broker,
    the broker order rotated per round. A failed measurement is kept as a Sample with
    ``error`` and the run goes on."""
    samples: list[Sample] = []
    plan = [(s, list(brokers)) for s in scenarios]
    cluster_forms = [b for b in brokers if b == "mqttd-cluster1" or b.startswith("mqttd-w")]
    plan += [(p, [b for b in cluster_forms if b != "mqttd-w1"]) for p in probes]
    total = rounds * sum(len(bs) for _, bs in plan)
    done = 0
    for rnd in range(1, rounds + 1):
        for scenario, names in plan:
            for name in rotated(names, rnd - 1):
                done += 1
                t0 = time.monotonic()
                prefix = f"[{done}/{total}] round {rnd}: {scenario} on {name} ..."
                broker: Broker | None = None
                try:
                    broker = starters[name]()
                    unit = scenario_units(scenario, "tcp", st, "")[0]
                    tag = f"{scenario}-{name}-{rnd}-{time.monotonic_ns()}"
                    raw = run_unit(unit, broker.target, st, tag)
                    s = sample_of(scenario, name, rnd, raw, st)
                    samples.append(s)
                    log(f"{prefix} {_summary(s)} ({time.monotonic() - t0:.1f} s)")
                except Exception as exc:  # one failed measurement must not stop the run
                    tail = f"; {name} exited: {broker.tail()}" if broker and broker.exited() else ""
                    samples.append(Sample(scenario, name, rnd, error=f"{exc}"[:200]))
                    log(f"{prefix} FAILED: {exc}{tail}")
                finally:
                    if broker is not None:
                        broker.stop()
    return samples


def _summary(s: Sample) -> str:
    bits = []
    for key, value in s.metrics.items():
        unit = ROW_INFO.get((s.scenario, key), ("", "", True))[1]
        bits.append(f"{key}={fmt(value, unit)}")
    if s.cpu is not None:
        bits.append(f"cpu {s.cpu:.0f}%" + _roles(s.cpu_by_role))
    if s.gen_cpu is not None:
        bits.append(f"gen {s.gen_cpu:.0f}%")
    if s.per_worker:
        bits.append("conns/worker " + "/".join(str(n) for n in s.per_worker))
    if s.crossed is not None:
        bits.append(f"crossed {s.crossed:.0%}")
    if s.load is not None:
        bits.append(f"load {s.load:.2f}")
    if s.lost:
        bits.append(f"LOST {s.lost}")
    return ", ".join(bits)


def _roles(by_role: dict[str, float]) -> str:
    parts = [f"{r} {by_role[r]:.0f}" for r in ("redis", "supervisor") if by_role.get(r)]
    return f" ({', '.join(parts)})" if parts else ""


# -- tables ------------------------------------------------------------------------------------


def _pick(samples: Sequence[Sample], scenario: str, broker: str) -> list[Sample]:
    return [s for s in samples if s.scenario == scenario and s.broker == broker and not s.error]


def render_main(samples: Sequence[Sample], brokers: Sequence[str]) -> str:
    """Medians per broker and the per-round ratio medians."""
    ratios = [r for r in RATIOS if r[0] in brokers and r[1] in brokers]
    head = ["scenario", "unit", *brokers, *(h for _, _, h in ratios), "lost/dup"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for scenario, key in MAIN_ROWS:
        if not any(s.scenario == scenario for s in samples):
            continue
        label, unit, hib = ROW_INFO[(scenario, key)]
        cells = [f"{label} [tcp]", unit + ("" if hib else " (lower is better)")]
        for b in brokers:
            cells.append(fmt(median(s.metrics.get(key) for s in _pick(samples, scenario, b)), unit))
        for num, den, _ in ratios:
            r, _rs = per_round_ratio(samples, scenario, key, num, den)
            cells.append("n/a" if r is None else f"{r:.2f}")
        lost = sum(s.lost or 0 for s in samples if s.scenario == scenario)
        dup = sum(s.dup or 0 for s in samples if s.scenario == scenario)
        cells.append(f"{lost}/{dup}" if not lost else f"**{lost}/{dup} LOST**")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_cpu(samples: Sequence[Sample], brokers: Sequence[str], scenarios: Sequence[str]) -> str:
    """Median CPU % per broker (100 = one core): total over every process of the broker, the
    part of it that was redis-server, and the load generator's."""
    head = ["scenario", *brokers]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for scenario in scenarios:
        cells = [scenario]
        for b in brokers:
            ss = _pick(samples, scenario, b)
            total = median(s.cpu for s in ss)
            redis = median(s.cpu_by_role.get("redis") for s in ss)
            gen = median(s.gen_cpu for s in ss)
            text = "n/a" if total is None else f"{total:.0f}"
            if redis:
                text += f" (redis {redis:.0f})"
            if gen is not None:
                text += f"; gen {gen:.0f}"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_crossing(
    samples: Sequence[Sample], brokers: Sequence[str], scenarios: Sequence[str]
) -> str:
    """For the cluster forms: connections per worker, deliveries crossing workers, Redis
    commands and CPU per forwarded message, broker CPU per delivery or connect."""
    head = [
        "scenario",
        "broker",
        "connections per worker",
        "deliveries crossing workers",
        "forwards / inbox entries (XADD) per published msg",
        "Redis µs per forward",
        "broker µs per delivery (per connect)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for scenario in scenarios:
        for b in brokers:
            if b == "mosquitto":
                continue
            ss = _pick(samples, scenario, b)
            if not ss:
                continue
            split = "; ".join("/".join(f"{n:,}" for n in s.per_worker) for s in ss if s.per_worker)
            crossed = median(s.crossed for s in ss)
            fpm = median(s.forwards_per_message for s in ss)
            xadd = median(s.costs.get("entries_per_published") for s in ss)
            redis_fwd = median(s.costs.get("redis_us_per_forward") for s in ss)
            per = median(
                s.costs.get("broker_us_per_delivery", s.costs.get("broker_us_per_connect"))
                for s in ss
            )
            cells = [
                scenario,
                b,
                split or "1 process",
                "n/a" if crossed is None else f"{crossed:.0%}",
                f"{_f(fpm, 2)} / {_f(xadd, 2)}",
                _f(redis_fwd, 1),
                _f(per, 2),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_rounds(samples: Sequence[Sample], brokers: Sequence[str]) -> str:
    """Every round's figure (and the load average then), for the main rows."""
    rounds = sorted({s.round for s in samples})
    head = ["scenario", "broker", *(f"round {r}" for r in rounds)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for scenario, key in MAIN_ROWS:
        unit = ROW_INFO[(scenario, key)][1]
        for b in brokers:
            ss = {s.round: s for s in samples if s.scenario == scenario and s.broker == b}
            if not ss:
                continue
            cells = [f"{scenario} {key}", b]
            for r in rounds:
                s = ss.get(r)
                if s is None:
                    cells.append("")
                elif s.error:
                    cells.append("failed")
                else:
                    load = f" (load {s.load:.1f})" if s.load is not None else ""
                    cells.append(fmt(s.metrics.get(key), unit) + load)
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_probes(samples: Sequence[Sample]) -> str:
    """The Redis cost probes: median µs per event, per cluster form."""
    keys = [
        ("quiet", "redis_us_per_s", "idle cluster: Redis CPU per second"),
        ("routes", "redis_us_add", "route added (one at a time): Redis CPU"),
        ("routes", "redis_us_del", "route removed: Redis CPU"),
        ("routes", "broker_us_add", "route added: broker CPU (all workers)"),
        ("churn", "redis_us_connect", "connect (64 at a time): Redis CPU"),
        ("churn", "broker_us_connect", "connect: broker CPU (all workers)"),
        ("churn", "redis_us_disconnect", "disconnect: Redis CPU"),
        ("churn", "broker_us_disconnect", "disconnect: broker CPU"),
    ]
    brokers = [b for b in ("mqttd-cluster1", "mqttd-w2") if any(s.broker == b for s in samples)]
    head = ["µs per event (median)", *brokers]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for scenario, key, label in keys:
        if not any(s.scenario == scenario for s in samples):
            continue
        cells = [label]
        for b in brokers:
            cells.append(_f(median(s.costs.get(key) for s in _pick(samples, scenario, b)), 1))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _f(v: float | None, digits: int) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}"


def load_summary(samples: Sequence[Sample], start: float | None) -> str:
    """The machine's 1-minute load average: at the start, and over the measurements."""
    loads = [s.load for s in samples if s.load is not None]
    text = f"load average (1 min) at the start {start:.2f}" if start is not None else ""
    if loads:
        text += (
            f"; over the {len(loads)} measurements min {min(loads):.2f}, median "
            f"{statistics.median(loads):.2f}, max {max(loads):.2f}"
        )
    return text


def starters_for(
    brokers: Sequence[str],
    start: Callable[..., Broker],
    start_mosquitto: Callable[[Any, Certs | None], Broker],
    fresh: Callable[[str], Any],
    durability: str | None,
) -> dict[str, Callable[[], Broker]]:
    """A no-argument starter per broker form name (no certificates: TCP only)."""

    def starter(name: str) -> Callable[[], Broker]:
        if name == "mosquitto":
            return lambda: start_mosquitto(fresh(name), None)
        if name == "mqttd":
            options: dict[str, Any] = {}
        elif name == "mqttd-cluster1":
            options = {"cluster": True}
        elif name.startswith("mqttd-w"):
            options = {"workers": int(name.removeprefix("mqttd-w"))}
        else:
            raise ValueError(f"unknown broker form {name!r}")
        return lambda: start(fresh(name), None, durability=durability, **options)

    return {name: starter(name) for name in brokers}


@dataclass
class Run:
    """A whole ``--scaling`` run: what was measured, and every sample."""

    brokers: list[str]
    flows: list[str]
    probes: list[str]
    rounds: int
    load_start: float | None
    elapsed_s: float
    samples: list[Sample]

    def to_json(self) -> dict[str, Any]:
        """The run as JSON-able data (``from_json`` reads it back)."""
        data = {k: v for k, v in vars(self).items() if k != "samples"}
        data["samples"] = [vars(s) for s in self.samples]
        return data

    @classmethod
    def from_json(cls, data: Any) -> Run:
        """A run from ``to_json`` data (or a bare list of samples, as early runs saved)."""
        if isinstance(data, list):
            data = {"samples": data}
        samples = [Sample(**s) for s in data["samples"]]
        seen = list(dict.fromkeys(s.scenario for s in samples))
        brokers = data.get("brokers") or [
            b for b in SCALING_BROKERS if any(s.broker == b for s in samples)
        ]
        return cls(
            brokers,
            data.get("flows") or [s for s in seen if s not in MODEL_PROBES],
            data.get("probes") or [s for s in seen if s in MODEL_PROBES],
            data.get("rounds") or max((s.round for s in samples), default=0),
            data.get("load_start"),
            data.get("elapsed_s") or 0.0,
            samples,
        )


def render_report(run: Run) -> str:
    """Every table of a scaling run (the model's excepted: ``mqttbench.model``)."""
    samples, brokers, flows = run.samples, run.brokers, run.flows
    parts = [
        f"Medians of {run.rounds} round(s); ratios are medians of per-round ratios. "
        + load_summary(samples, run.load_start)
        + ".",
        render_main(samples, brokers),
        "CPU % (100 = one core), median: the broker's processes summed (workers, supervisor,"
        " redis-server), redis-server's part in brackets; gen = the load generator's CPU over"
        " its active time.",
        render_cpu(samples, brokers, flows),
        "Where the connections went and what crossed workers (cluster forms):",
        render_crossing(samples, brokers, flows),
    ]
    if run.probes:
        parts += ["Redis cost probes:", render_probes(samples)]
    parts += ["Every round:", render_rounds(samples, brokers)]
    return "\n\n".join(parts)


#: The traffic shapes of the model: (name, scenario, subscribers per message).
MODEL_TOPOLOGIES = [("pairs", "pairs", 1), ("many→many", "many", 100), ("fan-out", "fanout", 1000)]


def costs_from(samples: Sequence[Sample]) -> Costs:
    """The model's inputs (``model.Costs``) from a scaling run's samples: medians over rounds
    of the single-node cluster's and the two workers' figures (see ``mqttbench.model``)."""
    cl, w2 = "mqttd-cluster1", "mqttd-w2"

    def med(scenario: str, broker: str, key: str) -> float | None:
        return median(s.costs.get(key) for s in _pick(samples, scenario, broker))

    c = Costs()
    # Forwarding, from pairs: one delivery per message, so per delivery = per message.
    one, split = (
        med("pairs", cl, "broker_us_per_delivery"),
        med("pairs", w2, "broker_us_per_delivery"),
    )
    forwards = med("pairs", w2, "forwards_per_published")
    if one is not None and split is not None and forwards:
        c.forward_us = forward_cost(split, one, forwards)
    c.redis_forward_us = med("pairs", w2, "redis_us_per_forward")
    for name, scenario, subscribers in MODEL_TOPOLOGIES:
        t = Topology(name, subscribers, med(scenario, cl, "broker_us_per_delivery"))
        per_delivery = med(scenario, w2, "broker_us_per_delivery")
        fpp = med(scenario, w2, "forwards_per_published")
        if per_delivery is not None and fpp is not None and c.forward_us is not None:
            t.delivery_split_us = split_delivery_cost(per_delivery, subscribers, fpp, c.forward_us)
        if t.delivery_us is not None:
            c.topologies.append(t)
    c.connect_us = med("idle", w2, "broker_us_per_connect")
    c.redis_connect_us = med("churn", w2, "redis_us_connect")
    c.redis_disconnect_us = med("churn", w2, "redis_us_disconnect")
    c.route_n1_us = med("routes", cl, "redis_us_add")
    c.route_n2_us = med("routes", w2, "redis_us_add")
    c.idle_n1_us_per_s = med("quiet", cl, "redis_us_per_s")
    c.idle_n2_us_per_s = med("quiet", w2, "redis_us_per_s")
    return c
