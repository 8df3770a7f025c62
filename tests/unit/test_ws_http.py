"""Pure helpers of the ws/wss listeners: static-file resolution, validators, proxy addresses."""

from __future__ import annotations

import email.utils
import os
from pathlib import Path

import h11
import pytest
import trio

from mqttd.transports.http import (
    MAX_HEAD_BYTES,
    HttpConnection,
    HttpError,
    StaticFile,
    content_type,
    not_modified,
    request_path,
    resolve_static,
)
from mqttd.transports.peer import client_address, format_peer, parse_trusted_proxies


@pytest.fixture
def web_root(tmp_path: Path) -> Path:
    root = tmp_path / "web"
    (root / "sub").mkdir(parents=True)
    (root / "index.html").write_text("<h1>home</h1>")
    (root / "app.js").write_text("console.log(1)")
    (root / "sub" / "index.html").write_text("sub")
    (root / ".secret").write_text("hidden")
    (tmp_path / "outside.txt").write_text("outside")
    return root


def test_resolve_plain_file(web_root: Path) -> None:
    """A plain path resolves to the file with its size and an ETag."""
    found = resolve_static(web_root, "/app.js")
    assert isinstance(found, StaticFile)
    assert found.path == (web_root / "app.js").resolve()
    assert found.size == len("console.log(1)")
    assert found.etag.startswith('"')


def test_resolve_directory_serves_index(web_root: Path) -> None:
    """The root and a directory with a trailing slash serve index.html."""
    root = resolve_static(web_root, "/")
    sub = resolve_static(web_root, "/sub/")
    assert isinstance(root, StaticFile)
    assert root.path.name == "index.html"
    assert isinstance(sub, StaticFile)
    assert sub.path == (web_root / "sub" / "index.html").resolve()


def test_directory_without_slash_redirects(web_root: Path) -> None:
    """A directory asked for without its slash gets a redirect location."""
    assert resolve_static(web_root, "/sub") == "/sub/"


@pytest.mark.parametrize("path", ["//sub", "////sub", "/.//sub", "/%2F%2Fsub", "/./sub"])
def test_directory_redirect_is_a_single_slash_path(web_root: Path, path: str) -> None:
    """Issue 16 item 10: a directory redirects to /sub/, never to the protocol-relative //sub/."""
    assert resolve_static(web_root, path) == "/sub/"


def test_redirect_location_keeps_segments_percent_encoded(web_root: Path) -> None:
    """A directory name that needs escaping is escaped again in the redirect location."""
    (web_root / "a b%").mkdir()
    assert resolve_static(web_root, "//a%20b%25") == "/a%20b%25/"


@pytest.mark.parametrize(
    ("target", "path"),
    [("/", "/"), ("/a/b?x=1", "/a/b"), ("//vendor", "//vendor"), ("*", None), ("http://x/", None)],
)
def test_request_path_of_origin_form_targets(target: str, path: str | None) -> None:
    """RFC 9112 3.2.1: in an origin-form target a leading // is part of the path, not a host."""
    request = h11.Request(method="GET", target=target, headers=[("Host", "x")])
    assert request_path(request) == path


@pytest.mark.parametrize(
    "path",
    [
        "/../outside.txt",
        "/sub/../../outside.txt",
        "/%2e%2e/outside.txt",
        "/%2E%2E/outside.txt",
        "/sub/%2e%2e/%2e%2e/outside.txt",
        "/..%2foutside.txt",
        "/.secret",
        "/%2esecret",
        "/missing.html",
    ],
)
def test_traversal_and_hidden_paths_are_404(web_root: Path, path: str) -> None:
    """Dot-dot (plain or percent-encoded), dot files and missing files are all 404."""
    with pytest.raises(HttpError) as info:
        resolve_static(web_root, path)
    assert info.value.status == 404


@pytest.mark.parametrize("path", ["/a%00b", "/%ff%fe", "/sub%5c..%5coutside.txt"])
def test_bad_path_bytes_are_400(web_root: Path, path: str) -> None:
    """NUL bytes, invalid UTF-8 and backslashes in the decoded path are 400."""
    with pytest.raises(HttpError) as info:
        resolve_static(web_root, path)
    assert info.value.status == 400


def test_symlink_out_of_root_is_404(web_root: Path, tmp_path: Path) -> None:
    """A symlink inside web_root pointing outside it is refused."""
    os.symlink(tmp_path / "outside.txt", web_root / "link.txt")
    os.symlink(tmp_path, web_root / "linkdir")
    with pytest.raises(HttpError):
        resolve_static(web_root, "/link.txt")
    with pytest.raises(HttpError):
        resolve_static(web_root, "/linkdir/outside.txt")


def test_symlink_inside_root_is_served(web_root: Path) -> None:
    """A symlink that stays inside web_root is followed."""
    os.symlink(web_root / "app.js", web_root / "alias.js")
    found = resolve_static(web_root, "/alias.js")
    assert isinstance(found, StaticFile)
    assert found.path == (web_root / "app.js").resolve()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("index.html", "text/html; charset=utf-8"),
        ("app.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("logo.SVG", "image/svg+xml"),
        ("data.json", "application/json"),
        ("LICENSE-paho-mqtt", "application/octet-stream"),
    ],
)
def test_content_type_by_extension(name: str, expected: str) -> None:
    """Content-Type follows the file extension, case-insensitively."""
    assert content_type(Path(name)) == expected


