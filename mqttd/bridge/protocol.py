"""The client side of one bridge connection, pure and synchronous: bytes in, actions out.

Theory of operation. ``LinkProtocol`` is to a bridge's connection what
``mqttd.connection_protocol.ConnectionProtocol`` is to a client's: it does no I/O, reads no
clock and starts no task. Its driver (``mqttd.bridge.link``) opens the transport, writes what
``data_to_send()`` returns, feeds what it reads to ``receive_data`` and asks ``next_action(now)``
what to do next, until ``NEED_DATA``:

* ``LinkUp`` -- the remote accepted the CONNECT and (when the bridge has ``in`` topics)
  granted the SUBSCRIBE: the link carries messages now (publish the link state);
* ``WAIT_FOR_OUTPUT`` / ``WAIT_FOR_STORE`` -- read nothing more until the output drained or the
  durable store caught up (what the remote sends is published here, and must not outrun the
  disk);
* ``Close`` -- the link is over: refused (``return_code``), a protocol error, EOF.

The session. What travels to the remote comes out of the bridge's local ``BridgeSession``: its
deliveries (queued while the link was down, renamed for the remote), their PUBRELs, and the
acknowledgements of what the remote sends (PUBACK, PUBREC, PUBCOMP), so every QoS 1/2 rule of a
client session applies, both ways. The session is attached only once the link is up -- after
the SUBACK, so the SUBSCRIBE's packet id cannot collide with a PUBLISH's ([MQTT-2.3.1-2]) --
and it then re-sends what is unacknowledged, DUP=1 and in order ([MQTT-4.4.0-1]).
``close()`` detaches it: QoS 1/2 messages wait in it (durably) for the next link.

The rules of the client role ([MQTT-7.0.0-1]: a bridging broker is a client to the remote):

* CONNECT first; the first packet back must be CONNACK ([MQTT-3.2.0-1]); a non-zero code ends
  the link ([MQTT-3.2.2-5]). With ``try_private``, the protocol level has its high bit set
  (0x84 / 0x83) -- Mosquitto's way to tell the remote this is a bridge, so it never sends the
  bridge its own messages back; a 3.1.1 broker that does not know it answers 0x01.
* Session Present 0 means the remote kept nothing: the QoS 2 packet ids of the remote's
  unreleased messages are forgotten, or new messages reusing those ids would be taken for
  duplicates and lost.
* Incoming PUBLISH: renamed (``TopicMap.to_local``), published to the local broker while the
  bridge's own session refuses it (no loop), and acknowledged through the session, whose
  output waits for the store ([MQTT-4.3.2-2], [MQTT-4.3.3-2]): the remote lets go of a message
  only once this broker holds it durably.
* Keep Alive: a PINGREQ when nothing was sent or received for ``keepalive`` seconds
  ([MQTT-3.1.2-23]); no PINGRESP within ``keepalive`` more ends the link, as does no CONNACK
  within ``connect_timeout_s``.
* Packets only a client sends (CONNECT, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, and before MQTT 5
  DISCONNECT) coming from the remote are protocol errors that close the link ([MQTT-4.8.0-1]).

MQTT 5 (``protocol = "5"``) changes what is said, not how the session works:

* CONNECT: Clean Start with a Session Expiry Interval of 0xFFFFFFFF when the bridge keeps its
  session (``clean_session = false``), of 0 (absent) otherwise -- what CleanSession meant in
  3.1.1. (Mosquitto 2.0's bridge sends no Session Expiry Interval, so its MQTT 5 remote drops the
  bridge's session, and the messages queued for it, whenever the link drops.) The Maximum
  Packet Size this side accepts is announced, so the remote drops a larger message instead of
  breaking the link with it; no Topic Alias Maximum (0: the remote may use none), no try_private
  bit (Mosquitto sets none for MQTT 5 either).
* SUBSCRIBE: every in-topic with No Local and Retain As Published: the remote does not send the
  bridge back what the bridge published (the standard form of try_private) and RETAIN arrives as
  the publisher set it. ``$share/`` filters may not have No Local ([MQTT-3.8.3-4]).
* CONNACK: a reason code of 0x80 or more refuses the link; Server Keep Alive replaces the
  Keep Alive ([MQTT-3.2.2-22]); the remote's Receive Maximum caps the session's window
  ([MQTT-3.3.4-7]); its Maximum Packet Size, Maximum QoS and Retain Available shape what is sent
  (``RemotePeer``: a message too large is dropped and counted, [MQTT-3.1.2-25]; QoS is capped,
  [MQTT-3.2.2-11]; RETAIN is cleared, [MQTT-3.2.2-14]). A remote that changes them would
  otherwise disconnect the bridge over the same queued message at every reconnection.
* PUBLISH from the remote: its properties travel on with the message (``Message.from_publish``:
  user properties, content type, response topic, correlation data, payload format, the
  Message Expiry Interval left); a Topic Alias is a protocol error, since none was allowed.
* PUBACK/PUBREC with a reason code of 0x80 or more: the remote refused the message; the
  delivery ends there (no PUBREL, no re-send), counted in ``BridgeSession.refused`` and logged
  once per link.
* DISCONNECT from the remote: logged with its reason code and Reason String; the link ends and
  the driver reconnects after its backoff.
* A protocol error of the remote gets a DISCONNECT with the reason code before the connection
  closes ([MQTT-4.13.1-1]; ``farewell``).

With MQTT 3.1.1 and 3.1 none of these properties exist: messages cross without them.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final, Protocol, TypeAlias

import structlog

from mqttd.codec.decoder import CLOSED, Decoder
from mqttd.codec.decoder import NEED_DATA as DECODER_NEED_DATA
from mqttd.codec.encoder import encode
from mqttd.codec.fields import write_varint
from mqttd.codec.packets import (
    MAX_REMAINING_LENGTH,
    NO_PROPERTIES,
    PROTOCOL_MQTT_5,
    PROTOCOL_MQTT_31,
    PROTOCOL_MQTT_311,
    Connack,
    ConnackCode,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    ReasonCode,
    Suback,
    Subscribe,
    Unsuback,
)
from mqttd.errors import LocalProtocolError, ProtocolError, ProtocolViolation
from mqttd.logging import LogBudget
from mqttd.message import Message
from mqttd.session import Peer
from mqttd.subscription import NO_LOCAL, RETAIN_AS_PUBLISHED, SHARE_PREFIX

if TYPE_CHECKING:
    from mqttd.bridge.session import BridgeSession
    from mqttd.broker import Broker

__all__ = [
    "NEED_DATA",
    "WAIT_FOR_OUTPUT",
    "WAIT_FOR_STORE",
    "Close",
    "LinkProtocol",
    "LinkSettings",
    "LinkState",
    "LinkUp",
    "RemotePeer",
    "connect_bytes",
]

log = structlog.get_logger("mqttd.bridge")

#: The protocol level's high bit: "this client is a bridge" (Mosquitto's try_private).
BRIDGE_BIT: Final = 0x80
#: Session Expiry Interval meaning "never" (3.1.2.11.2).
NEVER_EXPIRES: Final = 0xFFFFFFFF
#: Reason codes of a remote's DISCONNECT that say nothing against the bridge: the next attempt
#: waits as after any link that came up. Any other code of 0x80 or more (session taken over by a
#: second bridge with the same client id, quota exceeded, ...) keeps the backoff growing.
TRANSIENT_DISCONNECTS: Final = frozenset(
    {ReasonCode.SERVER_SHUTTING_DOWN, ReasonCode.KEEP_ALIVE_TIMEOUT}
)

_PINGREQ: Final = encode(Pingreq())
_DISCONNECT: Final = encode(Disconnect())


class LinkState(enum.Enum):
    """Where a bridge connection is in its life."""

    CONNECTING = "connecting"  # CONNECT sent, waiting for CONNACK
    SUBSCRIBING = "subscribing"  # CONNACK 0, SUBSCRIBE sent, waiting for SUBACK
    UP = "up"  # the session is attached: messages flow both ways
    CLOSED = "closed"


class _Signal(enum.Enum):
    NEED_DATA = "NEED_DATA"
    WAIT_FOR_OUTPUT = "WAIT_FOR_OUTPUT"
    WAIT_FOR_STORE = "WAIT_FOR_STORE"

    def __repr__(self) -> str:
        return self.value


#: Read more bytes and pass them to ``receive_data``.
NEED_DATA: Final = _Signal.NEED_DATA
#: Read nothing more until the output is back under ``max_outbox_bytes``.
WAIT_FOR_OUTPUT: Final = _Signal.WAIT_FOR_OUTPUT
#: Read nothing more until the store has caught up (``store_backlog_limit``).
WAIT_FOR_STORE: Final = _Signal.WAIT_FOR_STORE


@dataclass(frozen=True, slots=True)
class LinkUp:
    """The link carries messages now; ``session_present`` is the remote's CONNACK flag."""

    session_present: bool


