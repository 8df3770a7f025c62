"""Every rule the decoder enforces, each checked with hand-built bytes (tests/helpers/wire.py)."""

from __future__ import annotations

import pytest

from mqttd.codec import (
    CLOSED,
    NEED_DATA,
    Connack,
    Connect,
    Decoder,
    Disconnect,
    Pingreq,
    Puback,
    Publish,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    Will,
)
from mqttd.errors import (
    LocalProtocolError,
    MalformedPacket,
    ProtocolError,
    ProtocolViolation,
)
from tests.helpers import wire

MQTT_31 = ("MQIsdp", 3)


def connected(proto: tuple[str, int] = ("MQTT", 4), **kwargs: int) -> Decoder:
    """A server-side decoder that has already decoded a valid CONNECT."""
    decoder = Decoder(**kwargs)
    decoder.receive_data(wire.connect("client-1", proto=proto))
    assert isinstance(decoder.next_packet(), Connect)
    return decoder


def decode_one(decoder: Decoder, data: bytes) -> object:
    """Feed ``data`` and return the single packet it holds."""
    decoder.receive_data(data)
    packet = decoder.next_packet()
    assert decoder.next_packet() is NEED_DATA
    return packet


def reject(
    decoder: Decoder,
    data: bytes,
    kind: type[ProtocolError],
    reason: str,
    connack_code: int | None = None,
) -> None:
    """Feed ``data`` and check that the decoder raises ``kind(reason)``."""
    decoder.receive_data(data)
    with pytest.raises(kind) as info:
        decoder.next_packet()
    assert info.value.reason == reason
    assert info.value.connack_code == connack_code


# --- fixed header: checked before the body is buffered -----------------------------------------


def test_remaining_length_of_five_bytes_is_malformed() -> None:
    """A 4th Remaining Length byte with its continuation bit set is refused at once (2.2.3)."""
    reject(connected(), b"\x30\xff\xff\xff\xff", MalformedPacket, "remaining_length_too_long")


def test_remaining_length_with_fifth_byte_is_malformed() -> None:
    """A complete 5-byte Remaining Length is malformed, whatever the 5th byte (2.2.3)."""
    reject(connected(), b"\x30\x80\x80\x80\x80\x01", MalformedPacket, "remaining_length_too_long")


def test_maximum_four_byte_remaining_length_is_accepted_in_header() -> None:
    """0xFF 0xFF 0xFF 0x7F (268 435 455) is a valid Remaining Length: the decoder waits for more."""
    decoder = connected()
    decoder.receive_data(b"\x30\xff\xff\xff\x7f")
    assert decoder.next_packet() is NEED_DATA


def test_packet_too_large_is_refused_from_the_fixed_header_alone() -> None:
    """A Remaining Length above max_packet_size raises before any body byte has arrived."""
    decoder = connected(max_packet_size=100)
    reject(decoder, b"\x30" + wire.varint(101), ProtocolViolation, "packet_too_large")


def test_packet_of_exactly_max_size_is_accepted() -> None:
    """A packet whose Remaining Length equals max_packet_size decodes normally."""
    decoder = connected(max_packet_size=100)
    data = wire.publish("t", b"x" * 97)  # 2 + 1 + 97 = 100
    assert data[1] == 100
    assert decode_one(decoder, data) == Publish("t", b"x" * 97)


def test_oversized_connect_is_refused_before_its_body() -> None:
    """max_packet_size also applies to the first packet, CONNECT."""
    reject(
        Decoder(max_packet_size=10),
        b"\x10" + wire.varint(11),
        ProtocolViolation,
        "packet_too_large",
    )


@pytest.mark.parametrize("first_byte", [0x30, 0x82, 0xA2, 0xC0, 0xE0, 0x40, 0x62])
def test_first_packet_must_be_connect(first_byte: int) -> None:
    """[MQTT-3.1.0-1] Any first packet other than CONNECT is refused from its first byte."""
    reject(Decoder(), bytes([first_byte]), ProtocolViolation, "first_packet_not_connect")


def test_second_connect_is_a_protocol_violation() -> None:
    """[MQTT-3.1.0-2] A second CONNECT is refused from its first byte."""
    reject(connected(), b"\x10", ProtocolViolation, "second_connect")


@pytest.mark.parametrize(
    "data",
    [wire.connack(0, 0), wire.suback(1, [0]), wire.unsuback(1), wire.pingresp()],
    ids=["connack", "suback", "unsuback", "pingresp"],
)
def test_server_to_client_packet_types_are_malformed_from_a_client(data: bytes) -> None:
    """A client may not send CONNACK, SUBACK, UNSUBACK or PINGRESP (Table 2.1 direction)."""
    reject(connected(), data, MalformedPacket, "server_only_packet_type")


@pytest.mark.parametrize("first_byte", [0x00, 0x0F, 0xF0, 0xFF])
@pytest.mark.parametrize("server", [True, False])
def test_reserved_packet_types_are_malformed(first_byte: int, server: bool) -> None:
    """Packet types 0 and 15 are reserved (Table 2.1), on both sides."""
    decoder = connected() if server else Decoder(server=False)
    reject(decoder, bytes([first_byte, 0]), MalformedPacket, "reserved_packet_type")


