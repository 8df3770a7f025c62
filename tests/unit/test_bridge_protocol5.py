"""The client side of an MQTT 5 bridge connection (``protocol = "5"``), without trio.

Bytes are built and checked with ``conformance.wire`` (its ``version=5`` builders), which is
independent of ``mqttd.codec``; the broker is a real ``Broker`` with plain sessions as local
clients (MQTT 5 ones get a ``Peer``, as an MQTT 5 connection gives them).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from structlog.testing import capture_logs

from conformance import wire
from mqttd.bridge.protocol import (
    NEED_DATA,
    Close,
    LinkProtocol,
    LinkSettings,
    LinkState,
    LinkUp,
    connect_bytes,
)
from mqttd.bridge.session import open_bridge_session
from mqttd.bridge.topics import TopicMap
from mqttd.broker import Broker
from mqttd.codec.packets import Properties
from mqttd.config import BridgeConfig, LimitsConfig
from mqttd.config import BridgeTopicConfig as T
from mqttd.message import Message
from mqttd.session import Peer, Session

LIMITS = LimitsConfig()
NL_RAP = wire.subscription_options(0, no_local=True, retain_as_published=True)

#: A publisher's properties, in the order the wire carries them (property identifier order,
#: the User Properties in the publisher's order).
PROPERTIES = Properties(
    payload_format_indicator=1,
    content_type="text/plain",
    response_topic="reply/here",
    correlation_data=b"\x00\x01corr",
    user_properties=(("origin", "edge"), ("trace", "42"), ("origin", "again")),
)
PROPERTIES_WIRE: list[tuple[int, Any]] = [
    (wire.PAYLOAD_FORMAT_INDICATOR, 1),
    (wire.CONTENT_TYPE, "text/plain"),
    (wire.RESPONSE_TOPIC, "reply/here"),
    (wire.CORRELATION_DATA, b"\x00\x01corr"),
    (wire.USER_PROPERTY, ("origin", "edge")),
    (wire.USER_PROPERTY, ("trace", "42")),
    (wire.USER_PROPERTY, ("origin", "again")),
]


class Link5:
    """A broker, its bridge session and one MQTT 5 LinkProtocol, with the remote by hand."""

    def __init__(
        self,
        *topics: T,
        protocol: str = "5",
        broker: Broker | None = None,
        clock: float = 1000.0,
        **settings: Any,
    ) -> None:
        self.broker = broker or Broker(LIMITS)
        self.config = BridgeConfig(
            name="b", address=("remote",), topics=topics or (T("#", "both", 2),)
        )
        self.session = open_bridge_session(self.broker, self.config, TopicMap(self.config.topics))
        self.settings = LinkSettings(
            "edge",
            protocol=protocol,
            subscriptions=tuple(self.session.topics.in_subscriptions),
            **settings,
        )
        self.clock = clock
        self.now = 100.0
        self.protocol = self.open()

    @property
    def version(self) -> int:
        return 5 if self.settings.protocol == "5" else 4

    def open(self) -> LinkProtocol:
        return LinkProtocol(
            self.settings, self.broker, self.session, self.now, lambda: None, clock=self._clock
        )

    def _clock(self) -> float:
        return self.clock

    def feed(self, *packets: bytes) -> object:
        self.protocol.receive_data(b"".join(packets))
        return self.protocol.next_action(self.now)

    def sent(self) -> list[bytes]:
        """The packets the protocol wants to write, one bytes object each."""
        return wire.Framer().feed_raw(self.protocol.data_to_send())

    def up(
        self,
        session_present: bool = False,
        properties: list[tuple[int, Any]] | None = None,
    ) -> None:
        """CONNACK (with ``properties``) and SUBACK, so the link is up."""
        self.sent()  # the CONNECT
        if self.version == 5:
            connack = wire.connack(session_present, 0, version=5, properties=properties)
        else:
            connack = wire.connack(session_present, 0)
        action = self.feed(connack)
        if self.settings.subscriptions:
            assert action is NEED_DATA
            self.sent()  # the SUBSCRIBE
            codes = [q for _, q in self.settings.subscriptions]
            suback = (
                wire.suback(1, codes, version=5) if self.version == 5 else wire.suback(1, codes)
            )
            action = self.feed(suback)
        assert action == LinkUp(session_present)
        assert self.protocol.state is LinkState.UP


def local_client(
    broker: Broker, client_id: str, *filters: tuple[str, int], mqtt5: bool = True
) -> Session:
    """A connected local client session with subscriptions (an MQTT 5 one by default)."""
    session, _ = broker.open_session(client_id, True)
    if mqtt5:
        session.peer = Peer()
    session.attach(lambda: None)
    broker.subscribe(session, filters)
    return session


def outbox(session: Session) -> list[bytes]:
    return wire.Framer().feed_raw(session.take_outbox())


def publish5(topic: str, payload: bytes, qos: int = 0, **kwargs: Any) -> bytes:
    return wire.publish(topic, payload, qos, version=5, **kwargs)


# -- CONNECT and SUBSCRIBE ---------------------------------------------------------------------


@pytest.mark.parametrize("try_private", [True, False])
def test_connect_keeps_the_session_with_expiry_never(try_private: bool) -> None:
    """clean_session = false: Clean Start 0 and Session Expiry Interval 0xFFFFFFFF; no
    try_private bit on an MQTT 5 CONNECT (No Local does its work)."""
    settings = LinkSettings(
        "edge", username="u", password="p", keepalive=30, protocol="5", try_private=try_private
    )
    expected = wire.connect(
        "edge",
        False,
        30,
        username="u",
        password=b"p",
        version=5,
        properties=[(wire.SESSION_EXPIRY_INTERVAL, 0xFFFFFFFF)],
    )
    assert connect_bytes(settings) == expected


def test_clean_session_is_clean_start_with_expiry_zero() -> None:
    """clean_session = true: Clean Start 1 and no Session Expiry Interval (0); the Maximum
    Packet Size this side accepts is announced, as a whole-packet size."""
    settings = LinkSettings("edge", clean_session=True, protocol="5", max_packet_size=1000)
    expected = wire.connect(
        "edge", True, 60, version=5, properties=[(wire.MAXIMUM_PACKET_SIZE, 1000 + 1 + 2)]
    )
    assert connect_bytes(settings) == expected


def test_password_without_username_is_allowed() -> None:
    """MQTT 5 allows a Password without a User Name (3.1.2.9)."""
    settings = LinkSettings("edge", password="token", protocol="5")
    assert connect_bytes(settings) == wire.connect(
        "edge",
        False,
        60,
        password=b"token",
        version=5,
        properties=[(wire.SESSION_EXPIRY_INTERVAL, 0xFFFFFFFF)],
    )


def test_in_topics_are_subscribed_no_local_and_retain_as_published() -> None:
    """Each in-topic's SUBSCRIBE option has No Local and Retain As Published; a shared
    subscription has no No Local ([MQTT-3.8.3-4])."""
    link = Link5(T("a/#", "in", 1, "l/", "r/"), T("b", "both", 2), T("$share/g/c", "in", 0))
    link.sent()
    assert link.feed(wire.connack(False, 0, version=5)) is NEED_DATA
    options = [1 | NL_RAP, 2 | NL_RAP, wire.subscription_options(0, retain_as_published=True)]
    assert link.sent() == [
        wire.subscribe(1, list(zip(["r/a/#", "b", "$share/g/c"], options, strict=True)), version=5)
    ]
    assert link.feed(wire.suback(1, [1, 2, 0], version=5)) == LinkUp(False)


@pytest.mark.parametrize("code", [0x80, 0x86, 0x87, 0x8A, 0x9C])
def test_refused_connack_closes_with_its_reason_code(code: int) -> None:
    """A CONNACK reason code of 0x80 or more ends the link and says why."""
    link = Link5()
    link.sent()
    assert link.feed(wire.connack(False, code, version=5)) == Close("connect_refused", code)


def test_refused_subscription_is_logged_with_its_reason_code() -> None:
    """SUBACK 0x87 for one filter: a warning naming it; the link carries what was granted."""
    link = Link5(T("a", "in", 1), T("b", "in", 1))
    link.sent()
    link.feed(wire.connack(False, 0, version=5))
    link.sent()
    with capture_logs() as logs:
        assert link.feed(wire.suback(1, [0x87, 1], version=5)) == LinkUp(False)
    (warning,) = [e for e in logs if e["event"] == "bridge_subscribe_refused"]
    assert (warning["first"], warning["reason_code"], warning["count"]) == ("a", 0x87, 1)


def test_server_keep_alive_replaces_the_keep_alive() -> None:
    """Server Keep Alive in CONNACK is the Keep Alive from then on [MQTT-3.2.2-22]."""
    link = Link5(T("#", "out", 1), keepalive=60)
    link.up(properties=[(wire.SERVER_KEEP_ALIVE, 5)])
    link.protocol.sent(100.0)
    assert link.protocol.deadline() == 105.0


# -- out: properties, reason codes, what the remote takes -------------------------------------


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_local_message_goes_out_with_its_properties(qos: int) -> None:
    """A local MQTT 5 message reaches the remote with its properties unchanged and in order,
    and with the Message Expiry Interval it has left."""
    link = Link5(T("a/#", "out", 2, "l/", "r/"))
    link.up()
    message = Message.from_publish(
        "l/a/x", b"v", qos, False, Properties(message_expiry_interval=3600), time.time()
    )
    message.properties = PROPERTIES
    link.broker.publish_message(message)
    expected = [(wire.MESSAGE_EXPIRY_INTERVAL, 3600), *PROPERTIES_WIRE]
    pid = 1 if qos else None
    assert link.sent() == [publish5("r/a/x", b"v", qos, pid=pid, properties=expected)]


def test_a_31_bridge_sends_no_properties() -> None:
    """Over MQTT 3.1.1 the message crosses without its properties."""
    link = Link5(T("#", "out", 1), protocol="3.1.1")
    link.up()
    message = Message("t", b"v", 1, properties=PROPERTIES)
    link.broker.publish_message(message)
    assert link.sent() == [wire.publish("t", b"v", 1, pid=1)]


def test_refused_puback_ends_the_delivery_once() -> None:
    """PUBACK 0x87: the delivery is over (no re-send on the next link); counted; logged once."""
    link = Link5(T("#", "out", 1))
    link.up()
    for payload in (b"one", b"two", b"three"):
        link.broker.publish("t", payload, 1, False)
    assert len(link.sent()) == 3
    with capture_logs() as logs:
        link.feed(
            wire.puback(1, reason=0x87, properties=[(wire.REASON_STRING, "not authorised")]),
            wire.puback(2, reason=0x97),
            wire.puback(3, reason=0x10),  # No matching subscribers: a success
        )
    assert not link.session.inflight
    assert link.session.refused == 2
    refusals = [e for e in logs if e["event"] == "bridge_message_refused"]
    assert refusals == [
        {
            "event": "bridge_message_refused",
            "log_level": "warning",
            "topic": "t",
            "reason_code": 0x87,
            "reason_string": "not authorised",
        }
    ]
    link.protocol.close()
    link.protocol = link.open()
    link.up(session_present=True)
    assert link.sent() == []


def test_refused_pubrec_gets_no_pubrel() -> None:
    """PUBREC 0x80 ends a QoS 2 delivery there: no PUBREL (4.3.3)."""
    link = Link5(T("#", "out", 2))
    link.up()
    link.broker.publish("t", b"x", 2, False)
    assert link.sent() == [publish5("t", b"x", 2, pid=1)]
    link.feed(wire.pubrec(1, reason=0x80))
    assert link.sent() == []
    assert not link.session.inflight
    assert link.session.refused == 1
    link.broker.publish("t", b"y", 2, False)
    link.feed(wire.pubrec(2))
    assert link.sent()[-1] == wire.pubrel(2)


def test_receive_maximum_caps_the_window() -> None:
    """The remote's Receive Maximum bounds the QoS 1/2 messages in flight [MQTT-3.3.4-7]."""
    link = Link5(T("#", "out", 1))
    for i in range(5):
        link.broker.publish("t", b"%d" % i, 1, False)
    link.up(properties=[(wire.RECEIVE_MAXIMUM, 2)])
    assert link.sent() == [publish5("t", b"%d" % i, 1, pid=i + 1) for i in range(2)]
    link.feed(wire.puback(1))
    assert link.sent() == [publish5("t", b"2", 1, pid=3)]


