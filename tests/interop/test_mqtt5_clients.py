"""MQTT 5 clients against mqttd: paho-mqtt (``MQTTv5``) and MQTT.js (``protocolVersion: 5``)
over tcp, ws and wss, Debian's ``mosquitto_pub``/``mosquitto_sub -V 5``, and MQTT 3.1.1 and 5
clients side by side (issue 13, "Proof").

The broker runs as a subprocess (``python -m mqttd``) with tcp, ws and wss listeners on free
ports; wss uses the development CA that mqttd creates in its data directory. Each test uses its
own topics, so the tests share one broker per module; the restart tests start their own, with the
SQLite store, and stop it between two runs on the same database.

paho and the readers of node's and mosquitto_sub's output run on threads; every wait is on an
event, a queue or a line of output (``LogLines.take``), with a timeout. Where a test must show
that a client got nothing more, it publishes a QoS 1 "fence" message after the others (QoS 1
too) and waits for that: a session's messages of one QoS arrive in the order the broker sent
them.

What the clients do with MQTT 5 (found here, worth knowing when reading the tests):

* paho-mqtt 2.2 does not resolve the Topic Aliases it receives: with a Topic Alias Maximum in
  its CONNECT, a message sent with only an alias reaches ``on_message`` with topic ``""`` and the
  alias in its properties; the application keeps the map (``AliasMap`` below).
* paho-mqtt 2.2 ignores a PUBREC's reason code (it sends PUBREL even after an error, and
  reports the PUBCOMP's code), and hands a QoS 2 message to ``on_message`` only at PUBREL, so
  QoS 1 messages sent after it may overtake it.
* MQTT.js 5 resolves Topic Aliases; it reports PUBACK/PUBREC 0x10 (No matching subscribers)
  as success, so the reason code is only seen in the acknowledgement itself
  (``packetreceive``).
* libmosquitto 2.0.11 (mosquitto_sub) cannot take Topic Aliases at all: with
  ``-D connect topic-alias-maximum N`` it advertises them, then closes on the first PUBLISH
  that carries only an alias ("A network protocol error occurred": its ``handle__publish``
  refuses an empty Topic Name whatever the protocol version). So it is not asked to.
* paho-mqtt 2.2 closes its wake-up socket pair only in ``Client.__del__``, which the garbage
  collector may run after the sockets' own finalizers (a ResourceWarning, an error in this
  suite): ``Paho.close`` closes them itself.
"""

from __future__ import annotations

import json
import queue
import shutil
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from conformance.broker_process import BrokerProcess, LogLines, Record, start_mqttd
from tests.helpers.threads import in_thread
from tests.interop.conftest import GATEWAY_CONFIG, JS_DIR, dev_ca, mqttjs_node

# The whole module takes about 20 s; a test that hangs stops long before pytest's global limit.
pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

#: Bound on every single wait (a CONNACK, a message, a log line).
WAIT_S = 20.0
TRANSPORTS = ["tcp", "ws", "wss"]
#: Where the broker listens (its default host) and the clients connect; the development
#: certificate that wss uses is valid for this address.
HOST = "127.0.0.1"
#: The broker's ``[limits] topic_alias_maximum`` (its default), announced in every CONNACK.
BROKER_TOPIC_ALIAS_MAXIMUM = 10


@dataclass
class Broker:
    """A running mqttd subprocess: ports by transport and the dev CA to trust for wss."""

    process: BrokerProcess
    ca_file: Path

    @property
    def ports(self) -> dict[str, int]:
        return self.process.ports


def _start(directory: Path, extra: str = "") -> Broker:
    config = directory / "mqttd.toml"
    config.write_text(GATEWAY_CONFIG + extra)
    return Broker(start_mqttd(config), dev_ca(directory))


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    running = _start(tmp_path_factory.mktemp("mqtt5"))
    with running.process:
        yield running


def _topic(prefix: str) -> str:
    return f"{prefix}/{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------------------------------------
# paho-mqtt
# ---------------------------------------------------------------------------------------------


def _properties(packet_type: int, **values: Any) -> Properties:
    """paho ``Properties`` from keyword arguments named as paho names them."""
    properties = Properties(packet_type)
    for name, value in values.items():
        setattr(properties, name, value)
    return properties


def _prop(message: paho.MQTTMessage, name: str) -> Any:
    """A property of a received message, or None (paho has no attribute for an absent one)."""
    return getattr(message.properties, name, None) if message.properties is not None else None


@dataclass
class Connack:
    session_present: bool
    reason_code: int
    properties: dict[str, Any]