@pytest.mark.parametrize(
    "first_byte",
    [0x41, 0x48, 0x51, 0x54, 0x71, 0x7F, 0xC1, 0xC8],
    ids=lambda b: f"{b:#04x}",
)
def test_reserved_flags_must_be_zero(first_byte: int) -> None:
    """[MQTT-2.2.2-1] [MQTT-2.2.2-2] PUBACK, PUBREC, PUBCOMP, PINGREQ flags must be 0000."""
    reject(connected(), bytes([first_byte]), MalformedPacket, "invalid_fixed_header_flags")


@pytest.mark.parametrize("first_byte", [0x60, 0x63, 0x6A, 0x66])
def test_pubrel_flags_must_be_0010(first_byte: int) -> None:
    """[MQTT-3.6.1-1] PUBREL's flags must be 0010; DUP is refused from 3.1.1 clients."""
    reject(connected(), bytes([first_byte]), MalformedPacket, "invalid_fixed_header_flags")


@pytest.mark.parametrize("first_byte", [0x80, 0x83, 0x8A, 0x81])
def test_subscribe_flags_must_be_0010(first_byte: int) -> None:
    """[MQTT-3.8.1-1] SUBSCRIBE's flags must be 0010."""
    reject(connected(), bytes([first_byte]), MalformedPacket, "invalid_fixed_header_flags")


@pytest.mark.parametrize("first_byte", [0xA0, 0xA3, 0xAA, 0xA1])
def test_unsubscribe_flags_must_be_0010(first_byte: int) -> None:
    """[MQTT-3.10.1-1] UNSUBSCRIBE's flags must be 0010."""
    reject(connected(), bytes([first_byte]), MalformedPacket, "invalid_fixed_header_flags")


@pytest.mark.parametrize("first_byte", [0xE1, 0xE2, 0xE8])
def test_disconnect_reserved_bits_must_be_zero(first_byte: int) -> None:
    """[MQTT-3.14.1-1] DISCONNECT's reserved bits must be 0."""
    reject(connected(), bytes([first_byte, 0]), MalformedPacket, "invalid_fixed_header_flags")


def test_connect_fixed_header_flags_must_be_zero() -> None:
    """[MQTT-2.2.2-2] A 3.1.1 CONNECT with fixed-header flags 0010 is malformed."""
    reject(
        Decoder(),
        wire.connect("c", first_byte=0x12),
        MalformedPacket,
        "invalid_fixed_header_flags",
    )


@pytest.mark.parametrize("first_byte", [0x36, 0x37, 0x3E, 0x3F])
def test_publish_qos_3_is_malformed(first_byte: int) -> None:
    """[MQTT-3.3.1-4] A PUBLISH with both QoS bits set is refused from its first byte."""
    reject(connected(), bytes([first_byte]), MalformedPacket, "publish_qos_3")


@pytest.mark.parametrize(
    "header",
    [b"\x40\x03", b"\x50\x01", b"\x62\x00", b"\x70\x04", b"\xc0\x01", b"\xe0\x7f"],
    ids=["puback", "pubrec", "pubrel", "pubcomp", "pingreq", "disconnect"],
)
def test_fixed_remaining_lengths_are_enforced_before_the_body(header: bytes) -> None:
    """PUBACK/PUBREC/PUBREL/PUBCOMP have length 2, PINGREQ/DISCONNECT 0 (3.4-3.14)."""
    reject(connected(), header, MalformedPacket, "invalid_remaining_length")


# --- MQTT 3.1 leniency ------------------------------------------------------------------------


def test_mqtt31_may_set_dup_on_pubrel_subscribe_unsubscribe() -> None:
    """MQTT 3.1 re-sends PUBREL, SUBSCRIBE and UNSUBSCRIBE with DUP (flags 1010)."""
    decoder = connected(MQTT_31)
    assert decode_one(decoder, wire.pubrel(7, dup=True)) == Pubrel(7, dup=True)
    data = wire.packet(0x8A, wire.subscribe(3, [("a/b", 1)])[2:])
    assert decode_one(decoder, data) == Subscribe(3, (("a/b", 1),))
    data = wire.packet(0xAA, wire.unsubscribe(4, ["a/b"])[2:])
    assert decode_one(decoder, data) == Unsubscribe(4, ("a/b",))


def test_mqtt31_disconnect_flags_are_ignored() -> None:
    """MQTT 3.1 defines no DISCONNECT flags: any are accepted (like Mosquitto)."""
    assert decode_one(connected(MQTT_31), b"\xe3\x00") == Disconnect()


def test_mqtt31_still_checks_other_fixed_header_flags() -> None:
    """The 3.1 leniency is limited: PUBACK with flags set is still malformed."""
    reject(connected(MQTT_31), b"\x48\x02\x00\x01", MalformedPacket, "invalid_fixed_header_flags")


def test_mqtt31_connect_flags_and_reserved_bit_are_not_checked() -> None:
    """A 3.1 CONNECT with fixed-header flags and the reserved connect flag set is accepted."""
    decoder = Decoder()
    data = wire.connect("c", proto=MQTT_31, flags=0x03, first_byte=0x12)
    assert decode_one(decoder, data) == Connect("c", True, 0, None, None, None, "MQIsdp", 3)
    assert decoder.protocol_level == 3


