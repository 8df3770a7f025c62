"""Third-party clients against ``mqttd --workers 3``: one broker made of three processes.

One broker for the module: three workers sharing a tcp, a ws and a wss port (SO_REUSEPORT), one
broker over the private redis-server the supervisor starts; ws and wss also serve ``web/``. The
kernel picks the worker of each connection, so every test opens subscribers until they sit on
every worker (bounded), then publishes from one more connection: whichever worker that lands
on, the message has to cross to the other two. Which worker serves a connection is read from
/proc (see conftest.py): from the client's process (mosquitto_sub, node) or socket (paho), or,
for Chromium, from the peer address in the broker's ``client_connected`` log line.

- mosquitto_sub / mosquitto_pub (TCP; MQTT 3.1.1 and 3.1): a retained message and a live one;
- paho-mqtt (TCP): QoS 0, 1 and 2, in order;
- MQTT.js (TCP and WS): QoS 1;
- Paho JS in headless Chromium (the web page over https, MQTT over wss): a QoS 1 message
  published by paho-mqtt over TCP on another worker shows up in the page.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import trustme
from paho.mqtt.enums import CallbackAPIVersion

from conformance.broker_process import BrokerProcess, LogLines, Record, listeners_toml
from tests.helpers.threads import in_thread
from tests.interop.conftest import (
    WORKERS,
    client_ports,
    running_workers,
    serving_process,
    worker_pids,
)

pytestmark = [
    pytest.mark.interop,
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("redis-server") is None, reason="redis-server is not installed"
    ),
]

REPO_ROOT = Path(__file__).resolve().parents[2]
JS_DIR = REPO_ROOT / "tests" / "js"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
WAIT_S = 30.0
BROWSER_WAIT_S = 90.0
#: At most this many subscribers are opened to cover every worker (the kernel spreads
#: connections evenly: covering 3 workers takes 5.5 on average; missing one after 30 has a
#: probability of about 3 * (2/3)**30, 1.5e-5).
MAX_SUBSCRIBERS = 30


def config(certfile: Path, keyfile: Path) -> str:
    """tcp, ws and wss listeners; ws and wss serve web/; wss with the given certificate.

    An operator's certificate files, as in production; ``tls_dev_certs`` under racing
    workers is tested in tests/integration/test_08_tls.py.
    """
    web = {"host": "127.0.0.1", "web_root": str(REPO_ROOT / "web")}
    return (
        listeners_toml("tcp", host="127.0.0.1")
        + listeners_toml("ws", **web)
        + listeners_toml("wss", certfile=str(certfile), keyfile=str(keyfile), **web)
    )


class Workers:
    """The running ``mqttd --workers 3``: ports, worker pids, which worker serves what."""

    def __init__(self, supervisor: BrokerProcess) -> None:
        self.supervisor = supervisor
        self.ports = supervisor.ports
        self.pids = worker_pids(supervisor)
        assert len(self.pids) == WORKERS, self.pids

    def serving(self, transport: str, client_port: int) -> int:
        """The worker that serves the connection from ``client_port`` to ``transport``'s port."""
        return serving_process(self.ports[transport], client_port, self.pids)

    def serving_process_of(self, pid: int, transport: str) -> int:
        """The worker that serves the one connection process ``pid`` holds to the port."""
        ports = client_ports(pid, self.ports[transport])
        assert len(ports) == 1, f"process {pid} has {len(ports)} connections to {transport}"
        return self.serving(transport, ports[0])


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    """One ``mqttd --workers 3`` for the module, with a throw-away certificate for wss."""
    certs = tmp_path_factory.mktemp("certs")
    server = trustme.CA().issue_cert("localhost", "127.0.0.1")
    server.private_key_pem.write_to_path(str(certs / "server.key"))
    server.cert_chain_pems[0].write_to_path(str(certs / "server.pem"))
    with running_workers(config(certs / "server.pem", certs / "server.key")) as supervisor:
        yield Workers(supervisor)


def on_every_worker(
    workers: Workers, open_subscriber: Callable[[int], int], what: str
) -> dict[int, int]:
    """Call ``open_subscriber(n)`` (it returns the serving worker) until the subscribers are on
    every worker; returns how many landed on each."""
    landed: dict[int, int] = {}
    for n in range(MAX_SUBSCRIBERS):
        worker = open_subscriber(n)
        landed[worker] = landed.get(worker, 0) + 1
        if len(landed) == WORKERS:
            return landed
    raise AssertionError(f"{MAX_SUBSCRIBERS} {what} subscribers reached only workers {landed}")


