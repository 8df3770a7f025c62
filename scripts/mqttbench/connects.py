"""``bench_connects.py``: connects/s of two mqttd processes with and without the cluster.

Issue 12 asks ``mqttd --workers 2`` for at least Mosquitto's connects/s on this machine. This
measures where that stands and what bounds it, in interleaved rounds (a fresh broker per
measurement, the order of the forms reversed every other round), each form taking the same
burst as ``bench.py``'s ``idle`` scenario (``probes.run_idle``: N connects, 64 at a time, from
a forked generator process):

* ``mqttd``: one plain process;
* ``mqttd-x2``: two plain processes sharing the TCP port (``SO_REUSEPORT``, as the workers of
  ``--workers 2`` do) but **not one broker** -- no Redis, no client-id claims, no supervisor.
  No cluster design can connect faster on two processes than this: it is the ceiling of
  ``--workers 2`` on this machine, set by the single process's own cost per connect;
* ``mqttd-w2``: ``--workers 2`` (supervisor, two workers, private redis-server);
* ``mosquitto``;
* ``trio-floor``: not a broker -- ``trio_floor.py``, the least a trio server does per connect
  (accept, a task, one read, a fixed CONNACK). mqttd's CPU per connect above it is mqttd's own
  work; its own is trio's and the kernel's, the floor of any mqttd design;
* ``trio-floor-x2``: two of those sharing the port (SO_REUSEPORT): the most any design of two
  trio processes could connect here, whatever it did per connect.

Per form: connects/s, and CPU µs per connect of the broker (every process of it, Redis
included) and of the load generator, medians over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from conformance.broker_process import BrokerProcess, start_mqttd

from .brokers import Broker, start_mosquitto_broker, start_mqttd_broker
from .load import Target
from .machine import load_average
from .probes import run_idle

FORMS = ["mqttd", "mqttd-x2", "mqttd-w2", "mosquitto", "trio-floor", "trio-floor-x2"]

#: The mqttd command line, run after ``share_ports()``: every listening socket the process
#: opens gets SO_REUSEPORT, as in a worker of ``--workers N`` (``mqttd.supervisor``).
_SHARED_PORT_MAIN = (
    "import sys; from mqttd.transports.tcp import share_ports; share_ports(); "
    "from mqttd.cli import main; sys.exit(main())"
)


@dataclass
class PlainPair:
    """Two plain mqttd processes on one port (see ``mqttd-x2`` above), stopped together."""

    processes: list[BrokerProcess]
    target: Target

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


def start_plain_pair(workdir: Path) -> PlainPair:
    """Start two plain mqttd processes sharing one free loopback TCP port."""
    processes: list[BrokerProcess] = []
    port = 0  # the first binds a free port, the second the same one
    try:
        for k in range(2):
            home = workdir / f"p{k}"
            home.mkdir()
            conf = home / "mqttd.toml"
            conf.write_text(
                f'[broker]\ndata_dir = "{home / "data"}"\n'
                f'[[listeners]]\ntype = "tcp"\nhost = "127.0.0.1"\nport = {port}\n'
            )
            process = start_mqttd(
                conf, cwd=home, timeout_s=20.0, launcher=("-c", _SHARED_PORT_MAIN)
            )
            processes.append(process)
            port = process.ports["tcp"]
    except BaseException:
        for process in processes:
            process.stop()
        raise
    first, second = processes
    target = Target("mqttd-x2", "127.0.0.1", {"tcp": port}, first.pid, extra_pids=(second.pid,))
    return PlainPair(processes, target)


@dataclass
class TrioFloor:
    """``trio_floor.py`` on a free loopback port, once or twice (see ``trio-floor`` above)."""

    processes: list[subprocess.Popen[bytes]]
    target: Target

    def stop(self) -> None:
        for process in self.processes:
            _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.stdout is not None:
        process.stdout.close()


def start_trio_floor(copies: int = 1) -> TrioFloor:
    """Start ``copies`` of ``trio_floor.py`` on one port; each prints the port once it
    listens (with more than one, every copy sets SO_REUSEPORT and the first picks the port)."""
    script = Path(__file__).with_name("trio_floor.py")
    processes: list[subprocess.Popen[bytes]] = []
    port = 0
    try:
        for _ in range(copies):
            shared = ["--reuse-port", "--port", str(port)] if copies > 1 else []
            process = subprocess.Popen(
                [sys.executable, str(script), *shared],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
            )
            processes.append(process)
            assert process.stdout is not None
            line = process.stdout.readline()
            if not line.strip().isdigit():
                raise RuntimeError(f"trio_floor.py did not start (printed {line!r})")
            port = int(line)
    except BaseException:
        for process in processes:
            _stop(process)
        raise
    name = "trio-floor" if copies == 1 else f"trio-floor-x{copies}"
    first, *others = processes
    target = Target(
        name, "127.0.0.1", {"tcp": port}, first.pid, extra_pids=tuple(p.pid for p in others)
    )
    return TrioFloor(processes, target)


@dataclass
class Sample:
    """One form in one round."""

    form: str
    round: int
    connects_per_s: float
    broker_us: float | None  # broker CPU per connect, every process of it
    gen_us: float  # load generator CPU per connect
    load: float | None


def measure(form: str, workdir: Path, connects: int, tag: str) -> Sample:
    """Start ``form`` fresh, take one burst of ``connects``, stop it."""
    started: Broker | PlainPair | TrioFloor
    if form == "trio-floor":
        started = start_trio_floor()
    elif form == "trio-floor-x2":
        started = start_trio_floor(copies=2)
    elif form == "mosquitto":
        started = start_mosquitto_broker(workdir, None)
    elif form == "mqttd-x2":
        started = start_plain_pair(workdir)
    elif form == "mqttd-w2":
        started = start_mqttd_broker(workdir, None, workers=2)
    elif form == "mqttd":
        started = start_mqttd_broker(workdir, None)
    else:
        raise ValueError(f"unknown form {form!r}")
    try:
        time.sleep(0.5)  # let start-up work (a worker joining the cluster) finish
        raw = run_idle(started.target, "tcp", connects, tag)
    finally:
        started.stop()
    usage = raw["usage"]
    seconds = usage.cpu_seconds()
    return Sample(
        form,
        0,
        raw["connects_per_s"],
        None if seconds is None else seconds * 1e6 / raw["n"],
        raw["gen_cpu_s"] * 1e6 / raw["n"],
        load_average(),
    )


def run(
    forms: Sequence[str],
    rounds: int,
    connects: int,
    log: Callable[[str], None] = print,
) -> list[Sample]:
    """Every form once per round, in a fresh working directory each."""
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="mqttd-bench-connects-") as tmp:
        for round_no in range(1, rounds + 1):
            order = list(forms) if round_no % 2 else list(reversed(forms))
            for form in order:
                workdir = Path(tmp) / f"{form}-{round_no}"
                workdir.mkdir()
                sample = measure(form, workdir, connects, f"{round_no}-{form}")
                sample.round = round_no
                samples.append(sample)
                log(
                    f"round {round_no}: {form:<10} {sample.connects_per_s:8,.0f} conn/s  "
                    f"broker {_f(sample.broker_us)} µs/connect  gen {_f(sample.gen_us)}"
                )
    return samples


def _f(value: float | None) -> str:
    return "--" if value is None else f"{value:,.1f}"


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def render(samples: Sequence[Sample], forms: Sequence[str]) -> str:
    """Medians per form, and each form's connects/s against Mosquitto's, round by round."""
    rounds = sorted({s.round for s in samples})
    by = {(s.form, s.round): s for s in samples}
    lines = [
        "| form | conn/s, median | / mosquitto, per round (median) | broker µs per connect "
        "| generator µs per connect | conn/s per round |",
        "|---|---|---|---|---|---|",
    ]
    for form in forms:
        mine = [s for s in samples if s.form == form]
        ratios = [
            by[form, r].connects_per_s / by["mosquitto", r].connects_per_s
            for r in rounds
            if (form, r) in by and ("mosquitto", r) in by
        ]
        ratio = (
            f"{' / '.join(f'{x:.2f}' for x in ratios)} (**{statistics.median(ratios):.2f}**)"
            if ratios and form != "mosquitto"
            else "--"
        )
        lines.append(
            f"| {form} | {_median([s.connects_per_s for s in mine]) or 0:,.0f} | {ratio} "
            f"| {_f(_median([s.broker_us for s in mine]))} "
            f"| {_f(_median([s.gen_us for s in mine]))} "
            f"| {' / '.join(f'{s.connects_per_s:,.0f}' for s in mine)} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Connects/s of one mqttd process, two plain processes on one port (the "
        "ceiling of --workers 2 without the cluster), --workers 2, Mosquitto, and the least a "
        "trio server does per connect (one process, and two on one port)."
    )
    parser.add_argument("--connects", type=int, default=5000, help="connects per burst")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--forms", default=",".join(FORMS), help=f"comma-separated subset of {','.join(FORMS)}"
    )
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    forms = [f for f in args.forms.split(",") if f]
    unknown = set(forms) - set(FORMS)
    if unknown:
        parser.error(f"unknown forms: {', '.join(sorted(unknown))}")
    samples = run(forms, args.rounds, args.connects)
    table = render(samples, forms)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return 0
