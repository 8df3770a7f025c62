"""What the benchmarks read from ``/proc``: a process's CPU time and resident memory, the
processes a broker is made of (``mqttd --workers N``: a supervisor, its workers, its
redis-server), which of them holds each client connection, and the machine a report was
measured on."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Iterable, Mapping, Sequence


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


def cpu_ns(pid: int) -> int | None:
    """CPU time of process ``pid`` in ns, all its threads (``/proc/<pid>/task/*/schedstat``:
    time on a CPU, user and system); from ``/proc/<pid>/stat`` ticks where schedstat is missing.
    None if the process is gone."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:  # a thread that just ended
            continue
        except (OSError, IndexError, ValueError):
            ticks = cpu_ticks(pid)
            return None if ticks is None else ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    return total


def cpu_delta_ns(sched_ns: int | None, ticks_ns: int | None, tick_ns: int) -> int | None:
    """A process's CPU time over an interval from its two readings: the schedstat sum
    (ns-precise, but it loses the whole CPU time of a thread that ended meanwhile) and
    ``/proc/<pid>/stat`` (whole process, ended threads included, in ticks of ``tick_ns``).
    The precise one, unless the ticks say more than two ticks went missing with a thread."""
    if sched_ns is None:
        return ticks_ns
    if ticks_ns is not None and ticks_ns - sched_ns > 2 * tick_ns:
        return ticks_ns
    return max(sched_ns, 0)


class CpuMeter:
    """CPU % of one process, or the sum over several, between ``start()`` and ``stop()``;
    ``by_pid`` then holds each one's CPU % (a process gone meanwhile counts as 0)."""

    def __init__(self, pids: int | Sequence[int] | None) -> None:
        self.pids: list[int] = (
            [] if pids is None else [pids] if isinstance(pids, int) else list(pids)
        )
        self.by_pid: dict[int, float] = {}
        self._t0 = 0.0
        self._c0: dict[int, tuple[int | None, int | None]] = {}

    @staticmethod
    def _read(pid: int) -> tuple[int | None, int | None]:
        return cpu_ns(pid), cpu_ticks(pid)

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._c0 = {p: r for p in self.pids if (r := self._read(p)) != (None, None)}

    def stop(self) -> float | None:
        wall = time.monotonic() - self._t0
        if not self._c0 or wall <= 0:
            return None
        tick_ns = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
        self.by_pid = {}
        for pid, (s0, t0) in self._c0.items():
            s1, t1 = self._read(pid)
            sched = None if s0 is None or s1 is None else s1 - s0
            ticks = None if t0 is None or t1 is None else (t1 - t0) * tick_ns
            ns = cpu_delta_ns(sched, ticks, tick_ns)
            self.by_pid[pid] = 0.0 if ns is None else 100.0 * ns / 1e9 / wall
        return sum(self.by_pid.values())


def rss_total_kib(pids: Iterable[int]) -> int | None:
    """VmRSS summed over ``pids`` in KiB (None if none of them can be read)."""
    values = [v for p in pids if (v := rss_kib(p)) is not None]
    return sum(values) if values else None


def comm(pid: int) -> str:
    """The process's command name (``/proc/<pid>/comm``), "" if unknown."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def parent_map() -> dict[int, int]:
    """pid → parent pid of every process on the machine."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            parents[int(name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    return parents


def tree_pids(root: int, parents: Mapping[int, int]) -> list[int]:
    """``root`` and all its descendants (children before grandchildren, each level sorted)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    out, level = [root], [root]
    while level:
        level = sorted(c for p in level for c in children.get(p, ()) if c != p)
        out.extend(level)
    return out


def process_tree(root: int) -> list[int]:
    """``root`` and every process it started, and they started, now."""
    return tree_pids(root, parent_map())


def parse_proc_net_tcp(text: str, port: int) -> dict[int, int]:
    """From ``/proc/net/tcp`` (or ``tcp6``): remote port → socket inode of every ESTABLISHED
    connection whose *local* port is ``port`` (the server's side of each client connection)."""
    out: dict[int, int] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != "01":  # 01 = TCP_ESTABLISHED
            continue
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port != port:
            continue
        out[int(fields[2].rsplit(":", 1)[1], 16)] = int(fields[9])
    return out


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets process ``pid`` has open."""
    inodes: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def connection_owners(port: int, pids: Iterable[int]) -> dict[int, int]:
    """Client port → the pid (of ``pids``) holding the broker's side of that connection to
    ``port`` (with SO_REUSEPORT, the worker the kernel gave it to). Clients whose connection
    none of ``pids`` holds are left out."""
    remote_to_inode: dict[int, int] = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(name) as f:
            remote_to_inode.update(parse_proc_net_tcp(f.read(), port))
    inode_to_pid = {inode: pid for pid in pids for inode in socket_inodes(pid)}
    return {
        remote: inode_to_pid[inode]
        for remote, inode in remote_to_inode.items()
        if inode in inode_to_pid
    }


def load_average() -> float | None:
    """The 1-minute load average."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, IndexError, ValueError):
        return None


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