def test_mqtt31_will_bits_without_will_flag_are_ignored() -> None:
    """A 3.1 CONNECT with Will QoS/retain bits but no Will flag is accepted, with no Will."""
    data = wire.connect("c", proto=MQTT_31, flags=0x02 | 0x08 | 0x20)
    assert decode_one(Decoder(), data) == Connect("c", protocol_name="MQIsdp", protocol_level=3)


def test_mqtt31_password_without_username_is_accepted() -> None:
    """[MQTT-3.1.2-22] binds 3.1.1 only: a 3.1 password without a user name is kept."""
    data = wire.connect("c", proto=MQTT_31, password=b"pw")
    packet = decode_one(Decoder(), data)
    assert packet == Connect("c", password=b"pw", protocol_name="MQIsdp", protocol_level=3)


def test_mqtt31_password_flag_without_password_is_ignored() -> None:
    """A 3.1 CONNECT whose password flag is set but whose payload ends early has no password."""
    data = wire.connect("c", proto=MQTT_31, username="u", flags=0x02 | 0x80 | 0x40)
    packet = decode_one(Decoder(), data)
    assert packet == Connect("c", username="u", protocol_name="MQIsdp", protocol_level=3)


def test_mqtt31_empty_subscribe_and_unsubscribe_decode_to_empty_tuples() -> None:
    """MQTT 3.1 allows SUBSCRIBE/UNSUBSCRIBE with no topic filters."""
    decoder = connected(MQTT_31)
    assert decode_one(decoder, wire.subscribe(1, [])) == Subscribe(1, ())
    assert decode_one(decoder, wire.unsubscribe(2, [])) == Unsubscribe(2, ())


def test_empty_subscribe_is_a_protocol_violation() -> None:
    """[MQTT-3.8.3-3] A 3.1.1 SUBSCRIBE must hold at least one filter."""
    reject(connected(), wire.subscribe(1, []), ProtocolViolation, "subscribe_without_filters")


def test_empty_unsubscribe_is_a_protocol_violation() -> None:
    """[MQTT-3.10.3-2] A 3.1.1 UNSUBSCRIBE must hold at least one filter."""
    reject(connected(), wire.unsubscribe(1, []), ProtocolViolation, "unsubscribe_without_filters")


# --- CONNECT ------------------------------------------------------------------------------------


def test_connect_decodes_every_field() -> None:
    """A full 3.1.1 CONNECT decodes to all its fields; protocol_level becomes 4."""
    decoder = Decoder()
    assert decoder.protocol_level is None
    data = wire.connect(
        "dev-1",
        clean=False,
        keepalive=65535,
        will=("will/topic", b"bye", 2, True),
        username="user",
        password=b"\xff\x00pw",
    )
    assert decode_one(decoder, data) == Connect(
        "dev-1", False, 65535, Will("will/topic", b"bye", 2, True), "user", b"\xff\x00pw"
    )
    assert decoder.protocol_level == 4


@pytest.mark.parametrize(
    "proto", [("MQTT", 3), ("MQTT", 5), ("MQTT", 0), ("MQIsdp", 4), ("MQIsdp", 5)]
)
def test_unacceptable_protocol_level_gets_connack_1(proto: tuple[str, int]) -> None:
    """[MQTT-3.1.2-2] MQTT/MQIsdp with an unsupported level → CONNACK 0x01, then close."""
    reject(
        Decoder(), wire.connect("c", proto=proto), ProtocolError, "unacceptable_protocol_level", 1
    )


def test_protocol_level_is_checked_before_other_connect_rules() -> None:
    """[MQTT-3.1.2-2] The level check precedes flag checks: a broken level-5 CONNECT gets 0x01."""
    data = wire.connect("", clean=False, proto=("MQTT", 5), flags=0x01, first_byte=0x1F)
    reject(Decoder(), data, ProtocolError, "unacceptable_protocol_level", 1)


@pytest.mark.parametrize("name", ["MQTX", "mqtt", "MQIsdP", "", "MQTT\x00"])
def test_unknown_protocol_name_closes_without_connack(name: str) -> None:
    """[MQTT-3.1.2-1] Another protocol name: close with no CONNACK, as Mosquitto does."""
    reject(
        Decoder(), wire.connect("c", proto=(name, 4)), ProtocolViolation, "unknown_protocol_name"
    )


def test_connect_reserved_flag_must_be_zero() -> None:
    """[MQTT-3.1.2-3] The reserved connect flag (bit 0) must be 0 for 3.1.1."""
    reject(Decoder(), wire.connect("c", flags=0x03), MalformedPacket, "connect_reserved_flag")


@pytest.mark.parametrize(
    "flags", [0x02 | 0x08, 0x02 | 0x10, 0x02 | 0x20], ids=["qos1", "qos2", "retain"]
)
def test_will_qos_and_retain_need_the_will_flag(flags: int) -> None:
    """[MQTT-3.1.2-11] [MQTT-3.1.2-13] [MQTT-3.1.2-15] Will flag 0 ⇒ Will QoS 0, Will retain 0."""
    reject(
        Decoder(), wire.connect("c", flags=flags), MalformedPacket, "will_fields_without_will_flag"
    )


