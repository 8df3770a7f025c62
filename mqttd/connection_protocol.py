"""The life of one client connection, pure and synchronous: bytes in, actions out.

Theory of operation. ``ConnectionProtocol`` is to a broker connection what h11's ``Connection``
is to an HTTP one: it does no I/O, reads no clock and starts no task. Its driver
(``mqttd.connection``) feeds it the bytes it reads (``receive_data``) and then asks what to do
next (``next_action(now)``) until the answer is ``NEED_DATA``:

* ``CheckPassword`` -- verify a password (PBKDF2 is slow: the driver runs it in a thread), then
  call ``password_checked(ok)``;
* ``TakeOver`` -- close any other connection with this client id ([MQTT-3.1.4-2]) and wait
  until it is gone, then call ``taken_over(now)``, which opens the session and queues CONNACK;
* ``Throttle`` -- the client exceeds ``max_publish_rate``: read nothing more until ``until``;
* ``WAIT_FOR_OUTPUT`` / ``WAIT_FOR_STORE`` -- the client does not read its replies, or the disk
  lags: read nothing more until the output drained (or the store caught up);
* ``Close`` -- close the connection (after writing what ``data_to_send`` holds, when
  ``flush``); then call ``close``.

Output is whatever ``data_to_send()`` returns: the CONNACK refusing a client, or everything the
session's outbox gathered (replies, deliveries); ``wake`` is called whenever there is new output.
``close(reason, now)`` ends the connection for any reason -- the protocol's own ``Close``, the
peer going away, a takeover or shutdown from outside: the Will is published unless the client
said DISCONNECT, the session is detached, and one line sums the connection up. After it, no
output is ever produced again.

Deadlines are the protocol's too, computed from the ``now`` the driver passes: CONNECT within
``connect_timeout_s``, then a complete packet within 1.5 x Keep Alive ([MQTT-3.1.2-24]);
``deadline(now)`` says when, ``timeout_reason()`` why. While reading is paused on purpose
(throttled, output or store backlog), silence from the client is not its fault.

The states, and what moves between them::

    AWAIT_CONNECT --CONNECT--> AUTHENTICATING --taken_over--> CONNECTED
          |                          |                            |
          +--------- Close ----------+--------- Close ------------+--> CLOSING --close--> CLOSED

Methods called in a state that does not allow them raise ``LocalProtocolError`` (a driver
bug); the peer's mistakes never raise, they become ``Close`` actions.
"""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol, TypeAlias

import structlog

from mqttd.auth import PasswordFile
from mqttd.codec.decoder import CLOSED, Decoder
from mqttd.codec.decoder import NEED_DATA as DECODER_NEED_DATA
from mqttd.codec.encoder import encode
from mqttd.codec.packets import (
    CONNACK_REASON_CODES,
    NO_PROPERTIES,
    Auth,
    Connack,
    ConnackCode,
    Connect,
    Disconnect,
    Packet,
    Properties,
    Publish,
    ReasonCode,
    Will,
)
from mqttd.enhanced_auth import Exchange, Outcome, Step
from mqttd.errors import LocalProtocolError, MalformedPacket, ProtocolError, ProtocolViolation
from mqttd.message import Message
from mqttd.protocol import ClientProtocol, connack_bytes
from mqttd.protocol5 import NEVER_EXPIRES, ClientProtocol5, encode_within
from mqttd.session import Peer, Ready, Session

if TYPE_CHECKING:
    from mqttd.access import AccessControl
    from mqttd.broker import Broker
    from mqttd.config import Config, ListenerConfig
    from mqttd.store import StoredSession

__all__ = [
    "NEED_DATA",
    "WAIT_FOR_OUTPUT",
    "WAIT_FOR_STORE",
    "Action",
    "CheckPassword",
    "Close",
    "ConnectionProtocol",
    "OutputGate",
    "ServerView",
    "State",
    "TakeOver",
    "Throttle",
]

log = structlog.get_logger("mqttd.connection")

#: The MQTT 5 CONNACK reason code for each MQTT 3.1.1 refusal (3.2.2.2).
_CONNACK5 = {
    ConnackCode.UNACCEPTABLE_PROTOCOL_VERSION: ReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
    ConnackCode.IDENTIFIER_REJECTED: ReasonCode.CLIENT_IDENTIFIER_NOT_VALID,
    ConnackCode.SERVER_UNAVAILABLE: ReasonCode.SERVER_UNAVAILABLE,
    ConnackCode.BAD_USERNAME_OR_PASSWORD: ReasonCode.BAD_USER_NAME_OR_PASSWORD,
    ConnackCode.NOT_AUTHORIZED: ReasonCode.NOT_AUTHORIZED,
}