@dataclass(frozen=True, slots=True)
class Close:
    """The link is over. ``return_code`` is the CONNACK code when the remote refused it, or the
    reason code of the remote's MQTT 5 DISCONNECT."""

    reason: str
    return_code: int | None = None


Action: TypeAlias = "_Signal | LinkUp | Close"


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """What one connection of a bridge needs to know of its configuration.

    Attributes:
        client_id: the client id on the remote.
        username: user name (None: none).
        password: password (None: none).
        keepalive: Keep Alive in seconds (0: none).
        clean_session: CleanSession on the remote (MQTT 5: Clean Start, and a Session Expiry
            Interval of 0 when true, 0xFFFFFFFF when false).
        protocol: "3.1.1", "3.1" or "5".
        try_private: set the bridge bit in the protocol level (not with MQTT 5).
        connect_timeout_s: how long to wait for CONNACK.
        subscriptions: (remote filter, QoS) of the ``in`` topics.
        max_packet_size: the largest Remaining Length accepted from the remote; MQTT 5
            announces it (as a whole-packet size) in the CONNECT's Maximum Packet Size.
    """

    client_id: str
    username: str | None = None
    password: str | None = None
    keepalive: int = 60
    clean_session: bool = False
    protocol: str = "3.1.1"
    try_private: bool = True
    connect_timeout_s: float = 10.0
    subscriptions: tuple[tuple[str, int], ...] = ()
    max_packet_size: int = MAX_REMAINING_LENGTH

    @property
    def version(self) -> int:
        """The protocol level: 5, 4 (3.1.1) or 3 (3.1)."""
        return 5 if self.protocol == "5" else 3 if self.protocol == "3.1" else 4


