"""The trio driver of one client connection: it reads, waits and writes; the rules are elsewhere.

Theory of operation: ``Connection.run`` feeds what it reads to the connection's pure
``ConnectionProtocol`` and does what its actions say -- verify a password in a worker thread,
take the client id over from another connection (cancel it, wait until it is gone), wait while
the client is throttled or its output or the store lags behind, close. Everything MQTT decides
(CONNECT, the session, keepalive, the Will) happens inside the protocol, synchronously.

Output: the session calls ``_wake`` when it has new output. The connection then joins
``ServerState.dirty``, and the flusher task writes each dirty connection's output with one
non-blocking ``try_send`` once every reader ready in this scheduling round has had its turn --
a fan-out to a thousand subscribers costs a thousand sends, not a thousand task switches; a
hundred publishers read in one round cost each subscriber one send, not a hundred; and an idle
connection has no writer task. A writer task runs only while there is output the transport
would not take at once, or that must first wait for the durable store (``OutputGate``); it sends
under ``write_timeout_s`` and ends when nothing is left. Writer tasks run in the server's connection
nursery; a failing writer kicks its connection, and the reader stops the writer before it closes
the stream.

An idle connection is one suspended reader task and one cancel scope, which ``kick`` cancels;
its CONNECT and keepalive deadlines are watched by one task for all connections
(``mqttd.timeouts``).
"""

from __future__ import annotations

import structlog
import trio

from mqttd.connection_protocol import (
    NEED_DATA,
    WAIT_FOR_OUTPUT,
    WAIT_FOR_STORE,
    CheckPassword,
    Close,
    ConnectionProtocol,
    TakeOver,
    Throttle,
)
from mqttd.errors import TakeOverFailed
from mqttd.logging import bind_connection
from mqttd.shared import TAKEOVER_TIMEOUT_S, ServerState
from mqttd.store import OutputGate, StoredSession, StoreError
from mqttd.transports import ConnectionInfo, MqttStream, StreamAdapter

log = structlog.get_logger("mqttd.connection")

RECEIVE_SIZE = 65536
#: How long closing a stream (e.g. a WebSocket close handshake) may take.
CLOSE_TIMEOUT_S = 1.0