class Child:
    """A client process whose stdout is read line by line by a thread (``LogLines``: JSON
    lines become records, other lines ``{"event": "output", "line": ...}``)."""

    def __init__(self, argv: list[str], cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.proc.stdout is not None
        self.output = LogLines(self.proc.stdout)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, event: str, timeout_s: float = WAIT_S) -> Record:
        """The next JSON line whose ``event`` is ``event`` (an ``error`` line fails)."""
        return self.output.wait_for(
            lambda r: r.get("event") == event,
            f"{event!r} from {self.proc.args}",
            timeout_s,
            give_up=lambda r: r.get("event") == "error",
        )

    def expect_line(self, text: str) -> None:
        """Read until a plain output line contains ``text``."""
        self.output.wait_for(lambda r: text in str(r.get("line", "")), repr(text), WAIT_S)

    def rest(self) -> list[str]:
        """Wait for the process to exit 0; the plain output lines it printed after the last
        one read."""
        assert self.proc.wait(timeout=WAIT_S) == 0, self.output.tail_text()
        lines = []
        while (record := self.output.next(WAIT_S)) is not None:
            lines.append(str(record.get("line", "")))
        return lines

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.output.thread.join(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def children() -> Iterator[Callable[..., Child]]:
    """Start client processes; every one still running at the end is killed."""
    started: list[Child] = []

    def start(argv: list[str], cwd: Path | None = None) -> Child:
        started.append(Child(argv, cwd))
        return started[-1]

    yield start
    for child in started:
        child.close()


def _need(*tools: tuple[str, bool]) -> None:
    """Skip (fail in CI) when a client is not installed."""
    missing = [name for name, ok in tools if not ok]
    if missing:
        message = "needs: " + ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _node() -> str:
    node = shutil.which("node")
    _need(("node", node is not None), ("tests/js/node_modules", (JS_DIR / "node_modules").is_dir()))
    assert node is not None
    return node


# -- mosquitto_sub / mosquitto_pub -------------------------------------------------------------


def _mosquitto(port: int, *args: str) -> None:
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), *args], check=True, timeout=WAIT_S
    )


@pytest.mark.parametrize("version", ["mqttv311", "mqttv31"])
@in_thread
def test_mosquitto_clients_across_workers(
    workers: Workers, children: Callable[..., Child], version: str
) -> None:
    """mosquitto_sub on every worker gets the retained message a mosquitto_pub left, then a
    live QoS 1 one: each publisher's worker is one of three, so both cross to two others."""
    _need(("mosquitto_sub", shutil.which("mosquitto_sub") is not None))
    port = workers.ports["tcp"]
    base = f"workers/{uuid.uuid4().hex[:8]}"
    _mosquitto(port, "-V", version, "-q", "1", "-r", "-t", f"{base}/kept", "-m", "retained")
    subscribers: list[Child] = []

    def subscriber(n: int) -> int:
        argv = [
            "stdbuf",
            "-oL",
            "mosquitto_sub",
            "-d",
            "-v",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-V",
            version,
            "-i",
            f"sub{n}-{base[8:]}",
            "-q",
            "1",
            "-t",
            f"{base}/#",
            "-C",
            "2",
        ]
        sub = children(argv)
        sub.expect_line("received SUBACK")
        subscribers.append(sub)
        return workers.serving_process_of(sub.pid, "tcp")

    on_every_worker(workers, subscriber, "mosquitto_sub")
    _mosquitto(port, "-V", version, "-q", "1", "-t", f"{base}/live", "-m", "live")
    try:
        for sub in subscribers:
            got = [
                line
                for line in sub.rest()
                if line and not line.startswith(("Client ", " ", "Subscribed ("))
            ]
            assert got == [f"{base}/kept retained", f"{base}/live live"]
    finally:
        _mosquitto(port, "-r", "-n", "-t", f"{base}/kept")


# -- paho-mqtt --------------------------------------------------------------------------------


