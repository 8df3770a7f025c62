"""``mqttd --workers N``: real worker processes on one port, one broker over a private Redis.

Each test runs ``python -m mqttd`` (the supervisor) with a data directory of its own, so each
gets its own private redis-server. Which worker serves a connection is read from the kernel:
the server side of the client's TCP connection (``/proc/net/tcp``) is a socket inode, held open
by exactly one worker (``/proc/<pid>/fd``). Every wait is bounded; processes are followed by
their log lines (``workers_started``, ``worker_exited``...), never by sleeping.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from conformance.broker_process import (
    Record,
    TrioBrokerProcess,
    listeners_toml,
    mqttd_argv,
    mqttd_env,
    run_mqttd,
)
from mqttd.config import parse_config
from mqttd.supervisor import (
    RESTART_DELAY_MAX_S,
    RESTART_DELAY_S,
    WorkerSpec,
    redis_persistence,
    restart_delay,
    safe_url,
    worker_config,
)
from tests.helpers import wire
from tests.helpers.client import WireClient, connect_client, subscribe

#: Upper bound of any one wait, in seconds (generous: a restart crosses a node timeout).
TIMEOUT_S = 30.0
WORKERS = 3

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A short data directory: the private Redis's Unix socket path must fit in 107 bytes,
    which pytest's tmp_path with a long test name does not guarantee."""
    path = Path(tempfile.mkdtemp(prefix="mqttd-w"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_config(
    data_dir: Path, *transports: str, workers: int | None = None, extra: str = ""
) -> Path:
    """A config with ``transports`` on port 0 (tcp if none), the default store durability
    (fsync), node ids t-w<k> and ``extra`` TOML."""
    broker = f'[broker]\ndata_dir = "{data_dir}"\nsys_interval_s = 0\n'
    if workers is not None:
        broker += f"workers = {workers}\n"
    cluster = '[cluster]\nnode_id = "t"\nnode_timeout_s = 2.0\n'
    path = data_dir / "mqttd.toml"
    path.write_text(broker + cluster + extra + "\n" + listeners_toml(*(transports or ("tcp",))))
    return path


@pytest.fixture
async def workers(data_dir: Path) -> AsyncIterator[TrioBrokerProcess]:
    """``mqttd --workers 3`` on one TCP port (fsync durability), all workers listening."""
    config = write_config(data_dir)
    async with run_mqttd(config, "--workers", str(WORKERS), listeners=WORKERS) as broker:
        yield broker


def started(broker: TrioBrokerProcess) -> Record:
    """The supervisor's one ``workers_started`` record."""
    records = broker.records("workers_started")
    assert len(records) == 1, records
    return records[0]


# -- which worker serves a connection ---------------------------------------------------------


def _hex_address(port: int) -> str:
    return f"0100007F:{port:04X}"  # 127.0.0.1 as /proc/net/tcp writes it


def server_socket_inode(server_port: int, client_port: int) -> int:
    """The inode of the broker's end of the loopback connection from ``client_port``."""
    local, remote = _hex_address(server_port), _hex_address(client_port)
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote and fields[9] != "0":
            return int(fields[9])
    raise AssertionError(f"no accepted connection {server_port} <- {client_port}")


def socket_owner(inode: int, pids: Iterable[int]) -> int:
    """Which of ``pids`` holds socket ``inode`` open."""
    target = f"socket:[{inode}]"
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
            except FileNotFoundError:  # closed meanwhile
                continue
    raise AssertionError(f"no process among {list(pids)} holds {target}")


def serving_pid(client: WireClient, server_port: int, pids: Iterable[int]) -> int:
    """The worker that accepted ``client``'s connection (call it after its CONNACK)."""
    stream: Any = client.stream
    client_port = stream.socket.getsockname()[1]
    return socket_owner(server_socket_inode(server_port, client_port), pids)


async def connect_spread(
    port: int, pids: list[int], count: int, prefix: str
) -> dict[int, list[WireClient]]:
    """Connect ``count`` clean-session clients; group them by the worker that serves each."""
    by_worker: dict[int, list[WireClient]] = {}
    for i in range(count):
        client = await connect_client(port, f"{prefix}{i}")
        by_worker.setdefault(serving_pid(client, port, pids), []).append(client)
    return by_worker


async def read_publish(client: WireClient) -> wire.Packet:
    """The next packet, which must be a PUBLISH."""
    packet = wire.parse(await client.read_packet(TIMEOUT_S))
    assert packet.type == wire.PUBLISH, packet
    return packet


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie that no one reaped yet counts: in a
    container, whatever adopts orphans may not reap them)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


# -- the pure rules ---------------------------------------------------------------------------


async def test_restart_delay_doubles_after_short_lives_and_is_capped() -> None:
    """At once after a long life; then 0.25 s doubling per short life in a row, capped."""
    assert restart_delay(0) == 0.0
    assert restart_delay(1) == RESTART_DELAY_S
    assert restart_delay(2) == 2 * RESTART_DELAY_S
    assert restart_delay(3) == 4 * RESTART_DELAY_S
    assert restart_delay(100) == RESTART_DELAY_MAX_S


async def test_durability_maps_onto_redis_persistence() -> None:
    """fsync: fsync per write; os: append-only file, kernel flushes; memory: no file."""
    assert redis_persistence("fsync") == ["--appendonly", "yes", "--appendfsync", "always"]
    assert redis_persistence("os") == ["--appendonly", "yes", "--appendfsync", "no"]
    assert redis_persistence("memory") == ["--appendonly", "no"]


async def test_worker_spec_round_trips_and_urls_lose_their_password() -> None:
    """The supervisor's spec survives its JSON form; logged Redis URLs hide passwords."""
    spec = WorkerSpec(2, "unix:///tmp/x/redis.sock", (1883, 8080), 7)
    assert WorkerSpec.from_json(spec.to_json()) == spec
    spec = WorkerSpec(2, "unix:///tmp/x/redis.sock", (1883, 8080), 7, "/tmp/x/workers/w2.sock")
    assert WorkerSpec.from_json(spec.to_json()) == spec
    assert safe_url("redis://:s3cret@db:6379/0") == "redis://:***@db:6379/0"
    assert safe_url("redis://db:6379/0") == "redis://db:6379/0"


async def test_workers_leave_the_http_listeners_to_the_supervisor() -> None:
    """A worker's configuration has every listener on its reserved port but the http ones,
    which the supervisor serves for all workers."""
    config = parse_config({"listeners": [{"type": "tcp"}, {"type": "http"}, {"type": "ws"}]})
    spec = WorkerSpec(2, "unix:///tmp/r.sock", (40001, 40002, 40003), None, "/tmp/w2.sock")
    listeners = worker_config(config, spec).listeners
    assert [(lc.type, lc.port) for lc in listeners] == [("tcp", 40001), ("ws", 40003)]


# -- one broker over several workers ----------------------------------------------------------


@pytest.mark.slow
async def test_workers_share_one_port_and_route_messages_between_them(
    workers: TrioBrokerProcess,
) -> None:
    """Connections spread over 3 workers on one port; a message published on one worker
    reaches a subscriber on another; retained messages are seen from every worker."""
    record = started(workers)
    pids = list(record["pids"])
    port = workers.ports["tcp"]
    assert len(pids) == WORKERS
    assert record["ports"] == [port]
    assert {r["port"] for r in workers.listeners} == {port}  # every worker, the same port

    by_worker = await connect_spread(port, pids, 12, "spread")
    assert len(by_worker) >= 2, "12 connections all landed on one worker"
    (sub_pid, subs), (pub_pid, pubs) = list(by_worker.items())[:2]
    subscriber, publisher = subs[0], pubs[0]
    assert sub_pid != pub_pid

    await subscribe(subscriber, 1, ("w/#", 1))
    await publisher.send(wire.publish("w/a", b"across", qos=1, pid=5))
    await publisher.expect(wire.puback(5))
    packet = await read_publish(subscriber)
    assert (packet.topic, packet.payload) == (b"w/a", b"across")
    await subscriber.send(wire.puback(packet.pid or 0))

    # Retained on the publisher's worker, read from every worker.
    await publisher.send(wire.publish("r/t", b"kept", qos=1, retain=True, pid=6))
    await publisher.expect(wire.puback(6))
    for pid, clients in by_worker.items():
        reader = clients[-1]
        await subscribe(reader, 2, ("r/t", 0))
        packet = await read_publish(reader)
        assert (packet.topic, packet.payload, packet.flags & 1) == (b"r/t", b"kept", 1), pid


@pytest.mark.slow
async def test_a_persistent_session_resumes_on_another_worker(
    workers: TrioBrokerProcess,
) -> None:
    """A clean-session-0 client reconnects (the kernel picks the worker) until it lands on a
    worker other than the first: every time, the QoS 1 messages queued while it was away
    arrive."""
    pids = list(started(workers)["pids"])
    port = workers.ports["tcp"]
    publisher = await connect_client(port, "pub")
    client = await connect_client(port, "roamer", clean=False)
    await subscribe(client, 1, ("s/t", 1))
    first = serving_pid(client, port, pids)
    landed = {first}
    for attempt in range(20):
        await client.send(wire.disconnect())
        await client.expect_closed()
        payload = f"m{attempt}".encode()
        await publisher.send(wire.publish("s/t", payload, qos=1, pid=attempt + 1))
        await publisher.expect(wire.puback(attempt + 1))
        client = await connect_client(port, "roamer", clean=False, session_present=True)
        landed.add(serving_pid(client, port, pids))
        packet = await read_publish(client)
        assert (packet.topic, packet.payload) == (b"s/t", payload)
        await client.send(wire.puback(packet.pid or 0))
        if len(landed) > 1:
            break
    assert len(landed) > 1, "20 reconnects all landed on one worker"


@pytest.mark.slow
async def test_a_killed_worker_is_restarted_and_its_sessions_survive(data_dir: Path) -> None:
    """kill -9 of the worker that hosts a persistent session: the supervisor logs it and
    starts it again; the client reconnects and gets the QoS 1 messages acknowledged before
    the kill."""
    config = write_config(data_dir)
    async with run_mqttd(config, "--workers", str(WORKERS), listeners=WORKERS) as broker:
        pids = list(started(broker)["pids"])
        port = broker.ports["tcp"]
        client = await connect_client(port, "keeper", clean=False)
        await subscribe(client, 1, ("k/t", 1))
        victim = serving_pid(client, port, pids)
        await client.send(wire.disconnect())
        await client.expect_closed()
        publisher = await connect_client(port, "pub")
        for i in range(1, 4):
            await publisher.send(wire.publish("k/t", f"q{i}".encode(), qos=1, pid=i))
            await publisher.expect(wire.puback(i))

        mark = len(broker.lines)
        os.kill(victim, signal.SIGKILL)
        _, exited = await broker.wait_for_record(
            lambda r: r.get("event") == "worker_exited" and r.get("pid") == victim,
            "worker_exited",
            TIMEOUT_S,
            start=mark,
        )
        assert exited["signal"] == "SIGKILL"
        worker = exited["worker"]
        _, restarted = await broker.wait_for_record(
            lambda r: r.get("event") == "worker_restarted" and r.get("worker") == worker,
            "worker_restarted",
            TIMEOUT_S,
            start=mark,
        )
        assert restarted["pid"] not in pids
        # Back under its node id, the new worker takes its previous life's sessions back.
        await broker.wait_for_record(
            lambda r: r.get("event") == "cluster_joined" and r.get("node_id") == f"t-w{worker}",
            "the restarted worker's cluster_joined",
            TIMEOUT_S,
            start=mark,
        )

        with trio.fail_after(TIMEOUT_S):
            client = await connect_client(port, "keeper", clean=False, session_present=True)
            got = [await read_publish(client) for _ in range(3)]
        assert [p.payload for p in got] == [b"q1", b"q2", b"q3"]
        for packet in got:
            await client.send(wire.puback(packet.pid or 0))


@pytest.mark.slow
async def test_a_worker_that_keeps_dying_is_restarted_with_growing_delays(
    data_dir: Path,
) -> None:
    """A worker whose every restart fails at once (its config broke) waits longer before
    each new attempt, and comes back once the file is fixed."""
    config = write_config(data_dir)
    good = config.read_text()
    async with run_mqttd(config, "--workers", "2", listeners=2) as broker:
        pids = list(started(broker)["pids"])
        mark = len(broker.lines)
        config.write_text(good + "\n[broker]\n")  # a duplicate table: invalid TOML
        os.kill(pids[0], signal.SIGKILL)
        delays = []
        index = mark
        for _ in range(4):
            index, record = await broker.wait_for_record(
                lambda r: r.get("event") == "worker_exited", "worker_exited", TIMEOUT_S,
                start=index,
            )  # fmt: skip
            index += 1
            delays.append(record["restart_in_s"])
            if len(delays) > 1:
                assert record["status"] == 2  # the broken config
        assert delays == sorted(delays), delays
        assert delays[-1] > delays[0], delays
        config.write_text(good)
        await broker.wait_for_record(
            lambda r: r.get("event") == "cluster_joined" and r.get("node_id") == "t-w1",
            "worker 1 back",
            TIMEOUT_S,
            start=index,
        )


# -- signals ----------------------------------------------------------------------------------


async def test_sighup_reaches_every_worker(data_dir: Path) -> None:
    """SIGHUP to the supervisor: every worker logs reload_requested."""
    config = write_config(data_dir, "tcp", "ws")
    async with run_mqttd(config, "--workers", str(WORKERS), listeners=2 * WORKERS) as broker:
        pids = started(broker)["pids"]
        assert len(set(broker.ports.values())) == 2
        mark = len(broker.lines)
        broker.proc.send_signal(signal.SIGHUP)
        _, forwarded = await broker.wait_for_record(
            lambda r: r.get("event") == "reload_forwarded", "reload_forwarded", start=mark
        )
        assert sorted(forwarded["pids"]) == sorted(pids)
        index = mark
        for _ in range(WORKERS):
            index, _record = await broker.wait_for_record(
                lambda r: r.get("event") == "reload_requested", "reload_requested", start=index
            )
            index += 1


async def test_sigterm_stops_every_worker_and_the_private_redis(data_dir: Path) -> None:
    """SIGTERM to the supervisor: workers and redis-server exit, then it exits 0."""
    config = write_config(data_dir)
    async with run_mqttd(config, "--workers", "2", listeners=2) as broker:
        pids = list(started(broker)["pids"])
        redis_pid = broker.records("redis_started")[0]["pid"]
        socket_path = data_dir / "redis" / "redis.sock"
        assert socket_path.exists()
        status = await broker.stop(timeout_s=TIMEOUT_S)
        assert status == 0
        stopped = broker.records("worker_stopped")
        assert sorted(r["pid"] for r in stopped) == sorted(pids)
        assert all(r["status"] == 0 for r in stopped)
        assert broker.records("redis_stopped")
        for pid in [*pids, redis_pid]:
            assert gone(pid), pid
        assert not socket_path.exists()


async def test_a_killed_supervisor_stops_its_workers_and_its_redis_next_time(
    data_dir: Path,
) -> None:
    """kill -9 of the supervisor: its workers shut down by themselves (their pipe to it
    closes); the redis-server it leaves is stopped by the next start on the same data_dir."""
    config = write_config(data_dir)
    async with run_mqttd(config, "--workers", "2", listeners=2) as broker:
        pids = list(started(broker)["pids"])
        orphan = broker.records("redis_started")[0]["pid"]
        mark = len(broker.lines)
        broker.proc.kill()
        index = mark
        for _ in pids:  # each worker logs its own stop on the shared stderr
            index, _record = await broker.wait_for_record(
                lambda r: r.get("event") == "mqttd_stopped" and "worker" in r,
                "a worker's mqttd_stopped",
                TIMEOUT_S,
                start=index,
            )
            index += 1
        assert broker.records("supervisor_gone", start=mark)
        assert not gone(orphan)
    async with run_mqttd(config, "--workers", "2", listeners=2) as broker:
        stopped = broker.records("redis_orphan_stopped")
        assert [r["pid"] for r in stopped] == [orphan]
        assert gone(orphan)
        assert broker.records("redis_started")[0]["pid"] != orphan


# -- operator errors and the single-process default -------------------------------------------


async def run_to_exit(*args: str | Path, env: dict[str, str] | None = None) -> Any:
    """Run ``python -m mqttd ARGS`` to completion, capturing its output."""
    with trio.fail_after(TIMEOUT_S):
        return await trio.run_process(
            mqttd_argv(*args),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            stdin=subprocess.DEVNULL,
            env=env or mqttd_env(),
        )


async def test_workers_without_redis_server_or_redis_url_exit_2(data_dir: Path) -> None:
    """No redis-server on PATH and no cluster.redis_url: exit 2, one line naming the key."""
    config = write_config(data_dir, workers=3)
    empty = data_dir / "bin"
    empty.mkdir()
    result = await run_to_exit("--config", config, env={**mqttd_env(), "PATH": str(empty)})
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("mqttd: "), lines
    assert "cluster.redis_url" in lines[0], lines


async def test_metrics_path_with_workers_exits_2_with_one_line(data_dir: Path) -> None:
    """A ws listener's metrics_path with workers (one worker at random would answer):
    `mqttd check-config` (workers = 2 in the file) and a start with --workers 2 over a file
    without workers both exit 2 with one line asking for an http listener, before any
    redis-server or worker starts."""
    listeners = listeners_toml("tcp") + listeners_toml("ws", metrics_path="/metrics")
    in_file = data_dir / "in_file.toml"
    in_file.write_text(f'[broker]\ndata_dir = "{data_dir}"\nworkers = 2\n' + listeners)
    by_flag = data_dir / "by_flag.toml"
    by_flag.write_text(f'[broker]\ndata_dir = "{data_dir}"\n' + listeners)
    for result in (
        await run_to_exit("check-config", in_file),
        await run_to_exit("--config", by_flag, "--workers", "2"),
    ):
        lines = result.stderr.decode().splitlines()
        assert result.returncode == 2, lines
        assert len(lines) == 1, lines
        assert lines[0].startswith("mqttd: "), lines
        assert "listeners[1].metrics_path: not served with 2 workers" in lines[0], lines
        assert "add an http listener" in lines[0], lines
    assert not (data_dir / "redis").exists()


async def test_a_port_in_use_stops_the_supervisor_with_one_line(data_dir: Path) -> None:
    """A fixed port another program listens on: exit 2 before any worker starts."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = data_dir / "mqttd.toml"
        config.write_text(
            f'[broker]\ndata_dir = "{data_dir}"\n[[listeners]]\ntype = "tcp"\nport = {port}\n'
        )
        result = await run_to_exit("--config", config, "--workers", "2", "--log-level", "error")
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 2, lines
    assert lines == [f"mqttd: cannot listen on tcp 127.0.0.1:{port}: Address already in use"]


async def test_a_worker_that_cannot_start_stops_the_supervisor_with_status_2(
    data_dir: Path,
) -> None:
    """A mistake only a worker meets (a missing password file): status 2, its line shown."""
    config = write_config(data_dir, extra=f'[auth]\npassword_file = "{data_dir}/missing"\n')
    result = await run_to_exit("--config", config, "--workers", "2", "--log-format", "json")
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert "\nmqttd: " in stderr, stderr
    assert "missing" in stderr, stderr
    assert "worker_start_failed" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("configured", "args"), [(1, ()), (4, ("--workers", "1"))], ids=["config", "flag"]
)
async def test_one_worker_without_cluster_is_todays_single_process(
    tmp_path: Path, configured: int, args: tuple[str, ...]
) -> None:
    """workers = 1 (in the file, or --workers 1 over the file's 4) and no [cluster]: the
    process started is the broker itself (SQLite, no Redis, no supervisor)."""
    config = tmp_path / "mqttd.toml"
    config.write_text(
        f'[broker]\ndata_dir = "{tmp_path}"\nworkers = {configured}\n' + listeners_toml("tcp")
    )
    async with run_mqttd(config, *args) as broker:
        assert not broker.records("workers_started")
        assert broker.records("store_opened")  # SQLite
        client = await connect_client(broker.ports["tcp"], "solo")
        assert serving_pid(client, broker.ports["tcp"], [broker.proc.pid]) == broker.proc.pid
        assert child_pids(broker.proc.pid) == []


def child_pids(pid: int) -> list[str]:
    """The pids of ``pid``'s children (Linux's /proc view of its main thread)."""
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()


@pytest.mark.slow
async def test_reconnecting_right_after_a_worker_is_killed(data_dir: Path) -> None:
    """The client of a persistent session hosted by a worker killed with -9 reconnects at
    once, before the worker is back: it is refused with 0x03 (Server unavailable) while the
    dead worker still looks alive, or served; retrying, it gets its session with every
    message acknowledged before the kill."""
    config = write_config(data_dir)
    async with run_mqttd(config, "--workers", str(WORKERS), listeners=WORKERS) as broker:
        pids = list(started(broker)["pids"])
        port = broker.ports["tcp"]
        client = await connect_client(port, "keeper", clean=False)
        await subscribe(client, 1, ("k/t", 1))
        victim = serving_pid(client, port, pids)
        await client.send(wire.disconnect())
        await client.expect_closed()
        publisher = await connect_client(port, "pub")
        for i in range(1, 4):
            await publisher.send(wire.publish("k/t", f"q{i}".encode(), qos=1, pid=i))
            await publisher.expect(wire.puback(i))
        os.kill(victim, signal.SIGKILL)
        with trio.fail_after(60):
            while True:  # a client's reconnect loop
                retry = await WireClient.open(port)
                try:
                    await retry.send(wire.connect("keeper", clean=False))
                    connack = await retry.read_packet()
                except (EOFError, trio.BrokenResourceError):
                    continue  # reached the dying worker's last moments: try again
                if connack == wire.connack(1, 0):
                    break
                assert connack == wire.connack(0, 3), connack.hex()
            got = [await read_publish(retry) for _ in range(3)]
        assert [p.payload for p in got] == [b"q1", b"q2", b"q3"]
