"""The benchmark's MQTT and WebSocket encoding/parsing (scripts/bench.py: the shared
``conformance.wire`` plus ``scripts/mqttbench``), so it cannot silently mis-measure. Expected
bytes are written out by hand from the MQTT 3.1.1 and 5.0 specs and RFC 6455; the MQTT 5 side
is cross-checked against mqttd's own codec, the WebSocket side against wsproto. No timing is
asserted.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Ping, Request

from conformance import wire
from mqttd.codec import (
    NEED_DATA,
    NO_PROPERTIES,
    Connack,
    Connect,
    Decoder,
    Properties,
    Publish,
    ReasonCode,
    Suback,
    Subscribe,
    encode,
)
from scripts.mqttbench import flow, load, report, wsclient


@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        (0, "00"),
        (127, "7f"),
        (128, "8001"),
        (16_383, "ff7f"),
        (16_384, "808001"),
        (2_097_151, "ffff7f"),
        (2_097_152, "80808001"),
        (268_435_455, "ffffff7f"),
    ],
)
def test_varint_matches_spec_table(n: int, encoded: str) -> None:
    """Remaining Length encodes as in the spec's table (section 2.2.3)."""
    assert wire.varint(n).hex() == encoded


def test_varint_out_of_range_is_refused() -> None:
    """Lengths above 268,435,455 cannot be encoded."""
    with pytest.raises(ValueError, match="out of range"):
        wire.varint(268_435_456)


def test_connect_bytes() -> None:
    """CONNECT: protocol name MQTT, level 4, clean session, keepalive, client id."""
    expected = "101000044d5154540402003c0004" + b"ab12".hex()
    assert wire.connect("ab12", keepalive=60).hex() == expected
    # What every benchmark client sends: the same with Keep Alive 600 (0x0258).
    assert load.connect_packet("ab12").hex() == expected.replace("003c", "0258")


def test_subscribe_bytes() -> None:
    """SUBSCRIBE has fixed-header flags 0010 and ends with the requested QoS [MQTT-3.8.1-1]."""
    assert wire.subscribe(7, [("a/+", 1)]).hex() == "820800070003612f2b01"


@pytest.mark.parametrize(
    ("kind", "first"),
    [(wire.PUBACK, "40"), (wire.PUBREC, "50"), (wire.PUBREL, "62"), (wire.PUBCOMP, "70")],
)
def test_ack_bytes(kind: int, first: str) -> None:
    """Acks are 4 bytes; PUBREL carries flags 0010 [MQTT-3.6.1-1]."""
    assert wire.ack(kind, 0x1234).hex() == first + "021234"


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_encoder_matches_plain_encoding(qos: int) -> None:
    """A pre-encoded PUBLISH equals one built field by field."""
    enc = load.PublishEncoder("bench/t/all", qos, 64, 3)
    seq, t_ns = 70_000, 123_456_789
    plain = wire.publish(
        "bench/t/all",
        load.make_payload(seq, 3, t_ns, 64),
        qos,
        pid=load.packet_id_for(seq) if qos else None,
    )
    assert enc.encode(seq, t_ns) == plain
    assert enc.batch(seq, 1, t_ns) == plain
    assert enc.packet_size == len(plain)


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_batch_parses_back_to_every_message(qos: int) -> None:
    """A batch splits into `count` PUBLISHes carrying consecutive seqs and their packet ids."""
    enc = load.PublishEncoder("x/y", qos, 64, 9)
    packets = wire.Framer().feed(enc.batch(65_530, 10, 42))
    assert len(packets) == 10
    for i, (first, body) in enumerate(packets):
        topic, got_qos, pid, payload = wire.parse_publish(first, body)
        seq = 65_530 + i
        assert (topic, got_qos, len(payload)) == ("x/y", qos, 64)
        assert pid == (load.packet_id_for(seq) if qos else 0)
        assert load.PAYLOAD_HEAD.unpack_from(payload) == (seq, 9, 42)
    # Packet ids wrap from 65535 to 1, never 0 [MQTT-2.3.1-1].
    assert [load.packet_id_for(s) for s in (65_533, 65_534, 65_535)] == [65_534, 65_535, 1]


def test_connect_bytes_mqtt5() -> None:
    """An MQTT 5 benchmark CONNECT: level 5, then Property Length 0 before the client id."""
    expected = "101100044d5154540502025800" + "0004" + b"ab12".hex()
    assert load.connect_packet("ab12", version=5).hex() == expected


