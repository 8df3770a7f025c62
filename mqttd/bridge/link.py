"""The trio driver of one bridge: it connects, reads, waits and writes; the rules are elsewhere.

Theory of operation: ``Bridge.run`` keeps one link to the remote up for as long as the broker
runs. Each attempt tries the configured addresses in order (the first is preferred), opening
TCP, then TLS (tls, wss), then the WebSocket handshake (ws, wss), all within
``connect_timeout_s``; the MQTT side of the connection is ``mqttd.bridge.protocol``'s
``LinkProtocol``. When every address failed, or a link that was up ended, the next attempt
waits for ``Backoff`` (exponential, with jitter). Failures are logged once per episode --
WARNING for the first, and again only when the reason changes; DEBUG otherwise -- so a wrong
password costs one log line and a few connections a minute, not a busy loop. A link that came
up resets the backoff, unless an MQTT 5 remote ended it with an error DISCONNECT (other than
server shutting down or keep alive timeout): a remote that accepts the bridge only to send it
away again (a second bridge with the same client id, say) is retried ever more slowly too.

A link runs three tasks in one nursery: the reader feeds the protocol and does what its actions
say, the writer sends the protocol's output (after the durable store has committed what it
depends on: ``OutputGate``, as for a client connection), and the keepalive task sends PINGREQ
and ends links whose CONNACK or PINGRESP is late. The first of them to end the link records
why and cancels the others.

The link state is logged (``bridge_connected``, ``bridge_disconnected``) and published,
retained, at ``$SYS/broker/connection/<name>/state``: "1" while the link is up, "0" otherwise,
as Mosquitto's bridge notifications do.
"""

from __future__ import annotations

import random
import socket
import ssl
from collections.abc import Awaitable, Callable
from functools import partial

import structlog
import trio

from mqttd.bridge.backoff import Backoff
from mqttd.bridge.protocol import (
    NEED_DATA,
    TRANSIENT_DISCONNECTS,
    WAIT_FOR_OUTPUT,
    WAIT_FOR_STORE,
    Close,
    LinkProtocol,
    LinkSettings,
    LinkUp,
)
from mqttd.bridge.session import BridgeSession, discard_unconfigured, open_bridge_session
from mqttd.bridge.topics import TopicMap
from mqttd.config import BridgeConfig
from mqttd.errors import StartupError
from mqttd.shared import ServerState
from mqttd.store import OutputGate, StoreError
from mqttd.transports.ws import open_websocket_stream

__all__ = [
    "Bridge",
    "Connector",
    "client_ssl_context",
    "open_remote",
    "run_bridges",
    "state_topic",
]

log = structlog.get_logger("mqttd.bridge")

RECEIVE_SIZE = 65536
#: How long the DISCONNECT after a remote's protocol error may take to write (MQTT 5).
FAREWELL_TIMEOUT_S = 1.0

#: Opens a stream to (host, port): TCP, then TLS and WebSocket as the bridge's transport says.
Connector = Callable[[str, int], Awaitable[trio.abc.Stream]]


def state_topic(name: str) -> str:
    """Where the link state of bridge ``name`` is published (Mosquitto's notification topic)."""
    return f"$SYS/broker/connection/{name}/state"


def client_ssl_context(config: BridgeConfig) -> ssl.SSLContext | None:
    """The TLS context of a tls/wss bridge (None for tcp/ws): it verifies the remote's
    certificate and host name against ``cafile`` (or the system's CAs) and presents
    ``certfile`` when one is configured.

    Raises:
        StartupError: a certificate or key file cannot be read.
    """
    if config.transport not in ("tls", "wss"):
        return None
    try:
        context = ssl.create_default_context(
            cafile=str(config.cafile) if config.cafile is not None else None
        )
        if config.certfile is not None:
            context.load_cert_chain(
                config.certfile, config.keyfile if config.keyfile is not None else None
            )
    except OSError as exc:  # ssl.SSLError included
        raise StartupError(f"bridge {config.name}: cannot load its TLS files: {exc}") from None
    return context


