"""``mqttd --workers N``: N broker processes on this machine, one broker, supervised.

Theory of operation
-------------------
One mqttd process uses one core. With ``workers = N`` (N > 1) the process started by the
operator becomes a *supervisor*: it serves no client itself, it starts N *workers* -- ordinary
mqttd processes (``python -m mqttd --config FILE --worker SPEC``) that are nodes of a cluster
(``mqttd.cluster``) -- and keeps them running. Every worker binds every MQTT listener's port with
``SO_REUSEPORT`` and the kernel spreads new connections over the workers that listen; Redis
makes them one broker (routes, retained messages, sessions, client ids).

* **Redis.** ``[cluster] redis_url`` when it is set. Otherwise the supervisor starts a private
  ``redis-server`` on a Unix socket in ``<data_dir>/redis`` (no TCP port), maps
  ``[store] durability`` onto its persistence (``redis_persistence``), waits until it accepts
  connections, and restarts it if it dies. A lock file in that directory keeps a second mqttd
  off the same Redis; a redis-server left running by a supervisor that was killed (its pid file
  names it, its command line names our socket) is stopped before a new one starts.
* **Ports.** Every listener's port is *reserved* by the supervisor before any worker starts: it
  binds a ``SO_REUSEPORT`` socket to each address and never listens on it, so the port stays
  taken (a listener with ``port = 0`` gets one free port for all workers) while the kernel
  never queues a connection on it -- only listening sockets get connections. A port another
  program holds fails here, with the same one-line error a single process gives. The concrete
  ports go to the workers in their ``WorkerSpec``, with the Redis URL and the worker's number.
* **Monitoring.** The ``type = "http"`` listeners are the supervisor's own: workers leave them
  out (``worker_config``), and a scrape of a port the workers share would reach one worker at
  random. Worker k serves its own endpoints on ``<data_dir>/workers/w<k>.sock`` (in a
  directory locked like the Redis one, mode 0700); the supervisor's ``/metrics`` is every
  worker's, labelled ``worker="<k>"``, and its ``/readyz`` is 200 only when every worker is
  ready (``mqttd.worker_endpoints``). ``metrics_path`` on ws/wss listeners is refused
  (``check``).
* **Node ids.** Worker k is node ``<cluster.node_id>-w<k>``, or ``default_node_id(k)``: the same
  across its restarts, so a restarted worker cleans up after its previous life and adopts the
  persistent sessions it hosted (``mqttd.cluster.node``).
* **Restarts.** A worker that exits while the supervisor is not stopping is logged
  (``worker_exited``: status or signal) and started again (``worker_restarted``) after
  ``restart_delay``: at once after a life of ``STABLE_S`` or more, else after a delay that
  doubles with each short life in a row, up to ``RESTART_DELAY_MAX_S``: a worker that dies at
  once every time never makes a busy loop. A worker whose *first* life exits with status 2 (an
  operator error: a certificate, a password file, Redis unreachable) stops the whole supervisor
  with status 2 -- its ``mqttd: ...`` line is on stderr already; a restart would not fix it.
* **Signals.** SIGTERM or SIGINT: SIGTERM to every worker (each closes its clients within
  ``graceful_timeout_s`` and leaves the cluster within as long again), wait for them (bounded:
  ``2 * graceful_timeout_s + STOP_MARGIN_S``, then SIGKILL), stop the private redis-server,
  exit 0; a second SIGTERM/SIGINT kills the workers at once. SIGHUP: forwarded to every
  worker, which reloads its files as a single process does. Workers run in their own session,
  so a Ctrl-C at a terminal reaches the supervisor only (and each worker once, through it).
* **Parent death.** Every worker holds the read end of a pipe whose write end only the
  supervisor holds: if the supervisor dies without stopping them (SIGKILL), the read end sees
  end-of-file and the worker shuts down gracefully, instead of serving on as an orphan.
* **Logs.** The supervisor logs with the same structlog configuration; workers inherit its
  stderr and write whole lines to it themselves.

Workers ignore SIGHUP from the moment ``mqttd.cli`` runs until their server takes the signal
over; a SIGHUP in the first instant of a worker's life (while the interpreter starts) ends it,
before it listened or loaded any file, and it is restarted like any worker that dies.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import structlog
import trio

from mqttd.config import Config, ListenerConfig, check_workers
from mqttd.errors import ConfigError, StartupError

__all__ = [
    "WorkerSpec",
    "check",
    "redis_persistence",
    "restart_delay",
    "run_worker",
    "supervise",
    "worker_config",
]

log = structlog.get_logger("mqttd.supervisor")

#: Exit status of a worker that could not start for an operator's reason (``mqttd.cli``).
EXIT_USAGE = 2
#: A worker (or the private redis-server) that ran this long before it exited is restarted at
#: once, and its next short life starts the backoff again from ``RESTART_DELAY_S``.
STABLE_S = 30.0
#: Delay before restarting after the first short life in a row; doubled after each further one.
RESTART_DELAY_S = 0.25
#: The longest delay between restarts.
RESTART_DELAY_MAX_S = 30.0
#: Added to ``2 * graceful_timeout_s`` (clients closed, then the cluster left) before the
#: workers still running at shutdown are killed.
STOP_MARGIN_S = 5.0
#: How long the private redis-server may take to accept connections (loading a large
#: append-only file takes a while).
REDIS_START_TIMEOUT_S = 60.0
#: How long the private redis-server may take to exit after SIGTERM (it syncs its file).
REDIS_STOP_TIMEOUT_S = 10.0
#: How long to wait for a process that was sent SIGKILL.
KILL_WAIT_S = 5.0
#: Attempts at finding one free port for a port-0 listener on every address of its host.
PORT_ATTEMPTS = 20
#: Longest Unix socket path (``sun_path`` holds 108 bytes, with the terminating NUL).
MAX_SOCKET_PATH = 107
#: Last lines of the private redis-server's log kept for error messages.
REDIS_TAIL_LINES = 10
#: Longest line read from redis-server's log; the rest of a longer one is dropped.
MAX_LOG_LINE = 4096


# --------------------------------------------------------------------------------------------
# What the supervisor tells a worker
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker is told on its command line (``--worker``, not documented: the supervisor
    is its only user).

    Attributes:
        index: the worker's number, 1..N; part of its node id.
        redis_url: the Redis every worker uses.
        ports: the concrete port of each listener, in configuration order.
        parent_fd: the read end of the pipe that reports the supervisor's death, or None.
        monitor_socket: the Unix socket where the worker serves its monitoring endpoints to
            the supervisor (``mqttd.worker_endpoints``), or None (no http listener).
    """

    index: int
    redis_url: str
    ports: tuple[int, ...]
    parent_fd: int | None = None
    monitor_socket: str | None = None

    def to_json(self) -> str:
        """The spec as the one-line JSON text ``from_json`` reads."""
        return json.dumps(
            {
                "index": self.index,
                "redis_url": self.redis_url,
                "ports": list(self.ports),
                "parent_fd": self.parent_fd,
                "monitor_socket": self.monitor_socket,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        """Read a spec written by ``to_json``.

        Raises:
            ConfigError: ``text`` is not such a spec.
        """
        try:
            data = json.loads(text)
            index, url, ports, fd, monitor = (
                data["index"],
                data["redis_url"],
                data["ports"],
                data["parent_fd"],
                data["monitor_socket"],
            )
            if not (
                isinstance(index, int)
                and index >= 1
                and isinstance(url, str)
                and isinstance(ports, list)
                and all(isinstance(p, int) and 0 < p < 65536 for p in ports)
                and (fd is None or isinstance(fd, int))
                and (monitor is None or isinstance(monitor, str))
            ):
                raise ValueError(text)
        except (ValueError, TypeError, KeyError):
            raise ConfigError(f"--worker: not a worker specification: {text!r}") from None
        return cls(index, url, tuple(ports), fd, monitor)


def worker_config(config: Config, spec: WorkerSpec) -> Config:
    """The configuration worker ``spec.index`` runs: ``config`` as a cluster node on the
    supervisor's Redis and ports.

    The node id is ``<cluster.node_id>-w<k>`` when the file sets one, else
    ``default_node_id(k)`` (``<hostname>-w<k>``): the same across the worker's restarts. The
    ``http`` listeners are left out: the supervisor serves them for all workers.

    Raises:
        ConfigError: the file's listeners no longer match the ports the supervisor reserved
            (the file was edited since mqttd started).
    """
    from mqttd.cluster.node import default_node_id  # workers only: the supervisor is lighter

    if len(spec.ports) != len(config.listeners):
        raise ConfigError(
            f"{config.source}: listeners: {len(config.listeners)} listeners now, "
            f"{len(spec.ports)} when mqttd started: restart mqttd to change listeners"
        )
    listeners = tuple(
        replace(listener, port=port)
        for listener, port in zip(config.listeners, spec.ports, strict=True)
        if listener.type != "http"
    )
    base = config.cluster.node_id
    node_id = f"{base}-w{spec.index}" if base else default_node_id(spec.index)
    if spec.redis_url:
        cluster = replace(config.cluster, redis_url=spec.redis_url, node_id=node_id)
    else:  # Redis through Sentinel: [cluster] as the file says
        cluster = replace(config.cluster, node_id=node_id)
    return replace(config, listeners=listeners, cluster=cluster)


async def run_worker(config: Config, spec: WorkerSpec) -> None:
    """A worker's life: ``mqttd.server.main`` (signals, graceful shutdown), and a graceful
    shutdown of its own when the supervisor dies.

    Raises:
        StartupError: the broker could not start.
    """
    from mqttd import server

    async with trio.open_nursery() as nursery:
        if spec.parent_fd is not None:
            nursery.start_soon(_watch_supervisor, spec.parent_fd)
        monitor = None if spec.monitor_socket is None else Path(spec.monitor_socket)
        await server.main(config, private_socket=monitor)
        nursery.cancel_scope.cancel()


async def _watch_supervisor(fd: int) -> None:
    """Wait for end-of-file on the supervisor's pipe, then shut this worker down gracefully
    (SIGTERM to itself: ``server.main`` handles it as it would the supervisor's)."""
    async with trio.lowlevel.FdStream(fd) as pipe:
        while await pipe.receive_some(64):  # the supervisor never writes
            pass
    log.warning("supervisor_gone", action="shutting down")
    os.kill(os.getpid(), signal.SIGTERM)


# --------------------------------------------------------------------------------------------
# Pure rules
# --------------------------------------------------------------------------------------------


def restart_delay(short_lives: int) -> float:
    """Seconds to wait before a restart, after ``short_lives`` lives in a row that each ended
    within ``STABLE_S`` (0 when the last life was a long one).

    Returns:
        0 after a long life; else ``RESTART_DELAY_S`` doubled per further short life, at most
        ``RESTART_DELAY_MAX_S``.
    """
    if short_lives <= 0:
        return 0.0
    return min(RESTART_DELAY_MAX_S, RESTART_DELAY_S * 2.0 ** min(short_lives - 1, 32))


def redis_persistence(durability: str) -> list[str]:
    """The private redis-server's persistence options for ``[store] durability``.

    Returns:
        redis-server command-line options. RDB snapshots are always off: the append-only file
        is the one record, so a restart reloads everything up to the last write it holds.
    """
    if durability == "fsync":
        # Every write reaches the append-only file and is fsynced before Redis replies, and
        # a PUBACK waits for that reply: nothing acknowledged is lost, even on a power
        # failure. Costs an fsync per batch of writes Redis applies.
        return ["--appendonly", "yes", "--appendfsync", "always"]
    if durability == "os":
        # Written to the append-only file at once, fsynced whenever the kernel flushes (on
        # Linux within about 30 s): survives a crash of a worker, of mqttd or of
        # redis-server; a crash of the machine loses the writes the kernel had not flushed.
        return ["--appendonly", "yes", "--appendfsync", "no"]
    # "memory": no file. Sessions, queued and retained messages survive a worker's restart
    # (Redis keeps them) but not a restart of mqttd or of the private redis-server.
    return ["--appendonly", "no"]


def safe_url(url: str) -> str:
    """``url`` without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))


# --------------------------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------------------------


async def reserve_ports(listeners: Sequence[ListenerConfig], stack: ExitStack) -> tuple[int, ...]:
    """Reserve every listener's port on every address of its host (see the module docstring);
    the sockets close with ``stack``.

    Listeners with a fixed port are reserved first, so a port-0 listener never takes one of
    theirs.

    Returns:
        The concrete port of each listener, in configuration order.

    Raises:
        StartupError: a port cannot be bound (in use, no permission, bad host): one line.
    """
    ports: dict[int, int] = {}
    order = sorted(range(len(listeners)), key=lambda i: listeners[i].port == 0)
    for i in order:
        listener = listeners[i]
        try:
            ports[i] = await _reserve(listener.host, listener.port, stack)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise StartupError(
                f"cannot listen on {listener.type} {listener.host}:{listener.port}: {reason}"
            ) from None
    return tuple(ports[i] for i in range(len(listeners)))


async def _reserve(host: str, port: int, stack: ExitStack) -> int:
    addresses = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    for attempt in range(PORT_ATTEMPTS):
        chosen = port
        bound: list[socket.socket] = []
        try:
            for family, type_, proto, _name, address in addresses:
                sock = socket.socket(family, type_, proto)
                bound.append(sock)
                # The same options as the workers' listening sockets (mqttd.transports.tcp).
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((address[0], chosen, *address[2:]))
                chosen = sock.getsockname()[1]  # port 0: the first address picks the port
        except OSError as exc:
            for sock in bound:
                sock.close()
            # A port-0 listener whose port is free on its first address but taken on another:
            # pick again.
            if port == 0 and exc.errno == errno.EADDRINUSE and attempt + 1 < PORT_ATTEMPTS:
                continue
            raise
        for sock in bound:
            stack.callback(sock.close)
        return int(chosen)
    raise AssertionError("unreachable")  # the last attempt returns or raises


# --------------------------------------------------------------------------------------------
# The supervisor's directories
# --------------------------------------------------------------------------------------------


def check_socket_path(path: Path, hint: str) -> None:
    """Raise if ``path`` is too long for a Unix socket.

    Raises:
        StartupError: one line, ending with ``hint``.
    """
    size = len(os.fsencode(str(path)))
    if size > MAX_SOCKET_PATH:
        raise StartupError(
            f"{path}: too long for a Unix socket ({size} bytes, at most {MAX_SOCKET_PATH}): {hint}"
        )


def lock_directory(directory: Path, stack: ExitStack, *, what: str, hint: str) -> None:
    """Create ``directory`` (mode 0700: its sockets are for mqttd's user only) and take its
    lock, held until ``stack`` closes: a second mqttd with workers on the same data_dir stops
    here instead of taking the first one's sockets.

    Raises:
        StartupError: the directory cannot be created, or another mqttd holds it.
    """
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(directory / "mqttd.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StartupError(
            f"{directory}: cannot create {what}: {exc.strerror or exc}: {hint}"
        ) from None
    stack.callback(os.close, fd)
    import fcntl  # POSIX only, as workers are (SO_REUSEPORT)

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise StartupError(
            f"{directory}: another mqttd with workers uses this data_dir "
            "(set a different broker.data_dir)"
        ) from None


# --------------------------------------------------------------------------------------------
# The private redis-server
# --------------------------------------------------------------------------------------------


class PrivateRedis:
    """A redis-server for this mqttd's workers only, on a Unix socket in ``directory``.

    Args:
        binary: the redis-server executable.
        directory: its working directory (append-only file, socket, pid file, lock).
        durability: ``[store] durability``, mapped by ``redis_persistence``.
    """

    def __init__(self, binary: str, directory: Path, durability: str) -> None:
        self.binary = binary
        self.directory = directory
        self.durability = durability
        self.socket_path = directory / "redis.sock"
        self.pid_file = directory / "redis.pid"
        self.url = f"unix://{self.socket_path}"
        self.process: trio.Process | None = None
        self.tail: deque[str] = deque(maxlen=REDIS_TAIL_LINES)
        #: whether redis-server accepts connections now (for monitoring)
        self.up = False
        #: how many times it was started again after it exited
        self.restarts = 0
        self._stop = trio.Event()

    @property
    def argv(self) -> list[str]:
        """The redis-server command line."""
        return [
            self.binary,
            "--port", "0",  # no TCP: only this machine's mqttd processes reach it
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--pidfile", str(self.pid_file),
            "--daemonize", "no",
            "--logfile", "",  # stdout, which the supervisor reads
            "--loglevel", "notice",
            "--save", "",
            *redis_persistence(self.durability),
        ]  # fmt: skip

    async def prepare(self, stack: ExitStack) -> None:
        """Create the directory, take its lock (held until ``stack`` closes) and stop a
        redis-server a killed supervisor left running there.

        Raises:
            StartupError: the directory cannot be used: another mqttd holds it, or the socket
                path is too long.
        """
        check_socket_path(self.socket_path, "set cluster.redis_url or a shorter broker.data_dir")
        lock_directory(
            self.directory,
            stack,
            what="the private Redis directory",
            hint="set cluster.redis_url or broker.data_dir",
        )
        await self._stop_orphan()

    def _orphan_pid(self) -> int | None:
        """The pid of a redis-server a killed supervisor left running here, if any: the pid
        file names it and its command line names our socket (a live supervisor would hold
        the lock)."""
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        if b"redis-server" not in cmdline or os.fsencode(str(self.socket_path)) not in cmdline:
            return None
        return pid

    async def _stop_orphan(self) -> None:
        pid = self._orphan_pid()
        if pid is None:
            return
        log.warning("redis_orphan_stopped", pid=pid, socket=str(self.socket_path))
        try:
            # Not our child, so no wait(): a pidfd becomes readable when the process ends.
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        except OSError:  # a kernel older than 5.3: ask it to stop, without waiting
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            return
        try:
            for sig, wait_s in (
                (signal.SIGTERM, REDIS_STOP_TIMEOUT_S),
                (signal.SIGKILL, KILL_WAIT_S),
            ):
                signal.pidfd_send_signal(pidfd, sig)
                with trio.move_on_after(wait_s):
                    await trio.lowlevel.wait_readable(pidfd)
                    return
        except ProcessLookupError:
            return
        finally:
            os.close(pidfd)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run redis-server until ``stop``, restarting it when it dies; ``task_status`` is
        reported once it first accepts connections.

        Raises:
            StartupError: the first redis-server did not become ready.
        """
        short_lives = 0
        first = True
        while not self._stop.is_set():
            proc = await trio.lowlevel.open_process(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C must not stop it before the workers
                cwd=self.directory,
            )
            self.process = proc
            started = trio.current_time()
            try:
                async with trio.open_nursery() as nursery:
                    ready = trio.Event()
                    settled = trio.Event()
                    ended = trio.Event()
                    nursery.start_soon(self._read_log, proc, ready, settled, ended)
                    with trio.move_on_after(REDIS_START_TIMEOUT_S):
                        await settled.wait()
                    if not ready.is_set():
                        proc.kill()
                        reason = self.tail[-1] if self.tail else "no output"
                        if first:
                            raise StartupError(
                                f"the private redis-server in {self.directory} did not start: "
                                f"{reason}: set cluster.redis_url to use another Redis"
                            )
                        log.error("redis_start_failed", pid=proc.pid, last_line=reason)
                    else:
                        self.up = True
                        if first:
                            log.info(
                                "redis_started",
                                pid=proc.pid,
                                socket=str(self.socket_path),
                                durability=self.durability,
                            )
                            task_status.started()
                            first = False
                        else:
                            self.restarts += 1
                            log.info("redis_restarted", pid=proc.pid)
                    status = await proc.wait()
                    # Its last lines say why it ended; a child it forked may hold the pipe.
                    with trio.move_on_after(1.0):
                        await ended.wait()
                    nursery.cancel_scope.cancel()
            finally:
                self.up = False
                if proc.returncode is None:  # cancelled: never leave it running
                    await _reap(proc)
                assert proc.stdout is not None
                await proc.stdout.aclose()
            self.process = None
            if self._stop.is_set():
                return
            lived = trio.current_time() - started
            short_lives = short_lives + 1 if lived < STABLE_S else 0
            delay = restart_delay(short_lives)
            log.error(
                "redis_exited",
                pid=proc.pid,
                **_status_fields(status),
                uptime_s=round(lived, 3),
                restart_in_s=delay,
                last_lines=list(self.tail)[-3:],
            )
            with trio.move_on_after(delay):
                await self._stop.wait()

    async def _read_log(
        self, proc: trio.Process, ready: trio.Event, settled: trio.Event, ended: trio.Event
    ) -> None:
        """Keep redis-server's last lines; set ``ready`` when it accepts connections,
        ``settled`` then or at the end of its output, ``ended`` at the end. Its warnings
        (`` # `` lines) after start-up are logged."""
        assert proc.stdout is not None
        async for line in _lines(proc.stdout):
            self.tail.append(line)
            if not ready.is_set():
                if "ready to accept connections" in line.lower():
                    ready.set()
                    settled.set()
            elif " # " in line and not self._stop.is_set():
                log.warning("redis_log", line=line)
        settled.set()
        ended.set()

    async def stop(self) -> None:
        """SIGTERM to redis-server (it syncs its file and exits), SIGKILL if it takes longer
        than ``REDIS_STOP_TIMEOUT_S``; ``run`` then returns."""
        self._stop.set()
        proc = self.process
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        with trio.move_on_after(REDIS_STOP_TIMEOUT_S):
            await proc.wait()
            log.info("redis_stopped", pid=proc.pid)
            return
        log.warning("redis_killed", pid=proc.pid, after_s=REDIS_STOP_TIMEOUT_S)
        await _reap(proc)


async def _lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[str]:
    """The lines of ``stream`` (decoded, without line ends), each cut to ``MAX_LOG_LINE``."""
    buffer = bytearray()
    skipping = False  # the rest of a line already cut
    while chunk := await stream.receive_some(65536):
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if not skipping:
                yield line.decode(errors="replace").rstrip("\r")
            skipping = False
        if len(buffer) > MAX_LOG_LINE:
            if not skipping:
                yield buffer[:MAX_LOG_LINE].decode(errors="replace")
            skipping = True
            buffer.clear()
    if buffer and not skipping:
        yield buffer.decode(errors="replace")


# --------------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------------


class Supervisor:
    """The supervisor's state: live workers, restarts, the stop request.

    Args:
        config: the configuration (``graceful_timeout_s`` bounds the shutdown).
        command: the command line that starts worker ``spec``.
        specs: one spec per worker.
    """

    def __init__(
        self,
        config: Config,
        command: Callable[[WorkerSpec], list[str]],
        specs: Sequence[WorkerSpec],
    ) -> None:
        self.config = config
        self.command = command
        self.specs = list(specs)
        self.procs: dict[int, trio.Process] = {}
        #: worker number -> how many times it was started again after it exited
        self.restarts: dict[int, int] = {}
        #: called on SIGHUP after the signal went to the workers (the supervisor's own files)
        self.on_reload: Callable[[], Awaitable[object]] | None = None
        self.stopping = False
        self.exit_status = 0
        self.stop_requested = trio.Event()
        self.starting: trio.CancelScope | None = None
        self._monitors = 0
        self._all_stopped = trio.Event()

    def request_stop(self, exit_status: int = 0) -> None:
        """Begin the shutdown (``run`` stops the workers); a non-zero status sticks."""
        self.exit_status = self.exit_status or exit_status
        self.stop_requested.set()
        if self.starting is not None:
            self.starting.cancel()

    def forward(self, signum: int) -> list[int]:
        """Send ``signum`` to every running worker; returns their pids."""
        pids = []
        for proc in list(self.procs.values()):
            if proc.returncode is None:
                proc.send_signal(signum)
                pids.append(proc.pid)
        return pids

    async def handle_signals(self, signals: AsyncIterator[int]) -> None:
        """SIGHUP: forward it. SIGTERM/SIGINT: stop; a second one: kill the workers now."""
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                log.info("reload_forwarded", signal=name, pids=self.forward(signal.SIGHUP))
                if self.on_reload is not None:
                    await self.on_reload()
            elif not self.stop_requested.is_set():
                log.info("shutdown_requested", signal=name)
                self.request_stop()
            else:
                log.warning("shutdown_forced", signal=name, pids=self.forward(signal.SIGKILL))

    async def monitor(self, spec: WorkerSpec, *, task_status: trio.TaskStatus[int]) -> None:
        """Run worker ``spec`` until the supervisor stops, restarting it whenever it exits;
        ``task_status`` gets the first pid."""
        self._monitors += 1
        try:
            await self._monitor(spec, task_status)
        finally:
            self._monitors -= 1
            if not self._monitors:
                self._all_stopped.set()

    async def _monitor(self, spec: WorkerSpec, task_status: trio.TaskStatus[int]) -> None:
        index = spec.index
        short_lives = 0
        restarts = 0
        while True:
            proc = await trio.lowlevel.open_process(
                self.command(spec),
                stdin=subprocess.DEVNULL,
                pass_fds=() if spec.parent_fd is None else (spec.parent_fd,),
                # Its own session: a Ctrl-C at the terminal reaches the supervisor only.
                start_new_session=True,
            )
            self.procs[index] = proc
            if self.stop_requested.is_set():  # the stop began while it was being started
                proc.terminate()
            if restarts == 0:
                task_status.started(proc.pid)
            else:
                self.restarts[index] = restarts
                log.info("worker_restarted", worker=index, pid=proc.pid, restarts=restarts)
            started = trio.current_time()
            try:
                status = await proc.wait()
            finally:
                if proc.returncode is None:  # cancelled: the supervisor itself failed
                    await _reap(proc)
                del self.procs[index]
            lived = trio.current_time() - started
            if self.stopping or self.stop_requested.is_set():
                log.info("worker_stopped", worker=index, pid=proc.pid, **_status_fields(status))
                return
            short_lives = short_lives + 1 if lived < STABLE_S else 0
            delay = restart_delay(short_lives)
            fields = _status_fields(status)
            if restarts == 0 and status == EXIT_USAGE and lived < STABLE_S:
                # Its "mqttd: ..." line says why; every worker would fail the same way.
                log.error("worker_start_failed", worker=index, pid=proc.pid, **fields)
                self.request_stop(EXIT_USAGE)
                return
            log.warning(
                "worker_exited",
                worker=index,
                pid=proc.pid,
                **fields,
                uptime_s=round(lived, 3),
                restart_in_s=delay,
            )
            with trio.move_on_after(delay):
                await self.stop_requested.wait()
            if self.stop_requested.is_set():
                return
            restarts += 1

    async def stop_workers(self) -> None:
        """SIGTERM to every worker; SIGKILL to those still running after
        ``2 * graceful_timeout_s + STOP_MARGIN_S``; returns when every monitor has ended."""
        self.stopping = True
        if not self._monitors:
            return
        self.forward(signal.SIGTERM)
        grace = 2 * self.config.limits.graceful_timeout_s + STOP_MARGIN_S
        with trio.move_on_after(grace):
            await self._all_stopped.wait()
            return
        log.warning("workers_killed", pids=self.forward(signal.SIGKILL), after_s=grace)
        with trio.move_on_after(KILL_WAIT_S):
            await self._all_stopped.wait()


async def _reap(proc: trio.Process) -> None:
    """SIGKILL ``proc`` and wait for it (shielded, bounded)."""
    with trio.CancelScope(shield=True):
        if proc.returncode is None:
            proc.kill()
        with trio.move_on_after(KILL_WAIT_S):
            await proc.wait()


def _status_fields(status: int) -> dict[str, object]:
    """``{"status": n}`` for an exit, ``{"signal": "SIGKILL"}`` for a death by signal."""
    if status < 0:
        try:
            return {"signal": signal.Signals(-status).name}
        except ValueError:
            return {"signal": -status}
    return {"status": status}


def worker_command(
    config: Config, *, log_format: str, log_level: str
) -> Callable[[WorkerSpec], list[str]]:
    """The command line that starts a worker: this interpreter, ``-m mqttd``, the same file
    and log settings, and the worker's spec."""
    assert config.source is not None
    source = str(Path(config.source).absolute())

    def command(spec: WorkerSpec) -> list[str]:
        return [
            sys.executable, "-m", "mqttd",
            "--config", source,
            "--log-format", log_format,
            "--log-level", log_level,
            "--worker", spec.to_json(),
        ]  # fmt: skip

    return command


def check(config: Config, workers: int) -> str | None:
    """What ``supervise`` needs before it starts anything: SO_REUSEPORT, a configuration
    workers can serve (``mqttd.config.check_workers``: no ``metrics_path``), and a Redis.

    Returns:
        The redis-server executable to start, or None when ``cluster.redis_url`` is set.

    Raises:
        StartupError: this system has no SO_REUSEPORT, a ws/wss listener has a metrics_path,
            or no Redis is set and redis-server is not on PATH: one line that names the key
            to set.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise StartupError(f"{workers} workers need SO_REUSEPORT, which this system lacks")
    try:
        check_workers(config, workers)  # the file's rule, for --workers N over the file's 1
    except ConfigError as exc:
        raise StartupError(str(exc)) from None
    if config.cluster.enabled:  # redis_url or sentinels: the operator's Redis
        return None
    binary = shutil.which("redis-server")
    if binary is None:
        raise StartupError(
            f"{config.source}: {workers} workers need Redis and redis-server is not on PATH: "
            "set cluster.redis_url (or install redis-server)"
        )
    return binary


async def supervise(config: Config, workers: int, *, log_format: str, log_level: str) -> int:
    """Run ``workers`` worker processes (and the private redis-server, if needed) until SIGTERM
    or SIGINT; see the module docstring.

    Args:
        config: the loaded configuration.
        workers: how many workers (more than 1).
        log_format: the workers' ``--log-format``.
        log_level: the workers' ``--log-level``.

    Returns:
        The exit status: 0 after a shutdown, 2 when a worker could not start.

    Raises:
        StartupError: Redis or a port cannot be had: one line for the operator.
    """
    binary = check(config, workers)
    with (
        trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals,
        ExitStack() as stack,
    ):
        redis: PrivateRedis | None = None
        # With sentinels the workers keep [cluster] as it is; "" says so in their spec.
        redis_url = config.cluster.redis_url or ""
        if not config.cluster.enabled:
            assert binary is not None
            redis = PrivateRedis(binary, config.broker.data_dir / "redis", config.store.durability)
            redis_url = redis.url
        ports = await reserve_ports(config.listeners, stack)
        read_fd, write_fd = os.pipe()  # both ends close with the stack: the workers see EOF
        stack.callback(os.close, read_fd)
        stack.callback(os.close, write_fd)
        if redis is not None:
            await redis.prepare(stack)
        # The http listeners are the supervisor's, over every worker's private socket.
        concrete = replace(
            config,
            listeners=tuple(
                replace(listener, port=port)
                for listener, port in zip(config.listeners, ports, strict=True)
            ),
        )
        sockets = _prepare_monitoring(concrete, workers, stack)
        specs = [
            WorkerSpec(k, redis_url, ports, read_fd, str(sockets[k]) if sockets else None)
            for k in range(1, workers + 1)
        ]
        command = worker_command(config, log_format=log_format, log_level=log_level)
        supervisor = Supervisor(config, command, specs)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(supervisor.handle_signals, signals)
            if sockets:
                await _start_monitoring(nursery, concrete, supervisor, redis, sockets)
            with trio.CancelScope() as supervisor.starting:
                if redis is not None:
                    await nursery.start(redis.run)
                pids = [await nursery.start(supervisor.monitor, spec) for spec in specs]
                log.info(
                    "workers_started",
                    workers=workers,
                    pids=pids,
                    ports=list(ports),
                    transports=[listener.type for listener in config.listeners],
                    redis=safe_url(redis_url) if redis is None else "private",
                )
            supervisor.starting = None
            await supervisor.stop_requested.wait()
            await supervisor.stop_workers()
            if redis is not None:
                await redis.stop()
            nursery.cancel_scope.cancel()
        return supervisor.exit_status


def _prepare_monitoring(config: Config, workers: int, stack: ExitStack) -> dict[int, Path]:
    """When ``config`` has an http listener: each worker's private socket
    (``<data_dir>/workers/w<k>.sock``), in a directory this supervisor locks (``stack``).

    Returns:
        Worker number -> its socket; empty without an http listener.

    Raises:
        StartupError: the directory cannot be had, or a socket path is too long.
    """
    if not any(listener.type == "http" for listener in config.listeners):
        return {}
    from mqttd.worker_endpoints import SOCKET_DIR, worker_socket

    data_dir = config.broker.data_dir
    sockets = {k: worker_socket(data_dir, k) for k in range(1, workers + 1)}
    check_socket_path(sockets[workers], "set a shorter broker.data_dir")
    directory = data_dir / SOCKET_DIR
    lock_directory(
        directory, stack, what="the workers' monitoring directory", hint="set broker.data_dir"
    )
    try:
        os.chmod(directory, 0o700)  # the sockets answer without auth: mqttd's user only
    except OSError as exc:
        raise StartupError(f"{directory}: {exc.strerror or exc}: set broker.data_dir") from None
    return sockets


async def _start_monitoring(
    nursery: trio.Nursery,
    config: Config,
    supervisor: Supervisor,
    redis: PrivateRedis | None,
    sockets: dict[int, Path],
) -> None:
    """Serve ``config``'s http listeners in ``nursery`` (``mqttd.worker_endpoints``); a SIGHUP
    reloads their auth files.

    Raises:
        StartupError: a password or ACL file cannot be read, or a listener cannot start.
    """
    from mqttd.access import AccessControl
    from mqttd.worker_endpoints import SupervisorEndpoints, serve_supervisor_listeners

    try:
        access = AccessControl(config)
    except ConfigError as exc:
        raise StartupError(str(exc)) from None

    async def reload() -> None:
        await trio.to_thread.run_sync(access.reload)

    supervisor.on_reload = reload
    endpoints = SupervisorEndpoints(supervisor, redis, sockets, access)
    await nursery.start(serve_supervisor_listeners, config, endpoints)
