"""The MQTT 5 rules of a connected client, pure and synchronous: ``ClientProtocol`` extended.

What MQTT 5 adds after CONNECT, packet by packet (the CONNECT/CONNACK side is in
``mqttd.connection_protocol``):

* PUBLISH: Topic Aliases from the client ([MQTT-3.3.2-8..12]; up to ``[limits]
  topic_alias_maximum``, announced in CONNACK); the publisher's properties travel with the
  message (``Message.from_publish``); the Payload Format Indicator's UTF-8 promise is checked
  (0x99); an ACL refusal is 0x87 and a topic nobody subscribes to 0x10 in PUBACK/PUBREC, as
  Mosquitto answers; a refused QoS 0 message is dropped (there is nothing to answer).
* SUBSCRIBE: the options byte (No Local, Retain As Published, Retain Handling), one
  Subscription Identifier, reason codes per filter (0x87 not authorised, 0x97 quota exceeded,
  0x8F filter invalid); No Local on a shared subscription is a Protocol Error [MQTT-3.8.3-4].
* UNSUBSCRIBE: 0x00 or 0x11 (no subscription existed) per filter.
* DISCONNECT: 0x04 asks for the Will all the same; a new Session Expiry Interval, which may not
  turn a session that ended with its connection into one that does not [MQTT-3.14.2-2].
* AUTH: re-authentication with the CONNECT's enhanced authentication method
  (``mqttd.enhanced_auth``); without one, a Protocol Error.

Reason Strings go in acknowledgements only when the client did not set Request Problem
Information to 0 [MQTT-3.1.2-29].
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import structlog

from mqttd.acl import ClientAcl
from mqttd.broker import Broker
from mqttd.codec.encoder import encode
from mqttd.codec.packets import (
    NO_PROPERTIES,
    Auth,
    Disconnect,
    Pingreq,
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
    Unsubscribe,
)
from mqttd.errors import ProtocolViolation
from mqttd.message import Message
from mqttd.protocol import ClientProtocol
from mqttd.session import Session
from mqttd.subscription import (
    NO_LOCAL,
    RETAIN_AS_PUBLISHED,
    make_options,
    parse_shared,
)

log = structlog.get_logger("mqttd.protocol")

__all__ = ["ClientProtocol5"]

#: Session Expiry Interval meaning "never" (3.1.2.11.2).
NEVER_EXPIRES = 0xFFFFFFFF


class ClientProtocol5(ClientProtocol):
    """Handles the packets of one connected MQTT 5 client.

    Args:
        broker, session, acl, bridge: as for ``ClientProtocol``.
        topic_alias_maximum: the most Topic Aliases this client may use (our CONNACK's).
        session_expiry: the Session Expiry Interval the CONNECT asked for (0: the session ends
            with the connection).
        problem_information: the CONNECT's Request Problem Information (default 1).
        set_session_expiry: applies a new Session Expiry Interval from DISCONNECT.
        reauthenticate: takes an AUTH packet (enhanced re-authentication, 4.12.1).
    """

    __slots__ = (
        "_reauthenticate",
        "_set_session_expiry",
        "aliases",
        "problem_information",
        "session_expiry",
        "topic_alias_maximum",
        "will_on_disconnect",
    )

    def __init__(
        self,
        broker: Broker,
        session: Session,
        acl: ClientAcl,
        *,
        bridge: bool = False,
        topic_alias_maximum: int = 0,
        session_expiry: int = 0,
        problem_information: bool = True,
        set_session_expiry: Callable[[int], None] | None = None,
        reauthenticate: Callable[[Auth], None] | None = None,
    ) -> None:
        super().__init__(broker, session, 5, acl, bridge=bridge)
        self.topic_alias_maximum = topic_alias_maximum
        #: Topic Alias -> topic, set by this client's PUBLISH packets ([MQTT-3.3.2-12])
        self.aliases: dict[int, str] = {}
        self.session_expiry = session_expiry
        self.problem_information = problem_information
        self._set_session_expiry = set_session_expiry
        self._reauthenticate = reauthenticate
        #: DISCONNECT with 0x04: publish the Will although the client disconnected
        self.will_on_disconnect = False

    def handle(self, packet: Any) -> None:
        """See ``ClientProtocol.handle``; MQTT 5 packets."""
        _HANDLERS5[packet.__class__](self, packet)

    def _problem(self, text: str) -> Properties:
        """A Reason String for an acknowledgement, if the client wants them."""
        return Properties(reason_string=text) if self.problem_information else NO_PROPERTIES

    # -- PUBLISH ------------------------------------------------------------------------------

    def _publish5(self, packet: Publish) -> None:
        topic = packet.topic
        properties = packet.properties
        alias = properties.topic_alias
        if alias is not None:
            if not 0 < alias <= self.topic_alias_maximum:
                raise ProtocolViolation(  # [MQTT-3.3.2-9], [MQTT-3.3.2-10]
                    "topic_alias_invalid", reason_code=ReasonCode.TOPIC_ALIAS_INVALID
                )
            if topic:
                self.aliases[alias] = topic  # [MQTT-3.3.2-12]
            else:
                known = self.aliases.get(alias)
                if known is None:
                    raise ProtocolViolation(  # 3.3.2.3.4: an alias never set
                        "topic_alias_unknown", reason_code=ReasonCode.PROTOCOL_ERROR
                    )
                topic = known
        if topic.count("/") >= self.max_topic_levels:
            raise ProtocolViolation(  # [limits] max_topic_levels
                "too_many_topic_levels", reason_code=ReasonCode.TOPIC_NAME_INVALID
            )
        qos = packet.qos
        refusal = 0
        if properties.payload_format_indicator == 1 and not _is_utf8(packet.payload):
            # 3.3.2.3.2: the receiver MAY check the promise; we do, as the issue asks.
            refusal = ReasonCode.PAYLOAD_FORMAT_INVALID
            if self.logs.first("payload_format_invalid"):
                log.warning("payload_format_invalid", topic=topic)
        elif not self.acl.can_publish(topic, bridge=self.bridge):
            refusal = ReasonCode.NOT_AUTHORIZED
            self._publish_denied(topic)
        if refusal:
            # Mosquitto's answers: the reason in PUBACK/PUBREC, a QoS 0 message dropped.
            if qos == 1:
                self._ack(Puback(packet.packet_id, refusal, self._problem(_TEXT[refusal])))  # type: ignore[arg-type]
            elif qos == 2:
                self.session.receive_qos2(packet.packet_id, refusal)  # type: ignore[arg-type]
            return
        if properties is NO_PROPERTIES:
            message = Message(topic, packet.payload, qos, packet.retain)  # no clock to read
        else:
            message = Message.from_publish(
                topic, packet.payload, qos, packet.retain, properties, time.time()
            )
        if qos == 0:
            self._route(message)
            return
        # 0x10 when nobody subscribes, as Mosquitto answers; decided before routing so the
        # acknowledgement still goes first on the wire, as for MQTT 3.1.1.
        code = 0 if self.broker.has_subscribers(topic) else ReasonCode.NO_MATCHING_SUBSCRIBERS
        if qos == 1:
            self.session.acknowledge_qos1(packet.packet_id, code)  # type: ignore[arg-type]
            self._route(message)
        elif self.session.receive_qos2(packet.packet_id, code):  # type: ignore[arg-type]
            self._route(message)  # exactly once: see ClientProtocol._publish

    def _ack(self, packet: Puback) -> None:
        self.session.send_packet(encode_within(packet, self._packet_limit()))

    def _packet_limit(self) -> int:
        """The client's Maximum Packet Size (0: none)."""
        peer = self.session.peer
        return peer.maximum_packet_size if peer is not None else 0

    def _pubrec5(self, packet: Pubrec) -> None:
        self.session.on_pubrec(packet.packet_id, packet.reason_code)

    # -- SUBSCRIBE, UNSUBSCRIBE --------------------------------------------------------------

    def _subscribe5(self, packet: Subscribe) -> None:
        session = self.session
        limits = self.broker.limits
        identifiers = packet.properties.subscription_identifiers
        identifier = identifiers[0] if identifiers else 0
        room = limits.max_subscriptions_per_client - len(session.subscriptions)
        codes: list[int] = []
        granted: list[tuple[str, int]] = []
        existed: set[str] = set()
        for topic_filter, options in packet.subscriptions:
            shared = parse_shared(topic_filter)  # a malformed $share/ filter closes
            if shared is not None and options & NO_LOCAL:
                raise ProtocolViolation(  # [MQTT-3.8.3-4]
                    "no_local_on_shared_subscription", reason_code=ReasonCode.PROTOCOL_ERROR
                )
            reads = topic_filter if shared is None else shared[1]
            if reads.count("/") >= limits.max_topic_levels:
                codes.append(ReasonCode.TOPIC_FILTER_INVALID)  # [limits] max_topic_levels
                continue
            if not self.acl.can_subscribe(reads):
                codes.append(ReasonCode.NOT_AUTHORIZED)
                continue
            if topic_filter in session.subscriptions:
                existed.add(topic_filter)
            elif room <= 0:
                codes.append(ReasonCode.QUOTA_EXCEEDED)  # max_subscriptions_per_client
                continue
            else:
                room -= 1
            if self.bridge and shared is None:
                options |= NO_LOCAL | RETAIN_AS_PUBLISHED  # as for MQTT 3.1.1 bridges
            value = make_options(
                options & 3,
                no_local=bool(options & NO_LOCAL),
                retain_as_published=bool(options & RETAIN_AS_PUBLISHED),
                retain_handling=(options >> 4) & 3,
                subscription_id=identifier,
            )
            granted.append((topic_filter, value))
            codes.append(options & 3)  # Granted QoS 0-2 ([MQTT-3.9.3-1] order kept)
        self.broker.subscribe(session, granted)
        refused = [c for c in codes if c >= 0x80]
        if refused and self.logs.first("subscribe_refused"):
            log.warning("subscribe_refused", count=len(refused), first_code=refused[0])
        properties = self._problem("subscription refused") if refused else NO_PROPERTIES
        suback = Suback(packet.packet_id, tuple(codes), properties)
        session.send_packet(encode_within(suback, self._packet_limit()))
        subscription_ids = (identifier,) if identifier else ()
        for topic_filter, value in granted:
            handling = (value >> 4) & 3
            # Retain Handling: 0 send retained messages, 1 only for a new subscription,
            # 2 never ([MQTT-3.3.1-9], [MQTT-3.3.1-10], [MQTT-3.3.1-11]).
            if handling == 2 or (handling == 1 and topic_filter in existed):
                continue
            self.broker.deliver_retained(session, topic_filter, value & 3, subscription_ids)

    def _unsubscribe5(self, packet: Unsubscribe) -> None:
        subscriptions = self.session.subscriptions
        codes = tuple(
            ReasonCode.SUCCESS if f in subscriptions else ReasonCode.NO_SUBSCRIPTION_EXISTED
            for f in packet.topic_filters
        )
        self.broker.unsubscribe(self.session, packet.topic_filters)
        # One reason code per filter, in order ([MQTT-3.11.3-1], [MQTT-3.11.3-2]).
        unsuback = Unsuback(packet.packet_id, reason_codes=codes)
        self.session.send_packet(encode(unsuback, version=5))

    # -- DISCONNECT, AUTH -------------------------------------------------------------------

    def _disconnect5(self, packet: Disconnect) -> None:
        expiry = packet.properties.session_expiry_interval
        if expiry is not None:
            if self.session_expiry == 0 and expiry != 0:
                raise ProtocolViolation(  # [MQTT-3.14.2-2]
                    "session_expiry_set_after_zero", reason_code=ReasonCode.PROTOCOL_ERROR
                )
            self.session_expiry = expiry
            if self._set_session_expiry is not None:
                self._set_session_expiry(expiry)
        # 0x04 keeps the Will; any other reason discards it ([MQTT-3.14.4-3]).
        self.will_on_disconnect = packet.reason_code == ReasonCode.DISCONNECT_WITH_WILL
        self.disconnected = True

    def _auth(self, packet: Auth) -> None:
        # 4.12.1: re-authentication with the CONNECT's method; without enhanced
        # authentication at CONNECT, an AUTH is a Protocol Error.
        if self._reauthenticate is None:
            raise ProtocolViolation("auth_without_enhanced_authentication", reason_code=0x82)
        self._reauthenticate(packet)


def encode_within(packet: Any, limit: int) -> bytes:
    """``packet`` encoded for MQTT 5, without its properties (the Reason String) when they
    would make it larger than the client's Maximum Packet Size ``limit`` (0: none)
    ([MQTT-3.1.2-24]; 3.4.2.2.2 and the like: the Reason String is left out first)."""
    data = encode(packet, version=5)
    if limit and len(data) > limit and packet.properties is not NO_PROPERTIES:
        data = encode(dataclasses.replace(packet, properties=NO_PROPERTIES), version=5)
    return data


def _is_utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


_TEXT: dict[int, str] = {
    ReasonCode.NOT_AUTHORIZED: "not authorised",
    ReasonCode.PAYLOAD_FORMAT_INVALID: "payload is not UTF-8",
}

_HANDLERS5: dict[type, Callable[[ClientProtocol5, Any], None]] = {
    Publish: ClientProtocol5._publish5,
    Puback: ClientProtocol._puback,
    Pubrec: ClientProtocol5._pubrec5,
    Pubrel: ClientProtocol._pubrel,
    Pubcomp: ClientProtocol._pubcomp,
    Subscribe: ClientProtocol5._subscribe5,
    Unsubscribe: ClientProtocol5._unsubscribe5,
    Pingreq: ClientProtocol._pingreq,
    Disconnect: ClientProtocol5._disconnect5,
    Auth: ClientProtocol5._auth,
}