def _broker_side(stream: bytes) -> list[object]:
    """What mqttd's own decoder makes of a client's byte stream (CONNECT first)."""
    decoder = Decoder(server=True, mqtt5=True)
    decoder.receive_data(stream)
    packets = []
    while (packet := decoder.next_packet()) is not NEED_DATA:
        packets.append(packet)
    return packets


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_mqtt5_client_stream_decodes_in_mqttd(qos: int) -> None:
    """What an MQTT 5 benchmark client sends (CONNECT, SUBSCRIBE, a pre-encoded batch of
    PUBLISHes) is what mqttd's own codec reads: level 5, the filter at the QoS with no other
    subscription option, and each PUBLISH's topic, packet id and payload, with no properties."""
    enc = load.PublishEncoder("bench/t/all", qos, 64, 3, version=5)
    stream = (
        load.connect_packet("c5", version=5)
        + load.subscribe_packet("bench/t/+", qos, version=5)
        + enc.batch(65_533, 4, 42)
        + enc.encode(7, 43)
    )
    connect, subscribe, *publishes = _broker_side(stream)
    assert isinstance(connect, Connect)
    assert (connect.protocol_level, connect.client_id, connect.keepalive) == (5, "c5", 600)
    assert connect.properties == NO_PROPERTIES
    assert isinstance(subscribe, Subscribe)
    assert subscribe.subscriptions == (("bench/t/+", qos),)
    assert subscribe.properties == NO_PROPERTIES
    seqs = [65_533, 65_534, 65_535, 65_536, 7]
    assert len(publishes) == len(seqs)
    for seq, packet in zip(seqs, publishes, strict=True):
        assert isinstance(packet, Publish)
        assert (packet.topic, packet.qos, packet.properties) == ("bench/t/all", qos, NO_PROPERTIES)
        assert packet.packet_id == (load.packet_id_for(seq) if qos else None)
        assert packet.payload == load.make_payload(seq, 3, 42 if seq != 7 else 43, 64)
    assert enc.packet_size == len(enc.encode(0, 0))


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_encoder_mqtt5_matches_plain_encoding(qos: int) -> None:
    """A pre-encoded MQTT 5 PUBLISH equals one built field by field (Property Length 0)."""
    enc = load.PublishEncoder("a/b", qos, 100, 1, version=5)
    plain = wire.publish(
        "a/b",
        load.make_payload(9, 1, 5, 100),
        qos,
        pid=load.packet_id_for(9) if qos else None,
        version=5,
    )
    assert enc.encode(9, 5) == plain
    assert enc.batch(9, 1, 5) == plain
    with pytest.raises(ValueError, match="protocol level"):
        load.PublishEncoder("a/b", qos, 100, 1, version=3)


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_payload_offset_skips_mqttd_properties(qos: int) -> None:
    """The bench finds the payload of a PUBLISH mqttd encodes for an MQTT 5 subscriber, with
    properties (a user property pushes the Property Length past one byte) or without, and of
    a 3.1.1 one."""
    payload = load.make_payload(11, 2, 99, 64)
    long_props = Properties(user_properties=(("k", "v" * 200),), content_type="x")
    pid = 5 if qos else None
    for version, props in [(5, NO_PROPERTIES), (5, long_props), (4, NO_PROPERTIES)]:
        data = encode(
            Publish("s/t", payload, qos, packet_id=pid, properties=props), version=version
        )
        ((first, body),) = wire.Framer().feed(data)
        off = load.publish_payload_offset(first, body, version)
        assert body[off:] == payload
        assert load.PAYLOAD_HEAD.unpack_from(body, off) == (11, 2, 99)


def test_mqtt5_connack_and_suback_from_mqttd() -> None:
    """mqttd's MQTT 5 CONNACK (with properties) is a success, a refusing one is not; the
    SUBACK's codes come after its properties, and a 3.1.1 CONNACK/SUBACK reads as before."""
    ok = encode(Connack(False, 0, Properties(topic_alias_maximum=10)), version=5)
    refused = encode(Connack(False, ReasonCode.NOT_AUTHORIZED), version=5)
    ((_, ok_body),) = wire.Framer().feed(ok)
    ((_, refused_body),) = wire.Framer().feed(refused)
    assert not load.connack_refused(ok_body, 5)
    assert load.connack_refused(refused_body, 5)
    assert not load.connack_refused(b"\x00\x00", 4)
    assert load.connack_refused(b"\x00\x05", 4)
    suback = encode(Suback(1, (1, 0x87), Properties(reason_string="no " * 60)), version=5)
    ((_, body),) = wire.Framer().feed(suback)
    assert load.suback_codes(body, 5) == bytes([1, 0x87])
    assert load.suback_codes(wire.suback(1, [0x80])[2:], 4) == b"\x80"


def test_reader_handles_multibyte_lengths() -> None:
    """Packets with 2- and 3-byte Remaining Lengths come out whole, in order."""
    small = wire.publish("a", b"x" * 10)
    medium = wire.publish("b", b"y" * 300)
    large = wire.publish("c", bytes(range(256)) * 4096, qos=1, pid=5)
    packets = wire.Framer().feed(small + medium + large + small)
    assert [wire.parse_publish(f, b)[0] for f, b in packets] == ["a", "b", "c", "a"]
    assert wire.parse_publish(*packets[2])[3] == bytes(range(256)) * 4096
    assert wire.parse_publish(*packets[2])[2] == 5
    # The same stream framed as exact bytes: the packets as they were sent.
    assert wire.Framer().feed_raw(small + medium + large + small) == [small, medium, large, small]


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12))
def test_reader_is_independent_of_how_bytes_arrive(cuts: list[int]) -> None:
    """Splitting the stream at arbitrary points yields the same packets."""
    stream = (
        load.PublishEncoder("s/t", 1, 64, 0).batch(0, 5, 7)
        + wire.publish("big", b"z" * 700)
        + wire.ack(wire.PUBACK, 3)
        + wire.publish("t", b"")
    )
    expected = wire.Framer().feed(stream)
    reader = wire.Framer()
    got = []
    prev = 0
    for cut in [*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]:
        got += reader.feed(stream[prev:cut])
        prev = cut
    assert got == expected
    assert len(expected) == 8
    assert reader.buffered == 0


