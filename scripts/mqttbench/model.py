"""``--scaling --model``: where N workers would top out, from costs measured per event.

The model (pure arithmetic on what a scaling run measured, ``Costs``):

* **Forwarding.** A copy of a message forwarded from one worker to another through Redis costs
  the workers ``f`` µs of CPU (the sender recording it and pipelining it into an inbox entry --
  one XADD for all the copies one pipeline sends to one node -- the receiver reading the entry,
  unpacking and routing it, and deleting it) and Redis ``r`` µs (its share of the XADD, the
  receiver's XREAD and XDEL, the MULTI/EXEC around each pipeline, the append-only file). Both
  are measured with pairs (publisher i → subscriber i only): there every forwarded copy carries
  one delivery, so forwarding is most of the difference between two workers and one node.
  ``f = (c2 - c1) / x`` with ``c1``, ``c2`` the workers' CPU per message on one node and on two
  workers and ``x`` the copies forwarded per published message (from where the subscribers
  are); ``r`` is redis-server's CPU time over the copies. Redis runs commands on one thread,
  so one Redis forwards at most ``1e6 / r`` copies per second, however many workers there are.
* **Deliveries.** Each traffic shape (pairs, S = 1 subscriber per message; many→many, S = 100;
  fan-out, S = 1000) costs the workers ``c`` µs per delivery, everything but forwarding
  included: on one node the single-node cluster's figure, on several workers the two-worker
  figure with its forwards taken out (``c2 - x*f/S``; a worker holding half the subscribers
  writes fewer deliveries per system call, which shows here).
* ``F``, the copies one message sends through Redis, is one per *other* worker with at least one
  matching subscriber. With the S subscribers spread uniformly over N workers (what
  SO_REUSEPORT's hash of the client's port gives, as measured) that is
  ``(N - 1) * (1 - (1 - 1/N) ** S)``: ``(N - 1) / N`` for a pair, ``N - 1`` once S is well
  above N.
* N workers get N cores; Redis and the clients have cores of their own. The publish rate is
  bounded by ``N * 1e6 / (S*c + F*f)`` (workers) and by ``1e6 / (F*r)`` (Redis); deliveries/s
  are S times that.
* **Connects**: each connect costs the workers ``cw`` µs of CPU, Redis ``cr`` per connect and ``dr``
  per disconnect (the client id's registration and release); a burst of connects tops out at
  ``min(N * 1e6 / cw, 1e6 / cr)``, a steady churn of connects and disconnects at
  ``1e6 / (cr + dr)`` on Redis's side.
* **Route changes and the idle cluster** grow with N: every node reads the route log and says
  it applied it, and every node sends heartbeats and polls its streams. Both are measured at
  N = 1 and N = 2 and extended on that line.

``r`` falls as the forwarded rate rises (more copies share one inbox entry, one MULTI/EXEC, one
XREAD and one append-only file write), so the Redis bounds, taken at the rates this machine
reached, are lower bounds; ``c`` and ``f`` are taken as flat in N (what one worker does per
message does not depend on how many others there are, except through ``F``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

#: Worker counts the model is written out for.
MODEL_NS = (1, 2, 4, 8, 16)


@dataclass
class Topology:
    """One traffic shape's per-delivery cost, µs of one core's CPU (None: not measured)."""

    name: str
    subscribers: int  # S: subscribers per message
    delivery_us: float | None = None  # c on one node
    delivery_split_us: float | None = None  # c on several workers, forwarding taken out


@dataclass
class Costs:
    """Everything the model needs (None: not measured)."""

    topologies: list[Topology] = field(default_factory=list)
    forward_us: float | None = None  # f: workers per forwarded copy, both ends
    redis_forward_us: float | None = None  # r: Redis per forwarded copy
    connect_us: float | None = None  # cw: workers, per connect (cluster mode)
    redis_connect_us: float | None = None  # cr
    redis_disconnect_us: float | None = None  # dr
    route_n1_us: float | None = None  # Redis per route change, one node
    route_n2_us: float | None = None  # Redis per route change, two nodes
    idle_n1_us_per_s: float | None = None  # Redis CPU per second, idle cluster of one node
    idle_n2_us_per_s: float | None = None  # ... of two nodes


def forward_cost(per_message_split: float, per_message_one: float, forwards: float) -> float:
    """``f``: the workers' CPU per forwarded copy, from their CPU per published message on
    several workers and on one node, and the copies forwarded per published message.

    Raises:
        ValueError: nothing was forwarded.
    """
    if forwards <= 0:
        raise ValueError("no forwards")
    return (per_message_split - per_message_one) / forwards


def split_delivery_cost(
    per_delivery_split: float, subscribers: float, forwards: float, forward_us: float
) -> float:
    """``c`` on several workers: their CPU per delivery with the forwarding taken out."""
    return per_delivery_split - forwards * forward_us / subscribers


def forwards_per_message(n: int, s: int) -> float:
    """Expected other workers with at least one of ``s`` uniformly spread subscribers."""
    if n <= 1:
        return 0.0
    return (n - 1) * (1 - (1 - 1 / n) ** s)


def message_limits(c: Costs, t: Topology, n: int) -> tuple[float | None, float | None]:
    """Deliveries/s the N workers and the one Redis allow for shape ``t`` (None: no bound, or
    a cost not measured)."""
    s = t.subscribers
    f = forwards_per_message(n, s)
    per_delivery = t.delivery_us if n == 1 or t.delivery_split_us is None else t.delivery_split_us
    workers = None
    if per_delivery is not None and (f == 0 or c.forward_us is not None):
        per_message = s * per_delivery + f * (c.forward_us or 0.0)
        workers = n * 1e6 / per_message * s if per_message > 0 else None
    redis = None
    if f > 0 and c.redis_forward_us:
        redis = 1e6 / (f * c.redis_forward_us) * s
    return workers, redis


def connect_limits(c: Costs, n: int) -> tuple[float | None, float | None, float | None]:
    """Connects/s: the workers' bound, Redis's bound for a burst of connects, Redis's bound for
    a steady churn (each connect later followed by a disconnect)."""
    workers = n * 1e6 / c.connect_us if c.connect_us else None
    burst = 1e6 / c.redis_connect_us if c.redis_connect_us else None
    churn = None
    if c.redis_connect_us and c.redis_disconnect_us is not None:
        churn = 1e6 / (c.redis_connect_us + c.redis_disconnect_us)
    return workers, burst, churn


def on_line(at1: float | None, at2: float | None, n: int) -> float | None:
    """The value at N on the line through the measurements at N = 1 and N = 2."""
    if at1 is None or at2 is None:
        return None
    return at1 + (at2 - at1) * (n - 1)


def _k(v: float | None) -> str:
    if v is None:
        return "n/a"
    if v >= 1e6:
        return f"{v / 1e6:.2f} M"
    return f"{v / 1e3:.0f} k" if v >= 1e4 else f"{v:,.0f}"


def _cell(limits: tuple[float | None, float | None]) -> str:
    workers, redis = limits
    if redis is None or (workers is not None and workers <= redis):
        return f"{_k(workers)} (workers)"
    return f"**{_k(redis)} (Redis)**, workers {_k(workers)}"


def render_model(c: Costs, ns: Sequence[int] = MODEL_NS) -> str:
    """The model's table: per N, each load's bound and which side sets it."""
    head = [
        "workers N",
        *(f"{t.name} (S = {t.subscribers}): deliveries/s" for t in c.topologies),
        "connects/s: workers / Redis burst / Redis churn",
        "Redis µs per route change",
        "Redis CPU, idle cluster",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in ns:
        cells = [str(n)]
        for t in c.topologies:
            f = forwards_per_message(n, t.subscribers)
            cells.append(f"{_cell(message_limits(c, t, n))}; {f:.2f} fwd/msg")
        w, burst, churn = connect_limits(c, n)
        cells.append(f"{_k(w)} / {_k(burst)} / {_k(churn)}")
        route = on_line(c.route_n1_us, c.route_n2_us, n)
        cells.append("n/a" if route is None else f"{route:,.0f}")
        idle = on_line(c.idle_n1_us_per_s, c.idle_n2_us_per_s, n)
        cells.append("n/a" if idle is None else f"{idle / 1e4:.2f} % of a core")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_costs(c: Costs) -> str:
    """The measured inputs, as a table."""
    lines = ["| cost | µs of CPU (medians) |", "|---|---|"]

    def row(label: str, v: float | None) -> None:
        lines.append(f"| {label} | {'n/a' if v is None else f'{v:,.2f}'} |")

    row("f: workers per copy forwarded through Redis (both ends), from pairs", c.forward_us)
    row("r: Redis per forwarded copy, from pairs", c.redis_forward_us)
    for t in c.topologies:
        row(f"c, {t.name} (S = {t.subscribers}): workers per delivery, one node", t.delivery_us)
        row(
            f"c, {t.name}: workers per delivery, two workers, forwarding taken out",
            t.delivery_split_us,
        )
    row("cw: workers per connect (two workers)", c.connect_us)
    row("cr: Redis per connect", c.redis_connect_us)
    row("dr: Redis per disconnect", c.redis_disconnect_us)
    row("Redis per route change, 1 node", c.route_n1_us)
    row("Redis per route change, 2 nodes", c.route_n2_us)
    row("Redis per second, idle cluster of 1 node", c.idle_n1_us_per_s)
    row("Redis per second, idle cluster of 2 nodes", c.idle_n2_us_per_s)
    return "\n".join(lines)
