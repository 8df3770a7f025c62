"""The client side of a bridge connection and the bridge's local session, without trio.

Bytes are built and checked with ``tests.helpers.wire``, which is independent of
``mqttd.codec``; the broker is a real ``Broker`` with plain sessions as local clients.
"""

from __future__ import annotations

import pytest

from mqttd.bridge.protocol import (
    NEED_DATA,
    WAIT_FOR_OUTPUT,
    Close,
    LinkProtocol,
    LinkSettings,
    LinkState,
    LinkUp,
    connect_bytes,
)
from mqttd.bridge.session import (
    BridgeSession,
    discard_unconfigured,
    open_bridge_session,
    session_id,
)
from mqttd.bridge.topics import TopicMap
from mqttd.broker import Broker
from mqttd.codec.decoder import Decoder
from mqttd.config import BridgeConfig, LimitsConfig
from mqttd.config import BridgeTopicConfig as T
from mqttd.errors import ProtocolError
from mqttd.message import Message
from mqttd.session import OfferResult, Session
from mqttd.store import StoredDelivery, StoredSession
from tests.helpers import wire

LIMITS = LimitsConfig()


class Link:
    """A broker, its bridge session and one LinkProtocol, with the remote's side by hand."""

    def __init__(
        self,
        *topics: T,
        broker: Broker | None = None,
        settings: LinkSettings | None = None,
        **config: object,
    ) -> None:
        self.broker = broker or Broker(LIMITS)
        self.config = BridgeConfig(
            name="b", address=("remote",), topics=topics or (T("#", "both", 2),), **config
        )  # type: ignore[arg-type]
        self.session = open_bridge_session(self.broker, self.config, TopicMap(self.config.topics))
        self.settings = settings or LinkSettings(
            "edge", subscriptions=tuple(self.session.topics.in_subscriptions)
        )
        self.wakes = 0
        self.now = 100.0
        self.protocol = self.open()

    def open(self) -> LinkProtocol:
        return LinkProtocol(self.settings, self.broker, self.session, self.now, self._wake)

    def _wake(self) -> None:
        self.wakes += 1

    def feed(self, *packets: bytes) -> object:
        self.protocol.receive_data(b"".join(packets))
        return self.protocol.next_action(self.now)

    def sent(self) -> list[bytes]:
        """The packets the protocol wants to write, one bytes object each."""
        return wire.Framer().feed_raw(self.protocol.data_to_send())

    def up(self, session_present: bool = False) -> None:
        """CONNACK (and SUBACK, when there are in-topics) so the link is up."""
        self.sent()  # the CONNECT
        action = self.feed(wire.connack(session_present, 0))
        if self.settings.subscriptions:
            assert action is NEED_DATA
            (subscribe,) = self.sent()
            assert subscribe == wire.subscribe(1, self.settings.subscriptions)
            action = self.feed(wire.suback(1, [q for _, q in self.settings.subscriptions]))
        assert action == LinkUp(session_present)
        assert self.protocol.state is LinkState.UP


def local_client(broker: Broker, client_id: str, *filters: tuple[str, int]) -> Session:
    """A connected local client session with subscriptions."""
    session, _ = broker.open_session(client_id, True)
    session.attach(lambda: None)
    broker.subscribe(session, filters)
    return session


def outbox(session: Session) -> list[bytes]:
    return wire.Framer().feed_raw(session.take_outbox())


# -- CONNECT -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "try_private", "proto"),
    [
        ("3.1.1", True, ("MQTT", 0x84)),
        ("3.1", True, ("MQIsdp", 0x83)),
        ("3.1.1", False, ("MQTT", 4)),
        ("3.1", False, ("MQIsdp", 3)),
    ],
)
def test_connect_sets_the_bridge_bit_with_try_private(
    protocol: str, try_private: bool, proto: tuple[str, int]
) -> None:
    """try_private sets the protocol level's high bit, as Mosquitto's bridges do."""
    settings = LinkSettings(
        "edge.host",
        username="u",
        password="p",
        keepalive=30,
        protocol=protocol,
        try_private=try_private,
    )
    expected = wire.connect("edge.host", False, 30, username="u", password=b"p", proto=proto)
    assert connect_bytes(settings) == expected