def test_will_qos_3_is_malformed() -> None:
    """[MQTT-3.1.2-14] Will QoS 3 is malformed."""
    reject(Decoder(), wire.connect("c", will=("w", b"m", 3)), MalformedPacket, "will_qos_3")


def test_password_without_username_is_malformed() -> None:
    """[MQTT-3.1.2-22] A 3.1.1 password flag without the user name flag is malformed."""
    data = wire.connect("c", password=b"pw")
    reject(Decoder(), data, MalformedPacket, "password_without_username")


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (0x02 | 0x04, "truncated_string"),  # Will flag, no Will Topic
        (0x02 | 0x80, "truncated_string"),  # user name flag, no user name
        (0x02 | 0x80 | 0x40, "truncated_string"),  # both flags, neither field
    ],
    ids=["will", "username", "username+password"],
)
def test_connect_payload_fields_must_be_present_as_flagged(flags: int, reason: str) -> None:
    """[MQTT-3.1.3-1] A field the connect flags announce must be in the payload."""
    reject(Decoder(), wire.connect("c", flags=flags), MalformedPacket, reason)


def test_connect_password_flag_without_password_is_malformed() -> None:
    """[MQTT-3.1.3-1] A 3.1.1 CONNECT flagging a password must carry one."""
    data = wire.connect("c", username="u", flags=0x02 | 0x80 | 0x40)
    reject(Decoder(), data, MalformedPacket, "truncated_binary")


def test_connect_with_unflagged_trailing_fields_is_malformed() -> None:
    """[MQTT-3.1.3-1] Payload bytes the flags do not announce (here a user name) are malformed."""
    data = wire.connect("c", username="u", flags=0x02)
    reject(Decoder(), data, MalformedPacket, "trailing_bytes")


def test_empty_client_id_with_clean_session_is_accepted() -> None:
    """[MQTT-3.1.3-6] A zero-length ClientId with CleanSession 1 is accepted."""
    assert decode_one(Decoder(), wire.connect("", clean=True)) == Connect("", clean_session=True)


def test_empty_client_id_without_clean_session_gets_connack_2() -> None:
    """[MQTT-3.1.3-8] A zero-length ClientId with CleanSession 0 → CONNACK 0x02."""
    data = wire.connect("", clean=False)
    reject(Decoder(), data, ProtocolError, "empty_client_id_without_clean_session", 2)


def test_mqtt31_empty_client_id_gets_connack_2() -> None:
    """MQTT 3.1 section 3.1: the ClientId must be 1-23 characters; empty → CONNACK 0x02."""
    reject(Decoder(), wire.connect("", proto=MQTT_31), ProtocolError, "empty_client_id", 2)


def test_malformed_connect_with_empty_client_id_gets_no_connack() -> None:
    """[MQTT-3.1.4-1] A malformed CONNECT is closed without CONNACK, even with an empty ClientId."""
    data = wire.connect("", clean=False, username="u", flags=0x00)
    reject(Decoder(), data, MalformedPacket, "trailing_bytes")


@pytest.mark.parametrize("client_id", ["x" * 24, "a" * 200, "dev/1 ä-€", "\ufeffid"])
def test_long_and_non_alphanumeric_client_ids_are_accepted(client_id: str) -> None:
    """[MQTT-3.1.3-5] (its MAY) Long or non-alphanumeric ClientIds are accepted, like Mosquitto."""
    assert decode_one(Decoder(), wire.connect(client_id)) == Connect(client_id)


def test_will_topic_must_be_a_valid_topic_name() -> None:
    """[MQTT-3.1.3-10] The Will Topic is a topic name: wildcards are malformed."""
    data = wire.connect("c", will=("a/#", b"m"))
    reject(Decoder(), data, MalformedPacket, "wildcard_in_topic_name")


# --- UTF-8 strings ----------------------------------------------------------------------------

BAD_UTF8 = {
    "invalid_byte": b"a\xffb",
    "truncated_sequence": b"a\xc3",
    "surrogate": b"\xed\xa0\x80",
    "overlong_slash": b"\xc0\xaf",
    "overlong_null": b"\xc0\x80",
    "above_u10ffff": b"\xf4\x90\x80\x80",
}


def _in_each_string_field(raw: bytes) -> list[tuple[str, Decoder, bytes]]:
    """``raw`` placed in every UTF-8 string field a client sends, with a decoder to feed it to."""
    return [
        ("client_id", Decoder(), wire.connect(raw)),
        ("will_topic", Decoder(), wire.connect("c", will=(raw, b"m"))),
        ("username", Decoder(), wire.connect("c", username=raw)),
        ("topic_name", connected(), wire.publish(raw, b"p")),
        ("subscribe_filter", connected(), wire.subscribe(1, [(raw, 0)])),
        ("unsubscribe_filter", connected(), wire.unsubscribe(1, [raw])),
    ]


@pytest.mark.parametrize("raw", list(BAD_UTF8.values()), ids=list(BAD_UTF8))
def test_ill_formed_utf8_is_malformed_in_every_string(raw: bytes) -> None:
    """[MQTT-1.5.3-1] Ill-formed UTF-8 (incl. surrogates and overlongs) in any string closes."""
    for field, decoder, data in _in_each_string_field(raw):
        decoder.receive_data(data)
        with pytest.raises(MalformedPacket) as info:
            decoder.next_packet()
        assert info.value.reason == "invalid_utf8", field


