"""ConnectionProtocol without sockets or trio: bytes in, actions out, the clock passed in.

A tiny model driver (``Driver``) does what the actions say, the way ``mqttd.connection`` does
with real I/O; the hypothesis test at the end runs any sequence of packets, garbage, timer
ticks, publishes from other clients and closes from outside through it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttd.access import AccessControl
from mqttd.auth import hash_password
from mqttd.broker import Broker
from mqttd.codec import NEED_DATA as DECODER_NEED_DATA
from mqttd.codec import Connack, Decoder
from mqttd.config import AuthConfig, Config, LimitsConfig, ListenerConfig
from mqttd.connection_protocol import (
    NEED_DATA,
    WAIT_FOR_OUTPUT,
    CheckPassword,
    Close,
    ConnectionProtocol,
    State,
    TakeOver,
    Throttle,
)
from mqttd.errors import LocalProtocolError, ProtocolError
from tests.helpers import wire

LISTENER = ListenerConfig()


@dataclass
class FakeServer:
    """What a connection sees of the server (``ServerView``)."""

    broker: Broker
    access: AccessControl
    shutting_down: bool = False


def make_server(tmp_path: Path | None = None, **limits: object) -> FakeServer:
    auth = AuthConfig()
    if tmp_path is not None:
        passwords = tmp_path / "passwd"
        passwords.write_text(f"alice:{hash_password('pw', iterations=1)}\n")
        acl = tmp_path / "acl"
        acl.write_text("user alice\ntopic readwrite alice/#\n")
        auth = AuthConfig(allow_anonymous=False, password_file=passwords, acl_file=acl)
    config = Config(
        limits=dataclasses.replace(LimitsConfig(), **limits),  # type: ignore[arg-type]
        auth=auth,
    )
    return FakeServer(Broker(config.limits), AccessControl(config))


@dataclass
class Driver:
    """Does what the protocol's actions say, with a fake clock and no I/O."""

    server: FakeServer
    now: float = 0.0
    password_ok: bool = True
    woken: int = 0
    closed_with: str | None = None
    protocol: ConnectionProtocol = field(init=False)

    def __post_init__(self) -> None:
        self.protocol = ConnectionProtocol(self.server, LISTENER, self.now, self._wake)

    def _wake(self) -> None:
        self.woken += 1

    def feed(self, data: bytes) -> list[object]:
        """Receive ``data`` and run actions until the protocol needs more; returns them."""
        if self.closed_with is not None:
            return []
        self.protocol.receive_data(data)
        return self.run()

    def run(self) -> list[object]:
        actions: list[object] = []
        protocol = self.protocol
        while self.closed_with is None:
            action = protocol.next_action(self.now)
            actions.append(action)
            if action is NEED_DATA:
                break
            if isinstance(action, CheckPassword):
                protocol.password_checked(self.password_ok)
            elif isinstance(action, TakeOver):
                protocol.taken_over(self.now)
            elif isinstance(action, Throttle):
                self.now = max(self.now, action.until)
            elif action is WAIT_FOR_OUTPUT:
                protocol.data_to_send()  # the writer drained it
            elif isinstance(action, Close):
                self.close(action.reason)
        return actions

    def close(self, reason: str) -> None:
        if self.closed_with is None:
            self.closed_with = reason
            self.protocol.close(reason, self.now)


def connected(**limits: object) -> Driver:
    driver = Driver(make_server(**limits))
    driver.feed(wire.connect("c", keepalive=10))
    assert driver.protocol.data_to_send() == wire.connack(0, 0)
    return driver


# -- CONNECT ----------------------------------------------------------------------------------


def test_connect_asks_for_the_takeover_then_sends_connack() -> None:
    """A valid CONNECT yields TakeOver(client id); after taken_over the CONNACK is the first
    output [MQTT-3.2.0-1] and the state is CONNECTED."""
    driver = Driver(make_server())
    protocol = driver.protocol
    protocol.receive_data(wire.connect("dev1"))
    assert protocol.next_action(0.0) == TakeOver("dev1")
    assert protocol.state is State.AUTHENTICATING
    assert not protocol.has_output
    protocol.taken_over(0.0)
    assert protocol.state is State.CONNECTED
    assert protocol.data_to_send() == wire.connack(0, 0)
    assert protocol.next_action(0.0) is NEED_DATA


