"""Session state transitions, without sockets: offers, the in-flight window, the queue, acks,
detach/attach with re-delivery. Hypothesis drives random sequences against a simple model."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from mqttd.codec import NEED_DATA, NO_PROPERTIES, Decoder, Properties, Publish, Pubrel, encode
from mqttd.config import LimitsConfig
from mqttd.message import Message
from mqttd.session import OfferResult, Peer, Session

LIMITS = replace(LimitsConfig(), max_inflight_messages=3, max_queued_messages=5)


def drain(session: Session, decoder: Decoder) -> list[Publish | Pubrel]:
    """Decode everything the session wrote for its client."""
    data = session.take_outbox()
    if data:  # b"" would mean EOF to the decoder
        decoder.receive_data(data)
    packets = []
    while (packet := decoder.next_packet()) is not NEED_DATA:
        assert isinstance(packet, Publish | Pubrel)
        packets.append(packet)
    return packets


ops = st.lists(
    st.one_of(
        st.tuples(st.just("offer"), st.sampled_from([0, 1, 2])),
        st.tuples(st.just("ack"), st.integers(0, 5)),
        st.tuples(st.just("detach"), st.none()),
        st.tuples(st.just("attach"), st.none()),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_window_queue_and_redelivery_hold_their_invariants(steps: list[tuple[str, int]]) -> None:
    """The window never exceeds max_inflight, the queue never exceeds max_queued, packet ids are
    unique and non-zero [MQTT-2.3.1-1] [MQTT-2.3.1-2], and every QoS 1/2 message accepted is
    delivered in order, exactly once apart from DUP re-sends after a reconnect
    [MQTT-4.4.0-1] [MQTT-4.6.0-2] [MQTT-4.6.0-3]."""
    session = Session("c", clean_session=False, limits=LIMITS)
    decoder = Decoder(server=False)
    session.attach(lambda: None)
    accepted: list[bytes] = []
    delivered: list[bytes] = []
    counter = 0
    for op, arg in steps:
        if op == "offer":
            counter += 1
            payload = b"%d" % counter
            result = session.offer(Message("t", payload, arg), arg)
            if arg and result in (OfferResult.SENT, OfferResult.QUEUED):
                accepted.append(payload)
        elif op == "ack" and session.inflight and session.connected:
            packet_id = list(session.inflight)[arg % len(session.inflight)]
            outgoing = session.inflight[packet_id]
            if outgoing.qos == 1:
                session.on_puback(packet_id)
            elif outgoing.released:
                session.on_pubcomp(packet_id)
            else:
                session.on_pubrec(packet_id)
        elif op == "detach" and session.connected:
            drain(session, decoder)  # bytes sent before the connection died may be lost
            session.detach()
            decoder = Decoder(server=False)
        elif op == "attach" and not session.connected:
            session.attach(lambda: None)
        for packet in drain(session, decoder) if session.connected else []:
            if isinstance(packet, Publish) and packet.qos and not packet.dup:
                delivered.append(packet.payload)
        assert len(session.inflight) <= LIMITS.max_inflight_messages
        assert len(session.queue) <= LIMITS.max_queued_messages
        assert 0 not in session.inflight
    # Reconnect and acknowledge everything: all accepted messages arrive, in order.
    if not session.connected:
        session.attach(lambda: None)
    for _ in range(100):
        packets = drain(session, decoder)
        for packet in packets:
            if isinstance(packet, Publish) and packet.qos and not packet.dup:
                delivered.append(packet.payload)
        if not session.inflight:
            break
        for packet_id, outgoing in list(session.inflight.items()):
            if outgoing.qos == 1:
                session.on_puback(packet_id)
            elif outgoing.released:
                session.on_pubcomp(packet_id)
            else:
                session.on_pubrec(packet_id)
    assert not session.inflight
    assert not session.queue
    assert delivered == accepted


def test_qos0_not_kept_offline_and_dropped_when_outbox_full() -> None:
    """QoS 0 is not queued for an offline client; online, it is dropped (counted) once the
    unsent bytes exceed max_outbox_bytes, never blocking the publisher."""
    # Each delivery counts 45 bytes plus two 8-byte list slots: the third one passes the
    # 150-byte cap, the fourth and fifth are dropped.
    limits = replace(LimitsConfig(), max_outbox_bytes=150)
    session = Session("c", clean_session=False, limits=limits)
    assert session.offer(Message("t", b"x"), 0) is OfferResult.NOT_KEPT
    session.attach(lambda: None)
    results = [session.offer(Message("t", bytes(40)), 0) for _ in range(5)]
    assert results.count(OfferResult.SENT) == 3
    assert results.count(OfferResult.DROPPED) == 2
    assert session.dropped == 2
    assert session.drop_episode_started()
    assert not session.drop_episode_started()  # logged once per episode


def test_qos2_receive_is_exactly_once_until_release() -> None:
    """An incoming QoS 2 packet id is new once; re-sends are not new until PUBREL
    [MQTT-4.3.3-2]."""
    session = Session("c", clean_session=True, limits=LIMITS)
    session.attach(lambda: None)
    assert session.receive_qos2(7)
    assert not session.receive_qos2(7)
    session.release_qos2(7)
    assert session.receive_qos2(7)
    assert session.take_outbox() == bytes.fromhex("50020007 50020007 70020007 50020007")


def test_small_replies_share_one_buffer() -> None:
    """Acknowledgements are packed into one bytearray: the outbox holds what it counts."""
    session = Session("c", clean_session=True, limits=LIMITS)
    session.attach(lambda: None)
    for pid in range(1, 1001):
        session.acknowledge_qos1(pid)
    assert len(session.outbox) == 1
    assert session.outbox_bytes == 4000
    acks = b"".join(b"\x40\x02" + p.to_bytes(2, "big") for p in range(1, 1001))
    assert session.take_outbox() == acks


def test_large_payloads_are_kept_by_reference() -> None:
    """A large payload is not copied into the outbox (it is shared by every subscriber)."""
    session = Session("c", clean_session=True, limits=LIMITS)
    session.attach(lambda: None)
    message = Message("t", b"x" * 10_000)
    session.offer(message, 0)
    assert any(chunk is message.payload for chunk in session.outbox)


def test_retained_batch_is_sent_in_paced_steps() -> None:
    """A retained batch larger than one step is sent RETAINED_STEP messages at a time, and
    ``resume_wanted`` asks the connection to continue after writing; nothing is dropped."""
    from mqttd.retain import RetainStore
    from mqttd.session import RETAINED_STEP, RetainedBatch

    store: RetainStore[Message] = RetainStore()
    for i in range(3 * RETAINED_STEP + 5):
        store.set(f"r/{i}", Message(f"r/{i}", b"p", 0, True))
    session = Session("c", clean_session=True, limits=LimitsConfig())
    session.attach(lambda: None)
    session.add_retained(RetainedBatch("r/#", 0, lambda: store.iter_matching("r/#")))
    decoder = Decoder(server=False)
    received = drain(session, decoder)
    assert len(received) == RETAINED_STEP
    while session.resume_wanted:
        session.resume()
        received += drain(session, decoder)
    assert len(received) == 3 * RETAINED_STEP + 5
    assert all(packet.retain for packet in received)  # [MQTT-3.3.1-8]
    assert session.retained_pending() == 0


def test_queued_messages_checked_against_the_reader_when_sent() -> None:
    """What ``may_receive`` refuses at send time is not sent, however it was queued."""
    session = Session("c", clean_session=False, limits=LIMITS)
    for topic in ("ok/1", "secret/1", "ok/2"):
        assert session.offer(Message(topic, b"p", 1), 1) is OfferResult.QUEUED
    session.may_receive = lambda topic: not topic.startswith("secret")
    session.attach(lambda: None)
    topics = [packet.topic for packet in drain(session, Decoder(server=False))]
    assert topics == ["ok/1", "ok/2"]


def test_acknowledgement_of_the_wrong_kind_is_a_protocol_violation() -> None:
    """PUBREC or PUBCOMP for a QoS 1 delivery, PUBACK for a QoS 2 one, PUBCOMP before PUBREC:
    protocol violations that close the connection [MQTT-4.8.0-1]; ids not in flight are
    ignored (a PUBREC still gets its PUBREL)."""
    import pytest

    from mqttd.errors import ProtocolViolation

    session = Session("c", clean_session=True, limits=LIMITS)
    session.attach(lambda: None)
    session.offer(Message("t", b"1", 1), 1)  # packet id 1, QoS 1
    session.offer(Message("t", b"2", 2), 2)  # packet id 2, QoS 2
    session.take_outbox()
    for method, pid, reason in (
        (session.on_pubrec, 1, "pubrec_for_qos1_delivery"),
        (session.on_pubcomp, 1, "pubcomp_for_qos1_delivery"),
        (session.on_puback, 2, "puback_for_qos2_delivery"),
        (session.on_pubcomp, 2, "pubcomp_before_pubrec"),
    ):
        with pytest.raises(ProtocolViolation, match=reason):
            method(pid)
    session.on_puback(9)
    session.on_pubcomp(9)
    session.on_pubrec(9)
    assert session.take_outbox() == b"\x62\x02\x00\x09"  # PUBREL for the unknown id
    session.on_pubrec(2)
    session.on_pubrec(2)  # a repeated PUBREC gets PUBREL again
    session.on_pubcomp(2)
    session.on_puback(1)
    assert not session.inflight


def decode5(data: bytes) -> object:
    """The one packet ``data`` holds, as an MQTT 5 client decodes it."""
    decoder = Decoder(server=False, protocol_level=5)
    decoder.receive_data(data)
    packet = decoder.next_packet()
    assert decoder.next_packet() is NEED_DATA
    return packet


@settings(max_examples=200, deadline=None)
@given(
    qos=st.sampled_from([0, 1, 2]),
    retain=st.booleans(),
    dup=st.booleans(),
    with_properties=st.booleans(),
    subscription_ids=st.sampled_from([(), (7,), (1, 300)]),
    alias=st.sampled_from([0, 3]),
    expiry=st.sampled_from([None, 60]),
)
def test_mqtt5_delivery_chunks_decode_to_the_publish(
    qos: int,
    retain: bool,
    dup: bool,
    with_properties: bool,
    subscription_ids: tuple[int, ...],
    alias: int,
    expiry: int | None,
) -> None:
    """An MQTT 5 delivery's chunks (from the cached header or written for that delivery)
    decode to the PUBLISH with the publisher's properties and the delivery's own; with nothing
    per delivery and no properties they are exactly the codec's bytes, in as many chunks as
    the message's MQTT 3.1.1 delivery."""
    props = Properties(content_type="text/plain", user_properties=(("k", "v"), ("k", "w")))
    properties = props if with_properties else NO_PROPERTIES
    now = 1000.0
    expires_at = None if expiry is None else now + expiry
    message = Message("a/b", b"payload", qos, retain, properties=properties, expires_at=expires_at)
    packet_id = 513 if qos else 0
    for _ in range(2):  # the second time from the cached header
        chunks = message.publish_chunks5(
            qos,
            retain,
            dup,
            packet_id,
            subscription_ids=subscription_ids,
            alias=alias,
            now=now,
        )
        expected = Publish(
            "a/b",
            b"payload",
            qos,
            retain,
            dup and qos > 0,
            packet_id or None,
            replace(
                properties,
                message_expiry_interval=expiry,
                subscription_identifiers=subscription_ids,
                topic_alias=alias or None,
            ),
        )
        assert decode5(b"".join(chunks)) == expected
        if not (subscription_ids or alias or expiry):
            assert b"".join(chunks) == encode(expected, version=5)
            if not with_properties:
                assert len(chunks) == len(message.publish_chunks(qos, retain, dup, packet_id))


