"""The brokers a benchmark run starts: Mosquitto and mqttd on free loopback ports, each in its
own work directory, with throw-away TLS certificates for the wss listener.

Both start through ``conformance.broker_process``, which waits for the broker's own "ready" log
lines (Mosquitto's "running", mqttd's ``listener_started`` per listener) instead of polling.

mqttd comes in four forms (``BROKER_FORMS``): one plain process (``mqttd``); ``mqttd --workers
N`` (``mqttd-wN``: a supervisor, N workers and the private redis-server the supervisor starts);
and one process in cluster mode (``mqttd-cluster1``: ``[cluster] redis_url`` pointing at a
redis-server this benchmark starts on a Unix socket, with the persistence options the
supervisor would give its private one). ``mqttd --workers 1`` is, by mqttd's command line, the
plain single process: no supervisor, no Redis.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from conformance.broker_process import (
    MOSQUITTO,
    BrokerProcess,
    LogWaitError,
    free_port,
    listeners_toml,
    mqttd_version,
    start_mosquitto,
    start_mqttd,
)

from .load import Target


@dataclass
class Certs:
    """A throw-away CA and a server certificate for 127.0.0.1/localhost."""

    cafile: str
    certfile: str
    keyfile: str


def make_certs(directory: Path) -> Certs | None:
    """Create development certificates with trustme (None if it is not installed)."""
    try:
        import trustme
    except ImportError:
        return None
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    paths = Certs(
        str(directory / "ca.pem"), str(directory / "server.pem"), str(directory / "key.pem")
    )
    ca.cert_pem.write_to_path(paths.cafile)
    cert.cert_chain_pems[0].write_to_path(paths.certfile)
    cert.private_key_pem.write_to_path(paths.keyfile)
    return paths


@dataclass
class Broker:
    """A broker process this benchmark started, and where to reach it."""

    name: str
    process: BrokerProcess
    target: Target
    redis: BrokerProcess | None = None  # a redis-server started for it (cluster mode)

    def exited(self) -> bool:
        """True if the process has ended."""
        return self.process.proc.poll() is not None

    def tail(self) -> str:
        """Its last log lines, for an error message."""
        return self.process.log.tail_text()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it takes too long (bounded); then its redis-server."""
        try:
            self.process.stop()
        finally:
            if self.redis is not None:
                self.redis.stop()


def start_mosquitto_broker(workdir: Path, certs: Certs | None) -> Broker:
    """Start Mosquitto with a generated config on free loopback ports."""
    ports = {"tcp": free_port(), "ws": free_port()}
    lines = [
        "per_listener_settings false",
        "allow_anonymous true",
        "set_tcp_nodelay true",
        "persistence false",
        "max_queued_messages 1000000",
        "max_inflight_messages 20",
        f"listener {ports['tcp']} 127.0.0.1",
        # A websockets listener only starts in 2.0.11 when a plain listener exists too.
        f"listener {ports['ws']} 127.0.0.1",
        "protocol websockets",
    ]
    if certs is not None:
        ports["wss"] = free_port()
        lines += [
            f"listener {ports['wss']} 127.0.0.1",
            "protocol websockets",
            f"certfile {certs.certfile}",
            f"keyfile {certs.keyfile}",
        ]
    process = start_mosquitto("\n".join(lines), workdir, ports)
    target = Target("mosquitto", "127.0.0.1", ports, process.pid, certs.cafile if certs else None)
    return Broker("mosquitto", process, target)


def mqttd_toml(
    transports: list[str],
    certs: Certs | None,
    data_dir: Path,
    *,
    durability: str | None = None,
    redis_url: str | None = None,
) -> str:
    """An mqttd config with one listener per transport on port 0 and deep queues; with
    ``redis_url``, a cluster node (node id ``bench-c1``)."""
    parts = [
        f'[broker]\ndata_dir = "{data_dir}"\n',
        "[limits]\nmax_queued_messages = 1000000\nmax_queued_bytes = 1073741824\n",
    ]
    if durability is not None:
        parts.append(f'[store]\ndurability = "{durability}"\n')
    if redis_url is not None:
        parts.append(f'[cluster]\nredis_url = "{redis_url}"\nnode_id = "bench-c1"\n')
    for t in transports:
        if t == "wss" and certs is not None:
            files = {"certfile": certs.certfile, "keyfile": certs.keyfile}
            parts.append(listeners_toml(t, host="127.0.0.1", **files))
        else:
            parts.append(listeners_toml(t, host="127.0.0.1"))
    return "\n".join(parts)


