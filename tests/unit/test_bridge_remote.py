"""mqttd as the remote of a bridge: the CONNECT bridge bit (0x84 / 0x83, Mosquitto's
try_private) and no echo of a bridge's own messages."""

from __future__ import annotations

import pytest

from mqttd.broker import Broker
from mqttd.codec.decoder import Decoder
from mqttd.config import LimitsConfig
from mqttd.errors import ProtocolError
from mqttd.protocol import ClientProtocol
from mqttd.session import Session
from tests.helpers import wire

LIMITS = LimitsConfig()


def local_client(broker: Broker, client_id: str, *filters: tuple[str, int]) -> Session:
    """A connected client session with subscriptions."""
    session, _ = broker.open_session(client_id, True)
    session.attach(lambda: None)
    broker.subscribe(session, filters)
    return session


def outbox(session: Session) -> list[bytes]:
    return wire.Framer().feed_raw(session.take_outbox())


@pytest.mark.parametrize(("level", "name"), [(0x84, "MQTT"), (0x83, "MQIsdp")])
def test_decoder_accepts_the_bridge_bit(level: int, name: str) -> None:
    """0x84 / 0x83 decode as a 3.1.1 / 3.1 CONNECT from a bridge."""
    decoder = Decoder()
    decoder.receive_data(wire.connect("c", proto=(name, level)))
    packet = decoder.next_packet()
    assert packet.protocol_level == level - 0x80  # type: ignore[union-attr]
    assert decoder.bridge


@pytest.mark.parametrize("level", [0x80, 0x85, 0xFF])
def test_decoder_refuses_other_high_levels(level: int) -> None:
    """Only a known level with the bridge bit is accepted; others get CONNACK 0x01."""
    decoder = Decoder()
    decoder.receive_data(wire.connect("c", proto=("MQTT", level)))
    with pytest.raises(ProtocolError) as raised:
        decoder.next_packet()
    assert raised.value.connack_code == 1


def test_bridge_connection_does_not_get_its_own_messages_back() -> None:
    """A bridge's PUBLISH reaches every subscriber but the bridge itself; others' reach it."""
    broker = Broker(LIMITS)
    bridge = local_client(broker, "bridge", ("#", 1))
    other = local_client(broker, "other", ("#", 1))
    acl = _AllowAll()
    from_bridge = ClientProtocol(broker, bridge, 4, acl, bridge=True)  # type: ignore[arg-type]
    from_other = ClientProtocol(broker, other, 4, acl)  # type: ignore[arg-type]
    decoder = Decoder(server=False)
    decoder.receive_data(wire.publish("t", b"b", qos=1, pid=1) + wire.publish("t", b"o", 0))
    from_bridge.handle(decoder.next_packet())  # type: ignore[arg-type]
    assert outbox(bridge) == [wire.puback(1)]
    assert outbox(other) == [wire.publish("t", b"b", qos=1, pid=1)]
    from_other.handle(decoder.next_packet())  # type: ignore[arg-type]
    assert outbox(bridge) == [wire.publish("t", b"o")]
    assert outbox(other) == [wire.publish("t", b"o")]
    assert bridge.may_receive is None  # the refusal lasted only while routing


class _AllowAll:
    """An ACL that allows everything."""

    allows_everything = True

    def can_publish(self, topic: str) -> bool:
        return True

    def can_subscribe(self, topic_filter: str) -> bool:
        return True

    def can_receive(self, topic: str) -> bool:
        return True