def test_null_character_is_malformed_in_every_string() -> None:
    """[MQTT-1.5.3-2] U+0000 in any UTF-8 string closes the connection."""
    for field, decoder, data in _in_each_string_field(b"a\x00b"):
        decoder.receive_data(data)
        with pytest.raises(MalformedPacket) as info:
            decoder.next_packet()
        assert info.value.reason == "null_character_in_string", field


def test_bom_is_kept_in_strings() -> None:
    """[MQTT-1.5.3-3] U+FEFF (EF BB BF) is never skipped or stripped."""
    decoder = Decoder()
    packet = decode_one(decoder, wire.connect(b"\xef\xbb\xbfid", username=b"\xef\xbb\xbf"))
    assert packet == Connect("\ufeffid", username="\ufeff")
    data = wire.publish(b"\xef\xbb\xbfa/\xef\xbb\xbf", b"")
    assert decode_one(decoder, data) == Publish("\ufeffa/\ufeff")


# --- PUBLISH ----------------------------------------------------------------------------------


def test_publish_fields_decode() -> None:
    """A QoS 2 retained DUP PUBLISH decodes topic, packet id, flags and payload."""
    data = wire.publish("a/ü", b"\x00payload", qos=2, retain=True, dup=True, pid=65535)
    assert decode_one(connected(), data) == Publish("a/ü", b"\x00payload", 2, True, True, 65535)


def test_publish_qos0_has_no_packet_id() -> None:
    """[MQTT-2.3.1-5] At QoS 0 the bytes after the topic are all payload."""
    data = wire.publish("t", b"\x00\x01rest")
    assert decode_one(connected(), data) == Publish("t", b"\x00\x01rest", 0)


def test_publish_empty_payload() -> None:
    """A PUBLISH may have an empty payload (3.3.3)."""
    assert decode_one(connected(), wire.publish("t", qos=1, pid=1)) == Publish(
        "t", b"", 1, packet_id=1
    )


@pytest.mark.parametrize("qos", [1, 2])
def test_publish_packet_id_must_be_nonzero(qos: int) -> None:
    """[MQTT-2.3.1-1] A QoS 1/2 PUBLISH needs a non-zero packet id."""
    reject(connected(), wire.publish("t", b"p", qos=qos, pid=0), MalformedPacket, "zero_packet_id")


def test_publish_qos1_without_room_for_packet_id_is_malformed() -> None:
    """[MQTT-2.3.1-1] A QoS 1 PUBLISH that ends right after its topic is malformed."""
    reject(connected(), wire.publish("t", qos=1), MalformedPacket, "truncated_publish")


def test_publish_topic_longer_than_packet_is_malformed() -> None:
    """A topic length running past the end of the packet is malformed."""
    reject(connected(), wire.packet(0x30, b"\x00\x09abc"), MalformedPacket, "truncated_publish")


def test_publish_empty_topic_is_malformed() -> None:
    """[MQTT-4.7.3-1] [MQTT-3.3.2-1] A PUBLISH topic must not be empty."""
    reject(connected(), wire.publish("", b"p"), MalformedPacket, "empty_topic_name")


@pytest.mark.parametrize("topic", ["a/+", "#", "a/#", "a+b"])
def test_publish_topic_with_wildcard_is_malformed(topic: str) -> None:
    """[MQTT-3.3.2-2] A Topic Name must not contain wildcards."""
    reject(connected(), wire.publish(topic, b"p"), MalformedPacket, "wildcard_in_topic_name")


def test_publish_qos0_with_dup_is_malformed() -> None:
    """DUP MUST be 0 at QoS 0 ([MQTT-3.3.1-2]): refused at the fixed header, as Mosquitto
    does (strict by default)."""
    reject(connected(), wire.publish("t", dup=True), MalformedPacket, "dup_on_qos0")
    reject(connected(("MQIsdp", 3)), wire.publish("t", dup=True), MalformedPacket, "dup_on_qos0")


@pytest.mark.parametrize("char", ["\x01", "\x1f", "\x7f", "\x80", "\x9f"])
@pytest.mark.parametrize("field", ["topic", "filter", "client_id", "username", "will_topic"])
def test_control_characters_close_the_connection(char: str, field: str) -> None:
    """Section 1.5.3: U+0001..U+001F and U+007F..U+009F in any string close the connection
    (the spec's MAY, which Mosquitto takes too)."""
    text = f"a{char}b"
    if field == "topic":
        reason = "control_character_in_string"
        reject(connected(), wire.publish(text, b"x"), MalformedPacket, reason)
    elif field == "filter":
        reject(
            connected(),
            wire.subscribe(1, [(text, 0)]),
            MalformedPacket,
            "control_character_in_string",
        )
    else:
        args: dict[str, object] = {
            "client_id": {"client_id": text},
            "username": {"client_id": "c", "username": text},
            "will_topic": {"client_id": "c", "will": (text, b"w")},
        }[field]
        reject(Decoder(), wire.connect(**args), MalformedPacket, "control_character_in_string")  # type: ignore[arg-type]


