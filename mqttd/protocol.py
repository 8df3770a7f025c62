"""Per-connection MQTT rules after a successful CONNECT, pure and synchronous.

``ClientProtocol.handle(packet)`` applies one decoded client packet to the broker and the
client's session; replies go to the session's outbox. The connection's life around it (CONNECT,
authentication, takeover, deadlines, the Will, the close) is ``mqttd.connection_protocol``.
The decoder has already refused every packet a client may not send here (a second CONNECT,
server-to-client types), so each packet type has exactly one handler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from mqttd.acl import ClientAcl
from mqttd.broker import Broker
from mqttd.codec.encoder import encode
from mqttd.codec.packets import (
    SUBACK_FAILURE,
    Disconnect,
    Packet,
    Pingreq,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    Will,
)
from mqttd.errors import ProtocolViolation
from mqttd.logging import LogBudget
from mqttd.message import Message
from mqttd.session import Session
from mqttd.subscription import NO_LOCAL, RETAIN_AS_PUBLISHED, parse_shared

log = structlog.get_logger("mqttd.protocol")

_PINGRESP = b"\xd0\x00"


def connack_bytes(session_present: bool, return_code: int) -> bytes:
    """CONNACK; Session Present is 0 whenever the return code is non-zero ([MQTT-3.2.2-4])."""
    # The four bytes of 3.2 written directly, not through a Connack and the generic encoder:
    # 0.77 -> 0.16 us, once per connection.
    return bytes((0x20, 2, 1 if session_present and return_code == 0 else 0, return_code))


class ClientProtocol:
    """Handles the packets of one connected client.

    Args:
        broker: the shared broker state.
        session: the session this connection is attached to.
        protocol_level: 4 for MQTT 3.1.1, 3 for MQTT 3.1.
        acl: what this client may publish, subscribe to and receive.
        bridge: the client is another broker's bridge (its CONNECT had the protocol level's
            high bit set): its own messages are never routed back to it.
    """

    __slots__ = (
        "acl",
        "bridge",
        "broker",
        "disconnected",
        "logs",
        "max_topic_levels",
        "protocol_level",
        "publishes_denied",
        "session",
        "will",
    )

    def __init__(
        self,
        broker: Broker,
        session: Session,
        protocol_level: int,
        acl: ClientAcl,
        *,
        bridge: bool = False,
    ) -> None:
        self.broker = broker
        self.bridge = bridge
        self.session = session
        self.protocol_level = protocol_level
        self.acl = acl
        self.disconnected = False  # a DISCONNECT was received: discard the Will
        #: the Will to publish if the connection ends without DISCONNECT ([MQTT-3.1.2-8])
        self.will: Will | None = None
        self.publishes_denied = 0
        self.max_topic_levels = broker.limits.max_topic_levels
        #: warnings this client can trigger again and again: logged once, then counted
        self.logs = LogBudget()

    def handle(self, packet: Packet) -> None:
        """Apply one packet a client sent after CONNECT (``disconnected`` tells of DISCONNECT).

        Raises:
            ProtocolViolation: the packet is not allowed now (the connection must close,
                [MQTT-4.8.0-1]).
        """
        _HANDLERS[packet.__class__](self, packet)

    def _publish(self, packet: Publish) -> None:
        topic = packet.topic
        if topic.count("/") >= self.max_topic_levels:
            raise ProtocolViolation("too_many_topic_levels")  # [limits] max_topic_levels
        qos = packet.qos
        allowed = self.acl.can_publish(topic, bridge=self.bridge)
        if not allowed:
            self._publish_denied(topic)
        if qos == 0:
            # The most frequent path, in one frame down to the broker's router (no ``_route``).
            if allowed and not self.broker.publish_message(
                Message(topic, packet.payload, 0, packet.retain), publisher=self.session.client_id
            ):
                self._retained_refused(topic)
        elif qos == 1:
            # PUBACK and routing happen in the same synchronous step, so ownership passes to
            # the broker as the ack is queued ([MQTT-4.3.2-2]); the ack goes first on the wire,
            # as with Mosquitto, even when the publisher is also a subscriber. A refused publish
            # is acknowledged too, so the client is not confused ([MQTT-3.3.5-2]).
            self.session.acknowledge_qos1(packet.packet_id)  # type: ignore[arg-type]
            if allowed:
                self._route(Message(topic, packet.payload, 1, packet.retain))
        elif self.session.receive_qos2(packet.packet_id) and allowed:  # type: ignore[arg-type]
            # Method A of [MQTT-4.3.3-2]: deliver on first receipt, then refuse to deliver a
            # re-sent packet id again until its PUBREL -- exactly once, with no limit on how many
            # QoS 2 messages a publisher may leave unreleased.
            self._route(Message(topic, packet.payload, 2, packet.retain))

    def _route(self, message: Message) -> None:
        if not self.broker.publish_message(message, publisher=self.session.client_id):
            self._retained_refused(message.topic)

    def _retained_refused(self, topic: str) -> None:
        if self.logs.first("retained_refused"):
            # [limits] max_retained_messages / max_retained_bytes: delivered, not retained.
            log.warning(
                "retained_refused",
                topic=topic,
                retained=len(self.broker.retained),
                retained_bytes=self.broker.retained_bytes,
            )

    def _publish_denied(self, topic: str) -> None:
        # Logged once per connection (the count is in the disconnect line): a client looping
        # on a forbidden topic must not flood the log.
        if self.logs.first("publish_denied"):
            log.warning("publish_denied", topic=topic, reason="acl")
        self.publishes_denied += 1

    def _puback(self, packet: Puback) -> None:
        self.session.on_puback(packet.packet_id)

    def _pubrec(self, packet: Pubrec) -> None:
        self.session.on_pubrec(packet.packet_id)

    def _pubrel(self, packet: Pubrel) -> None:
        self.session.release_qos2(packet.packet_id)

    def _pubcomp(self, packet: Pubcomp) -> None:
        self.session.on_pubcomp(packet.packet_id)

    def _subscribe(self, packet: Subscribe) -> None:
        can_subscribe = self.acl.can_subscribe
        limits = self.broker.limits
        room = limits.max_subscriptions_per_client - len(self.session.subscriptions)
        allowed = []
        for topic_filter, qos in packet.subscriptions:
            # A shared subscription (from any MQTT version, as Mosquitto allows) is checked
            # by the filter it reads; a malformed $share/ filter closes the connection.
            shared = parse_shared(topic_filter)
            reads = topic_filter if shared is None else shared[1]
            if reads.count("/") >= limits.max_topic_levels or not can_subscribe(reads):
                continue
            if topic_filter not in self.session.subscriptions:
                if room <= 0:
                    continue  # max_subscriptions_per_client
                room -= 1
            if self.bridge and shared is None:
                # A bridge does not get its own messages back, and gets RETAIN as published,
                # as Mosquitto treats try_private bridges: otherwise two brokers bridging the
                # same topics both ways would pass every message to and fro for ever, and
                # the remote's retained state would not follow.
                qos |= NO_LOCAL | RETAIN_AS_PUBLISHED
            allowed.append((topic_filter, qos))
        codes_granted = self.broker.subscribe(self.session, allowed)
        granted = {f: code for (f, _), code in zip(allowed, codes_granted, strict=True)}
        codes = []
        for topic_filter, qos in packet.subscriptions:
            if topic_filter in granted:
                codes.append(granted[topic_filter])
            elif self.protocol_level == 3:
                # MQTT 3.1 has no failure code: the flow completes as if granted, but nothing
                # is subscribed (3.1 section 1.1; Mosquitto also never sends 0x80 to 3.1).
                codes.append(qos)
            else:
                codes.append(SUBACK_FAILURE)  # [MQTT-3.9.3-2]
        if len(allowed) < len(packet.subscriptions) and self.logs.first("subscribe_refused"):
            refused = [f for f, _ in packet.subscriptions if f not in granted]
            log.warning("subscribe_refused", count=len(refused), first=refused[0])
        # SUBACK with the same packet id, one code per filter in order ([MQTT-3.8.4-1],
        # [MQTT-3.8.4-4], [MQTT-3.9.3-1]), before any retained message it triggers.
        self.session.send_packet(encode(Suback(packet.packet_id, tuple(codes))))
        for topic_filter, qos in granted.items():
            self.broker.deliver_retained(self.session, topic_filter, qos)

    def _unsubscribe(self, packet: Unsubscribe) -> None:
        self.broker.unsubscribe(self.session, packet.topic_filters)
        # Always UNSUBACK, even when nothing matched ([MQTT-3.10.4-4], [MQTT-3.10.4-5]).
        self.session.send_packet(encode(Unsuback(packet.packet_id)))

    def _pingreq(self, packet: Pingreq) -> None:
        self.session.send_packet(_PINGRESP)  # [MQTT-3.12.4-1]

    def _disconnect(self, packet: Disconnect) -> None:
        self.disconnected = True  # the Will is discarded ([MQTT-3.14.4-3])


#: Packet type -> handler, shared by every connection (one dict, not one per client).
_HANDLERS: dict[type, Callable[[ClientProtocol, Any], None]] = {
    Publish: ClientProtocol._publish,
    Puback: ClientProtocol._puback,
    Pubrec: ClientProtocol._pubrec,
    Pubrel: ClientProtocol._pubrel,
    Pubcomp: ClientProtocol._pubcomp,
    Subscribe: ClientProtocol._subscribe,
    Unsubscribe: ClientProtocol._unsubscribe,
    Pingreq: ClientProtocol._pingreq,
    Disconnect: ClientProtocol._disconnect,
}
