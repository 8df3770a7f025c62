"""The load generator's connections: benchmark payloads, pre-encoded PUBLISH packets, one
client connection (TCP, WS or WSS over a blocking socket) and the pipelined connector that opens
thousands of them at once.

A payload starts with a 20-byte head (sequence number, publisher index, send time in
CLOCK_MONOTONIC ns) so subscribers can check order, loss and latency; only that head and the
packet id change per message, the rest of each PUBLISH is encoded once.

Clients speak MQTT 3.1.1 (protocol level 4) or MQTT 5 (level 5). An MQTT 5 client sends empty
property sections (Property Length 0) everywhere, so the broker's and the client's defaults
apply (Receive Maximum 65535, no Topic Alias, no Maximum Packet Size); what it reads may carry
reason codes and properties, which ``connack_refused``, ``suback_codes`` and
``publish_payload_offset`` step over.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import selectors
import socket
import ssl
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

from conformance import wire
from conformance.wire import CONNACK, SUBACK, WireError

from .machine import process_tree
from .wsclient import WsFrameReader, ws_check_response, ws_frame, ws_handshake_request

#: Payload head: sequence number, publisher index, send time (CLOCK_MONOTONIC, ns).
PAYLOAD_HEAD = struct.Struct(">QIq")
_PID_HEAD = struct.Struct(">HQIq")
# MQTT 5: Property Length 0 (the pad byte) between the packet id and the payload.
_PID5_HEAD = struct.Struct(">HxQIq")
#: The protocol levels the load generator speaks: MQTT 3.1.1 and MQTT 5.
PROTOCOLS = (4, 5)
#: Keep Alive of every benchmark connection: long enough never to matter during a run.
KEEPALIVE_S = 600
#: Incoming packets larger than this are a wire error (the 1 MB scenario stays far below).
MAX_PACKET_SIZE = 64 * 1024 * 1024
WS_PATH = "/mqtt"


def connect_packet(client_id: str, clean: bool = True, version: int = 4) -> bytes:
    """The CONNECT every benchmark client sends: level ``version`` (4 or 5; MQTT 5 with an
    empty property section), Keep Alive ``KEEPALIVE_S``, no will, no login; a clean session
    (Clean Start) unless ``clean`` is false."""
    return wire.connect(client_id, clean, KEEPALIVE_S, version=version)


def subscribe_packet(topic_filter: str, qos: int, version: int = 4) -> bytes:
    """SUBSCRIBE (packet id 1) to one filter at ``qos``; in MQTT 5 with an empty property
    section and Subscription Options that are the QoS alone (No Local, Retain As Published
    and Retain Handling 0, as in 3.1.1)."""
    return wire.subscribe(1, [(topic_filter, qos)], version=version)


def connack_refused(body: bytes, version: int = 4) -> bool:
    """Whether a CONNACK body refuses the connection: not a success code, or (3.1.1) not the
    two bytes the packet has; an MQTT 5 CONNACK carries its properties after the code."""
    if version == 5:
        return len(body) < 3 or body[1] != 0
    return len(body) != 2 or body[1] != 0


def suback_codes(body: bytes, version: int = 4) -> bytes:
    """The return (reason) codes of a SUBACK body, after its packet id and, in MQTT 5, its
    properties; a code of 0x80 or more refuses that subscription."""
    if version == 5:
        length, off = wire.decode_varint(body, 2)
        return body[off + length :]
    return body[2:]


def publish_payload_offset(first_byte: int, body: bytes, version: int = 4) -> int:
    """Where the payload of a PUBLISH body starts: after the topic, the packet id (QoS 1/2)
    and, in MQTT 5, the properties."""
    off = 2 + ((body[0] << 8) | body[1])
    if first_byte & 0x06:
        off += 2
    if version == 5:
        length, off = wire.decode_varint(body, off)
        off += length
    return off


def make_payload(seq: int, pub_index: int, t_ns: int, size: int) -> bytes:
    """A benchmark payload: the 20-byte head, zero-padded to ``size`` bytes."""
    head = PAYLOAD_HEAD.pack(seq, pub_index, t_ns)
    return head + bytes(max(0, size - len(head)))


class PublishEncoder:
    """Pre-encoded PUBLISH packets for one (topic, QoS, payload size, publisher), of protocol
    level ``version`` (MQTT 5: Property Length 0 after the topic and packet id).

    Only the packet id and the payload head change per message; everything else is built once.
    """

    def __init__(
        self, topic: str, qos: int, payload_size: int, pub_index: int, version: int = 4
    ) -> None:
        if payload_size < PAYLOAD_HEAD.size:
            raise ValueError(f"payload must hold at least {PAYLOAD_HEAD.size} bytes")
        if version not in PROTOCOLS:
            raise ValueError(f"protocol level {version} is not one of {PROTOCOLS}")
        topic_b = wire.string(topic)
        props = b"\x00" if version == 5 else b""
        remaining = len(topic_b) + (2 if qos else 0) + len(props) + payload_size
        self.qos = qos
        self.pub_index = pub_index
        self.version = version
        # QoS 0: the property section sits in the prefix; QoS 1/2: after the packet id, so in
        # the packed head.
        self._prefix = bytes([0x30 | (qos << 1)]) + wire.varint(remaining) + topic_b
        if not qos:
            self._prefix += props
        self._pid_head = _PID5_HEAD if version == 5 else _PID_HEAD
        self._pad = bytes(payload_size - PAYLOAD_HEAD.size)
        self.packet_size = 1 + len(wire.varint(remaining)) + remaining

    def encode(self, seq: int, t_ns: int) -> bytes:
        """The PUBLISH for sequence number ``seq`` (packet id derived from it)."""
        if self.qos:
            head = self._pid_head.pack(packet_id_for(seq), seq, self.pub_index, t_ns)
        else:
            head = PAYLOAD_HEAD.pack(seq, self.pub_index, t_ns)
        return self._prefix + head + self._pad

    def batch(self, first_seq: int, count: int, t_ns: int) -> bytes:
        """``count`` consecutive PUBLISH packets starting at ``first_seq``, as one buffer."""
        prefix, pad, idx = self._prefix, self._pad, self.pub_index
        if self.qos:
            pack = self._pid_head.pack
            parts = [
                prefix + pack(s % 65535 + 1, s, idx, t_ns) + pad
                for s in range(first_seq, first_seq + count)
            ]
        else:
            pack = PAYLOAD_HEAD.pack
            parts = [prefix + pack(s, idx, t_ns) + pad for s in range(first_seq, first_seq + count)]
        return b"".join(parts)


def packet_id_for(seq: int) -> int:
    """The packet id a publisher uses for sequence number ``seq`` (1 … 65535)."""
    return seq % 65535 + 1


@dataclass
class Target:
    """Where a broker listens, and the processes it is made of.

    ``pid`` is the process started (for ``mqttd --workers N``, the supervisor); the processes
    it started in turn (workers, a private redis-server) count as the broker too, and so do
    ``extra_pids`` (a redis-server the benchmark started for it). ``redis_url`` is the Redis
    of a cluster, asked for its command statistics.
    """

    name: str
    host: str
    ports: dict[str, int]  # transport ("tcp", "ws", "wss") → port
    pid: int | None = None
    cafile: str | None = None
    ws_path: str = WS_PATH
    extra_pids: tuple[int, ...] = ()
    redis_url: str | None = None
    workers: int = 0  # >1: ``pid`` is the supervisor of that many workers

    def processes(self) -> list[int]:
        """Every process of the broker now: ``pid``, its descendants, ``extra_pids``."""
        tree = [] if self.pid is None else process_tree(self.pid)
        return tree + [p for p in self.extra_pids if p not in tree]


class Conn:
    """One client connection: a socket, its transport framing, its MQTT packet reader and
    the protocol level it speaks (4 or 5)."""

    __slots__ = ("buf_hs", "cid", "key", "reader", "sock", "state", "version", "ws", "wsr")

    def __init__(self, sock: socket.socket, ws: bool, cid: str = "", version: int = 4) -> None:
        self.sock = sock
        self.ws = ws
        self.cid = cid
        self.version = version
        self.reader = wire.Framer(MAX_PACKET_SIZE)
        self.wsr = WsFrameReader() if ws else None
        self.state = 0
        self.buf_hs = b""
        self.key = ""

    def wrap(self, data: bytes) -> bytes:
        """Frame MQTT bytes for the wire (one WebSocket frame, or as is over TCP)."""
        return ws_frame(data) if self.ws else data

    def send(self, data: bytes) -> None:
        """Send MQTT bytes (blocking)."""
        self.sock.sendall(ws_frame(data) if self.ws else data)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Feed wire bytes; return complete MQTT packets."""
        wsr = self.wsr
        if wsr is not None:
            data = wsr.feed(data)
            if wsr.replies:
                for r in wsr.replies:
                    self.sock.sendall(r)
                wsr.replies.clear()
            if wsr.closed:
                raise WireError("server closed the websocket")
        return self.reader.feed(data)

    def close(self) -> None:
        """Close the socket, ignoring errors."""
        with contextlib.suppress(OSError):
            self.sock.close()


