"""ClientProtocol without sockets: one connected client's packets applied to a real Broker,
replies read back from its session's outbox and compared with hand-built bytes."""

from __future__ import annotations

import dataclasses

import pytest

from mqttd.acl import Acl
from mqttd.broker import Broker
from mqttd.codec import (
    Connack,
    Disconnect,
    Pingreq,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Subscribe,
    Unsubscribe,
    encode,
)
from mqttd.config import LimitsConfig
from mqttd.errors import ProtocolViolation
from mqttd.protocol import ClientProtocol, connack_bytes
from mqttd.session import Session
from tests.helpers import wire


def client(
    broker: Broker, client_id: str = "c", *, acl: Acl | None = None, level: int = 4
) -> ClientProtocol:
    session, _ = broker.open_session(client_id, True)
    session.attach(lambda: None)
    rules = (acl or Acl.allow_all()).for_client(username=None, client_id=client_id)
    return ClientProtocol(broker, session, level, rules)


def out(protocol: ClientProtocol) -> bytes:
    return protocol.session.take_outbox()


def broker(**limits: object) -> Broker:
    return Broker(dataclasses.replace(LimitsConfig(), **limits))  # type: ignore[arg-type]


def test_publish_qos0_is_routed_without_reply() -> None:
    """QoS 0: routed to subscribers, nothing sent back [MQTT-4.3.1-1]."""
    b = broker()
    sub, pub = client(b, "sub"), client(b, "pub")
    sub.handle(Subscribe(1, (("t", 0),)))
    out(sub)
    pub.handle(Publish("t", b"x"))
    assert out(pub) == b""
    assert out(sub) == wire.publish("t", b"x")


def test_publish_qos1_acknowledged_then_routed() -> None:
    """QoS 1: PUBACK with the packet id, and the message is routed [MQTT-4.3.2-2]."""
    b = broker()
    sub, pub = client(b, "sub"), client(b, "pub")
    sub.handle(Subscribe(1, (("t", 1),)))
    out(sub)
    pub.handle(Publish("t", b"x", qos=1, packet_id=9))
    assert out(pub) == wire.puback(9)
    assert out(sub) == wire.publish("t", b"x", qos=1, pid=1)


def test_publish_qos2_exactly_once_until_pubrel() -> None:
    """QoS 2 (method A of [MQTT-4.3.3-2]): routed on first receipt; a re-send of the same id
    before PUBREL is acknowledged again but not routed again; PUBREL gets PUBCOMP."""
    b = broker()
    sub, pub = client(b, "sub"), client(b, "pub")
    sub.handle(Subscribe(1, (("t", 0),)))
    out(sub)
    pub.handle(Publish("t", b"x", qos=2, packet_id=5))
    pub.handle(Publish("t", b"x", qos=2, packet_id=5, dup=True))
    assert out(pub) == wire.pubrec(5) * 2
    assert out(sub) == wire.publish("t", b"x")
    pub.handle(Pubrel(5))
    assert out(pub) == wire.pubcomp(5)
    pub.handle(Publish("t", b"y", qos=2, packet_id=5))  # the id is free again
    assert out(sub) == wire.publish("t", b"y")


def test_acks_from_the_client_complete_deliveries() -> None:
    """PUBACK, PUBREC and PUBCOMP from the subscriber drive its in-flight window."""
    b = broker()
    sub, pub = client(b, "sub"), client(b, "pub")
    sub.handle(Subscribe(1, (("a", 1), ("b", 2))))
    out(sub)
    pub.handle(Publish("a", b"1", qos=1, packet_id=1))
    pub.handle(Publish("b", b"2", qos=2, packet_id=2))
    out(sub)
    sub.handle(Puback(1))
    sub.handle(Pubrec(2))
    assert out(sub) == wire.pubrel(2)
    sub.handle(Pubcomp(2))
    assert not sub.session.inflight


def test_publish_denied_by_acl_is_acknowledged_not_routed() -> None:
    """A publish the ACL refuses is acknowledged (so the client is not confused,
    [MQTT-3.3.5-2]) and not routed; it is counted, and logged once."""
    acl = Acl.parse("topic read t\n")  # anonymous: read only
    b = broker()
    sub = client(b, "sub", acl=acl)
    pub = client(b, "pub", acl=acl)
    sub.handle(Subscribe(1, (("t", 0),)))
    out(sub)
    for pid in (1, 2, 3):
        pub.handle(Publish("t", b"x", qos=1, packet_id=pid))
    assert out(pub) == wire.puback(1) + wire.puback(2) + wire.puback(3)
    assert out(sub) == b""
    assert pub.publishes_denied == 3
    assert pub.logs.suppressed() == {"publish_denied": 2}