def subscribe_bytes(settings: LinkSettings, packet_id: int) -> bytes:
    """The SUBSCRIBE of the ``in`` topics. MQTT 5 subscribes with No Local (the remote sends
    none of the bridge's own messages back: what try_private asks of a 3.1.1 remote, in the
    standard way) and Retain As Published (RETAIN crosses as the publisher set it), as
    Mosquitto's bridge does; Retain Handling 0, so retained messages come at each SUBSCRIBE.
    """
    if settings.version != 5:
        return encode(Subscribe(packet_id, settings.subscriptions))
    subscriptions = tuple(
        # [MQTT-3.8.3-4]: No Local on a shared subscription is a Protocol Error
        (f, qos | RETAIN_AS_PUBLISHED | (0 if f.startswith(SHARE_PREFIX) else NO_LOCAL))
        for f, qos in settings.subscriptions
    )
    return encode(Subscribe(packet_id, subscriptions), version=5)


def connect_bytes(settings: LinkSettings) -> bytes:
    """The CONNECT packet of a bridge connection.

    With ``try_private`` the protocol level byte gets the bridge bit: the codec encodes
    standard levels only, and the level sits right after the protocol name. The bit is an
    extension the bridge can do without (``try_private = false``), so a remote need not know
    it ([MQTT-7.0.0-2]). MQTT 5 has no bit (No Local does its work); its CONNECT carries the
    Session Expiry Interval and the Maximum Packet Size (see the module docstring).
    """
    if settings.version == 5:
        size = settings.max_packet_size
        return encode(
            Connect(
                settings.client_id,
                clean_session=settings.clean_session,
                keepalive=settings.keepalive,
                username=settings.username,
                password=settings.password.encode() if settings.password is not None else None,
                protocol_name=PROTOCOL_MQTT_5[0],
                protocol_level=PROTOCOL_MQTT_5[1],
                properties=Properties(
                    # 3.1.2.11.2: absent means 0, the session ends with the connection
                    session_expiry_interval=None if settings.clean_session else NEVER_EXPIRES,
                    # The limit is on the Remaining Length; the property counts the whole
                    # packet (3.1.2.11.4).
                    maximum_packet_size=(
                        size + 1 + len(write_varint(size)) if size < MAX_REMAINING_LENGTH else None
                    ),
                ),
            ),
            version=5,
        )
    name, level = PROTOCOL_MQTT_31 if settings.protocol == "3.1" else PROTOCOL_MQTT_311
    packet = encode(
        Connect(
            settings.client_id,
            clean_session=settings.clean_session,
            keepalive=settings.keepalive,
            username=settings.username,
            password=settings.password.encode() if settings.password is not None else None,
            protocol_name=name,
            protocol_level=level,
        )
    )
    if not settings.try_private:
        return packet
    # Fixed header (1 byte + Remaining Length), then the protocol name (2 + len), then level.
    header = 2
    while packet[header - 1] & 0x80:
        header += 1
    at = header + 2 + len(name)
    if packet[at] != level:
        raise LocalProtocolError("connect_level_not_found")
    return packet[:at] + bytes((level | BRIDGE_BIT,)) + packet[at + 1 :]


