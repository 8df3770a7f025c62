"""The ``mqttd`` command line, run as a real subprocess (``python -m mqttd``).

Every wait is bounded by ``trio.fail_after``: the tests read the broker's stderr line by line and
wait for a given log event (``listener_started``) instead of sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

import mqttd
from conformance.broker_process import (
    BrokerStartError,
    TrioBrokerProcess,
    mqttd_argv,
    spawn_mqttd,
    start_mqttd,
)
from tests.helpers import wire

#: Upper bound for any single wait in these tests, in seconds (generous: the machine is shared).
TIMEOUT_S = 20.0


async def run_mqttd(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m mqttd ARGS`` to completion and capture its output."""
    with trio.fail_after(TIMEOUT_S):
        return await trio.run_process(
            mqttd_argv(*args),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )


def assert_one_line_error(result: subprocess.CompletedProcess[bytes], *fragments: str) -> str:
    """Exit status 2, one ``mqttd: ...`` line on stderr, no traceback; return that line."""
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("mqttd: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@pytest.fixture
async def start_broker() -> AsyncIterator[Any]:
    """Start ``python -m mqttd ARGS``; stop it at the end of the test if it still runs."""
    brokers: list[TrioBrokerProcess] = []

    async def start(*args: str | Path) -> TrioBrokerProcess:
        # In its own session: a Ctrl-C at the terminal must not reach it.
        brokers.append(await spawn_mqttd(*args, new_session=True))
        return brokers[-1]

    yield start
    for broker in brokers:
        await broker.aclose(timeout_s=5)


async def read_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    """Read ``n`` bytes (fewer only at EOF) from a stream."""
    data = b""
    with trio.fail_after(TIMEOUT_S):
        while len(data) < n:
            chunk = await stream.receive_some(n - len(data))
            if not chunk:
                break
            data += chunk
    return data


# ---------------------------------------------------------------------------------------------
# Commands that do not start the broker
# ---------------------------------------------------------------------------------------------


async def test_version_prints_name_and_version() -> None:
    """``mqttd --version`` prints ``mqttd <version>`` and exits 0."""
    result = await run_mqttd("--version")
    assert result.returncode == 0
    assert result.stdout.decode() == f"mqttd {mqttd.__version__}\n"


async def test_check_config_ok(write_config: Any) -> None:
    """``check-config`` on a valid file prints ``FILE: ok`` and exits 0."""
    path = write_config("[[listeners]]\nport = 0\n")
    result = await run_mqttd("check-config", path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == f"{path}: ok\n"
    assert result.stderr == b""


async def test_check_config_bad_value(write_config: Any) -> None:
    """``check-config`` on an invalid value prints one line naming file and key, exits 2."""
    path = write_config("[limits]\nmax_queued_messages = 0\n")
    result = await run_mqttd("check-config", path)
    line = assert_one_line_error(result, str(path), "limits.max_queued_messages")
    assert "greater than 0" in line
    assert result.stdout == b""


async def test_check_config_invalid_toml(write_config: Any) -> None:
    """``check-config`` on broken TOML exits 2 with one line, no traceback."""
    path = write_config("[limits\n")
    assert_one_line_error(await run_mqttd("check-config", path), str(path), "invalid TOML")


async def test_check_config_missing_file(tmp_path: Path) -> None:
    """``check-config`` on a missing file exits 2 with one line, no traceback."""
    path = tmp_path / "absent.toml"
    assert_one_line_error(await run_mqttd("check-config", path), str(path), "cannot read")


async def test_unknown_key_stops_the_broker_before_it_starts(write_config: Any) -> None:
    """``mqttd --config`` with an unknown key exits 2 with the key path, no traceback."""
    path = write_config("[[listeners]]\nport = 0\nbind = true\n")
    assert_one_line_error(await run_mqttd("--config", path), str(path), "listeners[0].bind")


async def test_missing_config_option_is_a_usage_error() -> None:
    """``mqttd`` without ``--config`` prints usage and exits 2."""
    result = await run_mqttd()
    assert result.returncode == 2
    assert b"--config" in result.stderr
    assert b"Traceback" not in result.stderr


async def test_passwd_subcommand_is_dispatched(tmp_path: Path) -> None:
    """``mqttd passwd -c -b FILE USER PW`` reaches mqttd.passwd and writes a $7$ hash."""
    path = tmp_path / "passwords"
    result = await run_mqttd("passwd", "-c", "-b", path, "alice", "s3cret")
    assert result.returncode == 0, result.stderr
    assert path.read_text(encoding="utf-8").startswith("alice:$7$")


# A child that runs ``mqttd.cli.main`` with ``mqttd.server.main`` replaced, to check how the CLI
# reports what the server raises (errors wrapped in exception groups by nurseries, Ctrl-C).
FAKE_SERVER_SNIPPET = """
import sys, trio
import mqttd.cli, mqttd.server
from mqttd.errors import StartupError

async def fake_main(config):
    async with trio.open_nursery():
        raise {raise_expr}

mqttd.server.main = fake_main
sys.exit(mqttd.cli.main(["--config", sys.argv[1]]))
"""


@pytest.mark.parametrize(
    ("raise_expr", "status", "expected"),
    [
        pytest.param(
            'StartupError("cannot listen on tcp 127.0.0.1:1: nope")',
            2,
            "mqttd: cannot listen on tcp 127.0.0.1:1: nope",
            id="startup-error-in-group",
        ),
        pytest.param("KeyboardInterrupt()", 130, None, id="keyboard-interrupt"),
    ],
)
async def test_server_failures_are_reported_without_traceback(
    write_config: Any, raise_expr: str, status: int, expected: str | None
) -> None:
    """A StartupError inside a nursery exits 2 with one line; Ctrl-C exits 130; no traceback."""
    path = write_config("[[listeners]]\nport = 0\n")
    with trio.fail_after(TIMEOUT_S):
        result = await trio.run_process(
            [sys.executable, "-c", FAKE_SERVER_SNIPPET.format(raise_expr=raise_expr), str(path)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    stderr = result.stderr.decode()
    assert result.returncode == status, stderr
    assert "Traceback" not in stderr
    if expected is not None:
        assert stderr.splitlines()[-1] == expected


# ---------------------------------------------------------------------------------------------
# Logging (configure_logging in a child process)
# ---------------------------------------------------------------------------------------------

LOGGING_SNIPPET = """
import logging
from mqttd.logging import configure_logging, get_logger
configure_logging(json={json}, level="info")
get_logger("mqttd.test").info("structlog_event", answer=42)
get_logger("mqttd.test").debug("hidden_debug_event")
logging.getLogger("trio.serve_listeners").warning("stdlib %s", "record")
logging.getLogger("trio.serve_listeners").debug("hidden stdlib debug")
try:
    1 / 0
except ZeroDivisionError:
    get_logger().exception("with_traceback")
"""


async def run_logging_snippet(json_format: bool) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(TIMEOUT_S):
        return await trio.run_process(
            [sys.executable, "-c", LOGGING_SNIPPET.format(json=json_format)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


async def test_json_logging_one_object_per_line_on_stderr() -> None:
    """JSON logs: one object per stderr line, stdlib records included, below-level dropped."""
    result = await run_logging_snippet(True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""
    records = [json.loads(line) for line in result.stderr.decode().splitlines()]
    assert [r["event"] for r in records] == ["structlog_event", "stdlib record", "with_traceback"]
    for record in records:
        assert record["level"] in ("info", "warning", "error")
        assert record["timestamp"].endswith("Z")
    assert records[0]["answer"] == 42
    assert records[0]["logger"] == "mqttd.test"
    assert records[1]["logger"] == "trio.serve_listeners"
    assert records[1]["level"] == "warning"
    assert records[2]["exception"][0]["exc_type"] == "ZeroDivisionError"


async def test_console_logging_is_plain_text_when_not_a_terminal() -> None:
    """Console logs to a pipe are readable lines without colour escape codes."""
    result = await run_logging_snippet(False)
    assert result.returncode == 0, result.stderr
    stderr = result.stderr.decode()
    assert "structlog_event" in stderr
    assert "answer=42" in stderr
    assert "stdlib record" in stderr
    assert "ZeroDivisionError" in stderr
    assert "hidden" not in stderr
    assert "\x1b[" not in stderr
    assert not stderr.lstrip().startswith("{")


# ---------------------------------------------------------------------------------------------
# Running the broker (needs mqttd.server)
# ---------------------------------------------------------------------------------------------


async def test_port_in_use_exits_2_without_traceback(write_config: Any) -> None:
    """A listener port that is already taken ends with one 'in use' line and exit 2."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write_config(f'[[listeners]]\nhost = "127.0.0.1"\nport = {port}\n')
        result = await run_mqttd("--config", path, "--log-format", "json")
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr
    last = stderr.splitlines()[-1]
    assert last.startswith("mqttd: "), stderr
    assert "in use" in last.lower()
    assert str(port) in last


# The command-line flags override the file's [log] section (SIGTERM case); without flags the
# file's [log] section applies (SIGINT case).
SIGNAL_CASES = [
    pytest.param(
        signal.SIGTERM,
        '[log]\nformat = "console"\nlevel = "error"\n',
        ["--log-format", "json", "--log-level", "info"],
        id="SIGTERM",
    ),
    pytest.param(signal.SIGINT, '[log]\nformat = "json"\nlevel = "info"\n', [], id="SIGINT"),
]


@pytest.mark.parametrize(("signum", "log_section", "flags"), SIGNAL_CASES)
async def test_broker_serves_then_exits_0_on_signal(
    write_config: Any, start_broker: Any, signum: signal.Signals, log_section: str, flags: list[str]
) -> None:
    """Start on port 0, CONNECT/CONNACK over TCP, then a signal gives exit 0 within 10 s."""
    path = write_config(f'[[listeners]]\ntype = "tcp"\nhost = "127.0.0.1"\nport = 0\n{log_section}')
    broker: TrioBrokerProcess = await start_broker("--config", path, *flags)
    started = await broker.wait_for_event("listener_started")
    assert started["transport"] == "tcp"
    assert started["host"] == "127.0.0.1"
    port = started["port"]
    assert isinstance(port, int)
    assert port > 0

    with trio.fail_after(TIMEOUT_S):
        client = await trio.open_tcp_stream("127.0.0.1", port)
    async with client:
        with trio.fail_after(TIMEOUT_S):
            await client.send_all(wire.connect("cli-test", keepalive=60))
        assert await read_exactly(client, 4) == bytes.fromhex("20 02 00 00")

        os.kill(broker.proc.pid, signum)
        assert await broker.wait_exit(timeout_s=10) == 0
        # The broker closed our connection on its way out.
        assert await read_exactly(client, 1) == b""

    assert not any("Traceback" in line for line in broker.lines)
    for line in broker.lines:  # every line, to the last, is a JSON log record
        record = json.loads(line)
        assert {"event", "level", "timestamp"} <= record.keys()


async def test_sighup_reloads_auth_files_and_keeps_running(
    start_broker: Any, write_config: Any, tmp_path: Path
) -> None:
    """SIGHUP re-reads the ACL file (logged), a broken file is refused and the old one kept,
    and the broker keeps serving; SIGTERM still exits 0."""
    acl = tmp_path / "acl"
    acl.write_text("topic read news/#\n")
    config = write_config(
        f'[[listeners]]\nport = 0\n[auth]\nacl_file = "{acl}"\n[store]\ndurability = "memory"\n'
    )
    broker = await start_broker("--config", config, "--log-format", "json")
    await broker.wait_for_event("listener_started")
    broker.proc.send_signal(signal.SIGHUP)
    reloaded = await broker.wait_for_event("auth_reloaded")
    assert str(acl) in reloaded["files"]
    acl.write_text("bogus line\n")
    broker.proc.send_signal(signal.SIGHUP)
    failed = await broker.wait_for_event("auth_reload_failed")
    assert "acl" in failed["error"]
    broker.proc.send_signal(signal.SIGTERM)
    assert await broker.wait_exit(TIMEOUT_S) == 0


async def test_corrupt_store_exits_2_with_what_to_do(write_config: Any, tmp_path: Path) -> None:
    """A corrupt database never starts an empty broker: one line naming the file and what to
    do, exit 2."""
    database = tmp_path / "broken.db"
    database.write_bytes(b"definitely not sqlite" * 200)
    path = write_config(
        f'[[listeners]]\nport = 0\n[store]\ndurability = "fsync"\npath = "{database}"\n'
    )
    result = await run_mqttd("--config", path, "--log-format", "json")
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr
    last = stderr.splitlines()[-1]
    assert last.startswith("mqttd: store ")
    assert str(database) in last
    assert "backup" in last


async def test_start_helper_reports_every_listener_and_an_early_exit(write_config: Any) -> None:
    """conformance.broker_process (used by the tests and the benchmarks) returns the bound port
    of each listener, and turns an exit during start-up into an error with the broker's line."""
    path = write_config(
        '[[listeners]]\ntype = "tcp"\nhost = "127.0.0.1"\nport = 0\n'
        '[[listeners]]\ntype = "ws"\nhost = "127.0.0.1"\nport = 0\n'
    )
    broker = await trio.to_thread.run_sync(start_mqttd, path)
    try:
        assert sorted(broker.ports) == ["tcp", "ws"]
        assert [r["port"] for r in broker.listeners] == [broker.ports["tcp"], broker.ports["ws"]]
    finally:
        assert await trio.to_thread.run_sync(broker.stop) == 0
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        busy = write_config(f'[[listeners]]\nhost = "127.0.0.1"\nport = {taken}\n')
        with pytest.raises(BrokerStartError, match="in use"):
            await trio.to_thread.run_sync(start_mqttd, busy)