#: The DISCONNECT reason code an MQTT 5 client gets when the server closes its connection for
#: a reason found outside its input (3.14.2.1); other closes send none.
_FAREWELL = {
    "session_taken_over": ReasonCode.SESSION_TAKEN_OVER,
    "server_shutdown": ReasonCode.SERVER_SHUTTING_DOWN,
    "keepalive_timeout": ReasonCode.KEEP_ALIVE_TIMEOUT,
    "slow_consumer": ReasonCode.QUOTA_EXCEEDED,
    "user_removed": ReasonCode.ADMINISTRATIVE_ACTION,
    "anonymous_not_allowed": ReasonCode.ADMINISTRATIVE_ACTION,
}


class State(enum.Enum):
    """Where a connection is in its life."""

    AWAIT_CONNECT = "await_connect"
    AUTHENTICATING = "authenticating"  # CONNECT decoded: password check and takeover
    CONNECTED = "connected"
    CLOSING = "closing"  # a Close was returned: nothing more is read
    CLOSED = "closed"


class _Signal(enum.Enum):
    NEED_DATA = "NEED_DATA"
    WAIT_FOR_OUTPUT = "WAIT_FOR_OUTPUT"
    WAIT_FOR_STORE = "WAIT_FOR_STORE"

    def __repr__(self) -> str:
        return self.value


#: Read more bytes and pass them to ``receive_data``.
NEED_DATA: Final = _Signal.NEED_DATA
#: Read nothing more until the output (``max_outbox_bytes``) has drained.
WAIT_FOR_OUTPUT: Final = _Signal.WAIT_FOR_OUTPUT
#: Read nothing more until the store has caught up (``store_backlog_limit``).
WAIT_FOR_STORE: Final = _Signal.WAIT_FOR_STORE


@dataclass(frozen=True, slots=True)
class CheckPassword:
    """Verify ``password`` for ``username`` against ``passwords``, off the event loop, then
    call ``password_checked``."""

    username: str
    password: bytes | None
    passwords: PasswordFile


@dataclass(frozen=True, slots=True)
class TakeOver:
    """Close any other connection using ``client_id`` and wait until it is gone, then call
    ``taken_over`` ([MQTT-3.1.4-2]). In a cluster, ``clean_session`` says whether the
    client's persistent session must be brought here or discarded."""

    client_id: str
    clean_session: bool = True


