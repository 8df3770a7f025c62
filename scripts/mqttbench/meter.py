"""What one measurement cost the broker, all its processes counted: CPU per role (the broker
process or workers, a supervisor, a redis-server), Redis's command statistics, the machine's
load; and, for a broker of several workers, which worker got each client connection and so
what share of the deliveries had to cross from one worker to another through Redis.

Roles: a ``redis-server`` process is "redis"; the process started, when it supervises
workers, is "supervisor"; every other process is "broker" (the single process, or each
worker).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .load import Target
from .machine import CpuMeter, comm, connection_owners, load_average
from .redisinfo import CommandStat, RedisInfo, RespError, commandstats_delta

ROLES = ("broker", "redis", "supervisor")


def role_of(pid: int, command: str, root: int | None, workers: int) -> str:
    """The role of process ``pid`` (named ``command``) in a broker started as ``root``."""
    if command.startswith("redis-server"):
        return "redis"
    if pid == root and workers > 1:
        return "supervisor"
    return "broker"


@dataclass
class Usage:
    """The broker's cost over one measurement."""

    wall_s: float
    cpu: float | None  # CPU % summed over every process of the broker (100 = one core)
    cpu_by_role: dict[str, float] = field(default_factory=dict)
    cpu_by_pid: dict[int, float] = field(default_factory=dict)
    commands: dict[str, CommandStat] = field(default_factory=dict)
    load: float | None = None  # 1-minute load average at the end

    def cpu_seconds(self, role: str | None = None) -> float | None:
        """CPU seconds of one role (or all) over the measurement."""
        pct = self.cpu if role is None else self.cpu_by_role.get(role)
        return None if pct is None else pct / 100.0 * self.wall_s

    def calls(self, command: str) -> int:
        """How often Redis ran ``command`` (scripts' inner calls included)."""
        stat = self.commands.get(command)
        return stat.calls if stat else 0


class BrokerMeter:
    """CPU of every process of ``target`` (taken at construction) and its Redis's command
    statistics, between ``start()`` and ``stop()``."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.pids = target.processes()
        self.roles = {p: role_of(p, comm(p), target.pid, target.workers) for p in self.pids}
        self._cpu = CpuMeter(self.pids)
        self._redis = RedisInfo(target.redis_url) if target.redis_url else None
        self._stats0: dict[str, CommandStat] = {}
        self._t0 = 0.0

    def broker_pids(self) -> list[int]:
        """The processes that serve clients (the single process, or the workers)."""
        return [p for p in self.pids if self.roles[p] == "broker"]

    def _commandstats(self) -> dict[str, CommandStat]:
        if self._redis is None:
            return {}
        with contextlib.suppress(OSError, RespError):
            return self._redis.commandstats()
        return {}

    def start(self) -> None:
        self._stats0 = self._commandstats()
        self._t0 = time.monotonic()
        self._cpu.start()

    def stop(self) -> Usage:
        cpu = self._cpu.stop()
        wall = time.monotonic() - self._t0
        stats = self._commandstats()
        by_role: dict[str, float] = {}
        for pid, pct in self._cpu.by_pid.items():
            by_role[self.roles[pid]] = by_role.get(self.roles[pid], 0.0) + pct
        return Usage(
            wall,
            cpu,
            by_role,
            dict(self._cpu.by_pid),
            commandstats_delta(self._stats0, stats) if stats else {},
            load_average(),
        )


@dataclass
class Placement:
    """Which worker holds which connections of a measurement, and what that makes cross.

    ``crossed`` is the share of deliveries whose publisher and subscriber are on different
    workers, ``forwards_per_message`` how many other workers (one forward through Redis each)
    a message goes to; both are means over publishers, weighted by the messages each one
    sent once ``weigh`` has been called (equal weights before).
    """

    per_worker: dict[int, int]  # worker pid → connections it holds (of this measurement's)
    unknown: int  # connections no worker was found for
    crossed: float | None = None
    forwards_per_message: float | None = None
    #: publisher index → (share of its deliveries crossing, other workers it forwards to)
    per_publisher: dict[int, tuple[float, float]] = field(default_factory=dict)

    def weigh(self, published: Sequence[int]) -> None:
        """Weight ``crossed`` and ``forwards_per_message`` by ``published[i]``, the messages
        publisher i sent."""
        total = sum(published[i] for i in self.per_publisher if i < len(published))
        if not total:
            return
        self.crossed = (
            sum(published[i] * c for i, (c, _) in self.per_publisher.items() if i < len(published))
            / total
        )
        self.forwards_per_message = (
            sum(published[i] * f for i, (_, f) in self.per_publisher.items() if i < len(published))
            / total
        )


def crossing(pub_worker: int, sub_workers: Sequence[int]) -> tuple[float, float]:
    """For a publisher on ``pub_worker`` whose messages every subscriber receives (fan-out,
    many→many): the share of its deliveries whose subscriber is on another worker, and how many
    other workers (each one forward through Redis) each of its messages goes to."""
    if not sub_workers:
        return 0.0, 0.0
    subs = Counter(sub_workers)
    n_sub = len(sub_workers)
    return (n_sub - subs.get(pub_worker, 0)) / n_sub, float(len(set(subs) - {pub_worker}))


def place(
    owners: Mapping[int, int],
    pub_ports: Mapping[int, int],
    sub_ports: Mapping[int, int],
    *,
    pairs: bool = False,
) -> Placement:
    """``Placement`` of publisher and subscriber connections (client index → client port)
    from ``owners`` (client port → worker pid, ``machine.connection_owners``). With ``pairs``
    subscriber i receives publisher i's messages only: a pair's messages cross whole or not
    at all."""
    pubs = {i: owners[p] for i, p in pub_ports.items() if p in owners}
    subs = {i: owners[p] for i, p in sub_ports.items() if p in owners}
    per_worker = dict(sorted(Counter([*pubs.values(), *subs.values()]).items()))
    unknown = len(pub_ports) + len(sub_ports) - len(pubs) - len(subs)
    placement = Placement(per_worker, unknown)
    if not pubs or not subs:
        return placement
    if pairs:
        placement.per_publisher = {
            i: (1.0, 1.0) if w != subs[i] else (0.0, 0.0) for i, w in pubs.items() if i in subs
        }
    else:
        workers = list(subs.values())
        placement.per_publisher = {i: crossing(w, workers) for i, w in pubs.items()}
    placement.weigh([1] * (max(placement.per_publisher, default=-1) + 1))
    return placement


def placement_of(
    meter: BrokerMeter,
    port: int,
    pub_ports: Mapping[int, int],
    sub_ports: Mapping[int, int],
    *,
    pairs: bool = False,
) -> Placement | None:
    """Where the connections of a measurement landed; None for a single broker process."""
    workers = meter.broker_pids()
    if len(workers) < 2:
        return None
    return place(connection_owners(port, workers), pub_ports, sub_ports, pairs=pairs)