def test_the_first_output_is_connect() -> None:
    """A new link writes its CONNECT first [MQTT-3.1.0-1]."""
    link = Link()
    assert link.sent() == [connect_bytes(link.settings)]


@pytest.mark.parametrize("code", [1, 2, 3, 4, 5])
def test_refused_connack_closes_with_its_code(code: int) -> None:
    """A non-zero CONNACK ends the link and says why ([MQTT-3.2.2-5])."""
    link = Link()
    link.sent()
    assert link.feed(wire.connack(0, code)) == Close("connect_refused", code)


def test_first_packet_must_be_connack() -> None:
    """Anything before CONNACK is a protocol error [MQTT-3.2.0-1]."""
    link = Link()
    assert link.feed(wire.pingresp()) == Close("first_packet_not_connack")


@pytest.mark.parametrize(
    "packet",
    [
        wire.connect("x"),
        wire.subscribe(1, [("a", 0)]),
        wire.unsubscribe(1, ["a"]),
        wire.pingreq(),
        wire.disconnect(),
        wire.connack(0, 0),
    ],
)
def test_packets_a_server_never_sends_close_the_link(packet: bytes) -> None:
    """CONNECT, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT or a second CONNACK: [MQTT-4.8.0-1]."""
    link = Link(T("#", "out", 1))
    link.up()
    action = link.feed(packet)
    assert isinstance(action, Close)


def test_link_is_up_only_after_the_suback() -> None:
    """With in-topics, SUBSCRIBE goes after CONNACK; the session attaches at the SUBACK."""
    link = Link(T("a/#", "in", 1, "l/", "r/"), T("b", "both", 2))
    assert link.settings.subscriptions == (("r/a/#", 1), ("b", 2))
    link.up()
    assert link.session.connected


def test_refused_subscription_is_logged_and_the_link_stays() -> None:
    """SUBACK 0x80 for a filter: a warning, and the link carries what was granted."""
    link = Link(T("a", "in", 1))
    link.sent()
    link.feed(wire.connack(0, 0))
    link.sent()
    assert link.feed(wire.suback(1, [0x80])) == LinkUp(False)


# -- out: local messages to the remote --------------------------------------------------------


def test_local_message_goes_out_renamed_with_retain_as_published() -> None:
    """A local PUBLISH reaches the remote under its remote name, RETAIN as the publisher set it."""
    link = Link(T("a/#", "out", 1, "l/", "r/"))
    link.up()
    link.broker.publish("l/a/x", b"one", 1, True)
    link.broker.publish("l/a/y", b"two", 0, False)
    link.broker.publish("l/b", b"not bridged", 1, False)
    assert link.sent() == [
        wire.publish("r/a/x", b"one", qos=1, retain=True, pid=1),
        wire.publish("r/a/y", b"two"),
    ]
    link.feed(wire.puback(1))
    assert not link.session.inflight


def test_qos2_out_completes_through_the_session() -> None:
    """PUBREC gets PUBREL; PUBCOMP ends the delivery."""
    link = Link(T("#", "out", 2))
    link.up()
    link.broker.publish("t", b"x", 2, False)
    assert link.sent() == [wire.publish("t", b"x", qos=2, pid=1)]
    link.feed(wire.pubrec(1))
    assert link.sent() == [wire.pubrel(1)]
    link.feed(wire.pubcomp(1))
    assert not link.session.inflight