@dataclass(frozen=True, slots=True)
class Throttle:
    """Read nothing more before ``until`` (trio clock): ``max_publish_rate``."""

    until: float


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection, after writing ``data_to_send()`` if ``flush``; then ``close``."""

    reason: str
    flush: bool = False


Action: TypeAlias = "_Signal | CheckPassword | TakeOver | Throttle | Close"


class ServerView(Protocol):
    """What a connection sees of the server it belongs to."""

    broker: Broker
    access: AccessControl
    config: Config
    shutting_down: bool


class OutputGate(Protocol):
    """The store's view of one connection (``mqttd.store.OutputGate``): which operations its
    input recorded, so that its output waits until they are durable."""

    def begin(self) -> int:
        """Input is about to be processed; returns a token for ``end``."""

    def end(self, token: int) -> None:
        """Input processing that began with ``token`` is over."""

    def overloaded(self) -> bool:
        """The store lags so far behind that this client must be read more slowly."""


class ConnectionProtocol:
    """One client connection's rules, from the first byte to the closing log line.

    Args:
        server: the broker, the access rules and whether the server is shutting down.
        listener: the listener the connection came in on (its auth settings apply).
        now: the time the connection was accepted (trio clock).
        wake: called whenever there is new output for ``data_to_send``.
        kick: called with a reason when the connection must close for something found
            outside its own input (``slow_consumer = "disconnect"`` overflowing its queue).
        tls_identity: the verified client certificate's common name, if any.
        gate: the store's durability gate for this connection, when a store is in use.
    """

    __slots__ = (
        "_auth_data",
        "_auth_method",
        "_client",
        "_connect",
        "_early",
        "_exchange",
        "_gate",
        "_held",
        "_kick",
        "_last_packet_at",
        "_paused",
        "_pending",
        "_tokens",
        "_tokens_at",
        "accepted_at",
        "bytes_in",
        "client_id",
        "decoder",
        "keepalive",
        "listener",
        "packets_in",
        "server",
        "session",
        "state",
        "tls_identity",
        "username",
        "wake",
    )

    def __init__(
        self,
        server: ServerView,
        listener: ListenerConfig,
        now: float,
        wake: Callable[[], None],
        *,
        kick: Callable[[str], None] | None = None,
        tls_identity: str | None = None,
        gate: OutputGate | None = None,
    ) -> None:
        limits = server.broker.limits
        self.server = server
        self.listener = listener
        self.tls_identity = tls_identity
        self.wake = wake
        self._kick = kick
        self._gate = gate
        self.decoder = Decoder(
            server=True,
            max_packet_size=limits.max_packet_size,
            max_connect_packet_size=limits.max_connect_packet_size,
            counts=server.broker.stats.traffic_in,
            mqtt5=True,
        )
        self.state = State.AWAIT_CONNECT
        self.client_id: str | None = None
        self.username: str | None = None
        self.session: Session | None = None
        self._client: ClientProtocol | None = None
        self._connect: Connect | None = None
        self._pending: Action | None = None  # decided while authenticating
        #: packets decoded but not yet handled (a throttled publisher's rest of a read)
        self._held: Sequence[Packet] = ()
        self._early = b""  # output before there is a session (a refusing CONNACK)
        #: MQTT 5 enhanced authentication under way (4.12), and its last server data
        self._exchange: Exchange | None = None
        self._auth_data: bytes | None = None
        self._auth_method: str | None = None
        self.keepalive = 0
        self.packets_in = 0
        self.bytes_in = 0
        self.accepted_at = now
        self._last_packet_at = now
        self._paused = False
        self._tokens = limits.max_publish_rate
        self._tokens_at = now

    # -- input ------------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        """Bytes read from the client; ``b""`` when it closed its side (EOF)."""
        if self.state is State.CLOSED or self.state is State.CLOSING:
            return  # nothing more is read: a Close is under way
        self.bytes_in += len(data)
        self.decoder.receive_data(data)

    def next_action(self, now: float) -> Action:
        """Process what was received; return what the driver must do next."""
        if self._paused:  # the driver waited as asked: the client's silence was ours
            self._paused = False
            self._last_packet_at = now
        pending = self._pending
        if pending is not None:  # decided by password_checked
            self._pending = None
            return pending
        state = self.state
        if state is State.CONNECTED:
            return self._serve(now)
        if state is State.AWAIT_CONNECT:
            return self._await_connect()
        if state is State.AUTHENTICATING and self._exchange is not None:
            return self._await_auth()
        raise LocalProtocolError(f"next_action_when_{state.value}")

    def _await_connect(self) -> Action:
        try:
            packet = self.decoder.next_packet()
        except ProtocolError as exc:
            if exc.connack_code is not None:
                return self._refuse(exc.connack_code, exc.reason)
            if exc.reason_code in CONNACK_REASON_CODES:
                # An MQTT 5 CONNECT the decoder refused: CONNACK with the reason, then close
                # ([MQTT-4.13.1-1]; 0x81 malformed, 0x82 protocol error, 0x95 too large).
                return self._refuse(exc.reason_code, exc.reason, mqtt5=True)
            return self._fail(exc)
        if packet is DECODER_NEED_DATA:
            return NEED_DATA
        if packet is CLOSED:
            return self._closing("closed_before_connect")
        assert isinstance(packet, Connect)  # the decoder enforces CONNECT first
        self.packets_in = 1
        self._connect = packet
        self.state = State.AUTHENTICATING
        return self._authenticate(packet)

    def _serve(self, now: float) -> Action:
        client = self._client
        assert client is not None
        decoder = self.decoder
        handle = client.handle
        gate = self._gate
        token = gate.begin() if gate is not None else 0
        handled = 0
        try:
            rate = self.server.broker.limits.max_publish_rate
            while True:
                packets = self._held
                if packets:
                    self._held = ()
                else:
                    try:
                        packets = decoder.next_packets()  # the whole read at once
                    except ProtocolError as exc:
                        return self._fail(exc)
                    if not packets:
                        if decoder.closed:
                            return self._closing("peer_closed")
                        break
                done = 0
                try:
                    for packet in packets:
                        done += 1
                        handle(packet)
                        if client.disconnected:
                            return self._closing("client_disconnect")  # [MQTT-3.14.4-2]
                        if rate and packet.__class__ is Publish:
                            # A token bucket (burst = one second's worth): the excess waits
                            # (decoded, in the decoder, in the socket) -- delayed by not
                            # reading, never dropped.
                            tokens = min(rate, self._tokens + (now - self._tokens_at) * rate) - 1
                            self._tokens, self._tokens_at = tokens, now
                            if tokens < 0:
                                self._held = packets[done:]
                                self._paused = True
                                return Throttle(now - tokens / rate)
                except ProtocolError as exc:
                    return self._fail(exc)
                finally:
                    handled += done
        finally:
            if gate is not None:
                gate.end(token)
            if handled:
                self.packets_in += handled
                self._last_packet_at = now
        session = self.session
        assert session is not None
        if session.outbox_bytes > self.server.broker.limits.max_outbox_bytes:
            self._paused = True
            return WAIT_FOR_OUTPUT
        if gate is not None and gate.overloaded():
            self._paused = True
            return WAIT_FOR_STORE
        return NEED_DATA

    # -- CONNECT ----------------------------------------------------------------------------

    def _authenticate(self, connect: Connect) -> Action:
        listener = self.listener
        policy = self.server.access.policy(listener)
        method = connect.properties.authentication_method
        if method is not None:
            # Enhanced authentication (4.12) by a method of [auth] methods; one not configured
            # gets 0x8C, as Mosquitto answers without a plugin for it.
            authenticator = policy.authenticators.get(method)
            if authenticator is None:
                return self._refuse(ReasonCode.BAD_AUTHENTICATION_METHOD, "unknown_auth_method")
            self._exchange = authenticator.start(connect.client_id, connect.username)
            return self._auth_step(self._exchange.step(connect.properties.authentication_data))
        if listener.use_identity_as_username and self.tls_identity is not None:
            return self._authorised(self.tls_identity)  # the verified certificate is the key
        if connect.username is None:
            if not policy.config.anonymous_allowed(listener.host):
                return self._refuse(ConnackCode.NOT_AUTHORIZED, "anonymous_not_allowed")
            return self._authorised(None)
        if policy.passwords is not None:
            return CheckPassword(connect.username, connect.password, policy.passwords)
        return self._authorised(connect.username)

    def _await_auth(self) -> Action:
        """During enhanced authentication only AUTH 0x18 with the same method may come."""
        connect = self._connect
        assert connect is not None
        try:
            packet = self.decoder.next_packet()
        except ProtocolError as exc:
            return self._refuse(exc.reason_code or ReasonCode.MALFORMED_PACKET, exc.reason)
        if packet is DECODER_NEED_DATA:
            return NEED_DATA
        if packet is CLOSED:
            return self._closing("closed_while_authenticating")
        self.packets_in += 1
        if (
            not isinstance(packet, Auth)
            or packet.reason_code != ReasonCode.CONTINUE_AUTHENTICATION
            or packet.properties.authentication_method != connect.properties.authentication_method
        ):
            return self._refuse(ReasonCode.PROTOCOL_ERROR, "unexpected_packet_in_authentication")
        assert self._exchange is not None
        return self._auth_step(self._exchange.step(packet.properties.authentication_data))

    def _auth_step(self, step: Step) -> Action:
        """What an enhanced authentication step decided, before CONNACK."""
        connect = self._connect
        assert connect is not None
        method = connect.properties.authentication_method
        if step.outcome is Outcome.CONTINUE:
            auth = Auth(
                ReasonCode.CONTINUE_AUTHENTICATION,
                Properties(authentication_method=method, authentication_data=step.data),
            )
            self._early += encode(auth, version=5)
            self.wake()
            return NEED_DATA
        self._exchange = None
        if step.outcome is Outcome.FAILURE:
            log.warning("authentication_failed", username=connect.username, method=method)
            return self._refuse(step.reason_code, "enhanced_auth_failed")
        self._auth_data = step.data
        return self._authorised(step.username or connect.username)

    def reauthenticate(self, packet: Auth) -> None:
        """AUTH after CONNECT (MQTT 5, 4.12.1): 0x19 starts a re-authentication with the
        CONNECT's method, 0x18 continues it; success answers AUTH 0x00.

        Raises:
            ProtocolViolation: no enhanced authentication at CONNECT, another method, a step
                out of turn (0x82), or the method refused the client (0x87).
        """
        client = self._client
        method = packet.properties.authentication_method
        if self.state is not State.CONNECTED or client is None or self.session is None:
            raise LocalProtocolError("reauthenticate_when_not_connected")
        policy = self.server.access.policy(self.listener)
        authenticator = policy.authenticators.get(method or "")
        if authenticator is None or method != self._auth_method:
            raise ProtocolViolation("auth_without_enhanced_authentication", reason_code=0x82)
        if packet.reason_code == ReasonCode.REAUTHENTICATE:
            self._exchange = authenticator.start(self.client_id or "", self.username)
        elif packet.reason_code != ReasonCode.CONTINUE_AUTHENTICATION or self._exchange is None:
            raise ProtocolViolation("auth_out_of_turn", reason_code=0x82)
        step = self._exchange.step(packet.properties.authentication_data)
        if step.outcome is Outcome.FAILURE:
            self._exchange = None
            log.warning("reauthentication_failed", username=self.username, method=method)
            raise ProtocolViolation("reauthentication_failed", reason_code=step.reason_code)
        code = ReasonCode.CONTINUE_AUTHENTICATION
        if step.outcome is Outcome.SUCCESS:
            self._exchange = None
            code = ReasonCode.SUCCESS
        properties = Properties(authentication_method=method, authentication_data=step.data)
        self.session.send_packet(encode(Auth(code, properties), version=5))

    def password_checked(self, ok: bool) -> None:
        """The result of ``CheckPassword``; ``next_action`` tells what follows."""
        connect = self._connect
        if self.state is not State.AUTHENTICATING or connect is None or self._pending is not None:
            raise LocalProtocolError("password_checked_out_of_turn")
        if ok:
            self._pending = self._authorised(connect.username)
        else:
            log.warning("authentication_failed", username=connect.username)
            self._pending = self._refuse(ConnackCode.BAD_USERNAME_OR_PASSWORD, "bad_credentials")

    def _authorised(self, username: str | None) -> Action:
        connect = self._connect
        assert connect is not None
        if self.server.shutting_down:
            return self._refuse(ConnackCode.SERVER_UNAVAILABLE, "server_shutting_down")
        # [MQTT-3.1.3-6] a zero-length id with CleanSession=1 gets one from the server (the
        # decoder refused it with CleanSession=0, [MQTT-3.1.3-8]).
        client_id = connect.client_id or f"auto-{uuid.uuid4().hex}"
        self.client_id = client_id
        self.username = username
        will = connect.will
        if will is not None:
            # The Will is a PUBLISH made in advance: the same rules, checked now (and again
            # when it is published). Too deep closes the connection, as a PUBLISH would; a
            # topic the client may not write (the ACL, or a $ topic) gets 0x05, as Mosquitto
            # answers.
            if will.topic.count("/") >= self.server.broker.limits.max_topic_levels:
                return self._fail(ProtocolError("too_many_will_topic_levels"))
            acl = self.server.access.client_acl(self.listener, username, client_id)
            if not acl.can_publish(will.topic, bridge=self.decoder.bridge):
                return self._refuse(ConnackCode.NOT_AUTHORIZED, "will_not_authorised")
        return TakeOver(client_id, connect.clean_session)

    def taken_over(self, now: float, restored: StoredSession | None = None) -> None:
        """No other connection has this client id any more: open the session, send CONNACK.

        Args:
            now: the time (trio clock).
            restored: the client's persistent session as another node of the cluster left
                it, loaded by the driver.
        """
        connect = self._connect
        client_id = self.client_id
        if self.state is not State.AUTHENTICATING or connect is None or client_id is None:
            raise LocalProtocolError("taken_over_out_of_turn")
        server = self.server
        broker = server.broker
        limits = broker.limits
        mqtt5 = connect.protocol_level == 5
        properties = connect.properties
        connack = _ConnackProperties()
        expiry: int | None = 0
        if mqtt5:
            asked = properties.session_expiry_interval or 0
            expiry = None if asked == NEVER_EXPIRES else asked
            cap = server.config.store.expiration_s
            if cap is not None and (expiry is None or expiry > cap):
                # persistent_client_expiration caps MQTT 5 sessions too; the client is told
                # the interval in force (3.2.2.3.2).
                expiry = int(cap)
                connack.session_expiry_interval = expiry
        gate = self._gate
        token = gate.begin() if gate is not None else 0
        session, present = broker.open_session(
            client_id,
            connect.clean_session,
            self.username,
            check_owner=server.access.policy(self.listener).config.session_owner_check,
            restored=restored,
            mqtt5=mqtt5,
            expiry=expiry,
        )
        broker.client_attached(client_id, connect.will)
        if gate is not None:
            gate.end(token)
        if connect.protocol_level == 3:
            present = False  # MQTT 3.1 has no Session Present flag
        cap = limits.max_keepalive
        # A client asking for more than the cap (or for none) is held to the cap; an MQTT 5
        # client is told so with Server Keep Alive ([MQTT-3.2.2-21], [MQTT-3.1.2-21]).
        self.keepalive = cap if cap and not 0 < connect.keepalive <= cap else connect.keepalive
        if mqtt5 and self.keepalive != connect.keepalive:
            connack.server_keep_alive = self.keepalive
        acl = server.access.client_acl(self.listener, self.username, client_id)
        session.may_receive = None if acl.allows_everything else acl.can_receive
        kick = self._kick
        if limits.slow_consumer == "disconnect" and kick is not None:
            session.on_overflow = lambda: kick("slow_consumer")
        self.session = session
        bridge = self.decoder.bridge
        if mqtt5:
            # What the client takes: Receive Maximum caps our window ([MQTT-3.3.4-7]),
            # Maximum Packet Size what we send ([MQTT-3.1.2-24]), Topic Alias Maximum how
            # many aliases we may use ([MQTT-3.1.2-26]).
            session.window = min(limits.max_inflight_messages, properties.receive_maximum or 65535)
            session.peer = Peer(
                properties.maximum_packet_size or 0,
                min(properties.topic_alias_maximum or 0, limits.topic_alias_maximum),
            )
            self._client = ClientProtocol5(
                broker,
                session,
                acl,
                bridge=bridge,
                topic_alias_maximum=limits.topic_alias_maximum,
                session_expiry=asked,
                problem_information=properties.request_problem_information != 0,
                set_session_expiry=lambda value: _set_session_expiry(session, value),
                reauthenticate=self.reauthenticate,
            )
        else:
            session.window = limits.max_inflight_messages
            self._client = ClientProtocol(
                broker, session, connect.protocol_level, acl, bridge=bridge
            )
        self._connect = None  # only the Will is kept ([MQTT-3.1.2-8])
        self._client.will = connect.will
        self.state = State.CONNECTED
        self._last_packet_at = now
        self._tokens_at = now
        # CONNACK is the first packet the server sends ([MQTT-3.2.0-1], [MQTT-3.1.4-4]); the
        # session's re-sends follow it once attached ([MQTT-4.4.0-1]).
        connects = broker.stats.connects
        connects["accepted"] = connects.get("accepted", 0) + 1
        if mqtt5:
            if not connect.client_id:
                connack.assigned_client_identifier = client_id  # [MQTT-3.2.2-16]
            if properties.authentication_method is not None:
                self._auth_method = properties.authentication_method
                connack.authentication_method = properties.authentication_method
                connack.authentication_data = self._auth_data
            if limits.max_packet_size < 268_435_455:
                # Our limit is on the Remaining Length; the property counts the whole packet.
                size = limits.max_packet_size
                connack.maximum_packet_size = size + 1 + len(_varint(size))
            if limits.topic_alias_maximum:
                connack.topic_alias_maximum = limits.topic_alias_maximum
            session.send_packet(
                encode(Connack(present, ReasonCode.SUCCESS, connack.properties()), version=5)
            )
        else:
            session.send_packet(connack_bytes(present, ConnackCode.ACCEPTED))
        session.attach(self.wake)
        self.wake()  # CONNACK is output even when the session had nothing to re-send
        log.info(
            "client_connected",
            client_id=client_id,
            clean_session=connect.clean_session,
            session_present=present,
            keepalive=connect.keepalive,
            protocol_level=connect.protocol_level,
            bridge=bridge,
            username=self.username,
            will=connect.will is not None,
            **({"session_expiry": expiry} if mqtt5 else {}),
        )

    def refuse_unavailable(self, reason: str) -> Close:
        """The driver could not take the client id over (in a cluster, another node did not
        answer): CONNACK 0x03 Server unavailable, then close; the client tries again."""
        if self.state is not State.AUTHENTICATING:
            raise LocalProtocolError("refuse_unavailable_out_of_turn")
        return self._refuse(ConnackCode.SERVER_UNAVAILABLE, reason)

    def _refuse(self, code: int, reason: str, *, mqtt5: bool = False) -> Close:
        """CONNACK with a non-zero code, then close ([MQTT-3.2.2-5]); what the client sends
        after is not read ([MQTT-3.1.4-5]). An MQTT 5 client gets the MQTT 5 reason code
        ([MQTT-3.2.2-7]) and a Reason String."""
        connect = self._connect
        if connect is not None and connect.protocol_level == 5:
            mqtt5 = True
        if mqtt5:
            code = _CONNACK5.get(code, code)  # type: ignore[call-overload]
        log.info("connect_refused", reason=reason, return_code=code, client_id=self.client_id)
        connects = self.server.broker.stats.connects
        connects[reason] = connects.get(reason, 0) + 1
        if mqtt5:
            limit = connect.properties.maximum_packet_size or 0 if connect is not None else 0
            connack = Connack(False, code, Properties(reason_string=reason))
            self._early = encode_within(connack, limit)  # [MQTT-3.2.2-19]
        else:
            self._early = connack_bytes(False, code)
        self.state = State.CLOSING
        return Close(reason, flush=True)

    def _fail(self, exc: ProtocolError) -> Close:
        """The client broke the protocol: close the connection ([MQTT-4.8.0-1]); an MQTT 5
        client gets a DISCONNECT with the reason first ([MQTT-4.13.1-1])."""
        log.warning("protocol_error", reason=exc.reason, client_id=self.client_id)
        self.state = State.CLOSING
        session = self.session
        if session is not None and isinstance(self._client, ClientProtocol5):
            code = exc.reason_code
            if code is None:
                is_malformed = isinstance(exc, MalformedPacket)
                code = ReasonCode.MALFORMED_PACKET if is_malformed else ReasonCode.PROTOCOL_ERROR
            session.send_packet(_disconnect(code, exc.reason, session))
            return Close(exc.reason, flush=True)
        return Close(exc.reason)

    def farewell(self, reason: str) -> bytes:
        """The DISCONNECT an MQTT 5 client is sent before the server closes its connection
        for ``reason`` from outside (a takeover, shutdown, keep alive, ...), or b"" (3.14)."""
        code = _FAREWELL.get(reason)
        if code is None or self.state is not State.CONNECTED:
            return b""
        if not isinstance(self._client, ClientProtocol5) or self.session is None:
            return b""
        return _disconnect(code, reason, self.session)

    def _closing(self, reason: str) -> Close:
        self.state = State.CLOSING
        return Close(reason)

    # -- output -----------------------------------------------------------------------------

    @property
    def has_output(self) -> bool:
        """Whether ``data_to_send`` has anything."""
        if self.state is State.CLOSED:
            return False
        if self._early:
            return True
        session = self.session
        return session is not None and bool(session.outbox)

    def data_to_send(self) -> bytes:
        """Everything there is to write now, as one buffer (b"" after ``close``)."""
        session = self.session
        if session is not None:
            # After close the session is detached (its outbox cleared) or belongs to a new
            # connection: never take its output then.
            if session.outbox and self.state is not State.CLOSED:
                return session.take_outbox()
            return b""
        if self._early and self.state is not State.CLOSED:
            data, self._early = self._early, b""
            return data
        return b""

    def unsend(self, data: bytes) -> None:
        """Bytes ``data_to_send`` returned that the transport did not take: they go first
        next time (and count against ``max_outbox_bytes`` meanwhile)."""
        if self.state is not State.CLOSED and self.session is not None and data:
            self.session.unsend(data)

    @property
    def store_mark(self) -> int:
        """The store position the session's output depends on (see ``OutputGate``)."""
        session = self.session
        return session.store_mark if session is not None else 0

    @property
    def output_drained(self) -> bool:
        """Whether the output is back under ``max_outbox_bytes`` (reading may go on)."""
        session = self.session
        limit = self.server.broker.limits.max_outbox_bytes
        return session is None or session.outbox_bytes <= limit

    @property
    def blocked_on(self) -> Ready | None:
        """What the session's next retained messages wait for (a cluster barrier), if
        anything: the driver waits for it before ``resume``."""
        session = self.session
        return session.blocked_on if session is not None else None

    @property
    def resume_wanted(self) -> bool:
        """A retained batch waits for the output to be written before its next step (never
        after close: detaching the session clears it)."""
        session = self.session
        return session is not None and session.resume_wanted

    def resume(self) -> None:
        """Take the next step of a waiting retained batch (see ``Session.resume``)."""
        if self.resume_wanted:
            self.session.resume()  # type: ignore[union-attr]

    # -- deadlines --------------------------------------------------------------------------

    def deadline(self, now: float) -> float | None:
        """When the next complete packet must arrive: the CONNECT within connect_timeout_s,
        then one within 1.5 x Keep Alive of the last ([MQTT-3.1.2-24]); None when no deadline
        applies (Keep Alive 0, authenticating, closing)."""
        state = self.state
        if state is State.AWAIT_CONNECT or (
            state is State.AUTHENTICATING and self._exchange is not None
        ):
            # An enhanced authentication must end within the CONNECT's time too.
            return self.accepted_at + self.server.broker.limits.connect_timeout_s
        if state is not State.CONNECTED or not self.keepalive:
            return None
        grace = self.keepalive * 1.5
        if self._paused:
            return now + grace  # reading paused on purpose: ask again later
        return self._last_packet_at + grace

    def timeout_reason(self) -> str:
        """Why a passed ``deadline`` closes the connection."""
        connecting = self.state is State.AWAIT_CONNECT or self.state is State.AUTHENTICATING
        return "connect_timeout" if connecting else "keepalive_timeout"

    # -- the end ----------------------------------------------------------------------------

    def close(self, reason: str, now: float, *, bytes_out: int = 0) -> None:
        """The connection has ended (for any reason): publish the Will unless the client sent
        DISCONNECT or the server is shutting down, detach the session, log one summary line.

        Calling it again does nothing.
        """
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self._early = b""
        server = self.server
        disconnects = server.broker.stats.disconnects
        disconnects[reason] = disconnects.get(reason, 0) + 1
        client = self._client
        session = self.session
        if reason == "connect_timeout":
            log.info("connect_timeout", timeout_s=server.broker.limits.connect_timeout_s)
        elif reason == "keepalive_timeout":
            log.info("keepalive_timeout", keepalive=self.keepalive)
        if session is not None and client is not None:
            will = client.will
            wanted = not client.disconnected or (
                isinstance(client, ClientProtocol5) and client.will_on_disconnect
            )
            if will is not None and wanted and not server.shutting_down:
                # Published on any close but DISCONNECT ([MQTT-3.1.2-8]; MQTT 5: or with
                # 0x04), with its own QoS and RETAIN ([MQTT-3.1.2-16], [MQTT-3.1.2-17]); then
                # removed ([MQTT-3.1.2-10]). An MQTT 5 Will Delay Interval holds it back
                # until the delay or the session ends, unless the client comes back
                # ([MQTT-3.1.3-9]).
                delay = will.properties.will_delay_interval or 0
                publish = _will_publisher(server.broker, client, will, self.client_id or "")
                if delay and not session.clean_session:
                    server.broker.delay_will(self.client_id or "", delay, publish)
                else:
                    publish()
            client.will = None
            server.broker.end_session(session)
            server.broker.client_detached(self.client_id or "")
        suppressed = client.logs.suppressed() if client is not None else None
        log.info(
            "client_disconnected" if session is not None else "connection_closed",
            reason=reason,
            duration_s=round(now - self.accepted_at, 3),
            packets_in=self.packets_in,
            publishes_denied=client.publishes_denied if client is not None else 0,
            bytes_in=self.bytes_in,
            bytes_out=bytes_out,
            **({"suppressed": suppressed} if suppressed else {}),
        )

    # -- after a reload ---------------------------------------------------------------------

    def reauthorise(self) -> str | None:
        """Apply reloaded password and ACL files (SIGHUP) to this connected client.

        Returns:
            The reason to disconnect it -- its user is no longer in the password file, or it
            is anonymous where anonymous clients are no longer allowed, as Mosquitto decides
            -- or None when it stays (with the new ACL in force at once).
        """
        client = self._client
        session = self.session
        if self.state is not State.CONNECTED or client is None or session is None:
            return None
        listener = self.listener
        policy = self.server.access.policy(listener)
        by_certificate = listener.use_identity_as_username and self.tls_identity is not None
        if self.username is None:
            if not policy.config.anonymous_allowed(listener.host):
                return "anonymous_not_allowed"
        elif (
            not by_certificate
            and policy.passwords is not None
            and self.username not in policy.passwords
        ):
            return "user_removed"
        assert self.client_id is not None
        acl = self.server.access.client_acl(listener, self.username, self.client_id)
        client.acl = acl
        session.may_receive = None if acl.allows_everything else acl.can_receive
        return None


