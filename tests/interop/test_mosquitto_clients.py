"""Debian's mosquitto_pub / mosquitto_sub (2.0.11) against mqttd: QoS 0/1/2, retained, wildcards,
will, and ``-c -i ID`` offline queueing, over MQTT 3.1.1 and 3.1."""

from __future__ import annotations

import shutil
import subprocess
from functools import partial

import pytest
import trio

from mqttd.server import Server

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        shutil.which("mosquitto_sub") is None, reason="mosquitto-clients is not installed"
    ),
]

TIMEOUT_S = 20


class Subscriber:
    """A running ``mosquitto_sub -d -v``; ``ready`` is set once its SUBACK arrived."""

    def __init__(self) -> None:
        self.ready = trio.Event()
        self.lines: list[str] = []
        self.done = trio.Event()
        self.process: trio.Process | None = None

    async def run(self, args: list[str]) -> None:
        async with trio.open_nursery() as nursery:
            # run_process kills the child if this task is cancelled.
            process = await nursery.start(
                partial(
                    trio.run_process,
                    # stdbuf: line-buffer the debug output, which would sit in a block buffer.
                    ["stdbuf", "-oL", "mosquitto_sub", "-d", "-v", *args],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    check=False,
                )
            )
            self.process = process
            assert process.stdout is not None
            buffer = b""
            while True:
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    break
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for raw in complete:
                    line = raw.decode()
                    if "received SUBACK" in line:
                        self.ready.set()
                    elif line and not line.startswith(("Client ", " ", "Subscribed (")):
                        self.lines.append(line)
        self.done.set()


async def start_sub(nursery: trio.Nursery, args: list[str]) -> Subscriber:
    sub = Subscriber()
    nursery.start_soon(sub.run, args)
    with trio.fail_after(TIMEOUT_S):
        await sub.ready.wait()
    return sub


async def pub(port: int, *args: str) -> None:
    with trio.fail_after(TIMEOUT_S):
        await trio.run_process(["mosquitto_pub", "-p", str(port), *args])


@pytest.mark.parametrize("version", ["mqttv311", "mqttv31"])
@pytest.mark.parametrize("qos", ["0", "1", "2"])
async def test_pub_sub_wildcard(
    server: Server, nursery: trio.Nursery, version: str, qos: str
) -> None:
    """`/news/+/sport` receives `/news/europe/sport` but not `/news/europe/tech`."""
    port = str(server.port())
    sub = await start_sub(
        nursery, ["-p", port, "-V", version, "-q", qos, "-t", "/news/+/sport", "-C", "2"]
    )
    await pub(server.port(), "-V", version, "-q", qos, "-t", "/news/europe/tech", "-m", "tech")
    await pub(server.port(), "-V", version, "-q", qos, "-t", "/news/europe/sport", "-m", "hi")
    await pub(server.port(), "-V", version, "-q", qos, "-t", "/news/asia/sport", "-m", "two")
    with trio.fail_after(TIMEOUT_S):
        await sub.done.wait()
    assert sub.lines == ["/news/europe/sport hi", "/news/asia/sport two"]


async def test_multi_level_wildcard_and_retained(server: Server, nursery: trio.Nursery) -> None:
    """`/news/#` gets a retained message first, then live ones."""
    await pub(server.port(), "-r", "-q", "1", "-t", "/news/kept", "-m", "retained")
    sub = await start_sub(nursery, ["-p", str(server.port()), "-t", "/news/#", "-C", "2"])
    await pub(server.port(), "-q", "1", "-t", "/news/europe/sport", "-m", "live")
    with trio.fail_after(TIMEOUT_S):
        await sub.done.wait()
    assert sub.lines == ["/news/kept retained", "/news/europe/sport live"]


async def test_will_from_killed_client(server: Server, nursery: trio.Nursery) -> None:
    """A mosquitto_sub killed with SIGKILL has its Will published."""
    watcher = await start_sub(nursery, ["-p", str(server.port()), "-t", "status/#", "-C", "1"])
    victim = Subscriber()
    nursery.start_soon(
        victim.run,
        [
            "-p",
            str(server.port()),
            "-t",
            "nothing",
            "--will-topic",
            "status/victim",
            "--will-payload",
            "offline",
            "--will-qos",
            "1",
        ],
    )
    with trio.fail_after(TIMEOUT_S):
        await victim.ready.wait()
    assert victim.process is not None
    victim.process.kill()  # SIGKILL: no DISCONNECT, so the Will must be published
    with trio.fail_after(TIMEOUT_S):
        await watcher.done.wait()
    assert watcher.lines == ["status/victim offline"]


async def test_persistent_client_gets_offline_messages(
    server: Server, nursery: trio.Nursery
) -> None:
    """`mosquitto_sub -c -i ID -q 1` receives what was published while it was away."""
    port = str(server.port())
    first = await start_sub(
        nursery, ["-p", port, "-c", "-i", "offline-sub", "-q", "1", "-t", "queue/#", "-C", "1"]
    )
    await pub(server.port(), "-q", "1", "-t", "queue/first", "-m", "one")
    with trio.fail_after(TIMEOUT_S):
        await first.done.wait()
    await pub(server.port(), "-q", "1", "-t", "queue/a", "-m", "while-away-1")
    await pub(server.port(), "-q", "2", "-t", "queue/b", "-m", "while-away-2")
    again = Subscriber()
    nursery.start_soon(
        again.run, ["-p", port, "-c", "-i", "offline-sub", "-q", "1", "-t", "queue/#", "-C", "2"]
    )
    with trio.fail_after(TIMEOUT_S):
        await again.done.wait()
    assert again.lines == ["queue/a while-away-1", "queue/b while-away-2"]
