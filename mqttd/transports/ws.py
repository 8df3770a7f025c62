"""WebSocket listeners (``type = "ws"`` / ``"wss"``): MQTT over WebSocket, plus static files.

Theory of operation: every connection starts as HTTP/1.1, read by ``HttpConnection`` (h11)
under ``ws_handshake_timeout_s``. A WebSocket upgrade to the listener's ``path`` is checked
against h11's parsed request and answered with a 101 built here (RFC 6455 4.2.1 and 4.2.2: the
checks wsproto's server handshake makes, plus origin, key and subprotocol; handing the request
to wsproto would serialise it and parse it a second time, which cost more than h11's own parse),
and from then on the connection is a
``WebSocketStream`` -- a ``trio.abc.Stream`` of MQTT bytes -- handed to the broker's handler,
so the same MQTT framer serves TCP, TLS, WS and WSS. Any other request is a static-file request
(``mqttd.transports.http``), or one for a monitoring endpoint (``metrics_path``, ``/healthz``,
``/readyz``), and never reaches the handler. ws and wss share the TCP listener's
accept loop; wss wraps each accepted stream in TLS with the listener's current ``TlsContext``.
Frame bytes that arrive in the same read as the end of a handshake (behind the request on the
server, behind the 101 response in the client twin) are split off with public APIs only (h11's
``trailing_data``; the client reads the response head up to its blank line itself) and handed
to the frame decoder as ``early``.

After the handshake, ``WebSocketStream`` (either role; the client role exists for tests and
benchmarks) frames with the sans-IO codec in ``mqttd.transports.wsframes``, which is several
times cheaper per frame than wsproto's event machinery. ``receive_some`` returns binary message
data in the pieces it arrives in, without reassembling messages, because MQTT packets need not
align with frames [MQTT-6.0.0-2]; ``send_all`` sends one binary message. A text frame closes
with 1003 [MQTT-6.0.0-1], a message over ``max_message_size`` with 1009 (seen in the frame
header, before its payload is kept), any other protocol error with 1002 or 1007; each then reads
as EOF. Pings are answered from inside ``receive_some``.

Writes: ``try_send`` (the ``MqttStream`` interface) frames a message and hands it to the
transport's own ``try_send`` without a task switch -- all of it or nothing; a tail the transport
did not take is kept and written before anything else. Every awaiting write (``send_all``,
pongs, close frames) goes through ``_write`` under one lock, after that tail, because the
broker's writer and the reader's pong may write at the same time; ``try_send`` takes nothing
while the lock is held, so no frame ever starts inside another.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
from collections.abc import Awaitable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import h11
import structlog
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, Request
from wsproto.utilities import RemoteProtocolError

from mqttd.config import ListenerConfig
from mqttd.errors import StartupError
from mqttd.transports import ConnectionInfo, Gate, Handler, MqttStream
from mqttd.transports.http import (
    Endpoints,
    HttpConnection,
    request_path,
    serve_endpoint,
    serve_static,
)
from mqttd.transports.peer import IPNetwork, client_address, parse_trusted_proxies
from mqttd.transports.tcp import (
    CONNECTION_TASK_NAMES,
    BoundSocket,
    accept_connections,
    open_listeners,
)
from mqttd.transports.tls import TlsContext, TlsStream, client_identity, running, tls_handshake
from mqttd.transports.wsframes import (
    NEED_DATA,
    Close,
    CloseCode,
    Data,
    FrameDecoder,
    FrameError,
    MessageTooBig,
    Ping,
    encode_binary,
    encode_close,
    encode_pong,
)

log = structlog.get_logger()

#: Subprotocols we speak: ``mqtt`` (MQTT 3.1.1) and ``mqttv3.1`` (MQTT 3.1), as mosquitto does.
MQTT_SUBPROTOCOLS = ("mqtt", "mqttv3.1")
RECEIVE_SIZE = 64 * 1024
CLOSE_TIMEOUT_S = 2.0
#: The client twin refuses a handshake response whose head grows past this.
MAX_RESPONSE_HEAD_BYTES = 16 * 1024


class WebSocketStream(MqttStream):
    """A byte stream carried in binary WebSocket messages.

    Frames are decoded and encoded by ``mqttd.transports.wsframes``; ``ws`` only tells the
    role (server or client). A wsproto connection passed as ``ws`` must have been given no
    bytes past the handshake: those are passed as ``early`` instead.

    Args:
        transport: the underlying stream (TCP or TLS), already past the HTTP handshake.
        ws: the role, or the wsproto connection that ran the handshake (in the OPEN state).
        max_message_size: a received message larger than this closes the connection (1009).
        subprotocol: the negotiated subprotocol, for the record.
        early: bytes received after the handshake, in the same read as its end: the first
            frame bytes, read before anything from ``transport``.
    """

    __slots__ = (
        "_client",
        "_close_received",
        "_close_sent",
        "_closed",
        "_decoder",
        "_direct",
        "_early",
        "_eof",
        "_pending",
        "_receiving",
        "_sending",
        "_unsent",
        "_write_lock",
        "close_code",
        "close_reason",
        "subprotocol",
        "transport",
    )

    def __init__(
        self,
        transport: trio.abc.Stream,
        ws: WSConnection | ConnectionType,
        *,
        max_message_size: int = 16 * 1024 * 1024,
        subprotocol: str | None = None,
        early: bytes = b"",
    ) -> None:
        self.transport = transport
        self.subprotocol = subprotocol
        self.close_code: int | None = None  # the close code sent or received, once closed
        self.close_reason: str | None = None
        self._client = (
            ws is ConnectionType.CLIENT if isinstance(ws, ConnectionType) else bool(ws.client)
        )
        self._decoder = FrameDecoder(max_message_size=max_message_size, client=self._client)
        self._pending = bytearray()  # received message data not yet returned
        self._eof = False
        self._closed = False  # aclose() was called
        self._close_sent = False
        self._close_received = False
        self._receiving = False
        self._sending = False
        # Created on first use: a connection mostly writes with ``try_send``, and an idle one
        # should not carry a lock and its parking lot.
        self._write_lock: trio.Lock | None = None
        #: the tail of a frame ``try_send`` started; written before anything else
        self._unsent = b""
        #: the transport's non-blocking side (TcpStream, TlsStream); None for other streams
        self._direct: MqttStream | None = transport if isinstance(transport, MqttStream) else None
        self._decoder.receive_data(early)
        self._early = bool(early)  # frame bytes from the handshake wait for receive_some

    @property
    def _open(self) -> bool:
        return not (self._close_sent or self._close_received)

    def _new_mask(self) -> bytes | None:
        """A fresh masking key for each frame a client sends [RFC 6455 5.3]; None for a server."""
        return os.urandom(4) if self._client else None

    def _encode(self, data: bytes | bytearray | memoryview) -> bytes:
        if self._client:
            return encode_binary(data, mask=os.urandom(4))
        return encode_binary(data)

    async def _write(self, data: bytes) -> None:
        """The one awaiting write path (data frames of ``send_all``, pongs, close frames): under
        the write lock, after the tail ``try_send`` left, so no frame starts inside another."""
        if self._write_lock is None:
            self._write_lock = trio.Lock()
        async with self._write_lock:
            if self._unsent:
                data, self._unsent = self._unsent + data, b""
            await self.transport.send_all(data)

    def _writing(self) -> bool:
        """Whether a write is under way (``try_send`` must not cut into it)."""
        lock = self._write_lock
        return self._sending or (lock is not None and lock.locked())

    def try_send(self, data: bytes) -> int:
        """Send ``data`` as one binary message without blocking, as far as the transport takes
        it now: the frame's tail the transport does not take is kept (``has_unsent``) and
        written first by the next ``send_all``, pong or close frame.

        Returns:
            ``len(data)`` when the frame was started; 0 (nothing taken) when the transport took
            none of it or has no ``try_send``, while closing or closed, while another write is
            under way (a pong, a ``send_all``), or when an earlier tail still does not fit.
        """
        direct = self._direct
        if direct is None or not data or self._closed or not self._open or self._writing():
            return 0
        if self._unsent:
            taken = direct.try_send(self._unsent)
            self._unsent = self._unsent[taken:]
            if self._unsent:
                return 0
        frame = self._encode(data)
        taken = direct.try_send(frame)
        if not taken:
            return 0  # the frame is dropped: nothing of ``data`` was consumed
        if taken < len(frame):
            self._unsent = frame[taken:]
        return len(data)

    @property
    def has_unsent(self) -> bool:
        """Whether frame bytes are held, here (a frame's tail) or in the transport (TLS)."""
        if self._unsent:
            return True
        direct = self._direct
        return direct is not None and direct.has_unsent

    def close_now(self) -> bool:
        """Start a normal close (1000) with what the transport takes at once, and close the
        transport without waiting.

        Returns:
            The transport's ``close_now``; False when the transport is not an ``MqttStream``
            (nothing was done: use ``aclose``).
        """
        direct = self._direct
        if direct is None:
            return False
        if not self._closed:
            self._closed = True
            if self._open and not self._writing():
                self._close_sent = True
                self.close_code = self.close_code or CloseCode.NORMAL_CLOSURE
                frame = encode_close(CloseCode.NORMAL_CLOSURE, "", mask=self._new_mask())
                # After a frame's tail, if one is left; whatever does not fit is dropped.
                frame, self._unsent = self._unsent + frame, b""
                direct.try_send(frame)
        return direct.close_now()

    async def _send_close(self, code: int | None, reason: str = "") -> None:
        """Send a close frame (best effort, within ``CLOSE_TIMEOUT_S``) unless one was sent."""
        if self._close_sent:
            return
        self._close_sent = True
        frame = encode_close(code, reason, mask=self._new_mask())
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            try:
                await self._write(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _close_with(self, code: int, reason: str) -> None:
        """Start the close handshake ourselves, then read as EOF."""
        self.close_code, self.close_reason = code, reason
        self._eof = True  # data received before the offending frame is still delivered
        if not self._close_received:
            await self._send_close(code, reason)

    async def _handle_events(self) -> None:
        """Turn the buffered frames into pending data, answering pings and closes."""
        decoder = self._decoder
        pending = self._pending
        try:
            while True:
                event = decoder.next_event()
                if type(event) is Data:
                    pending += event.data
                elif event is NEED_DATA:
                    return
                elif isinstance(event, Ping):
                    if self._open:
                        try:
                            await self._write(encode_pong(event.payload, mask=self._new_mask()))
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            pass
                elif isinstance(event, Close):
                    self.close_code, self.close_reason = event.code, event.reason
                    self._eof = True
                    self._close_received = True
                    if not self._close_sent:
                        # Echo the peer's code [RFC 6455 5.5.1]; 1005 means "no code".
                        self._close_sent = True
                        frame = encode_close(event.code, event.reason, mask=self._new_mask())
                        try:
                            await self._write(frame)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            pass
                    return
                # Pong: nothing to do.
        except MessageTooBig as exc:
            log.warning("ws_message_too_large", size=exc.size, limit=exc.limit)
            await self._close_with(exc.close_code, exc.reason)
        except FrameError as exc:
            if exc.close_code == CloseCode.UNSUPPORTED_DATA:
                # [MQTT-6.0.0-1] MQTT control packets must travel in binary frames.
                log.warning("ws_text_frame_received")
            else:
                log.warning("ws_protocol_error", code=exc.close_code, reason=exc.reason)
            await self._close_with(exc.close_code, exc.reason)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Return the next received piece of binary message data; ``b""`` after a close.

        Raises:
            trio.BusyResourceError: another task is already receiving.
            trio.ClosedResourceError: this stream was closed.
            trio.BrokenResourceError: the transport failed.
        """
        if max_bytes is not None:
            if not isinstance(max_bytes, int):
                raise TypeError("max_bytes must be an integer or None")
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("stream was closed")
                pending = self._pending
                if pending:
                    if max_bytes is None or max_bytes >= len(pending):
                        chunk = bytes(pending)
                        pending.clear()
                    else:
                        chunk = bytes(pending[:max_bytes])
                        del pending[:max_bytes]
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return chunk
                if self._eof:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return b""
                if self._early:
                    self._early = False
                    await self._handle_events()
                    continue
                try:
                    data = await self.transport.receive_some(RECEIVE_SIZE)
                except trio.ClosedResourceError:
                    if self._closed:
                        raise trio.ClosedResourceError("stream was closed") from None
                    raise
                if not data:
                    # Transport EOF without a close frame: an abnormal closure (1006).
                    self._eof = True
                    self.close_code = self.close_code or CloseCode.ABNORMAL_CLOSURE
                    continue
                self._decoder.receive_data(data)
                await self._handle_events()
        finally:
            self._receiving = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` as one binary WebSocket message, after any held frame bytes;
        ``b""`` writes only those.

        Raises:
            trio.BusyResourceError: another task is already sending.
            trio.ClosedResourceError: this stream was closed.
            trio.BrokenResourceError: the connection is closing or the transport failed.
        """
        if self._sending:
            raise trio.BusyResourceError("another task is already sending")
        self._sending = True
        try:
            if self._closed:
                raise trio.ClosedResourceError("stream was closed")
            if not data:
                if self.has_unsent:
                    await self._write(b"")  # the tail try_send left, and the transport's
                else:
                    await trio.lowlevel.checkpoint()
                return
            if self._close_sent or self._close_received:
                await trio.lowlevel.checkpoint()
                raise trio.BrokenResourceError("WebSocket is closing")
            await self._write(self._encode(data))
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the transport can probably take more data.

        Raises:
            trio.BusyResourceError: another task is sending.
            trio.ClosedResourceError: this stream was closed.
        """
        if self._sending:
            raise trio.BusyResourceError("another task is already sending")
        self._sending = True
        try:
            if self._closed:
                await trio.lowlevel.checkpoint()
                raise trio.ClosedResourceError("stream was closed")
            if self._write_lock is None:
                self._write_lock = trio.Lock()
            # Under the write lock: a pong written meanwhile would be a second task waiting on
            # the transport's send side.
            async with self._write_lock:
                await self.transport.wait_send_all_might_not_block()
        finally:
            self._sending = False

    async def aclose(self) -> None:
        """Send a normal close frame (best effort, briefly) and close the transport."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            if self._open:
                self.close_code = self.close_code or CloseCode.NORMAL_CLOSURE
                await self._send_close(CloseCode.NORMAL_CLOSURE)
        finally:
            await self.transport.aclose()


async def open_websocket_stream(
    transport: trio.abc.Stream,
    *,
    host: str,
    target: str = "/mqtt",
    subprotocols: tuple[str, ...] = ("mqtt",),
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    max_message_size: int = 16 * 1024 * 1024,
) -> WebSocketStream:
    """Client side: run the opening handshake over ``transport`` and return the stream.

    Used by tests and benchmarks as the twin of the server side. The response head is read up
    to its blank line and only the head goes to wsproto; whatever followed it in the same read
    (the server may send frames right after its 101) goes to the stream's frame decoder.

    Raises:
        trio.BrokenResourceError: the server refused the handshake, answered something that is
            not a valid handshake response, or closed the connection.
    """
    ws = WSConnection(ConnectionType.CLIENT)
    await transport.send_all(
        ws.send(
            Request(
                host=host,
                target=target,
                subprotocols=list(subprotocols),
                extra_headers=extra_headers or [],
            )
        )
    )
    received = bytearray()
    while (end := received.find(b"\r\n\r\n")) < 0:
        if len(received) > MAX_RESPONSE_HEAD_BYTES:
            raise trio.BrokenResourceError("WebSocket handshake response head too large")
        data = await transport.receive_some(RECEIVE_SIZE)
        if not data:
            raise trio.BrokenResourceError("connection closed during the WebSocket handshake")
        received += data
    head_end = end + 4
    try:
        ws.receive_data(bytes(received[:head_end]))
        events = list(ws.events())
    except RemoteProtocolError as exc:
        raise trio.BrokenResourceError(f"bad WebSocket handshake response: {exc}") from exc
    for event in events:
        if isinstance(event, AcceptConnection):
            return WebSocketStream(
                transport,
                ws,
                max_message_size=max_message_size,
                subprotocol=event.subprotocol,
                early=bytes(received[head_end:]),
            )
        if isinstance(event, RejectConnection):
            raise trio.BrokenResourceError(f"WebSocket handshake refused with {event.status_code}")
    raise trio.BrokenResourceError("no WebSocket handshake response")


#: [RFC 6455 1.3] appended to the client's key, then SHA-1 and base64: Sec-WebSocket-Accept.
ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: [RFC 6455 4.2.2] the opening of the server's handshake, up to the Sec-WebSocket-Accept value
#: (the bytes wsproto wrote, with its header order and casing).
_ACCEPT_HEAD = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: "
)


def _header_fields(request: h11.Request) -> dict[bytes, list[bytes]]:
    """The request's header values by name (lower-case, as h11 gives them), in order.

    One pass over the headers: each look-up after it is a dict access, where ``header_values``
    walks every header again.
    """
    fields: dict[bytes, list[bytes]] = {}
    for name, value in request.headers:
        values = fields.get(name)
        if values is None:
            fields[name] = [value]
        else:
            values.append(value)
    return fields


def _tokens(fields: dict[bytes, list[bytes]], name: bytes) -> set[str]:
    """The comma-separated tokens of header ``name``, lower-cased (``header_tokens``)."""
    return {
        token.strip().lower()
        for value in fields.get(name, ())
        for token in value.decode("latin-1").split(",")
        if token.strip()
    }


def _ascii_list(value: bytes) -> list[str]:
    """A comma-separated header value split into stripped items, as wsproto splits it (bytes
    outside ASCII, which wsproto's split would raise on, become U+FFFD and match nothing)."""
    return [piece.decode("ascii", "replace").strip() for piece in value.split(b",")]


def _is_websocket_upgrade(fields: dict[bytes, list[bytes]]) -> bool:
    return "upgrade" in _tokens(fields, b"connection") and "websocket" in _tokens(
        fields, b"upgrade"
    )


def _origin_allowed(origins: list[str], allowed: tuple[str, ...]) -> bool:
    """``allowed_origins`` empty = all; a request without Origin is not from a browser."""
    if not allowed or not origins:
        return True
    wanted = {o.strip().rstrip("/").lower() for o in allowed}
    return all(o.strip().rstrip("/").lower() in wanted for o in origins)


def _websocket_key_problem(fields: dict[bytes, list[bytes]]) -> str | None:
    """Why the request's Sec-WebSocket-Key is unacceptable, or None if it is fine.

    [RFC 6455 4.2.1] the key is "a base64-encoded value that, when decoded, is 16 bytes in
    length"; [RFC 6455 11.3.1] the header must not appear more than once.
    """
    keys = fields.get(b"sec-websocket-key")
    if not keys:
        return "missing_websocket_key"
    if len(keys) > 1:
        return "repeated_websocket_key"
    try:
        decoded = base64.b64decode(keys[0], validate=True)
    except ValueError:  # binascii.Error
        return "bad_websocket_key"
    return None if len(decoded) == 16 else "bad_websocket_key"


def _handshake_problem(fields: dict[bytes, list[bytes]]) -> tuple[int, str] | None:
    """The status and reason for refusing an upgrade request, or None if it is a valid opening
    handshake [RFC 6455 4.2.1] (the Sec-WebSocket-Key is checked apart, before this).

    The checks, their order, statuses and messages are those of wsproto's server handshake
    (``H11Handshake._process_connection_request``), which this replaces; where a header repeats,
    its last value counts, as there. The method is not checked: wsproto's check never saw it
    (``initiate_upgrade_connection`` rebuilds the request as a GET).
    """
    connection = fields.get(b"connection")
    # [RFC 6455 4.2.1 item 4] Connection includes the token "Upgrade" (case-insensitive).
    if connection is None or not any(t.lower() == "upgrade" for t in _ascii_list(connection[-1])):
        return 400, "Missing header, 'Connection: Upgrade'"
    # [RFC 6455 4.2.1 item 6, 4.2.2 item 4] version 13 only: any other is answered 426 (the
    # client may retry with a version we speak), a missing one 400.
    version = fields.get(b"sec-websocket-version")
    if version is None or version[-1] != b"13":
        return (426 if version and version[-1] else 400), "Missing header, 'Sec-WebSocket-Version'"
    # [RFC 6455 4.2.1 item 3] Upgrade is "websocket" (case-insensitive).
    if fields[b"upgrade"][-1].lower() != b"websocket":
        return 400, "Missing header, 'Upgrade: websocket'"
    # [RFC 6455 4.2.1 item 2] a Host header field [RFC 9112 3.2: exactly one]. h11 requires
    # it of HTTP/1.1 requests; an HTTP/1.0 request may come without.
    hosts = fields.get(b"host")
    if hosts is None:
        return 400, "Missing header, 'Host'"
    if len(hosts) > 1:
        return 400, "Repeated header, 'Host'"
    return None


def _accept_response(key: bytes, subprotocol: str) -> bytes:
    """The 101 that accepts a handshake [RFC 6455 4.2.2 item 5], with the key's
    Sec-WebSocket-Accept [RFC 6455 1.3] and the chosen subprotocol, and no extensions."""
    accept = base64.b64encode(hashlib.sha1(key + ACCEPT_GUID).digest())
    return b"%s%s\r\nSec-WebSocket-Protocol: %s\r\n\r\n" % (
        _ACCEPT_HEAD,
        accept,
        subprotocol.encode("ascii"),
    )


def _choose_subprotocol(offered: list[str]) -> str | None:
    """The first subprotocol the client offered that we speak (its preference wins)."""
    for name in offered:
        if name.strip().lower() in MQTT_SUBPROTOCOLS:
            return name.strip().lower()
    return None


class _WsListenerContext:
    """Per-listener settings shared by its connection tasks."""

    def __init__(
        self,
        listener: ListenerConfig,
        handler: Handler,
        tls: TlsContext | None,
        proxies: tuple[IPNetwork, ...],
        endpoints: Endpoints | None = None,
        handler_nursery: trio.Nursery | None = None,
    ) -> None:
        self.listener = listener
        self.endpoints = endpoints  # monitoring endpoints (metrics_path), if any
        self.handler = handler
        #: where an upgraded connection's MQTT task runs (None: in the handshake's task)
        self.handler_nursery = handler_nursery
        self.tls = tls  # wss: the listener's TLS context, read by each new connection
        self.transport = "wss" if tls is not None else "ws"
        self.proxies = proxies


async def _accept_websocket(
    ctx: _WsListenerContext,
    http: HttpConnection,
    fields: dict[bytes, list[bytes]],
    logger: Any,
) -> WebSocketStream | None:
    """Check an upgrade request (its headers, ``_header_fields``) and answer it: 101 with a
    stream, or a 4xx and None."""
    listener = ctx.listener
    origins = [value.decode("latin-1") for value in fields.get(b"origin", ())]
    if not _origin_allowed(origins, listener.allowed_origins):
        logger.warning(
            "ws_handshake_rejected", status=403, reason="origin_not_allowed", origin=origins
        )
        await http.send_error(403, "origin not allowed")
        return None
    key_problem = _websocket_key_problem(fields)
    if key_problem is not None:
        logger.warning("ws_handshake_rejected", status=400, reason=key_problem)
        await http.send_error(400, "Sec-WebSocket-Key must be the base64 encoding of 16 bytes")
        return None
    problem = _handshake_problem(fields)
    if problem is not None:
        status, message = problem
        logger.warning("ws_handshake_rejected", status=status, reason=message)
        await http.send_error(status, message)
        return None
    # [RFC 6455 4.2.1 item 8] Sec-WebSocket-Protocol: a list, possibly over several lines.
    offered = [
        name for value in fields.get(b"sec-websocket-protocol", ()) for name in _ascii_list(value)
    ]
    subprotocol = _choose_subprotocol(offered)
    if subprotocol is None:
        logger.warning(
            "ws_handshake_rejected",
            status=400,
            reason="no_mqtt_subprotocol",
            offered=offered,
        )
        await http.send_error(
            400, "WebSocket subprotocol 'mqtt' (MQTT 3.1.1) or 'mqttv3.1' (MQTT 3.1) required"
        )
        return None
    # Echoed as the client spelt it. No extensions: permessage-deflate would buy little for
    # MQTT and costs memory per socket.
    chosen = next(name for name in offered if name.strip().lower() == subprotocol)
    await http.stream.send_all(_accept_response(fields[b"sec-websocket-key"][0], chosen))
    # Frames the client sent right behind its request (h11 kept them, unparsed).
    trailing, _ = http.conn.trailing_data
    return WebSocketStream(
        http.stream,
        ConnectionType.SERVER,
        max_message_size=listener.ws_max_message_size,
        subprotocol=chosen,
        early=bytes(trailing),
    )


async def _serve_ws_connection(
    stream: trio.abc.Stream,
    ctx: _WsListenerContext,
    peer_ip: str,
    peer: str,
    admission: Gate | None,
) -> None:
    """HTTP until a WebSocket upgrade, then MQTT over it; ``admission`` is left at the end.

    For wss, ``stream`` is wrapped in TLS here, with the listener's current context.
    """
    handed_over = False
    try:
        if ctx.tls is not None:
            stream = ctx.tls.wrap(stream)
        # The handshake runs in its own frame: its HTTP state (h11 connection, request,
        # bound logger) is freed before the MQTT connection starts its long life.
        accepted = await _upgrade(stream, ctx, peer_ip, peer)
        if accepted is not None:
            ws_stream, info = accepted
            del accepted
            if ctx.handler_nursery is not None:
                # The MQTT connection gets a task of its own and this one ends, so an idle
                # WebSocket connection keeps no handshake frame (as a TCP one, spawned by
                # its accept loop): the connection now owns the stream and leaves the gate.
                info = dataclasses.replace(info, ip=peer_ip, admission=admission)
                ctx.handler_nursery.start_soon(
                    ctx.handler, ws_stream, info, name=CONNECTION_TASK_NAMES[ctx.transport]
                )
                handed_over = True
                return
            try:
                await ctx.handler(ws_stream, info)
            except Exception:
                log.exception("connection_task_failed", transport=ctx.transport, peer=peer)
            finally:
                await trio.aclose_forcefully(ws_stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.debug("http_connection_lost", transport=ctx.transport, peer=peer, reason=str(exc))
    except Exception:
        # The handler catches its own errors; this only keeps one bad connection from
        # taking the listener down with it.
        log.exception("connection_task_failed", transport=ctx.transport, peer=peer)
    finally:
        if not handed_over:
            await trio.aclose_forcefully(stream)
            if admission is not None:
                admission.leave(ctx.listener, peer_ip)


async def _upgrade(
    stream: trio.abc.Stream, ctx: _WsListenerContext, peer_ip: str, peer: str
) -> tuple[WebSocketStream, ConnectionInfo] | None:
    """Serve HTTP requests (static files, errors) until a WebSocket upgrade is accepted.

    Returns:
        The WebSocket stream and the MQTT connection's info, or None when the connection is
        done (closed, timed out, refused, or a static file served without keep-alive).
    """
    listener = ctx.listener
    logger = log.bind(transport=ctx.transport, peer=peer)
    identity = None
    if isinstance(stream, TlsStream):
        if not await tls_handshake(stream, listener.tls_handshake_timeout_s, logger):
            return None
        identity = client_identity(stream)
    http = HttpConnection(stream)
    served = 0
    forwarded_for: list[str] = []
    while True:
        ws_stream: WebSocketStream | None = None
        upgrade = False
        reason: str | None
        with trio.move_on_after(listener.ws_handshake_timeout_s) as scope:
            request = await http.next_request()
            if request is None:
                if http.last_error:
                    logger.warning("http_request_rejected", reason=http.last_error)
                return None
            path = request_path(request)
            fields = _header_fields(request)
            upgrade = _is_websocket_upgrade(fields)
            if upgrade and path == listener.path:
                ws_stream = await _accept_websocket(ctx, http, fields, logger)
                if ws_stream is None:
                    return None
                forwarded_for = [v.decode("latin-1") for v in fields.get(b"x-forwarded-for", ())]
            elif upgrade:
                logger.warning("ws_handshake_rejected", status=404, reason="wrong_path")
                await http.send_error(404, "no WebSocket endpoint here")
                return None
            elif path == listener.path:
                await http.finish_request_body()
                await http.send_error(426, "WebSocket upgrade required", close=False)
                status, reason = 426, "upgrade_required"
            elif (
                ctx.endpoints is not None
                and path is not None
                and ctx.endpoints.handles(listener, path)
            ):
                status, reason = await serve_endpoint(http, request, ctx.endpoints, listener, path)
            else:
                status, reason = await serve_static(http, request, listener.web_root)
            if ws_stream is None:
                logger.debug(
                    "http_request",
                    method=request.method.decode("ascii", "replace"),
                    path=path,
                    status=status,
                    reason=reason,
                )
        if scope.cancelled_caught:
            if served and not upgrade and not http.conn.trailing_data[0]:
                # A kept-alive connection that simply went quiet: normal for browsers.
                logger.debug("http_keepalive_timeout")
            else:
                logger.warning(
                    "ws_handshake_timeout" if upgrade else "http_request_timeout",
                    timeout_s=listener.ws_handshake_timeout_s,
                )
            return None
        if ws_stream is not None:
            forwarded = client_address(peer_ip, forwarded_for, ctx.proxies)
            info = ConnectionInfo(
                transport=ctx.transport,
                peer=forwarded if forwarded is not None else peer,
                listener=listener,
                tls_identity=identity,
            )
            logger.debug(
                "ws_connection_accepted", subprotocol=ws_stream.subprotocol, client=info.peer
            )
            return ws_stream, info
        served += 1
        if not http.start_next_cycle():
            return None


async def serve_ws_listener(
    listener: ListenerConfig,
    handler: Handler,
    *,
    data_dir: Path,
    handler_nursery: trio.Nursery,
    gate: Gate | None = None,
    endpoints: Endpoints | None = None,
    task_status: trio.TaskStatus[list[BoundSocket]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve MQTT over WebSocket (``ws``) or secure WebSocket (``wss``) until cancelled.

    Requests that are not a WebSocket upgrade to ``listener.path`` are answered from
    ``listener.web_root`` (404 when unset) and never reach ``handler``.

    Args:
        listener: a ``type = "ws"`` or ``"wss"`` listener.
        handler: called with a ``WebSocketStream`` and its ``ConnectionInfo``, in a task of
            its own in ``handler_nursery``; like a TCP listener's, it owns the stream (closes
            it) and leaves ``info.admission`` when done.
        data_dir: where development certificates live (wss with ``tls_dev_certs``).
        handler_nursery: where connection tasks run.
        gate: admission control, applied before any TLS or HTTP work.
        endpoints: the monitoring endpoints, served at ``listener.metrics_path`` (and
            ``/healthz``, ``/readyz``) when it is set.
        task_status: receives the list of bound sockets (``BoundSocket``).

    Raises:
        StartupError: certificates unusable or the port cannot be bound.
    """
    secure = listener.type == "wss"
    try:
        proxies = parse_trusted_proxies(listener.trusted_proxies)
    except ValueError as exc:
        raise StartupError(
            f"{listener.type} listener {listener.host}:{listener.port}: bad trusted_proxies: {exc}"
        ) from exc
    if listener.web_root is not None and not listener.web_root.is_dir():
        raise StartupError(
            f"{listener.type} listener {listener.host}:{listener.port}: "
            f"web_root {listener.web_root} is not a directory"
        )
    tls = TlsContext(listener, data_dir, alpn=["http/1.1"]) if secure else None
    ctx = _WsListenerContext(listener, handler, tls, proxies, endpoints, handler_nursery)
    sockets = await open_listeners(listener)
    if listener.web_root is not None:
        port = sockets[0].socket.getsockname()[1]
        host = listener.host
        if host in ("127.0.0.1", "::1", "0.0.0.0", "::", ""):
            host = "localhost"  # the name the development certificate is valid for
        elif ":" in host:
            host = f"[{host}]"
        log.info(
            "web_page_available",
            url=f"{'https' if secure else 'http'}://{host}:{port}/",
            web_root=str(listener.web_root),
        )

    def handle(stream: trio.abc.Stream, info: ConnectionInfo) -> Awaitable[None]:
        return _serve_ws_connection(stream, ctx, info.ip, info.peer, info.admission)

    # The accept loop of the TCP listener, and its TcpStream; wss adds TLS per connection.
    with running(tls) if tls is not None else nullcontext():
        await accept_connections(
            listener,
            sockets,
            handle,
            handler_nursery=handler_nursery,
            gate=gate,
            task_status=task_status,
        )
