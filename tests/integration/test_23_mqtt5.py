"""MQTT 5 against a real broker over loopback TCP: CONNACK properties, properties passed
through, reason codes, topic aliases both ways, subscription options and identifiers, message
and session expiry, Will delay, server DISCONNECTs, flow control (sections 3 and 4 of MQTT 5)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

from conformance import wire
from conformance.wire import Packet
from mqttd.server import Server
from tests.helpers import wire as wire4
from tests.helpers.client import OPEN_CLIENTS, connect_client
from tests.integration.conftest import StartServer

TIMEOUT_S = 10

# Property identifiers (2.2.2.2)
PAYLOAD_FORMAT = 0x01
MESSAGE_EXPIRY = 0x02
CONTENT_TYPE = 0x03
RESPONSE_TOPIC = 0x08
CORRELATION_DATA = 0x09
SUBSCRIPTION_ID = 0x0B
SESSION_EXPIRY = 0x11
ASSIGNED_CLIENT_ID = 0x12
SERVER_KEEP_ALIVE = 0x13
AUTH_METHOD = 0x15
WILL_DELAY = 0x18
REASON_STRING = 0x1F
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS_MAXIMUM = 0x22
TOPIC_ALIAS = 0x23
USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27


class Client5:
    """A raw MQTT 5 client: send bytes, read parsed packets."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = wire.Decoder(version=5)

    @classmethod
    async def connect(
        cls,
        server: Server,
        client_id: str,
        *,
        clean: bool = True,
        properties: list[tuple[int, Any]] | None = None,
        expect: int = 0,
        **kwargs: Any,
    ) -> tuple[Client5, Packet]:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port())
        client = cls(stream)
        OPEN_CLIENTS.append(client)  # type: ignore[arg-type]  # closed after the test
        await client.send(
            wire.connect(client_id, clean, version=5, properties=properties, **kwargs)
        )
        connack = await client.read()
        assert connack.name == "CONNACK", connack.describe()
        assert connack.reason == expect, connack.describe()
        return client, connack

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def read(self) -> Packet:
        with trio.fail_after(TIMEOUT_S):
            while True:
                packet = self.decoder.next()
                if packet is not None:
                    return packet
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError("closed")
                self.decoder.feed(data)

    async def closed(self) -> None:
        """The server closes the connection, with nothing more before it."""
        with trio.fail_after(TIMEOUT_S):
            while True:
                packet = self.decoder.next()
                assert packet is None, packet.describe()
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return
                if not data:
                    return
                self.decoder.feed(data)

    async def subscribe(
        self, pid: int, *filters: tuple[str, int], properties: Any = None
    ) -> Packet:
        await self.send(wire.subscribe(pid, filters, version=5, properties=properties))
        suback = await self.read()
        assert suback.name == "SUBACK", suback.describe()
        return suback

    async def sync(self) -> None:
        """Everything the server sent before a PINGRESP has been read."""
        await self.send(wire.pingreq())
        packet = await self.read()
        assert packet.name == "PINGRESP", packet.describe()

    async def aclose(self) -> None:
        with trio.move_on_after(1):
            await self.stream.aclose()


async def test_connack_tells_what_the_server_decided(start_server: StartServer) -> None:
    """An empty client id gets an Assigned Client Identifier [MQTT-3.2.2-16]; a capped keep
    alive comes back as Server Keep Alive [MQTT-3.2.2-21]; the Topic Alias Maximum and the
    Maximum Packet Size the server accepts are announced."""
    server = await start_server(max_keepalive=30, max_packet_size=1000)
    _client, connack = await Client5.connect(server, "", keepalive=0)
    assigned = connack.prop(ASSIGNED_CLIENT_ID)
    assert isinstance(assigned, str)
    assert assigned
    assert connack.prop(SERVER_KEEP_ALIVE) == 30
    assert connack.prop(TOPIC_ALIAS_MAXIMUM) == 10
    assert connack.prop(MAXIMUM_PACKET_SIZE) == 1000 + 1 + 2
    assert not connack.session_present


