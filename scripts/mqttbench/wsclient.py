"""The client side of RFC 6455, just enough for a load generator: the upgrade request and the
check of its answer, masked binary frames out, data frames in (pings answered, CLOSE noted).

Hand-written rather than wsproto so that a batch of MQTT bytes costs one frame header and one
big-integer XOR; ``tests/unit/test_bench_codec.py`` cross-checks it against wsproto.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct

from conformance.wire import WireError

_U16 = struct.Struct(">H")


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