def test_reader_rejects_five_byte_length() -> None:
    """A Remaining Length of more than 4 bytes is malformed."""
    with pytest.raises(wire.WireError, match="longer than 4 bytes"):
        wire.Framer().feed(b"\x30\xff\xff\xff\xff\x01")


def test_parse_publish_rejects_other_packets() -> None:
    """parse_publish refuses a non-PUBLISH packet rather than misreading it."""
    with pytest.raises(wire.WireError, match="not a PUBLISH"):
        wire.parse_publish(0x40, b"\x00\x01")


def test_ws_accept_value_rfc_example() -> None:
    """Sec-WebSocket-Accept for the RFC 6455 section 1.3 sample key."""
    assert wsclient.ws_accept_value("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def _server_after_handshake(key: str) -> tuple[WSConnection, bytes]:
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(wsclient.ws_handshake_request("127.0.0.1", 8080, "/mqtt", key))
    (request,) = list(server.events())
    assert isinstance(request, Request)
    assert request.subprotocols == ["mqtt"]
    return server, server.send(AcceptConnection(subprotocol="mqtt"))


def test_ws_handshake_against_wsproto() -> None:
    """wsproto's server accepts our upgrade request, and we accept its 101 response."""
    key = "AAAAAAAAAAAAAAAAAAAAAA=="
    _, response = _server_after_handshake(key)
    head, _, rest = response.partition(b"\r\n\r\n")
    wsclient.ws_check_response(head, key)
    assert rest == b""
    with pytest.raises(wire.WireError, match="Sec-WebSocket-Accept"):
        wsclient.ws_check_response(head, "BBBBBBBBBBBBBBBBBBBBBB==")


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65_535, 65_536, 1_048_576])
def test_ws_client_frames_decode_in_wsproto(size: int) -> None:
    """Our masked frames (all three length encodings) decode to the same bytes in wsproto."""
    server, _ = _server_after_handshake("AAAAAAAAAAAAAAAAAAAAAA==")
    payload = bytes(i % 251 for i in range(size))
    server.receive_data(wsclient.ws_frame(payload))
    events = list(server.events())
    data = b"".join(e.data for e in events if isinstance(e, BytesMessage))
    assert data == payload
    assert all(isinstance(e, BytesMessage) for e in events)


def test_ws_frame_reader_decodes_wsproto_frames() -> None:
    """Frames wsproto's server sends come back as one MQTT byte stream; a ping queues a pong."""
    server, _ = _server_after_handshake("AAAAAAAAAAAAAAAAAAAAAA==")
    mqtt = wire.publish("a/b", b"p" * 70_000) + wire.ack(wire.PUBACK, 1)
    frames = (
        server.send(BytesMessage(data=mqtt[:10]))
        + server.send(Ping(payload=b"hi"))
        + server.send(BytesMessage(data=mqtt[10:]))
    )
    reader = wsclient.WsFrameReader()
    out = b"".join(reader.feed(frames[i : i + 777]) for i in range(0, len(frames), 777))
    assert out == mqtt
    assert len(reader.replies) == 1
    # The pong we queued is a valid masked pong for wsproto.
    server.receive_data(reader.replies[0])
    assert [type(e).__name__ for e in server.events()] == ["Pong"]


def test_mask_is_an_involution() -> None:
    """Masking twice with the same key gives the original bytes (RFC 6455 section 5.3)."""
    data = bytes(range(256)) * 3 + b"abc"
    key = b"\x01\x80\xfe\x7f"
    masked = wsclient.ws_mask(data, key)
    assert masked != data
    assert masked[:4] == bytes(a ^ b for a, b in zip(data[:4], key, strict=True))
    assert wsclient.ws_mask(masked, key) == data


def test_percentile_and_table_render() -> None:
    """Percentiles pick from the sorted samples; a broker that lost messages is flagged."""
    assert flow.percentile([5, 1, 4, 2, 3], 50) == 3
    assert flow.percentile(list(range(101)), 99) == 99
    row = report.Row("QoS 1 1→1 [tcp]", "msg/s", True)
    row.cells["mosquitto"] = report.Metric(40_000.0, 99.0, 0, 0)
    row.cells["mqttd"] = report.Metric(20_000.0, 100.0, 12, 0)
    table = report.render_table([row], ["mosquitto", "mqttd"])
    assert "| 40,000 | 20,000 | 0.50 |" in table
    assert "**12/0 DROPPED**" in table
    assert "| 0/0 |" in table