def test_printable_unicode_is_fine() -> None:
    """Characters outside the control ranges pass, U+00A0 and U+FEFF included."""
    topic = "caf\u00e9/\u00a0/\ufeff/\u2028/\U0001f600"
    assert decode_one(connected(), wire.publish(topic, b"x")) == Publish(topic, b"x")


# --- SUBSCRIBE / UNSUBSCRIBE / acks -------------------------------------------------------------


def test_subscribe_decodes_filters_in_order() -> None:
    """SUBSCRIBE yields its (filter, QoS) pairs in order, wildcards included."""
    data = wire.subscribe(65535, [("a/+/c", 0), ("#", 1), ("$SYS/#", 2), ("+", 0)])
    packet = decode_one(connected(), data)
    assert packet == Subscribe(65535, (("a/+/c", 0), ("#", 1), ("$SYS/#", 2), ("+", 0)))


def test_subscribe_packet_id_must_be_nonzero() -> None:
    """[MQTT-2.3.1-1] SUBSCRIBE needs a non-zero packet id."""
    reject(connected(), wire.subscribe(0, [("a", 0)]), MalformedPacket, "zero_packet_id")


@pytest.mark.parametrize(
    ("topic_filter", "reason"),
    [
        ("a/#/b", "misplaced_multi_level_wildcard"),
        ("a#", "misplaced_multi_level_wildcard"),
        ("a/b+", "misplaced_single_level_wildcard"),
        ("", "empty_topic_filter"),
    ],
)
def test_subscribe_bad_filter_closes(topic_filter: str, reason: str) -> None:
    """[MQTT-4.7.1-2] [MQTT-4.7.1-3] [MQTT-4.7.3-1] A bad filter closes, like Mosquitto."""
    reject(connected(), wire.subscribe(1, [("ok", 0), (topic_filter, 0)]), MalformedPacket, reason)


@pytest.mark.parametrize("requested", [3, 4, 0x40, 0x80, 0xFF])
def test_subscribe_requested_qos_byte_is_checked(requested: int) -> None:
    """[MQTT-3.8.3-4] Requested QoS: reserved upper 6 bits zero and QoS at most 2."""
    data = wire.subscribe(1, [("a", requested)])
    reject(connected(), data, MalformedPacket, "invalid_requested_qos")


def test_subscribe_missing_qos_byte_is_malformed() -> None:
    """A SUBSCRIBE filter with no requested-QoS byte after it is malformed."""
    data = wire.packet(0x82, wire.u16(1) + wire.string("a"))
    reject(connected(), data, MalformedPacket, "truncated_subscribe")


def test_unsubscribe_decodes_filters() -> None:
    """UNSUBSCRIBE yields its filters in order."""
    data = wire.unsubscribe(9, ["a/+", "#", "x"])
    assert decode_one(connected(), data) == Unsubscribe(9, ("a/+", "#", "x"))


def test_unsubscribe_packet_id_must_be_nonzero() -> None:
    """[MQTT-2.3.1-1] UNSUBSCRIBE needs a non-zero packet id."""
    reject(connected(), wire.unsubscribe(0, ["a"]), MalformedPacket, "zero_packet_id")


def test_unsubscribe_bad_filter_closes() -> None:
    """[MQTT-4.7.1-2] An UNSUBSCRIBE filter with a misplaced wildcard is malformed."""
    reject(
        connected(), wire.unsubscribe(1, ["#/a"]), MalformedPacket, "misplaced_multi_level_wildcard"
    )


@pytest.mark.parametrize(
    "data",
    [wire.puback(0), wire.pubrec(0), wire.pubrel(0), wire.pubcomp(0)],
    ids=["puback", "pubrec", "pubrel", "pubcomp"],
)
def test_ack_packet_id_must_be_nonzero(data: bytes) -> None:
    """[MQTT-2.3.1-6] PUBACK/PUBREC/PUBREL/PUBCOMP echo a (non-zero) PUBLISH packet id."""
    reject(connected(), data, MalformedPacket, "zero_packet_id")


def test_acks_and_pings_decode() -> None:
    """The fixed-size client packets decode to their dataclasses."""
    decoder = connected()
    assert decode_one(decoder, wire.puback(1)) == Puback(1)
    assert decode_one(decoder, wire.pubrel(65535)) == Pubrel(65535)
    assert decode_one(decoder, wire.pingreq()) == Pingreq()
    assert decode_one(decoder, wire.disconnect()) == Disconnect()


# --- client side (server=False) -----------------------------------------------------------------


def test_client_side_decodes_server_packets_without_connect() -> None:
    """server=False needs no CONNECT first and accepts the server-to-client types."""
    decoder = Decoder(server=False)
    assert decode_one(decoder, wire.connack(1, 0)) == Connack(True, 0)
    assert decode_one(decoder, wire.suback(5, [0, 1, 2, 0x80])) == Suback(5, (0, 1, 2, 0x80))
    assert decode_one(decoder, wire.unsuback(5)) == Unsuback(5)
    assert decoder.protocol_level is None


def test_client_side_connack_reserved_bits_are_malformed() -> None:
    """3.2.2.1: CONNACK acknowledge-flag bits 7-1 must be 0."""
    reject(Decoder(server=False), wire.connack(2, 0), MalformedPacket, "connack_reserved_flags")


