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
    """A bridge's PUBLISH reaches every subscriber but the bridge itself; others' reach it,
    with RETAIN as published (the bridge's subscriptions are No Local and Retain As Published,
    as Mosquitto treats try_private bridges)."""
    broker = Broker(LIMITS)
    bridge, _ = broker.open_session("bridge", True)
    bridge.attach(lambda: None)
    other = local_client(broker, "other", ("#", 1))
    acl = _AllowAll()
    from_bridge = ClientProtocol(broker, bridge, 4, acl, bridge=True)  # type: ignore[arg-type]
    from_other = ClientProtocol(broker, other, 4, acl)  # type: ignore[arg-type]
    decoder = Decoder()
    decoder.receive_data(wire.connect("bridge") + wire.subscribe(1, [("#", 1)]))
    decoder.next_packet()
    from_bridge.handle(decoder.next_packet())  # type: ignore[arg-type]
    assert outbox(bridge) == [wire.suback(1, [1])]
    decoder.receive_data(
        wire.publish("t", b"b", qos=1, pid=1) + wire.publish("t", b"o", retain=True)
    )
    from_bridge.handle(decoder.next_packet())  # type: ignore[arg-type]
    assert outbox(bridge) == [wire.puback(1)]
    assert outbox(other) == [wire.publish("t", b"b", qos=1, pid=1)]
    from_other.handle(decoder.next_packet())  # type: ignore[arg-type]
    assert outbox(bridge) == [wire.publish("t", b"o", retain=True)]
    assert outbox(other) == [wire.publish("t", b"o")]


class _AllowAll:
    """An ACL that allows everything."""

    allows_everything = True

    def can_publish(self, topic: str, *, bridge: bool = False) -> bool:
        return True

    def can_subscribe(self, topic_filter: str) -> bool:
        return True

    def can_receive(self, topic: str) -> bool:
        return True


@pytest.mark.parametrize(
    ("topic", "bridge", "allowed"),
    [
        ("$SYS/broker/connection/edge-1/state", True, True),
        ("$SYS/broker/connection/edge-1/state", False, False),
        ("$SYS/broker/connection//state", True, False),
        ("$SYS/broker/connection/a/b/state", True, False),
        ("$SYS/broker/clients/connected", True, False),
        ("$other/x", True, False),
        ("plain", False, True),
    ],
)
def test_only_a_bridge_may_publish_its_connection_state(
    topic: str, bridge: bool, allowed: bool
) -> None:
    """A Mosquitto bridge's notification topic (its Will and its first PUBLISH) is the one
    ``$`` topic a bridge may write, whatever its name; other clients may write only their own
    (see test_acl.py), and this ACL knows no client id (Mosquitto lets anyone)."""
    from mqttd.acl import ClientAcl

    acl = ClientAcl(None, False)
    assert acl.can_publish(topic, bridge=bridge) is allowed


def test_a_bridge_state_will_is_accepted_from_a_bridge_or_its_own_client() -> None:
    """A Mosquitto bridge's default CONNECT carries a Will on its state topic: accepted (and
    published on loss) for a bridge connection, and for a client whose id the topic names
    (Mosquitto's MQTT 5 bridge has no bridge bit); 0x05 for any other client."""
    from mqttd.access import AccessControl
    from mqttd.config import Config, ListenerConfig
    from mqttd.connection_protocol import Close, ConnectionProtocol, TakeOver

    topic = "$SYS/broker/connection/edge/state"
    listener = ListenerConfig(type="tcp", host="127.0.0.1", port=0)
    config = Config(listeners=[listener])
    broker = Broker(LIMITS)

    class Server:
        shutting_down = False

    server = Server()
    server.broker = broker  # type: ignore[attr-defined]
    server.access = AccessControl(config)  # type: ignore[attr-defined]
    watcher = local_client(broker, "watcher", ("$SYS/broker/connection/#", 1))
    sent = 0
    for level, client_id, accepted in ((0x84, "b1", True), (0x04, "b2", False), (4, "edge", True)):
        connection = ConnectionProtocol(server, listener, 0.0, lambda: None)  # type: ignore[arg-type]
        connection.receive_data(
            wire.connect(client_id, proto=("MQTT", level), will=(topic, b"0", 1, True))
        )
        action = connection.next_action(0.0)
        if not accepted:
            assert isinstance(action, Close)
            assert connection.data_to_send() == wire.connack(False, 5)
            continue
        assert isinstance(action, TakeOver)
        connection.taken_over(0.0)
        connection.close("peer_closed", 1.0)
        sent += 1
        assert outbox(watcher) == [wire.publish(topic, b"0", qos=1, pid=sent)]
        assert broker.retained.get(topic) is not None
