"""Monitoring under ``mqttd --workers N``: each worker's private endpoints, and the
supervisor's ``http`` listeners over all of them.

Theory of operation
-------------------
Every worker binds every MQTT port with ``SO_REUSEPORT``, so a scrape of a port the workers
share would reach one worker chosen by the kernel: its counters one time, another's the next.
So with workers the ``http`` listeners are the **supervisor's** (workers never bind them), and
what they answer covers every worker:

* **Private channel.** Worker k serves its own ``/metrics``, ``/healthz`` and ``/readyz``,
  without auth, on the Unix socket ``<data_dir>/workers/w<k>.sock`` (``serve_private_endpoints``;
  the directory is the supervisor's, mode 0700 and locked like ``<data_dir>/redis``: only the
  user mqttd runs as can connect). It is plain HTTP/1.1, handy for a look at one worker:
  ``curl --unix-socket <data_dir>/workers/w1.sock http://w/metrics``.
* **``/metrics``.** The supervisor fetches every running worker's metrics concurrently, each
  within ``METRICS_TIMEOUT_S``, merges them with a ``worker="<k>"`` label on every sample
  (``mqttd.worker_metrics``, ``prometheus_client``'s parser and exposition) and adds its own
  figures. A worker that does not answer in time, answers an error, or sends text that does not
  parse is left out of that scrape and counted in ``mqttd_worker_scrape_failures_total``; the
  scrape itself still succeeds.
* **``/readyz``.** 200 only when every configured worker is running and its own ``/readyz``
  says ready within ``READY_TIMEOUT_S`` (and the private redis-server, if any, is up, and the
  supervisor is not stopping); else 503. The JSON body gives each worker's state and checks.
* **``/healthz``.** 200 while the supervisor's event loop runs, with how many workers run.
* **Auth.** ``/metrics`` is behind the http listener's auth exactly as on one process
  (``mqttd.health.MetricsAuth``: HTTP Basic against the password file, remembered checks, the
  ACL); the supervisor reloads the files on SIGHUP as the workers do.
"""

from __future__ import annotations

import json
import os
import platform
import socket
from collections.abc import Mapping
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h11
import structlog
import trio
from prometheus_client import CollectorRegistry

from mqttd import __version__
from mqttd.access import AccessControl
from mqttd.config import Config, ListenerConfig
from mqttd.errors import StartupError
from mqttd.health import (
    HEALTH_PATH,
    METRICS_PATH,
    READY_PATH,
    MetricsAuth,
    endpoint_paths,
    json_reply,
    liveness,
    readiness,
)
from mqttd.metrics import CONTENT_TYPE, render
from mqttd.sysinfo import Monitor
from mqttd.transports import ConnectionInfo
from mqttd.transports.http import Reply
from mqttd.transports.httpd import serve_http_connection
from mqttd.worker_metrics import (
    SUPERVISOR_NAMES,
    SupervisorFigures,
    WorkerFigures,
    exposition,
    merge_worker_metrics,
    supervisor_families,
)

if TYPE_CHECKING:
    from mqttd.supervisor import PrivateRedis, Supervisor

__all__ = [
    "PrivateEndpoints",
    "SupervisorEndpoints",
    "fetch",
    "serve_private_endpoints",
    "serve_supervisor_listeners",
    "worker_socket",
]

log = structlog.get_logger("mqttd.worker_endpoints")

#: The supervisor's directory for the workers' sockets, under ``data_dir``.
SOCKET_DIR = "workers"
#: How long a worker may take to answer ``/metrics`` before a scrape leaves it out.
METRICS_TIMEOUT_S = 2.0
#: How long a worker may take to answer ``/readyz`` (probes often allow 1 s in all).
READY_TIMEOUT_S = 0.5
#: Largest reply read from a worker (a worker's metrics are some tens of kilobytes).
MAX_REPLY_BYTES = 8 * 1024 * 1024
#: Connections a worker's private socket serves at once; more are closed at once.
MAX_PRIVATE_CONNECTIONS = 16
RECEIVE_SIZE = 65536
#: What a private connection's ``ConnectionInfo`` names as its listener (nothing reads its
#: fields: the private endpoints answer every listener alike).
PRIVATE_LISTENER = ListenerConfig(type="http", host="localhost", port=0)
PRIVATE_PATHS = (METRICS_PATH, HEALTH_PATH, READY_PATH)


