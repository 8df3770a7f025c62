"""Static files on a ws listener, requested over real sockets with an h11 client."""

from __future__ import annotations

import email.utils
import os
from collections.abc import AsyncIterator
from pathlib import Path

import h11
import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from mqttd.config import ListenerConfig
from mqttd.errors import StartupError
from mqttd.transports import ConnectionInfo
from mqttd.transports.ws import serve_ws_listener

TIMEOUT_S = 20
INDEX = b"<!doctype html><title>mqttd</title>"
APP_JS = b"console.log('hi');\n"


@pytest.fixture
def web_root(tmp_path: Path) -> Path:
    root = tmp_path / "web"
    (root / "vendor").mkdir(parents=True)
    (root / "index.html").write_bytes(INDEX)
    (root / "app.js").write_bytes(APP_JS)
    (root / "style.css").write_bytes(b"body{}")
    (root / "vendor" / "index.html").write_bytes(b"vendor index")
    (tmp_path / "secret.txt").write_bytes(b"top secret")
    os.symlink(tmp_path / "secret.txt", root / "escape.txt")
    return root


@pytest.fixture
async def port(nursery: trio.Nursery, tmp_path: Path, web_root: Path) -> AsyncIterator[int]:
    handled: list[ConnectionInfo] = []

    async def handler(stream: trio.abc.Stream, info: ConnectionInfo) -> None:
        handled.append(info)
        await stream.aclose()  # the handler owns the stream, as the broker's connection does

    listener = ListenerConfig(type="ws", host="127.0.0.1", port=0, web_root=web_root)
    listeners = await nursery.start(
        lambda task_status: serve_ws_listener(
            listener, handler, data_dir=tmp_path, handler_nursery=nursery, task_status=task_status
        )
    )
    yield listeners[0].socket.getsockname()[1]
    assert handled == [], "static requests must never reach the MQTT handler"


