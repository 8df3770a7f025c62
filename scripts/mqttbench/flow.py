"""Publish/subscribe measurements: N publishers → M subscribers in worker processes.

The parent forks subscriber processes first (each connects and subscribes its share, then says
"ready"), then publisher processes, then sets GO in a shared control array. Publishers write in
batches within an end-to-end window (published * subscribers - delivered), QoS 1/2 publishers
also within ``window`` unacknowledged messages per connection. Each subscriber process counts
the sequence numbers it saw per (subscriber, publisher): losses, duplicates and out-of-order
deliveries come out of those counts. Results travel back on a queue; every phase has a deadline.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import selectors
import time
from array import array
from dataclasses import dataclass
from typing import Any

from conformance import wire
from conformance.wire import PINGRESP, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL

from .load import PAYLOAD_HEAD, PublishEncoder, Target, connect_many, packet_id_for, recv_some
from .meter import BrokerMeter, placement_of

GO, PUBS_DONE, ABORT = 1, 2, 3


@dataclass
class FlowSpec:
    """What one publish/subscribe measurement does."""

    transport: str
    qos: int = 0
    n_pub: int = 1
    n_sub: int = 1
    pub_procs: int = 1
    sub_procs: int = 1
    shared_topic: bool = True  # all publishers on one topic; else own topics + '+' filter
    pairs: bool = False  # subscriber i subscribes to publisher i's own topic only
    window: int = 100  # QoS 1/2: unacknowledged PUBLISH per publisher connection
    e2e_window: int = 5000  # deliveries published but not yet received, across the run
    batch: int = 256
    duration_s: float = 5.0
    rate: float = 0.0  # >0: one publisher paced at this many msg/s (latency scenario)
    payload_size: int = 64
    probes: int = 0  # fan-out: single messages sent after the run, each awaited by all
    record_latency: bool = False
    record_arrival: bool = False
    protocol: int = 4  # the clients' protocol level: 4 (MQTT 3.1.1) or 5 (MQTT 5)
    tag: str = ""


def _now() -> int:
    return time.monotonic_ns()


def _wait_go(ctl: Any, timeout_s: float = 180.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while ctl[0] == 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return bool(ctl[0] != ABORT)


def _pub_worker(
    spec: FlowSpec, target: Target, proc: int, indices: list[int], sh: dict[str, Any], q: Any
) -> None:
    try:
        _pub_main(spec, target, proc, indices, sh, q)
    except BaseException as exc:
        q.put(("error", f"publisher process {proc}: {exc!r}", None))


def _topic(spec: FlowSpec, idx: int) -> str:
    base = f"bench/{spec.tag}"
    return f"{base}/all" if spec.shared_topic else f"{base}/{idx}"


def _pub_main(
    spec: FlowSpec, target: Target, proc: int, indices: list[int], sh: dict[str, Any], q: Any
) -> None:
    ids = [f"bp-{spec.tag}-{i}" for i in indices]
    conns, _ = connect_many(target, spec.transport, ids, version=spec.protocol)
    q.put(("ready", "pub", _ports(indices, conns)))
    published, delivered, ctl = sh["published"], sh["delivered"], sh["ctl"]
    encs = [
        PublishEncoder(_topic(spec, i), spec.qos, spec.payload_size, i, spec.protocol)
        for i in indices
    ]
    seqs = [0] * len(conns)
    inflight: list[set[int]] = [set() for _ in conns]
    completing: list[set[int]] = [set() for _ in conns]  # QoS 2: PUBREL sent, awaiting PUBCOMP
    sel = selectors.DefaultSelector()
    for j, c in enumerate(conns):
        sel.register(c.sock, selectors.EVENT_READ, j)
    stats = {"acks": 0, "unexpected_acks": 0, "refused_acks": 0}
    qos, window, n_sub = spec.qos, spec.window, spec.n_sub
    fan = fan_out(spec)

    def read_acks(timeout: float) -> None:
        for key, _ in sel.select(timeout):
            j = key.data
            c = conns[j]
            rel = []
            for b0, body in c.feed(recv_some(c.sock)):
                kind = b0 >> 4
                pid = (body[0] << 8) | body[1]
                if len(body) > 2 and body[2] >= 0x80 and kind in (PUBACK, PUBREC):
                    # MQTT 5: the broker refused the message (its subscribers lose it), and
                    # a PUBREC with an error ends the exchange: no PUBREL follows.
                    inflight[j].discard(pid)
                    stats["refused_acks"] += 1
                elif (kind == PUBACK and qos == 1) or (kind == PUBCOMP and qos == 2):
                    s = inflight[j] if qos == 1 else completing[j]
                    if pid in s:
                        s.discard(pid)
                        stats["acks"] += 1
                    else:
                        stats["unexpected_acks"] += 1
                elif kind == PUBREC and qos == 2:
                    if pid in inflight[j]:
                        inflight[j].discard(pid)
                        completing[j].add(pid)
                    rel.append(wire.ack(PUBREL, pid))
                elif kind == PINGRESP:
                    pass
                else:
                    stats["unexpected_acks"] += 1
            if rel:
                c.send(b"".join(rel))

    def outstanding(j: int) -> int:
        return len(inflight[j]) + len(completing[j])

    if not _wait_go(ctl):
        return
    cpu0 = time.process_time()
    t_go = _now()
    end_ns = t_go + int(spec.duration_s * 1e9)
    send_times: list[tuple[int, int, int]] = []  # (pub index, seq, t_ns) for probes
    if spec.rate > 0:
        interval = int(1e9 / spec.rate)
        nxt = t_go
        c, enc, idx = conns[0], encs[0], indices[0]
        while nxt < end_ns:
            now = _now()
            if now < nxt:
                if nxt - now > 300_000:
                    time.sleep((nxt - now - 200_000) / 1e9)
                continue
            if qos == 0 or outstanding(0) < window:
                s = seqs[0]
                if qos:
                    inflight[0].add(packet_id_for(s))
                c.send(enc.encode(s, _now()))
                seqs[0] = s + 1
                published[idx] = s + 1
            nxt += interval
            if qos:
                read_acks(0)
    else:
        batch = spec.batch
        n_conns = len(conns)
        first = 0  # each pass starts after the last connection served: the window is shared
        while _now() < end_ns:
            total_pub = sum(published)
            budget = (spec.e2e_window - (total_pub * fan - sum(delivered))) // fan
            sent = False
            for step in range(n_conns):
                j = (first + step) % n_conns
                c = conns[j]
                k = min(batch, budget)
                if qos:
                    k = min(k, window - outstanding(j))
                if k <= 0:
                    continue
                s = seqs[j]
                if qos:
                    inflight[j].update(packet_id_for(x) for x in range(s, s + k))
                c.send(encs[j].batch(s, k, _now()))
                seqs[j] = s + k
                published[indices[j]] = s + k
                budget -= k
                sent = True
                first = (j + 1) % n_conns
            if qos:
                read_acks(0 if sent else 0.001)
            elif not sent:
                time.sleep(0.0002)
    t_end = _now()
    # Drain the acknowledgement window (bounded).
    drain_deadline = time.monotonic() + 30.0
    while qos and any(outstanding(j) for j in range(len(conns))):
        if time.monotonic() > drain_deadline:
            break
        read_acks(0.01)
    # Fan-out probes: one message at a time, each waited for until every subscriber has it.
    if spec.probes:
        expect = sum(published) * n_sub
        drain_deadline = time.monotonic() + 30.0
        while sum(delivered) < expect and time.monotonic() < drain_deadline:
            time.sleep(0.001)
        for _ in range(spec.probes):
            s = seqs[0]
            t = _now()
            if qos:
                inflight[0].add(packet_id_for(s))
            conns[0].send(encs[0].encode(s, t))
            seqs[0] = s + 1
            published[indices[0]] = s + 1
            send_times.append((indices[0], s, t))
            expect += n_sub
            probe_deadline = time.monotonic() + 5.0
            while sum(delivered) < expect and time.monotonic() < probe_deadline:
                if qos:
                    read_acks(0.0002)
                else:
                    time.sleep(0.0002)
        while qos and outstanding(0) and time.monotonic() < drain_deadline + 5:
            read_acks(0.01)
    result = {
        "published": sum(seqs),
        "t_go": t_go,
        "t_end": t_end,
        "cpu_s": time.process_time() - cpu0,
        "unacked": sum(outstanding(j) for j in range(len(conns))),
        "probe_sends": send_times,
        **stats,
    }
    q.put(("pub", proc, result))
    # Keep the connections open until the subscribers are done (a closing publisher must not
    # change what the broker does while they drain).
    wait_phase(ctl, ABORT, 120.0)
    for c in conns:
        with contextlib.suppress(OSError):
            c.send(wire.disconnect())
        c.close()
    sel.close()


def wait_phase(ctl: Any, phase: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while ctl[0] < phase and time.monotonic() < deadline:
        time.sleep(0.005)


def _sub_worker(
    spec: FlowSpec, target: Target, proc: int, indices: list[int], sh: dict[str, Any], q: Any
) -> None:
    try:
        q.put(("sub", proc, _sub_main(spec, target, proc, indices, sh, q)))
    except BaseException as exc:
        q.put(("error", f"subscriber process {proc}: {exc!r}", None))


def _sub_main(
    spec: FlowSpec, target: Target, proc: int, indices: list[int], sh: dict[str, Any], q: Any
) -> dict[str, Any]:
    ids = [f"bs-{spec.tag}-{i}" for i in indices]
    filt: str | list[str] = _topic(spec, 0) if spec.shared_topic else f"bench/{spec.tag}/+"
    if spec.pairs:
        filt = [_topic(spec, i) for i in indices]
    conns, _ = connect_many(target, spec.transport, ids, filt, spec.qos, version=spec.protocol)
    q.put(("ready", "sub", _ports(indices, conns)))
    published, delivered, ctl = sh["published"], sh["delivered"], sh["ctl"]
    n_pub = spec.n_pub
    sel = selectors.DefaultSelector()
    for j, c in enumerate(conns):
        sel.register(c.sock, selectors.EVENT_READ, j)
    # seen[j][p]: per (subscriber, publisher), a bytearray counting deliveries of each seq.
    seen: list[list[bytearray]] = [[bytearray(1024) for _ in range(n_pub)] for _ in conns]
    top: list[list[int]] = [[-1] * n_pub for _ in conns]
    unique = dup = ooo = 0
    lat = array("q")
    arrival = array("q")  # max arrival time per seq of publisher 0 (fan-out)
    record_lat, record_arr = spec.record_latency, spec.record_arrival
    pairs = spec.pairs
    v5 = spec.protocol == 5
    coalesce = not (record_lat or record_arr)
    head = PAYLOAD_HEAD.unpack_from
    qos_acks = {1: PUBACK, 2: PUBREC}
    if not _wait_go(ctl):
        return {"unique": 0}
    cpu0 = time.process_time()
    t_last = 0
    last_progress = time.monotonic()
    hard_deadline = last_progress + spec.duration_s + 120.0
    bad = 0
    while True:
        now_m = time.monotonic()
        if ctl[0] >= PUBS_DONE:
            if spec.pairs:
                expected = sum(published[i] for i in indices)
            else:
                expected = sum(published) * len(conns)
            if unique >= expected or now_m - last_progress > 3.0:
                break
        if now_m > hard_deadline:
            break
        events = sel.select(0.05)
        if not events:
            continue
        nbytes = 0
        for key, _ in events:
            j = key.data
            c = conns[j]
            data = recv_some(c.sock)
            t_now = _now()
            nbytes += len(data)
            acks: list[bytes] = []
            seen_j, top_j = seen[j], top[j]
            got = 0
            for b0, body in c.feed(data):
                kind = b0 >> 4
                if kind == PUBLISH:
                    off = 2 + ((body[0] << 8) | body[1])
                    qos = (b0 >> 1) & 3
                    if qos:
                        acks.append(wire.ack(qos_acks[qos], (body[off] << 8) | body[off + 1]))
                        off += 2
                    if v5:  # step over the properties (a one-byte Property Length, mostly)
                        n = body[off]
                        if n < 0x80:
                            off += 1 + n
                        else:
                            n, off = wire.decode_varint(body, off)
                            off += n
                    seq, p, ts = head(body, off)
                    if p >= n_pub or (pairs and p != indices[j]):
                        bad += 1
                        continue
                    bm = seen_j[p]
                    if seq >= len(bm):
                        bm.extend(bytes(max(seq + 1 - len(bm), len(bm))))
                    if bm[seq]:
                        dup += 1
                        if bm[seq] < 255:
                            bm[seq] += 1
                        continue
                    bm[seq] = 1
                    got += 1
                    if seq < top_j[p]:
                        ooo += 1
                    else:
                        top_j[p] = seq
                    if record_lat:
                        lat.append(t_now - ts)
                    if record_arr and p == 0:
                        if seq >= len(arrival):
                            arrival.extend([0] * (seq + 1 - len(arrival) + 64))
                        if t_now > arrival[seq]:
                            arrival[seq] = t_now
                elif kind == PUBREL:
                    acks.append(wire.ack(PUBCOMP, (body[0] << 8) | body[1]))
                else:
                    bad += 1
            if acks:
                c.send(b"".join(acks))
            if got:
                unique += got
                t_last = t_now
                last_progress = time.monotonic()
        delivered[proc] = unique
        if coalesce and nbytes < 16384:
            # Throughput runs only: a broker that writes one small packet per syscall would
            # otherwise make this Python reader pay one wake-up per packet and become the
            # bottleneck; letting bytes accumulate briefly keeps the reader's cost per byte low.
            time.sleep(0.0003)
    cpu = time.process_time() - cpu0
    per_pub = [0] * n_pub
    for seen_j in seen:
        for p, bm in enumerate(seen_j):
            per_pub[p] += len(bm) - bm.count(0)
    for c in conns:
        with contextlib.suppress(OSError):
            c.send(wire.disconnect())
        c.close()
    sel.close()
    return {
        "unique": unique,
        "dup": dup,
        "ooo": ooo,
        "bad": bad,
        "n_conns": len(conns),
        "t_last": t_last,
        "cpu_s": cpu,
        "lat": lat,
        "arrival": arrival,
        "per_pub": per_pub,
    }


def fan_out(spec: FlowSpec) -> int:
    """Subscribers each published message goes to."""
    return 1 if spec.pairs else spec.n_sub


def _ports(indices: list[int], conns: list[Any]) -> dict[int, int]:
    """Client index → the local port of its connection (to find its worker)."""
    return {i: c.sock.getsockname()[1] for i, c in zip(indices, conns, strict=True)}


def _split(items: list[int], parts: int) -> list[list[int]]:
    parts = max(1, min(parts, len(items)))
    return [items[i::parts] for i in range(parts)]


def percentile(values: list[int], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def run_flow(spec: FlowSpec, target: Target) -> dict[str, Any]:
    """Run one publish/subscribe measurement in worker processes and aggregate the results."""
    ctx = mp.get_context("fork")
    sh = {
        "published": ctx.RawArray("q", spec.n_pub),
        "delivered": ctx.RawArray("q", spec.sub_procs),
        "ctl": ctx.RawArray("q", 2),
    }
    q = ctx.Queue()
    procs: list[Any] = []
    sub_groups = _split(list(range(spec.n_sub)), spec.sub_procs)
    pub_groups = _split(list(range(spec.n_pub)), spec.pub_procs)
    if len(sub_groups) != spec.sub_procs:
        raise ValueError("more subscriber processes than subscribers")
    meter = BrokerMeter(target)
    results: dict[str, list[dict[str, Any]]] = {"pub": [], "sub": []}
    try:
        for i, g in enumerate(sub_groups):
            p = ctx.Process(target=_sub_worker, args=(spec, target, i, g, sh, q), daemon=True)
            p.start()
            procs.append(p)
        sub_ports = _await_ready(q, len(sub_groups), 120.0)
        for i, g in enumerate(pub_groups):
            p = ctx.Process(target=_pub_worker, args=(spec, target, i, g, sh, q), daemon=True)
            p.start()
            procs.append(p)
        pub_ports = _await_ready(q, len(pub_groups), 60.0)
        # Several workers: which one holds each connection (read before the clock starts).
        placement = placement_of(
            meter, target.ports[spec.transport], pub_ports, sub_ports, pairs=spec.pairs
        )
        meter.start()
        sh["ctl"][0] = GO
        deadline = time.monotonic() + spec.duration_s + 120.0
        while len(results["pub"]) < len(pub_groups):
            kind, _, res = get_message(q, deadline)
            results[kind].append(res)
        sh["ctl"][0] = PUBS_DONE
        while len(results["sub"]) < len(sub_groups):
            kind, _, res = get_message(q, deadline + 30)
            results[kind].append(res)
        usage = meter.stop()
    finally:
        sh["ctl"][0] = ABORT
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(5)
    out = _aggregate(spec, results, usage.cpu)
    out["usage"] = usage
    if placement is not None:
        placement.weigh(list(sh["published"]))
    out["placement"] = placement
    return out


def get_message(q: Any, deadline: float) -> tuple[str, int, Any]:
    """The next (kind, index, result) a worker reported; an "error" report is raised."""
    import queue

    try:
        msg: tuple[str, int, Any] = q.get(timeout=max(0.1, deadline - time.monotonic()))
    except queue.Empty:
        raise TimeoutError("worker processes did not report in time") from None
    if msg[0] == "error":
        raise RuntimeError(msg[1])
    return msg


def _await_ready(q: Any, n: int, timeout_s: float) -> dict[int, int]:
    """Wait for ``n`` "ready" reports; client index → local port of its connection."""
    deadline = time.monotonic() + timeout_s
    ports: dict[int, int] = {}
    for _ in range(n):
        kind, _, payload = get_message(q, deadline)
        if kind != "ready":
            raise RuntimeError(f"unexpected worker message {kind}")
        ports.update(payload or {})
    return ports


def _aggregate(
    spec: FlowSpec, res: dict[str, list[dict[str, Any]]], cpu: float | None
) -> dict[str, Any]:
    pubs, subs = res["pub"], res["sub"]
    published = sum(r["published"] for r in pubs)
    expected = published * fan_out(spec)
    unique = sum(r["unique"] for r in subs)
    t_go = min(r["t_go"] for r in pubs)
    t_last = max(r["t_last"] for r in subs)
    elapsed = (t_last - t_go) / 1e9 if t_last > t_go else float("nan")
    out: dict[str, Any] = {
        "published": published,
        "expected": expected,
        "delivered": unique,
        "lost": expected - unique,
        "dup": sum(r["dup"] for r in subs),
        "ooo": sum(r["ooo"] for r in subs),
        "bad": sum(r["bad"] for r in subs),
        "unacked": sum(r["unacked"] for r in pubs),
        "refused": sum(r["refused_acks"] for r in pubs),
        "rate": unique / elapsed if elapsed > 0 else 0.0,
        "cpu": cpu,
        "gen_cpu_s": sum(r["cpu_s"] for r in pubs + subs),
        "elapsed_s": elapsed,
    }
    if spec.record_latency:
        lat = [x for r in subs for x in r["lat"]]
        out["lat_ms"] = {
            "p50": percentile(lat, 50) / 1e6,
            "p99": percentile(lat, 99) / 1e6,
            "max": max(lat) / 1e6 if lat else float("nan"),
            "n": len(lat),
        }
    if spec.probes:
        sends = [s for r in pubs for s in r["probe_sends"]]
        times = []
        for _, seq, t in sends:
            arr = [r["arrival"][seq] for r in subs if seq < len(r["arrival"])]
            if len(arr) == len(subs) and all(arr):
                times.append(max(arr) - t)
        out["reach_all_ms"] = {
            "p50": percentile(times, 50) / 1e6,
            "p99": percentile(times, 99) / 1e6,
            "n": len(times),
            "of": len(sends),
        }
    return out