def test_empty_client_id_gets_one_assigned() -> None:
    """[MQTT-3.1.3-6] a zero-length client id with CleanSession=1 gets a unique one."""
    driver = Driver(make_server())
    actions = driver.feed(wire.connect(""))
    take_over = [a for a in actions if isinstance(a, TakeOver)]
    assert take_over
    assert take_over[0].client_id.startswith("auto-")


def test_first_packet_must_be_connect() -> None:
    """[MQTT-3.1.0-1] anything else first closes the connection, with nothing sent."""
    driver = Driver(make_server())
    assert driver.feed(wire.pingreq())[-1] == Close("first_packet_not_connect")
    assert driver.protocol.data_to_send() == b""


@pytest.mark.parametrize(
    ("connect", "code", "reason"),
    [
        (wire.connect("c", proto=("MQTT", 6)), 1, "unacceptable_protocol_level"),
        (wire.connect("", clean=False), 2, "empty_client_id_without_clean_session"),
    ],
)
def test_connect_refusals_send_connack_then_close(connect: bytes, code: int, reason: str) -> None:
    """[MQTT-3.2.2-5] a refused CONNECT gets CONNACK with the code, then the close."""
    driver = Driver(make_server())
    protocol = driver.protocol
    protocol.receive_data(connect)
    assert protocol.next_action(0.0) == Close(reason, flush=True)
    assert protocol.data_to_send() == wire.connack(0, code)
    assert protocol.state is State.CLOSING


def test_password_is_checked_by_the_driver(tmp_path: Path) -> None:
    """With a password file the protocol asks for the (slow) check; a wrong password gets
    0x04, a right one goes on to the takeover; no user name gets 0x05."""
    server = make_server(tmp_path)
    for ok, expected in ((False, 4), (True, 0)):
        protocol = ConnectionProtocol(server, LISTENER, 0.0, lambda: None)
        protocol.receive_data(wire.connect("a", username="alice", password=b"pw"))
        action = protocol.next_action(0.0)
        assert isinstance(action, CheckPassword)
        assert action.passwords.verify(action.username, action.password)
        protocol.password_checked(ok)
        follow = protocol.next_action(0.0)
        if expected:
            assert follow == Close("bad_credentials", flush=True)
            assert protocol.data_to_send() == wire.connack(0, 4)
        else:
            assert follow == TakeOver("a")
    protocol = ConnectionProtocol(server, LISTENER, 0.0, lambda: None)
    protocol.receive_data(wire.connect("anon"))
    assert protocol.next_action(0.0) == Close("anonymous_not_allowed", flush=True)
    assert protocol.data_to_send() == wire.connack(0, 5)


def test_shutting_down_refuses_with_server_unavailable() -> None:
    """While the server shuts down a CONNECT gets 0x03."""
    server = make_server()
    server.shutting_down = True
    driver = Driver(server)
    assert driver.feed(wire.connect("c"))[-1] == Close("server_shutting_down", flush=True)
    assert driver.closed_with == "server_shutting_down"


def test_will_gets_the_publish_checks(tmp_path: Path) -> None:
    """A Will on a topic the user may not write gets 0x05; a Will deeper than
    max_topic_levels closes without CONNACK."""
    server = make_server(tmp_path)
    protocol = ConnectionProtocol(server, LISTENER, 0.0, lambda: None)
    protocol.receive_data(wire.connect("a", will=("bob/x", b"w"), username="alice", password=b"pw"))
    assert isinstance(protocol.next_action(0.0), CheckPassword)
    protocol.password_checked(True)
    assert protocol.next_action(0.0) == Close("will_not_authorised", flush=True)
    assert protocol.data_to_send() == wire.connack(0, 5)
    deep = Driver(make_server(max_topic_levels=3))
    assert deep.feed(wire.connect("d", will=("a/b/c/d", b"w")))[-1] == Close(
        "too_many_will_topic_levels"
    )
    assert deep.protocol.data_to_send() == b""