def worker_socket(data_dir: Path, index: int) -> Path:
    """The private socket of worker ``index``: ``<data_dir>/workers/w<index>.sock``."""
    return data_dir / SOCKET_DIR / f"w{index}.sock"


# --------------------------------------------------------------------------------------------
# A worker's side
# --------------------------------------------------------------------------------------------


class PrivateEndpoints:
    """A worker's ``/metrics``, ``/healthz`` and ``/readyz`` for its supervisor: no auth (the
    socket's directory lets only mqttd's user in), the same answers as on a listener.

    Args:
        monitor: the worker's figures.
        registry: its Prometheus registry.
    """

    def __init__(self, monitor: Monitor, registry: CollectorRegistry) -> None:
        self.monitor = monitor
        self.registry = registry

    def handles(self, listener: ListenerConfig, path: str) -> bool:
        """Whether ``path`` is one of the three endpoints."""
        return path in PRIVATE_PATHS

    async def respond(self, listener: ListenerConfig, path: str, request: h11.Request) -> Reply:
        """The endpoint's reply."""
        if path == HEALTH_PATH:
            return json_reply(200, liveness(self.monitor))
        if path == READY_PATH:
            ready, body = readiness(self.monitor)
            return json_reply(200 if ready else 503, body)
        return Reply(200, CONTENT_TYPE, render(self.registry))