class HttpClient:
    """An h11 client on one kept-alive connection."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def request(
        self, method: str, target: str, headers: list[tuple[str, str]] | None = None
    ) -> tuple[h11.Response, bytes]:
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        data = self.conn.send(
            h11.Request(method=method, target=target, headers=[("Host", "x"), *(headers or [])])
        )
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)
        response: h11.Response | None = None
        body = bytearray()
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                return response, bytes(body)


@pytest.fixture
async def client(port: int) -> AsyncIterator[HttpClient]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        yield HttpClient(stream)
    finally:
        await stream.aclose()


def header(response: h11.Response, name: bytes) -> str | None:
    for key, value in response.headers:
        if key == name:
            return value.decode()
    return None


async def raw_exchange(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        await stream.send_all(request)
        response = b""
        while chunk := await stream.receive_some(65536):
            response += chunk
        return response
    finally:
        await stream.aclose()


async def test_get_index_and_files_with_content_types(client: HttpClient) -> None:
    """GET / serves index.html; files get Content-Type by extension, on one connection."""
    with trio.fail_after(TIMEOUT_S):
        response, body = await client.request("GET", "/")
        assert response.status_code == 200
        assert body == INDEX
        assert header(response, b"content-type") == "text/html; charset=utf-8"
        response, body = await client.request("GET", "/app.js?v=1")
        assert body == APP_JS
        assert header(response, b"content-type") == "text/javascript; charset=utf-8"
        response, _ = await client.request("GET", "/style.css")
        assert header(response, b"content-type") == "text/css; charset=utf-8"
        assert header(response, b"x-content-type-options") == "nosniff"


async def test_head_has_headers_but_no_body(client: HttpClient) -> None:
    """HEAD answers with the GET headers (incl. Content-Length) and no body."""
    with trio.fail_after(TIMEOUT_S):
        response, body = await client.request("HEAD", "/app.js")
        assert response.status_code == 200
        assert body == b""
        assert header(response, b"content-length") == str(len(APP_JS))


async def test_etag_and_last_modified_give_304(client: HttpClient) -> None:
    """A matching If-None-Match or a recent If-Modified-Since gives 304 without a body."""
    with trio.fail_after(TIMEOUT_S):
        response, _ = await client.request("GET", "/app.js")
        etag = header(response, b"etag")
        last_modified = header(response, b"last-modified")
        assert etag
        assert last_modified
        response, body = await client.request("GET", "/app.js", [("If-None-Match", etag)])
        assert response.status_code == 304
        assert body == b""
        response, _ = await client.request("GET", "/app.js", [("If-Modified-Since", last_modified)])
        assert response.status_code == 304
        old = email.utils.formatdate(0, usegmt=True)
        response, body = await client.request("GET", "/app.js", [("If-Modified-Since", old)])
        assert response.status_code == 200
        assert body == APP_JS


async def test_directory_index_and_redirect(client: HttpClient) -> None:
    """A directory serves its index.html; without the slash it redirects (301)."""
    with trio.fail_after(TIMEOUT_S):
        response, body = await client.request("GET", "/vendor/")
        assert response.status_code == 200
        assert body == b"vendor index"
        response, _ = await client.request("GET", "/vendor")
        assert response.status_code == 301
        assert header(response, b"location") == "/vendor/"


async def test_missing_file_is_404(client: HttpClient) -> None:
    """A missing file is 404 and the connection stays usable."""
    with trio.fail_after(TIMEOUT_S):
        response, _ = await client.request("GET", "/nope.html")
        assert response.status_code == 404
        response, _ = await client.request("GET", "/")
        assert response.status_code == 200


async def test_other_methods_are_405(client: HttpClient) -> None:
    """POST and friends get 405 with an Allow header."""
    with trio.fail_after(TIMEOUT_S):
        response, _ = await client.request("DELETE", "/index.html")
        assert response.status_code == 405
        assert header(response, b"allow") == "GET, HEAD"


async def test_plain_get_of_websocket_path_is_426(client: HttpClient) -> None:
    """A plain GET of the WebSocket path says an upgrade is required."""
    with trio.fail_after(TIMEOUT_S):
        response, _ = await client.request("GET", "/mqtt")
        assert response.status_code == 426


@pytest.mark.parametrize(
    "target",
    [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2e%2fsecret.txt",
        "/vendor/../../secret.txt",
        "/escape.txt",
    ],
)
async def test_no_escape_from_web_root(port: int, target: str) -> None:
    """Dot-dot (plain or encoded) and symlinks out of web_root never reveal outside files."""
    with trio.fail_after(TIMEOUT_S):
        response = await raw_exchange(
            port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        assert response.split(b" ", 2)[1] in (b"400", b"404")
        assert b"top secret" not in response


async def test_absolute_form_target_is_400(port: int) -> None:
    """A request target that is not a path (absolute form) is a 400."""
    with trio.fail_after(TIMEOUT_S):
        response = await raw_exchange(port, b"GET http://x/index.html HTTP/1.1\r\nHost: x\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 400 ")


async def test_garbage_request_is_400(port: int) -> None:
    """A request line that is not HTTP is answered 400 and closed."""
    with trio.fail_after(TIMEOUT_S):
        response = await raw_exchange(port, b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 400 ")


async def test_oversized_request_head_is_431(port: int) -> None:
    """A request head over the size bound is refused (431) without reading it all."""
    with trio.fail_after(TIMEOUT_S):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000)
            response = await stream.receive_some(65536)
        finally:
            await stream.aclose()
        assert response.startswith(b"HTTP/1.1 431 ")


async def test_too_many_headers_is_431(port: int) -> None:
    """More header lines than the limit get 431."""
    with trio.fail_after(TIMEOUT_S):
        headers = b"".join(b"X-H%d: v\r\n" % i for i in range(100))
        response = await raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        assert response.startswith(b"HTTP/1.1 431 ")


async def test_no_web_root_is_404(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Without web_root, every non-WebSocket request is 404."""

    async def handler(stream: trio.abc.Stream, info: ConnectionInfo) -> None:
        raise AssertionError("not a WebSocket")

    listener = ListenerConfig(type="ws", host="127.0.0.1", port=0)
    listeners = await nursery.start(
        lambda task_status: serve_ws_listener(
            listener, handler, data_dir=tmp_path, handler_nursery=nursery, task_status=task_status
        )
    )
    with trio.fail_after(TIMEOUT_S):
        response = await raw_exchange(
            listeners[0].socket.getsockname()[1],
            b"GET /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        assert response.startswith(b"HTTP/1.1 404 ")


async def test_page_url_is_logged_and_missing_web_root_refused(
    nursery: trio.Nursery, tmp_path: Path, web_root: Path
) -> None:
    """Startup logs the page URL; a web_root that is not a directory is a StartupError."""

    async def handler(stream: trio.abc.Stream, info: ConnectionInfo) -> None:
        raise AssertionError("not a WebSocket")

    listener = ListenerConfig(type="ws", host="127.0.0.1", port=0, web_root=web_root)
    with capture_logs() as logs:
        listeners = await nursery.start(
            lambda task_status: serve_ws_listener(
                listener,
                handler,
                data_dir=tmp_path,
                handler_nursery=nursery,
                task_status=task_status,
            )
        )
    port = listeners[0].socket.getsockname()[1]
    event = next(e for e in logs if e["event"] == "web_page_available")
    assert event["url"] == f"http://localhost:{port}/"
    missing = ListenerConfig(type="ws", host="127.0.0.1", port=0, web_root=tmp_path / "nope")
    with pytest.raises(StartupError, match="web_root"):
        await serve_ws_listener(missing, handler, data_dir=tmp_path, handler_nursery=nursery)


async def test_idle_keepalive_closes_quietly(
    nursery: trio.Nursery, tmp_path: Path, web_root: Path
) -> None:
    """A kept-alive connection that goes quiet is closed at the deadline without a warning.

    Real time with a short deadline: a mock clock would jump while the file is read in a
    worker thread and time the request out before it is answered.
    """

    async def handler(stream: trio.abc.Stream, info: ConnectionInfo) -> None:
        raise AssertionError("not a WebSocket")

    deadline_s = 0.3
    listener = ListenerConfig(
        type="ws", host="127.0.0.1", port=0, web_root=web_root, ws_handshake_timeout_s=deadline_s
    )
    listeners = await nursery.start(
        lambda task_status: serve_ws_listener(
            listener, handler, data_dir=tmp_path, handler_nursery=nursery, task_status=task_status
        )
    )
    stream = await trio.open_tcp_stream("127.0.0.1", listeners[0].socket.getsockname()[1])
    client = HttpClient(stream)
    try:
        with trio.fail_after(TIMEOUT_S), capture_logs() as logs:
            response, _ = await client.request("GET", "/")
            assert response.status_code == 200
            assert await client.stream.receive_some(100) == b""
    finally:
        await stream.aclose()
    assert "http_request_timeout" not in [e["event"] for e in logs]
    assert "http_keepalive_timeout" in [e["event"] for e in logs]