def test_queued_while_down_then_sent_in_order_and_resent_with_dup() -> None:
    """QoS 1 messages wait while the link is down; unacknowledged ones go again, DUP=1."""
    link = Link(T("#", "out", 1))
    for i in range(3):
        link.broker.publish("t", b"%d" % i, 1, False)
    assert len(link.session.queue) == 3
    link.up()
    assert link.sent() == [wire.publish("t", b"%d" % i, qos=1, pid=i + 1) for i in range(3)]
    link.feed(wire.puback(1))
    link.protocol.close()
    assert not link.session.connected
    link.broker.publish("t", b"3", 1, False)
    link.protocol = link.open()
    link.up(session_present=True)
    assert link.sent() == [
        wire.publish("t", b"1", qos=1, dup=True, pid=2),
        wire.publish("t", b"2", qos=1, dup=True, pid=3),
        wire.publish("t", b"3", qos=1, pid=4),
    ]


def test_qos0_is_not_kept_while_the_link_is_down() -> None:
    """QoS 0 for an absent remote is dropped, as for an offline client."""
    link = Link(T("#", "out", 1))
    link.broker.publish("t", b"x", 0, False)
    link.up()
    assert link.sent() == []


# -- in: remote messages to local subscribers -------------------------------------------------


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_remote_message_is_published_locally_renamed(qos: int) -> None:
    """A PUBLISH from the remote reaches local subscribers under its local name."""
    link = Link(T("a/#", "in", 2, "l/", "r/"))
    client = local_client(link.broker, "c", ("l/#", 2))
    link.up()
    pid = 7 if qos else None
    link.feed(wire.publish("r/a/x", b"v", qos=qos, pid=pid))
    assert outbox(client) == [wire.publish("l/a/x", b"v", qos=qos, pid=1 if qos else None)]
    acks = {0: [], 1: [wire.puback(7)], 2: [wire.pubrec(7)]}[qos]
    assert link.sent() == acks


def test_remote_qos2_is_published_once() -> None:
    """A re-sent QoS 2 packet id awaiting PUBREL is not published again [MQTT-4.3.3-2]."""
    link = Link(T("#", "in", 2))
    client = local_client(link.broker, "c", ("#", 0))
    link.up()
    link.feed(wire.publish("t", b"v", qos=2, pid=9))
    link.feed(wire.publish("t", b"v", qos=2, dup=True, pid=9))
    assert outbox(client) == [wire.publish("t", b"v")]
    assert link.sent() == [wire.pubrec(9), wire.pubrec(9)]
    link.feed(wire.pubrel(9))
    assert link.sent() == [wire.pubcomp(9)]
    link.feed(wire.publish("t", b"w", qos=2, pid=9))  # the id is free again
    assert outbox(client) == [wire.publish("t", b"w")]


def test_remote_retained_message_is_retained_here() -> None:
    """RETAIN from the remote (a retained message, or Mosquitto's bridge pass-through) is kept."""
    link = Link(T("#", "in", 1))
    link.up()
    link.feed(wire.publish("t", b"v", qos=1, retain=True, pid=1))
    retained = link.broker.retained.get("t")
    assert retained is not None
    assert retained.payload == b"v"


def test_incoming_message_is_not_sent_back() -> None:
    """No loop: a message from the remote is not offered to the bridge's own session."""
    link = Link(T("#", "both", 1))
    client = local_client(link.broker, "c", ("#", 1))
    link.up()
    link.feed(wire.publish("t", b"v", qos=1, pid=3))
    assert link.sent() == [wire.puback(3)]  # the ack only, no PUBLISH back
    assert outbox(client) == [wire.publish("t", b"v", qos=1, pid=1)]
    link.broker.publish("t", b"local", 1, False)  # a local message still goes out
    assert link.sent() == [wire.publish("t", b"local", qos=1, pid=1)]


def test_unmapped_remote_topic_is_acknowledged_not_published() -> None:
    """A message no in-table matches is acknowledged (or the remote re-sends it) and dropped."""
    link = Link(T("a/#", "in", 1))
    client = local_client(link.broker, "c", ("#", 1))
    link.up()
    link.feed(wire.publish("b", b"v", qos=1, pid=4))
    assert link.sent() == [wire.puback(4)]
    assert client.outbox == []