async def open_remote(
    config: BridgeConfig, context: ssl.SSLContext | None, host: str, port: int
) -> trio.abc.Stream:
    """Open the bridge's transport to ``host:port``: TCP, TLS (tls, wss), WebSocket (ws, wss).

    Raises:
        OSError: the TCP connection failed.
        trio.BrokenResourceError: the TLS or WebSocket handshake failed.
    """
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    try:
        if context is not None:
            tls = trio.SSLStream(
                stream, context, server_hostname=host, https_compatible=config.transport == "wss"
            )
            await tls.do_handshake()
            stream = tls
        if config.transport in ("ws", "wss"):
            default = 443 if config.transport == "wss" else 80
            name = f"[{host}]" if ":" in host else host
            stream = await open_websocket_stream(
                stream,
                host=name if port == default else f"{name}:{port}",
                target=config.ws_path,
                subprotocols=("mqttv3.1",) if config.protocol == "3.1" else ("mqtt",),
            )
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


class _Wakeup:
    """A reusable event: ``set`` from anywhere, ``wait`` in one task."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = trio.Event()


class _End:
    """Why a link ended; the first task to end it cancels the others."""

    __slots__ = ("reason", "return_code", "scope")

    def __init__(self) -> None:
        self.reason: str | None = None
        self.return_code: int | None = None
        self.scope: trio.CancelScope | None = None

    def finish(self, reason: str, return_code: int | None = None) -> None:
        if self.reason is None:
            self.reason, self.return_code = reason, return_code
        if self.scope is not None:
            self.scope.cancel()


async def _send_farewell(stream: trio.abc.Stream, data: bytes) -> None:
    """Write the MQTT 5 DISCONNECT that says why the bridge closes, if the stream still
    takes it within a second; the link ends either way."""
    with trio.move_on_after(FAREWELL_TIMEOUT_S):
        try:
            await stream.send_all(data)
        except (
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            trio.BusyResourceError,
            OSError,
        ):
            pass


def _describe(exc: BaseException) -> str:
    """A failed connection attempt, in a few words (for the log)."""
    if isinstance(exc, trio.TooSlowError):
        return "connect_timeout"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLError):
        return f"tls: {cause.reason or cause}"
    return str(exc) or type(exc).__name__


class Bridge:
    """One configured bridge: its session in the local broker and the task keeping its link up.

    Args:
        state: the local server's shared state.
        config: the bridge.
        connect: opens a stream to (host, port) (default: ``open_remote`` with the bridge's
            transport); tests pass their own.
        rng: the jitter's source.

    Raises:
        StartupError: the bridge's TLS files cannot be read.
    """

    def __init__(
        self,
        state: ServerState,
        config: BridgeConfig,
        *,
        connect: Connector | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.state = state
        self.config = config
        self.name = config.name
        self.topics = TopicMap(config.topics)
        self.session: BridgeSession = open_bridge_session(state.broker, config, self.topics)
        self.settings = LinkSettings(
            client_id=config.client_id or f"{config.name}.{socket.gethostname()}",
            username=config.username,
            password=config.password,
            keepalive=config.keepalive,
            clean_session=config.clean_session,
            protocol=config.protocol,
            try_private=config.try_private,
            connect_timeout_s=config.connect_timeout_s,
            subscriptions=tuple(self.topics.in_subscriptions),
            max_packet_size=state.broker.limits.max_packet_size,
        )
        self.endpoints = config.endpoints()
        if connect is None:
            connect = partial(open_remote, config, client_ssl_context(config))
        self._connect = connect
        self.backoff = Backoff(config.reconnect_delay_s, config.reconnect_delay_max_s, rng)
        #: connection attempts so far, those that failed, and links that came up
        self.attempts = 0
        self.failures = 0
        self.links = 0
        #: whether the link is up now
        self.up = False
        self._changed = trio.Event()
        self._failure: str | None = None  # the reason of the current failure episode
        self._failures_before_up = 0  # the backoff's count when the last link came up

    # -- state ------------------------------------------------------------------------------

    async def wait_up(self, up: bool = True) -> None:
        """Wait until the link is up (or, with ``up=False``, down)."""
        await self.wait_for(lambda bridge: bridge.up is up)

    async def wait_for(self, condition: Callable[[Bridge], bool]) -> None:
        """Wait until ``condition(self)`` holds; it is checked whenever the link goes up or
        down and after each failed attempt."""
        while not condition(self):
            await self._changed.wait()

    def _notify(self) -> None:
        event, self._changed = self._changed, trio.Event()
        event.set()

    def _set_up(self, up: bool) -> None:
        self.up = up
        self.state.broker.publish(
            state_topic(self.name), b"1" if up else b"0", 1, True, durable=False
        )
        self._notify()

    # -- the reconnection loop --------------------------------------------------------------

    async def run(self) -> None:
        """Keep the link up until cancelled; never raises but ``trio.Cancelled``."""
        structlog.contextvars.bind_contextvars(bridge=self.name)
        self._set_up(False)
        while True:
            try:
                await self._attempt()
            except Exception:  # a bug here must not take the broker down: log, retry later
                log.exception("bridge_failed", bridge=self.name)
            delay = self.backoff.next_delay()
            log.debug("bridge_reconnect_scheduled", bridge=self.name, delay_s=round(delay, 3))
            await trio.sleep(delay)

    async def _attempt(self) -> None:
        """Try each address in turn until one gives a link; return when it ended (or when
        none did)."""
        for host, port in self.endpoints:
            address = f"{host}:{port}"
            self.attempts += 1
            log.debug("bridge_connecting", bridge=self.name, address=address)
            try:
                with trio.fail_after(self.config.connect_timeout_s):
                    stream = await self._connect(host, port)
            except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                self._failed(address, _describe(exc))
                continue
            if await self._run_link(stream, address):
                return

    def _failed(self, address: str, reason: str, return_code: int | None = None) -> None:
        """One failed attempt; logged at WARNING once per episode and reason."""
        first = self._failure != reason
        self._failure = reason
        self.failures += 1
        (log.warning if first else log.debug)(
            "bridge_connect_failed",
            bridge=self.name,
            address=address,
            reason=reason,
            **({"return_code": return_code} if return_code is not None else {}),
            attempts=self.attempts,
        )
        self._notify()

    # -- one link ---------------------------------------------------------------------------

    async def _run_link(self, stream: trio.abc.Stream, address: str) -> bool:
        """Speak MQTT over ``stream`` until the link ends; True if it came up."""
        state = self.state
        store = state.broker.store
        gate = store.gate(state.config.limits.store_backlog_limit) if store is not None else None
        wakeup, drained, rearm = _Wakeup(), _Wakeup(), _Wakeup()
        protocol = LinkProtocol(
            self.settings,
            state.broker,
            self.session,
            trio.current_time(),
            wakeup.set,
            gate=gate,
        )
        end = _End()
        started = trio.current_time()
        came_up = False
        try:
            async with trio.open_nursery() as nursery:
                end.scope = nursery.cancel_scope
                nursery.start_soon(self._writer, stream, protocol, gate, wakeup, drained, end)
                nursery.start_soon(self._keepalive, protocol, rearm, end)
                wakeup.set()  # the CONNECT
                while end.reason is None:
                    action = await self._read(stream, protocol, gate, drained, end)
                    if isinstance(action, LinkUp):
                        came_up = True
                        self._link_up(action, address)
                        rearm.set()  # the keepalive task: Keep Alive deadlines from now on
        finally:
            farewell = protocol.farewell()
            protocol.close()
            with trio.CancelScope(shield=True):
                if farewell:
                    await _send_farewell(stream, farewell)
                await trio.aclose_forcefully(stream)
            if came_up:
                self._set_up(False)
        reason = end.reason or "cancelled"
        if came_up:
            code = end.return_code
            if code is not None and code >= 0x80 and code not in TRANSIENT_DISCONNECTS:
                # The remote accepted the link, then sent it away with an error (a second
                # bridge with our client id, a quota, ...): keep backing off as for a refusal.
                self.backoff.failures = self._failures_before_up
            log.info(
                "bridge_disconnected",
                bridge=self.name,
                address=address,
                reason=reason,
                **({"reason_code": code} if code is not None else {}),
                duration_s=round(trio.current_time() - started, 3),
                packets_in=protocol.packets_in,
            )
        else:
            self._failed(address, reason, end.return_code)
        return came_up

    def _link_up(self, up: LinkUp, address: str) -> None:
        self._failures_before_up = self.backoff.failures
        self.backoff.reset()
        self.links += 1
        log.info(
            "bridge_connected",
            bridge=self.name,
            address=address,
            session_present=up.session_present,
            client_id=self.settings.client_id,
            protocol=self.config.protocol,
            queued=len(self.session.queue),
            inflight=len(self.session.inflight),
            attempts=self.attempts,
        )
        self._failure = None
        self._set_up(True)

    async def _read(
        self,
        stream: trio.abc.Stream,
        protocol: LinkProtocol,
        gate: OutputGate | None,
        drained: _Wakeup,
        end: _End,
    ) -> LinkUp | None:
        """Read and process until the protocol reports the link up, or the link ends."""
        try:
            while True:
                action = protocol.next_action(trio.current_time())
                if action is NEED_DATA:
                    protocol.receive_data(await stream.receive_some(RECEIVE_SIZE))
                elif isinstance(action, LinkUp):
                    return action
                elif action is WAIT_FOR_OUTPUT:
                    while not protocol.output_drained:
                        await drained.wait()
                elif action is WAIT_FOR_STORE:
                    assert gate is not None
                    await gate.catch_up()
                else:
                    assert isinstance(action, Close)
                    end.finish(action.reason, action.return_code)
                    return None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            end.finish("connection_lost")
            return None

    async def _writer(
        self,
        stream: trio.abc.Stream,
        protocol: LinkProtocol,
        gate: OutputGate | None,
        wakeup: _Wakeup,
        drained: _Wakeup,
        end: _End,
    ) -> None:
        """The only task that writes to the stream."""
        timeout = self.state.config.limits.write_timeout_s
        try:
            while True:
                await wakeup.wait()
                while protocol.has_output:
                    mark = protocol.store_mark
                    data = protocol.data_to_send()
                    if gate is not None and gate.must_wait(mark):
                        # Nothing goes out before the state behind it is durable: no PUBACK for
                        # a message this broker could still lose, no PUBLISH whose packet id a
                        # restart would not know.
                        await gate.wait(mark)
                    with trio.fail_after(timeout):
                        await stream.send_all(data)
                    protocol.sent(trio.current_time())
                    drained.set()
        except StoreError:
            log.warning("not_acknowledged", reason="store_commit_failed")
            end.finish("store_commit_failed")
        except trio.TooSlowError:
            end.finish("write_timeout")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            end.finish("connection_lost")

    async def _keepalive(self, protocol: LinkProtocol, rearm: _Wakeup, end: _End) -> None:
        """CONNACK timeout, PINGREQ when due, PINGRESP timeout."""
        while True:
            due = protocol.deadline()
            with trio.move_on_at(due if due is not None else trio.current_time() + 3600.0):
                await rearm.wait()  # the link came up: new deadlines
                continue
            close = protocol.tick(trio.current_time())
            if close is not None:
                log.info("bridge_timeout", bridge=self.name, reason=close.reason)
                end.finish(close.reason)
                return


async def run_bridges(
    state: ServerState, *, task_status: trio.TaskStatus[list[Bridge]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run every configured bridge until cancelled.

    Before ``task_status.started`` (with the bridges), synchronously: the stored sessions of
    bridges no longer configured are discarded, and each bridge's session is opened -- so
    nothing routed after start-up misses a bridge, and no session expiry sees them first.

    Raises:
        StartupError: in cluster mode, or a bridge's TLS files cannot be read.
    """
    config = state.config
    if state.cluster is not None or config.cluster.enabled:
        raise StartupError(
            "bridges are not supported in cluster mode: run them in a separate mqttd"
        )
    discard_unconfigured(state.broker, {bridge.name for bridge in config.bridges})
    bridges = [Bridge(state, bridge) for bridge in config.bridges]
    async with trio.open_nursery() as nursery:
        for bridge in bridges:
            nursery.start_soon(bridge.run)
        task_status.started(bridges)