async def serve_private_endpoints(
    path: Path,
    endpoints: PrivateEndpoints,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``endpoints`` on the Unix socket ``path`` until cancelled; the socket file is
    removed at the end (and a previous life's, before binding).

    Raises:
        StartupError: the socket cannot be bound.
    """
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with suppress(FileNotFoundError):
            os.unlink(path)  # left by this worker's previous life (killed): the supervisor
            # holds the directory's lock, so no other mqttd uses it
        await sock.bind(os.fspath(path))
        sock.listen(MAX_PRIVATE_CONNECTIONS)
    except OSError as exc:
        sock.close()
        raise StartupError(
            f"{path}: cannot serve the worker's monitoring socket: {exc.strerror or exc}"
        ) from None
    listener = trio.SocketListener(sock)
    info = ConnectionInfo("http", "supervisor", PRIVATE_LISTENER)
    active = 0

    async def serve(stream: trio.abc.Stream) -> None:
        nonlocal active
        try:
            await serve_http_connection(stream, info, endpoints)
        finally:
            active -= 1

    try:
        async with listener, trio.open_nursery() as nursery:
            task_status.started()
            while True:
                stream = await listener.accept()
                if active >= MAX_PRIVATE_CONNECTIONS:
                    await trio.aclose_forcefully(stream)
                    continue
                active += 1
                nursery.start_soon(serve, stream)
    finally:
        with suppress(OSError):
            os.unlink(path)


# --------------------------------------------------------------------------------------------
# The supervisor's side
# --------------------------------------------------------------------------------------------


class ReplyTooLarge(Exception):
    """A worker's reply was longer than ``MAX_REPLY_BYTES``."""


#: What a failed fetch can raise: the socket is gone or refuses (the worker is dead or not
#: listening yet), the connection broke, the reply is not HTTP or too long.
FETCH_ERRORS = (OSError, trio.BrokenResourceError, h11.ProtocolError, ReplyTooLarge)


async def fetch(path: Path, target: str, *, max_bytes: int = MAX_REPLY_BYTES) -> tuple[int, bytes]:
    """GET ``target`` from the private socket ``path``; the caller bounds the time.

    Returns:
        The status and the body.

    Raises:
        OSError, trio.BrokenResourceError, h11.ProtocolError, ReplyTooLarge: see
            ``FETCH_ERRORS``.
    """
    client = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="GET", target=target, headers=[("Host", "mqttd-worker"), ("Connection", "close")]
    )
    async with await trio.open_unix_socket(os.fspath(path)) as stream:
        await stream.send_all(client.send(request) + client.send(h11.EndOfMessage()))
        status = 0
        body = bytearray()
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(await stream.receive_some(RECEIVE_SIZE))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > max_bytes:
                    raise ReplyTooLarge(f"more than {max_bytes} bytes")
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, bytes(body)


class SupervisorEndpoints:
    """What the supervisor's ``http`` listeners answer (``transports.http.Endpoints``).

    Args:
        supervisor: the workers (which run, their restarts, whether the supervisor stops).
        redis: the private redis-server, or None when the workers use the operator's Redis.
        sockets: worker number -> its private socket.
        access: the password files and ACLs for the listeners' auth.
    """

    def __init__(
        self,
        supervisor: Supervisor,
        redis: PrivateRedis | None,
        sockets: Mapping[int, Path],
        access: AccessControl,
    ) -> None:
        self.supervisor = supervisor
        self.redis = redis
        self.sockets = dict(sockets)
        self.auth = MetricsAuth(access)
        self.started = trio.current_time()
        #: worker number -> failed fetches of its metrics
        self.failures = dict.fromkeys(self.sockets, 0)
        #: workers whose last fetch failed (a failure is logged once per episode)
        self._failing: set[int] = set()
        self._conflicts_logged: set[tuple[str, str]] = set()

    def handles(self, listener: ListenerConfig, path: str) -> bool:
        """Whether ``path`` is one of ``listener``'s endpoints."""
        return path in endpoint_paths(listener)

    async def respond(self, listener: ListenerConfig, path: str, request: h11.Request) -> Reply:
        """The reply to a GET of one of ``listener``'s endpoints."""
        if path == HEALTH_PATH:
            return json_reply(200, self.liveness())
        if path == READY_PATH:
            ready, body = await self.readiness()
            return json_reply(200 if ready else 503, body)
        refusal = await self.auth.authorise(listener, request)
        if refusal is not None:
            return refusal
        return Reply(200, CONTENT_TYPE, await self.metrics())

    def running(self, index: int) -> bool:
        """Whether worker ``index``'s process is alive."""
        proc = self.supervisor.procs.get(index)
        return proc is not None and proc.returncode is None

    def liveness(self) -> dict[str, Any]:
        """The supervisor's ``/healthz`` body."""
        return {
            "status": "alive",
            "role": "supervisor",
            "version": __version__,
            "python": platform.python_version(),
            "uptime_s": round(trio.current_time() - self.started, 3),
            "workers": {
                "configured": len(self.sockets),
                "running": sum(1 for k in self.sockets if self.running(k)),
            },
        }

    async def _gather(self, target: str, timeout_s: float) -> dict[int, tuple[int, bytes] | None]:
        """GET ``target`` from every running worker at once, each within ``timeout_s``.

        Returns:
            For each running worker: its status and body, or None when it did not answer.
        """
        results: dict[int, tuple[int, bytes] | None] = {}

        async def one(index: int) -> None:
            results[index] = None
            with trio.move_on_after(timeout_s):
                try:
                    results[index] = await fetch(self.sockets[index], target)
                except FETCH_ERRORS as exc:
                    log.debug("worker_fetch_failed", worker=index, target=target, error=repr(exc))

        async with trio.open_nursery() as nursery:
            for index in self.sockets:
                if self.running(index):
                    nursery.start_soon(one, index)
        return results

    async def metrics(self) -> bytes:
        """Every answering worker's metrics, labelled ``worker="<k>"``, and the supervisor's."""
        results = await self._gather(METRICS_PATH, METRICS_TIMEOUT_S)
        texts = {
            str(index): result[1].decode("utf-8", "replace")
            for index, result in sorted(results.items())
            if result is not None and result[0] == 200
        }
        merged = merge_worker_metrics(texts, reserved=SUPERVISOR_NAMES)
        scraped = set(texts) - set(merged.unparsable)
        for index in results:
            self._count(index, ok=str(index) in scraped, result=results[index])
        for worker, name in merged.conflicts:
            if (worker, name) not in self._conflicts_logged:
                self._conflicts_logged.add((worker, name))
                log.warning("worker_metric_conflict", worker=worker, metric=name)
        redis = self.redis
        figures = SupervisorFigures(
            workers=tuple(
                WorkerFigures(
                    worker=str(index),
                    running=self.running(index),
                    scraped=str(index) in scraped,
                    restarts=self.supervisor.restarts.get(index, 0),
                    scrape_failures=self.failures[index],
                )
                for index in sorted(self.sockets)
            ),
            uptime_s=trio.current_time() - self.started,
            redis_up=None if redis is None else redis.up,
            redis_restarts=0 if redis is None else redis.restarts,
        )
        return exposition(supervisor_families(figures), merged.families)

    def _count(self, index: int, *, ok: bool, result: tuple[int, bytes] | None) -> None:
        """Count a failed fetch of worker ``index``'s metrics; log the first of a series and
        the recovery."""
        if ok:
            if index in self._failing:
                self._failing.discard(index)
                log.info("worker_scrape_recovered", worker=index)
            return
        self.failures[index] += 1
        if index not in self._failing:
            self._failing.add(index)
            if result is None:
                reason = "no_answer"
            elif result[0] != 200:
                reason = f"status_{result[0]}"
            else:
                reason = "unparsable"
            log.warning("worker_scrape_failed", worker=index, reason=reason)

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether every worker is running and ready, and the ``/readyz`` body saying why."""
        results = await self._gather(READY_PATH, READY_TIMEOUT_S)
        workers: dict[str, dict[str, Any]] = {}
        for index in sorted(self.sockets):
            proc = self.supervisor.procs.get(index)
            entry: dict[str, Any] = {"pid": proc.pid if proc is not None else None}
            result = results.get(index)
            if not self.running(index):
                entry.update(ok=False, state="not running")
            elif result is None:
                entry.update(ok=False, state="no answer")
            else:
                status, body = result
                entry.update(ok=status == 200, state="ready" if status == 200 else "not ready")
                try:
                    entry["checks"] = _json_object(body).get("checks", {})
                except ValueError:
                    entry.update(ok=False, state="unreadable answer")
            workers[str(index)] = entry
        ready_count = sum(1 for entry in workers.values() if entry["ok"])
        checks: dict[str, dict[str, Any]] = {
            "workers": {
                "ok": ready_count == len(workers),
                "configured": len(workers),
                "ready": ready_count,
            },
        }
        if self.redis is not None:
            checks["redis"] = {"ok": self.redis.up}
        checks["running"] = {"ok": not self.supervisor.stop_requested.is_set()}
        ready = all(check["ok"] for check in checks.values())
        return ready, {
            "status": "ready" if ready else "not ready",
            "checks": checks,
            "workers": workers,
        }


def _json_object(body: bytes) -> dict[str, Any]:
    """``body`` as a JSON object.

    Raises:
        ValueError: it is not one.
    """
    value = json.loads(body)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


async def serve_supervisor_listeners(
    config: Config,
    endpoints: SupervisorEndpoints,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``config``'s ``http`` listeners (their concrete ports) with ``endpoints`` until
    cancelled, admitted through the same gate as a broker's listeners (``limits``).

    Raises:
        StartupError: a listener cannot start.
    """
    from mqttd.server import ConnectionGate
    from mqttd.transports.httpd import serve_http_listener
    from mqttd.transports.tcp import share_ports

    # The supervisor reserved each port with a SO_REUSEPORT socket that never listens: its
    # listening socket must share the port with that reservation.
    share_ports()
    gate = ConnectionGate(config)
    async with trio.open_nursery() as connections, trio.open_nursery() as listening:
        for listener in config.listeners:
            if listener.type != "http":
                continue
            bound = await listening.start(
                partial(
                    serve_http_listener,
                    listener,
                    endpoints,
                    handler_nursery=connections,
                    gate=gate,
                )
            )
            for each in bound:
                host, port = each.socket.getsockname()[:2]
                log.info("listener_started", transport="http", host=host, port=port)
        task_status.started()