def _request(*headers: tuple[str, str]) -> h11.Request:
    return h11.Request(method="GET", target="/", headers=[("Host", "x"), *headers])


def test_not_modified_by_etag_and_date() -> None:
    """If-None-Match wins over If-Modified-Since; both detect an unchanged file."""
    file = StaticFile(Path("x"), 1, 1_700_000_000.5, '"abc"')
    later = email.utils.formatdate(1_700_000_100, usegmt=True)
    earlier = email.utils.formatdate(1_600_000_000, usegmt=True)
    assert not_modified(_request(("If-None-Match", '"abc"')), file)
    assert not_modified(_request(("If-None-Match", 'W/"abc", "zzz"')), file)
    assert not not_modified(
        _request(("If-None-Match", '"old"'), ("If-Modified-Since", later)), file
    )
    assert not_modified(_request(("If-Modified-Since", later)), file)
    assert not not_modified(_request(("If-Modified-Since", earlier)), file)
    assert not not_modified(_request(("If-Modified-Since", "garbage")), file)
    assert not not_modified(_request(), file)


def test_forwarded_for_only_from_trusted_proxy() -> None:
    """X-Forwarded-For is believed only when the TCP peer is a trusted proxy."""
    proxies = parse_trusted_proxies(["10.0.0.1", "192.168.0.0/16"])
    assert client_address("10.0.0.1", ["203.0.113.7"], proxies) == "203.0.113.7"
    assert client_address("192.168.4.4", ["203.0.113.7"], proxies) == "203.0.113.7"
    assert client_address("198.51.100.1", ["203.0.113.7"], proxies) is None
    assert client_address("10.0.0.1", [], proxies) is None
    assert client_address("10.0.0.1", ["203.0.113.7"], ()) is None


def test_forwarded_for_chain_skips_trusted_hops_only() -> None:
    """The right-most untrusted hop is the client; spoofed left entries are ignored."""
    proxies = parse_trusted_proxies(["10.0.0.0/8"])
    chain = ["1.2.3.4, 203.0.113.7", "10.0.0.2"]
    assert client_address("10.0.0.1", chain, proxies) == "203.0.113.7"
    assert client_address("10.0.0.1", ["not-an-ip"], proxies) is None
    assert client_address("10.0.0.1", ["10.0.0.3"], proxies) == "10.0.0.3"


def test_format_peer_ipv4_and_ipv6() -> None:
    """Peers print as host:port, with IPv6 hosts bracketed."""
    assert format_peer(("127.0.0.1", 1883)) == "127.0.0.1:1883"
    assert format_peer(("::1", 8443, 0, 0)) == "[::1]:8443"
    assert format_peer("weird") == "unknown"


def test_bad_trusted_proxy_entry_raises() -> None:
    """A trusted_proxies entry that is not an address or network is a ValueError."""
    with pytest.raises(ValueError, match="does not appear"):
        parse_trusted_proxies(["proxy.example"])


class ScriptedStream(trio.abc.Stream):
    """A fake transport: each receive_some returns the next scripted piece (then EOF), and
    what is sent is kept."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = list(pieces)
        self.sent = bytearray()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return self.pieces.pop(0) if self.pieces else b""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.sent += data

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def _read_head(pieces: list[bytes]) -> tuple[h11.Request | None, str | None, bytes]:
    """Feed ``pieces`` to an HttpConnection, one per read; return the request, its last_error
    and the response sent."""
    stream = ScriptedStream(pieces)
    http = HttpConnection(stream)
    with trio.fail_after(10):
        request = await http.next_request()
    return request, http.last_error, bytes(stream.sent)


def _head(size: int) -> bytes:
    """A complete GET head of exactly ``size`` bytes."""
    start, end = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: ", b"\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


@pytest.mark.parametrize(
    "split", [None, MAX_HEAD_BYTES // 2], ids=["one_read", "two_reads_each_under_the_limit"]
)
async def test_request_head_over_the_limit_is_431_whatever_the_reads(split: int | None) -> None:
    """Issue 16 item 12: a head 1 byte over MAX_HEAD_BYTES gets 431, however it is read."""
    head = _head(MAX_HEAD_BYTES + 1)
    pieces = [head] if split is None else [head[:split], head[split:]]
    request, error, response = await _read_head(pieces)
    assert request is None
    assert error == "request_head_too_large"
    assert response.startswith(b"HTTP/1.1 431 ")
    assert b"connection: close" in response.lower()


async def test_request_head_at_the_limit_is_accepted() -> None:
    """A head of exactly MAX_HEAD_BYTES is a request like any other."""
    request, error, response = await _read_head([_head(MAX_HEAD_BYTES)])
    assert isinstance(request, h11.Request)
    assert error is None
    assert response == b""
