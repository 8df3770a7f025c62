"""``python scripts/bench.py --compare-protocols``: the same scenarios with MQTT 3.1.1 and
MQTT 5 clients, in interleaved rounds, with medians and the ratio MQTT 5 / MQTT 3.1.1.

Theory of operation
-------------------
Each round measures every (scenario, transport) twice on each broker: once with clients of
protocol level 4 and once with level 5, each on a freshly started broker, so neither inherits
the other's heap, sessions or warm caches. The order of the two alternates from round to round,
so neither always runs first. MQTT 5 clients send empty property sections (``load``): what is
compared is what the broker's MQTT 5 code path costs for the same traffic, not a feature.

A figure is the median over rounds; a ratio is the median of the per-round ratios v5/v4 (both
measured seconds apart, under nearly the same machine load), not the ratio of medians. Beside
each rate the broker's CPU per delivery: on a 2-core machine the load generator shares the
cores, so a rate can be bound by the generator, while the broker's µs per delivery is what the
protocol costs it.

The bound issue 13 sets: MQTT 5 may not cost more than 10 % of the MQTT 3.1.1 throughput, so
a rate's ratio must be at least 0.90 (a time's at most 1/0.90).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .brokers import Broker
from .load import PROTOCOLS
from .report import fmt
from .scaling import median
from .scenarios import ROW_INFO, Settings, metrics_of, run_unit, scenario_units

#: What ``--compare-protocols`` measures without ``--scenarios``.
COMPARE_SCENARIOS = ["qos0", "qos1", "fanout"]
#: MQTT 5 may cost at most this share of the MQTT 3.1.1 throughput (issue 13).
BOUND = 0.10


@dataclass
class Sample:
    """One measurement: a scenario over a transport, on a broker, with one protocol level."""

    scenario: str
    transport: str
    broker: str
    protocol: int
    round: int
    metrics: dict[str, float | None] = field(default_factory=dict)
    cpu: float | None = None  # the broker's CPU %, all its processes (100 = one core)
    us_per_delivery: float | None = None  # the broker's CPU µs per delivery
    lost: int | None = None
    dup: int | None = None
    error: str = ""


def protocol_order(rnd: int) -> list[int]:
    """The protocol levels in the order round ``rnd`` (from 1) measures them."""
    return list(PROTOCOLS) if rnd % 2 else list(reversed(PROTOCOLS))


def sample_of(
    key: tuple[str, str, str, int, int], unit: Any, raw: dict[str, Any], st: Settings
) -> Sample:
    """A ``Sample`` for ``key`` (scenario, transport, broker, protocol, round) from one unit's
    raw results (``scenarios.run_unit``)."""
    metrics = metrics_of(unit, raw, st)
    s = Sample(*key)
    s.metrics = {k: m.value for k, m in metrics.items()}
    s.cpu = raw.get("cpu")
    s.lost, s.dup = raw.get("lost"), raw.get("dup")
    usage = raw.get("usage")
    delivered = raw.get("delivered")
    if usage is not None and delivered:
        seconds = usage.cpu_seconds("broker")
        s.us_per_delivery = None if seconds is None else seconds * 1e6 / delivered
    return s


def run_rounds(
    brokers: Sequence[str],
    starters: dict[str, Callable[[], Broker]],
    plan: Sequence[tuple[str, str]],
    rounds: int,
    st: Settings,
    log: Callable[[str], None],
) -> list[Sample]:
    """Every round: every (scenario, transport) of ``plan`` on every broker, with each
    protocol level (``protocol_order``), each on a fresh broker. A failed measurement is kept
    as a Sample with ``error`` and the run goes on."""
    samples: list[Sample] = []
    total = rounds * len(plan) * len(brokers) * len(PROTOCOLS)
    for rnd in range(1, rounds + 1):
        for scenario, transport in plan:
            for name in brokers:
                for protocol in protocol_order(rnd):
                    key = (scenario, transport, name, protocol, rnd)
                    level = "5" if protocol == 5 else "3.1.1"
                    log_prefix = (
                        f"[{len(samples) + 1}/{total}] round {rnd}: {scenario} over {transport}"
                        f" on {name}, MQTT {level} ..."
                    )
                    samples.append(_measure(key, starters[name], st, log_prefix, log))
    return samples


def _measure(
    key: tuple[str, str, str, int, int],
    starter: Callable[[], Broker],
    st: Settings,
    log_prefix: str,
    log: Callable[[str], None],
) -> Sample:
    """One measurement on a broker started for it."""
    scenario, transport, name, protocol, rnd = key
    t0 = time.monotonic()
    broker: Broker | None = None
    try:
        broker = starter()
        if transport not in broker.target.ports:
            raise RuntimeError(f"{name} has no {transport} listener")
        tag = f"{scenario}-{transport}-{name}-v{protocol}-{rnd}-{time.monotonic_ns()}"
        unit = scenario_units(scenario, transport, dataclasses.replace(st, protocol=protocol), tag)[
            0
        ]
        s = sample_of(key, unit, run_unit(unit, broker.target, st, tag), st)
        log(f"{log_prefix} {_summary(s)} ({time.monotonic() - t0:.1f} s)")
        return s
    except Exception as exc:  # one failed measurement must not stop the run
        exited = broker is not None and broker.exited()
        tail = f"; {name} exited: {broker.tail()}" if broker is not None and exited else ""
        log(f"{log_prefix} FAILED: {exc}{tail}")
        return Sample(*key, error=f"{exc}"[:200])
    finally:
        if broker is not None:
            broker.stop()


def _summary(s: Sample) -> str:
    bits = [
        f"{key}={fmt(value, ROW_INFO.get((s.scenario, key), ('', '', True))[1])}"
        for key, value in s.metrics.items()
    ]
    if s.cpu is not None:
        bits.append(f"cpu {s.cpu:.0f}%")
    if s.us_per_delivery is not None:
        bits.append(f"{s.us_per_delivery:.2f} µs/delivery")
    if s.lost:
        bits.append(f"LOST {s.lost}")
    return ", ".join(bits)


def ratios(
    samples: Sequence[Sample], scenario: str, transport: str, broker: str, key: str
) -> list[float]:
    """The per-round ratios v5/v4 of one figure (``"us"``: the broker's µs per delivery);
    rounds where either measurement is missing are left out."""
    by: dict[tuple[int, int], float | None] = {}
    for s in samples:
        if (s.scenario, s.transport, s.broker) == (scenario, transport, broker) and not s.error:
            by[(s.protocol, s.round)] = s.us_per_delivery if key == "us" else s.metrics.get(key)
    out = []
    for rnd in sorted({r for (_, r) in by}):
        v4, v5 = by.get((4, rnd)), by.get((5, rnd))
        if v4 and v5 is not None:
            out.append(v5 / v4)
    return out


def within_bound(ratio: float | None, higher_is_better: bool) -> bool | None:
    """Whether a v5/v4 ratio keeps MQTT 5's cost within ``BOUND`` (None: no ratio)."""
    if ratio is None:
        return None
    return ratio >= 1 - BOUND if higher_is_better else ratio <= 1 / (1 - BOUND)


def render_table(samples: Sequence[Sample], brokers: Sequence[str]) -> str:
    """Medians per protocol level, the median per-round ratio v5/v4 (and its range over the
    rounds), whether the bound holds, CPU % and the broker's µs per delivery."""
    head = [
        "scenario",
        "unit",
        "MQTT 3.1.1",
        "MQTT 5",
        "ratio v5/v4 (range)",
        f"within {BOUND:.0%}",
        "CPU% v4",
        "CPU% v5",
        "µs/delivery v4",
        "µs/delivery v5",
        "ratio (range)",
        "lost/dup v4",
        "lost/dup v5",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    seen: list[tuple[str, str, str]] = []
    for s in samples:
        if (s.scenario, s.transport, s.broker) not in seen:
            seen.append((s.scenario, s.transport, s.broker))
    for scenario, transport, broker in seen:
        mine = [
            s
            for s in samples
            if (s.scenario, s.transport, s.broker) == (scenario, transport, broker) and not s.error
        ]
        by_level = {p: [s for s in mine if s.protocol == p] for p in PROTOCOLS}
        for (sc, key), (label, unit, hib) in ROW_INFO.items():
            if sc != scenario or not any(key in s.metrics for s in mine):
                continue
            rs = ratios(samples, scenario, transport, broker, key)
            ratio = median(rs)
            ok = within_bound(ratio, hib)
            where = f" [{transport}]" + (f" on {broker}" if len(brokers) > 1 else "")
            cells = [label + where, unit + ("" if hib else " (lower is better)")]
            cells += [fmt(median(s.metrics.get(key) for s in by_level[p]), unit) for p in PROTOCOLS]
            cells.append(_ratio_cell(ratio, rs))
            cells.append("n/a" if ok is None else ("yes" if ok else "**no**"))
            first = key == next(k for (c, k) in ROW_INFO if c == scenario)
            if first:
                us = ratios(samples, scenario, transport, broker, "us")
                cells += [_f(median(s.cpu for s in by_level[p]), 0) for p in PROTOCOLS]
                cells += [_f(median(s.us_per_delivery for s in by_level[p]), 2) for p in PROTOCOLS]
                cells.append(_ratio_cell(median(us), us))
                cells += [_lost_dup(by_level[p]) for p in PROTOCOLS]
            else:
                cells += [""] * 7
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_report(samples: Sequence[Sample], brokers: Sequence[str], rounds: int) -> str:
    """The table, what it is made of, and the measurements that failed."""
    text = (
        f"Medians over {rounds} round(s); a ratio is the median of the per-round ratios"
        " v5/v4, with their range over the rounds. µs/delivery: the broker's CPU time per"
        " message delivered (its CPU share of the ratio's cost, whatever bounds the rate).\n\n"
        + render_table(samples, brokers)
    )
    failed = [s for s in samples if s.error]
    if failed:
        text += "\n\nFailed measurements:\n" + "\n".join(
            f"- round {s.round}: {s.scenario} over {s.transport} on {s.broker}, v{s.protocol}:"
            f" {s.error}"
            for s in failed
        )
    return text


def _ratio_cell(ratio: float | None, rs: Sequence[float]) -> str:
    if ratio is None:
        return "n/a"
    if len(rs) < 2:
        return f"{ratio:.2f}"
    return f"{ratio:.2f} ({min(rs):.2f} to {max(rs):.2f})"


def _f(v: float | None, digits: int) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _lost_dup(samples: Sequence[Sample]) -> str:
    lost = sum(s.lost or 0 for s in samples)
    dup = sum(s.dup or 0 for s in samples)
    return f"**{lost}/{dup} DROPPED**" if lost else f"{lost}/{dup}"