def test_session_present_zero_forgets_unreleased_qos2_ids() -> None:
    """A remote that kept no session reuses packet ids: old unreleased ids must not block them."""
    link = Link(T("#", "in", 2))
    client = local_client(link.broker, "c", ("#", 0))
    link.up()
    link.feed(wire.publish("t", b"first", qos=2, pid=1))
    link.protocol.close()
    link.protocol = link.open()
    link.up(session_present=False)
    link.feed(wire.publish("t", b"second", qos=2, pid=1))
    assert outbox(client) == [wire.publish("t", b"first"), wire.publish("t", b"second")]


def test_reading_pauses_when_the_output_is_full() -> None:
    """Acknowledgements the remote does not read pause reading (max_outbox_bytes)."""
    broker = Broker(LimitsConfig(max_outbox_bytes=8))
    link = Link(T("#", "in", 1), broker=broker)
    link.up()
    assert link.feed(*(wire.publish("t", b"v", qos=1, pid=i) for i in range(1, 5))) is (
        WAIT_FOR_OUTPUT
    )
    link.sent()
    assert link.protocol.output_drained


# -- keepalive --------------------------------------------------------------------------------


def test_connack_timeout() -> None:
    """No CONNACK within connect_timeout_s ends the link."""
    link = Link(settings=LinkSettings("c", connect_timeout_s=5.0))
    assert link.protocol.deadline() == 105.0
    assert link.protocol.tick(104.9) is None
    assert link.protocol.tick(105.0) == Close("connack_timeout")


def test_pingreq_when_idle_and_timeout_without_pingresp() -> None:
    """PINGREQ after keepalive seconds of silence [MQTT-3.1.2-23]; no PINGRESP ends the link."""
    link = Link(settings=LinkSettings("c", keepalive=10))
    link.up()
    link.protocol.sent(100.0)
    assert link.protocol.deadline() == 110.0
    assert link.protocol.tick(109.0) is None
    assert link.sent() == []
    assert link.protocol.tick(110.0) is None
    assert link.sent() == [wire.pingreq()]
    link.protocol.sent(110.0)
    assert link.protocol.deadline() == 120.0  # the PINGRESP is due within keepalive
    link.now = 111.0
    link.feed(wire.pingresp())
    assert link.protocol.deadline() == 120.0  # the next PINGREQ, 10 s after the last write
    assert link.protocol.tick(120.0) is None
    assert link.sent() == [wire.pingreq()]
    link.protocol.sent(120.0)
    assert link.protocol.tick(129.9) is None
    assert link.protocol.tick(130.0) == Close("keepalive_timeout")


def test_traffic_in_both_directions_postpones_the_ping() -> None:
    """The PINGREQ is due keepalive seconds after the older of the last read and write."""
    link = Link(T("#", "in", 0), settings=LinkSettings("c", keepalive=10))
    link.up()
    link.protocol.sent(105.0)
    link.now = 108.0
    link.feed(wire.publish("t", b"x"))
    assert link.protocol.deadline() == 115.0


def test_keepalive_zero_never_pings() -> None:
    """Keep Alive 0: no deadline once connected."""
    link = Link(settings=LinkSettings("c", keepalive=0))
    link.up()
    assert link.protocol.deadline() is None
    assert link.protocol.tick(10_000.0) is None


def test_after_close_nothing_is_sent_and_the_session_waits() -> None:
    """close() detaches the session: output stops, QoS 1 messages queue again."""
    link = Link(T("#", "out", 1))
    link.up()
    link.protocol.close()
    link.protocol.close()  # twice is fine
    assert link.protocol.data_to_send() == b""
    assert link.broker.publish("t", b"x", 1, False)
    assert len(link.session.queue) == 1
    assert link.protocol.deadline() is None


