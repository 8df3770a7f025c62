#!/usr/bin/env python3
"""Benchmark an MQTT broker (mqttd, Mosquitto, or any running broker) with its own load generator.

Theory of operation
-------------------
The load generator speaks MQTT 3.1.1 itself; it never imports mqttd. PUBLISH packets are built
from a pre-encoded fixed header + topic, with only the packet id and a 20-byte payload head
(sequence number, publisher index, send time) packed per message, and are written in big batches
with one ``sendall``. Incoming bytes go through a minimal incremental splitter that only looks
at what the benchmark needs (PUBLISH topic/packet id/payload head, acks). WebSocket clients do the
HTTP upgrade by hand and wrap each batch in one masked binary frame.

Publishers and subscribers run in separate processes (``multiprocessing``, fork) using plain
blocking sockets plus ``selectors``; shared counters (published per publisher, delivered per
subscriber process) implement an end-to-end window so no broker is pushed into dropping
messages, and QoS 1/2 publishers keep at most ``window`` messages unacknowledged.

Correctness is checked while measuring: every subscriber records which sequence numbers it saw
from each publisher, so the run reports losses, duplicates and out-of-order deliveries. Broker
CPU % comes from ``/proc/<pid>/stat`` (utime + stime) deltas, memory from ``VmRSS``.

Everything is bounded: each phase has a deadline, every wait has a timeout, workers exit by
themselves, brokers listen on loopback only and are stopped at the end.

Usage: ``python scripts/bench.py --against mosquitto [--quick]`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import errno
import hashlib
import json
import multiprocessing as mp
import os
import platform
import resource
import selectors
import shutil
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------------------------
# Wire codec: just enough MQTT 3.1.1 and RFC 6455 for a client that measures.
# --------------------------------------------------------------------------------------------

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14

#: Payload head: sequence number, publisher index, send time (CLOCK_MONOTONIC, ns).
PAYLOAD_HEAD = struct.Struct(">QIq")
_PID_HEAD = struct.Struct(">HQIq")
_U16 = struct.Struct(">H")
MAX_REMAINING_LENGTH = 268_435_455


class WireError(Exception):
    """The peer sent bytes this client cannot make sense of."""


def encode_varint(n: int) -> bytes:
    """Encode an MQTT Remaining Length (0 … 268,435,455)."""
    if not 0 <= n <= MAX_REMAINING_LENGTH:
        raise ValueError(f"remaining length out of range: {n}")
    out = bytearray()
    while True:
        digit, n = n % 128, n // 128
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + encode_varint(len(body)) + body


def _mqtt_str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return _U16.pack(len(b)) + b


def encode_connect(client_id: str, keepalive_s: int = 600, clean_session: bool = True) -> bytes:
    """CONNECT, protocol level 4, no will, no credentials."""
    flags = 0x02 if clean_session else 0x00
    body = _mqtt_str("MQTT") + bytes([4, flags]) + _U16.pack(keepalive_s) + _mqtt_str(client_id)
    return _packet(0x10, body)


def encode_subscribe(packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    """SUBSCRIBE with one or more (filter, requested QoS) pairs."""
    body = _U16.pack(packet_id) + b"".join(_mqtt_str(f) + bytes([q]) for f, q in filters)
    return _packet(0x82, body)


def encode_publish(
    topic: str,
    payload: bytes,
    qos: int = 0,
    packet_id: int = 0,
    retain: bool = False,
    dup: bool = False,
) -> bytes:
    """One PUBLISH packet."""
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    pid = _U16.pack(packet_id) if qos else b""
    return _packet(first, _mqtt_str(topic) + pid + payload)


_ACK_FIRST = {PUBACK: 0x40, PUBREC: 0x50, PUBREL: 0x62, PUBCOMP: 0x70}


def encode_ack(kind: int, packet_id: int) -> bytes:
    """PUBACK / PUBREC / PUBREL / PUBCOMP for ``packet_id``."""
    return bytes([_ACK_FIRST[kind], 2]) + _U16.pack(packet_id)


DISCONNECT_BYTES = b"\xe0\x00"


def make_payload(seq: int, pub_index: int, t_ns: int, size: int) -> bytes:
    """A benchmark payload: the 20-byte head, zero-padded to ``size`` bytes."""
    head = PAYLOAD_HEAD.pack(seq, pub_index, t_ns)
    return head + bytes(max(0, size - len(head)))


class PublishEncoder:
    """Pre-encoded PUBLISH packets for one (topic, QoS, payload size, publisher).

    Only the packet id and the payload head change per message; everything else is built once.
    """

    def __init__(self, topic: str, qos: int, payload_size: int, pub_index: int) -> None:
        if payload_size < PAYLOAD_HEAD.size:
            raise ValueError(f"payload must hold at least {PAYLOAD_HEAD.size} bytes")
        topic_b = _mqtt_str(topic)
        remaining = len(topic_b) + (2 if qos else 0) + payload_size
        self.qos = qos
        self.pub_index = pub_index
        self._prefix = bytes([0x30 | (qos << 1)]) + encode_varint(remaining) + topic_b
        self._pad = bytes(payload_size - PAYLOAD_HEAD.size)
        self.packet_size = len(self._prefix) + remaining - len(topic_b)

    def encode(self, seq: int, t_ns: int) -> bytes:
        """The PUBLISH for sequence number ``seq`` (packet id derived from it)."""
        if self.qos:
            head = _PID_HEAD.pack(packet_id_for(seq), seq, self.pub_index, t_ns)
        else:
            head = PAYLOAD_HEAD.pack(seq, self.pub_index, t_ns)
        return self._prefix + head + self._pad

    def batch(self, first_seq: int, count: int, t_ns: int) -> bytes:
        """``count`` consecutive PUBLISH packets starting at ``first_seq``, as one buffer."""
        prefix, pad, idx = self._prefix, self._pad, self.pub_index
        if self.qos:
            pack = _PID_HEAD.pack
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


class PacketReader:
    """Incremental MQTT framer: ``feed(data)`` returns complete packets as (first byte, body)."""

    def __init__(self, max_packet_size: int = 64 * 1024 * 1024) -> None:
        self._buf = bytearray()
        self._max = max_packet_size

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Buffer ``data``; return every complete packet now available, in order."""
        buf = self._buf
        buf += data
        n = len(buf)
        pos = 0
        out: list[tuple[int, bytes]] = []
        while n - pos >= 2:
            remaining = buf[pos + 1]
            if remaining < 0x80:  # fast path: one-byte Remaining Length
                end = pos + 2 + remaining
                if end > n:
                    break
                out.append((buf[pos], bytes(buf[pos + 2 : end])))
                pos = end
                continue
            i = pos + 1
            remaining = 0
            shift = 0
            while True:
                if i >= n:
                    remaining = -1
                    break
                digit = buf[i]
                i += 1
                remaining |= (digit & 0x7F) << shift
                if digit < 0x80:
                    break
                shift += 7
                if shift > 21:
                    raise WireError("remaining length longer than 4 bytes")
            if remaining < 0:
                break
            if remaining > self._max:
                raise WireError(f"packet of {remaining} bytes exceeds the limit")
            end = i + remaining
            if end > n:
                break
            out.append((buf[pos], bytes(buf[i:end])))
            pos = end
        if pos:
            del buf[:pos]
        return out

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a packet."""
        return len(self._buf)


def parse_publish(first_byte: int, body: bytes) -> tuple[str, int, int, bytes]:
    """Split a PUBLISH body into (topic, QoS, packet id, payload)."""
    if first_byte >> 4 != PUBLISH:
        raise WireError(f"not a PUBLISH: 0x{first_byte:02x}")
    qos = (first_byte >> 1) & 3
    if qos == 3 or len(body) < 2:
        raise WireError("malformed PUBLISH")
    tlen = (body[0] << 8) | body[1]
    off = 2 + tlen
    if off + (2 if qos else 0) > len(body):
        raise WireError("PUBLISH shorter than its topic")
    topic = body[2:off].decode()
    pid = 0
    if qos:
        pid = (body[off] << 8) | body[off + 1]
        off += 2
    return topic, qos, pid, body[off:]


def parse_ack(body: bytes) -> int:
    """Packet id of a PUBACK/PUBREC/PUBREL/PUBCOMP/SUBACK/UNSUBACK body."""
    if len(body) < 2:
        raise WireError("ack too short")
    return (body[0] << 8) | body[1]


# --- WebSocket (client side) ----------------------------------------------------------------

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WS_BINARY, WS_CLOSE, WS_PING, WS_PONG = 0x2, 0x8, 0x9, 0xA


def ws_accept_value(key: str) -> str:
    """The Sec-WebSocket-Accept a server must answer for ``key``."""
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


def ws_handshake_request(host: str, port: int, path: str, key: str) -> bytes:
    """An HTTP/1.1 upgrade request offering the ``mqtt`` subprotocol."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: mqtt\r\n\r\n"
    ).encode()


