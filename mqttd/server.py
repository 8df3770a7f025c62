"""The broker process: listeners, connections, signals and graceful shutdown.

``serve(config)`` starts every configured listener in one trio nursery, hands each accepted
connection to a ``Connection``, and reports a ``Server`` through ``task_status`` (tests use
``await nursery.start(serve, config)``). ``main(config)`` adds SIGINT/SIGTERM handling for the
command line: stop listening, close every client, exit within ``graceful_timeout_s``.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import structlog
import trio

from mqttd.access import AccessControl
from mqttd.admission import Admission
from mqttd.bridge.link import Bridge, run_bridges
from mqttd.broker import Broker
from mqttd.config import Config, ListenerConfig
from mqttd.connection import Connection
from mqttd.errors import ConfigError, StartupError
from mqttd.health import MonitoringEndpoints
from mqttd.metrics import new_registry
from mqttd.schedule import Schedule
from mqttd.shared import ServerState
from mqttd.store import Store
from mqttd.sysinfo import Monitor, publish_status
from mqttd.transports import ConnectionInfo, serve_listener
from mqttd.transports.tls import reload_certificates

log = structlog.get_logger("mqttd.server")


@dataclass(frozen=True, slots=True)
class BoundAddress:
    """Where a listener actually listens (the port is real even when the config said 0)."""

    type: str
    host: str
    port: int


@dataclass(eq=False)
class Server:
    """A running broker, as ``serve`` reports it to its caller."""

    state: ServerState
    addresses: list[BoundAddress]
    _stop: trio.Event = field(default_factory=trio.Event)
    #: the figures behind $SYS, /metrics and the health endpoints
    monitor: Monitor | None = None
    #: the running bridges ([[bridges]])
    bridges: list[Bridge] = field(default_factory=list)

    @property
    def broker(self) -> Broker:
        return self.state.broker

    def port(self, listener_type: str = "tcp") -> int:
        """The first bound port of the given listener type."""
        for address in self.addresses:
            if address.type == listener_type:
                return address.port
        raise LookupError(f"no {listener_type} listener")

    async def reload(self) -> None:
        """SIGHUP: re-read password and ACL files (open connections get the new rules) and the
        certificates of tls/wss listeners (new handshakes use them); a broken file keeps the
        previous one."""
        if await trio.to_thread.run_sync(self.state.access.reload):
            for connection in list(self.state.connections):
                connection.reauthorise()
        reload_certificates(self.state.config.listeners)

    def shutdown(self) -> None:
        """Ask ``serve`` to stop listening, close every client and return."""
        self._stop.set()


async def serve(
    config: Config,
    *,
    private_socket: Path | None = None,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the broker until ``Server.shutdown()`` is called or the task is cancelled.

    Args:
        config: the configuration.
        private_socket: a worker of ``--workers``: the Unix socket where it serves its own
            monitoring endpoints to the supervisor (``mqttd.worker_endpoints``).
        task_status: receives the running ``Server``.

    Raises:
        StartupError: a listener could not start.
    """
    try:
        access = AccessControl(config)
    except ConfigError as exc:
        raise StartupError(str(exc)) from None
    if config.cluster.enabled:
        from mqttd.cluster.client import connect

        async with connect(config.cluster) as redis:
            await _serve(config, access, None, redis, private_socket, task_status=task_status)
        return
    store = await _open_store(config)
    await _serve(config, access, store, None, private_socket, task_status=task_status)


async def _serve(
    config: Config,
    access: AccessControl,
    store: Store | None,
    redis: Any,
    private_socket: Path | None,
    *,
    task_status: trio.TaskStatus[Server],
) -> None:
    broker = Broker(config.limits, store)
    if store is not None:
        broker.restore(await trio.to_thread.run_sync(store.load))
        log.info(
            "store_opened",
            path=str(store.path),
            durability=store.durability,
            sessions=len(broker.sessions),
            retained=len(broker.retained),
        )
    state = ServerState(config=config, broker=broker, access=access)
    gate = ConnectionGate(config)
    monitor = Monitor(state, gate)
    endpoints = MonitoringEndpoints(monitor, new_registry(monitor), access)
    node = None
    if redis is not None:
        from mqttd.cluster.node import ClusterNode, default_node_id

        node = ClusterNode(
            config.cluster,
            broker,
            redis,
            config.cluster.node_id or default_node_id(),
            kick_client=state.kick_client,
        )
        state.cluster = node

    def handle(stream: trio.abc.Stream, info: ConnectionInfo) -> Coroutine[Any, Any, None]:
        # Returns the coroutine rather than awaiting it: spawned directly, an idle TCP
        # connection's task holds one frame less.
        return Connection(stream, info, state).run()

    addresses: list[BoundAddress] = []
    async with trio.open_nursery() as background:
        if store is not None:
            await background.start(store.writer)
        if node is not None:
            await background.start(node.run)
        if private_socket is not None:
            from mqttd.worker_endpoints import PrivateEndpoints, serve_private_endpoints

            private = PrivateEndpoints(monitor, endpoints.registry)
            await background.start(serve_private_endpoints, private_socket, private)
        try:
            bridges = await background.start(run_bridges, state) if config.bridges else []
            background.start_soon(state.flusher)
            background.start_soon(state.timeouts.run)
            background.start_soon(run_schedule, broker.schedule, state)
            if config.broker.sys_interval_s:
                background.start_soon(
                    publish_status, state, config.broker.sys_interval_s, monitor
                )
            expiration = config.store.expiration_s
            if expiration is not None:
                background.start_soon(_expire_sessions, broker, expiration)
            async with trio.open_nursery() as connections:
                state.nursery = connections
                async with trio.open_nursery() as listening:
                    for listener in config.listeners:
                        sockets = await listening.start(
                            partial(
                                serve_listener,
                                listener,
                                handle,
                                data_dir=config.broker.data_dir,
                                handler_nursery=connections,
                                gate=gate,
                                endpoints=endpoints,
                            )
                        )
                        started = _log_started(listener, sockets)
                        monitor.listener_started(listener, [(a.host, a.port) for a in started])
                        addresses.extend(started)
                    server = Server(state, addresses, monitor=monitor, bridges=bridges)
                    task_status.started(server)
                    await server._stop.wait()
                    listening.cancel_scope.cancel()
                # Graceful shutdown: no new connections; close the existing ones, bounded.
                state.shutting_down = True
                log.info("shutting_down", connections=len(state.connections))
                for connection in list(state.connections):
                    connection.kick("server_shutdown")
                connections.cancel_scope.deadline = (
                    trio.current_time() + config.limits.graceful_timeout_s
                )
            if node is not None:  # a graceful shutdown: say so to the other nodes
                with trio.move_on_after(config.limits.graceful_timeout_s):
                    await node.leave()
        finally:
            if store is not None:
                store.close()  # the writer commits what is recorded, then its thread ends
            background.cancel_scope.cancel()  # the writer task still waits for its thread
    log.info("stopped")