# -- connected ----------------------------------------------------------------------------------


def test_packets_are_answered_through_the_session() -> None:
    """After CONNACK, packets go to ClientProtocol; replies come out of data_to_send."""
    driver = connected()
    driver.feed(wire.subscribe(1, [("t", 1)]) + wire.publish("t", b"x", qos=1, pid=7))
    assert driver.woken
    out = driver.protocol.data_to_send()
    assert out.startswith(wire.suback(1, [1]) + wire.puback(7))
    assert out.endswith(wire.publish("t", b"x", qos=1, pid=1))


def test_disconnect_closes_without_the_will() -> None:
    """DISCONNECT ends the connection and discards the Will [MQTT-3.14.4-3]."""
    server = make_server()
    watcher = Driver(server)
    watcher.feed(wire.connect("w"))
    watcher.feed(wire.subscribe(1, [("will", 0)]))
    watcher.protocol.data_to_send()
    driver = Driver(server)
    driver.feed(wire.connect("c", will=("will", b"bye")))
    assert driver.feed(wire.disconnect())[-1] == Close("client_disconnect")
    assert watcher.protocol.data_to_send() == b""


def test_eof_closes_and_publishes_the_will() -> None:
    """A connection lost without DISCONNECT publishes the Will [MQTT-3.1.2-8]."""
    server = make_server()
    watcher = Driver(server)
    watcher.feed(wire.connect("w"))
    watcher.feed(wire.subscribe(1, [("will", 0)]))
    watcher.protocol.data_to_send()
    driver = Driver(server)
    driver.feed(wire.connect("c", will=("will", b"bye")))
    assert driver.feed(b"")[-1] == Close("peer_closed")
    assert watcher.protocol.data_to_send() == wire.publish("will", b"bye")


def test_protocol_error_after_connect_closes() -> None:
    """A malformed packet closes the connection [MQTT-4.8.0-1]; nothing more is read."""
    driver = connected()
    assert driver.feed(wire.publish("a/+", b"x"))[-1] == Close("wildcard_in_topic_name")
    assert driver.protocol.state is State.CLOSED


def test_keepalive_deadline_follows_the_last_complete_packet() -> None:
    """CONNECT within connect_timeout_s; then a packet within 1.5 x Keep Alive of the last
    [MQTT-3.1.2-24]."""
    driver = Driver(make_server(connect_timeout_s=5.0))
    assert driver.protocol.deadline(0.0) == 5.0
    assert driver.protocol.timeout_reason() == "connect_timeout"
    driver.feed(wire.connect("c", keepalive=10))
    assert driver.protocol.deadline(0.0) == 15.0
    driver.now = 9.0
    driver.feed(wire.pingreq()[:1])  # half a packet does not count
    assert driver.protocol.deadline(9.0) == 15.0
    driver.feed(wire.pingreq()[1:])
    assert driver.protocol.deadline(9.0) == 24.0
    assert driver.protocol.timeout_reason() == "keepalive_timeout"


def test_max_keepalive_caps_the_client() -> None:
    """A Keep Alive above max_keepalive (or 0) is held to the cap."""
    for asked in (600, 0):
        driver = Driver(make_server(max_keepalive=10))
        driver.feed(wire.connect("c", keepalive=asked))
        assert driver.protocol.deadline(0.0) == 15.0


def test_throttle_after_the_burst() -> None:
    """With rate 2/s the third PUBLISH in the same instant throttles for half a second."""
    driver = connected(max_publish_rate=2.0)
    protocol = driver.protocol
    protocol.receive_data(b"".join(wire.publish("t", b"x") for _ in range(3)))
    action = protocol.next_action(0.0)
    assert action == Throttle(0.5)
    assert protocol.deadline(0.2) == 0.2 + 15.0  # paused: not the client's silence
    assert protocol.next_action(0.5) is NEED_DATA


