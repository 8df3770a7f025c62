"""The web page in a real browser: headless Chromium loads it from mqttd and receives a message.

mqttd runs as a subprocess with tcp, ws and wss listeners serving ``web/``; Chromium (Debian's
``/usr/bin/chromium``, driven by ``tests/js/browser.mjs`` through playwright-core) opens the page,
whose Paho JS client connects back over wss (ws for the http page) and subscribes to
``/news/+/sport`` at QoS 1; ``mosquitto_pub`` then publishes over TCP and the message must show up
in the page's DOM. A screenshot is saved under the test's tmp dir.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance.broker_process import (
    BrokerProcess,
    LogLines,
    Record,
    listeners_toml,
    start_mqttd,
)
from tests.helpers.threads import in_thread

pytestmark = [pytest.mark.interop, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
JS_DIR = REPO_ROOT / "tests" / "js"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
WAIT_S = 90.0


def _require_tools() -> str:
    node = shutil.which("node")
    missing = [
        name
        for name, ok in [
            ("chromium", os.path.exists(CHROMIUM)),
            ("node", node is not None),
            ("tests/js/node_modules", (JS_DIR / "node_modules" / "playwright-core").is_dir()),
            ("mosquitto_pub", shutil.which("mosquitto_pub") is not None),
        ]
        if not ok
    ]
    if missing:
        message = "browser test needs: " + ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    assert node is not None
    return node


def _is_error(line: Record) -> bool:
    return line.get("event") == "error"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """mqttd serving web/ on ws and wss (dev certs), plus tcp; its ports and its log lines."""
    tmp_path = tmp_path_factory.mktemp("browser-broker")
    config = tmp_path / "mqttd.toml"
    config.write_text(
        '[broker]\ndata_dir = "data"\n\n[auth]\nallow_anonymous = true\n\n'
        + listeners_toml("tcp")
        + listeners_toml("ws", "wss", web_root=str(REPO_ROOT / "web"))
    )
    with start_mqttd(config, timeout_s=WAIT_S) as running:
        yield running


@pytest.mark.parametrize(
    ("scheme", "query", "protocol_level"),
    [("https", "", 4), ("https", "?mqttVersion=3", 3), ("http", "", 4)],
    ids=["https-3.1.1", "https-3.1", "http-3.1.1"],
)
@in_thread
def test_page_receives_mosquitto_pub_message(
    broker: BrokerProcess,
    tmp_path: Path,
    scheme: str,
    query: str,
    protocol_level: int,
) -> None:
    """The page, loaded over https (or http), shows a message mosquitto_pub sends over TCP."""
    node = _require_tools()
    ports = broker.ports
    port = ports["wss" if scheme == "https" else "ws"]
    payload = f"goal {uuid.uuid4().hex[:8]}"
    screenshot = tmp_path / "page.png"
    browser = subprocess.Popen(
        [
            node,
            "browser.mjs",
            f"{scheme}://localhost:{port}/{query}",
            payload,
            str(screenshot),
            str(tmp_path / "chromium-profile"),
        ],
        cwd=JS_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "CHROMIUM": CHROMIUM},
    )
    assert browser.stdout is not None
    output = LogLines(browser.stdout)
    try:
        ready = output.wait_for(
            lambda e: e.get("event") == "ready", "page ready", WAIT_S, give_up=_is_error
        )
        assert "granted QoS 1" in ready["subscription"]
        publish = ["mosquitto_pub", "-p", str(ports["tcp"]), "-q", "1"]
        subprocess.run(
            [*publish, "-t", "/news/europe/sport", "-m", payload],
            check=True,
            timeout=WAIT_S,
        )
        shown = output.wait_for(
            lambda e: e.get("event") == "message", "message in the DOM", WAIT_S, give_up=_is_error
        )
        assert browser.wait(timeout=WAIT_S) == 0
    finally:
        if browser.poll() is None:
            browser.kill()
            browser.wait(timeout=10)
        output.thread.join(timeout=10)
        browser.stdout.close()
    assert shown["topic"] == "/news/europe/sport"
    assert shown["payload"] == payload
    assert shown["qos"] == 1
    assert shown["retained"] is False
    expected_scheme = "wss://" if scheme == "https" else "ws://"
    assert shown["endpoint"].startswith(expected_scheme)
    client_id = shown["endpoint"].split("client id ")[1].split(" ")[0]
    connected = broker.wait_for(
        lambda e: e.get("event") == "client_connected" and e.get("client_id") == client_id,
        f"client_connected for {client_id}",
        WAIT_S,
    )
    assert connected["protocol_level"] == protocol_level
    assert screenshot.read_bytes().startswith(b"\x89PNG")
