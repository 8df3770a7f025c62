"""What the benchmark asks the Redis of an mqttd cluster: ``INFO commandstats`` (calls and
microseconds per command), over a blocking socket with the few lines of RESP it needs.

Redis counts every command a Lua script calls as well as the script itself, so the deltas of
two snapshots say what a measurement cost Redis command by command (``xadd``: one per message
forwarded to another node's inbox, ``exec``: one per pipeline of a node's writer, ...). The
``usec`` Redis reports is the time inside each command only; reading and writing sockets and
the append-only file come on top, which is why the benchmark also reads redis-server's CPU time
from ``/proc``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

#: Bound on one request's round trip (the benchmark asks between measurements only).
TIMEOUT_S = 5.0


class RespError(RuntimeError):
    """Redis replied with an error, or not in RESP."""


def encode_command(*args: str | bytes) -> bytes:
    """A command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def parse_reply(buf: bytes) -> tuple[object, int] | None:
    """The first RESP reply in ``buf`` and the bytes it took; None if it is not complete.

    Raises:
        RespError: an error reply, or bytes that are not RESP.
    """
    return _parse(buf, 0)


def _parse(buf: bytes, pos: int) -> tuple[object, int] | None:
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    kind, line = buf[pos : pos + 1], buf[pos + 1 : end]
    after = end + 2
    if kind == b"+":
        return line.decode(), after
    if kind == b"-":
        raise RespError(line.decode(errors="replace"))
    if kind == b":":
        return int(line), after
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, after
        if len(buf) < after + size + 2:
            return None
        return buf[after : after + size], after + size + 2
    if kind == b"*":
        count = int(line)
        items: list[object] = []
        for _ in range(max(count, 0)):
            parsed = _parse(buf, after)
            if parsed is None:
                return None
            item, after = parsed
            items.append(item)
        return (items if count >= 0 else None), after
    raise RespError(f"not a RESP reply: {buf[pos : pos + 20]!r}")


@dataclass(frozen=True)
class CommandStat:
    """One ``cmdstat_<name>`` line: how often a command ran and its time inside Redis."""

    calls: int
    usec: int


def parse_commandstats(text: str) -> dict[str, CommandStat]:
    """``INFO commandstats`` → command name (lower case, ``config|get`` for subcommands) →
    calls and usec."""
    out: dict[str, CommandStat] = {}
    for line in text.splitlines():
        if not line.startswith("cmdstat_"):
            continue
        name, _, values = line[len("cmdstat_") :].partition(":")
        fields = dict(kv.split("=", 1) for kv in values.split(",") if "=" in kv)
        out[name] = CommandStat(int(fields.get("calls", 0)), int(fields.get("usec", 0)))
    return out


def commandstats_delta(
    before: dict[str, CommandStat], after: dict[str, CommandStat]
) -> dict[str, CommandStat]:
    """What ran between two snapshots (commands that did not run are left out)."""
    out: dict[str, CommandStat] = {}
    for name, stat in after.items():
        old = before.get(name, CommandStat(0, 0))
        calls, usec = stat.calls - old.calls, stat.usec - old.usec
        if calls > 0 or usec > 0:
            out[name] = CommandStat(calls, usec)
    return out


class RedisInfo:
    """A Redis to ask, at ``unix:///path`` or ``redis://host:port``; one connection per
    request (the benchmark asks rarely)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _connect(self) -> socket.socket:
        if self.url.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: str | tuple[str, int] = self.url[len("unix://") :]
        else:
            hostport = self.url.split("://", 1)[-1].split("/", 1)[0]
            host, _, port = hostport.rpartition(":")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (host or "127.0.0.1", int(port or 6379))
        sock.settimeout(TIMEOUT_S)
        sock.connect(address)
        return sock

    def command(self, *args: str) -> object:
        """Send one command; its reply.

        Raises:
            RespError: an error reply.
            OSError: Redis cannot be reached.
        """
        with self._connect() as sock:
            sock.sendall(encode_command(*args))
            buf = b""
            while True:
                parsed = parse_reply(buf)
                if parsed is not None:
                    return parsed[0]
                chunk = sock.recv(65536)
                if not chunk:
                    raise RespError("connection closed before a whole reply")
                buf += chunk

    def commandstats(self) -> dict[str, CommandStat]:
        """``INFO commandstats`` now."""
        reply = self.command("INFO", "commandstats")
        if not isinstance(reply, bytes):
            raise RespError(f"unexpected INFO reply {reply!r}")
        return parse_commandstats(reply.decode())
