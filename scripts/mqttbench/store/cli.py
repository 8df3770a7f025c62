"""``python scripts/bench_store.py``: every ``[store] durability`` mode of mqttd, measured in one
run ("memory", "os", "fsync" in turn per scenario, so the modes share the machine's load).

Nothing the broker does is taken on trust: its JSON log is read all along (errors are counted
against the check), every wait has a deadline, brokers listen on 127.0.0.1 only and are stopped
(SIGTERM, then SIGKILL) after each measurement.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from conformance.broker_process import BrokerProcess
from conformance.wire import WireError

from ..machine import cpu_seconds
from .report import disk_info, fmt, fsync_probe_ms, machine_info, markdown_report, render_table
from .scenarios import ROWS, SCENARIOS, Result, Settings, start_broker

MODES = ("memory", "os", "fsync")
DESCRIPTION = (
    "Benchmark mqttd's durable store: every ``[store] durability`` mode, measured in one run."
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    ap = argparse.ArgumentParser(description=DESCRIPTION)
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
            broker: BrokerProcess | None = None
            try:
                broker = start_broker(mode, base / f"{scenario}-{mode}")
                port = broker.ports["tcp"]
                cpu0, own0, wall0 = cpu_seconds(broker.proc.pid), time.process_time(), time.time()
                result = SCENARIOS[scenario](port, st, f"{scenario}-{mode}-{os.getpid()}")
                wall = max(time.time() - wall0, 1e-9)
                cpu1 = cpu_seconds(broker.proc.pid)
                busy = "n/a"
                if cpu0 is not None and cpu1 is not None:
                    busy = f"{(cpu1 - cpu0) / wall:.0%}"
                own = f"{(time.process_time() - own0) / wall:.0%}"
                result.check.broker_errors = broker.count("error")
                results[(scenario, mode)] = result
                figures = ", ".join(
                    f"{r.key}={fmt(result.values.get(r.key), r.unit)} {r.unit}"
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
                if broker is not None and broker.stop() not in (0, None):
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