#: The private redis-server's persistence per ``[store] durability``, as mqttd's supervisor
#: sets it (``mqttd.supervisor.redis_persistence``; this script never imports mqttd).
REDIS_PERSISTENCE = {
    "fsync": ["--appendonly", "yes", "--appendfsync", "always"],
    "os": ["--appendonly", "yes", "--appendfsync", "no"],
    "memory": ["--appendonly", "no"],
}
#: mqttd's default ``[store] durability``.
DEFAULT_DURABILITY = "fsync"
#: How long a redis-server may take to accept connections.
REDIS_START_TIMEOUT_S = 20.0


def start_redis(directory: Path, durability: str) -> tuple[BrokerProcess, str]:
    """Start redis-server on a Unix socket in ``directory`` (no TCP port) with the options
    mqttd's supervisor gives its private one; its process and ``unix://`` URL.

    Raises:
        RuntimeError: redis-server is missing or did not become ready in time.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed")
    sock = directory / "redis.sock"
    argv = [
        binary,
        "--port", "0",
        "--unixsocket", str(sock),
        "--unixsocketperm", "700",
        "--dir", str(directory),
        "--daemonize", "no",
        "--logfile", "/dev/stderr",  # the pipe BrokerProcess reads
        "--save", "",
        *REDIS_PERSISTENCE[durability],
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=directory,
    )
    process = BrokerProcess("redis-server", proc)
    try:
        process.wait_for(
            lambda r: "ready to accept connections" in str(r.get("line", "")).lower(),
            "redis-server ready",
            REDIS_START_TIMEOUT_S,
        )
    except LogWaitError as exc:
        process.stop(timeout_s=5.0)
        raise RuntimeError(f"redis-server did not start: {exc}") from None
    return process, f"unix://{sock}"


def mqttd_name(workers: int = 0, cluster: bool = False) -> str:
    """The column name of an mqttd form: ``mqttd``, ``mqttd-wN``, ``mqttd-cluster1``."""
    if cluster:
        return "mqttd-cluster1"
    return f"mqttd-w{workers}" if workers else "mqttd"


def start_mqttd_broker(
    workdir: Path,
    certs: Certs | None,
    *,
    workers: int = 0,
    cluster: bool = False,
    durability: str | None = None,
) -> Broker:
    """Start mqttd; fall back to fewer listener types if this build rejects some.

    Args:
        workdir: its working directory (config, data, a Redis's files).
        certs: certificates for a wss listener.
        workers: 0 for a plain process, else ``--workers N``.
        cluster: one process in cluster mode, over a redis-server started here.
        durability: ``[store] durability`` (default: mqttd's), also the Redis's persistence.
    """
    name = mqttd_name(workers, cluster)
    wanted = ["tcp", "ws"] + (["wss"] if certs is not None else [])
    attempts = [wanted, ["tcp", "ws"], ["tcp"]]
    last_error = ""
    redis: BrokerProcess | None = None
    redis_url: str | None = None
    extra: tuple[int, ...] = ()
    if cluster:
        redis_dir = workdir / "redis"
        redis_dir.mkdir(mode=0o700)
        redis, redis_url = start_redis(redis_dir, durability or DEFAULT_DURABILITY)
        extra = (redis.pid,)
    args = ["--workers", str(workers)] if workers else []
    data_dir = workdir / "mqttd-data"
    for transports in attempts:
        conf = workdir / "mqttd.toml"
        conf.write_text(
            mqttd_toml(transports, certs, data_dir, durability=durability, redis_url=redis_url)
        )
        per_process = max(workers, 1)
        try:
            process = start_mqttd(
                conf,
                *args,
                listeners=per_process * len(transports),
                cwd=workdir,
                timeout_s=20.0 + 5.0 * per_process,
            )
        except (RuntimeError, LogWaitError) as exc:
            last_error = str(exc)
            continue
        if workers > 1:  # the supervisor's private redis-server (mqttd.supervisor)
            redis_url = f"unix://{data_dir / 'redis' / 'redis.sock'}"
        target = Target(
            name,
            "127.0.0.1",
            process.ports,
            process.pid,
            certs.cafile if certs else None,
            extra_pids=extra,
            redis_url=redis_url,
            workers=workers,
        )
        return Broker(name, process, target, redis)
    if redis is not None:
        redis.stop()
    raise RuntimeError(f"{name} did not start: {last_error}")


def version_of(name: str) -> str:
    """Version string of a broker binary/package."""
    if name.startswith("mqttd"):
        return mqttd_version()
    with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
        out = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, timeout=5).stdout
        return out.splitlines()[0].replace("mosquitto version ", "")
    return "?"
