"""Connections to the broker under test: TCP, TLS, WebSocket (ws/wss) — all as one small API."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError

RECEIVE_SIZE = 65536


class Closed(Exception):
    """The broker closed the connection (EOF, reset or WebSocket close)."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where the broker under test listens and how to reach it.

    A broker made of several processes (cluster nodes, each on its own port) is one target with
    several endpoints: ``ports`` (or ``ws_urls``) lists them all, and the connections of a case
    take them in turn (``endpoint``), so a case's publisher and subscriber, or the two
    connections of a takeover, talk to different nodes. With one endpoint (``ports`` and
    ``ws_urls`` empty) only ``port`` (or ``ws_url``) is used, as before.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    cafile: str | None = None
    ws_url: str | None = None
    username: str | None = None
    password: str | None = None
    timeout: float = 5.0
    denied_topic: str | None = None  # a topic this identity may not publish to (ACL cases)
    #: Every port of the broker, in the order connections take them; empty: ``port`` only.
    ports: tuple[int, ...] = ()
    #: Every WebSocket URL of the broker, in the order connections take them; empty:
    #: ``ws_url`` only.
    ws_urls: tuple[str, ...] = ()

    @property
    def is_ws(self) -> bool:
        return self.ws_url is not None or bool(self.ws_urls)

    def endpoints(self) -> tuple[Target, ...]:
        """One single-endpoint target per port (or WebSocket URL), in round-robin order."""
        if self.ws_urls:
            return tuple(replace(self, ws_url=url, ws_urls=(), ports=()) for url in self.ws_urls)
        if self.ports and self.ws_url is None:
            return tuple(replace(self, port=port, ports=()) for port in self.ports)
        return (self,)

    def endpoint(self, index: int) -> Target:
        """Where a case's connection number ``index`` (from 0) goes: endpoint ``index`` modulo
        their number, so consecutive connections of a case reach different endpoints."""
        endpoints = self.endpoints()
        return endpoints[index % len(endpoints)]

    def describe(self) -> str:
        endpoints = self.endpoints()
        if endpoints[0] is not self:  # a list of endpoints, each described on its own
            return ", ".join(e.describe() for e in endpoints)
        if self.ws_url:
            return self.ws_url
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def _ssl_context(cafile: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile)


async def _open_tcp(host: str, port: int, tls: bool, cafile: str | None) -> trio.abc.Stream:
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    if tls:
        tls_stream = trio.SSLStream(stream, _ssl_context(cafile), server_hostname=host)
        try:
            await tls_stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        stream = tls_stream
    return stream


class RawStream:
    """A TCP or TLS byte stream; trio's errors and EOF become ``Closed``."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream

    async def send(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise Closed(f"send failed: {exc!r}") from exc

    async def receive(self) -> bytes:
        """Next chunk of bytes; raises Closed on EOF or reset."""
        try:
            data = await self._stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise Closed(f"connection reset: {exc!r}") from exc
        if not data:
            raise Closed("EOF")
        return bytes(data)

    async def aclose(self) -> None:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            try:
                await self._stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass


class WebSocketStream:
    """An MQTT byte stream carried in WebSocket binary messages (client side, wsproto)."""

    def __init__(self, stream: trio.abc.Stream, subprotocol: str | None) -> None:
        self._raw = RawStream(stream)
        self._ws = WSConnection(ConnectionType.CLIENT)
        self.subprotocol = subprotocol
        self._pending: list[bytes] = []
        self._closed = False

    async def handshake(self, host: str, path: str, subprotocols: list[str]) -> None:
        request = Request(host=host, target=path, subprotocols=subprotocols)
        await self._raw.send(self._ws.send(request))
        while True:
            data = await self._raw.receive()
            self._ws.receive_data(data)
            for event in self._ws.events():
                if isinstance(event, AcceptConnection):
                    self.subprotocol = event.subprotocol
                    return
                if isinstance(event, RejectConnection | RejectData):
                    raise Closed(f"WebSocket handshake rejected ({event!r})")

    async def send(self, data: bytes) -> None:
        """Send one binary WebSocket message."""
        await self.send_frames([data])

    async def send_frames(self, chunks: list[bytes], *, text: bool = False) -> None:
        """Send ``chunks`` as separate WebSocket messages (binary unless ``text``)."""
        out = b""
        try:
            for chunk in chunks:
                message = (
                    TextMessage(data=chunk.decode("latin-1")) if text else BytesMessage(data=chunk)
                )
                out += self._ws.send(message)
        except LocalProtocolError as exc:
            raise Closed(f"WebSocket already closed: {exc}") from exc
        await self._raw.send(out)

    async def receive(self) -> bytes:
        while not self._pending:
            if self._closed:
                raise Closed("WebSocket closed")
            data = await self._raw.receive()
            self._ws.receive_data(data)
            for event in self._ws.events():
                if isinstance(event, BytesMessage):
                    self._pending.append(bytes(event.data))
                elif isinstance(event, TextMessage):
                    self._pending.append(event.data.encode("utf-8"))
                elif isinstance(event, Ping):
                    await self._raw.send(self._ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self._closed = True
                    try:
                        await self._raw.send(self._ws.send(event.response()))
                    except (Closed, LocalProtocolError):
                        pass
        return self._pending.pop(0)

    async def aclose(self) -> None:
        await self._raw.aclose()


async def open_connection(
    target: Target, *, subprotocols: list[str] | None = None
) -> RawStream | WebSocketStream:
    """Open a fresh connection to ``target`` (for WebSocket: handshake done); a target with
    several endpoints is reached at its first (``Target.endpoint`` picks another)."""
    target = target.endpoint(0)
    if target.ws_url is None:
        return RawStream(await _open_tcp(target.host, target.port, target.tls, target.cafile))
    url = urlsplit(target.ws_url)
    secure = url.scheme == "wss"
    host = url.hostname or "127.0.0.1"
    port = url.port or (443 if secure else 80)
    stream = await _open_tcp(host, port, secure, target.cafile)
    ws = WebSocketStream(stream, None)
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    try:
        await ws.handshake(
            url.netloc or host, path, ["mqtt"] if subprotocols is None else subprotocols
        )
    except BaseException:
        await ws.aclose()
        raise
    return ws