class PahoClient:
    """A paho-mqtt client over TCP on its own network thread; waits have timeouts.

    Its callbacks hold the events and the queue, not this object: with no reference cycle,
    the paho client is freed as soon as it is dropped, and closes its wake-up socket pair then
    (paho closes it only when freed; freed by the cycle collector instead, the sockets could be
    finalised first and warn).
    """

    def __init__(self, port: int, client_id: str) -> None:
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.connected = connected = threading.Event()
        self.subscribed = subscribed = threading.Event()
        put = self.messages.put
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_connect = lambda *args: connected.set()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.on_message = lambda client, userdata, message: put(message)
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(WAIT_S), "no CONNACK"

    @property
    def local_port(self) -> int:
        sock = self.client.socket()
        assert sock is not None
        return int(sock.getsockname()[1])

    def subscribe(self, topic_filter: str, qos: int) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic_filter, qos)
        assert self.subscribed.wait(WAIT_S), "no SUBACK"

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        self.client.publish(topic, payload, qos).wait_for_publish(WAIT_S)

    def receive(self) -> paho.MQTTMessage:
        return self.messages.get(timeout=WAIT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def paho_clients(workers: Workers) -> Iterator[Callable[[str], PahoClient]]:
    made: list[PahoClient] = []

    def make(client_id: str) -> PahoClient:
        made.append(PahoClient(workers.ports["tcp"], client_id))
        return made[-1]

    yield make
    for client in made:
        client.close()


@in_thread
def test_paho_across_workers(workers: Workers, paho_clients: Callable[[str], PahoClient]) -> None:
    """paho-mqtt subscribers on every worker receive QoS 0, 1 and 2 messages in order, at the
    QoS they were published with, from a paho publisher on one worker."""
    topic = f"workers/{uuid.uuid4().hex[:8]}/paho"
    subscribers: list[PahoClient] = []

    def subscriber(n: int) -> int:
        sub = paho_clients(f"paho-sub{n}-{uuid.uuid4().hex[:6]}")
        sub.subscribe(topic, 2)
        subscribers.append(sub)
        return workers.serving("tcp", sub.local_port)

    on_every_worker(workers, subscriber, "paho")
    publisher = paho_clients(f"paho-pub-{uuid.uuid4().hex[:6]}")
    for qos in (0, 1, 2):
        publisher.publish(topic, f"qos{qos}".encode(), qos)
    for sub in subscribers:
        got = [sub.receive() for _ in range(3)]
        assert [(m.payload, m.qos) for m in got] == [(b"qos0", 0), (b"qos1", 1), (b"qos2", 2)]


# -- MQTT.js ----------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "ws"])
@in_thread
def test_mqttjs_across_workers(
    workers: Workers, children: Callable[..., Child], transport: str
) -> None:
    """MQTT.js subscribers on every worker receive what an MQTT.js publisher sends at QoS 1,
    over TCP and over WebSocket."""
    node = _node()
    port = workers.ports[transport]
    url = f"mqtt://127.0.0.1:{port}" if transport == "tcp" else f"ws://127.0.0.1:{port}/mqtt"
    topic = f"workers/{uuid.uuid4().hex[:8]}/js"
    subscribers: list[Child] = []

    def subscriber(n: int) -> int:
        sub = children([node, "mqttjs_client.mjs", "subscribe", url, topic], JS_DIR)
        assert sub.expect("ready")["granted"] == [1]
        subscribers.append(sub)
        return workers.serving_process_of(sub.pid, transport)

    on_every_worker(workers, subscriber, "MQTT.js")
    children([node, "mqttjs_client.mjs", "publish", url, topic, "from MQTT.js"], JS_DIR).expect(
        "published"
    )
    for sub in subscribers:
        message = sub.expect("message")
        assert (message["topic"], message["payload"], message["qos"]) == (
            topic,
            "from MQTT.js",
            1,
        )


# -- Paho JS in headless Chromium -------------------------------------------------------------


@in_thread
def test_browser_paho_js_over_wss_across_workers(
    workers: Workers,
    children: Callable[..., Child],
    paho_clients: Callable[[str], PahoClient],
    tmp_path: Path,
) -> None:
    """The web page in Chromium, its Paho JS client on one worker over wss, shows a QoS 1
    message that paho-mqtt publishes over TCP through another worker."""
    node = _node()
    _need(
        ("chromium", os.path.exists(CHROMIUM)),
        ("playwright-core", (JS_DIR / "node_modules" / "playwright-core").is_dir()),
    )
    payload = f"goal {uuid.uuid4().hex[:8]}"
    url = f"https://127.0.0.1:{workers.ports['wss']}/"
    browser = children(
        [node, "browser.mjs", url, payload, str(tmp_path / "page.png"), str(tmp_path / "profile")],
        JS_DIR,
    )
    assert "granted QoS 1" in browser.expect("ready", BROWSER_WAIT_S)["subscription"]
    # The page's connection: the only MQTT client over wss in this module.
    connected = workers.supervisor.wait_for(
        lambda r: r.get("event") == "client_connected" and r.get("transport") == "wss",
        "the page's client_connected",
        WAIT_S,
    )
    page_worker = workers.serving("wss", int(str(connected["peer"]).rsplit(":", 1)[1]))
    for n in range(MAX_SUBSCRIBERS):
        publisher = paho_clients(f"paho-to-page{n}-{uuid.uuid4().hex[:6]}")
        if workers.serving("tcp", publisher.local_port) != page_worker:
            break
    else:
        raise AssertionError(f"{MAX_SUBSCRIBERS} publishers all on the page's worker")
    publisher.publish("/news/europe/sport", payload.encode(), 1)
    shown = browser.expect("message", BROWSER_WAIT_S)
    assert (shown["topic"], shown["payload"], shown["qos"]) == ("/news/europe/sport", payload, 1)
    assert shown["endpoint"].startswith("wss://")
    assert f"client id {connected['client_id']} " in shown["endpoint"] + " "
    assert browser.proc.wait(timeout=BROWSER_WAIT_S) == 0
    assert (tmp_path / "page.png").read_bytes().startswith(b"\x89PNG")
