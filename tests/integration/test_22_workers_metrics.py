"""Monitoring under ``mqttd --workers N``: the supervisor serves the http listener, its
``/metrics`` is every worker's with a ``worker`` label (parsed with prometheus_client's own
parser), and its ``/readyz`` follows every worker (the refusal of ``metrics_path`` with
workers is in test_19_workers, with the other operator errors).

Real processes, as in test_19_workers: clients are spread over the workers by the kernel, and
which worker serves one is read from ``/proc``. Every wait is bounded; conditions the tests
cannot await (what the supervisor answers after a kill) are polled request by request.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from conformance.broker_process import TrioBrokerProcess, run_mqttd
from mqttd.auth import hash_password
from mqttd.worker_endpoints import METRICS_TIMEOUT_S, fetch, worker_socket
from tests.helpers import wire
from tests.helpers.client import WireClient
from tests.integration.test_19_workers import connect_spread, started
from tests.integration.test_20_observability import _basic, http_request

#: Upper bound of any one wait, in seconds (a restart crosses a Python start and a cluster join).
TIMEOUT_S = 30.0
WORKERS = 2

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)

#: (name, sorted labels) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A short data directory: the private sockets' paths must fit in 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="mqttd-m"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_config(data_dir: Path, *, node_timeout_s: float = 2.0, http_auth: str = "") -> Path:
    """tcp and http listeners on port 0, node ids t-w<k>; ``http_auth`` is the http
    listener's ``[listeners.auth]`` table body."""
    text = (
        f'[broker]\ndata_dir = "{data_dir}"\nsys_interval_s = 0\n'
        f'[cluster]\nnode_id = "t"\nnode_timeout_s = {node_timeout_s}\n'
        '[[listeners]]\ntype = "tcp"\nport = 0\n'
        '[[listeners]]\ntype = "http"\nport = 0\n'
    )
    if http_auth:
        text += "[listeners.auth]\n" + http_auth
    path = data_dir / "mqttd.toml"
    path.write_text(text)
    return path


async def scrape(port: int, **kwargs: Any) -> tuple[Samples, str]:
    """GET /metrics: the samples, parsed by prometheus_client, and the text."""
    status, headers, body = await http_request(port, "/metrics", **kwargs)
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"{key} twice"
            samples[key] = sample.value
    return samples, text


def per_worker(samples: Samples, name: str, **labels: str) -> dict[str, float]:
    """``name``'s value for each worker, among the samples with (at least) ``labels``."""
    found: dict[str, float] = {}
    for (sample_name, sample_labels), value in samples.items():
        named = dict(sample_labels)
        if sample_name == name and all(named.get(k) == v for k, v in labels.items()):
            worker = named["worker"]
            found[worker] = found.get(worker, 0.0) + value
    return found