def test_peer_gives_an_alias_first_then_the_alias_alone() -> None:
    """A connection that takes Topic Aliases gets the topic with alias 1, then alias 1 with an
    empty topic; one with a Maximum Packet Size gets nothing larger."""
    message = Message("a/b", b"x" * 100, 1)
    peer = Peer(0, 2)
    first = peer.chunks(message, 1, False, False, 1, ())
    second = peer.chunks(message, 1, False, False, 2, ())
    assert first is not None
    assert second is not None
    assert decode5(b"".join(first)) == Publish(
        "a/b", b"x" * 100, 1, packet_id=1, properties=Properties(topic_alias=1)
    )
    assert b"".join(second)[2:4] == b"\x00\x00"  # an empty Topic Name
    assert Peer(50, 0).chunks(message, 1, False, False, 1, ()) is None
    plain = Peer().chunks(message, 1, False, False, 1, ())
    assert plain is not None
    assert decode5(b"".join(plain)) == Publish("a/b", b"x" * 100, 1, packet_id=1)


def test_wake_once_until_the_output_is_taken() -> None:
    """The connection is woken when the empty outbox gains bytes; more output before it takes
    them wakes nobody (it already knows), and the first output after the take wakes again."""
    session = Session("c", clean_session=True, limits=LIMITS)
    wakes: list[int] = []
    session.attach(lambda: wakes.append(len(session.outbox)))
    message = Message("t", b"x")
    session.offer(message, 0)
    session.offer(message, 0)
    session.send_packet(b"\xd0\x00")  # a PINGRESP
    session.offer(Message("t", b"y", 1), 1)
    assert len(wakes) == 1
    assert session.take_outbox()
    session.send_packet(b"\xd0\x00")
    session.offer(message, 0)
    assert len(wakes) == 2


def test_mqtt5_qos0_delivery_is_the_codecs_publish() -> None:
    """A QoS 0 delivery to an MQTT 5 connection with no alias or size to mind is the PUBLISH
    the codec makes, the publisher's properties included; with Topic Aliases it gets one."""
    properties = Properties(content_type="text/plain")
    message = Message("a/b", b"x", 0, False, properties=properties)
    expected = encode(Publish("a/b", b"x", 0, False, False, None, properties), version=5)
    session = Session("c", clean_session=True, limits=LIMITS)
    session.attach(lambda: None)
    session.peer = Peer()
    session.offer(message, 0)
    assert session.take_outbox() == expected
    session.peer = Peer(topic_alias_maximum=2)
    session.offer(message, 0)
    assert decode5(session.take_outbox()) == replace(
        Publish("a/b", b"x", 0, False, False, None, properties),
        properties=replace(properties, topic_alias=1),
    )