class OutputGate(Protocol):
    """The store's view of the link (``mqttd.store.OutputGate``)."""

    def begin(self) -> int:
        """Input is about to be processed; returns a token for ``end``."""

    def end(self, token: int) -> None:
        """Input processing that began with ``token`` is over."""

    def overloaded(self) -> bool:
        """The store lags so far behind that reading must slow down."""


class RemotePeer(Peer):
    """How an MQTT 5 remote takes the bridge's PUBLISH packets (its CONNACK): no Topic Alias
    (the bridge uses none), no Subscription Identifier (a client never sends one,
    [MQTT-3.3.4-6]), RETAIN cleared when the remote has no retained messages ([MQTT-3.2.2-14]),
    and a message larger than its Maximum Packet Size dropped ([MQTT-3.1.2-25]) and reported to
    ``too_large``.

    Args:
        maximum_packet_size: the remote's Maximum Packet Size (0: no limit).
        retain_available: the remote's Retain Available.
        too_large: called with each message dropped for its size.
    """

    __slots__ = ("retain_available", "too_large")

    def __init__(
        self,
        maximum_packet_size: int,
        retain_available: bool,
        too_large: Callable[[Message, int], None],
    ) -> None:
        super().__init__(maximum_packet_size, 0)
        self.plain = False  # its ``chunks`` may clear RETAIN and reports dropped messages
        self.retain_available = retain_available
        self.too_large = too_large

    def chunks(
        self,
        message: Message,
        qos: int,
        retain: bool,
        dup: bool,
        packet_id: int,
        subscription_ids: tuple[int, ...],
    ) -> tuple[bytes, ...] | None:
        """The PUBLISH for the remote, or None when it is larger than the remote takes."""
        chunks = super().chunks(message, qos, retain and self.retain_available, dup, packet_id, ())
        if chunks is None:
            self.too_large(message, self.maximum_packet_size)
        return chunks