def test_message_larger_than_the_remote_takes_is_dropped_and_counted() -> None:
    """Maximum Packet Size: a larger PUBLISH is never sent [MQTT-3.1.2-25], at any QoS, and
    does not wait in flight; it is counted and logged once; smaller ones go."""
    link = Link5(T("#", "out", 1))
    link.up(properties=[(wire.MAXIMUM_PACKET_SIZE, 40)])
    with capture_logs() as logs:
        link.broker.publish("t", b"x" * 100, 1, False)
        link.broker.publish("t", b"y" * 100, 0, False)
        link.broker.publish("t", b"small", 1, False)
    assert link.sent() == [publish5("t", b"small", 1, pid=2)]
    assert list(link.session.inflight) == [2]
    assert link.session.too_large == 2
    assert [e["event"] for e in logs] == ["bridge_message_too_large"]


def test_maximum_qos_caps_queued_and_new_messages() -> None:
    """Maximum QoS 1: what waited at QoS 2 and what comes later go at QoS 1 [MQTT-3.2.2-11]."""
    link = Link5(T("#", "out", 2))
    link.broker.publish("t", b"queued", 2, False)
    link.up(properties=[(wire.MAXIMUM_QOS, 1)])
    link.broker.publish("t", b"new", 2, False)
    assert link.sent() == [publish5("t", b"queued", 1, pid=1), publish5("t", b"new", 1, pid=2)]
    link.feed(wire.puback(1), wire.puback(2))
    assert not link.session.inflight


