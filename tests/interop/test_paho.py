"""paho-mqtt (Python, 2.x) against mqttd over TCP with MQTT 3.1.1 and MQTT 3.1.

paho runs its own network thread; each scenario is a blocking function run in a worker thread,
waiting on ``threading.Event``s with timeouts (never sleeping).
"""

from __future__ import annotations

import queue
import threading

import paho.mqtt.client as paho
import pytest
import trio

from mqttd.server import Server

pytestmark = pytest.mark.interop

TIMEOUT_S = 10
VERSIONS = {"3.1.1": paho.MQTTv311, "3.1": paho.MQTTv31}


class PahoClient:
    """A paho client whose connects, subscribes and messages can be awaited from a thread."""

    def __init__(self, client_id: str, protocol: int, clean_session: bool = True) -> None:
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            clean_session=clean_session,
        )
        self.connected = threading.Event()
        self.connack: tuple[bool, int] | None = None
        self.subscribed = threading.Event()
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_message = lambda client, userdata, message: self.messages.put(message)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        self.connack = (flags.session_present, reason_code.value)
        self.connected.set()

    def connect(self, port: int) -> None:
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(TIMEOUT_S)

    def subscribe(self, topic_filter: str, qos: int) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic_filter, qos)
        assert self.subscribed.wait(TIMEOUT_S)

    def next_message(self) -> paho.MQTTMessage:
        return self.messages.get(timeout=TIMEOUT_S)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _pub_sub_scenario(port: int, protocol: int) -> None:
    sub = PahoClient("paho-sub", protocol)
    pub = PahoClient("paho-pub", protocol)
    try:
        sub.connect(port)
        sub.subscribe("/news/+/sport", 2)
        pub.connect(port)
        for qos in (0, 1, 2):
            pub.client.publish("/news/europe/tech", b"not-for-you", qos=qos)
            info = pub.client.publish("/news/europe/sport", f"qos{qos}".encode(), qos=qos)
            info.wait_for_publish(TIMEOUT_S)
            message = sub.next_message()
            assert (message.topic, message.payload, message.qos) == (
                "/news/europe/sport",
                f"qos{qos}".encode(),
                qos,
            )
        pub.client.publish("/news/kept", b"retained", qos=1, retain=True).wait_for_publish(
            TIMEOUT_S
        )
        sub.subscribe("/news/#", 1)
        message = sub.next_message()
        assert (message.topic, message.payload, message.retain) == ("/news/kept", b"retained", True)
        assert sub.messages.empty()
    finally:
        sub.stop()
        pub.stop()


def _persistent_scenario(port: int, protocol: int) -> None:
    sub = PahoClient("paho-persistent", protocol, clean_session=False)
    sub.connect(port)
    sub.subscribe("queue/#", 1)
    sub.stop()
    pub = PahoClient("paho-pub2", protocol)
    pub.connect(port)
    for i in range(5):
        pub.client.publish(f"queue/{i}", b"%d" % i, qos=1).wait_for_publish(TIMEOUT_S)
    pub.stop()
    again = PahoClient("paho-persistent", protocol, clean_session=False)
    again.connect(port)
    try:
        if protocol == paho.MQTTv311:
            assert again.connack == (True, 0)
        got = [again.next_message().payload for _ in range(5)]
        assert got == [b"%d" % i for i in range(5)]
    finally:
        again.stop()


def _will_scenario(port: int, protocol: int) -> None:
    watcher = PahoClient("paho-watcher", protocol)
    watcher.connect(port)
    watcher.subscribe("status/#", 1)
    dying = PahoClient("paho-dying", protocol)
    dying.client.will_set("status/dying", b"offline", qos=1)
    dying.connect(port)
    dying.client.loop_stop()
    dying.client.socket().close()  # vanish without DISCONNECT
    try:
        message = watcher.next_message()
        assert (message.topic, message.payload) == ("status/dying", b"offline")
    finally:
        watcher.stop()


@pytest.mark.parametrize("version", list(VERSIONS))
async def test_paho_pub_sub_qos_and_retained(server: Server, version: str) -> None:
    """paho publishes and receives at QoS 0/1/2 through a `+` filter, and gets retained ones."""
    await trio.to_thread.run_sync(_pub_sub_scenario, server.port(), VERSIONS[version])


@pytest.mark.parametrize("version", list(VERSIONS))
async def test_paho_persistent_session(server: Server, version: str) -> None:
    """A paho client with clean_session=False gets what was published while it was away."""
    await trio.to_thread.run_sync(_persistent_scenario, server.port(), VERSIONS[version])


@pytest.mark.parametrize("version", list(VERSIONS))
async def test_paho_will(server: Server, version: str) -> None:
    """A paho client's Will is published when its socket dies."""
    await trio.to_thread.run_sync(_will_scenario, server.port(), VERSIONS[version])