class LinkProtocol:
    """One connection of a bridge to its remote, from CONNECT to close.

    Args:
        settings: the connection's settings.
        broker: the local broker (what the remote sends is published there).
        session: the bridge's local session.
        now: when the connection was opened (trio clock).
        wake: called whenever there is new output for ``data_to_send``.
        gate: the store's durability gate for this link, when a store is in use.
        max_packet_size: the largest packet accepted from the remote (default: the lower of
            the settings' and the broker's).
        clock: wall-clock time (``time.time``), for the Message Expiry Interval of what the
            remote sends.
    """

    __slots__ = (
        "_clock",
        "_decoder",
        "_early",
        "_farewell",
        "_gate",
        "_last_in",
        "_last_out",
        "_logs",
        "_peer",
        "_ping_sent_at",
        "_subscribe_id",
        "_window",
        "broker",
        "keepalive",
        "opened_at",
        "packets_in",
        "session",
        "session_present",
        "settings",
        "state",
        "version",
        "wake",
    )

    def __init__(
        self,
        settings: LinkSettings,
        broker: Broker,
        session: BridgeSession,
        now: float,
        wake: Callable[[], None],
        *,
        gate: OutputGate | None = None,
        max_packet_size: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.session = session
        self.wake = wake
        self._gate = gate
        self._clock = clock
        #: 5 (MQTT 5), 4 (3.1.1) or 3 (3.1)
        self.version = settings.version
        self._decoder = Decoder(
            server=False,
            max_packet_size=max_packet_size
            or min(settings.max_packet_size, broker.limits.max_packet_size),
            protocol_level=5 if self.version == 5 else None,
        )
        #: the Keep Alive in force: the settings', or the remote's Server Keep Alive (MQTT 5)
        self.keepalive = settings.keepalive
        #: what the remote's CONNACK says it takes (MQTT 5), applied when the session attaches
        self._peer: RemotePeer | None = None
        self._window = session.limits.max_inflight_messages
        #: the DISCONNECT to send before closing on a protocol error of the remote (MQTT 5)
        self._farewell = b""
        self.state = LinkState.CONNECTING
        self.opened_at = now
        self._last_in = now
        self._last_out = now
        self._ping_sent_at: float | None = None
        self._subscribe_id = 0
        self.session_present = False
        self.packets_in = 0
        self._logs = LogBudget()
        #: output that is not the session's: CONNECT, SUBSCRIBE, PINGREQ, DISCONNECT
        self._early = connect_bytes(settings)

    # -- input ------------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        """Bytes read from the remote; ``b""`` when it closed its side (EOF)."""
        if self.state is not LinkState.CLOSED:
            self._decoder.receive_data(data)

    def next_action(self, now: float) -> Action:
        """Process what was received; return what the driver must do next.

        Raises:
            LocalProtocolError: called after ``close``.
        """
        if self.state is LinkState.CLOSED:
            raise LocalProtocolError("next_action_when_closed")
        gate = self._gate
        token = gate.begin() if gate is not None else 0
        try:
            while True:
                try:
                    packet = self._decoder.next_packet()
                except ProtocolError as exc:
                    return self._fail(exc.reason, exc.reason_code)
                if packet is DECODER_NEED_DATA:
                    break
                if packet is CLOSED:
                    return Close("peer_closed")
                self._last_in = now
                self.packets_in += 1
                try:
                    action = self._handle(packet)
                except ProtocolError as exc:
                    return self._fail(exc.reason, exc.reason_code)
                if action is not None:
                    return action
        finally:
            if gate is not None:
                gate.end(token)
            if self.has_output:
                self.wake()
        if self.session.outbox_bytes > self.broker.limits.max_outbox_bytes:
            return WAIT_FOR_OUTPUT
        if gate is not None and gate.overloaded():
            return WAIT_FOR_STORE
        return NEED_DATA

    def _handle(self, packet: Packet) -> LinkUp | Close | None:
        state = self.state
        if state is LinkState.CONNECTING:
            if not isinstance(packet, Connack):
                return self._fail("first_packet_not_connack")  # [MQTT-3.2.0-1]
            return self._connack(packet)
        session = self.session
        if isinstance(packet, Publish):
            self._publish(packet)
        elif isinstance(packet, Puback):
            if packet.reason_code >= 0x80:
                self._refused(packet.packet_id, packet.reason_code, packet.properties)
            session.on_puback(packet.packet_id)
        elif isinstance(packet, Pubrec):
            if packet.reason_code >= 0x80:
                self._refused(packet.packet_id, packet.reason_code, packet.properties)
            session.on_pubrec(packet.packet_id, packet.reason_code)  # an error: no PUBREL
        elif isinstance(packet, Pubcomp):
            session.on_pubcomp(packet.packet_id)
        elif isinstance(packet, Pubrel):
            session.release_qos2(packet.packet_id)
        elif isinstance(packet, Pingresp):
            self._ping_sent_at = None
        elif isinstance(packet, Suback):
            return self._suback(packet)
        elif isinstance(packet, Unsuback):
            return None  # the bridge sends no UNSUBSCRIBE; a stray UNSUBACK is ignored
        elif isinstance(packet, Connack):
            return self._fail("second_connack")
        elif isinstance(packet, Disconnect) and self.version == 5:
            return self._remote_disconnect(packet)
        else:  # CONNECT, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, (3.1.1) DISCONNECT, AUTH
            return self._fail("client_packet_from_server")  # [MQTT-4.8.0-1]
        return None

    def _connack(self, connack: Connack) -> LinkUp | Close | None:
        if connack.return_code != ConnackCode.ACCEPTED:
            # [MQTT-3.2.2-5]; MQTT 5: every code but 0x00 Success is 0x80 or more
            return Close("connect_refused", connack.return_code)
        self.session_present = connack.session_present
        if not connack.session_present:
            self._forget_incoming()
        if self.version == 5:
            self._accept5(connack.properties)
        subscriptions = self.settings.subscriptions
        if not subscriptions:
            return self._up()
        self._subscribe_id = 1
        self._early += subscribe_bytes(self.settings, self._subscribe_id)
        self.state = LinkState.SUBSCRIBING
        return None

    def _accept5(self, properties: Properties) -> None:
        """What an MQTT 5 remote's CONNACK says about how it takes what the bridge sends."""
        if properties.server_keep_alive is not None:
            self.keepalive = properties.server_keep_alive  # [MQTT-3.2.2-22]
        if properties.receive_maximum is not None:  # [MQTT-3.3.4-7]
            self._window = min(self._window, properties.receive_maximum)
        self._peer = RemotePeer(
            properties.maximum_packet_size or 0,
            properties.retain_available != 0,
            self._too_large,
        )
        maximum_qos = 2 if properties.maximum_qos is None else properties.maximum_qos
        self.session.limit_qos(maximum_qos)  # [MQTT-3.2.2-11]

    def _suback(self, suback: Suback) -> LinkUp | None:
        if self.state is not LinkState.SUBSCRIBING or suback.packet_id != self._subscribe_id:
            return None  # not ours: ignore, as a client does
        refused = [
            (f, code)
            for (f, _), code in zip(self.settings.subscriptions, suback.return_codes, strict=False)
            if code >= 0x80  # 3.1.1: 0x80 Failure; MQTT 5: any error reason code
        ]
        if refused:
            log.warning(
                "bridge_subscribe_refused",
                count=len(refused),
                first=refused[0][0],
                reason_code=refused[0][1],
            )
        return self._up()

    def _up(self) -> LinkUp:
        self.state = LinkState.UP
        session = self.session
        session.window = self._window
        session.peer = self._peer  # None before MQTT 5: 3.1.1 PUBLISH packets
        session.attach(self.wake)  # re-sends what is unacknowledged ([MQTT-4.4.0-1])
        self.wake()
        return LinkUp(self.session_present)

    def _forget_incoming(self) -> None:
        """The remote has no session: its unreleased QoS 2 packet ids are void."""
        session = self.session
        pending = session.awaiting_release
        if not pending:
            return
        store = session.store
        for packet_id in list(pending):
            pending.discard(packet_id)
            if store is not None:
                store.incoming_removed(session.client_id, packet_id)
                session.store_mark = store.recorded

    def _publish(self, packet: Publish) -> None:
        session = self.session
        qos = packet.qos
        properties = packet.properties
        if properties.topic_alias is not None:
            # The CONNECT allowed no Topic Alias (Topic Alias Maximum absent: 0) [MQTT-3.1.2-27]
            raise ProtocolViolation(
                "topic_alias_invalid", reason_code=ReasonCode.TOPIC_ALIAS_INVALID
            )
        topic = self.session.topics.to_local(packet.topic)
        if topic is None and self._logs.first("bridge_topic_not_mapped"):
            log.warning("bridge_topic_not_mapped", topic=packet.topic)
        if qos == 1:
            # The PUBACK is queued in the same synchronous step as the publish, and waits for
            # the store like any client's ([MQTT-4.3.2-2]).
            session.acknowledge_qos1(packet.packet_id)  # type: ignore[arg-type]
        elif qos == 2 and not session.receive_qos2(packet.packet_id):  # type: ignore[arg-type]
            return  # a re-sent packet id awaiting PUBREL: already published ([MQTT-4.3.3-2])
        if topic is None:
            return
        if properties is NO_PROPERTIES:
            message = Message(topic, packet.payload, qos, packet.retain)
        else:
            if properties.subscription_identifiers:
                # The bridge asked for none; they are the remote's, not the message's.
                properties = replace(properties, subscription_identifiers=())
            now = self._clock() if properties.message_expiry_interval is not None else 0.0
            message = Message.from_publish(
                topic, packet.payload, qos, packet.retain, properties, now
            )
        session.publishing = True  # no loop: not back into the bridge's own session
        try:
            self.broker.publish_message(message)
        finally:
            session.publishing = False

    def _refused(self, packet_id: int, reason_code: int, properties: Properties) -> None:
        """An MQTT 5 remote refused a message (PUBACK or PUBREC of 0x80 or more): the delivery
        ends, as if acknowledged; counted, and logged once per link."""
        outgoing = self.session.inflight.get(packet_id)
        if outgoing is None:
            return
        self.session.refused += 1
        if self._logs.first("bridge_message_refused"):
            log.warning(
                "bridge_message_refused",
                topic=outgoing.message.topic,
                reason_code=reason_code,
                reason_string=properties.reason_string,
            )

    def _too_large(self, message: Message, limit: int) -> None:
        """A message larger than the remote's Maximum Packet Size was dropped."""
        self.session.too_large += 1
        if self._logs.first("bridge_message_too_large"):
            log.warning(
                "bridge_message_too_large",
                topic=message.topic,
                payload_bytes=len(message.payload),
                maximum_packet_size=limit,
            )

    def _remote_disconnect(self, packet: Disconnect) -> Close:
        """The MQTT 5 remote ends the link, with a reason (3.14): log it; the driver reconnects
        after its backoff."""
        code = packet.reason_code
        transient = code < 0x80 or code in TRANSIENT_DISCONNECTS
        (log.info if transient else log.warning)(
            "bridge_remote_disconnect",
            reason_code=code,
            reason_string=packet.properties.reason_string,
            server_reference=packet.properties.server_reference,
        )
        return Close("remote_disconnect", code)

    def _fail(self, reason: str, reason_code: int | None = None) -> Close:
        log.warning("bridge_protocol_error", reason=reason)
        if self.version == 5:
            # [MQTT-4.13.1-1]: close; before that, a DISCONNECT saying why (4.13.2's SHOULD)
            code = ReasonCode.PROTOCOL_ERROR if reason_code is None else reason_code
            self._farewell = encode(Disconnect(code), version=5)
        return Close(reason)

    def farewell(self) -> bytes:
        """The DISCONNECT to write, once, before closing after a protocol error of the remote
        (MQTT 5), else b""."""
        data, self._farewell = self._farewell, b""
        return data

    # -- keepalive --------------------------------------------------------------------------

    def deadline(self) -> float | None:
        """When ``tick`` has something to do: the CONNACK timeout, the next PINGREQ, or the
        PINGRESP timeout; None when nothing is due (Keep Alive 0, closed)."""
        state = self.state
        if state is LinkState.CLOSED:
            return None
        if state is LinkState.CONNECTING:
            return self.opened_at + self.settings.connect_timeout_s
        keepalive = self.keepalive
        if not keepalive:
            return None
        if self._ping_sent_at is not None:
            return self._ping_sent_at + keepalive
        return min(self._last_in, self._last_out) + keepalive

    def tick(self, now: float) -> Close | None:
        """Time passed: send a PINGREQ when one is due; end the link when the CONNACK or the
        PINGRESP is late."""
        due = self.deadline()
        if due is None or now < due:
            return None
        if self.state is LinkState.CONNECTING:
            return Close("connack_timeout")
        if self._ping_sent_at is not None:
            return Close("keepalive_timeout")
        self._ping_sent_at = now  # [MQTT-3.1.2-23]
        self._early += _PINGREQ
        self.wake()
        return None

    # -- output -----------------------------------------------------------------------------

    @property
    def has_output(self) -> bool:
        """Whether ``data_to_send`` has anything."""
        return self.state is not LinkState.CLOSED and bool(self._early or self.session.outbox)

    def data_to_send(self) -> bytes:
        """Everything there is to write now, as one buffer (b"" after ``close``)."""
        if self.state is LinkState.CLOSED:
            return b""
        data = b""
        if self._early:
            data, self._early = self._early, b""
        if self.session.outbox:
            data += self.session.take_outbox()
        return data

    def sent(self, now: float) -> None:
        """The driver wrote output at ``now`` (the Keep Alive counts from the last write)."""
        self._last_out = now

    @property
    def store_mark(self) -> int:
        """The store position the session's output depends on (see ``OutputGate``)."""
        return self.session.store_mark

    @property
    def output_drained(self) -> bool:
        """Whether the output is back under ``max_outbox_bytes``."""
        return self.session.outbox_bytes <= self.broker.limits.max_outbox_bytes

    def disconnect(self) -> bytes:
        """The DISCONNECT to write before closing on purpose (shutdown)."""
        return _DISCONNECT

    # -- the end ----------------------------------------------------------------------------

    def close(self) -> None:
        """The connection ended (for any reason): detach the session; its QoS 1/2 messages
        wait for the next link. Calling it again does nothing."""
        if self.state is LinkState.CLOSED:
            return
        self.state = LinkState.CLOSED
        self._early = b""
        self.session.detach()
