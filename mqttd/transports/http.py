"""HTTP/1.1 on ws/wss listeners: reading requests with h11, and serving static files.

Theory of operation: every connection to a ws/wss listener starts as HTTP. ``HttpConnection``
reads one request head at a time with h11 (bounded by ``MAX_HEAD_BYTES``, however the head is
split into reads, and ``MAX_HEADERS``; bad requests get h11's status hint, e.g. 400 or 431, and
the connection closes). The WebSocket code decides whether a request is an upgrade; everything
else comes here. ``serve_static`` answers GET/HEAD from ``web_root`` with a Content-Type by
extension, ``index.html`` for directories, ETag/Last-Modified validators and 304s; a directory
asked for without its slash is redirected to a path with exactly one leading slash, never to a
protocol-relative ``//host/``. A request path is percent-decoded once, ``..`` and dot-file
segments are refused, and the resolved file (symlinks followed) must still lie inside
``web_root``: nothing outside it is ever opened. Connections are kept alive between requests as
h11 allows.

The monitoring endpoints (``/metrics``, ``/healthz``, ``/readyz``) are served through the
``Endpoints`` interface: the transport only knows which paths a listener answers and sends the
``Reply`` it is given (``serve_endpoint``); what the reply says is ``mqttd.health``'s business.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import mimetypes
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, unquote

import h11
import trio

if TYPE_CHECKING:
    from mqttd.config import ListenerConfig

MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 64
MAX_DISCARDED_BODY_BYTES = 64 * 1024
RECEIVE_SIZE = 64 * 1024
FILE_CHUNK_SIZE = 64 * 1024
SERVER_HEADER = b"mqttd"
#: Characters left as they are when a path segment is written into a Location (RFC 3986 pchar).
_PATH_SAFE = "!$&'()*+,;=:@~"

CONTENT_TYPES: dict[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".htm": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".wasm": "application/wasm",
    ".webmanifest": "application/manifest+json",
}


def content_type(path: Path) -> str:
    """The Content-Type for a file, by extension (``application/octet-stream`` if unknown)."""
    suffix = path.suffix.lower()
    if suffix in CONTENT_TYPES:
        return CONTENT_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


def header_values(request: h11.Request, name: bytes) -> list[str]:
    """Every value of header ``name`` (lower-case bytes), decoded as Latin-1."""
    return [value.decode("latin-1") for key, value in request.headers if key == name]


def header_tokens(request: h11.Request, name: bytes) -> set[str]:
    """The comma-separated tokens of header ``name``, lower-cased."""
    return {
        token.strip().lower()
        for value in header_values(request, name)
        for token in value.split(",")
        if token.strip()
    }


def request_path(request: h11.Request) -> str | None:
    """The request target's raw path (before percent-decoding), or None if not origin-form.

    An origin-form target is ``absolute-path [ "?" query ]`` (RFC 9112 3.2.1): a leading
    ``//`` belongs to the path, it does not start an authority as in a URL reference.
    """
    target = request.target.decode("ascii", "replace")
    if not target.startswith("/"):
        return None
    return target.partition("?")[0]


class HttpError(Exception):
    """A request that ends in an error status (``serve_static`` turns it into a response)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class StaticFile:
    """A file chosen to answer a request."""

    path: Path
    size: int
    mtime: float
    etag: str