class _ConnackProperties:
    """The MQTT 5 CONNACK properties a connection collects while it is accepted."""

    __slots__ = (
        "assigned_client_identifier",
        "authentication_data",
        "authentication_method",
        "maximum_packet_size",
        "server_keep_alive",
        "session_expiry_interval",
        "topic_alias_maximum",
    )

    def __init__(self) -> None:
        self.session_expiry_interval: int | None = None
        self.assigned_client_identifier: str | None = None
        self.server_keep_alive: int | None = None
        self.maximum_packet_size: int | None = None
        self.topic_alias_maximum: int | None = None
        self.authentication_method: str | None = None
        self.authentication_data: bytes | None = None

    def properties(self) -> Properties:
        values = {name: getattr(self, name) for name in self.__slots__}
        if all(value is None for value in values.values()):
            return NO_PROPERTIES
        return Properties(**values)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _disconnect(code: int, reason: str, session: Session) -> bytes:
    """An MQTT 5 DISCONNECT from the server, with a Reason String (3.14.2.2.3) if the
    client's Maximum Packet Size leaves room for it ([MQTT-3.14.2-3])."""
    peer = session.peer
    limit = peer.maximum_packet_size if peer is not None else 0
    return encode_within(Disconnect(code, Properties(reason_string=reason)), limit)


def _set_session_expiry(session: Session, value: int) -> None:
    """A Session Expiry Interval from an MQTT 5 DISCONNECT (3.14.2.2.2): 0 ends the session
    with the connection, 0xFFFFFFFF never."""
    session.expiry_interval = None if value == NEVER_EXPIRES else value
    session.clean_session = value == 0


def _will_publisher(
    broker: Broker, client: ClientProtocol, will: Will, client_id: str
) -> Callable[[], None]:
    """What publishes ``will``, now or after its delay: the ACL is asked again then (it may
    have been reloaded since CONNECT); an MQTT 5 Will keeps its properties."""

    def publish() -> None:
        if not client.acl.can_publish(will.topic, bridge=client.bridge):
            log.warning("will_refused", client_id=client_id, topic=will.topic, reason="acl")
            return
        if will.properties is NO_PROPERTIES:
            broker.publish(will.topic, will.message, will.qos, will.retain)
        else:
            broker.publish_message(
                Message.from_publish(
                    will.topic, will.message, will.qos, will.retain, will.properties, time.time()
                )
            )
        log.info("will_published", client_id=client_id, topic_length=len(will.topic))

    return publish