def test_maximum_qos_zero_sends_what_was_in_flight_at_qos0() -> None:
    """Maximum QoS 0 on a new link: QoS 1 messages in flight and queued go at QoS 0, in order,
    and nothing waits for an acknowledgement."""
    link = Link5(T("#", "out", 1))
    link.up()
    link.broker.publish("t", b"a", 1, False)
    link.sent()
    link.protocol.close()
    link.broker.publish("t", b"b", 1, False)
    link.protocol = link.open()
    link.up(properties=[(wire.MAXIMUM_QOS, 0)])
    assert link.sent() == [publish5("t", b"a"), publish5("t", b"b")]
    assert not link.session.inflight
    assert not link.session.queue
    assert link.session.queued_bytes == 0


def test_retain_available_zero_clears_retain() -> None:
    """Retain Available 0: nothing goes with RETAIN 1 [MQTT-3.2.2-14]."""
    link = Link5(T("#", "out", 1))
    link.up(properties=[(wire.RETAIN_AVAILABLE, 0)])
    link.broker.publish("t", b"x", 1, True)
    assert link.sent() == [publish5("t", b"x", 1, pid=1)]


# -- in: properties, aliases ------------------------------------------------------------------


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_remote_message_keeps_its_properties(qos: int) -> None:
    """A PUBLISH from the remote reaches an MQTT 5 subscriber here renamed, with its
    properties; the Message Expiry Interval counts from its arrival."""
    link = Link5(T("a/#", "in", 2, "l/", "r/"), clock=time.time())
    client = local_client(link.broker, "c", ("l/#", 2))
    link.up()
    pid = 7 if qos else None
    expiry = [(wire.MESSAGE_EXPIRY_INTERVAL, 3600)]
    link.feed(publish5("r/a/x", b"v", qos, pid=pid, properties=[*expiry, *PROPERTIES_WIRE]))
    (delivered,) = outbox(client)
    packet = wire.parse(delivered, version=5)
    assert (packet.topic, packet.payload, packet.qos) == (b"l/a/x", b"v", qos)
    assert packet.user_properties == [("origin", "edge"), ("trace", "42"), ("origin", "again")]
    assert packet.props[0] == (wire.MESSAGE_EXPIRY_INTERVAL, 3600)
    assert list(packet.props[1:]) == PROPERTIES_WIRE
    acks = {0: [], 1: [wire.puback(7)], 2: [wire.pubrec(7)]}[qos]
    assert link.sent() == acks