def test_client_side_suback_code_must_be_valid() -> None:
    """[MQTT-3.9.3-2] SUBACK return codes are 0x00, 0x01, 0x02 or 0x80 only."""
    reject(Decoder(server=False), wire.suback(1, [0, 3]), MalformedPacket, "invalid_suback_code")


def test_client_side_unsuback_packet_id_must_be_nonzero() -> None:
    """UNSUBACK carries the (non-zero) id of its UNSUBSCRIBE ([MQTT-2.3.1-7])."""
    reject(Decoder(server=False), wire.unsuback(0), MalformedPacket, "zero_packet_id")


# --- EOF, error state, arguments ----------------------------------------------------------------


def test_eof_on_packet_boundary_is_closed() -> None:
    """EOF right after a whole packet gives the packet, then CLOSED (repeatedly)."""
    decoder = connected()
    decoder.receive_data(wire.pingreq())
    decoder.receive_data(b"")
    assert decoder.next_packet() == Pingreq()
    assert decoder.next_packet() is CLOSED
    assert decoder.next_packet() is CLOSED


@pytest.mark.parametrize("cut", [1, 2, 5])
def test_eof_inside_a_packet_is_truncated(cut: int) -> None:
    """EOF with part of a packet buffered is a malformed (truncated) packet."""
    decoder = connected()
    decoder.receive_data(wire.publish("topic", b"payload")[:cut])
    assert decoder.next_packet() is NEED_DATA
    reject(decoder, b"", MalformedPacket, "truncated_packet")


@pytest.mark.parametrize(
    ("decoder_kind", "data", "reason"),
    [
        ("new", wire.packet(0x10, b"\x00"), "truncated_connect"),
        ("new", wire.packet(0x10, wire.string("MQTT")), "truncated_connect"),
        ("new", wire.packet(0x10, wire.string("MQTT") + b"\x04\x02\x00"), "truncated_connect"),
        (
            "new",
            wire.packet(
                0x10,
                wire.string("MQTT") + b"\x04\x06\x00\x00" + wire.string("c") + wire.string("w"),
            ),
            "truncated_binary",
        ),
        (
            "new",
            wire.packet(
                0x10,
                wire.string("MQTT")
                + b"\x04\x06\x00\x00"
                + wire.string("c")
                + wire.string("w")
                + b"\x00\x09m",
            ),
            "truncated_binary",
        ),
        ("connected", wire.packet(0x30, b"\x00"), "truncated_publish"),
        ("connected", wire.packet(0x82, wire.u16(1) + b"\x00\x05ab"), "truncated_string"),
        ("connected", wire.packet(0xA2, wire.u16(1) + b"\x00"), "truncated_string"),
        ("connected", wire.packet(0x82, b"\x00"), "truncated_packet_id"),
    ],
    ids=[
        "connect-no-name",
        "connect-no-level",
        "connect-no-keepalive",
        "will-message-missing",
        "will-message-short",
        "publish-no-topic-length",
        "subscribe-short-filter",
        "unsubscribe-short-length",
        "subscribe-short-packet-id",
    ],
)
def test_fields_running_past_the_packet_end_are_malformed(
    decoder_kind: str, data: bytes, reason: str
) -> None:
    """A length prefix or fixed field running past the Remaining Length is malformed."""
    decoder = Decoder() if decoder_kind == "new" else connected()
    reject(decoder, data, MalformedPacket, reason)


def test_repeated_eof_is_harmless() -> None:
    """Signalling EOF twice is allowed and still gives CLOSED."""
    decoder = Decoder()
    decoder.receive_data(b"")
    decoder.receive_data(b"")
    assert decoder.next_packet() is CLOSED


def test_data_after_eof_is_a_local_error() -> None:
    """Feeding bytes after EOF is a caller bug."""
    decoder = Decoder()
    decoder.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        decoder.receive_data(b"\x10")


def test_decoder_stays_in_error_state() -> None:
    """After a ProtocolError every further call raises again, even with valid input."""
    decoder = connected()
    reject(decoder, b"\x36", MalformedPacket, "publish_qos_3")
    decoder.receive_data(wire.pingreq())
    for _ in range(2):
        with pytest.raises(MalformedPacket) as info:
            decoder.next_packet()
        assert info.value.reason == "publish_qos_3"


def test_error_state_keeps_connack_code() -> None:
    """A repeated CONNECT error still carries its CONNACK code."""
    decoder = Decoder()
    reject(
        decoder,
        wire.connect("c", proto=("MQTT", 5)),
        ProtocolError,
        "unacceptable_protocol_level",
        1,
    )
    with pytest.raises(ProtocolError) as info:
        decoder.next_packet()
    assert info.value.connack_code == 1


@pytest.mark.parametrize("size", [-1, 268_435_456])
def test_max_packet_size_out_of_range_is_refused(size: int) -> None:
    """max_packet_size must lie within what a Remaining Length can express."""
    with pytest.raises(LocalProtocolError):
        Decoder(max_packet_size=size)


def test_need_data_and_closed_reprs() -> None:
    """The sentinels print as their names."""
    assert repr(NEED_DATA) == "NEED_DATA"
    assert repr(CLOSED) == "CLOSED"