async def test_properties_pass_through_and_versions_meet(server: Server) -> None:
    """A publisher's properties reach an MQTT 5 subscriber unchanged and in order
    ([MQTT-3.3.2-4], [MQTT-3.3.2-17], [MQTT-3.3.2-18], [MQTT-3.3.2-20]); an MQTT 3.1.1
    subscriber gets the same message without them, and an MQTT 3.1.1 publisher's message
    reaches the MQTT 5 subscriber with none."""
    sub5, _ = await Client5.connect(server, "sub5")
    await sub5.subscribe(1, ("t/#", 1))
    sub4 = await connect_client(server.port(), "sub4")
    await sub4.send(wire4.subscribe(1, [("t/#", 1)]))
    await sub4.expect(wire4.suback(1, [1]))
    pub, _ = await Client5.connect(server, "pub")
    props = [
        (PAYLOAD_FORMAT, 1),
        (CONTENT_TYPE, "text/plain"),
        (USER_PROPERTY, ("b", "2")),
        (RESPONSE_TOPIC, "reply/here"),
        (USER_PROPERTY, ("a", "1")),
        (CORRELATION_DATA, b"\x00id"),
        (USER_PROPERTY, ("b", "3")),
    ]
    await pub.send(wire.publish("t/x", b"hello", 1, pid=5, version=5, properties=props))
    puback = await pub.read()
    assert puback.name == "PUBACK"
    assert puback.reason == 0
    got = await sub5.read()
    assert got.topic == b"t/x"
    assert got.payload == b"hello"
    assert got.prop(CONTENT_TYPE) == "text/plain"
    assert got.prop(RESPONSE_TOPIC) == "reply/here"
    assert got.prop(CORRELATION_DATA) == b"\x00id"
    assert got.prop(PAYLOAD_FORMAT) == 1
    assert got.user_properties == [("b", "2"), ("a", "1"), ("b", "3")]
    await sub4.expect(wire4.publish("t/x", b"hello", qos=1, pid=1))
    plain = await connect_client(server.port(), "plain")
    await plain.send(wire4.publish("t/y", b"from 3.1.1"))
    got = await sub5.read()
    assert got.topic == b"t/y"
    assert got.props == ()


async def test_reason_codes_in_acknowledgements(server: Server) -> None:
    """PUBACK 0x10 when nobody subscribes, as Mosquitto answers; PUBACK 0x99 for a payload
    that breaks its Payload Format Indicator; PUBREL for an unknown id gets PUBCOMP 0x92;
    UNSUBACK 0x00 / 0x11 per filter ([MQTT-3.11.3-1])."""
    client, _ = await Client5.connect(server, "c")
    await client.send(wire.publish("nobody", b"x", 1, pid=1, version=5))
    ack = await client.read()
    assert (ack.name, ack.pid, ack.reason) == ("PUBACK", 1, 0x10)
    bad = [(PAYLOAD_FORMAT, 1)]
    await client.send(wire.publish("t", b"\xff\xfe", 1, pid=2, version=5, properties=bad))
    ack = await client.read()
    assert (ack.name, ack.reason) == ("PUBACK", 0x99)
    assert ack.has(REASON_STRING)
    await client.send(wire.pubrel(9))
    comp = await client.read()
    assert (comp.name, comp.pid, comp.reason) == ("PUBCOMP", 9, 0x92)
    await client.subscribe(3, ("a", 0))
    await client.send(wire.unsubscribe(4, ["a", "b"], version=5))
    unsuback = await client.read()
    assert unsuback.codes == (0x00, 0x11)


async def test_problem_information_zero_means_no_reason_strings(server: Server) -> None:
    """Request Problem Information 0: no Reason String on a PUBACK [MQTT-3.1.2-29]."""
    client, _ = await Client5.connect(server, "c", properties=[(0x17, 0)])
    bad = [(PAYLOAD_FORMAT, 1)]
    await client.send(wire.publish("t", b"\xff", 1, pid=2, version=5, properties=bad))
    ack = await client.read()
    assert ack.reason == 0x99
    assert not ack.has(REASON_STRING)


async def test_topic_alias_from_the_client(server: Server) -> None:
    """An alias set with a topic stands for it afterwards ([MQTT-3.3.2-12]); an alias above
    the announced maximum is a DISCONNECT 0x94 and a close ([MQTT-3.3.2-9])."""
    sub, _ = await Client5.connect(server, "sub")
    await sub.subscribe(1, ("long/topic/name", 0))
    pub, _ = await Client5.connect(server, "pub")
    await pub.send(
        wire.publish("long/topic/name", b"1", version=5, properties=[(TOPIC_ALIAS, 3)])
    )
    await pub.send(wire.publish("", b"2", version=5, properties=[(TOPIC_ALIAS, 3)]))
    for payload in (b"1", b"2"):
        got = await sub.read()
        assert (got.topic, got.payload) == (b"long/topic/name", payload)
        assert not got.has(TOPIC_ALIAS)  # the subscriber did not ask for aliases
    await pub.send(wire.publish("x", b"3", version=5, properties=[(TOPIC_ALIAS, 11)]))
    goodbye = await pub.read()
    assert (goodbye.name, goodbye.reason) == ("DISCONNECT", 0x94)
    await pub.closed()