def watched_publisher(server: FakeServer) -> tuple[Driver, Driver]:
    """A subscriber to ``t`` (its output so far taken) and a connected publisher."""
    watcher = Driver(server)
    watcher.feed(wire.connect("w"))
    watcher.feed(wire.subscribe(1, [("t", 0)]))
    watcher.protocol.data_to_send()
    driver = Driver(server)
    driver.feed(wire.connect("c"))
    return watcher, driver


def test_throttled_read_delivers_the_rest_later_in_order() -> None:
    """Packets decoded in the same read as the PUBLISH that used the last token wait, decoded,
    until the throttle ends, then go in order ([MQTT-4.6.0-6]); none is lost or repeated."""
    server = make_server(max_publish_rate=2.0)
    watcher, driver = watched_publisher(server)
    actions = driver.feed(b"".join(wire.publish("t", bytes([i])) for i in range(6)))
    assert [a for a in actions if isinstance(a, Throttle)] == [
        Throttle(0.5),
        Throttle(1.0),
        Throttle(1.5),
        Throttle(2.0),
    ]
    assert driver.protocol.packets_in == 7  # CONNECT and the six
    delivered = watcher.protocol.data_to_send()
    assert delivered == b"".join(wire.publish("t", bytes([i])) for i in range(6))


def test_packets_after_disconnect_in_the_same_read_are_not_handled() -> None:
    """DISCONNECT ends the connection: a PUBLISH behind it in the same read is not routed
    [MQTT-3.14.4-2]."""
    server = make_server()
    watcher, driver = watched_publisher(server)
    read = wire.publish("t", b"before") + wire.disconnect() + wire.publish("t", b"after")
    assert driver.feed(read)[-1] == Close("client_disconnect")
    assert watcher.protocol.data_to_send() == wire.publish("t", b"before")


def test_packets_before_a_malformed_one_are_handled_first() -> None:
    """A malformed packet closes the connection [MQTT-4.8.0-1], after the good packets read
    with it were handled, in order."""
    server = make_server()
    watcher, driver = watched_publisher(server)
    bad_qos = bytes([0x36, 3, 0, 1, 0x74])  # QoS 3 is malformed [MQTT-3.3.1-4]
    read = wire.publish("t", b"1") + wire.publish("t", b"2") + bad_qos + wire.publish("t", b"3")
    assert driver.feed(read)[-1] == Close("publish_qos_3")
    assert watcher.protocol.data_to_send() == wire.publish("t", b"1") + wire.publish("t", b"2")


def test_full_outbox_pauses_reading() -> None:
    """A client that does not read its replies is read no more (WAIT_FOR_OUTPUT) until the
    output drains below max_outbox_bytes."""
    driver = connected(max_outbox_bytes=100)
    protocol = driver.protocol
    protocol.receive_data(wire.pingreq() * 60)
    assert protocol.next_action(0.0) is WAIT_FOR_OUTPUT
    assert not protocol.output_drained
    protocol.data_to_send()
    assert protocol.output_drained
    assert protocol.next_action(0.0) is NEED_DATA


def test_no_output_after_close() -> None:
    """Once closed: no output, however much is routed to the session's client id."""
    server = make_server()
    driver = Driver(server)
    driver.feed(wire.connect("c", clean=False))
    driver.feed(wire.subscribe(1, [("t", 1)]))
    driver.close("kicked")
    server.broker.publish("t", b"x", 1, False)
    assert not driver.protocol.has_output
    assert driver.protocol.data_to_send() == b""
    driver.protocol.receive_data(wire.pingreq())  # ignored
    assert driver.protocol.data_to_send() == b""


def test_driver_mistakes_raise_local_protocol_error() -> None:
    """Calling a method out of turn is a bug in the driver: LocalProtocolError."""
    driver = Driver(make_server())
    with pytest.raises(LocalProtocolError):
        driver.protocol.taken_over(0.0)
    with pytest.raises(LocalProtocolError):
        driver.protocol.password_checked(True)
    driver.close("gone")
    with pytest.raises(LocalProtocolError):
        driver.protocol.next_action(0.0)