def test_dollar_topics_are_never_published_by_clients() -> None:
    """[MQTT-4.7.2-1] $ topics are the server's: a client's publish there is not routed."""
    b = broker()
    sub, pub = client(b, "sub"), client(b, "pub")
    sub.handle(Subscribe(1, (("$SYS/x", 0),)))
    out(sub)
    pub.handle(Publish("$SYS/x", b"fake"))
    assert out(sub) == b""


def test_too_deep_publish_is_a_protocol_violation() -> None:
    """A topic deeper than max_topic_levels closes the connection."""
    protocol = client(broker(max_topic_levels=2))
    with pytest.raises(ProtocolViolation, match="too_many_topic_levels"):
        protocol.handle(Publish("a/b/c", b"x"))


def test_suback_codes_in_order_with_refusals() -> None:
    """One SUBACK code per filter, in order ([MQTT-3.8.4-4]); a refused filter gets 0x80
    ([MQTT-3.9.3-2]) and MQTT 3.1 (which has no failure code) gets the QoS it asked for with
    nothing subscribed."""
    acl = Acl.parse("topic read ok/#\n")
    b = broker(max_topic_levels=3)
    protocol = client(b, acl=acl)
    protocol.handle(Subscribe(7, (("ok/1", 2), ("no", 1), ("ok/a/b/c", 0), ("ok/2", 0))))
    assert out(protocol) == wire.suback(7, [2, 0x80, 0x80, 0])
    assert set(protocol.session.subscriptions) == {"ok/1", "ok/2"}
    old = client(b, "old", acl=acl, level=3)
    old.handle(Subscribe(1, (("no", 1),)))
    assert out(old) == wire.suback(1, [1])
    assert not old.session.subscriptions


def test_subscription_limit_counts_new_filters_only() -> None:
    """max_subscriptions_per_client refuses new filters beyond it; re-subscribing an existing
    filter still works ([MQTT-3.8.4-3])."""
    protocol = client(broker(max_subscriptions_per_client=2))
    protocol.handle(Subscribe(1, (("a", 0), ("b", 0), ("c", 0))))
    assert out(protocol) == wire.suback(1, [0, 0, 0x80])
    protocol.handle(Subscribe(2, (("a", 1),)))
    assert out(protocol) == wire.suback(2, [1])


def test_retained_messages_follow_the_suback() -> None:
    """The SUBACK goes first, then the matching retained messages with RETAIN=1
    ([MQTT-3.3.1-6], [MQTT-3.3.1-8])."""
    b = broker()
    b.publish("r", b"kept", 0, True)
    protocol = client(b)
    protocol.handle(Subscribe(3, (("r", 0),)))
    assert out(protocol) == wire.suback(3, [0]) + wire.publish("r", b"kept", retain=True)


def test_unsubscribe_always_gets_unsuback() -> None:
    """UNSUBACK with the same id, even for a filter that was never subscribed
    ([MQTT-3.10.4-4], [MQTT-3.10.4-5])."""
    protocol = client(broker())
    protocol.handle(Subscribe(1, (("a", 0),)))
    out(protocol)
    protocol.handle(Unsubscribe(4, ("a", "never")))
    assert out(protocol) == wire.unsuback(4)
    assert not protocol.session.subscriptions


def test_pingreq_and_disconnect() -> None:
    """PINGREQ gets PINGRESP ([MQTT-3.12.4-1]); DISCONNECT marks the Will discarded."""
    protocol = client(broker())
    protocol.handle(Pingreq())
    assert out(protocol) == wire.pingresp()
    assert not protocol.disconnected
    protocol.handle(Disconnect())
    assert protocol.disconnected


def test_session_type_is_the_one_given() -> None:
    """The protocol works on the session it was given (the broker's, by client id)."""
    b = broker()
    protocol = client(b, "x")
    assert b.sessions["x"] is protocol.session
    assert isinstance(protocol.session, Session)


@pytest.mark.parametrize("present", [False, True])
@pytest.mark.parametrize("code", range(6))
def test_connack_bytes_are_the_codecs(present: bool, code: int) -> None:
    """The hand-written CONNACK is the codec's, Session Present cleared on a refusal
    ([MQTT-3.2.2-4])."""
    assert connack_bytes(present, code) == encode(Connack(present and code == 0, code))