class Paho:
    """A paho-mqtt client on its own network thread; what it receives can be waited for.

    Acknowledgements (CONNACK, SUBACK, PUBACK/PUBCOMP, the server's DISCONNECT) are kept by
    packet id and read under a condition, since paho may call back before ``publish`` returns.
    """

    def __init__(
        self,
        broker: Broker,
        transport: str = "tcp",
        *,
        client_id: str | None = None,
        protocol: int = paho.MQTTv5,
        manual_ack: bool = False,
    ) -> None:
        self.broker = broker
        self.transport = transport
        self.protocol = protocol
        self.client_id = client_id or f"paho5-{transport}-{uuid.uuid4().hex[:8]}"
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self._cond = threading.Condition()
        self._acks: dict[int, Any] = {}
        self.connack: Connack | None = None
        self.disconnect_reason: int | None = None
        self.acked = 0  # messages acknowledged with ack() (manual_ack)
        #: for each message: how many had been acknowledged with ack() when it arrived
        self.acked_at_arrival: list[int] = []
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=protocol,
            transport="websockets" if transport in ("ws", "wss") else "tcp",
            manual_ack=manual_ack,
            **({} if protocol == paho.MQTTv5 else {"clean_session": True}),
        )
        if transport in ("ws", "wss"):
            self.client.ws_set_options(path="/mqtt")
        if transport == "wss":
            self.client.tls_set(ca_certs=str(broker.ca_file))
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    # callbacks (paho's network thread)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        with self._cond:
            self.connack = Connack(
                flags.session_present, rc.value, props.json() if props is not None else {}
            )
            self._cond.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        self._set(mid, [code.value for code in codes])

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        self._set(mid, rc.value)

    def _on_message(self, client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        self.acked_at_arrival.append(self.acked)
        self.messages.put(message)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        with self._cond:
            self.disconnect_reason = rc.value
            self._cond.notify_all()

    def _set(self, mid: int, value: Any) -> None:
        with self._cond:
            self._acks[mid] = value
            self._cond.notify_all()

    def _take(self, mid: int, what: str) -> Any:
        with self._cond:
            assert self._cond.wait_for(lambda: mid in self._acks, WAIT_S), f"no {what}"
            return self._acks.pop(mid)

    # actions (the test's thread)

    def connect(self, *, clean_start: bool = True, **properties: Any) -> Connack:
        """CONNECT with these CONNECT properties (paho's names); returns the CONNACK."""
        port = self.broker.ports[self.transport]
        if self.protocol == paho.MQTTv5:
            connect_properties = _properties(PacketTypes.CONNECT, **properties)
            self.client.connect(
                HOST, port, 30, clean_start=clean_start, properties=connect_properties
            )
        else:
            self.client.connect(HOST, port, 30)
        self.client.loop_start()
        with self._cond:
            assert self._cond.wait_for(lambda: self.connack is not None, WAIT_S), "no CONNACK"
        assert self.connack is not None
        return self.connack

    def subscribe(
        self,
        topic_filter: str,
        qos: int = 1,
        *,
        subscription_id: int | None = None,
        no_local: bool = False,
    ) -> list[int]:
        """SUBSCRIBE; returns the SUBACK's reason codes."""
        if self.protocol != paho.MQTTv5:
            result, mid = self.client.subscribe(topic_filter, qos)
        else:
            properties = (
                _properties(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=subscription_id)
                if subscription_id is not None
                else None
            )
            options = SubscribeOptions(qos=qos, noLocal=no_local)
            result, mid = self.client.subscribe(
                topic_filter, options=options, properties=properties
            )
        assert result == paho.MQTT_ERR_SUCCESS
        codes: list[int] = self._take(mid, "SUBACK")
        return codes

    def publish(self, topic: str, payload: bytes, qos: int = 1, **properties: Any) -> int:
        """PUBLISH with these properties (paho's names); returns the reason code paho
        reports: the PUBACK's (QoS 1), the PUBCOMP's (QoS 2: paho 2.2 ignores the PUBREC's),
        0 for QoS 0 once sent."""
        publish_properties = _properties(PacketTypes.PUBLISH, **properties) if properties else None
        info = self.client.publish(topic, payload, qos, properties=publish_properties)
        assert info.rc == paho.MQTT_ERR_SUCCESS, info.rc
        code: int = self._take(info.mid, "acknowledgement")
        return code

    def receive(self) -> paho.MQTTMessage:
        return self.messages.get(timeout=WAIT_S)

    def ack(self, message: paho.MQTTMessage) -> None:
        """Acknowledge a message (``manual_ack``)."""
        self.acked += 1
        self.client.ack(message.mid, message.qos)

    def wait_disconnected(self) -> int:
        """The reason code of the DISCONNECT the server sent (or of the lost connection)."""
        with self._cond:
            assert self._cond.wait_for(lambda: self.disconnect_reason is not None, WAIT_S), (
                "still connected"
            )
            assert self.disconnect_reason is not None
            return self.disconnect_reason

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client._reset_sockets()  # its wake-up socket pair (see the module docstring)


@pytest.fixture
def clients(broker: Broker) -> Iterator[Callable[..., Paho]]:
    made: list[Paho] = []

    def make(transport: str = "tcp", **kwargs: Any) -> Paho:
        made.append(Paho(broker, transport, **kwargs))
        return made[-1]

    yield make
    for client in made:
        client.close()


def _fence(publisher: Paho, topic: str) -> None:
    """Publish the fence message (see the module docstring) on ``topic`` at QoS 1."""
    publisher.publish(topic, b"fence", 1)


def _until_fence(client: Paho) -> list[paho.MQTTMessage]:
    """Every message ``client`` receives before the fence."""
    got = []
    while (message := client.receive()).payload != b"fence":
        got.append(message)
    return got


@pytest.mark.parametrize("transport", TRANSPORTS)
@in_thread
def test_paho5_connect_properties_and_session_expiry(
    clients: Callable[..., Paho], transport: str
) -> None:
    """CONNECT with Session Expiry Interval, Receive Maximum and Topic Alias Maximum: CONNACK
    0x00 announces the broker's Topic Alias Maximum; the session outlives the connection
    (Session Present on a Clean Start 0 reconnect) and Clean Start 1 ends it."""
    first = clients(transport)
    connack = first.connect(SessionExpiryInterval=60, ReceiveMaximum=5, TopicAliasMaximum=3)
    assert (connack.session_present, connack.reason_code) == (False, 0)
    assert connack.properties.get("TopicAliasMaximum") == BROKER_TOPIC_ALIAS_MAXIMUM
    assert "SessionExpiryInterval" not in connack.properties  # the interval asked is in force
    topic = _topic("expiry")
    assert first.subscribe(topic, 1) == [1]
    first.close()

    publisher = clients("tcp")
    publisher.connect()
    publisher.publish(topic, b"while away", 1)
    again = clients(transport, client_id=first.client_id)
    assert again.connect(clean_start=False, SessionExpiryInterval=60).session_present
    assert again.receive().payload == b"while away"
    again.close()

    fresh = clients(transport, client_id=first.client_id)
    assert not fresh.connect(clean_start=True).session_present  # Clean Start ends it
    fresh.close()
    # ... and with Session Expiry Interval 0 (the default) the session ended with that
    # connection: nothing to resume.
    last = clients(transport, client_id=first.client_id)
    assert not last.connect(clean_start=False).session_present


@pytest.mark.parametrize("transport", TRANSPORTS)
@in_thread
def test_paho5_receive_maximum_holds_back_messages(
    clients: Callable[..., Paho], transport: str
) -> None:
    """With Receive Maximum 2 a paho client acknowledging by hand never has more than two
    unacknowledged QoS 1 messages, and gets all of them, in order ([MQTT-3.3.4-9])."""
    subscriber = clients(transport, manual_ack=True)
    subscriber.connect(ReceiveMaximum=2)
    topic = _topic("window")
    subscriber.subscribe(topic, 1)
    publisher = clients("tcp")
    publisher.connect()
    for i in range(6):
        publisher.publish(topic, b"%d" % i, 1)
    got = []
    for _ in range(6):
        message = subscriber.receive()
        got.append(message.payload)
        subscriber.ack(message)
    assert got == [b"%d" % i for i in range(6)]
    # message k (from 0) arrived only once k - 1 of the earlier ones were acknowledged
    assert all(acked >= k - 1 for k, acked in enumerate(subscriber.acked_at_arrival))


#: Properties a publisher sets and a subscriber must receive unchanged (paho's names).
ROUND_TRIP = {
    "PayloadFormatIndicator": 1,
    "ContentType": "application/json; charset=utf-8",
    "ResponseTopic": "replies/ü",
    "CorrelationData": b"\x00\x01\xfe\xff",
    # duplicate names, in this order [MQTT-3.3.2-18]
    "UserProperty": [("trace", "a"), ("unit", "°C"), ("trace", "b")],
}


@pytest.mark.parametrize("transport", TRANSPORTS)
@in_thread
def test_paho5_properties_round_trip_in_order(clients: Callable[..., Paho], transport: str) -> None:
    """User properties (repeated names, order kept), content type, response topic,
    correlation data and message expiry reach a paho subscriber intact and in order, at
    QoS 0, 1 and 2; a request/response pair works through them."""
    subscriber = clients(transport)
    subscriber.connect()
    publisher = clients(transport)
    publisher.connect()
    topic = _topic("props")
    subscriber.subscribe(topic, 2)
    for qos in (0, 1, 2):
        for i in range(3):
            properties = dict(ROUND_TRIP, MessageExpiryInterval=3600)
            properties["UserProperty"] = [*ROUND_TRIP["UserProperty"], ("n", str(i))]
            publisher.publish(topic, json.dumps({"n": i}).encode(), qos, **properties)
        for i in range(3):
            message = subscriber.receive()
            assert (message.topic, message.payload, message.qos) == (
                topic,
                json.dumps({"n": i}).encode(),
                qos,
            )
            for name, value in ROUND_TRIP.items():
                if name != "UserProperty":
                    assert _prop(message, name) == value, name
            assert _prop(message, "UserProperty") == [*ROUND_TRIP["UserProperty"], ("n", str(i))]
            # what is left of the lifetime: never more than sent [MQTT-3.3.2-6]
            assert 3600 - WAIT_S <= _prop(message, "MessageExpiryInterval") <= 3600
            assert _prop(message, "SubscriptionIdentifier") is None

    # request/response: the responder answers on the Response Topic with the Correlation Data
    replies = _topic("replies")
    publisher.subscribe(replies, 1)
    publisher.publish(topic, b"ping", 1, ResponseTopic=replies, CorrelationData=b"req-42")
    request = subscriber.receive()
    subscriber.publish(
        _prop(request, "ResponseTopic"),
        b"pong",
        1,
        CorrelationData=_prop(request, "CorrelationData"),
    )
    reply = publisher.receive()
    assert (reply.topic, reply.payload, _prop(reply, "CorrelationData")) == (
        replies,
        b"pong",
        b"req-42",
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
@in_thread
def test_paho5_reason_codes(clients: Callable[..., Paho], transport: str) -> None:
    """paho sees the broker's reason codes: PUBACK 0x10 when nobody subscribes, 0x00 when
    someone does, 0x99 for a payload that breaks its Payload Format Indicator, UNSUBACK 0x11
    for a subscription that did not exist; a Topic Alias above the broker's maximum gets
    DISCONNECT 0x94 ([MQTT-3.3.2-9]). paho ignores a PUBREC's reason code and sends PUBREL
    even after PUBREC 0x99, which ended the exchange (4.3.3): mqttd answers PUBCOMP 0x92
    (Packet Identifier not found) and keeps the connection."""
    client = clients(transport)
    client.connect()
    nobody = _topic("nobody")
    assert client.publish(nobody, b"x", 1) == 0x10
    assert client.publish(nobody, b"x", 2) == 0x00  # PUBREC 0x10, PUBCOMP 0x00
    client.subscribe(nobody, 1)
    assert client.publish(nobody, b"x", 1) == 0x00
    assert client.receive().payload == b"x"
    assert client.publish(nobody, b"\xff\xfe", 1, PayloadFormatIndicator=1) == 0x99
    assert client.publish(nobody, b"\xff\xfe", 2, PayloadFormatIndicator=1) == 0x92
    assert client.publish(nobody, "é".encode(), 2, PayloadFormatIndicator=1) == 0x00
    assert client.receive().payload == "é".encode()  # nothing refused was delivered

    unsubscribed: queue.Queue[list[int]] = queue.Queue()
    client.client.on_unsubscribe = lambda c, u, mid, codes, props: unsubscribed.put(
        [code.value for code in codes]
    )
    client.client.unsubscribe([nobody, _topic("never")])
    assert unsubscribed.get(timeout=WAIT_S) == [0x00, 0x11]

    client.publish(
        _topic("alias"), b"x", 0, TopicAlias=BROKER_TOPIC_ALIAS_MAXIMUM + 1
    )  # QoS 0: paho reports it sent; the broker answers with DISCONNECT
    assert client.wait_disconnected() == 0x94


@pytest.mark.parametrize("transport", TRANSPORTS)
@in_thread
def test_paho5_shared_subscription(clients: Callable[..., Paho], transport: str) -> None:
    """Two paho clients in ``$share/g/...``: each message goes to exactly one of them, and
    both get some; a third, non-shared subscriber gets every message."""
    topic = _topic("shared")
    members = [clients(transport), clients(transport)]
    for member in members:
        member.connect()
        assert member.subscribe(f"$share/g/{topic}/#", 1) == [1]
        member.subscribe(f"{topic}/fence", 1)
    watcher = clients("tcp")
    watcher.connect()
    watcher.subscribe(f"{topic}/#", 1)
    publisher = clients(transport)
    publisher.connect()
    sent = [b"%d" % i for i in range(20)]
    for payload in sent:
        publisher.publish(f"{topic}/job", payload, 1)
    _fence(publisher, f"{topic}/fence")
    shares = [[m.payload for m in _until_fence(member)] for member in members]
    assert sorted(shares[0] + shares[1], key=int) == sent  # each exactly once
    assert all(shares), f"one member got nothing: {shares}"
    assert all(share == sorted(share, key=int) for share in shares)
    assert [m.payload for m in _until_fence(watcher)] == sent


@pytest.mark.parametrize("transport", TRANSPORTS)
@in_thread
def test_paho5_publishes_with_topic_alias(clients: Callable[..., Paho], transport: str) -> None:
    """paho publishes with a Topic Alias, then with the alias alone (empty topic), then
    points the alias at another topic: MQTT 5 and MQTT 3.1.1 subscribers get the full topic
    each time."""
    topic = _topic("alias")
    other = f"{topic}/other"
    subscriber5 = clients(transport)
    subscriber5.connect()
    subscriber5.subscribe(f"{topic}/#", 1)
    subscriber311 = clients(transport, protocol=paho.MQTTv311)
    subscriber311.connect()
    subscriber311.subscribe(f"{topic}/#", 1)
    publisher = clients(transport)
    assert publisher.connect().properties["TopicAliasMaximum"] == BROKER_TOPIC_ALIAS_MAXIMUM
    publisher.publish(topic, b"first", 1, TopicAlias=3)
    publisher.publish("", b"second", 1, TopicAlias=3)
    publisher.publish("", b"third", 0, TopicAlias=3)
    publisher.publish(other, b"fourth", 1, TopicAlias=3)  # a new topic for alias 3
    publisher.publish("", b"fifth", 1, TopicAlias=3)
    for subscriber in (subscriber5, subscriber311):
        got = [subscriber.receive() for _ in range(5)]
        assert [(m.topic, m.payload) for m in got] == [
            (topic, b"first"),
            (topic, b"second"),
            (topic, b"third"),
            (other, b"fourth"),
            (other, b"fifth"),
        ]
        assert all(_prop(m, "TopicAlias") is None for m in got)  # the subscriber took none


class AliasMap:
    """What a paho application must do with Topic Aliases it accepts: paho 2.2 passes an
    aliased message on with topic ``""`` and the alias in its properties."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.topics: dict[int, str] = {}
        self.alias_only = 0  # messages that came with the alias alone

    def resolve(self, message: paho.MQTTMessage) -> str:
        alias = _prop(message, "TopicAlias")
        if alias is None:
            assert message.topic, "no topic and no alias"
            return message.topic
        assert 0 < alias <= self.maximum, f"alias {alias} above the maximum {self.maximum}"
        if message.topic:
            self.topics[alias] = message.topic
            return message.topic
        self.alias_only += 1
        return self.topics[alias]


@pytest.mark.parametrize("transport", TRANSPORTS)
@in_thread
def test_paho5_receives_topic_aliases(clients: Callable[..., Paho], transport: str) -> None:
    """A paho client with Topic Alias Maximum 2 gets aliases from mqttd for its first two
    topics (the topic once, then the alias alone) and full topics for the third; resolved,
    every message has its topic."""
    base = _topic("aliased")
    subscriber = clients(transport)
    subscriber.connect(TopicAliasMaximum=2)
    subscriber.subscribe(f"{base}/#", 1)
    publisher = clients("tcp")
    publisher.connect()
    sent = [(f"{base}/{name}", b"%d" % i) for i in range(3) for name in ("a", "b", "c")]
    for topic, payload in sent:
        publisher.publish(topic, payload, 1)
    aliases = AliasMap(2)
    got = []
    for _ in sent:
        message = subscriber.receive()
        got.append((aliases.resolve(message), message.payload))
    assert got == sent
    assert sorted(aliases.topics.values()) == [f"{base}/a", f"{base}/b"]
    assert aliases.alias_only == 4  # a and b, twice each after the first time


@pytest.mark.parametrize("transport", TRANSPORTS)
@in_thread
def test_paho5_subscription_identifiers(clients: Callable[..., Paho], transport: str) -> None:
    """Subscription Identifiers come back with every message that matches: one copy with
    both identifiers where two subscriptions overlap ([MQTT-3.3.4-3]), none for a
    subscription made without one."""
    base = _topic("subid")
    client = clients(transport)
    client.connect()
    client.subscribe(f"{base}/+", 1, subscription_id=7)
    client.subscribe(f"{base}/#", 1, subscription_id=268_435_455)  # the largest
    client.subscribe(f"{base}/x/plain", 1)
    publisher = clients("tcp")
    publisher.connect()
    publisher.publish(f"{base}/a", b"both", 1)
    publisher.publish(f"{base}/x/y", b"hash", 1)
    publisher.publish(f"{base}/x/plain", b"hash+plain", 1)
    got = {}
    for _ in range(3):
        message = client.receive()
        got[message.payload] = sorted(_prop(message, "SubscriptionIdentifier") or [])
    assert got == {b"both": [7, 268_435_455], b"hash": [268_435_455], b"hash+plain": [268_435_455]}


@pytest.mark.parametrize("transport", TRANSPORTS)
@in_thread
def test_mqtt311_and_mqtt5_clients_side_by_side(
    clients: Callable[..., Paho], transport: str
) -> None:
    """An MQTT 3.1.1 subscriber gets an MQTT 5 publisher's message (without its properties),
    and an MQTT 5 subscriber gets an MQTT 3.1.1 publisher's (with none)."""
    topic = _topic("mixed")
    old = clients(transport, protocol=paho.MQTTv311)
    old.connect()
    old.subscribe(topic, 2)
    new = clients(transport)
    new.connect()
    new.subscribe(topic, 2)
    new.publish(topic, b"from v5", 2, UserProperty=[("k", "v")], ContentType="text/plain")
    message = old.receive()
    assert (message.topic, message.payload, message.qos) == (topic, b"from v5", 2)
    assert message.properties is None  # paho builds no Properties for a 3.1.1 PUBLISH
    assert _prop(new.receive(), "UserProperty") == [("k", "v")]  # its own, No Local off

    old.publish(topic, b"from v3.1.1", 1)
    assert old.receive().payload == b"from v3.1.1"
    message = new.receive()
    assert (message.topic, message.payload, message.qos) == (topic, b"from v3.1.1", 1)
    assert message.properties is not None
    assert message.properties.json() == {}


# ---------------------------------------------------------------------------------------------
# Session expiry across a broker restart (the SQLite store)
# ---------------------------------------------------------------------------------------------

STORE = '\n[store]\ndurability = "fsync"\n'


def _restart(broker: Broker, directory: Path, how: str) -> Broker:
    """Stop ``broker`` (``graceful``: SIGTERM; ``kill``: SIGKILL) and start it again on the
    same database; the new one listens on new ports."""
    if how == "kill":
        broker.process.proc.send_signal(signal.SIGKILL)
    assert broker.process.stop() in (0, -signal.SIGKILL)
    return _start(directory, STORE)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["graceful", "kill"])
@in_thread
def test_paho5_session_and_properties_survive_restart(tmp_path: Path, how: str) -> None:
    """A paho session with a long Session Expiry Interval, and the QoS 1/2 messages queued for
    it (with their properties and what is left of their lifetime), outlive a restart of the
    broker: Session Present, every message with its properties and Subscription Identifier,
    in order per topic and QoS [MQTT-4.6.0-6] (paho hands a QoS 2 message over only at
    PUBREL, so QoS 1 ones sent after it may overtake it)."""
    broker = _start(tmp_path, STORE)
    made: list[Paho] = []
    try:
        subscriber = Paho(broker, client_id="restart-sub")
        made.append(subscriber)
        subscriber.connect(clean_start=True, SessionExpiryInterval=3600)
        subscriber.subscribe("restart/#", 2, subscription_id=5)
        subscriber.close()
        publisher = Paho(broker)
        made.append(publisher)
        publisher.connect()
        sent = [(f"restart/q{1 + i % 2}", b"%d" % i, 1 + i % 2) for i in range(6)]
        for topic, payload, qos in sent:
            publisher.publish(topic, payload, qos, MessageExpiryInterval=3600, **ROUND_TRIP)
        publisher.close()

        broker = _restart(broker, tmp_path, how)
        again = Paho(broker, client_id="restart-sub")
        made.append(again)
        assert again.connect(clean_start=False, SessionExpiryInterval=3600).session_present
        got = [again.receive() for _ in sent]
        for qos in (1, 2):
            assert [(m.topic, m.payload, m.qos) for m in got if m.qos == qos] == [
                message for message in sent if message[2] == qos
            ]
        for message in got:
            assert _prop(message, "SubscriptionIdentifier") == [5]
            for name, value in ROUND_TRIP.items():
                assert _prop(message, name) == value, name
            assert 3600 - 2 * WAIT_S <= _prop(message, "MessageExpiryInterval") <= 3600
    finally:
        for client in made:
            client.close()
        broker.process.stop()


#: The Session Expiry Interval of the session that must end after a restart (seconds).
SHORT_S = 2


@pytest.mark.slow
@in_thread
def test_paho5_expiry_runs_on_after_restart(tmp_path: Path) -> None:
    """Expiry times survive a restart (SIGKILL): a session whose client was still connected
    when the broker died ends ``SHORT_S`` after the restart (the broker logs
    ``session_expired``, and a Clean Start 0 reconnect finds no session) [MQTT-4.1.0-2]; a
    message queued for another session whose Message Expiry Interval passed meanwhile is not
    delivered [MQTT-3.3.2-5], and one still alive comes with what is left of its interval
    [MQTT-3.3.2-6]."""
    broker = _start(tmp_path, STORE)
    made: list[Paho] = []

    def paho_client(client_id: str | None = None) -> Paho:
        made.append(Paho(broker, client_id=client_id))
        return made[-1]

    try:
        keeper = paho_client("restart-keeper")
        keeper.connect(clean_start=True, SessionExpiryInterval=3600)
        keeper.subscribe("expiring/#", 1)
        keeper.close()
        publisher = paho_client()
        publisher.connect()
        publisher.publish("expiring/soon", b"soon", 1, MessageExpiryInterval=1)
        publisher.publish("expiring/late", b"late", 1, MessageExpiryInterval=3600)
        publisher.close()
        # Connected when the broker dies: its expiry can only count from the restart, so no
        # timing of the restart can make it end before (a client that left first could).
        short = paho_client("restart-short")
        short.connect(clean_start=True, SessionExpiryInterval=SHORT_S)
        short.subscribe("short/#", 1)
        broker.process.proc.send_signal(signal.SIGKILL)
        assert short.wait_disconnected() != 0
        short.close()  # before it reconnects by itself
        assert broker.process.stop() == -signal.SIGKILL
        broker = _start(tmp_path, STORE)

        # The interval is seconds of wall time: nothing else can be waited for.
        broker.process.wait_for(
            lambda record: (
                record.get("event") == "session_expired"
                and record.get("client_id") == "restart-short"
            ),
            "session_expired for restart-short",
            timeout_s=SHORT_S + WAIT_S,
        )
        again = paho_client("restart-short")
        assert not again.connect(clean_start=False, SessionExpiryInterval=SHORT_S).session_present
        again.close()

        keeper = paho_client("restart-keeper")
        assert keeper.connect(clean_start=False, SessionExpiryInterval=3600).session_present
        publisher = paho_client()
        publisher.connect()
        _fence(publisher, "expiring/fence")
        got = _until_fence(keeper)
        assert [(m.topic, m.payload) for m in got] == [("expiring/late", b"late")]
        # at least SHORT_S seconds passed since it was published
        assert 3600 - 2 * WAIT_S <= _prop(got[0], "MessageExpiryInterval") <= 3600 - SHORT_S
    finally:
        for client in made:
            client.close()
        broker.process.stop()


# ---------------------------------------------------------------------------------------------
# MQTT.js
# ---------------------------------------------------------------------------------------------


class MqttJs:
    """``node mqttjs5_client.mjs``: commands as JSON lines on stdin, events read back."""

    def __init__(self, broker: Broker, transport: str, options: dict[str, Any]) -> None:
        port = broker.ports[transport]
        path = "" if transport == "tcp" else "/mqtt"
        scheme = "mqtt" if transport == "tcp" else transport
        url = f"{scheme}://{HOST}:{port}{path}"
        args = [mqttjs_node(), "mqttjs5_client.mjs", url, "--options", json.dumps(options)]
        if transport == "wss":
            args += ["--ca", str(broker.ca_file)]
        self.proc = subprocess.Popen(
            args,
            cwd=JS_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.proc.stdout is not None
        self.output = LogLines(self.proc.stdout)
        self._ids = 0
        self.connack = self.expect("connected")

    def expect(self, event: str, predicate: Callable[[Record], bool] = lambda r: True) -> Record:
        """The first event called ``event`` that ``predicate`` accepts (an ``error`` or a line
        that is not an event, such as a stack trace, fails the test)."""
        return self.output.take(
            lambda r: r.get("event") == event and predicate(r),
            f"{event!r} from MQTT.js",
            WAIT_S,
            give_up=lambda r: r.get("event") in ("error", "output"),
        )

    def send(self, cmd: str, **fields: Any) -> int:
        """Send a command without waiting for its answer; returns its id."""
        self._ids += 1
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, "id": self._ids, **fields}).encode() + b"\n")
        self.proc.stdin.flush()
        return self._ids

    def command(self, cmd: str, **fields: Any) -> Record:
        """Send a command; returns its answer (``subscribed``, ``published``)."""
        number = self.send(cmd, **fields)
        answer = {"subscribe": "subscribed", "publish": "published"}[cmd]
        return self.expect(answer, lambda r: r.get("id") == number)

    def subscribe(self, topic_filter: str, qos: int = 1, **fields: Any) -> list[int]:
        record = self.command("subscribe", filter=topic_filter, qos=qos, **fields)
        assert record["error"] is None, record
        codes: list[int] = record["granted"]
        return codes

    def publish(
        self, topic: str, payload: str | dict[str, str], qos: int = 1, **fields: Any
    ) -> Record:
        return self.command("publish", topic=topic, payload=payload, qos=qos, **fields)

    def receive(self) -> Record:
        return self.expect("message")

    def until_fence(self) -> list[Record]:
        got = []
        while (message := self.receive())["payload"] != "fence":
            got.append(message)
        return got

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.output.thread.join(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def mqttjs(broker: Broker) -> Iterator[Callable[..., MqttJs]]:
    started: list[MqttJs] = []

    def start(transport: str, **options: Any) -> MqttJs:
        started.append(MqttJs(broker, transport, options))
        return started[-1]

    yield start
    for client in started:
        client.close()


#: The same properties as ``ROUND_TRIP``, as MQTT.js names them (user properties are an object:
#: repeated names become a list, and names keep their first-seen order).
JS_ROUND_TRIP = {
    "payloadFormatIndicator": True,
    "contentType": "application/json; charset=utf-8",
    "responseTopic": "replies/ü",
    "correlationData": {"hex": "0001feff"},
    "userProperties": {"trace": ["a", "b"], "unit": "°C"},
}


@pytest.mark.parametrize("transport", TRANSPORTS)
@in_thread
def test_mqttjs5_properties_round_trip(
    broker: Broker,
    clients: Callable[..., Paho],
    mqttjs: Callable[..., MqttJs],
    transport: str,
) -> None:
    """MQTT.js with protocolVersion 5: the CONNACK's properties, a SUBACK, and its message
    properties reach an MQTT.js subscriber and a paho one intact, in order; paho's reach
    MQTT.js."""
    topic = _topic("js5")
    js = mqttjs(transport, properties={"sessionExpiryInterval": 30, "receiveMaximum": 10})
    assert js.connack["reasonCode"] == 0
    assert js.connack["properties"]["topicAliasMaximum"] == BROKER_TOPIC_ALIAS_MAXIMUM
    assert js.subscribe(topic, 2, properties={"subscriptionIdentifier": 12}) == [2]
    paho_sub = clients(transport)
    paho_sub.connect()
    paho_sub.subscribe(topic, 2)
    for qos in (0, 1, 2):
        answer = js.publish(
            topic,
            f"js{qos}",
            qos,
            properties={**JS_ROUND_TRIP, "messageExpiryInterval": 600},
        )
        assert answer["error"] is None, answer
    for qos in (0, 1, 2):
        message = js.receive()
        assert (message["topic"], message["payload"], message["qos"]) == (topic, f"js{qos}", qos)
        properties = message["properties"]
        assert {k: properties[k] for k in JS_ROUND_TRIP} == JS_ROUND_TRIP
        assert properties["subscriptionIdentifier"] == 12
        assert 600 - WAIT_S <= properties["messageExpiryInterval"] <= 600
        received = paho_sub.receive()
        assert (received.payload, received.qos) == (f"js{qos}".encode(), qos)
        assert _prop(received, "UserProperty") == [("trace", "a"), ("trace", "b"), ("unit", "°C")]
        assert _prop(received, "CorrelationData") == b"\x00\x01\xfe\xff"

    paho_pub = clients(transport)
    paho_pub.connect()
    paho_pub.publish(topic, b"from paho", 1, **ROUND_TRIP)
    assert paho_sub.receive().payload == b"from paho"
    message = js.receive()
    assert message["payload"] == "from paho"
    assert {k: message["properties"][k] for k in JS_ROUND_TRIP} == JS_ROUND_TRIP


@pytest.mark.parametrize("transport", TRANSPORTS)
@in_thread
def test_mqttjs5_shared_subscription(mqttjs: Callable[..., MqttJs], transport: str) -> None:
    """Two MQTT.js clients in ``$share/g/...``: each message to exactly one, both get some."""
    topic = _topic("jsshared")
    members = [mqttjs(transport), mqttjs(transport)]
    for member in members:
        assert member.subscribe(f"$share/g/{topic}/#", 1) == [1]
        member.subscribe(f"{topic}/fence", 1)
    publisher = mqttjs(transport)
    sent = [str(i) for i in range(20)]
    for payload in sent:
        assert publisher.publish(f"{topic}/job", payload, 1)["acks"] == {"puback": 0}
    publisher.publish(f"{topic}/fence", "fence", 1)
    shares = [[m["payload"] for m in member.until_fence()] for member in members]
    assert sorted(shares[0] + shares[1], key=int) == sent
    assert all(shares), f"one member got nothing: {shares}"


@pytest.mark.parametrize("transport", TRANSPORTS)
@in_thread
def test_mqttjs5_topic_aliases_both_ways(
    clients: Callable[..., Paho], mqttjs: Callable[..., MqttJs], transport: str
) -> None:
    """MQTT.js with ``topicAliasMaximum`` resolves the aliases mqttd sends it (the topic once,
    then the alias alone); with ``autoAssignTopicAlias`` it publishes with aliases, which
    mqttd resolves for a paho subscriber."""
    base = _topic("jsalias")
    js = mqttjs(transport, properties={"topicAliasMaximum": 2}, autoAssignTopicAlias=True)
    js.subscribe(f"{base}/in/#", 1)
    publisher = clients("tcp")
    publisher.connect()
    sent = [(f"{base}/in/{name}", str(i)) for i in range(2) for name in ("a", "b", "c")]
    for topic, payload in sent:
        publisher.publish(topic, payload.encode(), 1)
    got = [js.receive() for _ in sent]
    assert [(m["topic"], m["payload"]) for m in got] == sent
    wire = [(m["wireTopic"], m["properties"].get("topicAlias")) for m in got]
    # a and b take aliases 1 and 2 (the topic is sent once); c, past the maximum, none
    assert wire == [
        (f"{base}/in/a", 1),
        (f"{base}/in/b", 2),
        (f"{base}/in/c", None),
        ("", 1),
        ("", 2),
        (f"{base}/in/c", None),
    ]

    subscriber = clients(transport)
    subscriber.connect()
    subscriber.subscribe(f"{base}/out/#", 1)
    outgoing = [(f"{base}/out/{name}", str(i)) for i in range(3) for name in ("x", "y")]
    answers = [js.publish(topic, payload, 1) for topic, payload in outgoing]
    assert all(answer["error"] is None for answer in answers), answers
    # MQTT.js took aliases 1 and 2 from the broker's maximum and sent each topic once
    assert [tuple(answer["sent"].values()) for answer in answers] == [
        (f"{base}/out/x", 1),
        (f"{base}/out/y", 2),
        ("", 1),
        ("", 2),
        ("", 1),
        ("", 2),
    ]
    assert [(m.topic, m.payload.decode()) for m in (subscriber.receive() for _ in outgoing)] == (
        outgoing
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
@in_thread
def test_mqttjs5_reason_codes(mqttjs: Callable[..., MqttJs], transport: str) -> None:
    """What MQTT.js shows of mqttd's reason codes: PUBACK/PUBREC 0x10 when nobody subscribes
    (a success to MQTT.js), 0x99 as a failed publish (error code 153), and the server's
    DISCONNECT 0x82 for No Local on a shared subscription ([MQTT-3.8.3-4])."""
    js = mqttjs(transport)
    nobody = _topic("jsnobody")
    assert js.publish(nobody, "x", 1) == {
        "event": "published",
        "id": 1,
        "acks": {"puback": 0x10},
        "sent": {"topic": nobody, "topicAlias": None},
        "error": None,
    }
    assert js.publish(nobody, "x", 2)["acks"] == {"pubrec": 0x10, "pubcomp": 0}
    not_utf8 = {"hex": "fffe"}
    refused = js.publish(nobody, not_utf8, 1, properties={"payloadFormatIndicator": True})
    assert refused["acks"] == {"puback": 0x99}
    assert refused["error"]["code"] == 0x99
    js.subscribe(nobody, 1)
    assert js.publish(nobody, "y", 1)["acks"] == {"puback": 0}
    assert js.receive()["payload"] == "y"

    js.send("subscribe", filter=f"$share/g/{nobody}", qos=1, nl=True)  # no SUBACK comes
    farewell = js.expect("disconnect")
    assert farewell["reasonCode"] == 0x82


# ---------------------------------------------------------------------------------------------
# mosquitto_pub / mosquitto_sub -V 5
# ---------------------------------------------------------------------------------------------

needs_mosquitto = pytest.mark.skipif(
    shutil.which("mosquitto_sub") is None, reason="mosquitto-clients is not installed"
)
#: mosquitto_sub's output format: topic, payload, user properties (``k:v`` separated by
#: spaces), content type, response topic, correlation data, Subscription Identifier.
FORMAT = "MSG|%t|%p|%P|%C|%R|%D|%S"


class MosquittoSub:
    """A running ``mosquitto_sub -d -F FORMAT``: its debug lines say when the SUBACK came,
    its formatted lines are the messages (which may come first: a resumed session's)."""

    def __init__(self, port: int, *args: str) -> None:
        # stdbuf: line-buffer the output, which would sit in a block buffer on a pipe.
        argv = ["stdbuf", "-oL", "mosquitto_sub", "-h", HOST, "-p", str(port), "-d", "-F", FORMAT]
        self.proc = subprocess.Popen(
            [*argv, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.proc.stdout is not None
        self.output = LogLines(self.proc.stdout)

    def subscribed(self) -> None:
        """Wait for the SUBACK."""
        self.output.take(lambda r: "received SUBACK" in r.get("line", ""), "SUBACK", WAIT_S)

    def receive(self) -> list[str]:
        """The next message's fields (FORMAT without the MSG marker)."""
        line = self.output.take(lambda r: r.get("line", "").startswith("MSG|"), "a message", WAIT_S)
        fields: list[str] = line["line"].split("|")[1:]
        return fields

    def close(self) -> int:
        """Wait for it to exit by itself (``-C n``), else kill it; its exit status."""
        try:
            self.proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.output.thread.join(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return self.proc.returncode


@pytest.fixture
def mosquitto_sub(broker: Broker) -> Iterator[Callable[..., MosquittoSub]]:
    started: list[MosquittoSub] = []

    def start(*args: str, wait: bool = True) -> MosquittoSub:
        """Start ``mosquitto_sub ARGS``; with ``wait``, return once it has its SUBACK."""
        started.append(MosquittoSub(broker.ports["tcp"], *args))
        if wait:
            started[-1].subscribed()
        return started[-1]

    yield start
    for sub in started:
        if sub.proc.poll() is None:
            sub.proc.kill()
        sub.close()


def mosquitto_pub(broker: Broker, *args: str) -> None:
    subprocess.run(
        ["mosquitto_pub", "-h", HOST, "-p", str(broker.ports["tcp"]), "-V", "5", *args],
        check=True,
        timeout=WAIT_S,
        stdin=subprocess.DEVNULL,
    )


@needs_mosquitto
@in_thread
def test_mosquitto5_user_properties(
    broker: Broker, clients: Callable[..., Paho], mosquitto_sub: Callable[..., MosquittoSub]
) -> None:
    """``mosquitto_pub -V 5 -D publish user-property ...`` reaches ``mosquitto_sub -V 5`` (which
    prints them, repeats in order) and paho with every property, and paho's user
    properties reach mosquitto_sub."""
    topic = _topic("mosq5")
    sub = mosquitto_sub(
        "-V", "5", "-q", "1", "-t", topic, "-C", "2",
        "-D", "subscribe", "subscription-identifier", "3",
    )  # fmt: skip
    paho_sub = clients()
    paho_sub.connect()
    paho_sub.subscribe(topic, 1)
    mosquitto_pub(
        broker, "-q", "1", "-t", topic, "-m", "hello",
        "-D", "publish", "user-property", "k", "v1",
        "-D", "publish", "user-property", "k", "v2",
        "-D", "publish", "user-property", "site", "north",
        "-D", "publish", "content-type", "text/plain",
        "-D", "publish", "response-topic", "reply/here",
        "-D", "publish", "correlation-data", "abc",
    )  # fmt: skip
    assert sub.receive() == [
        topic, "hello", "k:v1 k:v2 site:north", "text/plain", "reply/here", "abc", "3"
    ]  # fmt: skip
    message = paho_sub.receive()
    assert message.payload == b"hello"
    assert _prop(message, "UserProperty") == [("k", "v1"), ("k", "v2"), ("site", "north")]
    assert (_prop(message, "ContentType"), _prop(message, "CorrelationData")) == (
        "text/plain",
        b"abc",
    )

    paho_pub = clients()
    paho_pub.connect()
    paho_pub.publish(topic, b"from paho", 2, UserProperty=[("x", "1"), ("y", "2")])
    assert sub.receive() == [topic, "from paho", "x:1 y:2", "", "", "", "3"]
    assert sub.close() == 0


@needs_mosquitto
@in_thread
def test_mosquitto5_session_expiry(
    broker: Broker, mosquitto_sub: Callable[..., MosquittoSub]
) -> None:
    """``mosquitto_sub -V 5 -c -x 60 -i ID`` gets what was published while it was away, user
    properties included; with ``-x 0`` the session ends with the connection, so a reconnect
    gets only what comes after it."""
    topic = _topic("mosqx")
    client_id = f"mosq-x-{uuid.uuid4().hex[:8]}"
    first = mosquitto_sub(
        "-V", "5", "-c", "-x", "60", "-i", client_id, "-q", "1", "-t", topic, "-C", "1"
    )  # fmt: skip
    mosquitto_pub(broker, "-q", "1", "-t", topic, "-m", "first")
    assert first.receive()[1] == "first"
    assert first.close() == 0
    mosquitto_pub(
        broker, "-q", "1", "-t", topic, "-m", "away", "-D", "publish", "user-property", "k", "v"
    )  # fmt: skip
    again = mosquitto_sub(
        "-V", "5", "-c", "-x", "0", "-i", client_id, "-q", "1", "-t", topic, "-C", "1",
        wait=False,  # the queued message may come before the SUBACK, and end it (-C 1)
    )  # fmt: skip
    assert again.receive()[:3] == [topic, "away", "k:v"]
    assert again.close() == 0
    # that connection asked for Session Expiry Interval 0: its session is gone
    mosquitto_pub(broker, "-q", "1", "-t", topic, "-m", "lost")
    last = mosquitto_sub(
        "-V", "5", "-c", "-x", "60", "-i", client_id, "-q", "1", "-t", topic, "-C", "1"
    )  # fmt: skip
    mosquitto_pub(broker, "-q", "1", "-t", topic, "-m", "fence")
    assert last.receive()[1] == "fence"
    assert last.close() == 0
