"""``python scripts/bench.py``: the command line, and the run that interleaves brokers.

For each (scenario, transport) in the plan, each broker in turn is started fresh, measured and
stopped, so brokers take turns under the same machine load; a failed measurement is reported in
its row and the run goes on. ``--workers N`` and ``--cluster`` choose the form of mqttd
(``brokers``); ``--scaling`` runs the rounds of ``scaling`` instead, ``--model`` adds the Redis
cost probes and the model of ``model``. ``--protocol 5`` makes the clients speak MQTT 5;
``--compare-protocols`` runs the rounds of ``protocols``: MQTT 3.1.1 against MQTT 5.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import protocols, scaling
from .brokers import (
    REDIS_PERSISTENCE,
    Broker,
    Certs,
    make_certs,
    mqttd_name,
    start_mosquitto_broker,
    start_mqttd_broker,
    version_of,
)
from .load import PROTOCOLS, Target
from .machine import load_average
from .model import render_costs, render_model
from .report import Metric, Row, fmt, fmt_ld, render_table, write_markdown
from .scenarios import (
    CLUSTER_PROBES,
    DEFAULT_SCENARIOS,
    ROW_INFO,
    SCENARIOS,
    Settings,
    measure,
    scenario_units,
)

DESCRIPTION = (
    "Benchmark an MQTT broker (mqttd, Mosquitto, or any running broker) with its own load"
    " generator."
)


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    ap = argparse.ArgumentParser(description=DESCRIPTION)
    who = ap.add_mutually_exclusive_group()
    who.add_argument(
        "--against", choices=["mosquitto"], help="run mosquitto and mqttd, interleaved"
    )
    who.add_argument(
        "--broker", choices=["mosquitto", "mqttd"], help="start and measure one broker"
    )
    who.add_argument("--host", help="measure an already running broker at this address")
    ap.add_argument("--port", type=int, default=1883, help="its MQTT/TCP port (with --host)")
    ap.add_argument("--ws-port", type=int, help="its MQTT-over-WebSocket port (with --host)")
    ap.add_argument("--pid", type=int, help="its process id, for CPU%% and RSS (with --host)")
    ap.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="start mqttd as `mqttd --workers N` (N=1 is the plain process, by mqttd's CLI)",
    )
    ap.add_argument(
        "--cluster",
        action="store_true",
        help="start mqttd as one cluster node over a redis-server this script starts",
    )
    ap.add_argument(
        "--durability",
        choices=sorted(REDIS_PERSISTENCE),
        help="mqttd's [store] durability, also its Redis's persistence (default: mqttd's)",
    )
    ap.add_argument(
        "--scaling",
        action="store_true",
        help="interleaved rounds of mqttd (single, cluster of 1, --workers 1, --workers 2)"
        " and mosquitto: medians and ratios",
    )
    ap.add_argument(
        "--protocol",
        type=int,
        choices=PROTOCOLS,
        default=4,
        help="the clients' protocol level: 4 (MQTT 3.1.1, the default) or 5 (MQTT 5; the"
        " cluster probes quiet, routes and churn stay 3.1.1)",
    )
    ap.add_argument(
        "--compare-protocols",
        action="store_true",
        help="interleaved rounds of each scenario with MQTT 3.1.1 and with MQTT 5 clients"
        " (on mqttd, or on --broker): medians and the ratio v5/v4 (default scenarios "
        f"{','.join(protocols.COMPARE_SCENARIOS)})",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        help="rounds of --scaling (default 3) or --compare-protocols (default 5); --quick 1",
    )
    ap.add_argument(
        "--forms",
        help="with --scaling: comma-separated subset of "
        f"{','.join(scaling.SCALING_BROKERS)} (default: all)",
    )
    ap.add_argument(
        "--model",
        action="store_true",
        help="with --scaling: also the Redis cost probes and the 8/16-core model",
    )
    ap.add_argument(
        "--from-json",
        metavar="FILE",
        help="print (and --markdown) the tables of a run saved with --scaling --json FILE",
    )
    ap.add_argument("--quick", action="store_true", help="short durations: a smoke check")
    ap.add_argument(
        "--scenarios",
        help=f"comma-separated subset of {','.join(SCENARIOS)} (default: "
        f"{','.join(DEFAULT_SCENARIOS)}; with --scaling: {','.join(scaling.SCALING_SCENARIOS)})",
    )
    ap.add_argument("--transports", default="tcp,ws", help="comma-separated: tcp,ws")
    ap.add_argument("--duration", type=float, help="seconds per throughput measurement")
    ap.add_argument("--idle-conns", type=int, help="idle connections to open (default 5000)")
    ap.add_argument("--markdown", help="also write the table (with machine info) to this file")
    ap.add_argument("--json", help="also write all raw results to this JSON file")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    if args.host and not args.host.startswith("127.") and args.host != "localhost":
        print("refusing to load a non-loopback host", file=sys.stderr)
        return 2
    if args.workers < 0 or (args.cluster and args.workers > 1):
        print("--workers N needs N >= 1, and --cluster is one node (no --workers)", file=sys.stderr)
        return 2
    if args.from_json:
        return _from_json(args, argv)
    if args.forms and not set(args.forms.split(",")) <= set(scaling.SCALING_BROKERS):
        print(f"--forms: choose from {','.join(scaling.SCALING_BROKERS)}", file=sys.stderr)
        return 2
    if args.model and not args.scaling:
        print("--model goes with --scaling", file=sys.stderr)
        return 2
    if args.compare_protocols and (args.scaling or args.host or args.protocol != 4):
        print("--compare-protocols starts its brokers and picks the protocols", file=sys.stderr)
        return 2
    quick = args.quick
    st = Settings(
        duration_s=args.duration or (1.0 if quick else 10.0),
        quick=quick,
        idle_conns=args.idle_conns or (1000 if quick and args.scaling else 5000),
        big_reps=1 if quick else 3,
        big_timeout_s=40.0 if quick else 60.0,
        probes=20 if quick else 100,
        quiet_s=2.0 if quick else 10.0,
        route_changes=100 if quick else 1000,
        churn_conns=300 if quick else 2000,
        protocol=args.protocol,
    )
    default = scaling.SCALING_SCENARIOS if args.scaling else DEFAULT_SCENARIOS
    if args.compare_protocols:
        default = protocols.COMPARE_SCENARIOS
    scenarios = args.scenarios.split(",") if args.scenarios else list(default)
    for s in scenarios:
        if s not in SCENARIOS:
            print(f"unknown scenario {s!r}; choose from {SCENARIOS}", file=sys.stderr)
            return 2
    transports = args.transports.split(",")
    fd_limit = raise_fd_limit()
    if "idle" in scenarios and fd_limit < st.idle_conns + 1000:
        st.idle_conns = max(100, fd_limit - 1000)
        print(f"fd limit {fd_limit}: idle scenario uses {st.idle_conns} connections")
    mqttd = mqttd_name(args.workers, args.cluster)
    if args.against:
        names = ["mosquitto", mqttd]
    elif args.broker:
        names = [mqttd if args.broker == "mqttd" else args.broker]
    elif args.compare_protocols:
        names = [mqttd]
    else:
        names = ["external"]
    workdir = Path(tempfile.mkdtemp(prefix="mqttd-bench-"))
    # Mosquitto started as root drops to the 'mosquitto' user: it must be able to read the
    # generated config and the throw-away certificates.
    workdir.chmod(0o755)
    if args.scaling:
        try:
            return _run_scaling(args, argv, st, scenarios, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    certs = make_certs(workdir)
    options = {"workers": args.workers, "cluster": args.cluster, "durability": args.durability}
    starters: dict[str, Callable[[Path, Certs | None], Broker]] = {
        "mosquitto": start_mosquitto_broker,
        mqttd: functools.partial(start_mqttd_broker, **options),
    }
    rows: dict[tuple[str, str, str], Row] = {}
    raw: list[dict[str, Any]] = []
    versions = {n: version_of(n) for n in names if n != "external"}
    plan = []
    for s in scenarios:
        for t in ["tcp", "ws", "wss"] if s == "mb1" else transports:
            if s != "mb1" and t == "wss":
                continue
            plan.append((s, t))
    if args.compare_protocols:
        try:
            return _run_protocols(args, argv, st, plan, names, starters, certs, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    started = time.monotonic()
    print(
        f"bench: {len(plan)} measurements x {len(names)} broker(s); workdir {workdir}",
        flush=True,
    )
    try:
        for i, (s, t) in enumerate(plan, 1):
            for name in names:
                tag = f"{s}-{t}-{name}-{os.getpid()}"
                print(f"[{i}/{len(plan)}] {s} over {t} on {name} ...", end=" ", flush=True)
                t0 = time.monotonic()
                broker: Broker | None = None
                try:
                    if name == "external":
                        ports = {"tcp": args.port}
                        if args.ws_port:
                            ports["ws"] = args.ws_port
                        target = Target("external", args.host, ports, args.pid)
                    else:
                        broker = starters[name](_fresh(workdir, name), certs)
                        target = broker.target
                    if t not in target.ports:
                        print(f"skipped ({name} has no {t} listener)")
                        continue
                    results = {}
                    for unit in scenario_units(s, t, st, tag):
                        results.update(measure(unit, target, st, tag))
                    for key, m in results.items():
                        label, unit_name, hib = ROW_INFO[(s, key)]
                        row = rows.setdefault((s, key, t), Row(f"{label} [{t}]", unit_name, hib))
                        row.cells[name] = m
                    raw.append(
                        {"scenario": s, "transport": t, "broker": name, **_jsonable(results)}
                    )
                    summary = ", ".join(
                        f"{k}={fmt(m.value, ROW_INFO[(s, k)][1])}" for k, m in results.items()
                    )
                    first = next(iter(results.values()))
                    cpu = f"{first.cpu:.0f}%" if first.cpu is not None else "n/a"
                    print(
                        f"{summary}; cpu {cpu}; lost/dup {fmt_ld(first)}"
                        f" ({time.monotonic() - t0:.1f} s)",
                        flush=True,
                    )
                except Exception as exc:  # one failed measurement must not stop the run
                    print(f"FAILED: {exc}", flush=True)
                    if broker is not None and broker.exited():
                        print(f"  {name} exited: {broker.tail()}", flush=True)
                    for key in [k for (sc, k) in ROW_INFO if sc == s]:
                        label, unit_name, hib = ROW_INFO[(s, key)]
                        row = rows.setdefault((s, key, t), Row(f"{label} [{t}]", unit_name, hib))
                        row.cells[name] = Metric(None, note=f"failed: {exc}"[:120])
                finally:
                    if broker is not None:
                        broker.stop()
    except KeyboardInterrupt:
        print("\ninterrupted; partial results follow", flush=True)
    elapsed = time.monotonic() - started
    ordered = [
        rows[k]
        for s in scenarios
        for (sc, key) in ROW_INFO
        if sc == s
        for t in ["tcp", "ws", "wss"]
        if (k := (s, key, t)) in rows
    ]
    _publish_report(render_table(ordered, names), elapsed, args, argv, names, versions, raw)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _run_scaling(
    args: argparse.Namespace,
    argv: list[str] | None,
    st: Settings,
    scenarios: list[str],
    workdir: Path,
) -> int:
    """``--scaling`` (and ``--model``): the interleaved rounds, their tables, the model."""
    rounds = args.rounds or (1 if st.quick else 3)
    brokers = list(scaling.SCALING_BROKERS)
    if args.forms:
        brokers = [b for b in brokers if b in args.forms.split(",")]
    probes = list(CLUSTER_PROBES) if args.model else []
    flows = [s for s in scenarios if s not in CLUSTER_PROBES]
    probes += [s for s in scenarios if s in CLUSTER_PROBES and s not in probes]
    starters = scaling.starters_for(
        brokers,
        start_mqttd_broker,
        start_mosquitto_broker,
        lambda name: _fresh(workdir, name),
        args.durability,
    )
    versions = {n: version_of(n) for n in ("mosquitto", "mqttd")}
    load0 = load_average()
    print(
        f"bench --scaling: {rounds} round(s) of {','.join(flows + probes)} on "
        f"{', '.join(brokers)}; load {load0}; workdir {workdir}",
        flush=True,
    )
    started = time.monotonic()
    try:
        samples = scaling.run_rounds(
            brokers, starters, flows, probes, rounds, st, lambda line: print(line, flush=True)
        )
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
        return 1
    elapsed = time.monotonic() - started
    run = scaling.Run(brokers, flows, probes, rounds, load0, elapsed, samples)
    _report_scaling(run, args, argv, versions)
    if args.json:
        Path(args.json).write_text(json.dumps(run.to_json(), indent=1, default=str))
    return 0


def _run_protocols(
    args: argparse.Namespace,
    argv: list[str] | None,
    st: Settings,
    plan: list[tuple[str, str]],
    names: list[str],
    starters: dict[str, Callable[[Path, Certs | None], Broker]],
    certs: Certs | None,
    workdir: Path,
) -> int:
    """``--compare-protocols``: the interleaved rounds of MQTT 3.1.1 and MQTT 5, their table."""
    rounds = args.rounds or (1 if st.quick else 5)
    versions = {n: version_of(n) for n in names}
    print(
        f"bench --compare-protocols: {rounds} round(s) of {len(plan)} measurement(s) x"
        f" {len(names)} broker(s) x MQTT 3.1.1 and 5; load {load_average()}; workdir {workdir}",
        flush=True,
    )
    started = time.monotonic()

    def fresh(name: str) -> Callable[[], Broker]:
        return lambda: starters[name](_fresh(workdir, name), certs)

    try:
        samples = protocols.run_rounds(
            names,
            {n: fresh(n) for n in names},
            plan,
            rounds,
            st,
            lambda line: print(line, flush=True),
        )
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
        return 1
    elapsed = time.monotonic() - started
    text = protocols.render_report(samples, names, rounds)
    _publish_report(text, elapsed, args, argv, names, versions, [vars(s) for s in samples])
    return 0


def _report_scaling(
    run: scaling.Run,
    args: argparse.Namespace,
    argv: list[str] | None,
    versions: dict[str, str],
) -> None:
    text = scaling.render_report(run)
    if run.probes:
        costs = scaling.costs_from(run.samples)
        text += "\n\n" + "\n\n".join(
            [
                "Model inputs:",
                render_costs(costs),
                "Model (bounds per N workers on N cores, Redis on one core of its own):",
                render_model(costs),
            ]
        )
    _publish_report(text, run.elapsed_s, args, argv, ["mosquitto", "mqttd"], versions)


def _publish_report(
    text: str,
    elapsed: float,
    args: argparse.Namespace,
    argv: list[str] | None,
    names: list[str],
    versions: dict[str, str],
    raw: Any = None,
) -> None:
    """Print a finished report; write it to ``--markdown`` and ``raw`` to ``--json`` if asked
    (``raw`` None: this report has no JSON form)."""
    print()
    print(text)
    print(f"\n(total {elapsed:.0f} s)")
    if args.markdown:
        write_markdown(Path(args.markdown), text, names, versions, argv, elapsed)
    if args.json and raw is not None:
        Path(args.json).write_text(json.dumps(raw, indent=1, default=str))


def _from_json(args: argparse.Namespace, argv: list[str] | None) -> int:
    """``--from-json FILE``: the tables (and model) of a saved ``--scaling`` run again."""
    run = scaling.Run.from_json(json.loads(Path(args.from_json).read_text()))
    versions = {n: version_of(n) for n in ("mosquitto", "mqttd")}
    _report_scaling(run, args, argv, versions)
    return 0


def _fresh(workdir: Path, name: str) -> Path:
    d = workdir / f"{name}-{time.monotonic_ns()}"
    d.mkdir(mode=0o755)
    return d


def _jsonable(results: dict[str, Metric]) -> dict[str, Any]:
    return {k: vars(m) for k, m in results.items()}