def _client_ssl_context(target: Target) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=target.cafile)
    if target.cafile is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def recv_some(sock: socket.socket) -> bytes:
    # Not 1 MiB: CPython allocates the full size per call (an mmap at that size), then shrinks.
    data = sock.recv(65536)
    if not data:
        raise WireError("connection closed by broker")
    return data


def open_conn(
    target: Target, transport: str, client_id: str, timeout_s: float = 10.0, version: int = 4
) -> Conn:
    """Connect (TCP, WS or WSS), send CONNECT of protocol level ``version`` and wait for a
    successful CONNACK."""
    deadline = time.monotonic() + timeout_s
    sock = socket.create_connection((target.host, target.ports[transport]), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if transport == "wss":
        sock = _client_ssl_context(target).wrap_socket(sock, server_hostname="localhost")
    conn = Conn(sock, transport in ("ws", "wss"), client_id, version)
    early = b""
    if conn.ws:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(ws_handshake_request(target.host, target.ports[transport], WS_PATH, key))
        head = b""
        while b"\r\n\r\n" not in head:
            if time.monotonic() > deadline or len(head) > 65536:
                raise WireError("websocket handshake timed out")
            head += recv_some(sock)
        head, early = head.split(b"\r\n\r\n", 1)
        ws_check_response(head, key)
    conn.send(connect_packet(client_id, version=version))
    packets = conn.feed(early) if early else []
    while not packets:
        if time.monotonic() > deadline:
            raise WireError("no CONNACK")
        packets = conn.feed(recv_some(sock))
    b0, body = packets[0]
    if b0 >> 4 != CONNACK or connack_refused(body, version):
        raise WireError(f"CONNECT refused: {b0:#x} {body.hex()}")
    return conn


def subscribe(conn: Conn, topic_filter: str, qos: int, timeout_s: float = 10.0) -> None:
    """SUBSCRIBE and wait for a SUBACK granting it."""
    conn.send(subscribe_packet(topic_filter, qos, conn.version))
    deadline = time.monotonic() + timeout_s
    while True:
        if time.monotonic() > deadline:
            raise WireError("no SUBACK")
        for b0, body in conn.feed(recv_some(conn.sock)):
            if b0 >> 4 == SUBACK:
                if suback_codes(body, conn.version)[:1] >= b"\x80":
                    raise WireError("subscription refused")
                return


# States of the pipelined connector.
_S_TCP, _S_HS, _S_CONNACK, _S_SUBACK, _S_DONE = range(5)


def connect_many(
    target: Target,
    transport: str,
    client_ids: list[str],
    topic_filter: str | Sequence[str] | None = None,
    qos: int = 0,
    concurrency: int = 64,  # below Mosquitto's listen backlog of 100: no SYN retransmits
    timeout_s: float = 60.0,
    version: int = 4,
) -> tuple[list[Conn], float]:
    """Open many connections at once (non-blocking, at most ``concurrency`` in progress).

    Each goes TCP connect → (WebSocket upgrade) → CONNECT/CONNACK → (SUBSCRIBE/SUBACK), in
    protocol level ``version``: ``topic_filter`` is one filter for all, or one per client id
    (in the same order).

    Returns:
        The connections (now blocking, with a timeout), in the order of ``client_ids``, and
        the seconds it took.
    """
    if transport not in ("tcp", "ws"):
        raise ValueError(f"connect_many supports tcp and ws, not {transport}")
    ws = transport == "ws"
    port = target.ports[transport]
    if topic_filter is None or isinstance(topic_filter, str):
        filters: dict[str, str] | None = (
            None if topic_filter is None else dict.fromkeys(client_ids, topic_filter)
        )
    else:
        if len(topic_filter) != len(client_ids):
            raise ValueError("one topic filter per client id")
        filters = dict(zip(client_ids, topic_filter, strict=True))
    sel = selectors.DefaultSelector()
    pending = list(reversed(client_ids))
    done: list[Conn] = []
    in_progress = 0
    t0 = time.monotonic()
    deadline = t0 + timeout_s

    def start_one() -> None:
        nonlocal in_progress
        cid = pending.pop()
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        err = s.connect_ex((target.host, port))
        if err not in (0, errno.EINPROGRESS):
            s.close()
            raise OSError(err, os.strerror(err))
        c = Conn(s, ws, cid, version)
        c.state = _S_TCP
        sel.register(s, selectors.EVENT_WRITE, c)
        in_progress += 1

    def send_small(c: Conn, data: bytes) -> None:
        if c.sock.send(data) != len(data):
            raise WireError("short send on a fresh connection")

    try:
        while pending or in_progress:
            while pending and in_progress < concurrency:
                start_one()
            if time.monotonic() > deadline:
                raise WireError(f"connect_many timed out with {len(done)} connected")
            for key, _ in sel.select(0.5):
                c: Conn = key.data
                s = c.sock
                if c.state == _S_TCP:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, os.strerror(err))
                    sel.modify(s, selectors.EVENT_READ, c)
                    if ws:
                        c.key = base64.b64encode(os.urandom(16)).decode()
                        send_small(c, ws_handshake_request(target.host, port, WS_PATH, c.key))
                        c.state = _S_HS
                    else:
                        send_small(c, connect_packet(c.cid, version=version))
                        c.state = _S_CONNACK
                    continue
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    continue
                if not data:
                    raise WireError(f"broker closed {c.cid} during setup")
                if c.state == _S_HS:
                    c.buf_hs += data
                    if b"\r\n\r\n" not in c.buf_hs:
                        continue
                    head, data = c.buf_hs.split(b"\r\n\r\n", 1)
                    ws_check_response(head, c.key)
                    c.buf_hs = b""
                    send_small(c, ws_frame(connect_packet(c.cid, version=version)))
                    c.state = _S_CONNACK
                    if not data:
                        continue
                for b0, body in c.feed(data):
                    kind = b0 >> 4
                    if c.state == _S_CONNACK and kind == CONNACK:
                        if connack_refused(body, version):
                            raise WireError(f"CONNECT refused for {c.cid}: {body.hex()}")
                        if filters is None:
                            c.state = _S_DONE
                        else:
                            sub = subscribe_packet(filters[c.cid], qos, version)
                            send_small(c, c.wrap(sub))
                            c.state = _S_SUBACK
                    elif c.state == _S_SUBACK and kind == SUBACK:
                        if suback_codes(body, version)[:1] >= b"\x80":
                            raise WireError("subscription refused")
                        c.state = _S_DONE
                if c.state == _S_DONE:
                    sel.unregister(s)
                    s.setblocking(True)
                    s.settimeout(30.0)
                    in_progress -= 1
                    done.append(c)
        elapsed = time.monotonic() - t0
        order = {cid: k for k, cid in enumerate(client_ids)}
        done.sort(key=lambda c: order[c.cid])  # in the order of client_ids, not of CONNACKs
        return done, elapsed
    except BaseException:
        for key in list(sel.get_map().values()):
            key.data.close()
        for c in done:
            c.close()
        raise
    finally:
        sel.close()
