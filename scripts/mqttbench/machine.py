"""What the benchmarks read from ``/proc``: a process's CPU time and resident memory, and the
machine a report was measured on."""

from __future__ import annotations

import contextlib
import os
import platform
import time


def cpu_ticks(pid: int | None) -> int | None:
    """utime + stime of ``pid`` in clock ticks (None if unknown)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def rss_kib(pid: int | None) -> int | None:
    """VmRSS of ``pid`` in KiB (None if unknown)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class CpuMeter:
    """CPU % of one process between ``start()`` and ``stop()``."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self._t0 = 0.0
        self._c0: int | None = None

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._c0 = cpu_ticks(self.pid)

    def stop(self) -> float | None:
        c1 = cpu_ticks(self.pid)
        wall = time.monotonic() - self._t0
        if c1 is None or self._c0 is None or wall <= 0:
            return None
        return 100.0 * (c1 - self._c0) / os.sysconf("SC_CLK_TCK") / wall


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads), None if unknown."""
    ticks = cpu_ticks(pid)
    return None if ticks is None else ticks / os.sysconf("SC_CLK_TCK")


def machine_info() -> dict[str, str]:
    """nproc, CPU model, RAM, Python version."""
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
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "ram": ram,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }
