"""Run a broker (mqttd, or Mosquitto) as a child process and learn where it listens.

Theory of operation
-------------------
``python -m mqttd --config FILE --log-format json`` writes one JSON object per line to stderr;
for every bound socket it logs ``{"event": "listener_started", "transport": "tcp", "host": ...,
"port": ...}``. Configs use ``port = 0``, so the ports are known only from those lines: the
helpers here start the process, read its stderr until every expected listener has reported
(bounded by a timeout; an early exit is an error with the last lines), and keep reading
afterwards, so the broker never blocks on a full pipe and callers can wait for later events.

Two flavours, one behaviour:

- ``start_mqttd`` / ``start_mosquitto`` (blocking, for scripts and thread-based tests): a thread
  reads stderr into a bounded queue of records (``LogLines``); ``BrokerProcess.stop`` sends
  SIGTERM, then SIGKILL if the broker takes too long.
- ``run_mqttd`` / ``spawn_mqttd`` (trio): ``TrioBrokerProcess`` reads stderr on demand
  (``next_line``, ``wait_for_event``) or in a background task (``drain``); ``records`` and
  ``wait_for_record`` look through every line read so far, whoever read it, and the latter
  reads more (taking turns with ``drain``), so a test misses no line while the pipe is drained.

``mqttd --workers N`` logs ``listener_started`` once per worker and listener: pass
``listeners=N * len(listeners)`` to wait for all of them (``ports`` is the same for each).

Like the rest of ``conformance`` this never imports ``mqttd``: the broker is only ever a process.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import trio

#: Upper bound, in seconds, for a broker to report that it listens.
START_TIMEOUT_S = 30.0
#: How long a broker may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT_S = 20.0
#: The event mqttd logs once per bound listening socket.
LISTENER_STARTED = "listener_started"
#: Mosquitto's "ready" line (after every listener is open).
MOSQUITTO_READY = " running"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"

#: The checkout this file belongs to, if it is one (then its mqttd is the one that runs).
CHECKOUT = Path(__file__).resolve().parents[1]

Record = dict[str, Any]


class BrokerStartError(RuntimeError):
    """The broker exited, or did not report its listeners in time."""


class LogWaitError(RuntimeError):
    """A log line that was waited for did not come (timeout, or the output ended)."""


def mqttd_argv(*args: str | Path) -> list[str]:
    """``python -m mqttd ARGS`` with this interpreter."""
    return [sys.executable, "-m", "mqttd", *map(str, args)]


def mqttd_env() -> dict[str, str]:
    """The environment for an mqttd child: this checkout first on ``PYTHONPATH`` (so the broker
    under test is the one next to this file, whatever the child's working directory)."""
    env = dict(os.environ)
    if (CHECKOUT / "mqttd" / "__init__.py").is_file():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CHECKOUT), env.get("PYTHONPATH")]))
    return env


def mqttd_version() -> str:
    """The version ``python -m mqttd --version`` reports (``0.1.0``), or ``?``."""
    try:
        out = subprocess.run(
            mqttd_argv("--version"),
            capture_output=True,
            text=True,
            timeout=30,
            env=mqttd_env(),
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.strip().removeprefix("mqttd ").strip() or "?"


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (for brokers that cannot bind port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listeners_toml(*transports: str, **options: str | int | bool) -> str:
    """``[[listeners]]`` tables for a test or benchmark config: one per transport, on port 0
    (the bound port is logged), tls/wss with mqttd's development certificates unless
    ``certfile`` is among ``options``; every table gets ``options`` (``web_root="..."``)."""
    tables = []
    for transport in transports:
        values: dict[str, str | int | bool] = {"type": transport, "port": 0}
        if transport in ("tls", "wss") and "certfile" not in options:
            values["tls_dev_certs"] = True
        values.update(options)
        lines = [f"{key} = {json.dumps(value)}" for key, value in values.items()]
        tables.append("[[listeners]]\n" + "\n".join(lines) + "\n")
    return "\n".join(tables)


def expected_listeners(config: Path) -> int:
    """How many ``listener_started`` lines a config should produce: one per ``[[listeners]]``
    table (mqttd's default is one listener)."""
    with config.open("rb") as f:
        return len(tomllib.load(f).get("listeners", [None]))


def parse_line(raw: bytes | str) -> Record:
    """A log line as a record: the JSON object itself, else ``{"event": "output", "line": ...}``
    (Mosquitto's plain text, a Python traceback, the CLI's one-line error)."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    text = text.rstrip("\r\n")
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    return record if isinstance(record, dict) else {"event": "output", "line": text}


def is_listener(record: Record) -> bool:
    """True for mqttd's ``listener_started`` record."""
    return record.get("event") == LISTENER_STARTED and "port" in record


def ports_of(listeners: list[Record]) -> dict[str, int]:
    """Transport (``tcp``, ``tls``, ``ws``, ``wss``) → port; the first listener of each kind."""
    ports: dict[str, int] = {}
    for record in listeners:
        ports.setdefault(str(record.get("transport", "tcp")), int(record["port"]))
    return ports


# ---------------------------------------------------------------------------------------------
# Blocking flavour
# ---------------------------------------------------------------------------------------------


class LogLines:
    """Lines of a child's output, read by a thread as they come; wait for one with a deadline.

    Unread records are kept in a bounded queue (the oldest are dropped past ``keep``); the last
    ``tail_size`` lines and a count per ``level`` are always there, for error messages.
    """

    def __init__(self, pipe: IO[bytes], *, keep: int = 10_000, tail_size: int = 20) -> None:
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_size)
        self.levels: collections.Counter[str] = collections.Counter()
        self.eof = False
        self._pipe = pipe
        self._records: collections.deque[Record] = collections.deque(maxlen=keep)
        self._cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, name="log-lines", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for raw in self._pipe:
                text = raw.decode(errors="replace").rstrip("\r\n")
                record = parse_line(text)
                with self._cond:
                    self.tail.append(text)
                    if "level" in record:
                        self.levels[str(record["level"])] += 1
                    self._records.append(record)
                    self._cond.notify_all()
        except (OSError, ValueError):  # the pipe was closed under us
            pass
        finally:
            with self._cond:
                self.eof = True
                self._cond.notify_all()

    def next(self, timeout_s: float) -> Record | None:
        """The next unread record; None at the end of the output.

        Raises:
            LogWaitError: nothing came within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self._records and not self.eof:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise LogWaitError(f"no output within {timeout_s:g} s: {self.tail_text()}")
                self._cond.wait(left)
            return self._records.popleft() if self._records else None

    def wait_for(
        self,
        predicate: Callable[[Record], bool],
        what: str,
        timeout_s: float = START_TIMEOUT_S,
        *,
        give_up: Callable[[Record], bool] | None = None,
    ) -> Record:
        """Read forward until a record matches ``predicate``; return it (the ones before it
        are consumed).

        Raises:
            LogWaitError: no match within ``timeout_s``, the output ended, or a record matched
                ``give_up`` first.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                record = self.next(max(0.0, deadline - time.monotonic()))
            except LogWaitError:
                raise LogWaitError(
                    f"no {what} within {timeout_s:g} s: {self.tail_text()}"
                ) from None
            if record is None:
                raise LogWaitError(f"output ended before {what}: {self.tail_text()}")
            if predicate(record):
                return record
            if give_up is not None and give_up(record):
                raise LogWaitError(f"{record} while waiting for {what}")

    def take(
        self,
        predicate: Callable[[Record], bool],
        what: str,
        timeout_s: float,
        *,
        give_up: Callable[[Record], bool] | None = None,
    ) -> Record:
        """Remove and return the first unread record that matches ``predicate``, leaving the
        others unread (``wait_for`` consumes them): a client's answers and its messages
        interleave, and waiting for one kind must lose none of the other.

        Raises:
            LogWaitError: no match within ``timeout_s``, the output ended, or an unread record
                that ``give_up`` accepts comes before the first match.
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for index, record in enumerate(self._records):
                    if predicate(record):
                        del self._records[index]
                        return record
                    if give_up is not None and give_up(record):
                        raise LogWaitError(f"{record} while waiting for {what}")
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    why = "output ended before" if self.eof else f"within {timeout_s:g} s, no"
                    raise LogWaitError(f"{why} {what}: {self.tail_text()}")
                self._cond.wait(left)

    def tail_text(self, n: int = 5) -> str:
        """The last ``n`` lines, joined with `` | ``."""
        with self._cond:
            return " | ".join(list(self.tail)[-n:])


class BrokerProcess:
    """A broker child process this code started: its ports and its (JSON) log lines.

    Attributes:
        name: ``mqttd`` or ``mosquitto``.
        proc: the ``subprocess.Popen`` object.
        log: its stderr, line by line (``LogLines``).
        listeners: the ``listener_started`` records (mqttd only).
        ports: transport → port (``{"tcp": 40123, "ws": 40124}``).
        host: the first listener's address.
    """

    def __init__(
        self, name: str, proc: subprocess.Popen[bytes], ports: dict[str, int] | None = None
    ) -> None:
        assert proc.stderr is not None
        self.name = name
        self.proc = proc
        self.log = LogLines(proc.stderr)
        self.listeners: list[Record] = []
        self.ports: dict[str, int] = dict(ports or {})
        self.host = "127.0.0.1"

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    def count(self, level: str) -> int:
        """How many log records so far had this ``level`` (``"error"``, ``"warning"``)."""
        return self.log.levels[level]

    def wait_for(
        self, predicate: Callable[[Record], bool], what: str, timeout_s: float = START_TIMEOUT_S
    ) -> Record:
        """The next log record matching ``predicate`` (see ``LogLines.wait_for``)."""
        return self.log.wait_for(predicate, what, timeout_s)

    def _wait_ready(self, ready: Callable[[Record], bool], count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        found: list[Record] = []
        try:
            while len(found) < count:
                left = max(0.0, deadline - time.monotonic())
                found.append(self.log.wait_for(ready, "readiness", left))
        except LogWaitError:
            self.stop(timeout_s=5.0)
            raise BrokerStartError(
                f"{self.name} did not start (exit {self.proc.returncode}): {self.log.tail_text()}"
            ) from None
        if any(is_listener(r) for r in found):
            self.listeners = found
            self.ports = ports_of(found)
            self.host = str(found[0].get("host", self.host))

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (a graceful shutdown), then SIGKILL after ``timeout_s``; returns the exit
        status (None if even SIGKILL did not end it within 10 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    return None
        self.log.thread.join(10)
        if self.proc.stderr is not None and not self.log.thread.is_alive():
            self.proc.stderr.close()
        return self.proc.returncode

    def __enter__(self) -> BrokerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_mqttd(
    config: Path,
    *extra_args: str | Path,
    listeners: int | None = None,
    cwd: Path | None = None,
    timeout_s: float = START_TIMEOUT_S,
    launcher: Sequence[str] = ("-m", "mqttd"),
) -> BrokerProcess:
    """Run ``python -m mqttd --config CONFIG --log-format json EXTRA_ARGS`` and wait until every
    listener has logged ``listener_started``.

    Args:
        config: the TOML file (use ``port = 0``: the bound ports come from the log).
        extra_args: more command-line arguments.
        listeners: how many ``listener_started`` lines to wait for (default: one per
            ``[[listeners]]`` table of ``config``).
        cwd: the child's working directory.
        timeout_s: the bound on the wait.
        launcher: the interpreter arguments that run mqttd's command line (``-c CODE`` runs
            it after code of the caller's, a benchmark's set-up for instance).

    Returns:
        The running broker (use it as a context manager, or call ``stop()``).

    Raises:
        BrokerStartError: it exited or did not report every listener within ``timeout_s``.
    """
    proc = subprocess.Popen(
        [sys.executable, *launcher, "--config", str(config), "--log-format", "json"]
        + [str(a) for a in extra_args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=mqttd_env(),
    )
    broker = BrokerProcess("mqttd", proc)
    broker._wait_ready(is_listener, listeners or expected_listeners(config), timeout_s)
    return broker


def start_mosquitto(
    conf_text: str,
    workdir: Path,
    ports: dict[str, int],
    *,
    timeout_s: float = START_TIMEOUT_S,
) -> BrokerProcess:
    """Run ``mosquitto -c`` with ``conf_text`` (its listeners on the given ``ports``, from
    ``free_port()``) plus logging to stderr, and wait for its "running" line.

    Raises:
        BrokerStartError: it exited or did not report readiness within ``timeout_s``.
    """
    conf = workdir / f"mosquitto-{min(ports.values(), default=0)}.conf"
    levels = ("error", "warning", "notice", "information")
    logging_lines = ["log_dest stderr", *(f"log_type {level}" for level in levels)]
    conf.write_text(conf_text.rstrip("\n") + "\n" + "\n".join(logging_lines) + "\n")
    proc = subprocess.Popen(
        [MOSQUITTO, "-c", str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=workdir,
    )
    broker = BrokerProcess("mosquitto", proc, ports)

    def ready(record: Record) -> bool:
        return MOSQUITTO_READY in str(record.get("line", ""))

    broker._wait_ready(ready, 1, timeout_s)
    return broker


# ---------------------------------------------------------------------------------------------
# Trio flavour
# ---------------------------------------------------------------------------------------------


class TrioBrokerProcess:
    """A ``python -m mqttd`` child under trio; its stderr is read line by line on demand.

    Attributes:
        proc: the ``trio.Process``.
        lines: every stderr line read so far.
        listeners, ports: as for ``BrokerProcess``, once ``wait_listening`` has run.
    """

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.listeners: list[Record] = []
        self.ports: dict[str, int] = {}
        self._buffer = b""
        self._eof = False
        self._reading = trio.Lock()  # next_line's callers (drain, wait_for_record) take turns

    async def next_line(self) -> str | None:
        """The next stderr line, or None at EOF (the caller bounds the wait)."""
        async with self._reading:
            return await self._read_line()

    async def _read_line(self) -> str | None:
        assert self.proc.stderr is not None
        while b"\n" not in self._buffer:
            chunk = b"" if self._eof else await self.proc.stderr.receive_some(65536)
            if not chunk:
                self._eof = True
                if not self._buffer:
                    return None
                self._buffer += b"\n"
                break
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\n")
        line = raw.decode(errors="replace")
        self.lines.append(line)
        return line

    def records(self, event: str | None = None, start: int = 0) -> list[Record]:
        """The records of the lines read so far, from line ``start`` on; only those whose
        ``event`` is ``event`` unless it is None."""
        records = [parse_line(line) for line in self.lines[start:]]
        return [r for r in records if event is None or r.get("event") == event]

    async def wait_for_record(
        self,
        predicate: Callable[[Record], bool],
        what: str,
        timeout_s: float = START_TIMEOUT_S,
        *,
        start: int = 0,
    ) -> tuple[int, Record]:
        """The first line from index ``start`` on (lines already read included) whose record
        matches ``predicate``, reading more lines as needed (``drain`` may run meanwhile).
        Returns its index in ``lines`` and the record.

        Raises:
            LogWaitError: the output ended first.
            trio.TooSlowError: nothing matched within ``timeout_s``.
        """
        index = start
        with trio.fail_after(timeout_s):
            while True:
                while index < len(self.lines):
                    record = parse_line(self.lines[index])
                    if predicate(record):
                        return index, record
                    index += 1
                if self._eof and not self._buffer:
                    raise LogWaitError(f"mqttd exited before logging {what}: {self.lines[-5:]}")
                async with self._reading:
                    if index == len(self.lines):  # drain read nothing while we waited our turn
                        await self._read_line()

    async def wait_for(
        self, predicate: Callable[[Record], bool], what: str, timeout_s: float = START_TIMEOUT_S
    ) -> Record:
        """Read lines until a record matches ``predicate``; return it.

        Raises:
            LogWaitError: the output ended first.
            trio.TooSlowError: nothing matched within ``timeout_s``.
        """
        with trio.fail_after(timeout_s):
            while True:
                line = await self.next_line()
                if line is None:
                    raise LogWaitError(f"mqttd exited before logging {what}: {self.lines}")
                record = parse_line(line)
                if predicate(record):
                    return record

    async def wait_for_event(self, event: str, timeout_s: float = START_TIMEOUT_S) -> Record:
        """The next JSON log record whose ``event`` is ``event``."""
        return await self.wait_for(lambda r: r.get("event") == event, event, timeout_s)

    async def wait_listening(self, count: int, timeout_s: float = START_TIMEOUT_S) -> None:
        """Wait for ``count`` ``listener_started`` records; fills ``listeners`` and ``ports``."""
        with trio.fail_after(timeout_s):
            while len(self.listeners) < count:
                self.listeners.append(await self.wait_for(is_listener, LISTENER_STARTED))
        self.ports = ports_of(self.listeners)

    async def drain(self) -> None:
        """Read stderr to the end (run it as a task so the pipe never fills up)."""
        while await self.next_line() is not None:
            pass

    async def wait_exit(self, timeout_s: float) -> int:
        """Wait for the process to exit and for its stderr to be read to the end."""
        with trio.fail_after(timeout_s):
            await self.drain()
            return await self.proc.wait()

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit status."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(timeout_s):
                return await self.proc.wait()
            self.proc.kill()
        with trio.fail_after(10):
            return await self.proc.wait()

    async def aclose(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the process (see ``stop``) and close its stderr."""
        try:
            await self.stop(timeout_s)
        finally:
            if self.proc.stderr is not None:
                await self.proc.stderr.aclose()


async def spawn_mqttd(
    *args: str | Path, new_session: bool = False, cwd: Path | None = None
) -> TrioBrokerProcess:
    """Start ``python -m mqttd ARGS`` (any arguments, nothing waited for); stderr is a pipe.

    ``new_session`` puts it in its own session, so a Ctrl-C at the terminal does not reach it.
    """
    proc = await trio.lowlevel.open_process(
        mqttd_argv(*args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=new_session,
        cwd=cwd,
        env=mqttd_env(),
    )
    return TrioBrokerProcess(proc)


@asynccontextmanager
async def run_mqttd(
    config: Path,
    *extra_args: str | Path,
    listeners: int | None = None,
    timeout_s: float = START_TIMEOUT_S,
) -> AsyncIterator[TrioBrokerProcess]:
    """``start_mqttd`` for trio: yields the broker once every listener has reported; its stderr
    is drained in the background; on exit it is stopped (SIGTERM, then SIGKILL)."""
    broker = await spawn_mqttd("--config", config, "--log-format", "json", *extra_args)
    try:
        await broker.wait_listening(listeners or expected_listeners(config), timeout_s)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(broker.drain)
            try:
                yield broker
            finally:
                with trio.CancelScope(shield=True):
                    await broker.stop()
    finally:
        with trio.CancelScope(shield=True):
            await broker.aclose()