def ws_check_response(head: bytes, key: str) -> None:
    """Raise ``WireError`` unless ``head`` (up to the blank line) accepts the upgrade."""
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.1 101"):
        raise WireError(f"websocket upgrade refused: {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if headers.get("sec-websocket-accept") != ws_accept_value(key):
        raise WireError("bad Sec-WebSocket-Accept")


def ws_mask(data: bytes, key: bytes) -> bytes:
    """XOR ``data`` with the 4-byte masking key (done as one big-int operation, not per byte)."""
    n = len(data)
    if not n:
        return b""
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(k, "big")).to_bytes(n, "big")


def ws_frame(payload: bytes, opcode: int = WS_BINARY, mask_key: bytes | None = None) -> bytes:
    """One final frame; masked (as a client must) unless ``mask_key`` is ``b""``."""
    n = len(payload)
    if mask_key is None:
        mask_key = os.urandom(4)
    mbit = 0x80 if mask_key else 0
    if n < 126:
        head = bytes([0x80 | opcode, mbit | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, mbit | 126]) + _U16.pack(n)
    else:
        head = bytes([0x80 | opcode, mbit | 127]) + struct.pack(">Q", n)
    if mask_key:
        return head + mask_key + ws_mask(payload, mask_key)
    return head + payload


class WsFrameReader:
    """Incremental WebSocket frame parser: returns the data bytes; queues pongs; notes CLOSE."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.closed = False
        self.replies: list[bytes] = []  # control frames to send back (pongs)

    def feed(self, data: bytes) -> bytes:
        """Buffer ``data``; return the concatenated payload of every complete data frame."""
        buf = self._buf
        buf += data
        n = len(buf)
        pos = 0
        out: list[bytes] = []
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            opcode = b0 & 0x0F
            length = b1 & 0x7F
            h = pos + 2
            if length == 126:
                if n - h < 2:
                    break
                length = (buf[h] << 8) | buf[h + 1]
                h += 2
            elif length == 127:
                if n - h < 8:
                    break
                length = int.from_bytes(buf[h : h + 8], "big")
                h += 8
            key = b""
            if b1 & 0x80:
                if n - h < 4:
                    break
                key = bytes(buf[h : h + 4])
                h += 4
            if n - h < length:
                break
            payload = bytes(buf[h : h + length])
            if key:
                payload = ws_mask(payload, key)
            pos = h + length
            if opcode in (0x0, WS_BINARY):
                out.append(payload)
            elif opcode == WS_PING:
                self.replies.append(ws_frame(payload, WS_PONG))
            elif opcode == WS_CLOSE:
                self.closed = True
            elif opcode != WS_PONG:
                raise WireError(f"unexpected websocket opcode {opcode}")
        if pos:
            del buf[:pos]
        return b"".join(out)


# --------------------------------------------------------------------------------------------
# Connections (blocking sockets + selectors)
# --------------------------------------------------------------------------------------------


@dataclass
class Target:
    """Where a broker listens."""

    name: str
    host: str
    ports: dict[str, int]  # transport ("tcp", "ws", "wss") → port
    pid: int | None = None
    cafile: str | None = None
    ws_path: str = "/mqtt"


class Conn:
    """One client connection: a socket, its transport framing and its MQTT packet reader."""

    __slots__ = ("buf_hs", "cid", "key", "reader", "sock", "state", "ws", "wsr")

    def __init__(self, sock: socket.socket, ws: bool, cid: str = "") -> None:
        self.sock = sock
        self.ws = ws
        self.cid = cid
        self.reader = PacketReader()
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


def _recv_some(sock: socket.socket) -> bytes:
    # Not 1 MiB: CPython allocates the full size per call (an mmap at that size), then shrinks.
    data = sock.recv(65536)
    if not data:
        raise WireError("connection closed by broker")
    return data


def open_conn(target: Target, transport: str, client_id: str, timeout_s: float = 10.0) -> Conn:
    """Connect (TCP, WS or WSS), send CONNECT and wait for a successful CONNACK."""
    deadline = time.monotonic() + timeout_s
    sock = socket.create_connection((target.host, target.ports[transport]), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if transport == "wss":
        sock = _client_ssl_context(target).wrap_socket(sock, server_hostname="localhost")
    conn = Conn(sock, transport in ("ws", "wss"), client_id)
    early = b""
    if conn.ws:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(ws_handshake_request(target.host, target.ports[transport], "/mqtt", key))
        head = b""
        while b"\r\n\r\n" not in head:
            if time.monotonic() > deadline or len(head) > 65536:
                raise WireError("websocket handshake timed out")
            head += _recv_some(sock)
        head, early = head.split(b"\r\n\r\n", 1)
        ws_check_response(head, key)
    conn.send(encode_connect(client_id))
    packets = conn.feed(early) if early else []
    while not packets:
        if time.monotonic() > deadline:
            raise WireError("no CONNACK")
        packets = conn.feed(_recv_some(sock))
    b0, body = packets[0]
    if b0 >> 4 != CONNACK or len(body) != 2 or body[1] != 0:
        raise WireError(f"CONNECT refused: {b0:#x} {body.hex()}")
    return conn


def subscribe(conn: Conn, topic_filter: str, qos: int, timeout_s: float = 10.0) -> None:
    """SUBSCRIBE and wait for a SUBACK granting it."""
    conn.send(encode_subscribe(1, [(topic_filter, qos)]))
    deadline = time.monotonic() + timeout_s
    while True:
        if time.monotonic() > deadline:
            raise WireError("no SUBACK")
        for b0, body in conn.feed(_recv_some(conn.sock)):
            if b0 >> 4 == SUBACK:
                if body[2:3] == b"\x80":
                    raise WireError("subscription refused")
                return


# States of the pipelined connector.
_S_TCP, _S_HS, _S_CONNACK, _S_SUBACK, _S_DONE = range(5)


def connect_many(
    target: Target,
    transport: str,
    client_ids: list[str],
    topic_filter: str | None = None,
    qos: int = 0,
    concurrency: int = 64,  # below Mosquitto's listen backlog of 100: no SYN retransmits
    timeout_s: float = 60.0,
) -> tuple[list[Conn], float]:
    """Open many connections at once (non-blocking, at most ``concurrency`` in progress).

    Each goes TCP connect → (WebSocket upgrade) → CONNECT/CONNACK → (SUBSCRIBE/SUBACK).

    Returns:
        The connections (now blocking, with a timeout) and the seconds it took.
    """
    if transport not in ("tcp", "ws"):
        raise ValueError(f"connect_many supports tcp and ws, not {transport}")
    ws = transport == "ws"
    port = target.ports[transport]
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
        c = Conn(s, ws, cid)
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
                        send_small(c, ws_handshake_request(target.host, port, "/mqtt", c.key))
                        c.state = _S_HS
                    else:
                        send_small(c, encode_connect(c.cid))
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
                    send_small(c, ws_frame(encode_connect(c.cid)))
                    c.state = _S_CONNACK
                    if not data:
                        continue
                for b0, body in c.feed(data):
                    kind = b0 >> 4
                    if c.state == _S_CONNACK and kind == CONNACK:
                        if body[1:2] != b"\x00":
                            raise WireError(f"CONNECT refused for {c.cid}: {body.hex()}")
                        if topic_filter is None:
                            c.state = _S_DONE
                        else:
                            send_small(c, c.wrap(encode_subscribe(1, [(topic_filter, qos)])))
                            c.state = _S_SUBACK
                    elif c.state == _S_SUBACK and kind == SUBACK:
                        if body[2:3] == b"\x80":
                            raise WireError("subscription refused")
                        c.state = _S_DONE
                if c.state == _S_DONE:
                    sel.unregister(s)
                    s.setblocking(True)
                    s.settimeout(30.0)
                    in_progress -= 1
                    done.append(c)
        return done, time.monotonic() - t0
    except BaseException:
        for key in list(sel.get_map().values()):
            key.data.close()
        for c in done:
            c.close()
        raise
    finally:
        sel.close()


# --------------------------------------------------------------------------------------------
# Flow scenarios: N publishers → M subscribers, measured in worker processes.
# --------------------------------------------------------------------------------------------

GO, PUBS_DONE, ABORT = 1, 2, 3


@dataclass
class FlowSpec:
    """What one publish/subscribe measurement does."""

    transport: str
    qos: int = 0
    n_pub: int = 1
    n_sub: int = 1
    pub_procs: int = 1
    sub_procs: int = 1
    shared_topic: bool = True  # all publishers on one topic; else own topics + '+' filter
    window: int = 100  # QoS 1/2: unacknowledged PUBLISH per publisher connection
    e2e_window: int = 5000  # deliveries published but not yet received, across the run
    batch: int = 256
    duration_s: float = 5.0
    rate: float = 0.0  # >0: one publisher paced at this many msg/s (latency scenario)
    payload_size: int = 64
    probes: int = 0  # fan-out: single messages sent after the run, each awaited by all
    record_latency: bool = False
    record_arrival: bool = False
    tag: str = ""


def _now() -> int:
    return time.monotonic_ns()


def _wait_go(ctl: Any, timeout_s: float = 180.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while ctl[0] == 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return ctl[0] != ABORT


def _pub_worker(
    spec: FlowSpec, target: Target, proc: int, indices: list[int], sh: dict[str, Any], q: Any
) -> None:
    try:
        _pub_main(spec, target, proc, indices, sh, q)
    except BaseException as exc:
        q.put(("error", f"publisher process {proc}: {exc!r}", None))


def _topic(spec: FlowSpec, idx: int) -> str:
    base = f"bench/{spec.tag}"
    return f"{base}/all" if spec.shared_topic else f"{base}/{idx}"


def _pub_main(
    spec: FlowSpec, target: Target, proc: int, indices: list[int], sh: dict[str, Any], q: Any
) -> None:
    ids = [f"bp-{spec.tag}-{i}" for i in indices]
    conns, _ = connect_many(target, spec.transport, ids)
    q.put(("ready", "pub", None))
    published, delivered, ctl = sh["published"], sh["delivered"], sh["ctl"]
    encs = [PublishEncoder(_topic(spec, i), spec.qos, spec.payload_size, i) for i in indices]
    seqs = [0] * len(conns)
    inflight: list[set[int]] = [set() for _ in conns]
    completing: list[set[int]] = [set() for _ in conns]  # QoS 2: PUBREL sent, awaiting PUBCOMP
    sel = selectors.DefaultSelector()
    for j, c in enumerate(conns):
        sel.register(c.sock, selectors.EVENT_READ, j)
    stats = {"acks": 0, "unexpected_acks": 0}
    qos, window, n_sub = spec.qos, spec.window, spec.n_sub

    def read_acks(timeout: float) -> None:
        for key, _ in sel.select(timeout):
            j = key.data
            c = conns[j]
            rel = []
            for b0, body in c.feed(_recv_some(c.sock)):
                kind = b0 >> 4
                pid = (body[0] << 8) | body[1]
                if (kind == PUBACK and qos == 1) or (kind == PUBCOMP and qos == 2):
                    s = inflight[j] if qos == 1 else completing[j]
                    if pid in s:
                        s.discard(pid)
                        stats["acks"] += 1
                    else:
                        stats["unexpected_acks"] += 1
                elif kind == PUBREC and qos == 2:
                    if pid in inflight[j]:
                        inflight[j].discard(pid)
                        completing[j].add(pid)
                    rel.append(encode_ack(PUBREL, pid))
                elif kind == PINGRESP:
                    pass
                else:
                    stats["unexpected_acks"] += 1
            if rel:
                c.send(b"".join(rel))

    def outstanding(j: int) -> int:
        return len(inflight[j]) + len(completing[j])

    if not _wait_go(ctl):
        return
    cpu0 = time.process_time()
    t_go = _now()
    end_ns = t_go + int(spec.duration_s * 1e9)
    send_times: list[tuple[int, int, int]] = []  # (pub index, seq, t_ns) for probes
    if spec.rate > 0:
        interval = int(1e9 / spec.rate)
        nxt = t_go
        c, enc, idx = conns[0], encs[0], indices[0]
        while nxt < end_ns:
            now = _now()
            if now < nxt:
                if nxt - now > 300_000:
                    time.sleep((nxt - now - 200_000) / 1e9)
                continue
            if qos == 0 or outstanding(0) < window:
                s = seqs[0]
                if qos:
                    inflight[0].add(packet_id_for(s))
                c.send(enc.encode(s, _now()))
                seqs[0] = s + 1
                published[idx] = s + 1
            nxt += interval
            if qos:
                read_acks(0)
    else:
        batch = spec.batch
        while _now() < end_ns:
            total_pub = sum(published)
            budget = (spec.e2e_window - (total_pub * n_sub - sum(delivered))) // n_sub
            sent = False
            for j, c in enumerate(conns):
                k = min(batch, budget)
                if qos:
                    k = min(k, window - outstanding(j))
                if k <= 0:
                    continue
                s = seqs[j]
                if qos:
                    inflight[j].update(packet_id_for(x) for x in range(s, s + k))
                c.send(encs[j].batch(s, k, _now()))
                seqs[j] = s + k
                published[indices[j]] = s + k
                budget -= k
                sent = True
            if qos:
                read_acks(0 if sent else 0.001)
            elif not sent:
                time.sleep(0.0002)
    t_end = _now()
    # Drain the acknowledgement window (bounded).
    drain_deadline = time.monotonic() + 30.0
    while qos and any(outstanding(j) for j in range(len(conns))):
        if time.monotonic() > drain_deadline:
            break
        read_acks(0.01)
    # Fan-out probes: one message at a time, each waited for until every subscriber has it.
    if spec.probes:
        expect = sum(published) * n_sub
        drain_deadline = time.monotonic() + 30.0
        while sum(delivered) < expect and time.monotonic() < drain_deadline:
            time.sleep(0.001)
        for _ in range(spec.probes):
            s = seqs[0]
            t = _now()
            if qos:
                inflight[0].add(packet_id_for(s))
            conns[0].send(encs[0].encode(s, t))
            seqs[0] = s + 1
            published[indices[0]] = s + 1
            send_times.append((indices[0], s, t))
            expect += n_sub
            probe_deadline = time.monotonic() + 5.0
            while sum(delivered) < expect and time.monotonic() < probe_deadline:
                if qos:
                    read_acks(0.0002)
                else:
                    time.sleep(0.0002)
        while qos and outstanding(0) and time.monotonic() < drain_deadline + 5:
            read_acks(0.01)
    result = {
        "published": sum(seqs),
        "t_go": t_go,
        "t_end": t_end,
        "cpu_s": time.process_time() - cpu0,
        "unacked": sum(outstanding(j) for j in range(len(conns))),
        "probe_sends": send_times,
        **stats,
    }
    q.put(("pub", proc, result))
    # Keep the connections open until the subscribers are done (a closing publisher must not
    # change what the broker does while they drain).
    _wait_phase(ctl, ABORT, 120.0)
    for c in conns:
        with contextlib.suppress(OSError):
            c.send(DISCONNECT_BYTES)
        c.close()
    sel.close()


def _wait_phase(ctl: Any, phase: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while ctl[0] < phase and time.monotonic() < deadline:
        time.sleep(0.005)


def _sub_worker(
    spec: FlowSpec, target: Target, proc: int, indices: list[int], sh: dict[str, Any], q: Any
) -> None:
    try:
        q.put(("sub", proc, _sub_main(spec, target, proc, indices, sh, q)))
    except BaseException as exc:
        q.put(("error", f"subscriber process {proc}: {exc!r}", None))


def _sub_main(
    spec: FlowSpec, target: Target, proc: int, indices: list[int], sh: dict[str, Any], q: Any
) -> dict[str, Any]:
    ids = [f"bs-{spec.tag}-{i}" for i in indices]
    filt = _topic(spec, 0) if spec.shared_topic else f"bench/{spec.tag}/+"
    conns, _ = connect_many(target, spec.transport, ids, filt, spec.qos)
    q.put(("ready", "sub", None))
    published, delivered, ctl = sh["published"], sh["delivered"], sh["ctl"]
    n_pub = spec.n_pub
    sel = selectors.DefaultSelector()
    for j, c in enumerate(conns):
        sel.register(c.sock, selectors.EVENT_READ, j)
    # seen[j][p]: per (subscriber, publisher), a bytearray counting deliveries of each seq.
    seen: list[list[bytearray]] = [[bytearray(1024) for _ in range(n_pub)] for _ in conns]
    top: list[list[int]] = [[-1] * n_pub for _ in conns]
    unique = dup = ooo = 0
    lat = array("q")
    arrival = array("q")  # max arrival time per seq of publisher 0 (fan-out)
    record_lat, record_arr = spec.record_latency, spec.record_arrival
    coalesce = not (record_lat or record_arr)
    head = PAYLOAD_HEAD.unpack_from
    qos_acks = {1: PUBACK, 2: PUBREC}
    if not _wait_go(ctl):
        return {"unique": 0}
    cpu0 = time.process_time()
    t_last = 0
    last_progress = time.monotonic()
    hard_deadline = last_progress + spec.duration_s + 120.0
    bad = 0
    while True:
        now_m = time.monotonic()
        if ctl[0] >= PUBS_DONE:
            expected = sum(published) * len(conns)
            if unique >= expected or now_m - last_progress > 3.0:
                break
        if now_m > hard_deadline:
            break
        events = sel.select(0.05)
        if not events:
            continue
        nbytes = 0
        for key, _ in events:
            j = key.data
            c = conns[j]
            data = _recv_some(c.sock)
            t_now = _now()
            nbytes += len(data)
            acks: list[bytes] = []
            seen_j, top_j = seen[j], top[j]
            got = 0
            for b0, body in c.feed(data):
                kind = b0 >> 4
                if kind == PUBLISH:
                    off = 2 + ((body[0] << 8) | body[1])
                    qos = (b0 >> 1) & 3
                    if qos:
                        acks.append(encode_ack(qos_acks[qos], (body[off] << 8) | body[off + 1]))
                        off += 2
                    seq, p, ts = head(body, off)
                    if p >= n_pub:
                        bad += 1
                        continue
                    bm = seen_j[p]
                    if seq >= len(bm):
                        bm.extend(bytes(max(seq + 1 - len(bm), len(bm))))
                    if bm[seq]:
                        dup += 1
                        if bm[seq] < 255:
                            bm[seq] += 1
                        continue
                    bm[seq] = 1
                    got += 1
                    if seq < top_j[p]:
                        ooo += 1
                    else:
                        top_j[p] = seq
                    if record_lat:
                        lat.append(t_now - ts)
                    if record_arr and p == 0:
                        if seq >= len(arrival):
                            arrival.extend([0] * (seq + 1 - len(arrival) + 64))
                        if t_now > arrival[seq]:
                            arrival[seq] = t_now
                elif kind == PUBREL:
                    acks.append(encode_ack(PUBCOMP, (body[0] << 8) | body[1]))
                else:
                    bad += 1
            if acks:
                c.send(b"".join(acks))
            if got:
                unique += got
                t_last = t_now
                last_progress = time.monotonic()
        delivered[proc] = unique
        if coalesce and nbytes < 16384:
            # Throughput runs only: a broker that writes one small packet per syscall would
            # otherwise make this Python reader pay one wake-up per packet and become the
            # bottleneck; letting bytes accumulate briefly keeps the reader's cost per byte low.
            time.sleep(0.0003)
    cpu = time.process_time() - cpu0
    per_pub = [0] * n_pub
    for seen_j in seen:
        for p, bm in enumerate(seen_j):
            per_pub[p] += len(bm) - bm.count(0)
    for c in conns:
        with contextlib.suppress(OSError):
            c.send(DISCONNECT_BYTES)
        c.close()
    sel.close()
    return {
        "unique": unique,
        "dup": dup,
        "ooo": ooo,
        "bad": bad,
        "n_conns": len(conns),
        "t_last": t_last,
        "cpu_s": cpu,
        "lat": lat,
        "arrival": arrival,
        "per_pub": per_pub,
    }


def _split(items: list[int], parts: int) -> list[list[int]]:
    parts = max(1, min(parts, len(items)))
    return [items[i::parts] for i in range(parts)]


def cpu_ticks(pid: int | None) -> int | None:
    """utime + stime of ``pid`` in clock ticks (None if unknown)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def rss_kib(pid: int | None) -> int | None:
    """VmRSS of ``pid`` in KiB (None if unknown)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class CpuMeter:
    """CPU % of one process between ``start()`` and ``stop()``."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self._t0 = 0.0
        self._c0: int | None = None

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._c0 = cpu_ticks(self.pid)

    def stop(self) -> float | None:
        c1 = cpu_ticks(self.pid)
        wall = time.monotonic() - self._t0
        if c1 is None or self._c0 is None or wall <= 0:
            return None
        return 100.0 * (c1 - self._c0) / os.sysconf("SC_CLK_TCK") / wall


