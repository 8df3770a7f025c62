"""bench_store's MQTT client: persistent-session connections over blocking sockets, opened and
subscribed in bulk (every CONNECT sent before the first CONNACK is awaited: with "fsync" one
commit then carries many sessions), and its payloads (sequence number + send time)."""

from __future__ import annotations

import contextlib
import socket
import struct
import time

from conformance import wire
from conformance.wire import CONNACK, SUBACK, WireError

from ..load import MAX_PACKET_SIZE, connect_packet

#: Payload head: sequence number, send time (CLOCK_MONOTONIC, ns).
PAYLOAD_HEAD = struct.Struct(">Qq")


def make_payload(seq: int, t_ns: int, size: int) -> bytes:
    """A benchmark payload: sequence number and send time, zero-padded to ``size`` bytes."""
    return PAYLOAD_HEAD.pack(seq, t_ns) + bytes(max(0, size - PAYLOAD_HEAD.size))


def read_payload(payload: bytes) -> tuple[int, int]:
    """(sequence number, send time in ns) from a benchmark payload."""
    if len(payload) < PAYLOAD_HEAD.size:
        raise WireError(f"payload of {len(payload)} bytes is not from this benchmark")
    seq, t_ns = PAYLOAD_HEAD.unpack_from(payload)
    return seq, t_ns


class Client:
    """One MQTT connection over a blocking socket (with a timeout)."""

    __slots__ = ("backlog", "cid", "reader", "session_present", "sock")

    def __init__(self, sock: socket.socket, cid: str) -> None:
        self.sock = sock
        self.cid = cid
        self.reader = wire.Framer(MAX_PACKET_SIZE)
        self.backlog: list[tuple[int, bytes]] = []  # read while waiting for something else
        self.session_present = False

    @classmethod
    def open(cls, port: int, cid: str, timeout_s: float = 30.0) -> Client:
        """A TCP connection to 127.0.0.1:``port`` (no MQTT yet)."""
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock, cid)

    def send(self, data: bytes) -> None:
        """Send bytes (blocking, bounded by the socket timeout)."""
        self.sock.sendall(data)

    def read(self) -> list[tuple[int, bytes]]:
        """One ``recv``; the packets it completed.

        Raises:
            WireError: the broker closed the connection.
        """
        data = self.sock.recv(65536)
        if not data:
            raise WireError(f"{self.cid}: connection closed by the broker")
        return self.reader.feed(data)

    def expect(self, kind: int, deadline: float) -> bytes:
        """Read until a packet of type ``kind``; return its body. Others go to ``backlog``."""
        while True:
            for i, (first, body) in enumerate(self.backlog):
                if first >> 4 == kind:
                    del self.backlog[i]
                    return body
            if time.monotonic() > deadline:
                raise WireError(f"{self.cid}: no packet of type {kind} in time")
            self.backlog.extend(self.read())

    def wait_closed(self, deadline: float) -> None:
        """Read until the broker closes the connection (after our DISCONNECT)."""
        while time.monotonic() < deadline:
            try:
                self.backlog.extend(self.read())
            except WireError:
                return
            except OSError:
                return
        raise WireError(f"{self.cid}: the broker did not close the connection")

    def close(self) -> None:
        """Close the socket, ignoring errors."""
        with contextlib.suppress(OSError):
            self.sock.close()


def connect_all(
    port: int, client_ids: list[str], clean_session: bool, timeout_s: float = 60.0
) -> list[Client]:
    """Open every connection and send every CONNECT first, then collect the CONNACKs.

    Pipelining matters with "fsync": a persistent session's CONNACK waits for a commit, and
    one commit can carry many sessions.
    """
    deadline = time.monotonic() + timeout_s
    clients = [Client.open(port, cid) for cid in client_ids]
    try:
        for c in clients:
            c.send(connect_packet(c.cid, clean_session))
        for c in clients:
            body = c.expect(CONNACK, deadline)
            if len(body) != 2 or body[1] != 0:
                raise WireError(f"{c.cid}: CONNECT refused: {body.hex()}")
            c.session_present = bool(body[0] & 1)
    except BaseException:
        for c in clients:
            c.close()
        raise
    return clients


def subscribe_all(clients: list[Client], topic_filter: str, timeout_s: float = 60.0) -> None:
    """SUBSCRIBE every client to ``topic_filter`` at QoS 1 and check each SUBACK grants it."""
    deadline = time.monotonic() + timeout_s
    for c in clients:
        c.send(wire.subscribe(1, [(topic_filter, 1)]))
    for c in clients:
        body = c.expect(SUBACK, deadline)
        if body[2:] != b"\x01":
            raise WireError(f"{c.cid}: SUBACK {body.hex()} does not grant QoS 1")


def disconnect_all(clients: list[Client], wait: bool = False, timeout_s: float = 30.0) -> None:
    """Send DISCONNECT on each client; with ``wait``, until the broker has closed each one."""
    deadline = time.monotonic() + timeout_s
    for c in clients:
        with contextlib.suppress(OSError):
            c.send(wire.disconnect())
    try:
        if wait:
            for c in clients:
                c.wait_closed(deadline)
    finally:
        for c in clients:
            c.close()
