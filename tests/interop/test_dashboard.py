"""The dashboard in a real browser: headless Chromium loads ``web/dashboard.html`` from mqttd over
https, the page subscribes to ``$SYS/#`` over wss with Paho JS, its numbers appear, and they
change while the test publishes; the screenshot is a real, non-blank PNG.

mqttd runs as a subprocess with tcp and wss listeners serving ``web/`` and a short
``sys_interval_s``; Chromium is Debian's ``/usr/bin/chromium`` driven by ``tests/js/dashboard.mjs``
through playwright-core.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance import wire
from conformance.broker_process import BrokerProcess, LogLines, Record, listeners_toml, start_mqttd
from tests.helpers.threads import in_thread

pytestmark = [pytest.mark.interop, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
JS_DIR = REPO_ROOT / "tests" / "js"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
WAIT_S = 90.0
PUBLISHED = 7


def _require_tools() -> str:
    node = shutil.which("node")
    missing = [
        name
        for name, ok in [
            ("chromium", os.path.exists(CHROMIUM)),
            ("node", node is not None),
            ("tests/js/node_modules", (JS_DIR / "node_modules" / "playwright-core").is_dir()),
        ]
        if not ok
    ]
    if missing:
        message = "dashboard test needs: " + ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    assert node is not None
    return node


def _is_error(line: Record) -> bool:
    return line.get("event") == "error"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """mqttd serving web/ on wss (dev certs), plus tcp, with $SYS every 0.5 s."""
    tmp_path = tmp_path_factory.mktemp("dashboard-broker")
    config = tmp_path / "mqttd.toml"
    config.write_text(
        '[broker]\ndata_dir = "data"\nsys_interval_s = 0.5\n\n[auth]\nallow_anonymous = true\n\n'
        + listeners_toml("tcp")
        + listeners_toml("wss", web_root=str(REPO_ROOT / "web"))
    )
    with start_mqttd(config, timeout_s=WAIT_S) as running:
        yield running


def _publish(port: int, count: int) -> None:
    """CONNECT, ``count`` QoS 1 PUBLISHes (each acknowledged), DISCONNECT, over raw TCP."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        framer = wire.Framer()
        pending: list[bytes] = []

        def read_packet() -> wire.Packet:
            while not pending:
                data = sock.recv(65536)
                assert data, "broker closed the connection"
                pending.extend(framer.feed_raw(data))
            return wire.parse(pending.pop(0))

        sock.sendall(wire.connect("dashboard-publisher"))
        assert read_packet().type == wire.CONNACK
        for pid in range(1, count + 1):
            sock.sendall(wire.publish("dashboard/test", b"tick", qos=1, pid=pid))
            assert read_packet().type == wire.PUBACK
        sock.sendall(wire.disconnect())


def _png_pixels(path: Path) -> tuple[int, int, bytes]:
    """Width, height and the (still filtered) pixel rows of a PNG, with the stdlib only."""
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    pos, width, height, idat = 8, 0, 0, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    return width, height, zlib.decompress(idat)


def _number(text: str) -> int:
    return int(text.replace(",", ""))


@in_thread
def test_dashboard_shows_live_figures(broker: BrokerProcess, tmp_path: Path) -> None:
    """The dashboard shows $SYS numbers over wss, they change while messages are published,
    and the screenshot of it is a real picture."""
    node = _require_tools()
    ports = broker.ports
    screenshot = tmp_path / "dashboard.png"
    browser = subprocess.Popen(
        [
            node,
            "dashboard.mjs",
            f"https://localhost:{ports['wss']}/dashboard.html",
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
            lambda e: e.get("event") == "ready", "figures shown", WAIT_S, give_up=_is_error
        )
        before = ready["tiles"]
        _number(before["clients-connected"])  # a number (0 if the snapshot predates the page)
        assert before["version"][:1].isdigit()
        assert ready["canvases"] >= 4  # one uPlot chart per section
        _publish(ports["tcp"], PUBLISHED)
        changed = output.wait_for(
            lambda e: e.get("event") == "changed", "figures changed", WAIT_S, give_up=_is_error
        )
        assert browser.wait(timeout=WAIT_S) == 0
    finally:
        if browser.poll() is None:
            browser.kill()
            browser.wait(timeout=10)
        output.thread.join(timeout=10)
        browser.stdout.close()
    after = changed["tiles"]
    assert _number(after["msg-received"]) >= _number(before["msg-received"]) + PUBLISHED
    assert after["uptime"] != before["uptime"]
    assert _number(after["clients-connected"]) >= 1  # the page itself, by now
    width, height, pixels = _png_pixels(screenshot)
    assert width >= 400
    assert height >= 400
    assert len(set(pixels)) > 16, "the screenshot is blank"
