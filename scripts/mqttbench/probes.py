"""Measurements that are not message flows: many idle connections (connects per second and
the broker's memory per connection) and one big payload (seconds from send to receipt)."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import statistics
import threading
import time
from typing import Any

from conformance import wire
from conformance.wire import PUBLISH, WireError

from .flow import ABORT, get_message, wait_phase
from .load import (
    Target,
    connect_many,
    make_payload,
    open_conn,
    publish_payload_offset,
    recv_some,
    subscribe,
)
from .machine import CpuMeter, rss_total_kib
from .meter import BrokerMeter, placement_of


def _idle_worker(
    target: Target, transport: str, n: int, tag: str, version: int, ctl: Any, q: Any
) -> None:
    try:
        ids = [f"bi-{tag}-{i}" for i in range(n)]
        cpu0 = time.process_time()
        conns, secs = connect_many(
            target, transport, ids, concurrency=64, timeout_s=120.0, version=version
        )
        res = {
            "n": len(conns),
            "secs": secs,
            "cpu_s": time.process_time() - cpu0,
            "ports": {i: c.sock.getsockname()[1] for i, c in enumerate(conns)},
        }
        q.put(("idle", 0, res))
        wait_phase(ctl, ABORT, 120.0)
        for c in conns:
            c.close()
    except BaseException as exc:
        q.put(("error", f"idle connector: {exc!r}", None))


def run_idle(target: Target, transport: str, n: int, tag: str, version: int = 4) -> dict[str, Any]:
    """Open ``n`` idle connections of protocol level ``version``; measure connects/s and the
    broker's RSS growth (all its processes: workers and Redis included), and which worker got
    each connection."""
    ctx = mp.get_context("fork")
    ctl = ctx.RawArray("q", 2)
    q = ctx.Queue()
    meter = BrokerMeter(target)
    rss0 = rss_total_kib(meter.pids)
    meter.start()
    args = (target, transport, n, tag, version, ctl, q)
    p = ctx.Process(target=_idle_worker, args=args, daemon=True)
    p.start()
    try:
        _, _, res = get_message(q, time.monotonic() + 150.0)
        usage = meter.stop()
        placement = placement_of(meter, target.ports[transport], {}, res["ports"])
        # Let the broker settle (bounded), then read its RSS.
        time.sleep(0.5)
        rss1 = rss_total_kib(meter.pids)
    finally:
        ctl[0] = ABORT
        p.join(30)
        if p.is_alive():
            p.terminate()
            p.join(5)
    per = (rss1 - rss0) / res["n"] if rss0 is not None and rss1 is not None else None
    return {
        "connects_per_s": res["n"] / res["secs"],
        "kib_per_conn": per,
        "rss_before_kib": rss0,
        "rss_after_kib": rss1,
        "n": res["n"],
        "cpu": usage.cpu,
        "usage": usage,
        "placement": placement,
        "gen_cpu_s": res["cpu_s"],
        "elapsed_s": res["secs"],
        "lost": 0,
        "dup": 0,
    }


def run_big(
    target: Target, transport: str, size: int, reps: int, timeout_s: float, version: int = 4
) -> dict[str, Any]:
    """Deliver one ``size``-byte payload ``reps`` times between clients of protocol level
    ``version``; median seconds from send to receipt."""
    tag = f"{os.getpid()}-{time.monotonic_ns()}"
    topic = f"bench/big/{tag}"
    sub = open_conn(target, transport, f"bb-s-{tag}", version=version)
    pub = open_conn(target, transport, f"bb-p-{tag}", version=version)
    sub.sock.settimeout(timeout_s)
    pub.sock.settimeout(timeout_s)
    meter = CpuMeter(target.processes())
    times: list[float] = []
    lost = 0
    try:
        subscribe(sub, topic, 0)
        meter.start()
        for rep in range(reps):
            payload = make_payload(rep, 0, 0, size)
            got: list[tuple[float, bytes]] = []

            def receive(into: list[tuple[float, bytes]] = got) -> None:
                deadline = time.monotonic() + timeout_s
                with contextlib.suppress(OSError, WireError):
                    while time.monotonic() < deadline:
                        for b0, body in sub.feed(recv_some(sub.sock)):
                            if b0 >> 4 == PUBLISH:
                                off = publish_payload_offset(b0, body, version)
                                into.append((time.monotonic(), body[off:]))
                                return

            th = threading.Thread(target=receive, daemon=True)
            th.start()
            data = pub.wrap(wire.publish(topic, payload, version=version))
            t0 = time.monotonic()
            pub.sock.sendall(data)
            th.join(timeout_s + 1)
            if not got or got[0][1] != payload:
                lost += 1
                break
            times.append(got[0][0] - t0)
        cpu = meter.stop()
    finally:
        sub.close()
        pub.close()
    return {
        "secs": statistics.median(times) if times else None,
        "all_s": times,
        "lost": lost,
        "dup": 0,
        "cpu": cpu,
    }
