"""Interop tests reuse the in-process broker fixtures of the integration tests.

For tests against one broker made of several processes (``mqttd --workers N``), this also
starts such a broker and tells which of its processes serves a connection. That is read from
the kernel: the broker's end of a loopback TCP connection is a row of ``/proc/net/tcp`` (local
port = the listener's, remote port = the client's) whose socket inode exactly one worker holds
open (``/proc/<pid>/fd``); a client process's end is found the same way from its pid.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from conformance.broker_process import (
    BrokerProcess,
    expected_listeners,
    listeners_toml,
    start_mqttd,
)
from tests.integration.conftest import close_wire_clients, durability, server, start_server

__all__ = [
    "GATEWAY_CONFIG",
    "JS_DIR",
    "WORKERS",
    "client_ports",
    "close_wire_clients",
    "dev_ca",
    "durability",
    "mqttjs_node",
    "running_workers",
    "server",
    "serving_process",
    "start_server",
    "worker_pids",
]

#: The JavaScript test clients (``npm ci`` installs their node_modules).
JS_DIR = Path(__file__).resolve().parent.parent / "js"

#: An mqttd config (data in ``./data``) with tcp, ws and wss listeners on free ports, anonymous
#: clients allowed; wss uses the development certificates (``dev_ca``).
GATEWAY_CONFIG = '[broker]\ndata_dir = "data"\n\n[auth]\nallow_anonymous = true\n\n' + (
    listeners_toml("tcp", "ws", "wss")
)


def dev_ca(config_dir: Path) -> Path:
    """The development CA that mqttd made for ``GATEWAY_CONFIG`` in ``config_dir``."""
    return config_dir / "data" / "tls" / "ca.pem"


def mqttjs_node() -> str:
    """The ``node`` that runs the MQTT.js clients in ``JS_DIR``; skips the test where node or
    MQTT.js is missing (fails it in CI)."""
    node = shutil.which("node")
    if node is None or not (JS_DIR / "node_modules" / "mqtt").is_dir():
        if os.environ.get("CI"):
            pytest.fail("node and tests/js/node_modules are required in CI (npm ci in tests/js)")
        pytest.skip("node or tests/js/node_modules missing (run: npm ci --prefix tests/js)")
    return node


#: How many workers a multi-worker test broker runs (this machine has 2 cores; 3 workers make
#: the kernel's spreading visible and exercise routing through more than one other worker).
WORKERS = 3
#: Upper bound, in seconds, for a multi-worker broker to start (a redis-server and N workers).
WORKERS_START_S = 60.0


@contextmanager
def running_workers(listeners: str, *, extra: str = "") -> Iterator[BrokerProcess]:
    """``mqttd --workers 3`` with ``listeners`` (``[[listeners]]`` tables on port 0) and ``extra``
    TOML, its private redis-server in a fresh data directory; yields it once every worker
    listens on every port, stops it (SIGTERM, then SIGKILL) on exit."""
    # Short, not tmp_path: the private Redis's Unix socket path must fit in 107 bytes.
    data_dir = Path(tempfile.mkdtemp(prefix="mqttd-w"))
    try:
        config = data_dir / "mqttd.toml"
        config.write_text(f'[broker]\ndata_dir = "{data_dir}"\n\n{extra}\n{listeners}')
        count = WORKERS * expected_listeners(config)
        with start_mqttd(
            config, "--workers", str(WORKERS), listeners=count, timeout_s=WORKERS_START_S
        ) as broker:
            yield broker
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after it.
    return int(stat.rsplit(")", 1)[1].split()[1])


def worker_pids(supervisor: BrokerProcess) -> list[int]:
    """The worker processes of a running ``mqttd --workers N`` (its children other than the
    private redis-server)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _parent(int(entry)) == supervisor.pid:
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except FileNotFoundError:  # exited meanwhile
                continue
            if b"--worker" in argv:
                pids.append(int(entry))
    return sorted(pids)


def _loopback_connections() -> list[tuple[int, int, int]]:
    """(local port, remote port, socket inode) of every established loopback IPv4 TCP
    connection end (``/proc/net/tcp`` writes 127.0.0.1 as 0100007F, state 01 = ESTABLISHED)."""
    rows = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], int(fields[9])
        if state == "01" and inode and local.startswith("0100007F:"):
            rows.append((int(local.split(":")[1], 16), int(remote.split(":")[1], 16), inode))
    return rows


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:  # closed meanwhile
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    return inodes


def serving_process(server_port: int, client_port: int, pids: Iterable[int]) -> int:
    """Which of ``pids`` holds the broker's end of the connection from ``client_port`` to
    ``server_port`` (call it once the client has its CONNACK: the connection is accepted)."""
    wanted = (server_port, client_port)
    inodes = {inode for *ends, inode in _loopback_connections() if tuple(ends) == wanted}
    assert inodes, f"no accepted connection {server_port} <- {client_port}"
    for pid in pids:
        if inodes & _socket_inodes(pid):
            return pid
    raise AssertionError(f"none of {list(pids)} serves {server_port} <- {client_port}")


def client_ports(pid: int, server_port: int) -> list[int]:
    """The local ports of the connections that process ``pid`` holds to ``server_port``."""
    mine = _socket_inodes(pid)
    return sorted(
        local
        for local, remote, inode in _loopback_connections()
        if remote == server_port and inode in mine
    )
