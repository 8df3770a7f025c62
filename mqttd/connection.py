"""The trio driver of one client connection: CONNECT, then a reader (and a writer when needed).

Theory of operation: ``Connection.run`` reads until a CONNECT arrives (under
``connect_timeout_s``), validates and authorises it, takes the client id over from any existing
connection (cancelling it and waiting until it is gone), attaches the session and sends CONNACK.
Then the reader decodes packets and applies them synchronously through ``ClientProtocol``.
Output accumulates in the session's outbox. On a plain TCP socket it is written with one
non-blocking send per batch by whoever produced it (see ``Connection._wake``); a writer task --
the only task that awaits on writing -- runs only while output is left over, must wait for the
durable store, or the stream is TLS/WebSocket, and sends under ``write_timeout_s``.

An idle connection is one suspended reader task and one cancel scope, which ``kick`` cancels;
its CONNECT and keepalive deadlines are watched by one task for all connections
(``mqttd.timeouts``), and the reader only notes when a complete packet arrived. Writer
tasks run in the server's connection nursery (``ServerState.nursery``); a failing writer kicks
its connection, and the reader stops the writer before it closes the stream. The cleanup (Will,
session detach, registry) is synchronous so it also runs under cancellation.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from typing import Literal

import structlog
import trio

from mqttd.access import AccessControl
from mqttd.broker import Broker
from mqttd.codec.decoder import CLOSED, NEED_DATA, Decoder
from mqttd.codec.packets import ConnackCode, Connect, Publish, Will
from mqttd.config import Config
from mqttd.errors import ProtocolError, ProtocolViolation
from mqttd.logging import bind_connection
from mqttd.protocol import ClientProtocol, connack_bytes
from mqttd.session import Session
from mqttd.store import StoreError
from mqttd.timeouts import TimeoutWatch
from mqttd.transports import ConnectionInfo

log = structlog.get_logger("mqttd.connection")

RECEIVE_SIZE = 65536
#: How long a takeover waits for the old connection to finish its cleanup.
TAKEOVER_TIMEOUT_S = 5.0
#: How long closing a stream (e.g. a WebSocket close handshake) may take.
CLOSE_TIMEOUT_S = 1.0


@dataclass(eq=False)
class ServerState:
    """What every connection shares: config, broker, and who is connected."""

    config: Config
    broker: Broker
    access: AccessControl
    clients: dict[str, Connection] = field(default_factory=dict)
    connections: set[Connection] = field(default_factory=set)
    shutting_down: bool = False
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    #: connections with new output whose writer task is idle: flushed in one go (see
    #: ``Connection._wake``) instead of waking one writer task per connection
    dirty: list[Connection] = field(default_factory=list)
    flush_needed: trio.Event = field(default_factory=trio.Event)
    #: where writer tasks run: the nursery of the connections (set by whoever serves them)
    nursery: trio.Nursery | None = None
    #: CONNECT and keepalive deadlines; whoever serves the connections runs ``timeouts.run``
    timeouts: TimeoutWatch = field(default_factory=TimeoutWatch)

    def next_connection_id(self) -> int:
        return next(self._ids)

    def flush_dirty(self) -> None:
        """Write every pending outbox of an idle writer now, without blocking."""
        dirty = self.dirty
        while dirty:
            batch = dirty[:]
            dirty.clear()
            for connection in batch:
                connection._flush_now()

    async def flusher(self) -> None:
        """Flush output produced outside a reader's batch (timers, wills, takeovers)."""
        while True:
            await self.flush_needed.wait()
            self.flush_needed = trio.Event()
            self.flush_dirty()


class _PeerGone(Exception):
    """The peer closed the connection (EOF) without DISCONNECT."""