async def test_topic_alias_to_the_client(server: Server) -> None:
    """A client that accepts aliases gets one with the topic first, then the alias alone,
    and never more aliases than its maximum ([MQTT-3.1.2-26], [MQTT-3.3.2-10])."""
    sub, _ = await Client5.connect(server, "sub", properties=[(TOPIC_ALIAS_MAXIMUM, 1)])
    await sub.subscribe(1, ("#", 0))
    pub, _ = await Client5.connect(server, "pub")
    for topic in ("a/b", "a/b", "c/d"):
        await pub.send(wire.publish(topic, b"x", version=5))
    first, second, third = [await sub.read() for _ in range(3)]
    assert (first.topic, first.prop(TOPIC_ALIAS)) == (b"a/b", 1)
    assert (second.topic, second.prop(TOPIC_ALIAS)) == (b"", 1)
    assert (third.topic, third.has(TOPIC_ALIAS)) == (b"c/d", False)


async def test_subscription_options_and_identifiers(server: Server) -> None:
    """No Local ([MQTT-3.8.3-3]); Retain As Published ([MQTT-3.3.1-12]); Retain Handling 1
    and 2 ([MQTT-3.3.1-10], [MQTT-3.3.1-11]); a Subscription Identifier with each message,
    every matching subscription's in one message ([MQTT-3.3.4-3])."""
    pub, _ = await Client5.connect(server, "pub")
    await pub.send(wire.publish("r/1", b"kept", retain=True, version=5))
    me, _ = await Client5.connect(server, "me")
    no_local = wire.subscription_options(0, no_local=True, retain_as_published=True)
    suback = await me.subscribe(1, ("r/#", no_local), properties=[(SUBSCRIPTION_ID, 7)])
    assert suback.codes == (0,)
    retained = await me.read()
    assert (retained.payload, retained.retain, retained.props_all(SUBSCRIPTION_ID)) == (
        b"kept",
        True,
        [7],
    )
    await me.subscribe(2, ("r/+", 0), properties=[(SUBSCRIPTION_ID, 9)])
    await me.read()  # the retained message again for the new filter (Retain Handling 0)
    await me.send(wire.publish("r/1", b"mine", retain=True, version=5))
    await pub.send(wire.publish("r/1", b"theirs", retain=True, version=5))
    got = await me.read()  # its own message came only through r/+ (r/# is No Local)
    assert (got.payload, got.retain, got.props_all(SUBSCRIPTION_ID)) == (b"mine", False, [9])
    got = await me.read()
    assert got.payload == b"theirs"
    assert got.retain  # Retain As Published on r/#
    assert sorted(got.props_all(SUBSCRIPTION_ID)) == [7, 9]  # type: ignore[type-var]
    only_new = wire.subscription_options(0, retain_handling=1)
    await me.subscribe(3, ("r/+", only_new))  # existing subscription: no retained message
    never = wire.subscription_options(0, retain_handling=2)
    await me.subscribe(4, ("r/1", never))  # new, but Retain Handling 2
    await me.sync()


async def test_shared_subscription_no_local_is_a_protocol_error(server: Server) -> None:
    """No Local on a shared subscription: DISCONNECT 0x82 [MQTT-3.8.3-4]."""
    client, _ = await Client5.connect(server, "c")
    options = wire.subscription_options(0, no_local=True)
    await client.send(wire.subscribe(1, [("$share/g/t", options)], version=5))
    goodbye = await client.read()
    assert (goodbye.name, goodbye.reason) == ("DISCONNECT", 0x82)
    await client.closed()


