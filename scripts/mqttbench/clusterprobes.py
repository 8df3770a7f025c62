"""What a cluster's Redis pays per event, measured one kind of event at a time: an idle
cluster (heartbeats and blocking reads, per second), a route change (the first
subscriber of a filter on a node, and its removal), a connect and a disconnect (the client id's
registration and release).

Each probe reads the CPU time of redis-server and of the broker's processes from ``/proc``
(``meter.BrokerMeter``) around the events and divides by their number. Route changes are made
one at a time -- each SUBACK awaited before the next SUBSCRIBE -- so no two share a Redis
pipeline: the figure is what one change costs on its own, an upper bound for changes that come
in bursts. Connects come 64 at a time, as in the ``idle`` scenario.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from conformance import wire
from conformance.wire import SUBACK, UNSUBACK, WireError

from .load import Target, connect_many, open_conn, recv_some
from .meter import BrokerMeter, Usage
from .redisinfo import RedisInfo, RespError

#: How long after its last acknowledgement a probe keeps measuring, so that the other nodes'
#: share of the work (reading the route log, saying they applied it) is counted.
SETTLE_S = 0.5
#: The hash of connected client ids in mqttd's Redis (``mqttd.cluster.wire.Keys.clients``,
#: default ``key_prefix``); a disconnect is done when its entry is gone.
CLIENTS_KEY = "{mqttd}:clients"


def nodes_of(target: Target) -> int:
    """How many cluster nodes the target has (0: not a cluster)."""
    if target.redis_url is None:
        return 0
    return max(target.workers, 1)


def per_event_us(usage: Usage, role: str, events: int) -> float | None:
    """CPU µs of ``role`` per event over ``usage`` (None without events or readings)."""
    seconds = usage.cpu_seconds(role)
    if seconds is None or events <= 0:
        return None
    return seconds * 1e6 / events


def _result(
    usages: dict[str, Usage], metrics: dict[str, float | None], **raw: Any
) -> dict[str, Any]:
    first = next(iter(usages.values()))
    return {"cpu": first.cpu, "usage": first, "usages": usages, "metrics": metrics, **raw}


def run_quiet(target: Target, seconds: float) -> dict[str, Any]:
    """No clients for ``seconds``: what the cluster's own traffic (heartbeats, blocking reads
    of the route, retained, applied and inbox streams) and Redis's own timers cost Redis per
    second."""
    meter = BrokerMeter(target)
    meter.start()
    time.sleep(seconds)
    usage = meter.stop()
    redis_s, broker_s = usage.cpu_seconds("redis"), usage.cpu_seconds("broker")
    nodes = nodes_of(target)
    return _result(
        {"quiet": usage},
        {"redis_us_per_s": _per_s(redis_s, usage.wall_s) if nodes else None},
        nodes=nodes,
        broker_us_per_s=_per_s(broker_s, usage.wall_s),
    )


def _per_s(seconds: float | None, wall_s: float) -> float | None:
    return None if seconds is None or wall_s <= 0 else seconds * 1e6 / wall_s


def _await_acks(conn: Any, kind: int, count: int, deadline: float) -> None:
    got = 0
    while got < count:
        if time.monotonic() > deadline:
            raise WireError(f"{count - got} acknowledgements missing")
        for b0, _body in conn.feed(recv_some(conn.sock)):
            if b0 >> 4 == kind:
                got += 1


def run_routes(target: Target, transport: str, n: int, tag: str) -> dict[str, Any]:
    """``n`` new filters subscribed one at a time by one client (each a route added on its
    node, which every node applies), then unsubscribed one at a time (routes removed)."""
    conn = open_conn(target, transport, f"br-{tag}")
    filters = [f"bench/routes/{tag}/{i}" for i in range(n)]
    deadline = time.monotonic() + 60.0 + n * 0.05
    meter = BrokerMeter(target)
    try:
        meter.start()
        for i, f in enumerate(filters):
            conn.send(wire.subscribe(i % 65535 + 1, [(f, 0)]))
            _await_acks(conn, SUBACK, 1, deadline)
        time.sleep(SETTLE_S)
        added = meter.stop()
        meter.start()
        for i, f in enumerate(filters):
            conn.send(wire.unsubscribe(i % 65535 + 1, [f]))
            _await_acks(conn, UNSUBACK, 1, deadline)
        time.sleep(SETTLE_S)
        removed = meter.stop()
    finally:
        with contextlib.suppress(OSError):
            conn.send(wire.disconnect())
        conn.close()
    return _result(
        {"add": added, "del": removed},
        {
            "redis_us_add": per_event_us(added, "redis", n),
            "redis_us_del": per_event_us(removed, "redis", n),
        },
        n=n,
        nodes=nodes_of(target),
        broker_us_add=per_event_us(added, "broker", n),
        broker_us_del=per_event_us(removed, "broker", n),
        route_scripts=added.calls("sadd"),
    )


def _clients_left(target: Target) -> int | None:
    if target.redis_url is None:
        return None
    with contextlib.suppress(OSError, RespError):
        reply = RedisInfo(target.redis_url).command("HLEN", CLIENTS_KEY)
        return reply if isinstance(reply, int) else None
    return None


def run_churn(target: Target, transport: str, n: int, tag: str) -> dict[str, Any]:
    """``n`` clean-session clients connect (64 at a time), then all disconnect: Redis and broker
    CPU per connect and per disconnect (the disconnects are done when Redis no longer lists
    any of them as connected)."""
    meter = BrokerMeter(target)
    ids = [f"bc-{tag}-{i}" for i in range(n)]
    meter.start()
    gen0 = time.process_time()
    conns, secs = connect_many(target, transport, ids, concurrency=64, timeout_s=120.0)
    gen_s = time.process_time() - gen0
    connected = meter.stop()
    meter.start()
    for c in conns:
        with contextlib.suppress(OSError):
            c.send(wire.disconnect())
        c.close()
    deadline = time.monotonic() + 30.0
    while (left := _clients_left(target)) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(SETTLE_S)
    disconnected = meter.stop()
    return _result(
        {"connect": connected, "disconnect": disconnected},
        {
            "redis_us_connect": per_event_us(connected, "redis", n),
            "redis_us_disconnect": per_event_us(disconnected, "redis", n),
            "broker_us_connect": per_event_us(connected, "broker", n),
        },
        n=n,
        nodes=nodes_of(target),
        connects_per_s=n / secs if secs > 0 else None,
        gen_cpu_s=gen_s,
        elapsed_s=secs,
        clients_left=left,
        broker_us_disconnect=per_event_us(disconnected, "broker", n),
    )