class Connection:
    """One network connection speaking MQTT to the broker."""

    __slots__ = (
        "__weakref__",
        "_closed",
        "_dirty",
        "_drained",
        "_finished",
        "_last_packet_at",
        "_own_store_ops",
        "_paused",
        "_raw_socket",
        "_scope",
        "_started_at",
        "_wakeup",
        "_writer_done",
        "_writer_running",
        "_writer_scope",
        "_ws_send_now",
        "bytes_in",
        "bytes_out",
        "client_id",
        "close_reason",
        "conn_id",
        "decoder",
        "info",
        "keepalive",
        "limits",
        "packets_in",
        "protocol",
        "session",
        "state",
        "stream",
        "username",
        "watch_entry",
        "will",
    )

    def __init__(self, stream: trio.abc.Stream, info: ConnectionInfo, state: ServerState) -> None:
        self.stream = stream
        self.info = info
        self.state = state
        self.limits = state.config.limits
        self.conn_id = state.next_connection_id()
        self.decoder = Decoder(
            server=True,
            max_packet_size=self.limits.max_packet_size,
            max_connect_packet_size=self.limits.max_connect_packet_size,
        )
        self._finished = False
        self._closed: trio.Event | None = None  # created on demand: see ``closed``
        self.client_id: str | None = None
        self.username: str | None = None
        self.session: Session | None = None
        self.protocol: ClientProtocol | None = None
        self.will: Will | None = None
        self.keepalive = 0
        self.close_reason = "unknown"
        self.packets_in = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self._wakeup: trio.Event | None = None  # only a persistent (TLS/WebSocket) writer waits
        self._writer_running = False
        self._writer_scope: trio.CancelScope | None = None
        self._writer_done: trio.Event | None = None
        self._scope = trio.CancelScope()  # the connection's one scope: ``kick`` cancels it
        self._dirty = False
        # Plain TCP: the socket, written without a task switch and closed directly. Plain ws: a
        # stream that can send a whole message without blocking (``WebSocketStream.send_now``).
        self._raw_socket = getattr(stream, "raw_socket", None)
        self._ws_send_now = stream if getattr(stream, "can_send_now", False) else None
        self._drained: trio.Event | None = None  # created when reading pauses for the writer
        #: (first, last] store operations this client's packets recorded, not yet confirmed
        self._own_store_ops: list[tuple[int, int]] = []
        self._started_at = trio.current_time()
        self._last_packet_at = self._started_at
        self._paused = False  # reading paused on purpose: silence is not the client's fault
        self.watch_entry = 0  # see mqttd.timeouts

    # -- entry point ------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it ends; never raises except ``trio.Cancelled``."""
        self._bind_log_context()
        self.state.connections.add(self)
        self.state.timeouts.watch(self, self._started_at + self.limits.connect_timeout_s)
        try:
            with self._scope:
                connect = await self._receive_connect()
                if connect is not None and await self._accept(connect):
                    del connect  # not kept alive by an idle connection's frame
                    if self._raw_socket is None and self._ws_send_now is None:
                        self._start_writer()  # TLS streams keep a writer task
                    else:
                        self._wake()  # CONNACK goes out with the reader's first flush
                    await self._read_loop()
            if self.close_reason == "connect_timeout":
                log.info("connect_timeout", timeout_s=self.limits.connect_timeout_s)
            elif self.close_reason == "keepalive_timeout":
                log.info("keepalive_timeout", keepalive=self.keepalive)
        except ProtocolError as exc:
            self.close_reason = exc.reason
            log.warning("protocol_error", reason=exc.reason, client_id=self.client_id)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            if self.close_reason == "unknown":
                self.close_reason = "connection_lost"
        except _PeerGone:
            self.close_reason = "peer_closed"
        except StoreError:
            self.close_reason = "store_commit_failed"
            log.warning("not_acknowledged", reason="store_commit_failed", client_id=self.client_id)
        except trio.TooSlowError:
            self.close_reason = "takeover_timeout"
            log.warning("takeover_timeout", client_id=self.client_id)
        except Exception:
            self.close_reason = "internal_error"
            log.exception("connection_failed", client_id=self.client_id)
        finally:
            self._finish()
            raw = self._raw_socket
            if raw is not None and not self._writer_running:
                # Plain TCP with nothing being written: close at once, no task switch.
                trio.lowlevel.notify_closing(raw)
                raw.close()
            else:
                with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT_S):
                    try:
                        await self._stop_writer()
                        await self.stream.aclose()
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass
            info = self.info
            if info.admission is not None:
                info.admission.leave(info.listener, info.ip)

    def _bind_log_context(self) -> None:
        """Every log line of this connection's tasks names the connection."""
        info = self.info
        bind_connection(self.conn_id, info.peer, info.transport, self.client_id)

    def packet_due(self) -> float | None:
        """When the next complete packet must arrive: the CONNECT within connect_timeout_s,
        then one within 1.5 x Keep Alive of the last ([MQTT-3.1.2-24]); None when no deadline
        applies (Keep Alive 0, CONNECT being authorised, closed)."""
        if self._finished:
            return None
        if self.session is None:
            if self.packets_in:
                return None  # authenticating or taking over: ``_accept`` watches again
            return self._started_at + self.limits.connect_timeout_s
        if not self.keepalive:
            return None
        grace = self.keepalive * 1.5
        if self._paused:
            return trio.current_time() + grace  # check again later
        return self._last_packet_at + grace

    def expire(self) -> None:
        """The deadline of ``packet_due`` passed (called by the timeout watch)."""
        self.kick("connect_timeout" if self.session is None else "keepalive_timeout")

    @property
    def closed(self) -> trio.Event:
        """Set once the connection has finished its cleanup (takeover waits for it)."""
        if self._closed is None:
            self._closed = trio.Event()
            if self._finished:
                self._closed.set()
        return self._closed

    def kick(self, reason: str) -> None:
        """Close this connection from outside (takeover, shutdown)."""
        if self.close_reason == "unknown":
            self.close_reason = reason
        self._scope.cancel()

    # -- CONNECT ----------------------------------------------------------------------------

    async def _receive_connect(self) -> Connect | None:
        """Read until the first packet, which must be CONNECT ([MQTT-3.1.0-1]), under the
        connection scope's first deadline (``connect_timeout_s``)."""
        try:
            while True:
                packet = self.decoder.next_packet()
                if packet is CLOSED:
                    self.close_reason = "closed_before_connect"
                    return None
                if packet is not NEED_DATA:
                    self.packets_in += 1
                    assert isinstance(packet, Connect)  # the decoder enforces CONNECT first
                    return packet  # authentication and takeover: not bound by the timeout
                data = await self.stream.receive_some(RECEIVE_SIZE)
                self.bytes_in += len(data)
                self.decoder.receive_data(data)
        except ProtocolError as exc:
            if exc.connack_code is not None:
                await self._refuse(exc.connack_code, exc.reason)
                return None
            raise

    async def _refuse(self, code: int, reason: str) -> None:
        """CONNACK with a non-zero code, then close ([MQTT-3.2.2-5]); later data is ignored
        ([MQTT-3.1.4-5])."""
        self.close_reason = reason
        log.info("connect_refused", reason=reason, return_code=code, client_id=self.client_id)
        with trio.move_on_after(self.limits.write_timeout_s):
            await self.stream.send_all(connack_bytes(False, code))
            self.bytes_out += 4

    async def _accept(self, connect: Connect) -> bool:
        username = await self._authenticate(connect)
        if username is False:
            return False
        if self.state.shutting_down:
            await self._refuse(ConnackCode.SERVER_UNAVAILABLE, "server_shutting_down")
            return False
        client_id = connect.client_id
        if not client_id:
            # [MQTT-3.1.3-6] zero-length id with CleanSession=1: the server assigns one
            # (the decoder already refused it with CleanSession=0, [MQTT-3.1.3-8]).
            client_id = f"auto-{uuid.uuid4().hex}"
        self.client_id = client_id
        acl = self.state.access.client_acl(self.info.listener, username, client_id)
        will = connect.will
        if will is not None:
            # The Will is a PUBLISH the client makes in advance: the same rules, checked now
            # (and again when it is published). Too deep closes the connection, as a PUBLISH
            # would; a topic the client may not write (the ACL, or a $ topic) gets 0x05, as
            # Mosquitto answers.
            if will.topic.count("/") >= self.limits.max_topic_levels:
                raise ProtocolViolation("too_many_will_topic_levels")
            if not acl.can_publish(will.topic):
                await self._refuse(ConnackCode.NOT_AUTHORIZED, "will_not_authorised")
                return False
        await self._take_over(client_id)

        broker = self.state.broker
        first_op = broker.store.recorded if broker.store is not None else 0
        session, present = broker.open_session(
            client_id,
            connect.clean_session,
            username,
            check_owner=self.state.access.policy(self.info.listener).config.session_owner_check,
        )
        self._note_store_ops(first_op)
        if connect.protocol_level == 3:
            present = False  # MQTT 3.1 has no Session Present flag
        self.session = session
        self.will = connect.will  # [MQTT-3.1.2-8]
        cap = self.limits.max_keepalive
        # A client asking for more than the cap (or for none) is held to the cap.
        self.keepalive = cap if cap and not 0 < connect.keepalive <= cap else connect.keepalive
        self.username = username
        session.may_receive = None if acl.allows_everything else acl.can_receive
        if self.limits.slow_consumer == "disconnect":
            session.on_overflow = lambda: self.kick("slow_consumer")
        self.protocol = ClientProtocol(broker, session, connect.protocol_level, acl)
        # CONNACK is the first packet the server sends ([MQTT-3.2.0-1], [MQTT-3.1.4-4]); the
        # session's re-sends follow it once attached ([MQTT-4.4.0-1]).
        session.send_packet(connack_bytes(present, ConnackCode.ACCEPTED))
        session.attach(self._wake)
        self._bind_log_context()  # now with the client id
        self._last_packet_at = trio.current_time()
        keepalive_due = self._last_packet_at + self.keepalive * 1.5
        connect_due = self._started_at + self.limits.connect_timeout_s
        if self.keepalive and (self.watch_entry == 0 or keepalive_due < connect_due):
            # A later keepalive deadline needs no new entry: the CONNECT timeout's entry,
            # when it comes due, finds the keepalive deadline and moves itself there.
            self.state.timeouts.watch(self, keepalive_due)
        log.info(
            "client_connected",
            clean_session=connect.clean_session,
            session_present=present,
            keepalive=connect.keepalive,
            protocol_level=connect.protocol_level,
            username=username,
            will=connect.will is not None,
        )
        return True

    async def _authenticate(self, connect: Connect) -> str | Literal[False] | None:
        """Check the credentials; returns the user name (None = anonymous) or False after
        refusing the connection."""
        listener = self.info.listener
        policy = self.state.access.policy(listener)
        if listener.use_identity_as_username and self.info.tls_identity is not None:
            return self.info.tls_identity  # the verified certificate is the credential
        username = connect.username
        if username is None:
            if not policy.config.anonymous_allowed(listener.host):
                await self._refuse(ConnackCode.NOT_AUTHORIZED, "anonymous_not_allowed")
                return False
            return None
        if policy.passwords is not None:
            # PBKDF2 is deliberately slow: never on the event loop.
            ok = await trio.to_thread.run_sync(policy.passwords.verify, username, connect.password)
            if not ok:
                log.warning("authentication_failed", username=username)
                await self._refuse(ConnackCode.BAD_USERNAME_OR_PASSWORD, "bad_credentials")
                return False
        return username

    def refresh_acl(self) -> None:
        """Re-resolve this client's ACL after a reload (SIGHUP): new rules apply at once, and
        a client whose user is no longer in the password file (or who is anonymous where
        anonymous clients are no longer allowed) is disconnected, as Mosquitto does."""
        if self.protocol is None or self.session is None or self.client_id is None:
            return
        policy = self.state.access.policy(self.info.listener)
        listener = self.info.listener
        by_certificate = listener.use_identity_as_username and self.info.tls_identity is not None
        if self.username is None:
            if not policy.config.anonymous_allowed(listener.host):
                self.kick("anonymous_not_allowed")
                return
        elif (
            not by_certificate
            and policy.passwords is not None
            and self.username not in policy.passwords
        ):
            self.kick("user_removed")
            return
        acl = self.state.access.client_acl(listener, self.username, self.client_id)
        self.protocol.acl = acl
        self.session.may_receive = None if acl.allows_everything else acl.can_receive

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

    # -- reading and writing ----------------------------------------------------------------

    async def _read_loop(self) -> None:
        decoder = self.decoder
        protocol = self.protocol
        session = self.session
        assert protocol is not None
        assert session is not None
        handle = protocol.handle
        stream = self.stream
        max_outbox = self.limits.max_outbox_bytes
        store = self.state.broker.store
        backlog_limit = self.limits.store_backlog_limit
        rate = self.limits.max_publish_rate
        tokens = rate
        last_refill = trio.current_time()
        # [MQTT-3.1.2-24] the timeout watch disconnects after 1.5 x Keep Alive without a
        # complete packet; bytes that trickle in without completing one do not count.
        while True:
            got_packet = False
            first_op = store.recorded if store is not None else 0
            while True:
                packet = decoder.next_packet()
                if packet is NEED_DATA:
                    break
                if packet is CLOSED:
                    raise _PeerGone
                got_packet = True
                self.packets_in += 1
                if not handle(packet):
                    self.close_reason = "client_disconnect"
                    return
                if rate and type(packet) is Publish:
                    # Token bucket (burst = one second's worth): the excess waits in the
                    # decoder and the socket -- delayed by not reading, never dropped.
                    now = trio.current_time()
                    tokens = min(rate, tokens + (now - last_refill) * rate) - 1
                    last_refill = now
                    if tokens < 0:
                        if self.state.dirty:
                            self.state.flush_dirty()
                        self._paused = True
                        await trio.sleep(-tokens / rate)
                        self._paused = False
                        self._last_packet_at = trio.current_time()
            self._note_store_ops(first_op)
            if self.state.dirty:
                self.state.flush_dirty()
            if got_packet:
                self._last_packet_at = trio.current_time()
            if session.outbox_bytes > max_outbox or (
                store is not None and store.backlog() >= backlog_limit
            ):
                # Reading pauses (the client does not read its replies, or the disk lags);
                # silence from the client means nothing meanwhile.
                self._paused = True
                await self._wait_before_reading()
                self._paused = False
                self._last_packet_at = trio.current_time()
            data = await stream.receive_some(RECEIVE_SIZE)
            self.bytes_in += len(data)
            decoder.receive_data(data)

    async def _wait_before_reading(self) -> None:
        session = self.session
        assert session is not None
        while session.outbox_bytes > self.limits.max_outbox_bytes:
            self._drained = trio.Event()
            await self._drained.wait()
        store = self.state.broker.store
        backlog_limit = self.limits.store_backlog_limit
        if store is not None and store.backlog() >= backlog_limit:
            await store.drain(backlog_limit // 2)

    def _note_store_ops(self, first_op: int) -> None:
        store = self.state.broker.store
        if store is not None and store.recorded != first_op:
            self._own_store_ops.append((first_op, store.recorded))

    def _wake(self) -> None:
        """The session has new output.

        On a plain TCP socket with no writer task running, nothing is woken: the connection
        joins ``state.dirty`` and whoever produced the output (the reader after its batch of
        packets, or the flusher task) writes it with one non-blocking send. A fan-out to a
        thousand subscribers costs a thousand sends, not a thousand task switches, and an idle
        connection needs no writer task at all. A writer task runs only while there is output
        the socket would not take at once, or that must wait for the durable store; TLS and
        WebSocket streams keep theirs.
        """
        if (self._raw_socket is None and self._ws_send_now is None) or self._writer_running:
            if self._wakeup is not None:
                self._wakeup.set()
        elif not self._dirty:
            self._dirty = True
            state = self.state
            state.dirty.append(self)
            if len(state.dirty) == 1:
                state.flush_needed.set()

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

    def _flush_now(self) -> None:
        self._dirty = False
        session = self.session
        if session is None or not session.outbox or self._writer_running:
            return
        if self._finished:
            return  # taken over or closed: the session may already belong to a new connection
        store = self.state.broker.store
        if store is not None and (store.committed < store.recorded or self._own_store_ops):
            self._start_writer()  # durability first: the writer task waits for the commit
            return
        data = session.take_outbox()
        ws = self._ws_send_now
        if ws is not None:
            if not ws.send_now(data):
                session.unsend(data)
                self._start_writer()
                return
            self.bytes_out += len(data)
            if ws.has_unsent or session.resume_wanted:
                self._start_writer()  # the writer flushes the rest of the frame, or resumes
            elif self._drained is not None:
                self._drained.set()
            return
        try:
            sent = self._raw_socket.send(data)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = 0  # the writer task meets the error again and closes the connection
        self.bytes_out += sent
        if sent < len(data):
            session.unsend(data[sent:])
            self._start_writer()
        elif session.resume_wanted:
            self._start_writer()  # more retained messages, in the writer's own steps
        elif self._drained is not None:
            self._drained.set()

    async def _write_loop(self) -> None:
        """The writer task: its failures close the connection (by ``kick``), never the
        nursery it runs in."""
        # Spawned by whichever task produced the output: log as this connection.
        self._bind_log_context()
        scope = self._writer_scope = trio.CancelScope()
        try:
            if self._finished:
                return  # the connection ended before this task started
            with scope:
                await self._write()
        except StoreError:
            log.warning("not_acknowledged", reason="store_commit_failed", client_id=self.client_id)
            self.kick("store_commit_failed")
        except trio.TooSlowError:
            log.warning("write_timeout", client_id=self.client_id)
            self.kick("write_timeout")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.kick("connection_lost")
        except Exception:
            log.exception("connection_failed", client_id=self.client_id)
            self.kick("internal_error")
        finally:
            self._writer_running = False
            self._writer_scope = None
            if self._writer_done is not None:
                self._writer_done.set()

    async def _write(self) -> None:
        session = self.session
        assert session is not None
        stream = self.stream
        timeout = self.limits.write_timeout_s
        store = self.state.broker.store
        own_ops = self._own_store_ops
        persistent = self._raw_socket is None and self._ws_send_now is None
        ws = self._ws_send_now
        while True:
            if ws is not None and ws.has_unsent:
                with trio.fail_after(timeout):
                    await ws.flush()
                continue
            if session.outbox:
                data = session.take_outbox()
                if store is not None:
                    # Nothing leaves before the state that produced it is durable: no
                    # PUBACK, PUBREC or delivery can be lost by a crash after it was sent.
                    upto = store.recorded
                    if store.committed < upto:
                        await store.durable(upto)
                    while own_ops and own_ops[0][1] <= upto:
                        first, last = own_ops.pop(0)
                        if store.failed(first, last):
                            raise StoreError("commit_failed")
                with trio.fail_after(timeout):
                    await stream.send_all(data)
                self.bytes_out += len(data)
                if self._drained is not None:
                    self._drained.set()
            elif session.resume_wanted:
                # The next step of a retained batch: send_all above was a checkpoint, so a
                # subscription matching 200,000 retained messages never holds the loop long.
                session.resume()
                await trio.lowlevel.checkpoint()
            elif not persistent:
                return  # nothing left: a plain socket needs no idle writer task
            else:
                self._wakeup = trio.Event()
                await self._wakeup.wait()

    # -- the end ----------------------------------------------------------------------------

    def _finish(self) -> None:
        """Synchronous cleanup: Will, session, registry, summary log line."""
        state = self.state
        state.connections.discard(self)
        if self.session is not None:
            protocol = self.protocol
            will = self.will
            disconnected = protocol is not None and protocol.disconnected
            if will is not None and not disconnected and not state.shutting_down:
                # Published on any close but DISCONNECT ([MQTT-3.1.2-8]), with its own QoS
                # and RETAIN ([MQTT-3.1.2-16], [MQTT-3.1.2-17]); then removed ([MQTT-3.1.2-10]).
                # The ACL is asked again: it may have been reloaded since CONNECT.
                if protocol is not None and not protocol.acl.can_publish(will.topic):
                    log.warning("will_refused", topic=will.topic, reason="acl")
                else:
                    state.broker.publish(will.topic, will.message, will.qos, will.retain)
                    log.info("will_published", topic_length=len(will.topic))
            self.will = None
            state.broker.end_session(self.session)
            if state.clients.get(self.client_id or "") is self:
                del state.clients[self.client_id or ""]
        suppressed = self.protocol.logs.suppressed() if self.protocol is not None else None
        log.info(
            "client_disconnected" if self.session is not None else "connection_closed",
            reason=self.close_reason,
            duration_s=round(trio.current_time() - self._started_at, 3),
            packets_in=self.packets_in,
            publishes_denied=self.protocol.publishes_denied if self.protocol else 0,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            **({"suppressed": suppressed} if suppressed else {}),
        )
        self._finished = True
        if self._closed is not None:
            self._closed.set()


async def serve_connection(
    stream: trio.abc.Stream, info: ConnectionInfo, state: ServerState
) -> None:
    """Run one MQTT connection over any byte stream (TCP, TLS, WebSocket, or a test's memory
    stream)."""
    await Connection(stream, info, state).run()