def test_remote_message_expiry_is_kept_with_the_message() -> None:
    """The Message Expiry Interval of a message from the remote counts from its arrival here
    (a retained one leaves the store when it runs out)."""
    link = Link5(T("#", "in", 1), clock=5000.0)
    link.up()
    link.feed(
        publish5(
            "t",
            b"v",
            1,
            retain=True,
            pid=1,
            properties=[(wire.MESSAGE_EXPIRY_INTERVAL, 60), (wire.SUBSCRIPTION_IDENTIFIER, 9)],
        )
    )
    retained = link.broker.retained.get("t")
    assert retained is not None
    assert retained.expires_at == 5060.0
    assert retained.properties == Properties()  # the remote's Subscription Identifier stays there


def test_a_31_subscriber_here_gets_the_message_without_properties() -> None:
    """An MQTT 3.1.1 subscriber here gets a v5 remote's message as a plain PUBLISH."""
    link = Link5(T("#", "in", 1))
    client = local_client(link.broker, "c", ("#", 1), mqtt5=False)
    link.up()
    link.feed(publish5("t", b"v", 1, pid=3, properties=PROPERTIES_WIRE))
    assert outbox(client) == [wire.publish("t", b"v", 1, pid=1)]


def test_incoming_message_is_not_sent_back() -> None:
    """No loop over MQTT 5 either: a message from the remote is not offered to the bridge's
    own session (No Local keeps the remote from doing the same)."""
    link = Link5(T("#", "both", 1))
    link.up()
    link.feed(publish5("t", b"v", 1, pid=3))
    assert link.sent() == [wire.puback(3)]