def counters(samples: Samples) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The counter samples (``_total``) of the workers (those with a worker label)."""
    return {
        key: value
        for key, value in samples.items()
        if key[0].endswith("_total") and any(label == "worker" for label, _ in key[1])
    }


async def readyz(port: int) -> tuple[int, dict[str, Any]]:
    """GET /readyz: the status and the JSON body."""
    import json

    status, _, body = await http_request(port, "/readyz")
    return status, json.loads(body)


async def readyz_until(port: int, wanted: int) -> dict[str, Any]:
    """Ask /readyz again and again until it answers ``wanted`` (each ask is a request: the
    supervisor's answer is the condition, and nothing announces its change)."""
    with trio.fail_after(TIMEOUT_S):
        while True:
            status, body = await readyz(port)
            if status == wanted:
                return body
            await trio.lowlevel.checkpoint()


async def publish_from_each(clients: list[WireClient], pid: int, payload: bytes) -> None:
    """Every client publishes one QoS 1 message and gets its PUBACK."""
    for client in clients:
        await client.send(wire.publish("m/t", payload, qos=1, pid=pid))
        await client.expect(wire.puback(pid))


def worker_of(broker: TrioBrokerProcess) -> dict[int, str]:
    """First pid of each worker -> its worker label (``workers_started`` lists them in order)."""
    return {pid: str(k) for k, pid in enumerate(started(broker)["pids"], start=1)}


# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_metrics_are_every_workers_with_a_worker_label(data_dir: Path) -> None:
    """With clients on both workers, /metrics has both workers' series (worker="1", "2"), each
    worker's counters only grow from scrape to scrape, and their sum is what the clients did;
    the http listener's own [listeners.auth] guards it as on one process, reloaded on SIGHUP."""
    passwords = data_dir / "passwd"
    passwords.write_text(f"prom:{hash_password('scrape')}\n")
    config = write_config(
        data_dir, http_auth=f'allow_anonymous = false\npassword_file = "{passwords}"\n'
    )
    creds = {"headers": _basic("prom", "scrape")}
    async with run_mqttd(config, "--workers", str(WORKERS), listeners=WORKERS + 1) as broker:
        labels = worker_of(broker)
        tcp, http = broker.ports["tcp"], broker.ports["http"]
        assert sum(1 for r in broker.listeners if r["transport"] == "http") == 1  # supervisor's

        assert (await http_request(http, "/metrics"))[0] == 401
        assert (await http_request(http, "/metrics", headers=_basic("prom", "nope")))[0] == 401
        assert (await http_request(http, "/healthz"))[0] == 200  # probes need no credentials
        status, ready = await readyz(http)
        assert status == 200, ready
        assert {k: v["state"] for k, v in ready["workers"].items()} == {"1": "ready", "2": "ready"}
        assert {v["pid"] for v in ready["workers"].values()} == set(labels)

        samples, text = await scrape(http, **creds)
        assert set(per_worker(samples, "mqttd_build_info")) == {"1", "2"}
        assert per_worker(samples, "mqttd_subscriptions") == {"1": 0, "2": 0}
        assert samples[("mqttd_workers_configured", ())] == WORKERS
        assert samples[("mqttd_workers_running", ())] == WORKERS
        assert samples[("mqttd_private_redis_up", ())] == 1
        assert per_worker(samples, "mqttd_worker_up") == {"1": 1, "2": 1}
        assert per_worker(samples, "mqttd_worker_scrape_failures_total") == {"1": 0, "2": 0}

        by_pid = await connect_spread(tcp, list(labels), 12, "m")
        assert len(by_pid) == WORKERS, "12 connections all landed on one worker"
        clients = {labels[pid]: group for pid, group in by_pid.items()}
        count = {worker: len(group) for worker, group in clients.items()}
        everyone = [c for group in clients.values() for c in group]
        await publish_from_each(everyone, 1, b"12345")

        previous, _ = await scrape(http, **creds)
        assert per_worker(previous, "mqttd_connects_total", result="accepted") == count
        assert per_worker(previous, "mqttd_packets_received_total", type="publish") == count
        payload = per_worker(previous, "mqttd_publish_payload_bytes_received_total")
        assert payload == {w: 5 * n for w, n in count.items()}
        assert sum(payload.values()) == 12 * 5  # sum without(worker): the broker's total

        for round_ in range(2, 5):
            await publish_from_each(everyone, round_, b"abc")
            samples, text = await scrape(http, **creds)
            published = per_worker(samples, "mqttd_packets_received_total", type="publish")
            assert published == {w: round_ * n for w, n in count.items()}
            assert sum(published.values()) == round_ * 12
            now, before = counters(samples), counters(previous)
            assert set(before) <= set(now)
            regressed = {key: (before[key], now[key]) for key in before if now[key] < before[key]}
            assert not regressed, regressed
            previous = samples

        # One HELP and TYPE per family, counters with one _total, histograms whole per worker.
        lines = text.splitlines()
        assert lines.count("# TYPE mqttd_connects_total counter") == 1
        assert lines.count("# TYPE mqttd_store_commit_seconds histogram") == 1
        assert "_total_total" not in text
        for worker in ("1", "2"):
            total = samples[("mqttd_store_commit_seconds_count", (("worker", worker),))]
            inf = (("le", "+Inf"), ("worker", worker))
            assert samples[("mqttd_store_commit_seconds_bucket", inf)] == total

        # The private channel: a worker's own metrics, no auth, in a directory for mqttd only.
        directory = data_dir / "workers"
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        with trio.fail_after(TIMEOUT_S):
            status, body = await fetch(worker_socket(data_dir, 1), "/metrics")
        assert status == 200
        own = {f.name for f in text_string_to_metric_families(body.decode())}
        assert "mqttd_connects" in own
        assert 'worker="' not in body.decode()

        # SIGHUP: the supervisor reloads the http listener's password file, as workers do theirs.
        passwords.write_text(f"prom:{hash_password('rotated')}\n")
        mark = len(broker.lines)
        broker.proc.send_signal(signal.SIGHUP)
        await broker.wait_for_record(
            lambda r: r.get("event") == "auth_reloaded" and str(passwords) in r.get("files", []),
            "the supervisor's auth_reloaded",
            TIMEOUT_S,
            start=mark,
        )
        assert (await http_request(http, "/metrics", **creds))[0] == 401
        await scrape(http, headers=_basic("prom", "rotated"))
    assert not worker_socket(data_dir, 1).exists()  # removed at a graceful stop


@pytest.mark.slow
async def test_readyz_is_503_while_a_killed_worker_is_down(data_dir: Path) -> None:
    """kill -9 of a worker: /readyz says 503 (that worker not running or not answering, the
    other ready) until the supervisor has restarted it and it is ready, then 200; the restart
    is counted and the new life's counters start again in its own series."""
    config = write_config(data_dir)
    async with run_mqttd(config, "--workers", str(WORKERS), listeners=WORKERS + 1) as broker:
        labels = worker_of(broker)
        http = broker.ports["http"]
        await readyz_until(http, 200)
        victim = next(pid for pid, worker in labels.items() if worker == "1")
        mark = len(broker.lines)
        os.kill(victim, signal.SIGKILL)

        down = await readyz_until(http, 503)
        assert down["status"] == "not ready"
        assert down["workers"]["1"]["state"] in ("not running", "no answer"), down
        assert down["workers"]["2"]["state"] == "ready", down
        assert down["checks"]["workers"] == {"ok": False, "configured": 2, "ready": 1}

        up = await readyz_until(http, 200)
        assert up["workers"]["1"]["state"] == "ready"
        assert up["workers"]["1"]["pid"] != victim
        _, restarted = await broker.wait_for_record(
            lambda r: r.get("event") == "worker_restarted" and r.get("worker") == 1,
            "worker_restarted",
            TIMEOUT_S,
            start=mark,
        )
        assert restarted["pid"] == up["workers"]["1"]["pid"]

        samples, _ = await scrape(http)
        assert per_worker(samples, "mqttd_worker_restarts_total") == {"1": 1, "2": 0}
        assert per_worker(samples, "mqttd_worker_up") == {"1": 1, "2": 1}
        assert samples[("mqttd_workers_running", ())] == WORKERS
        uptime = per_worker(samples, "mqttd_uptime_seconds")
        assert uptime["1"] < uptime["2"]  # worker 1's series began again


@pytest.mark.slow
async def test_a_worker_that_does_not_answer_is_left_out_of_the_scrape(data_dir: Path) -> None:
    """A stopped worker (SIGSTOP: alive, silent) is left out of /metrics after the fetch
    timeout, counted in mqttd_worker_scrape_failures_total, and /readyz is 503 meanwhile; the
    scrape itself answers 200 with the other worker's series. SIGCONT: back in."""
    # A long node timeout: the stopped worker must not be declared dead by the other one.
    config = write_config(data_dir, node_timeout_s=60.0)
    async with run_mqttd(config, "--workers", str(WORKERS), listeners=WORKERS + 1) as broker:
        labels = worker_of(broker)
        http = broker.ports["http"]
        await readyz_until(http, 200)
        silent = next(pid for pid, worker in labels.items() if worker == "2")
        os.kill(silent, signal.SIGSTOP)
        try:
            start = trio.current_time()
            samples, _ = await scrape(http)
            took = trio.current_time() - start
            assert METRICS_TIMEOUT_S * 0.9 <= took < TIMEOUT_S
            assert set(per_worker(samples, "mqttd_build_info")) == {"1"}
            assert per_worker(samples, "mqttd_worker_up") == {"1": 1, "2": 0}
            assert per_worker(samples, "mqttd_worker_scrape_failures_total") == {"1": 0, "2": 1}
            assert samples[("mqttd_workers_running", ())] == WORKERS  # alive, only silent
            status, body = await readyz(http)
            assert status == 503
            assert body["workers"]["2"]["state"] == "no answer"
            assert body["workers"]["1"]["state"] == "ready"
        finally:
            os.kill(silent, signal.SIGCONT)
        await broker.wait_for_record(
            lambda r: r.get("event") == "worker_scrape_failed" and r.get("worker") == 2,
            "worker_scrape_failed",
            TIMEOUT_S,
        )
        await readyz_until(http, 200)
        samples, _ = await scrape(http)
        assert set(per_worker(samples, "mqttd_build_info")) == {"1", "2"}
        assert per_worker(samples, "mqttd_worker_scrape_failures_total") == {"1": 0, "2": 1}
        await broker.wait_for_record(
            lambda r: r.get("event") == "worker_scrape_recovered" and r.get("worker") == 2,
            "worker_scrape_recovered",
            TIMEOUT_S,
        )