class Connection:
    """One network connection speaking MQTT to the broker."""

    __slots__ = (
        "__weakref__",
        "_closed",
        "_dirty",
        "_drained",
        "_finished",
        "_scope",
        "_writer_done",
        "_writer_running",
        "_writer_scope",
        "bytes_out",
        "close_reason",
        "conn_id",
        "gate",
        "info",
        "protocol",
        "state",
        "stream",
        "watch_entry",
    )

    def __init__(self, stream: trio.abc.Stream, info: ConnectionInfo, state: ServerState) -> None:
        self.stream: MqttStream = (
            stream if isinstance(stream, MqttStream) else StreamAdapter(stream)
        )
        self.info = info
        self.state = state
        self.conn_id = state.next_connection_id()
        store = state.broker.store
        limits = state.config.limits
        self.gate: OutputGate | None = (
            store.gate(limits.store_backlog_limit) if store is not None else None
        )
        self.protocol = ConnectionProtocol(
            state,
            info.listener,
            trio.current_time(),
            self._wake,
            kick=self.kick,
            tls_identity=info.tls_identity,
            gate=self.gate,
        )
        self.close_reason = "unknown"
        self.bytes_out = 0
        self._finished = False
        self._closed: trio.Event | None = None  # created on demand: see ``closed``
        self._scope = trio.CancelScope()  # the connection's one scope: ``kick`` cancels it
        self._dirty = False
        self._writer_running = False
        self._writer_scope: trio.CancelScope | None = None
        self._writer_done: trio.Event | None = None
        self._drained: trio.Event | None = None  # created while reading waits for output
        self.watch_entry = 0  # see mqttd.timeouts

    # -- entry point ------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it ends; never raises except ``trio.Cancelled``."""
        self._bind_log_context()
        state = self.state
        state.connections.add(self)
        due = self.protocol.deadline(trio.current_time())
        if due is not None:
            state.timeouts.watch(self, due)
        try:
            with self._scope:
                await self._serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._note("connection_lost")
        except StoreError:
            self._note("store_commit_failed")
            log.warning("not_acknowledged", reason="store_commit_failed")
        except trio.TooSlowError:
            self._note("takeover_timeout")
            log.warning("takeover_timeout")
        except Exception:
            self._note("internal_error")
            log.exception("connection_failed")
        finally:
            self._say_farewell()
            self._finish()
            if self._writer_running or not self.stream.close_now():
                # close_now closes at once, without a task switch, when nothing is being
                # written; otherwise the writer lets go first and the stream closes politely.
                with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                    await self._stop_writer()
                    try:
                        await self.stream.aclose()
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass
            info = self.info
            if info.admission is not None:
                info.admission.leave(info.listener, info.ip)

    async def _serve(self) -> None:
        protocol = self.protocol
        stream = self.stream
        state = self.state
        while True:
            action = protocol.next_action(trio.current_time())
            if action is NEED_DATA:
                # What this batch routed is written by the flusher task, after every reader
                # ready in this scheduling round has had its turn.
                protocol.receive_data(await stream.receive_some(RECEIVE_SIZE))
            elif action is WAIT_FOR_OUTPUT:
                state.flush_dirty()
                await self._output_drained()
            elif action is WAIT_FOR_STORE:
                assert self.gate is not None
                await self.gate.catch_up()
            elif isinstance(action, CheckPassword):
                # PBKDF2 is deliberately slow: never on the event loop.
                ok = await trio.to_thread.run_sync(
                    action.passwords.verify, action.username, action.password
                )
                protocol.password_checked(ok)
            elif isinstance(action, TakeOver):
                await self._take_over(action.client_id)
                if state.cluster is None:
                    self._connected(None)
                    continue
                try:  # the client id may be on another node
                    restored = await state.cluster.take_over(
                        action.client_id, action.clean_session
                    )
                except TakeOverFailed as exc:
                    log.warning("takeover_failed", reason=str(exc))
                    await self._close_refused(protocol.refuse_unavailable("takeover_failed"))
                    return
                self._connected(restored)
            elif isinstance(action, Throttle):
                state.flush_dirty()
                await trio.sleep_until(action.until)
            else:
                assert isinstance(action, Close)
                await self._close_refused(action)
                return

    async def _close_refused(self, close: Close) -> None:
        self._note(close.reason)
        if close.flush:  # the CONNACK refusing the client ([MQTT-3.2.2-5]), MQTT 5's DISCONNECT
            with trio.move_on_after(self.state.config.limits.write_timeout_s):
                if self._writer_running:  # it writes what is queued, the DISCONNECT included
                    self._writer_done = trio.Event()
                    await self._writer_done.wait()
                mark = self.protocol.store_mark
                data = self.protocol.data_to_send()
                if self.gate is not None and self.gate.must_wait(mark):
                    await self.gate.wait(mark)  # acknowledgements before it stay durable first
                await self.stream.send_all(data)

    def _say_farewell(self) -> None:
        """An MQTT 5 client closed from outside (takeover, shutdown, keep alive, ...) is told
        why with a DISCONNECT, if it can go at once, after everything sent before it."""
        farewell = self.protocol.farewell(self.close_reason)
        if farewell and not self._writer_running and not self.stream.has_unsent:
            try:
                self.bytes_out += self.stream.try_send(farewell)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    async def _take_over(self, client_id: str) -> None:
        """Disconnect any existing connection with this client id ([MQTT-3.1.4-2])."""
        clients = self.state.clients
        while True:
            old = clients.get(client_id)
            if old is None or old is self:
                break
            log.info("session_taken_over", client_id=client_id, old_conn_id=old.conn_id)
            old.kick("session_taken_over")
            with trio.fail_after(TAKEOVER_TIMEOUT_S):
                await old.closed.wait()
        clients[client_id] = self

    def _connected(self, restored: StoredSession | None) -> None:
        now = trio.current_time()
        self.protocol.taken_over(now, restored)
        self._bind_log_context()  # now with the client id
        due = self.protocol.deadline(now)
        connect_due = self.protocol.accepted_at + self.state.config.limits.connect_timeout_s
        if due is not None and (self.watch_entry == 0 or due < connect_due):
            # A later keepalive deadline needs no new entry: the CONNECT timeout's entry,
            # when it comes due, finds the keepalive deadline and moves itself there.
            self.state.timeouts.watch(self, due)

    async def _output_drained(self) -> None:
        """Wait until the writer has brought the output back under ``max_outbox_bytes``."""
        while not self.protocol.output_drained:
            self._drained = trio.Event()
            await self._drained.wait()

    # -- from outside -----------------------------------------------------------------------

    def _bind_log_context(self) -> None:
        """Every log line of this connection's tasks names the connection."""
        info = self.info
        bind_connection(self.conn_id, info.peer, info.transport, self.protocol.client_id)

    def _note(self, reason: str) -> None:
        if self.close_reason == "unknown":
            self.close_reason = reason

    def kick(self, reason: str) -> None:
        """Close this connection from outside (takeover, shutdown, a failed writer)."""
        self._note(reason)
        self._scope.cancel()

    def reauthorise(self) -> None:
        """Apply reloaded password and ACL files (SIGHUP); disconnect if no longer allowed."""
        reason = self.protocol.reauthorise()
        if reason is not None:
            self.kick(reason)

    def packet_due(self) -> float | None:
        """For the timeout watch: when the next complete packet must arrive (or None)."""
        if self._finished:
            return None
        return self.protocol.deadline(trio.current_time())

    def expire(self) -> None:
        """For the timeout watch: the deadline of ``packet_due`` passed."""
        self.kick(self.protocol.timeout_reason())

    @property
    def closed(self) -> trio.Event:
        """Set once the connection has finished its cleanup (takeover waits for it)."""
        if self._closed is None:
            self._closed = trio.Event()
            if self._finished:
                self._closed.set()
        return self._closed

    # -- writing ----------------------------------------------------------------------------

    def _wake(self) -> None:
        """The session has new output: write it with the next flush (a running writer task
        finds it by itself)."""
        if not self._dirty and not self._writer_running:
            self._dirty = True
            state = self.state
            state.dirty.append(self)
            if len(state.dirty) == 1:
                state.flush_needed.set()

    def flush_now(self) -> None:
        """Write pending output with one non-blocking send; what is left goes to a writer task."""
        self._dirty = False
        if self._writer_running or self._finished:
            return
        protocol = self.protocol
        gate = self.gate
        if gate is not None and gate.must_wait(protocol.store_mark):
            if protocol.has_output:
                self._start_writer()  # durability first: the writer waits for the commit
            return
        data = protocol.data_to_send()
        if not data:
            return
        sent = self.stream.try_send(data)
        self.bytes_out += sent
        if sent < len(data):
            protocol.unsend(data[sent:])
            self._start_writer()
        elif self.stream.has_unsent or protocol.resume_wanted:
            self._start_writer()  # the rest of a frame or of TLS records; more retained
        elif self._drained is not None:
            self._drained.set()

    def _start_writer(self) -> None:
        if self._writer_running or self._finished or self.state.nursery is None:
            return
        self._writer_running = True
        try:
            self.state.nursery.start_soon(self._write_loop)
        except RuntimeError:  # the server is closing: nothing more will be written
            self._writer_running = False

    async def _stop_writer(self) -> None:
        """Cancel the writer task, if one runs, and wait until it has let go of the stream."""
        if not self._writer_running:
            return
        if self._writer_done is None:
            self._writer_done = trio.Event()
        if self._writer_scope is not None:
            self._writer_scope.cancel()
        await self._writer_done.wait()

    async def _write_loop(self) -> None:
        """The writer task: its failures close the connection (by ``kick``), never the
        nursery it runs in."""
        self._bind_log_context()  # spawned by whichever task produced the output
        scope = self._writer_scope = trio.CancelScope()
        try:
            if not self._finished:  # the connection may have ended before this task started
                with scope:
                    await self._write()
        except StoreError:
            log.warning("not_acknowledged", reason="store_commit_failed")
            self.kick("store_commit_failed")
        except trio.TooSlowError:
            log.warning("write_timeout")
            self.kick("write_timeout")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.kick("connection_lost")
        except Exception:
            log.exception("connection_failed")
            self.kick("internal_error")
        finally:
            self._writer_running = False
            self._writer_scope = None
            if self._writer_done is not None:
                self._writer_done.set()

    async def _write(self) -> None:
        protocol = self.protocol
        stream = self.stream
        gate = self.gate
        timeout = self.state.config.limits.write_timeout_s
        while True:
            if protocol.has_output:
                mark = protocol.store_mark
                data = protocol.data_to_send()
                if gate is not None and gate.must_wait(mark):
                    # Nothing leaves before the state that produced it is durable: no PUBACK,
                    # PUBREC or delivery can be lost by a crash after it was sent.
                    await gate.wait(mark)
                with trio.fail_after(timeout):
                    await stream.send_all(data)
                self.bytes_out += len(data)
                if self._drained is not None:
                    self._drained.set()
            elif stream.has_unsent:
                with trio.fail_after(timeout):
                    await stream.send_all(b"")
            elif protocol.resume_wanted:
                # The next step of a retained batch; send_all above was a checkpoint, so a
                # subscription matching 200,000 retained messages never holds the loop long.
                blocked = protocol.blocked_on
                if isinstance(blocked, trio.Event):
                    await blocked.wait()  # a cluster barrier before the first step
                protocol.resume()
                await trio.lowlevel.checkpoint()
            else:
                return

    # -- the end ----------------------------------------------------------------------------

    def _finish(self) -> None:
        """Synchronous cleanup (it also runs under cancellation): the protocol's close (Will,
        session, summary line), then the registry."""
        state = self.state
        state.connections.discard(self)
        self.protocol.close(self.close_reason, trio.current_time(), bytes_out=self.bytes_out)
        client_id = self.protocol.client_id
        if client_id is not None and state.clients.get(client_id) is self:
            del state.clients[client_id]
        self._finished = True
        if self._closed is not None:
            self._closed.set()


async def serve_connection(
    stream: trio.abc.Stream, info: ConnectionInfo, state: ServerState
) -> None:
    """Run one MQTT connection over any byte stream (TCP, TLS, WebSocket, or a test's memory
    stream)."""
    await Connection(stream, info, state).run()