def resolve_static(web_root: Path, raw_path: str) -> StaticFile | str:
    """Map a request path to a file inside ``web_root``.

    Args:
        web_root: the directory served.
        raw_path: the request path as sent (percent-encoded).

    Returns:
        The file to serve, or a redirect location (a directory asked for without its slash).

    Raises:
        HttpError: 400 for undecodable or NUL-containing paths, 404 for anything that does not
            exist, is hidden, uses ``..``, or resolves outside ``web_root``.
    """
    try:
        decoded = unquote(raw_path, errors="strict")
    except UnicodeDecodeError as exc:
        raise HttpError(400, "path_not_utf8") from exc
    if "\x00" in decoded or "\\" in decoded:
        raise HttpError(400, "bad_path_character")
    segments = [s for s in decoded.split("/") if s not in ("", ".")]
    if any(s == ".." or s.startswith(".") for s in segments):
        raise HttpError(404, "path_not_allowed")
    root = web_root.resolve()
    candidate = root.joinpath(*segments)
    try:
        resolved = candidate.resolve(strict=True)
        # Symlinks are followed, but the final target must still be inside web_root.
        resolved.relative_to(root)
        info = resolved.stat()
        if stat.S_ISDIR(info.st_mode):
            if not decoded.endswith("/"):
                # Rebuilt from the segments: always one leading slash. ``raw_path + "/"`` would
                # turn ``//evil.example`` into a protocol-relative redirect to another host.
                return "".join(f"/{quote(s, safe=_PATH_SAFE)}" for s in segments) + "/"
            resolved = (resolved / "index.html").resolve(strict=True)
            resolved.relative_to(root)
            info = resolved.stat()
    except (OSError, ValueError, RuntimeError) as exc:
        raise HttpError(404, "not_found") from exc
    if not stat.S_ISREG(info.st_mode):
        raise HttpError(404, "not_a_file")
    etag = f'"{info.st_mtime_ns:x}-{info.st_size:x}"'
    return StaticFile(resolved, info.st_size, info.st_mtime, etag)


def not_modified(request: h11.Request, file: StaticFile) -> bool:
    """Whether the client's validators show it already has this version (RFC 9110 13.2.2)."""
    if_none_match = header_values(request, b"if-none-match")
    if if_none_match:
        tags = {tag.strip().removeprefix("W/") for v in if_none_match for tag in v.split(",")}
        return "*" in tags or file.etag in tags
    for value in header_values(request, b"if-modified-since"):
        try:
            since = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            return False
        return int(file.mtime) <= since
    return False