def test_reauthorise_disconnects_removed_users(tmp_path: Path) -> None:
    """After a reload a user no longer in the password file must go."""
    server = make_server(tmp_path)
    protocol = ConnectionProtocol(server, LISTENER, 0.0, lambda: None)
    protocol.receive_data(wire.connect("a", username="alice", password=b"pw"))
    protocol.next_action(0.0)
    protocol.password_checked(True)
    protocol.next_action(0.0)
    protocol.taken_over(0.0)
    assert protocol.reauthorise() is None
    (tmp_path / "passwd").write_text("")
    assert server.access.reload()
    assert protocol.reauthorise() == "user_removed"


# -- any sequence -----------------------------------------------------------------------------

packets = st.one_of(
    st.builds(wire.connect, st.sampled_from(["a", "b", ""]), st.booleans(), st.integers(0, 3)),
    st.builds(
        lambda t, q, pid, r: wire.publish(t, b"p", qos=q, pid=pid if q else None, retain=r),
        st.sampled_from(["t", "t/1", "$SYS/x", "u"]),
        st.integers(0, 2),
        st.integers(1, 4),
        st.booleans(),
    ),
    st.builds(
        lambda f, q, pid: wire.subscribe(pid, [(f, q)]),
        st.sampled_from(["t", "#", "t/+"]),
        st.integers(0, 2),
        st.integers(1, 4),
    ),
    st.builds(lambda pid: wire.unsubscribe(pid, ["t"]), st.integers(1, 4)),
    st.builds(wire.puback, st.integers(1, 4)),
    st.builds(wire.pubrec, st.integers(1, 4)),
    st.builds(wire.pubrel, st.integers(1, 4)),
    st.builds(wire.pubcomp, st.integers(1, 4)),
    st.just(wire.pingreq()),
    st.just(wire.disconnect()),
    st.binary(max_size=8),
)

steps = st.lists(
    st.one_of(
        st.tuples(st.just("data"), packets),
        st.tuples(st.just("tick"), st.floats(0, 30)),
        st.tuples(st.just("route"), st.sampled_from(["t", "t/1", "u"])),
        st.tuples(st.just("drain"), st.none()),
        st.tuples(st.just("kick"), st.none()),
        st.tuples(st.just("eof"), st.none()),
    ),
    max_size=30,
)


@settings(max_examples=400, deadline=None)
@given(steps=steps, password_ok=st.booleans(), rate=st.sampled_from([0.0, 1.0]))
def test_any_sequence_raises_nothing_and_is_silent_after_close(
    steps: list[tuple[str, object]], password_ok: bool, rate: float
) -> None:
    """Packets, garbage, timer ticks, publishes from others and closes from outside, in any
    order and any state: the protocol raises nothing, its output is always well-formed MQTT
    a client can decode, and after close it never produces output again."""
    server = make_server(max_publish_rate=rate, max_outbox_bytes=64)
    driver = Driver(server, password_ok=password_ok)
    client = Decoder(server=False)
    output = bytearray()
    for kind, arg in steps:
        if kind == "data":
            assert isinstance(arg, bytes)
            driver.feed(arg)
        elif kind == "tick":
            assert isinstance(arg, float)
            driver.now += arg
            due = driver.protocol.deadline(driver.now)
            if due is not None and due <= driver.now and driver.closed_with is None:
                driver.close(driver.protocol.timeout_reason())
        elif kind == "route":
            assert isinstance(arg, str)
            server.broker.publish(arg, b"r", 1, False)
        elif kind == "kick":
            driver.close("kicked")
        elif kind == "eof":
            driver.feed(b"")
        if driver.closed_with is not None:
            assert driver.protocol.state is State.CLOSED
            assert not driver.protocol.has_output
            assert driver.protocol.data_to_send() == b""
        elif kind == "drain" or driver.protocol.has_output:
            output += driver.protocol.data_to_send()
    if output:
        client.receive_data(bytes(output))
        try:
            first = client.next_packet()
            assert isinstance(first, Connack)  # [MQTT-3.2.0-1]
            while client.next_packet() is not DECODER_NEED_DATA:
                pass
        except ProtocolError as exc:  # pragma: no cover - shown on failure
            raise AssertionError(f"broker output is not well-formed: {exc}") from exc
