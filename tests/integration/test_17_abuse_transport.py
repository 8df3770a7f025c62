"""Hostile clients against the transports, over real loopback sockets (issue 16, items 8-12).

CA rotation by SIGHUP must drop the removed CA; a directory redirect must never be
protocol-relative; a WebSocket key must be 16 bytes of base64; the HTTP head limit must hold
whatever the read sizes. Every wait is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import pytest
import trio
import trustme
from structlog.testing import capture_logs

from mqttd.config import Config, ListenerConfig, StoreConfig
from mqttd.server import Server, serve
from mqttd.transports import ConnectionInfo
from mqttd.transports.http import MAX_HEAD_BYTES
from mqttd.transports.ws import open_websocket_stream, serve_ws_listener
from tests.helpers import wire
from tests.helpers.client import WireClient

TIMEOUT_S = 20


# --- item 8: CA rotation ------------------------------------------------------------------------


class Pki:
    """A server certificate from its own CA, and two client CAs to rotate between."""

    def __init__(self, base: Path) -> None:
        self.server_ca = trustme.CA()
        self.ca1 = trustme.CA()
        self.ca2 = trustme.CA()
        server = self.server_ca.issue_cert("localhost", "127.0.0.1")
        self.certfile = base / "server.pem"
        self.keyfile = base / "server.key"
        self.cafile = base / "clients-ca.pem"
        server.private_key_pem.write_to_path(str(self.keyfile))
        server.cert_chain_pems[0].write_to_path(str(self.certfile))
        self.ca1.cert_pem.write_to_path(str(self.cafile))


async def open_session(
    server: Server, transport: str, pki: Pki, client_ca: trustme.CA, client_id: str
) -> WireClient | None:
    """Connect with a client certificate from ``client_ca``; the client after CONNACK, or None
    when the server refused the certificate (TLS 1.3 may show it only on first use)."""
    context = ssl.create_default_context()
    pki.server_ca.configure_trust(context)
    client_ca.issue_cert(f"{client_id}@example", common_name=client_id).configure_cert(context)
    tcp = await trio.open_tcp_stream("127.0.0.1", server.port(transport))
    stream: trio.abc.Stream = trio.SSLStream(tcp, context, server_hostname="localhost")
    try:
        if transport == "wss":
            stream = await open_websocket_stream(stream, host="localhost")
        client = WireClient(stream)
        await client.send(wire.connect(client_id))
        await client.expect(wire.connack(0, 0))
    except (trio.BrokenResourceError, EOFError):
        await trio.aclose_forcefully(stream)
        return None
    return client


@pytest.mark.parametrize("transport", ["tls", "wss"])
async def test_ca_rotation_refuses_certificates_of_the_removed_ca(
    nursery: trio.Nursery, tmp_path: Path, transport: str
) -> None:
    """Issue 16 item 8: after a CA swap and reload only the new CA's client certs are accepted."""
    pki = Pki(tmp_path)
    listener = ListenerConfig(
        type=transport,  # type: ignore[arg-type]
        host="127.0.0.1",
        port=0,
        certfile=pki.certfile,
        keyfile=pki.keyfile,
        cafile=pki.cafile,
        require_certificate=True,
    )
    config = Config(listeners=(listener,), store=StoreConfig(durability="memory"))
    with trio.fail_after(TIMEOUT_S):
        server: Server = await nursery.start(serve, config)
        before = await open_session(server, transport, pki, pki.ca1, "before")
        assert before is not None, "a CA1 client certificate is accepted before the rotation"
        pki.ca2.cert_pem.write_to_path(str(pki.cafile))
        with capture_logs() as logs:
            await server.reload()
        assert "tls_reloaded" in [e["event"] for e in logs]
        assert await open_session(server, transport, pki, pki.ca1, "old-ca") is None
        assert await open_session(server, transport, pki, pki.ca2, "new-ca") is not None
        await before.send(wire.pingreq())  # the connection made before the reload lives on
        await before.expect(wire.pingresp())
        server.shutdown()


async def test_broken_cafile_on_reload_keeps_the_previous_context(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Issue 16 item 8: a broken cafile on reload keeps the previous context, tls_reload_failed."""
    pki = Pki(tmp_path)
    listener = ListenerConfig(
        type="tls",
        host="127.0.0.1",
        port=0,
        certfile=pki.certfile,
        keyfile=pki.keyfile,
        cafile=pki.cafile,
        require_certificate=True,
    )
    config = Config(listeners=(listener,), store=StoreConfig(durability="memory"))
    with trio.fail_after(TIMEOUT_S):
        server: Server = await nursery.start(serve, config)
        pki.ca2.cert_pem.write_to_path(str(pki.cafile))
        await server.reload()
        pki.cafile.write_text("not a certificate\n")
        with capture_logs() as logs:
            await server.reload()
        assert [e["event"] for e in logs if e["event"].startswith("tls_")] == ["tls_reload_failed"]
        assert await open_session(server, "tls", pki, pki.ca2, "kept") is not None
        assert await open_session(server, "tls", pki, pki.ca1, "still-gone") is None
        server.shutdown()


# --- items 10-12: HTTP and the WebSocket upgrade -------------------------------------------------


async def start_ws(
    nursery: trio.Nursery, tmp_path: Path, handled: list[ConnectionInfo], **kwargs: object
) -> int:
    """A ws listener whose MQTT handler only records that it was reached; returns its port."""

    async def handler(stream: trio.abc.Stream, info: ConnectionInfo) -> None:
        handled.append(info)
        await stream.aclose()  # the handler owns the stream, as the broker's connection does

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
    """Issue 16 item 10: extra slashes before a directory redirect to /vendor/, never //vendor/."""
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
    """RFC 6455 4.2.1 (issue 16 item 11): a key not 16 bytes of base64 gets 400 and one warning."""
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
    """RFC 6455 4.2.1: a key that is the base64 encoding of 16 bytes is answered with 101."""
    handled: list[ConnectionInfo] = []
    port = await start_ws(nursery, tmp_path, handled)
    with trio.fail_after(TIMEOUT_S):
        response = await exchange(port, upgrade_request(base64.b64encode(bytes(16)).decode()))
    assert response.startswith(b"HTTP/1.1 101 ")


async def test_request_head_over_the_limit_in_one_write_is_431(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Issue 16 item 12: a whole 20 KB request head in one write gets 431 and the close."""
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
