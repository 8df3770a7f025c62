"""Hostile clients against the transports, over real loopback sockets (issue 16).

A directory redirect must never be protocol-relative; a WebSocket key must be 16 bytes of
base64; the HTTP head limit must hold whatever the read sizes. Every wait is bounded by
``trio.fail_after``.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import trio
from structlog.testing import capture_logs

from mqttd.config import ListenerConfig
from mqttd.transports import ConnectionInfo
from mqttd.transports.http import MAX_HEAD_BYTES
from mqttd.transports.ws import serve_ws_listener

TIMEOUT_S = 20


# --- items 10-12: HTTP and the WebSocket upgrade -------------------------------------------------


async def start_ws(
    nursery: trio.Nursery, tmp_path: Path, handled: list[ConnectionInfo], **kwargs: object
) -> int:
    """A ws listener whose MQTT handler only records that it was reached; returns its port."""

    async def handler(stream: trio.abc.Stream, info: ConnectionInfo) -> None:
        handled.append(info)

    listener = ListenerConfig(type="ws", host="127.0.0.1", port=0, **kwargs)  # type: ignore[arg-type]
    listeners = await nursery.start(
        lambda task_status: serve_ws_listener(
            listener, handler, data_dir=tmp_path, handler_nursery=nursery, task_status=task_status
        )
    )
    return int(listeners[0].socket.getsockname()[1])


async def exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` in one write and read the response until the server closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        await stream.send_all(request)
        response = b""
        while chunk := await stream.receive_some(65536):
            response += chunk
        return response
    finally:
        await stream.aclose()


def location(response: bytes) -> str | None:
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "location":
            return value.strip()
    return None


@pytest.mark.parametrize("target", ["//vendor", "////vendor", "/.//vendor"])
async def test_directory_redirect_is_never_protocol_relative(
    nursery: trio.Nursery, tmp_path: Path, target: str
) -> None:
    """Issue 16 item 10: a directory asked for with extra slashes redirects to ``/vendor/``,
    never to ``//vendor/`` (which a browser reads as another host)."""
    web_root = tmp_path / "web"
    (web_root / "vendor").mkdir(parents=True)
    (web_root / "vendor" / "index.html").write_text("vendor")
    handled: list[ConnectionInfo] = []
    port = await start_ws(nursery, tmp_path, handled, web_root=web_root)
    with trio.fail_after(TIMEOUT_S):
        response = await exchange(
            port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
    assert response.startswith(b"HTTP/1.1 301 ")
    assert location(response) == "/vendor/"


def upgrade_request(key: str) -> bytes:
    return (
        b"GET /mqtt HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n"
        b"Sec-WebSocket-Key: " + key.encode("ascii") + b"\r\n\r\n"
    )


@pytest.mark.parametrize(
    "key",
    [
        "abc",
        base64.b64encode(bytes(15)).decode(),
        base64.b64encode(bytes(17)).decode(),
        "!!!!not*base64*at*all!!!",
    ],
    ids=["short", "15_bytes", "17_bytes", "not_base64"],
)
async def test_websocket_key_not_16_bytes_of_base64_is_400(
    nursery: trio.Nursery, tmp_path: Path, key: str
) -> None:
    """Issue 16 item 11, RFC 6455 4.2.1: a Sec-WebSocket-Key that is not the base64 encoding of
    16 bytes gets a 400 and one ws_handshake_rejected warning, never a 101."""
    handled: list[ConnectionInfo] = []
    port = await start_ws(nursery, tmp_path, handled)
    with trio.fail_after(TIMEOUT_S), capture_logs() as logs:
        response = await exchange(port, upgrade_request(key))
    assert response.startswith(b"HTTP/1.1 400 ")
    assert handled == []
    rejected = [e for e in logs if e["event"] == "ws_handshake_rejected"]
    assert len(rejected) == 1
    assert rejected[0]["log_level"] == "warning"
    assert rejected[0]["reason"] == "bad_websocket_key"


async def test_websocket_key_of_16_bytes_is_accepted(nursery: trio.Nursery, tmp_path: Path) -> None:
    """RFC 6455 4.2.1: a key that is 16 bytes of base64 (the counterpart of the refusals) is
    answered with 101."""
    handled: list[ConnectionInfo] = []
    port = await start_ws(nursery, tmp_path, handled)
    with trio.fail_after(TIMEOUT_S):
        response = await exchange(port, upgrade_request(base64.b64encode(bytes(16)).decode()))
    assert response.startswith(b"HTTP/1.1 101 ")


async def test_request_head_over_the_limit_in_one_write_is_431(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Issue 16 item 12: a complete 20 KB request head sent in one write is refused with 431
    and the connection closed, as one that arrives in pieces is."""
    handled: list[ConnectionInfo] = []
    port = await start_ws(nursery, tmp_path, handled)
    request = b"GET /mqtt HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    assert len(request) > MAX_HEAD_BYTES
    with trio.fail_after(TIMEOUT_S), capture_logs() as logs:
        response = await exchange(port, request)
    assert response.startswith(b"HTTP/1.1 431 ")
    assert handled == []
    assert [e["reason"] for e in logs if e["event"] == "http_request_rejected"] == [
        "request_head_too_large"
    ]
