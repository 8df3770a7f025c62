"""Password files interoperate with Mosquitto 2.0 in both directions.

* a file written by Debian's ``mosquitto_passwd`` verifies with ``mqttd.auth.PasswordFile``;
* a file written by ``mqttd passwd`` authenticates clients in a real ``mosquitto`` broker.

The tests are trio tests (this directory's fixtures are async); the tools run as subprocesses
(``mosquitto_passwd`` through trio, the broker through ``conformance.broker_process``, which waits
for its "running" line), and every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import io
import os
import pwd
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from conformance.broker_process import MOSQUITTO, free_port, start_mosquitto
from mqttd import passwd
from mqttd.auth import PasswordFile
from tests.helpers import wire

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
MOSQUITTO_PUB = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"

needs_mosquitto_passwd = pytest.mark.skipif(
    not os.access(MOSQUITTO_PASSWD, os.X_OK),
    reason="mosquitto_passwd not installed (Debian package 'mosquitto')",
)
needs_mosquitto = pytest.mark.skipif(
    not os.access(MOSQUITTO, os.X_OK), reason="mosquitto not installed (Debian 'mosquitto')"
)

USERS = {
    "alice": "correct horse",
    "bjørn": "pässwörd with spaces",
    "carol": "c:with:colons",
}


async def mosquitto_passwd(*args: str) -> None:
    await trio.run_process([MOSQUITTO_PASSWD, *args], capture_stdout=True, capture_stderr=True)


@needs_mosquitto_passwd
async def test_mosquitto_passwd_file_verifies_in_mqttd(tmp_path: Path) -> None:
    """$7$ and $6$ entries written by mosquitto_passwd (incl. -U) verify in PasswordFile."""
    path = tmp_path / "pw"
    first, *rest = USERS.items()
    with trio.fail_after(60):
        await mosquitto_passwd("-c", "-b", str(path), *first)
        for user, password in rest:
            await mosquitto_passwd("-b", str(path), user, password)
        await mosquitto_passwd("-H", "sha512", "-b", str(path), "legacy", "old-style")
        plain = tmp_path / "plain"
        plain.write_text("upgraded:plain-pw\n")
        await mosquitto_passwd("-U", str(plain))
    path.write_text(path.read_text() + plain.read_text())

    pwfile = PasswordFile.load(path)
    assert sorted(pwfile) == sorted([*USERS, "legacy", "upgraded"])
    assert path.read_text().count(":$7$101$") == 4
    assert "legacy:$6$" in path.read_text()
    for user, password in [*USERS.items(), ("legacy", "old-style"), ("upgraded", "plain-pw")]:
        assert pwfile.verify(user, password.encode("utf-8")), user
        assert not pwfile.verify(user, password.encode("utf-8")[:-1]), user
    assert not pwfile.verify("nobody", b"correct horse")


async def connack_code(port: int, username: str | None, password: str | None) -> int:
    """Send an MQTT 3.1.1 CONNECT built from raw bytes; return the CONNACK return code."""
    connect = wire.connect(
        "interop-client",
        keepalive=30,
        username=username,
        password=None if password is None else password.encode("utf-8"),
    )
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(connect)
        reply = b""
        while len(reply) < 4:
            chunk = await stream.receive_some(4 - len(reply))
            if not chunk:
                break
            reply += chunk
    assert reply[:2] == b"\x20\x02", reply
    return reply[3]


@contextlib.contextmanager
def running_mosquitto(tmp_path: Path, password_file: Path) -> Iterator[int]:
    """Start mosquitto with password_file and allow_anonymous false; yield its port."""
    port = free_port()
    conf = (
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous false\n"
        f"password_file {password_file}\n"
        "persistence false\n"
        # mosquitto drops root privileges to this user; stay ourselves to read the 0600 file.
        f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
    )
    with start_mosquitto(conf, tmp_path, {"tcp": port}):
        yield port


def mqttd_passwd(*args: str) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = passwd.main(list(args))
    assert code == 0, err.getvalue()


@needs_mosquitto
async def test_mqttd_passwd_file_authenticates_in_mosquitto(tmp_path: Path) -> None:
    """Users created by mqttd passwd (-c/-b, -U, -H sha512) log in to mosquitto; others do not."""
    path = tmp_path / "pw"
    first, *rest = USERS.items()
    mqttd_passwd("-c", "-b", str(path), *first)
    for user, password in rest:
        mqttd_passwd("-b", str(path), user, password)
    mqttd_passwd("-H", "sha512", "-b", str(path), "legacy", "old-style")
    plain = tmp_path / "plain"
    plain.write_text("# upgraded from plain text\nupgraded:plain-pw\n")
    mqttd_passwd("-U", str(plain))
    path.write_text(path.read_text() + plain.read_text())
    path.chmod(0o600)
    accounts = [*USERS.items(), ("legacy", "old-style"), ("upgraded", "plain-pw")]

    with trio.fail_after(60):
        with running_mosquitto(tmp_path, path) as port:
            for user, password in accounts:
                assert await connack_code(port, user, password) == 0, user
                assert await connack_code(port, user, password + "x") in (4, 5), user
            assert await connack_code(port, "nobody", "correct horse") in (4, 5)
            assert await connack_code(port, "alice", None) in (4, 5)
            assert await connack_code(port, None, None) in (4, 5)

            if os.access(MOSQUITTO_PUB, os.X_OK):
                base = [MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(port), "-t", "t", "-m", "m"]
                ok = await trio.run_process(
                    [*base, "-u", "alice", "-P", USERS["alice"]], capture_stderr=True
                )
                assert ok.returncode == 0, ok.stderr
                bad = await trio.run_process(
                    [*base, "-u", "alice", "-P", "wrong"], capture_stderr=True, check=False
                )
                assert bad.returncode != 0
