"""A private redis-server for tests: Debian's binary on a free loopback port, no files kept."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

#: How long redis-server may take to say it is ready.
START_TIMEOUT_S = 10.0


@dataclass
class RedisServer:
    """A running redis-server."""

    process: subprocess.Popen[bytes]
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def redis_server(
    directory: Path, *extra: str, port: int | None = None, persistent: bool = False
) -> Iterator[RedisServer]:
    """Start redis-server in ``directory`` on a free port (or ``port``); stop it on exit.

    Args:
        directory: its working directory (where an append-only file goes).
        extra: more redis-server options.
        port: the port, to start a server again where a stopped one was.
        persistent: keep data in an append-only file synced on every write, so a server
            started again in the same directory has it all.

    Raises:
        RuntimeError: redis-server is not installed, or did not become ready in time.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (scripts/test.sh installs it)")
    directory.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    persistence = (
        ["--appendonly", "yes", "--appendfsync", "always"] if persistent else ["--appendonly", "no"]
    )
    args = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(directory),
        "--save", "",
        *persistence,
        *extra,
    ]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    drain = threading.Thread(target=_drain, args=(process,), daemon=True)
    try:
        _wait_ready(process)
        # Keep reading its log so that a full pipe never blocks the server.
        drain.start()
        yield RedisServer(process, port, directory)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if drain.is_alive():
            drain.join(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


@contextmanager
def redis_sentinel(
    directory: Path, primary: RedisServer, service: str = "mymaster"
) -> Iterator[RedisServer]:
    """Start a Redis Sentinel watching ``primary`` as ``service``; stop it on exit."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (scripts/test.sh installs it)")
    directory.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    conf = directory / "sentinel.conf"  # Sentinel rewrites its file: one of its own
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
        f"sentinel monitor {service} 127.0.0.1 {primary.port} 1\n"
        f"sentinel down-after-milliseconds {service} 1000\n"
    )
    process = subprocess.Popen(
        [binary, str(conf), "--sentinel"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    drain = threading.Thread(target=_drain, args=(process,), daemon=True)
    try:
        _wait_ready(process, b"+monitor master")
        drain.start()
        yield RedisServer(process, port, directory)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if drain.is_alive():
            drain.join(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def _wait_ready(
    process: subprocess.Popen[bytes], ready: bytes = b"Ready to accept connections"
) -> None:
    """Read redis-server's log until it says it is ready."""
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    seen = b""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen += line
        if ready in line:
            return
    raise RuntimeError(f"redis-server did not start: {seen.decode(errors='replace')[-2000:]}")


def _drain(process: subprocess.Popen[bytes]) -> None:
    assert process.stdout is not None
    for _line in process.stdout:
        pass
