"""The monitoring endpoints: ``/metrics`` (Prometheus), ``/healthz`` (alive) and ``/readyz``
(ready for clients), on ``http`` listeners and at ``metrics_path`` on ws/wss listeners.

``/healthz`` answers 200 while the event loop runs. ``/readyz`` answers 200 when every
configured listener listens, the SQLite store is writable (its last commit did not fail and its
file and directory are writable: two ``access()`` calls, no write) -- in cluster mode instead the
link to Redis is up -- and the broker is not shutting down; otherwise 503, with each check in
the JSON body. Neither needs credentials: they say no more than whether the broker works, and
Kubernetes or systemd probes rarely carry any.

``/metrics`` shows what ``$SYS`` shows, so it is behind the listener's auth as MQTT clients are
(its ``[listeners.auth]``, or ``[auth]``), through HTTP Basic: without an Authorization header
the request is anonymous, allowed where ``allow_anonymous`` allows an MQTT client without a user
name; with one, the user name and password are checked against the password file exactly as a
CONNECT's are (any user name is accepted when no password file is set). With an ACL file the
user must also be allowed to read ``$SYS/broker/...``. Refusals are 401 (with
``WWW-Authenticate``) or 403. A password check is PBKDF2, so it runs in a worker thread and its
result is remembered for the same password file (a scraper every second costs one check).

Under ``mqttd --workers N`` the supervisor serves the ``http`` listeners with the same
``MetricsAuth`` and its own ``/readyz`` over every worker's (``mqttd.worker_endpoints``).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from typing import Any

import h11
import structlog
import trio
from prometheus_client import CollectorRegistry

from mqttd import __version__
from mqttd.access import AccessControl
from mqttd.config import ListenerConfig
from mqttd.metrics import CONTENT_TYPE, render
from mqttd.sysinfo import Monitor
from mqttd.transports.http import Reply, basic_credentials

log = structlog.get_logger("mqttd.health")

__all__ = [
    "HEALTH_PATH",
    "METRICS_PATH",
    "READY_PATH",
    "MetricsAuth",
    "MonitoringEndpoints",
    "endpoint_paths",
    "json_reply",
    "liveness",
    "readiness",
]

HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
#: The path of the metrics on an ``http`` listener (ws/wss listeners name theirs).
METRICS_PATH = "/metrics"
#: The topic a user must be allowed to read, when an ACL file is set, to see the metrics.
METRICS_TOPIC = "$SYS/broker/uptime"
#: Most remembered password checks; the memory is forgotten when full.
MAX_REMEMBERED_CHECKS = 64
JSON = "application/json"


def liveness(monitor: Monitor) -> dict[str, Any]:
    """The ``/healthz`` body: the broker is alive (it answered)."""
    return {
        "status": "alive",
        "version": __version__,
        "python": platform.python_version(),
        "uptime_s": round(monitor.uptime_s(), 3),
    }


def readiness(monitor: Monitor) -> tuple[bool, dict[str, Any]]:
    """Whether the broker is ready for clients, and the ``/readyz`` body saying why.

    Returns:
        ``(ready, body)``: each check is ``{"ok": bool, ...}`` in ``body["checks"]``.
    """
    state = monitor.state
    checks: dict[str, dict[str, Any]] = {}
    up, configured = monitor.listeners_up()
    checks["listeners"] = {"ok": up == configured, "up": up, "configured": configured}
    node = state.cluster
    store = state.broker.store
    if node is not None:  # the state lives in Redis: the link is what must be up
        checks["cluster"] = {"ok": bool(node.store.link_up), "node": node.node_id}
    elif store is not None:
        writable = not store.last_commit_failed and _writable(store.path)
        checks["store"] = {"ok": writable, "backlog": store.backlog()}
    checks["running"] = {"ok": not state.shutting_down}
    ready = all(check["ok"] for check in checks.values())
    return ready, {"status": "ready" if ready else "not ready", "checks": checks}


def _writable(path: os.PathLike[str] | str) -> bool:
    """The database file (if it exists yet) and its directory can be written."""
    directory = os.path.dirname(os.fspath(path)) or "."
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return False
    return os.access(directory, os.W_OK)


def json_reply(status: int, body: dict[str, Any]) -> Reply:
    """A JSON reply (keys sorted, one line) with ``status``."""
    return Reply(status, JSON, (json.dumps(body, sort_keys=True) + "\n").encode())


class MetricsAuth:
    """Who may read the metrics: a listener's auth applied to an HTTP request, as to a CONNECT.

    Shared by every process that serves ``/metrics`` (a broker, and the supervisor of
    ``--workers``), so both check credentials the same way and remember the same results.

    Args:
        access: the password files and ACLs in force (reloaded on SIGHUP).
    """

    def __init__(self, access: AccessControl) -> None:
        self.access = access
        #: (password file, user name, SHA-256 of the password) -> the check's result
        self._checked: dict[tuple[object, str, bytes], bool] = {}

    async def authorise(self, listener: ListenerConfig, request: h11.Request) -> Reply | None:
        """Check the request against the listener's auth, as a CONNECT would be.

        Returns:
            None when allowed; else the 401 or 403 reply.
        """
        policy = self.access.policy(listener)
        credentials = basic_credentials(request)
        username: str | None = None
        if credentials is None:
            if request_has_authorization(request) or not policy.config.anonymous_allowed(
                listener.host
            ):
                return _unauthorised()
        else:
            username, password = credentials
            passwords = policy.passwords
            if passwords is not None and not await self._verify(passwords, username, password):
                log.info("metrics_auth_failed", username=username, reason="bad_credentials")
                return _unauthorised()
        acl = policy.acl.for_client(username=username, client_id="")
        if not acl.allows_everything and not acl.can_receive(METRICS_TOPIC):
            return Reply(403, "text/plain; charset=utf-8", b"403 forbidden\n")
        return None

    async def _verify(self, passwords: Any, username: str, password: bytes) -> bool:
        # The file object itself is part of the key: a reload (SIGHUP) makes a new one.
        key = (passwords, username, hashlib.sha256(password).digest())
        known = self._checked.get(key)
        if known is not None:
            return known
        ok = bool(await trio.to_thread.run_sync(passwords.verify, username, password))
        if len(self._checked) >= MAX_REMEMBERED_CHECKS:
            self._checked.clear()
        self._checked[key] = ok
        return ok


def endpoint_paths(listener: ListenerConfig) -> tuple[str, ...]:
    """The endpoint paths ``listener`` serves (none on a ws/wss without metrics_path)."""
    if listener.type == "http":
        return (METRICS_PATH, HEALTH_PATH, READY_PATH)
    if listener.metrics_path is not None:
        return (listener.metrics_path, HEALTH_PATH, READY_PATH)
    return ()


class MonitoringEndpoints:
    """What ``/metrics``, ``/healthz`` and ``/readyz`` answer (``transports.http.Endpoints``).

    Args:
        monitor: the broker's figures.
        registry: the Prometheus registry ``/metrics`` renders.
        access: the password files and ACLs in force (reloaded on SIGHUP).
    """

    def __init__(
        self, monitor: Monitor, registry: CollectorRegistry, access: AccessControl
    ) -> None:
        self.monitor = monitor
        self.registry = registry
        self.auth = MetricsAuth(access)

    def paths(self, listener: ListenerConfig) -> tuple[str, ...]:
        """The endpoint paths ``listener`` serves (none on a ws/wss without metrics_path)."""
        return endpoint_paths(listener)

    def handles(self, listener: ListenerConfig, path: str) -> bool:
        """Whether ``path`` is one of ``listener``'s endpoints."""
        return path in endpoint_paths(listener)

    async def respond(self, listener: ListenerConfig, path: str, request: h11.Request) -> Reply:
        """The reply to a GET of one of ``listener``'s endpoints."""
        if path == HEALTH_PATH:
            return json_reply(200, liveness(self.monitor))
        if path == READY_PATH:
            ready, body = readiness(self.monitor)
            return json_reply(200 if ready else 503, body)
        refusal = await self.auth.authorise(listener, request)
        if refusal is not None:
            return refusal
        return Reply(200, CONTENT_TYPE, render(self.registry))

    async def authorise(self, listener: ListenerConfig, request: h11.Request) -> Reply | None:
        """``MetricsAuth.authorise`` with this broker's access control."""
        return await self.auth.authorise(listener, request)


def request_has_authorization(request: h11.Request) -> bool:
    """Whether the request carries any Authorization header (a malformed one is refused, not
    taken as anonymous)."""
    return any(name == b"authorization" for name, _value in request.headers)


def _unauthorised() -> Reply:
    return Reply(
        401,
        "text/plain; charset=utf-8",
        b"401 unauthorized\n",
        (("WWW-Authenticate", 'Basic realm="mqttd", charset="UTF-8"'),),
    )