def test_first_packet_has_its_own_smaller_limit() -> None:
    """max_connect_packet_size holds the CONNECT to less than max_packet_size, checked at the
    fixed header; after CONNECT the general limit applies."""
    reject(
        Decoder(max_packet_size=1000, max_connect_packet_size=50),
        b"\x10" + wire.varint(51),
        ProtocolViolation,
        "packet_too_large",
    )
    decoder = Decoder(max_packet_size=1000, max_connect_packet_size=50)
    decoder.receive_data(wire.connect("c"))
    assert decoder.next_packet() is not NEED_DATA
    decoder.receive_data(wire.publish("t", b"x" * 900))
    assert decoder.next_packet() == Publish("t", b"x" * 900)


# --- MQTT 5 additions on 3.1.1/3.1 connections (MQTT 5 itself: test_codec5.py) ------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x36", "publish_qos_3"),
        (b"\x40\x03\x00\x01\x00", "invalid_remaining_length"),  # no reason code on 3.1.1
        (b"\xe0\x01\x00", "invalid_remaining_length"),
        (b"\xf0\x00", "reserved_packet_type"),  # AUTH is MQTT 5 only
    ],
)
def test_mqtt311_errors_carry_no_mqtt5_reason_code(data: bytes, reason: str) -> None:
    """On a 3.1.1 connection errors keep ``reason_code`` None, even with MQTT 5 enabled, and
    the acks keep their fixed length 2, DISCONNECT its 0."""
    for decoder in (connected(), connected(mqtt5=True)):
        decoder.receive_data(data)
        with pytest.raises(MalformedPacket) as info:
            decoder.next_packet()
        assert info.value.reason == reason
        assert info.value.reason_code is None


def test_level_5_connect_is_refused_by_default() -> None:
    """Without ``mqtt5=True`` a level-5 CONNECT is refused as before (CONNACK 0x01)."""
    reject(
        Decoder(),
        wire.connect("c", proto=("MQTT", 5)),
        ProtocolError,
        "unacceptable_protocol_level",
        1,
    )
    assert Decoder().protocol_level is None


# -- batches and buffers ---------------------------------------------------------------------


def test_next_packets_returns_every_complete_packet_of_a_read() -> None:
    """One call returns the read's packets in order and leaves an incomplete one buffered."""
    decoder = connected()
    packets = [wire.publish("t", bytes([i])) for i in range(3)]
    decoder.receive_data(b"".join(packets) + wire.pingreq()[:1])
    assert decoder.next_packets() == [Publish("t", bytes([i])) for i in range(3)]
    assert decoder.next_packets() == []
    decoder.receive_data(wire.pingreq()[1:])
    assert decoder.next_packets() == [Pingreq()]
    assert not decoder.closed
    decoder.receive_data(b"")
    assert decoder.next_packets() == []
    assert decoder.closed
    assert decoder.next_packet() is CLOSED


def test_next_packets_returns_the_good_packets_before_an_error() -> None:
    """A malformed packet after good ones: the good ones come first, the next call raises
    (and every call after it) [MQTT-4.8.0-1]."""
    decoder = connected()
    decoder.receive_data(wire.publish("t", b"1") + bytes([0x36, 3, 0, 1, 0x74]))
    assert decoder.next_packets() == [Publish("t", b"1")]
    for _ in range(2):
        with pytest.raises(MalformedPacket):
            decoder.next_packets()


def test_next_packets_stops_after_connect() -> None:
    """CONNECT switches the rule table: the packets after it are decoded by the next call,
    under the new rules (a second CONNECT is refused [MQTT-3.1.0-2])."""
    decoder = Decoder()
    decoder.receive_data(wire.connect("c") + wire.pingreq() + wire.connect("c"))
    packets = decoder.next_packets()
    assert len(packets) == 1
    assert isinstance(packets[0], Connect)
    assert decoder.next_packets() == [Pingreq()]
    with pytest.raises(ProtocolViolation):
        decoder.next_packets()


@pytest.mark.parametrize("size", [10, 70_000, 300_000])
@pytest.mark.parametrize("step", [1, 7, 4096, 65_536])
def test_a_packet_split_over_reads_decodes_to_bytes(size: int, step: int) -> None:
    """However a PUBLISH is split over reads (the unfinished start copied into each read, or
    accumulated once it is long), it decodes to the same packet, with a ``bytes`` payload."""
    if size // step > 5_000:
        step = size // 5_000  # bound the number of reads
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    data = wire.publish("t", payload) + wire.publish("u", b"next")
    decoder = connected()
    got: list[object] = []
    for start in range(0, len(data), step):
        decoder.receive_data(data[start : start + step])
        got.extend(decoder.next_packets())
    assert got == [Publish("t", payload), Publish("u", b"next")]
    assert all(isinstance(p, Publish) and type(p.payload) is bytes for p in got)


def test_a_bytearray_read_is_not_kept_by_reference() -> None:
    """The decoder copies a bytearray it is given: the caller may reuse it."""
    decoder = connected()
    read = bytearray(wire.publish("t", b"abc"))
    decoder.receive_data(read)
    read[:] = bytes(len(read))
    assert decoder.next_packets() == [Publish("t", b"abc")]