class HttpConnection:
    """h11 server connection over a trio stream: read requests, send responses.

    Args:
        stream: the transport (TCP or TLS).
        max_head_bytes: the largest request head accepted (431 beyond).
        max_headers: the most header lines accepted (431 beyond).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        max_head_bytes: int = MAX_HEAD_BYTES,
        max_headers: int = MAX_HEADERS,
    ) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head_bytes)
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        self.last_error: str | None = None
        #: bytes handed to h11 so far on this connection
        self._received = 0
        #: the current request's EndOfMessage has been read
        self._request_done = False

    async def _next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                if type(event) is h11.EndOfMessage:
                    self._request_done = True
                elif type(event) is h11.Request:
                    self._request_done = False
                return event
            data = bytes(await self.stream.receive_some(RECEIVE_SIZE))
            self._received += len(data)
            self.conn.receive_data(data)

    async def next_request(self) -> h11.Request | None:
        """Read the next request head.

        Returns:
            The request; None when the peer closed, or sent something invalid (which has
            then been answered with an error status; ``last_error`` says why).
        """
        conn = self.conn
        # Where this request's head starts in the byte stream: bytes left over from the last
        # request (pipelined) were received but not yet parsed.
        head_start = self._received - len(conn.trailing_data[0]) if self._received else 0
        try:
            event = await self._next_event()
        except h11.RemoteProtocolError as exc:
            self.last_error = str(exc)
            await self.send_error(exc.error_status_hint, "bad request")
            return None
        if not isinstance(event, h11.Request):
            return None
        # h11's max_incomplete_event_size only bounds a head that is still incomplete after a
        # read: a whole head larger than the limit that completes within one read passes it.
        # Measure the parsed head itself (what was received, less what h11 has not parsed).
        if (
            self._received - head_start > self.max_head_bytes
            and self._received - head_start - len(conn.trailing_data[0]) > self.max_head_bytes
        ):
            self.last_error = "request_head_too_large"
            await self.send_error(431, "request header fields too large")
            return None
        if len(event.headers) > self.max_headers:
            self.last_error = "too_many_headers"
            await self.send_error(431, "too many header fields")
            return None
        return event

    async def finish_request_body(self) -> bool:
        """Read (and drop) the rest of the current request, up to a small bound.

        Returns:
            True if the request ended; False if the body was too large (the connection must
            then be closed after answering).
        """
        received = 0
        try:
            while True:
                if self._request_done:
                    return True
                event = await self._next_event()
                if isinstance(event, h11.Data):
                    received += len(event.data)
                    if received > MAX_DISCARDED_BODY_BYTES:
                        return False
                elif isinstance(event, h11.EndOfMessage):
                    return True
                elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return False
        except h11.RemoteProtocolError:
            return False

    async def _send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)

    async def send_response(
        self,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes = b"",
        *,
        head_only: bool = False,
        close: bool = False,
    ) -> None:
        """Send a complete response with a small in-memory body."""
        all_headers = [
            ("Server", SERVER_HEADER.decode()),
            ("Date", email.utils.formatdate(usegmt=True)),
            *headers,
        ]
        if status != 304:
            all_headers.append(("Content-Length", str(len(body))))
        if close:
            all_headers.append(("Connection", "close"))
        await self._send(h11.Response(status_code=status, headers=all_headers))
        if body and not head_only:
            await self._send(h11.Data(data=body))
        await self._send(h11.EndOfMessage())

    async def send_error(
        self, status: int, message: str, *, head_only: bool = False, close: bool = True
    ) -> None:
        """Send a short plain-text error response, if a response can still be sent."""
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = f"{status} {message}\n".encode()
        headers = [("Content-Type", "text/plain; charset=utf-8")]
        if status == 405:
            headers.append(("Allow", "GET, HEAD"))
        try:
            await self.send_response(status, headers, body, head_only=head_only, close=close)
        except h11.LocalProtocolError:
            return

    async def send_file(self, request: h11.Request, file: StaticFile, *, head_only: bool) -> None:
        """Send a 200 with the file's contents (or only its headers, for HEAD)."""
        headers = [
            ("Server", SERVER_HEADER.decode()),
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Content-Type", content_type(file.path)),
            ("Content-Length", str(file.size)),
            ("Last-Modified", email.utils.formatdate(file.mtime, usegmt=True)),
            ("ETag", file.etag),
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
        ]
        await self._send(h11.Response(status_code=200, headers=headers))
        if not head_only:
            fd = await trio.to_thread.run_sync(os.open, file.path, os.O_RDONLY)
            try:
                remaining = file.size
                while remaining > 0:
                    chunk = await trio.to_thread.run_sync(
                        os.read, fd, min(FILE_CHUNK_SIZE, remaining)
                    )
                    if not chunk:
                        break  # the file shrank while we sent it: h11 will refuse to finish
                    remaining -= len(chunk)
                    await self._send(h11.Data(data=chunk))
            finally:
                os.close(fd)
        await self._send(h11.EndOfMessage())

    def start_next_cycle(self) -> bool:
        """Prepare for the next request on a kept-alive connection.

        Returns:
            False if the connection must be closed instead.
        """
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            return True
        return False