async def test_message_expiry(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The interval left is sent ([MQTT-3.3.2-6]); an expired message is not delivered
    ([MQTT-3.3.2-5]), here to a persistent session that was offline."""
    sub, _ = await Client5.connect(
        server, "sub", clean=False, properties=[(SESSION_EXPIRY, 600)]
    )
    await sub.subscribe(1, ("t", 1))
    pub, _ = await Client5.connect(server, "pub")
    await pub.send(wire.publish("t", b"now", 1, pid=1, version=5, properties=[(2, 60)]))
    assert (await pub.read()).name == "PUBACK"
    got = await sub.read()
    assert got.prop(MESSAGE_EXPIRY) == 60
    await sub.send(wire.puback(got.pid or 0))
    await sub.sync()
    await sub.send(wire.disconnect())
    await sub.closed()
    for payload, expiry in ((b"stale", 5), (b"fresh", 50)):
        await pub.send(
            wire.publish("t", payload, 1, pid=2, version=5, properties=[(MESSAGE_EXPIRY, expiry)])
        )
        assert (await pub.read()).name == "PUBACK"
    later = time.time() + 10
    monkeypatch.setattr("mqttd.message.time.time", lambda: later)
    sub, connack = await Client5.connect(
        server, "sub", clean=False, properties=[(SESSION_EXPIRY, 600)]
    )
    assert connack.session_present
    got = await sub.read()
    assert got.payload == b"fresh"
    assert got.prop(MESSAGE_EXPIRY) == 40
    await sub.send(wire.puback(got.pid or 0))
    await sub.sync()


async def test_session_expiry_and_clean_start(server: Server) -> None:
    """Session Expiry Interval 0 ends the session with the connection; a longer one keeps it
    (Session Present 1, [MQTT-3.2.2-2]) until it expires; Clean Start 1 discards it
    ([MQTT-3.1.2-4])."""
    client, connack = await Client5.connect(server, "s", clean=False)
    assert not connack.session_present
    await client.send(wire.disconnect())
    await client.closed()
    client, connack = await Client5.connect(
        server, "s", clean=False, properties=[(SESSION_EXPIRY, 100)]
    )
    assert not connack.session_present  # expiry 0 before: nothing was kept
    await client.send(wire.disconnect())
    await client.closed()
    client, connack = await Client5.connect(server, "s", clean=False)
    assert connack.session_present
    await client.send(wire.disconnect(properties=[(SESSION_EXPIRY, 100)]))
    goodbye = await client.read()  # 0 at CONNECT, then not 0: [MQTT-3.14.2-2]
    assert (goodbye.name, goodbye.reason) == ("DISCONNECT", 0x82)
    client, connack = await Client5.connect(
        server, "s", clean=False, properties=[(SESSION_EXPIRY, 100)]
    )
    await client.send(wire.disconnect())
    await client.closed()
    server.broker.schedule.run_due(time.time() + 99)
    assert "s" in server.broker.sessions
    server.broker.schedule.run_due(time.time() + 101)
    assert "s" not in server.broker.sessions
    client, connack = await Client5.connect(server, "s", clean=False)
    assert not connack.session_present


async def test_will_delay(server: Server) -> None:
    """A delayed Will is not sent when the client comes back in time ([MQTT-3.1.3-9]); it is
    sent when the delay passes, or at once when the session ends first; DISCONNECT 0x04
    sends the Will as a lost connection would."""
    watcher, _ = await Client5.connect(server, "watcher")
    await watcher.subscribe(1, ("will/#", 0))
    expiry = [(SESSION_EXPIRY, 300)]
    delayed = [(WILL_DELAY, 100), (USER_PROPERTY, ("k", "v"))]

    async def drop(client_id: str, *, clean: bool = False) -> None:
        client, _ = await Client5.connect(
            server,
            client_id,
            clean=clean,
            properties=expiry,
            will=(f"will/{client_id}", b"gone"),
            will_properties=delayed,
        )
        await client.aclose()  # no DISCONNECT

    await drop("back")
    await drop("back")  # reconnected in time: the first Will is never sent
    await drop("late")
    await trio.testing.wait_all_tasks_blocked()
    server.broker.schedule.run_due(time.time() + 101)
    got = sorted([(await watcher.read()).topic for _ in range(2)])
    assert got == [b"will/back", b"will/late"]  # each once: the second connection's Will
    await drop("restart")
    await drop("restart", clean=True)  # Clean Start ends the session: its Will goes now
    got_restart = await watcher.read()
    assert got_restart.topic == b"will/restart"
    assert got_restart.user_properties == [("k", "v")]
    client, _ = await Client5.connect(server, "bye", will=("will/bye", b"asked"))
    await client.send(wire.disconnect(reason=0x04))
    await client.closed()
    assert (await watcher.read()).payload == b"asked"


async def test_server_disconnects_with_a_reason(server: Server) -> None:
    """A client whose session another connection takes over is told 0x8E first; an AUTH
    nobody asked for is a protocol error (0x82); enhanced authentication with a method the
    broker does not know gets CONNACK 0x8C."""
    first, _ = await Client5.connect(server, "dup")
    second, _ = await Client5.connect(server, "dup")
    goodbye = await first.read()
    assert (goodbye.name, goodbye.reason) == ("DISCONNECT", 0x8E)
    await first.closed()
    await second.send(wire.auth(0x19))
    goodbye = await second.read()
    assert (goodbye.name, goodbye.reason) == ("DISCONNECT", 0x82)
    await second.closed()
    await Client5.connect(server, "auth", properties=[(AUTH_METHOD, "SCRAM-SHA-1")], expect=0x8C)


async def test_flow_control_from_the_client(server: Server) -> None:
    """Receive Maximum 1: one QoS 1 delivery in flight at a time ([MQTT-3.3.4-7]); Maximum
    Packet Size: a larger PUBLISH is not sent, the next that fits is ([MQTT-3.1.2-25])."""
    sub, _ = await Client5.connect(
        server, "sub", properties=[(RECEIVE_MAXIMUM, 1), (MAXIMUM_PACKET_SIZE, 64)]
    )
    await sub.subscribe(1, ("t", 1))
    pub, _ = await Client5.connect(server, "pub")
    for payload in (b"one", b"x" * 100, b"two", b"three"):
        await pub.send(wire.publish("t", payload, 1, pid=1, version=5))
        assert (await pub.read()).name == "PUBACK"
    got = await sub.read()
    assert got.payload == b"one"
    await sub.sync()  # nothing more while "one" is unacknowledged
    await sub.send(wire.puback(got.pid or 0))
    got = await sub.read()
    assert got.payload == b"two"  # the 100-byte message was too large: dropped
    await sub.send(wire.puback(got.pid or 0))
    assert (await sub.read()).payload == b"three"


async def test_enhanced_authentication_plugged_in(start_server: StartServer) -> None:
    """A method from ``[auth] methods`` runs its exchange: AUTH 0x18 before CONNACK, then
    CONNACK with the method and the server's last data (4.12); a re-authentication (AUTH
    0x19) ends with AUTH 0x00 (4.12.1); a wrong answer gets CONNACK 0x87; an unknown method
    0x8C."""
    from mqttd.config import AuthConfig
    from tests.helpers import challenge_auth

    auth = AuthConfig(methods=("tests.helpers.challenge_auth:ChallengeAuth",))
    server = await start_server(auth=auth)
    method = [(AUTH_METHOD, challenge_auth.METHOD)]

    async def begin(client_id: str) -> tuple[Client5, Packet]:
        stream = await trio.open_tcp_stream("127.0.0.1", server.port())
        client = Client5(stream)
        OPEN_CLIENTS.append(client)  # type: ignore[arg-type]
        props = [*method, (0x16, b"alice")]
        await client.send(wire.connect(client_id, version=5, properties=props))
        challenge = await client.read()
        assert (challenge.name, challenge.reason) == ("AUTH", 0x18)
        assert challenge.prop(AUTH_METHOD) == challenge_auth.METHOD
        return client, challenge

    client, challenge = await begin("good")
    nonce = challenge.prop(0x16)
    assert isinstance(nonce, bytes)
    answer = [*method, (0x16, challenge_auth.response(nonce))]
    await client.send(wire.auth(0x18, answer))
    connack = await client.read()
    assert (connack.name, connack.reason) == ("CONNACK", 0)
    assert connack.prop(AUTH_METHOD) == challenge_auth.METHOD
    assert connack.prop(0x16) == b"welcome"
    assert server.state.clients["good"].protocol.username == "alice"

    await client.send(wire.auth(0x19, [*method, (0x16, b"alice")]))
    challenge = await client.read()
    assert (challenge.name, challenge.reason) == ("AUTH", 0x18)
    again = challenge.prop(0x16)
    assert isinstance(again, bytes)
    await client.send(wire.auth(0x18, [*method, (0x16, challenge_auth.response(again))]))
    done = await client.read()
    assert (done.name, done.reason, done.prop(0x16)) == ("AUTH", 0x00, b"welcome")
    await client.sync()  # still connected

    wrong, _ = await begin("wrong")
    await wrong.send(wire.auth(0x18, [*method, (0x16, b"guess")]))
    refused = await wrong.read()
    assert (refused.name, refused.reason) == ("CONNACK", 0x87)
    await wrong.closed()
    await Client5.connect(server, "other", properties=[(AUTH_METHOD, "SCRAM-SHA-1")], expect=0x8C)


async def test_monitoring_counts_clients_by_protocol(server: Server) -> None:
    """``$SYS/broker/mqttd/clients/protocol/<version>`` and the Prometheus gauge count
    connected clients by MQTT version."""
    await Client5.connect(server, "five")
    await connect_client(server.port(), "four")
    assert server.monitor is not None
    figures = server.monitor.figures()
    assert figures.clients_by_protocol == {"5": 1, "3.1.1": 1, "3.1": 0}