def test_topic_alias_from_the_remote_is_a_protocol_error() -> None:
    """The CONNECT allowed no Topic Alias: one from the remote closes the link, after a
    DISCONNECT 0x94 Topic Alias invalid."""
    link = Link5(T("#", "in", 1))
    link.up()
    action = link.feed(publish5("t", b"v", 1, pid=1, properties=[(wire.TOPIC_ALIAS, 1)]))
    assert action == Close("topic_alias_invalid")
    assert link.protocol.farewell() == wire.disconnect(reason=0x94)
    assert link.protocol.farewell() == b""  # once


def test_malformed_input_gets_a_disconnect_with_its_reason() -> None:
    """Bytes that are not MQTT 5 end the link after DISCONNECT 0x81 Malformed Packet."""
    link = Link5(T("#", "in", 1))
    link.up()
    assert link.feed(wire.puback(1, reason=0x42)) == Close("invalid_reason_code")
    assert link.protocol.farewell() == wire.disconnect(reason=0x81)


def test_a_31_link_sends_no_farewell() -> None:
    """MQTT 3.1.1 has no DISCONNECT from the client that says why."""
    link = Link5(T("#", "in", 1), protocol="3.1.1")
    link.up()
    assert isinstance(link.feed(b"\xf0\x00"), Close)
    assert link.protocol.farewell() == b""


# -- DISCONNECT from the remote ---------------------------------------------------------------


@pytest.mark.parametrize(("code", "level"), [(0x8E, "warning"), (0x8B, "info"), (0x00, "info")])
def test_remote_disconnect_is_logged_and_ends_the_link(code: int, level: str) -> None:
    """A DISCONNECT from an MQTT 5 remote ends the link with its reason code, logged with its
    Reason String; QoS 1 messages wait for the next link."""
    link = Link5(T("#", "out", 1))
    link.up()
    link.broker.publish("t", b"x", 1, False)
    link.sent()
    with capture_logs() as logs:
        action = link.feed(wire.disconnect(reason=code, properties=[(wire.REASON_STRING, "why")]))
    assert action == Close("remote_disconnect", code)
    (entry,) = [e for e in logs if e["event"] == "bridge_remote_disconnect"]
    assert (entry["log_level"], entry["reason_code"], entry["reason_string"]) == (
        level,
        code,
        "why",
    )
    link.protocol.close()
    assert list(link.session.inflight) == [1]