async def serve_static(
    http: HttpConnection, request: h11.Request, web_root: Path | None
) -> tuple[int, str | None]:
    """Answer a non-WebSocket request from ``web_root``.

    Returns:
        ``(status, reason)``: the status sent, and a short reason for errors.
    """
    method = request.method.upper()
    head_only = method == b"HEAD"
    body_complete = await http.finish_request_body()
    if method not in (b"GET", b"HEAD"):
        await http.send_error(405, "method not allowed", close=not body_complete)
        return 405, "method_not_allowed"
    if not body_complete:
        await http.send_error(413, "request body not allowed", head_only=head_only)
        return 413, "body_too_large"
    raw_path = request_path(request)
    if raw_path is None:
        await http.send_error(400, "bad request target", head_only=head_only)
        return 400, "bad_target"
    if web_root is None:
        await http.send_error(404, "not found", head_only=head_only, close=False)
        return 404, "no_web_root"
    try:
        found = await trio.to_thread.run_sync(resolve_static, web_root, raw_path)
    except HttpError as exc:
        await http.send_error(
            exc.status,
            "not found" if exc.status == 404 else "bad request",
            head_only=head_only,
            close=exc.status != 404,
        )
        return exc.status, exc.reason
    if isinstance(found, str):
        await http.send_response(
            301,
            [("Location", found), ("Content-Type", "text/plain; charset=utf-8")],
            f"moved to {found}\n".encode(),
            head_only=head_only,
        )
        return 301, None
    if not_modified(request, found):
        await http.send_response(
            304,
            [
                ("ETag", found.etag),
                ("Last-Modified", email.utils.formatdate(found.mtime, usegmt=True)),
                ("Cache-Control", "no-cache"),
            ],
        )
        return 304, None
    await http.send_file(request, found, head_only=head_only)
    return 200, None


# --------------------------------------------------------------------------------------------
# Monitoring endpoints
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete response with a small in-memory body."""

    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


class Endpoints(Protocol):
    """The monitoring endpoints a listener serves besides (or instead of) its static files."""

    def handles(self, listener: ListenerConfig, path: str) -> bool:
        """Whether ``path`` (as requested, not decoded) is an endpoint on ``listener``."""

    async def respond(self, listener: ListenerConfig, path: str, request: h11.Request) -> Reply:
        """The reply to a GET of ``path`` (authorization included)."""


class _NoEndpoints:
    """No monitoring endpoints at all (a listener started without them)."""

    def handles(self, listener: ListenerConfig, path: str) -> bool:
        """Never: every path is someone else's."""
        return False

    async def respond(self, listener: ListenerConfig, path: str, request: h11.Request) -> Reply:
        """Not reached (``handles`` is always False)."""
        raise AssertionError("no endpoints")


NO_ENDPOINTS: Endpoints = _NoEndpoints()


def basic_credentials(request: h11.Request) -> tuple[str, bytes] | None:
    """The user name and password of an ``Authorization: Basic`` header (RFC 7617).

    Returns:
        ``(username, password)``; None when there is no such header, or it is not valid
        base64 of UTF-8 ``user:password``.
    """
    for value in header_values(request, b"authorization"):
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "basic":
            continue
        try:
            decoded = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        username, colon, password = decoded.partition(b":")
        if not colon:
            return None
        try:
            return username.decode("utf-8"), password
        except UnicodeDecodeError:
            return None
    return None


async def serve_endpoint(
    http: HttpConnection,
    request: h11.Request,
    endpoints: Endpoints,
    listener: ListenerConfig,
    path: str,
) -> tuple[int, str | None]:
    """Answer a request for a monitoring endpoint: GET or HEAD only, no body.

    Returns:
        ``(status, reason)``: the status sent, and a short reason for errors.
    """
    method = request.method.upper()
    head_only = method == b"HEAD"
    body_complete = await http.finish_request_body()
    if method not in (b"GET", b"HEAD"):
        await http.send_error(405, "method not allowed", close=not body_complete)
        return 405, "method_not_allowed"
    if not body_complete:
        await http.send_error(413, "request body not allowed", head_only=head_only)
        return 413, "body_too_large"
    reply = await endpoints.respond(listener, path, request)
    headers = [
        ("Content-Type", reply.content_type),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
        *reply.headers,
    ]
    # A refused request ends its connection: a client guessing passwords gets one try (and
    # one log line) per connection.
    refused = reply.status in (401, 403)
    await http.send_response(reply.status, headers, reply.body, head_only=head_only, close=refused)
    return reply.status, "unauthorised" if refused else None
