"""Third-party clients over mqttd's ws/wss listeners: paho-mqtt (Python) and MQTT.js (node).

The broker runs as a subprocess (``python -m mqttd``) with tcp, ws and wss listeners on free
ports; wss uses the development CA that mqttd creates in its data directory.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conformance.broker_process import LogLines, Record, start_mqttd
from tests.helpers.threads import in_thread
from tests.interop.conftest import GATEWAY_CONFIG, JS_DIR, dev_ca, mqttjs_node

pytestmark = pytest.mark.interop


WAIT_S = 30.0


@dataclass
class Gateway:
    """A running mqttd subprocess: ports by transport and the dev CA to trust for wss."""

    ports: dict[str, int]
    ca_file: Path


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp_path = tmp_path_factory.mktemp("gateway")
    config = tmp_path / "mqttd.toml"
    config.write_text(GATEWAY_CONFIG)
    with start_mqttd(config) as broker:
        yield Gateway(broker.ports, dev_ca(tmp_path))


class PahoClient:
    """A paho-mqtt client on its own network thread; events are waited for, never slept on."""

    def __init__(self, gateway: Gateway, transport: str, protocol: int) -> None:
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.published = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"paho-{transport}-{uuid.uuid4().hex[:8]}",
            protocol=protocol,
            transport="websockets" if transport in ("ws", "wss") else "tcp",
        )
        if transport in ("ws", "wss"):
            self.client.ws_set_options(path="/mqtt")
        if transport == "wss":
            self.client.tls_set(ca_certs=str(gateway.ca_file))
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_publish = lambda *args: self.published.set()
        self.client.on_message = lambda client, userdata, message: self.messages.put(message)
        self.client.connect("localhost", gateway.ports[transport], keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(WAIT_S), f"paho did not connect over {transport}"

    def _on_connect(
        self, client: object, userdata: object, flags: object, rc: object, *_: object
    ) -> None:
        if not getattr(rc, "is_failure", True):
            self.connected.set()

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic, qos)
        assert self.subscribed.wait(WAIT_S), "no SUBACK"

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.published.clear()
        self.client.publish(topic, payload, qos)
        assert self.published.wait(WAIT_S), "no PUBACK"

    def receive(self) -> paho.MQTTMessage:
        return self.messages.get(timeout=WAIT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients(gateway: Gateway) -> Iterator[Callable[[str, int], PahoClient]]:
    made: list[PahoClient] = []

    def make(transport: str, protocol: int = paho.MQTTv311) -> PahoClient:
        made.append(PahoClient(gateway, transport, protocol))
        return made[-1]

    yield make
    for client in made:
        client.close()


@pytest.mark.parametrize("transport", ["ws", "wss"])
@pytest.mark.parametrize("protocol", [paho.MQTTv311, paho.MQTTv31], ids=["3.1.1", "3.1"])
@in_thread
def test_paho_websocket_receives_from_tcp(
    clients: Callable[..., PahoClient], transport: str, protocol: int
) -> None:
    """paho-mqtt over ws/wss (3.1.1 and 3.1) receives what a TCP client publishes."""
    topic = f"/news/{uuid.uuid4().hex[:6]}/sport"
    subscriber = clients(transport, protocol)
    subscriber.subscribe("/news/+/sport")
    clients("tcp").publish(topic, b"kick-off")
    message = subscriber.receive()
    assert message.topic == topic
    assert message.payload == b"kick-off"
    assert message.qos == 1


@pytest.mark.parametrize("transport", ["ws", "wss"])
@in_thread
def test_paho_websocket_publishes_to_tcp(
    clients: Callable[..., PahoClient], transport: str
) -> None:
    """A message published over ws/wss reaches a TCP subscriber."""
    topic = f"ws-to-tcp/{uuid.uuid4().hex[:6]}"
    subscriber = clients("tcp")
    subscriber.subscribe(topic)
    clients(transport).publish(topic, b"from the web")
    message = subscriber.receive()
    assert message.payload == b"from the web"


@in_thread
def test_one_megabyte_over_wss_intact(clients: Callable[..., PahoClient]) -> None:
    """A 1 MiB payload published over TCP arrives byte-for-byte over wss (and over TCP)."""
    payload = os.urandom(1024 * 1024)
    topic = f"big/{uuid.uuid4().hex[:6]}"
    over_wss = clients("wss")
    over_tcp = clients("tcp")
    over_wss.subscribe(topic)
    over_tcp.subscribe(topic)
    start = time.monotonic()
    clients("tcp").publish(topic, payload)
    wss_message = over_wss.receive()
    tcp_message = over_tcp.receive()
    elapsed = time.monotonic() - start
    assert wss_message.payload == payload
    assert tcp_message.payload == payload
    print(f"1 MiB via TCP publisher to wss+tcp subscribers: {elapsed:.3f} s")


class NodeProcess:
    """A node script printing one JSON object per stdout line, read by a thread."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            args, cwd=JS_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert self.proc.stdout is not None
        self.output = LogLines(self.proc.stdout)

    def expect(self, event: str) -> Record:
        return self.output.wait_for(
            lambda line: line.get("event") == event,
            f"{event!r} from node",
            WAIT_S,
            give_up=lambda line: line.get("event") == "error",
        )

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def node_process() -> Iterator[Callable[[list[str]], NodeProcess]]:
    started: list[NodeProcess] = []

    def start(args: list[str]) -> NodeProcess:
        started.append(NodeProcess([mqttjs_node(), *args]))
        return started[-1]

    yield start
    for process in started:
        process.close()