def _pct(values: list[int], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def run_flow(spec: FlowSpec, target: Target) -> dict[str, Any]:
    """Run one publish/subscribe measurement in worker processes and aggregate the results."""
    ctx = mp.get_context("fork")
    sh = {
        "published": ctx.RawArray("q", spec.n_pub),
        "delivered": ctx.RawArray("q", spec.sub_procs),
        "ctl": ctx.RawArray("q", 2),
    }
    q = ctx.Queue()
    procs: list[Any] = []
    sub_groups = _split(list(range(spec.n_sub)), spec.sub_procs)
    pub_groups = _split(list(range(spec.n_pub)), spec.pub_procs)
    if len(sub_groups) != spec.sub_procs:
        raise ValueError("more subscriber processes than subscribers")
    meter = CpuMeter(target.pid)
    results: dict[str, list[dict[str, Any]]] = {"pub": [], "sub": []}
    try:
        for i, g in enumerate(sub_groups):
            p = ctx.Process(target=_sub_worker, args=(spec, target, i, g, sh, q), daemon=True)
            p.start()
            procs.append(p)
        _await_ready(q, len(sub_groups), 120.0)
        for i, g in enumerate(pub_groups):
            p = ctx.Process(target=_pub_worker, args=(spec, target, i, g, sh, q), daemon=True)
            p.start()
            procs.append(p)
        _await_ready(q, len(pub_groups), 60.0)
        meter.start()
        sh["ctl"][0] = GO
        deadline = time.monotonic() + spec.duration_s + 120.0
        while len(results["pub"]) < len(pub_groups):
            kind, _, res = _get(q, deadline)
            results[kind].append(res)
        sh["ctl"][0] = PUBS_DONE
        while len(results["sub"]) < len(sub_groups):
            kind, _, res = _get(q, deadline + 30)
            results[kind].append(res)
        cpu = meter.stop()
    finally:
        sh["ctl"][0] = ABORT
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(5)
    return _aggregate(spec, results, cpu)


def _get(q: Any, deadline: float) -> tuple[str, int, Any]:
    import queue

    try:
        msg = q.get(timeout=max(0.1, deadline - time.monotonic()))
    except queue.Empty:
        raise TimeoutError("worker processes did not report in time") from None
    if msg[0] == "error":
        raise RuntimeError(msg[1])
    return msg


def _await_ready(q: Any, n: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for _ in range(n):
        kind, _, _ = _get(q, deadline)
        if kind != "ready":
            raise RuntimeError(f"unexpected worker message {kind}")


def _aggregate(spec: FlowSpec, res: dict[str, list[dict[str, Any]]], cpu: float | None) -> dict:
    pubs, subs = res["pub"], res["sub"]
    published = sum(r["published"] for r in pubs)
    expected = published * spec.n_sub
    unique = sum(r["unique"] for r in subs)
    t_go = min(r["t_go"] for r in pubs)
    t_last = max(r["t_last"] for r in subs)
    elapsed = (t_last - t_go) / 1e9 if t_last > t_go else float("nan")
    out: dict[str, Any] = {
        "published": published,
        "expected": expected,
        "delivered": unique,
        "lost": expected - unique,
        "dup": sum(r["dup"] for r in subs),
        "ooo": sum(r["ooo"] for r in subs),
        "bad": sum(r["bad"] for r in subs),
        "unacked": sum(r["unacked"] for r in pubs),
        "rate": unique / elapsed if elapsed > 0 else 0.0,
        "cpu": cpu,
        "gen_cpu_s": sum(r["cpu_s"] for r in pubs + subs),
        "elapsed_s": elapsed,
    }
    if spec.record_latency:
        lat = [x for r in subs for x in r["lat"]]
        out["lat_ms"] = {
            "p50": _pct(lat, 50) / 1e6,
            "p99": _pct(lat, 99) / 1e6,
            "max": max(lat) / 1e6 if lat else float("nan"),
            "n": len(lat),
        }
    if spec.probes:
        sends = [s for r in pubs for s in r["probe_sends"]]
        times = []
        for _, seq, t in sends:
            arr = [r["arrival"][seq] for r in subs if seq < len(r["arrival"])]
            if len(arr) == len(subs) and all(arr):
                times.append(max(arr) - t)
        out["reach_all_ms"] = {
            "p50": _pct(times, 50) / 1e6,
            "p99": _pct(times, 99) / 1e6,
            "n": len(times),
            "of": len(sends),
        }
    return out


# --------------------------------------------------------------------------------------------
# Idle connections and the 1 MB payload
# --------------------------------------------------------------------------------------------


def _idle_worker(target: Target, transport: str, n: int, tag: str, ctl: Any, q: Any) -> None:
    try:
        ids = [f"bi-{tag}-{i}" for i in range(n)]
        conns, secs = connect_many(target, transport, ids, concurrency=64, timeout_s=120.0)
        q.put(("idle", 0, {"n": len(conns), "secs": secs}))
        _wait_phase(ctl, ABORT, 120.0)
        for c in conns:
            c.close()
    except BaseException as exc:
        q.put(("error", f"idle connector: {exc!r}", None))


def run_idle(target: Target, transport: str, n: int, tag: str) -> dict[str, Any]:
    """Open ``n`` idle connections; measure connects/s and the broker's RSS growth."""
    ctx = mp.get_context("fork")
    ctl = ctx.RawArray("q", 2)
    q = ctx.Queue()
    rss0 = rss_kib(target.pid)
    meter = CpuMeter(target.pid)
    meter.start()
    p = ctx.Process(target=_idle_worker, args=(target, transport, n, tag, ctl, q), daemon=True)
    p.start()
    try:
        _, _, res = _get(q, time.monotonic() + 150.0)
        cpu = meter.stop()
        # Let the broker settle (bounded), then read its RSS.
        time.sleep(0.5)
        rss1 = rss_kib(target.pid)
    finally:
        ctl[0] = ABORT
        p.join(30)
        if p.is_alive():
            p.terminate()
            p.join(5)
    per = (rss1 - rss0) / res["n"] if rss0 is not None and rss1 is not None else None
    return {
        "connects_per_s": res["n"] / res["secs"],
        "kib_per_conn": per,
        "rss_before_kib": rss0,
        "rss_after_kib": rss1,
        "n": res["n"],
        "cpu": cpu,
        "lost": 0,
        "dup": 0,
    }


def run_big(target: Target, transport: str, size: int, reps: int, timeout_s: float) -> dict:
    """Deliver one ``size``-byte payload ``reps`` times; median seconds from send to receipt."""
    tag = f"{os.getpid()}-{time.monotonic_ns()}"
    topic = f"bench/big/{tag}"
    sub = open_conn(target, transport, f"bb-s-{tag}")
    pub = open_conn(target, transport, f"bb-p-{tag}")
    sub.sock.settimeout(timeout_s)
    pub.sock.settimeout(timeout_s)
    meter = CpuMeter(target.pid)
    times: list[float] = []
    lost = 0
    try:
        subscribe(sub, topic, 0)
        meter.start()
        for rep in range(reps):
            payload = make_payload(rep, 0, 0, size)
            got: list[tuple[float, bytes]] = []

            def receive(into: list[tuple[float, bytes]] = got) -> None:
                deadline = time.monotonic() + timeout_s
                with contextlib.suppress(OSError, WireError):
                    while time.monotonic() < deadline:
                        for b0, body in sub.feed(_recv_some(sub.sock)):
                            if b0 >> 4 == PUBLISH:
                                into.append((time.monotonic(), parse_publish(b0, body)[3]))
                                return

            th = threading.Thread(target=receive, daemon=True)
            th.start()
            wire = pub.wrap(encode_publish(topic, payload, 0))
            t0 = time.monotonic()
            pub.sock.sendall(wire)
            th.join(timeout_s + 1)
            if not got or got[0][1] != payload:
                lost += 1
                break
            times.append(got[0][0] - t0)
        cpu = meter.stop()
    finally:
        sub.close()
        pub.close()
    return {
        "secs": statistics.median(times) if times else None,
        "all_s": times,
        "lost": lost,
        "dup": 0,
        "cpu": cpu,
    }


# --------------------------------------------------------------------------------------------
# Brokers
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(host: str, port: int, proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port}")


@dataclass
class Certs:
    """A throw-away CA and a server certificate for 127.0.0.1/localhost."""

    cafile: str
    certfile: str
    keyfile: str


def make_certs(directory: Path) -> Certs | None:
    """Create development certificates with trustme (None if it is not installed)."""
    try:
        import trustme
    except ImportError:
        return None
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    paths = Certs(
        str(directory / "ca.pem"), str(directory / "server.pem"), str(directory / "key.pem")
    )
    ca.cert_pem.write_to_path(paths.cafile)
    cert.cert_chain_pems[0].write_to_path(paths.certfile)
    cert.private_key_pem.write_to_path(paths.keyfile)
    return paths


@dataclass
class Broker:
    """A broker process this script started."""

    name: str
    proc: subprocess.Popen
    target: Target
    log: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def stop(self) -> None:
        """Terminate (then kill, bounded) the process."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


MOSQUITTO = "/usr/sbin/mosquitto"


def start_mosquitto(workdir: Path, certs: Certs | None) -> Broker:
    """Start Mosquitto with a generated config on free loopback ports."""
    ports = {"tcp": _free_port(), "ws": _free_port()}
    lines = [
        "per_listener_settings false",
        "allow_anonymous true",
        "set_tcp_nodelay true",
        "persistence false",
        "max_queued_messages 1000000",
        "max_inflight_messages 20",
        f"listener {ports['tcp']} 127.0.0.1",
        # A websockets listener only starts in 2.0.11 when a plain listener exists too.
        f"listener {ports['ws']} 127.0.0.1",
        "protocol websockets",
    ]
    if certs is not None:
        ports["wss"] = _free_port()
        lines += [
            f"listener {ports['wss']} 127.0.0.1",
            "protocol websockets",
            f"certfile {certs.certfile}",
            f"keyfile {certs.keyfile}",
        ]
    conf = workdir / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    log = workdir / "mosquitto.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(conf)], stdout=logf, stderr=subprocess.STDOUT, cwd=workdir
        )
    target = Target("mosquitto", "127.0.0.1", ports, proc.pid, certs.cafile if certs else None)
    broker = Broker("mosquitto", proc, target, log)
    try:
        for port in ports.values():
            _wait_port("127.0.0.1", port, proc)
    except BaseException as exc:
        broker.stop()
        raise RuntimeError(f"mosquitto did not start: {exc}: {_tail(log)}") from exc
    return broker


def _mqttd_toml(transports: list[str], certs: Certs | None, data_dir: Path) -> str:
    parts = [
        f'[broker]\ndata_dir = "{data_dir}"\n',
        "[limits]\nmax_queued_messages = 1000000\nmax_queued_bytes = 1073741824\n",
    ]
    for t in transports:
        block = f'[[listeners]]\ntype = "{t}"\nhost = "127.0.0.1"\nport = 0\n'
        if t == "wss" and certs is not None:
            block += f'certfile = "{certs.certfile}"\nkeyfile = "{certs.keyfile}"\n'
        parts.append(block)
    return "\n".join(parts)


def start_mqttd(workdir: Path, certs: Certs | None) -> Broker:
    """Start mqttd; fall back to fewer listener types if this build rejects some."""
    wanted = ["tcp", "ws"] + (["wss"] if certs is not None else [])
    attempts = [wanted, ["tcp", "ws"], ["tcp"]]
    last_error = ""
    for transports in attempts:
        try:
            return _start_mqttd_with(workdir, certs, transports)
        except RuntimeError as exc:
            last_error = str(exc)
    raise RuntimeError(f"mqttd did not start: {last_error}")


def _start_mqttd_with(workdir: Path, certs: Certs | None, transports: list[str]) -> Broker:
    conf = workdir / "mqttd.toml"
    conf.write_text(_mqttd_toml(transports, certs, workdir / "mqttd-data"))
    log = workdir / "mqttd.log"
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = str(repo) + os.pathsep + env.get("PYTHONPATH", "")
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mqttd", "--config", str(conf), "--log-format", "json"],
            stdout=subprocess.DEVNULL,
            stderr=logf,
            cwd=workdir,
            env=env,
        )
    broker = Broker("mqttd", proc, Target("mqttd", "127.0.0.1", {}, proc.pid), log)
    deadline = time.monotonic() + 20.0
    ports: dict[str, int] = {}
    try:
        while time.monotonic() < deadline and len(ports) < len(transports):
            if proc.poll() is not None:
                raise RuntimeError(f"exited {proc.returncode}: {_tail(log)}")
            found = _listener_ports(log)
            for i, (kind, port) in enumerate(found):
                ports[kind or transports[min(i, len(transports) - 1)]] = port
            time.sleep(0.05)
        if len(ports) < len(transports):
            raise RuntimeError(f"listeners not reported: {_tail(log)}")
    except BaseException:
        broker.stop()
        raise
    broker.target.ports = ports
    broker.target.cafile = certs.cafile if certs else None
    return broker


def _listener_ports(log: Path) -> list[tuple[str | None, int]]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if "listener_started" not in line:
            continue
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("event") != "listener_started" or "port" not in ev:
            continue
        kind = ev.get("type") or ev.get("transport") or ev.get("listener_type")
        found.append((kind if kind in ("tcp", "ws", "wss", "tls") else None, int(ev["port"])))
    return found


def _tail(path: Path, n: int = 5) -> str:
    with contextlib.suppress(OSError):
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-n:])
    return ""


def version_of(name: str) -> str:
    """Version string of a broker binary/package."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        if name == "mosquitto":
            out = subprocess.run(
                [MOSQUITTO, "-h"], capture_output=True, text=True, timeout=5
            ).stdout
            return out.splitlines()[0].replace("mosquitto version ", "")
        out = subprocess.run(
            [sys.executable, "-c", "import mqttd; print(mqttd.__version__)"],
            capture_output=True,
            text=True,
            timeout=20,
            cwd=Path(__file__).resolve().parent.parent,
        ).stdout
        return out.strip() or "?"
    return "?"


# --------------------------------------------------------------------------------------------
# Scenarios and the report
# --------------------------------------------------------------------------------------------


@dataclass
class Metric:
    """One table row's worth of numbers for one broker."""

    value: float | None
    cpu: float | None = None
    lost: int | None = None
    dup: int | None = None
    note: str = ""


@dataclass
class Row:
    """One row of the results table."""

    label: str
    unit: str
    higher_is_better: bool
    cells: dict[str, Metric] = field(default_factory=dict)


SCENARIOS = ["qos0", "qos1", "qos2", "qos2w20", "fanout", "many", "latency", "idle", "mb1"]


@dataclass
class Settings:
    """Durations and sizes, from the command line."""

    duration_s: float
    quick: bool
    idle_conns: int
    big_reps: int
    big_timeout_s: float
    probes: int


def scenario_units(name: str, transport: str, st: Settings, tag: str) -> list[Any]:
    """FlowSpec or a marker tuple for each measurement a scenario makes."""
    d = st.duration_s
    if name in ("qos0", "qos1", "qos2", "qos2w20"):
        qos = {"qos0": 0, "qos1": 1, "qos2": 2, "qos2w20": 2}[name]
        window = 20 if name == "qos2w20" else 100
        # QoS 2: the publisher keeps at most `window` messages undelivered end to end, because
        # Mosquitto 2.0.11 releases queued QoS 2 messages to a subscriber whose 20-message
        # inflight window was full only when another message arrives: a deeper backlog strands.
        e2e = window if qos == 2 else 20_000
        return [FlowSpec(transport, qos=qos, window=window, e2e_window=e2e, duration_s=d, tag=tag)]
    if name == "fanout":
        return [
            FlowSpec(
                transport,
                n_sub=1000,
                sub_procs=2,
                e2e_window=50_000,
                batch=8,
                duration_s=d,
                probes=st.probes,
                record_arrival=True,
                tag=tag,
            )
        ]
    if name == "many":
        return [
            FlowSpec(
                transport,
                n_pub=100,
                n_sub=100,
                sub_procs=2,
                shared_topic=False,
                e2e_window=100_000,
                batch=4,
                duration_s=d,
                tag=tag,
            )
        ]
    if name == "latency":
        return [
            FlowSpec(
                transport,
                rate=1000.0,
                duration_s=max(d, 2.0),
                record_latency=True,
                tag=tag,
            )
        ]
    if name == "idle":
        return [("idle", transport, st.idle_conns)]
    if name == "mb1":
        return [("big", transport, 1024 * 1024)]
    raise ValueError(name)


def measure(unit: Any, target: Target, st: Settings, tag: str) -> dict[str, Metric]:
    """Run one unit against one broker and turn it into metrics keyed by row suffix."""
    if isinstance(unit, FlowSpec):
        unit.tag = tag
        r = run_flow(unit, target)
        common = {"cpu": r["cpu"], "lost": r["lost"], "dup": r["dup"]}
        note = _flow_note(r)
        if unit.rate:
            lat = r["lat_ms"]
            return {
                "p50": Metric(lat["p50"], note=note, **common),
                "p99": Metric(lat["p99"], **common),
                "max": Metric(lat["max"], **common),
            }
        out = {"rate": Metric(r["rate"], note=note, **common)}
        if unit.probes:
            ra = r["reach_all_ms"]
            out["reach50"] = Metric(ra["p50"], **common)
            out["reach99"] = Metric(ra["p99"], **common)
        return out
    kind, transport, n = unit
    if kind == "idle":
        r = run_idle(target, transport, n, tag)
        return {
            "cps": Metric(r["connects_per_s"], r["cpu"], 0, 0),
            "kib": Metric(r["kib_per_conn"], r["cpu"], 0, 0),
        }
    r = run_big(target, transport, n, st.big_reps, st.big_timeout_s)
    note = "" if r["secs"] is not None else f"not delivered within {st.big_timeout_s:.0f} s"
    return {"secs": Metric(r["secs"], r["cpu"], r["lost"], 0, note)}


def _flow_note(r: dict[str, Any]) -> str:
    bits = []
    if r["ooo"]:
        bits.append(f"{r['ooo']} out of order")
    if r["bad"]:
        bits.append(f"{r['bad']} unexpected packets")
    if r["unacked"]:
        bits.append(f"{r['unacked']} unacknowledged")
    return ", ".join(bits)


ROW_INFO = {
    ("qos0", "rate"): ("QoS 0 1→1", "msg/s", True),
    ("qos1", "rate"): ("QoS 1 1→1 (window 100)", "msg/s", True),
    ("qos2", "rate"): ("QoS 2 1→1 (window 100)", "msg/s", True),
    ("qos2w20", "rate"): ("QoS 2 1→1 (window 20)", "msg/s", True),
    ("fanout", "rate"): ("fan-out 1→1000", "deliveries/s", True),
    ("fanout", "reach50"): ("fan-out: one msg reaches all 1000, p50", "ms", False),
    ("fanout", "reach99"): ("fan-out: one msg reaches all 1000, p99", "ms", False),
    ("many", "rate"): ("many→many 100→100 (+ filter)", "deliveries/s", True),
    ("latency", "p50"): ("latency @1000 msg/s p50", "ms", False),
    ("latency", "p99"): ("latency @1000 msg/s p99", "ms", False),
    ("latency", "max"): ("latency @1000 msg/s max", "ms", False),
    ("idle", "cps"): ("idle connections: connects", "conn/s", True),
    ("idle", "kib"): ("idle connections: RSS each", "KiB", False),
    ("mb1", "secs"): ("1 MB payload delivery", "s", False),
}


def _fmt(v: float | None, unit: str) -> str:
    if v is None or v != v:
        return "n/a"
    if unit in ("ms", "s", "KiB"):
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"
    return f"{v:,.0f}"


def _fmt_ld(m: Metric | None) -> str:
    if m is None or m.lost is None:
        return "-"
    text = f"{m.lost}/{m.dup}"
    return f"**{text} DROPPED**" if m.lost > 0 else text


def render_table(rows: list[Row], brokers: list[str]) -> str:
    """The results as a Markdown table."""
    one = len(brokers) == 1
    head = ["scenario", "unit", *brokers]
    if len(brokers) == 2:
        head.append(f"ratio {brokers[1]}/{brokers[0]}")
    head += [f"CPU% {b}" for b in brokers]
    head += [f"lost/dup {b}" for b in brokers]
    head.append("notes")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.label, row.unit + ("" if row.higher_is_better else " (lower is better)")]
        vals = []
        for b in brokers:
            m = row.cells.get(b)
            vals.append(m.value if m else None)
            cells.append(_fmt(m.value, row.unit) if m else "n/a")
        if not one and len(brokers) == 2:
            a, c = vals
            cells.append(f"{c / a:.2f}" if a and c is not None and a == a and c == c else "n/a")
        for b in brokers:
            m = row.cells.get(b)
            cells.append(f"{m.cpu:.0f}" if m and m.cpu is not None else "n/a")
        for b in brokers:
            cells.append(_fmt_ld(row.cells.get(b)))
        notes = [
            f"{b}: {row.cells[b].note}" for b in brokers if b in row.cells and row.cells[b].note
        ]
        cells.append("; ".join(notes))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_info() -> dict[str, str]:
    """nproc, CPU model, RAM, Python version."""
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "ram": ram,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    who = ap.add_mutually_exclusive_group()
    who.add_argument(
        "--against", choices=["mosquitto"], help="run mosquitto and mqttd, interleaved"
    )
    who.add_argument(
        "--broker", choices=["mosquitto", "mqttd"], help="start and measure one broker"
    )
    who.add_argument("--host", help="measure an already running broker at this address")
    ap.add_argument("--port", type=int, default=1883, help="its MQTT/TCP port (with --host)")
    ap.add_argument("--ws-port", type=int, help="its MQTT-over-WebSocket port (with --host)")
    ap.add_argument("--pid", type=int, help="its process id, for CPU%% and RSS (with --host)")
    ap.add_argument("--quick", action="store_true", help="short durations: a smoke check")
    ap.add_argument("--scenarios", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    ap.add_argument("--transports", default="tcp,ws", help="comma-separated: tcp,ws")
    ap.add_argument("--duration", type=float, help="seconds per throughput measurement")
    ap.add_argument("--idle-conns", type=int, help="idle connections to open (default 5000)")
    ap.add_argument("--markdown", help="also write the table (with machine info) to this file")
    ap.add_argument("--json", help="also write all raw results to this JSON file")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    if args.host and not args.host.startswith("127.") and args.host != "localhost":
        print("refusing to load a non-loopback host", file=sys.stderr)
        return 2
    quick = args.quick
    st = Settings(
        duration_s=args.duration or (1.0 if quick else 10.0),
        quick=quick,
        idle_conns=args.idle_conns or 5000,
        big_reps=1 if quick else 3,
        big_timeout_s=40.0 if quick else 60.0,
        probes=20 if quick else 100,
    )
    scenarios = args.scenarios.split(",") if args.scenarios else list(SCENARIOS)
    for s in scenarios:
        if s not in SCENARIOS:
            print(f"unknown scenario {s!r}; choose from {SCENARIOS}", file=sys.stderr)
            return 2
    transports = args.transports.split(",")
    fd_limit = raise_fd_limit()
    if "idle" in scenarios and fd_limit < st.idle_conns + 1000:
        st.idle_conns = max(100, fd_limit - 1000)
        print(f"fd limit {fd_limit}: idle scenario uses {st.idle_conns} connections")
    if args.against:
        names = ["mosquitto", "mqttd"]
    elif args.broker:
        names = [args.broker]
    else:
        names = ["external"]
    workdir = Path(tempfile.mkdtemp(prefix="mqttd-bench-"))
    # Mosquitto started as root drops to the 'mosquitto' user: it must be able to read the
    # generated config and the throw-away certificates.
    workdir.chmod(0o755)
    certs = make_certs(workdir)
    rows: dict[tuple[str, str, str], Row] = {}
    raw: list[dict[str, Any]] = []
    versions = {n: version_of(n) for n in names if n != "external"}
    plan = []
    for s in scenarios:
        for t in ["tcp", "ws", "wss"] if s == "mb1" else transports:
            if s != "mb1" and t == "wss":
                continue
            plan.append((s, t))
    started = time.monotonic()
    print(
        f"bench: {len(plan)} measurements x {len(names)} broker(s); workdir {workdir}",
        flush=True,
    )
    try:
        for i, (s, t) in enumerate(plan, 1):
            for name in names:
                tag = f"{s}-{t}-{name}-{os.getpid()}"
                print(f"[{i}/{len(plan)}] {s} over {t} on {name} ...", end=" ", flush=True)
                t0 = time.monotonic()
                broker = None
                try:
                    if name == "external":
                        ports = {"tcp": args.port}
                        if args.ws_port:
                            ports["ws"] = args.ws_port
                        target = Target("external", args.host, ports, args.pid)
                    else:
                        start = start_mosquitto if name == "mosquitto" else start_mqttd
                        broker = start(_fresh(workdir, name), certs)
                        target = broker.target
                    if t not in target.ports:
                        print(f"skipped ({name} has no {t} listener)")
                        continue
                    results = {}
                    for unit in scenario_units(s, t, st, tag):
                        results.update(measure(unit, target, st, tag))
                    for key, m in results.items():
                        label, unit_name, hib = ROW_INFO[(s, key)]
                        row = rows.setdefault((s, key, t), Row(f"{label} [{t}]", unit_name, hib))
                        row.cells[name] = m
                    raw.append(
                        {"scenario": s, "transport": t, "broker": name, **_jsonable(results)}
                    )
                    summary = ", ".join(
                        f"{k}={_fmt(m.value, ROW_INFO[(s, k)][1])}" for k, m in results.items()
                    )
                    first = next(iter(results.values()))
                    cpu = f"{first.cpu:.0f}%" if first.cpu is not None else "n/a"
                    print(
                        f"{summary}; cpu {cpu}; lost/dup {_fmt_ld(first)}"
                        f" ({time.monotonic() - t0:.1f} s)",
                        flush=True,
                    )
                except Exception as exc:  # one failed measurement must not stop the run
                    print(f"FAILED: {exc}", flush=True)
                    if broker is not None and broker.proc.poll() is not None:
                        print(f"  {name} exited: {_tail(broker.log)}", flush=True)
                    for key in [k for (sc, k) in ROW_INFO if sc == s]:
                        label, unit_name, hib = ROW_INFO[(s, key)]
                        row = rows.setdefault((s, key, t), Row(f"{label} [{t}]", unit_name, hib))
                        row.cells[name] = Metric(None, note=f"failed: {exc}"[:120])
                finally:
                    if broker is not None:
                        broker.stop()
    except KeyboardInterrupt:
        print("\ninterrupted; partial results follow", flush=True)
    elapsed = time.monotonic() - started
    ordered = [
        rows[k]
        for s in scenarios
        for (sc, key) in ROW_INFO
        if sc == s
        for t in ["tcp", "ws", "wss"]
        if (k := (s, key, t)) in rows
    ]
    table = render_table(ordered, names)
    print()
    print(table)
    print(f"\n(total {elapsed:.0f} s)")
    if args.markdown:
        write_markdown(Path(args.markdown), table, names, versions, argv, elapsed)
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1, default=str))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _fresh(workdir: Path, name: str) -> Path:
    d = workdir / f"{name}-{time.monotonic_ns()}"
    d.mkdir(mode=0o755)
    return d


def _jsonable(results: dict[str, Metric]) -> dict[str, Any]:
    return {k: vars(m) for k, m in results.items()}


def write_markdown(
    path: Path,
    table: str,
    names: list[str],
    versions: dict[str, str],
    argv: list[str] | None,
    elapsed: float,
) -> None:
    """Write the table with date, machine and versions."""
    info = machine_info()
    cmd = "python scripts/bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    vers = ", ".join(f"{n} {versions.get(n, '?')}" for n in names)
    text = (
        f"Date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}  \n"
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram']} RAM, "
        f"Linux {info['kernel']}  \n"
        f"Python {info['python']}; {vers}  \n"
        f"Command: `{cmd}` ({elapsed:.0f} s)\n\n{table}\n"
    )
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