class ConnectionGate:
    """Admission at accept time, for every transport and before any TLS, HTTP or MQTT work:
    ``limits.max_connections``, ``listeners[].max_connections``, and the per-address count and
    rate of ``mqttd.admission``. Refusals are logged once per episode and address."""

    def __init__(self, config: Config) -> None:
        self.limits = config.limits
        self.admission = Admission(config.limits)
        self.total = 0
        self.per_listener: dict[int, int] = {}
        #: for monitoring: connections admitted since start per listener, refusals by reason
        self.accepted: dict[int, int] = {}
        self.refused: dict[str, int] = {}

    def enter(self, listener: ListenerConfig, ip: str) -> bool:
        refusal = self.admission.refuse(ip, trio.current_time())
        key = id(listener)
        if refusal is None and self.total >= self.limits.max_connections:
            refusal = "max_connections"
        if (
            refusal is None
            and listener.max_connections
            and self.per_listener.get(key, 0) >= listener.max_connections
        ):
            refusal = "max_connections"
        if refusal is not None:
            self.refused[refusal] = self.refused.get(refusal, 0) + 1
            if self.admission.first_refusal(ip, refusal):
                log.warning("connection_refused", reason=refusal, peer=ip, transport=listener.type)
            return False
        self.total += 1
        self.per_listener[key] = self.per_listener.get(key, 0) + 1
        self.accepted[key] = self.accepted.get(key, 0) + 1
        self.admission.opened(ip)
        return True

    def leave(self, listener: ListenerConfig, ip: str) -> None:
        self.total -= 1
        self.per_listener[id(listener)] -= 1
        self.admission.closed(ip)


async def _open_store(config: Config) -> Store | None:
    database = config.store.database
    if config.store.durability == "memory":
        return None
    if database is None:
        database = config.broker.data_dir / "mqttd.db"
    return await trio.to_thread.run_sync(Store.open, database, config.store.durability)


async def run_schedule(schedule: Schedule, state: ServerState) -> None:
    """Run the broker's timers (MQTT 5 session expiry, delayed Wills) as they come due."""
    sooner = trio.Event()

    def wake() -> None:
        sooner.set()

    schedule.on_sooner = wake
    while True:
        if schedule.run_due(time.time()):
            state.flush_dirty()  # what an expired session's Will routed
        due = schedule.next_at()
        delay = math.inf if due is None else max(0.0, due - time.time())
        with trio.move_on_after(delay):
            await sooner.wait()
        sooner = trio.Event()


async def _expire_sessions(broker: Broker, max_age_s: float) -> None:
    """Mosquitto's persistent_client_expiration: drop long-offline persistent sessions."""
    period = min(max_age_s / 10, 3600.0)
    while True:
        expired = broker.expire_sessions(max_age_s)
        if expired:
            log.info("sessions_expired", count=expired, max_age_s=max_age_s)
        await trio.sleep(period)


def _log_started(
    listener: ListenerConfig, sockets: list[trio.SocketListener]
) -> list[BoundAddress]:
    bound = []
    for socket_listener in sockets:
        # TLS listeners wrap the socket listener (trio.SSLListener.transport_listener).
        inner = getattr(socket_listener, "transport_listener", socket_listener)
        host, port = inner.socket.getsockname()[:2]
        bound.append(BoundAddress(listener.type, host, port))
        log.info("listener_started", transport=listener.type, host=host, port=port)
    return bound


async def main(config: Config, *, private_socket: Path | None = None) -> None:
    """Run the broker until SIGINT or SIGTERM, then shut down gracefully (``private_socket``:
    see ``serve``).

    Raises:
        StartupError: the broker could not start (the CLI prints it and exits 2).
    """
    try:
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
                server: Server = await nursery.start(
                    partial(serve, config, private_socket=private_socket)
                )
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        log.info("reload_requested", signal="SIGHUP")
                        await server.reload()
                        continue
                    log.info("shutdown_requested", signal=signal.Signals(signum).name)
                    break
            server.shutdown()
    except BaseExceptionGroup as group:
        startup = group.subgroup(StartupError)
        if startup is None:
            raise
        raise _first_leaf(startup) from None


def _first_leaf(group: BaseExceptionGroup[StartupError]) -> StartupError:
    first = group.exceptions[0]
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first