def _url(gateway: Gateway, transport: str) -> list[str]:
    url = f"{transport}://localhost:{gateway.ports[transport]}/mqtt"
    return [url, "--ca", str(gateway.ca_file)] if transport == "wss" else [url]


@pytest.mark.parametrize("transport", ["ws", "wss"])
@pytest.mark.parametrize("v31", [False, True], ids=["3.1.1", "3.1"])
@in_thread
def test_mqttjs_websocket_receives_from_mosquitto_pub(
    gateway: Gateway,
    node_process: Callable[[list[str]], NodeProcess],
    transport: str,
    v31: bool,
) -> None:
    """MQTT.js over ws/wss receives a message that mosquitto_pub sends over TCP."""
    topic = f"/news/{uuid.uuid4().hex[:6]}/sport"
    url, *extra = _url(gateway, transport)
    subscriber = node_process(
        ["mqttjs_client.mjs", "subscribe", url, "/news/+/sport", *extra]
        + (["--v31"] if v31 else [])
    )
    assert subscriber.expect("ready")["granted"] == [1]
    subprocess.run(
        [
            "mosquitto_pub",
            "-p",
            str(gateway.ports["tcp"]),
            "-t",
            topic,
            "-q",
            "1",
            "-m",
            "hello js",
        ],
        check=True,
        timeout=WAIT_S,
    )
    message = subscriber.expect("message")
    assert message["topic"] == topic
    assert message["payload"] == "hello js"
    assert message["qos"] == 1


@pytest.mark.parametrize("transport", ["ws", "wss"])
@in_thread
def test_mqttjs_websocket_publishes_to_tcp(
    gateway: Gateway,
    clients: Callable[..., PahoClient],
    node_process: Callable[[list[str]], NodeProcess],
    transport: str,
) -> None:
    """A message MQTT.js publishes over ws/wss reaches a TCP subscriber."""
    topic = f"js/{uuid.uuid4().hex[:6]}"
    subscriber = clients("tcp")
    subscriber.subscribe(topic)
    url, *extra = _url(gateway, transport)
    publisher = node_process(["mqttjs_client.mjs", "publish", url, topic, "from MQTT.js", *extra])
    publisher.expect("published")
    assert subscriber.receive().payload == b"from MQTT.js"