def test_eof_closes() -> None:
    """The remote closing its side ends the link."""
    link = Link()
    link.up()
    assert link.feed(b"") == Close("peer_closed")


def test_malformed_input_closes() -> None:
    """Bytes that are not MQTT end the link with a protocol error."""
    link = Link()
    assert link.feed(b"\xf0\x00") == Close("reserved_packet_type")


# -- the bridge's local session ---------------------------------------------------------------


def test_bridge_session_cannot_be_taken_by_a_client_id() -> None:
    """Its client id holds a control character the decoder refuses in any CONNECT."""
    client_id = session_id("b")
    data = wire.connect(client_id)
    decoder = Decoder()
    decoder.receive_data(data)
    with pytest.raises(ProtocolError, match="control_character"):
        decoder.next_packet()


def test_bridge_session_refuses_its_own_publication() -> None:
    """While ``publishing`` is set, offers are not kept."""
    link = Link(T("#", "out", 1))
    session = link.session
    session.publishing = True
    assert session.offer(Message("t", b"x", 1), 1) is OfferResult.NOT_KEPT


def test_restored_session_is_taken_over_with_its_messages() -> None:
    """A stored bridge session (loaded as a client's) keeps its in-flight and queued messages
    and their order; subscriptions follow the configuration now."""
    broker = Broker(LIMITS)
    messages = [Message("t", b"%d" % i, 1) for i in range(3)]
    broker.restore_session(
        StoredSession(
            session_id("b"),
            0.0,
            subscriptions={"old/#": 1, "#": 0},
            deliveries=[
                StoredDelivery(1, messages[0], 1, False, 5, False),
                StoredDelivery(2, messages[1], 1, False, None, False),
                StoredDelivery(3, messages[2], 1, False, None, False),
            ],
            incoming={9},
        )
    )
    link = Link(T("#", "out", 1), broker=broker)
    session = link.session
    assert isinstance(broker.sessions[session_id("b")], BridgeSession)
    assert session.subscriptions == {"#": 1}
    assert broker.tree.match("old/x") == {session_id("b"): 1}  # via "#", not "old/#"
    assert session.awaiting_release == {9}
    link.up(session_present=True)
    assert link.sent() == [
        wire.publish("t", b"0", qos=1, dup=True, pid=5),
        wire.publish("t", b"1", qos=1, pid=6),
        wire.publish("t", b"2", qos=1, pid=7),
    ]


def test_sessions_of_removed_bridges_are_discarded() -> None:
    """A stored session of a bridge no longer in the file goes, with its messages."""
    broker = Broker(LIMITS)
    broker.restore_session(StoredSession(session_id("gone"), 0.0, subscriptions={"#": 1}))
    broker.restore_session(StoredSession(session_id("kept"), 0.0))
    broker.restore_session(StoredSession("client", 0.0))
    discard_unconfigured(broker, {"kept"})
    assert set(broker.sessions) == {session_id("kept"), "client"}
    assert not broker.tree.match("x")


def test_bridge_session_never_expires() -> None:
    """persistent_client_expiration does not remove a configured bridge's queue."""
    link = Link(T("#", "out", 1))
    link.broker.publish("t", b"x", 1, False)
    client, _ = link.broker.open_session("old-client", False)
    client.last_seen = link.session.last_seen = 0.0
    assert link.broker.expire_sessions(60.0) == 1
    assert set(link.broker.sessions) == {session_id("b")}


def test_bridge_limits_bound_its_queue() -> None:
    """max_queued_messages of the bridge, not of [limits], bounds what waits for the remote."""
    link = Link(T("#", "out", 1), max_queued_messages=2)
    results = [link.session.offer(Message("t", b"x", 1), 1) for _ in range(3)]
    assert results == [OfferResult.QUEUED, OfferResult.QUEUED, OfferResult.DROPPED]
