"""Per-connection MQTT rules after a successful CONNECT, pure and synchronous.

``ClientProtocol.handle(packet)`` applies one decoded client packet to the broker and the
client's session; replies go to the session's outbox. The CONNECT exchange itself (authentication,
client-id takeover) needs I/O and lives in ``connection.py``; everything after it is here.
"""

from __future__ import annotations

from collections.abc import Callable

from mqttd.broker import Broker
from mqttd.codec.encoder import encode
from mqttd.codec.packets import (
    Connack,
    Connect,
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
)
from mqttd.errors import ProtocolViolation
from mqttd.session import Session

_PINGRESP = b"\xd0\x00"


def connack_bytes(session_present: bool, return_code: int) -> bytes:
    """CONNACK; Session Present is 0 whenever the return code is non-zero ([MQTT-3.2.2-4])."""
    return encode(Connack(session_present and return_code == 0, return_code))


class ClientProtocol:
    """Handles the packets of one connected client.

    Args:
        broker: the shared broker state.
        session: the session this connection is attached to.
        protocol_level: 4 for MQTT 3.1.1, 3 for MQTT 3.1.
    """

    def __init__(self, broker: Broker, session: Session, protocol_level: int) -> None:
        self.broker = broker
        self.session = session
        self.protocol_level = protocol_level
        self.disconnected = False  # a DISCONNECT was received: discard the Will
        self._handlers: dict[type, Callable[[Packet], None]] = {
            Publish: self._publish,  # type: ignore[dict-item]
            Puback: self._puback,  # type: ignore[dict-item]
            Pubrec: self._pubrec,  # type: ignore[dict-item]
            Pubrel: self._pubrel,  # type: ignore[dict-item]
            Pubcomp: self._pubcomp,  # type: ignore[dict-item]
            Subscribe: self._subscribe,  # type: ignore[dict-item]
            Unsubscribe: self._unsubscribe,  # type: ignore[dict-item]
            Pingreq: self._pingreq,  # type: ignore[dict-item]
            Disconnect: self._disconnect,  # type: ignore[dict-item]
            Connect: self._connect,  # type: ignore[dict-item]
        }

    def handle(self, packet: Packet) -> bool:
        """Apply one packet. Returns False once the client has sent DISCONNECT.

        Raises:
            ProtocolViolation: the packet is not allowed now (the connection must close,
                [MQTT-4.8.0-1]).
        """
        handler = self._handlers.get(type(packet))
        if handler is None:
            raise ProtocolViolation(f"unexpected_{type(packet).__name__.lower()}")
        handler(packet)
        return not self.disconnected

    def _publish(self, packet: Publish) -> None:
        qos = packet.qos
        if qos == 0:
            self.broker.publish(packet.topic, packet.payload, 0, packet.retain)
        elif qos == 1:
            # PUBACK and routing happen in the same synchronous step, so ownership passes to
            # the broker as the ack is queued ([MQTT-4.3.2-2]); the ack goes first on the wire,
            # as with Mosquitto, even when the publisher is also a subscriber.
            self.session.acknowledge_qos1(packet.packet_id)  # type: ignore[arg-type]
            self.broker.publish(packet.topic, packet.payload, 1, packet.retain)
        elif self.session.receive_qos2(packet.packet_id):  # type: ignore[arg-type]
            # Method A of [MQTT-4.3.3-2]: deliver on first receipt, then refuse to deliver a
            # re-sent packet id again until its PUBREL -- exactly once, with no limit on how many
            # QoS 2 messages a publisher may leave unreleased.
            self.broker.publish(packet.topic, packet.payload, 2, packet.retain)

    def _puback(self, packet: Puback) -> None:
        self.session.on_puback(packet.packet_id)

    def _pubrec(self, packet: Pubrec) -> None:
        self.session.on_pubrec(packet.packet_id)

    def _pubrel(self, packet: Pubrel) -> None:
        self.session.release_qos2(packet.packet_id)

    def _pubcomp(self, packet: Pubcomp) -> None:
        self.session.on_pubcomp(packet.packet_id)

    def _subscribe(self, packet: Subscribe) -> None:
        codes = self.broker.subscribe(self.session, packet.subscriptions)
        # SUBACK with the same packet id, one code per filter in order ([MQTT-3.8.4-1],
        # [MQTT-3.8.4-4], [MQTT-3.9.3-1]), before any retained message it triggers.
        self.session.send_packet(encode(Suback(packet.packet_id, tuple(codes))))
        for (topic_filter, _requested), granted in zip(packet.subscriptions, codes, strict=True):
            if granted <= 2:
                self.broker.deliver_retained(self.session, topic_filter, granted)

    def _unsubscribe(self, packet: Unsubscribe) -> None:
        self.broker.unsubscribe(self.session, packet.topic_filters)
        # Always UNSUBACK, even when nothing matched ([MQTT-3.10.4-4], [MQTT-3.10.4-5]).
        self.session.send_packet(encode(Unsuback(packet.packet_id)))

    def _pingreq(self, packet: Pingreq) -> None:
        self.session.send_packet(_PINGRESP)  # [MQTT-3.12.4-1]

    def _disconnect(self, packet: Disconnect) -> None:
        self.disconnected = True  # the Will is discarded ([MQTT-3.14.4-3])

    def _connect(self, packet: Connect) -> None:
        raise ProtocolViolation("second_connect")  # [MQTT-3.1.0-2]
