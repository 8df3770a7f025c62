"""bench_store's table (one column per durability mode, fsync/memory, and what each check
found) and the machine details a durability figure needs: file system, disk, fsync cost."""

from __future__ import annotations

import contextlib
import datetime
import os
import sqlite3
import time
from pathlib import Path

from conformance.broker_process import mqttd_version

from .. import machine
from .scenarios import ROWS, Result, nearest_rank


def fmt(value: float | None, unit: str) -> str:
    """A figure as the table shows it (n/a for a missing value)."""
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
                cells.append(fmt(values[mode], row.unit))
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
    return nearest_rank(times, 50)


def machine_info(workdir: Path) -> dict[str, str]:
    """nproc, CPU model, RAM, disk, kernel, Python and SQLite versions, mqttd version."""
    return {
        **machine.machine_info(),
        "disk": disk_info(workdir),
        "fsync": f"{fsync_probe_ms(workdir):.2f} ms",
        "sqlite": sqlite3.sqlite_version,
        "mqttd": f"mqttd {mqttd_version()}",
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
