"""Start Mosquitto or mqttd as subprocesses on free loopback ports (for interop tests).

Both are context managers yielding ``(host, port, proc)``; the broker is terminated on exit.
Readiness is detected from the broker's own output, never by sleeping.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
START_TIMEOUT_S = 20.0


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (for brokers that cannot bind port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_available() -> bool:
    return os.path.exists(MOSQUITTO)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    thread = getattr(proc, "drain_thread", None)
    if thread is not None:
        thread.join(timeout=10)
    if proc.stderr is not None:
        proc.stderr.close()


def _wait_line(proc: subprocess.Popen[bytes], marker: bytes, lines: list[bytes]) -> bytes:
    """Read stderr lines until one contains ``marker``; fail if the process exits first."""
    assert proc.stderr is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError("broker exited during startup:\n" + b"".join(lines).decode())
        lines.append(line)
        if marker in line:
            return line
    raise RuntimeError("broker did not report readiness:\n" + b"".join(lines).decode())


@contextlib.contextmanager
def start_mosquitto(
    tmp_path: Path, extra_conf: str = "", *, ws: bool = False
) -> Iterator[tuple[str, int, subprocess.Popen[bytes]]]:
    """Run ``mosquitto -c`` with a written config: TCP listener (and a WebSocket one if ``ws``,
    whose port is stored as ``proc.ws_port``) on 127.0.0.1, anonymous access allowed."""
    port = free_port()
    conf = [f"listener {port} 127.0.0.1", "allow_anonymous true"]
    ws_port = None
    if ws:
        ws_port = free_port()
        conf += [f"listener {ws_port} 127.0.0.1", "protocol websockets"]
    conf += [
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "persistence false",
    ]
    path = tmp_path / f"mosquitto-{port}.conf"
    path.write_text("\n".join(conf) + "\n" + extra_conf + "\n")
    proc = subprocess.Popen(
        [MOSQUITTO, "-c", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    lines: list[bytes] = []
    try:
        _wait_line(proc, b" running", lines)
        proc.ws_port = ws_port  # type: ignore[attr-defined]
        # Keep draining stderr so the broker never blocks on a full pipe.
        _drain(proc)
        yield "127.0.0.1", port, proc
    finally:
        _stop(proc)


def _drain(proc: subprocess.Popen[bytes]) -> None:
    def run() -> None:
        assert proc.stderr is not None
        for _ in iter(proc.stderr.readline, b""):
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    proc.drain_thread = thread  # type: ignore[attr-defined]


@contextlib.contextmanager
def start_mqttd(
    tmp_path: Path, config_text: str, *, listeners: int = 1
) -> Iterator[tuple[str, int, subprocess.Popen[bytes]]]:
    """Run ``python -m mqttd --config FILE --log-format json``; ports come from the
    ``listener_started`` log lines (use ``port = 0`` in the config). Yields the first
    listener's host and port; ``proc.ports`` maps each transport to its bound port."""
    path = tmp_path / "mqttd.toml"
    path.write_text(config_text)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mqttd", "--config", str(path), "--log-format", "json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    lines: list[bytes] = []
    try:
        events = [
            json.loads(_wait_line(proc, b"listener_started", lines)) for _ in range(listeners)
        ]
        proc.ports = {e.get("transport", "tcp"): int(e["port"]) for e in events}  # type: ignore[attr-defined]
        _drain(proc)
        yield str(events[0].get("host", "127.0.0.1")), int(events[0]["port"]), proc
    finally:
        _stop(proc)
