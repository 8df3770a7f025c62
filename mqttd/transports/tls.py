"""TLS listeners (``type = "tls"``, mqtts) and the TLS layer shared with ``wss``.

Theory of operation: ``server_ssl_context`` builds the ``ssl.SSLContext`` a listener describes
(TLS 1.2 minimum, optional client certificates, no renegotiation); a certificate problem is a
``StartupError`` with a one-line message, never a traceback. A running tls/wss listener keeps its
context in a ``TlsContext``, which every accepted connection reads when its socket is wrapped in
a ``TlsStream``: a reload (SIGHUP, ``reload_certificates``) builds a whole new context from the
files and puts it there, so new handshakes trust exactly the new CA file and serve the new
certificate, while open connections keep the context they started with. Loading CA files into
the live context instead would only ever add CAs. The handshake runs in the connection's own
task under ``tls_handshake_timeout_s``, so a client that stalls or fails the handshake costs
only its own connection. A verified client certificate's common name becomes
``ConnectionInfo.tls_identity``.

``TlsStream`` is the server side of one TLS connection: a non-blocking stdlib socket and an
``ssl.SSLObject`` between two memory BIOs. Plaintext goes in with ``SSLObject.write``; the
records it produces collect in one buffer of ciphertext (``_held``) that only ever loses bytes
from its front, by a non-blocking ``socket.send`` -- so whoever writes (``try_send``,
``send_all``, a read that produced records, ``aclose``'s close_notify) appends and pushes
without a task switch, and ciphertext leaves in exactly the order the SSL object produced it.
Only ``send_all`` (and the handshake and ``aclose``) ever wait for the socket to become
writable, and only one of them at a time. Renegotiation is off, so after the handshake a write
never needs a read and a read never needs a write. A TCP EOF without close_notify reads as EOF
too (browsers drop TLS that way), and a TLS 1.3 server's session tickets wait in the buffer for
the first write, as trio's SSLStream does, so a client that only reads never finds unexpected
records.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Awaitable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import structlog
import trio

from mqttd.config import ListenerConfig
from mqttd.errors import StartupError
from mqttd.transports import ConnectionInfo, Gate, Handler, MqttStream
from mqttd.transports.devcerts import ensure_dev_certs
from mqttd.transports.tcp import (
    EAGER_READ_BYTES,
    RECEIVE_SIZE,
    BoundSocket,
    TcpStream,
    accept_connections,
    open_listeners,
)

log = structlog.get_logger()

#: How long ``TlsStream.aclose`` waits for the socket to take the close_notify (and whatever
#: ciphertext is still held before it).
CLOSE_TIMEOUT_S = 1.0


def _is_eof(exc: ssl.SSLError) -> bool:
    """A TCP EOF without close_notify (some builds report it as a plain SSLError)."""
    return isinstance(exc, ssl.SSLEOFError) or "UNEXPECTED_EOF_WHILE_READING" in str(exc)


class TlsStream(MqttStream):
    """The server side of one TLS connection over a non-blocking stdlib socket.

    Call ``do_handshake`` first (``tls_handshake`` does, under its deadline); the other
    methods run it themselves if it has not happened yet. One task may receive while another
    sends.

    Args:
        sock: the accepted, non-blocking socket; the stream owns it from now on.
        context: the server context (``TlsContext.context``).
    """

    __slots__ = (
        "_broken",
        "_closed",
        "_eager",
        "_eof",
        "_handshaking",
        "_handshook",
        "_held",
        "_incoming",
        "_outgoing",
        "_receiving",
        "_sending",
        "_sock",
        "_ssl",
    )

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self._sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        #: ciphertext the SSL object produced and the socket has not taken yet, in order
        self._held = bytearray()
        self._handshook = False
        self._handshaking = False
        self._broken = False  # a TLS or socket error: sends raise BrokenResourceError
        self._closed = False  # aclose/close_now was called
        self._eof = False  # close_notify or TCP EOF received: reads return b""
        self._receiving = False
        self._sending = False  # send_all, wait_send_all_might_not_block or aclose waits
        self._eager = False  # the last recv was large: recv again before waiting

    # -- ciphertext out: one buffer, pushed from its front -----------------------------------

    def _collect(self) -> None:
        """Append what the SSL object produced to the held ciphertext."""
        if self._outgoing.pending:
            self._held += self._outgoing.read()

    def _push(self) -> bool:
        """One non-blocking send of the held ciphertext.

        Returns:
            True when nothing is held any more.

        Raises:
            OSError: the socket failed (not EAGAIN).
        """
        held = self._held
        if not held:
            return True
        try:
            sent = self._sock.send(held)
        except (BlockingIOError, InterruptedError):
            return False
        del held[:sent]  # O(1) at a bytearray's front
        return not held

    def _push_quietly(self) -> None:
        """``_push`` for callers that do not report errors: a failure breaks the stream, and
        the next ``send_all`` raises."""
        try:
            self._push()
        except OSError:
            self._broken = True

    async def _flush(self) -> bool:
        """Write all held ciphertext, waiting while the socket is full.

        Returns:
            Whether it waited (a checkpoint happened).

        Raises:
            trio.ClosedResourceError: the stream was closed meanwhile.
            trio.BrokenResourceError: the socket failed.
        """
        waited = False
        sock = self._sock
        while True:
            if sock.fileno() == -1:
                raise trio.ClosedResourceError("the stream was closed")
            try:
                if self._push():
                    return waited
            except OSError as exc:
                self._broken = True
                raise trio.BrokenResourceError(exc) from exc
            await trio.lowlevel.wait_writable(sock)
            waited = True

    # -- ciphertext in ----------------------------------------------------------------------

    async def _fill(self) -> None:
        """Read ciphertext from the socket into the SSL object (a TCP EOF as EOF).

        Raises:
            trio.ClosedResourceError: the stream was closed meanwhile.
            trio.BrokenResourceError: the socket failed.
        """
        sock = self._sock
        eager = self._eager  # as TcpStream: skip the wait after a large read
        while True:
            if sock.fileno() == -1:
                raise trio.ClosedResourceError("the stream was closed")
            if not eager:
                await trio.lowlevel.wait_readable(sock)
            try:
                data = sock.recv(RECEIVE_SIZE)
                break
            except (BlockingIOError, InterruptedError):
                eager = False
            except OSError as exc:
                self._broken = True
                raise trio.BrokenResourceError(exc) from exc
        self._eager = len(data) >= EAGER_READ_BYTES
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    def _failed(self, exc: ssl.SSLError) -> trio.BrokenResourceError:
        """The stream is broken by a TLS error: send the alert the SSL object produced (it
        tells the peer why), as far as the socket takes it at once."""
        self._broken = True
        self._collect()
        self._push_quietly()
        return trio.BrokenResourceError(exc)

    # -- handshake --------------------------------------------------------------------------

    async def do_handshake(self) -> None:
        """Run the server side of the TLS handshake (a checkpoint once it is done).

        Raises:
            trio.BrokenResourceError: the handshake failed (``__cause__`` is the
                ``ssl.SSLError`` or ``OSError``; the alert was sent if the socket took it).
            trio.ClosedResourceError: the stream was closed.
            trio.BusyResourceError: another task is running the handshake.
        """
        if self._handshook:
            await trio.lowlevel.checkpoint()
            return
        if self._closed:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("the stream was closed")
        if self._broken:
            await trio.lowlevel.checkpoint()
            raise trio.BrokenResourceError("the TLS handshake failed")
        if self._handshaking:
            raise trio.BusyResourceError("another task is running the TLS handshake")
        self._handshaking = True
        try:
            await self._handshake()
        finally:
            self._handshaking = False

    async def _handshake(self) -> None:
        sslobj = self._ssl
        while True:
            try:
                sslobj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                raise self._failed(exc) from exc
            else:
                self._handshook = True
                self._collect()
                if sslobj.version() != "TLSv1.3":
                    # TLS 1.2: the server's Finished is in there, and the client waits for it.
                    await self._flush()
                # TLS 1.3: only session tickets are left, and they wait for the first write.
                return
            self._collect()
            await self._flush()
            await self._fill()

    # -- MqttStream -------------------------------------------------------------------------

    def try_send(self, data: bytes) -> int:
        """Encrypt ``data`` and push the ciphertext with one non-blocking send; what the socket
        does not take is held (``has_unsent``).

        Returns:
            ``len(data)``; 0 (nothing taken) before the handshake, when closed or broken,
            while a ``send_all`` is under way, or when ciphertext held from before still does
            not fit the socket.
        """
        if (
            not data
            or not self._handshook
            or self._closed
            or self._broken
            or self._sending
            or self._handshaking
        ):
            return 0
        try:
            if self._held and not self._push():
                return 0  # the socket is full: taking more would only grow the buffer
        except OSError:
            self._broken = True
            return 0
        try:
            self._write(data)
        except ssl.SSLError:
            self._broken = True
            return 0
        self._push_quietly()  # on failure the data was still taken: send_all raises
        return len(data)

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt all of ``data`` into the held ciphertext."""
        sslobj = self._ssl
        with memoryview(data) as view:
            while view:
                # A memory BIO takes everything; the loop only guards against a short write.
                view = view[sslobj.write(view) :]
        self._collect()

    @property
    def has_unsent(self) -> bool:
        """Whether ciphertext is held that the socket has not taken yet."""
        return bool(self._held)

    def close_now(self) -> bool:
        """Queue a close_notify, push what the socket takes at once, close; returns True."""
        if not self._closed:
            self._closed = True
            self._queue_close_notify()
            self._push_quietly()
            self._close_socket()
        return True

    def _queue_close_notify(self) -> None:
        if self._handshook and not self._broken:
            # Sends close_notify without waiting for the peer's (trio's SSLStream does the
            # same): an unwrap waiting for a reply could wait forever on a peer that does not
            # read. SSLWantReadError, the peer's close_notify not there yet, is expected.
            with suppress(ssl.SSLError):
                self._ssl.unwrap()
            self._collect()

    def _close_socket(self) -> None:
        sock = self._sock
        if sock.fileno() != -1:
            trio.lowlevel.notify_closing(sock)  # waiting tasks get ClosedResourceError
            sock.close()

    # -- trio.abc.Stream --------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Decrypted bytes as they arrive; ``b""`` after close_notify or a TCP EOF.

        Raises:
            trio.BusyResourceError: another task is receiving.
            trio.ClosedResourceError: the stream was closed.
            trio.BrokenResourceError: a TLS error or a socket failure.
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
            if self._closed:
                raise trio.ClosedResourceError("the stream was closed")
            if not self._handshook:
                await self.do_handshake()
            size = max_bytes or RECEIVE_SIZE
            sslobj = self._ssl
            while True:
                if self._eof:
                    data = b""
                else:
                    try:
                        data = sslobj.read(size)  # b"" at close_notify
                    except ssl.SSLWantReadError:
                        await self._fill()
                        continue
                    except ssl.SSLError as exc:
                        if not _is_eof(exc):
                            raise self._failed(exc) from exc
                        data = b""  # a TCP EOF without close_notify: EOF all the same
                    if not data:
                        self._eof = True
                    elif len(data) < size and self._incoming.pending:
                        data = self._read_more(data, size)
                    if self._outgoing.pending:
                        # Records a read produced (a TLS 1.3 KeyUpdate answer, an alert) join
                        # the writer's queue, never overtake it.
                        self._collect()
                        self._push_quietly()
                await trio.lowlevel.cancel_shielded_checkpoint()
                return data
        finally:
            self._receiving = False

    def _read_more(self, first: bytes, size: int) -> bytes:
        """``first`` plus the plaintext of further records already received, up to ``size``
        bytes: a client that writes each MQTT packet as its own record should not cost one
        ``receive_some`` per packet. An error or EOF is left for the next read to meet."""
        parts = [first]
        total = len(first)
        sslobj = self._ssl
        while total < size:
            try:
                more = sslobj.read(size - total)
            except ssl.SSLError:  # SSLWantReadError: nothing more yet
                break
            if not more:
                break
            parts.append(more)
            total += len(more)
        return b"".join(parts)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt ``data`` and write it after any held ciphertext; ``b""`` writes only what is
        held.

        Raises:
            trio.BusyResourceError: another task is sending.
            trio.ClosedResourceError: the stream was closed (also while waiting).
            trio.BrokenResourceError: a TLS error or a socket failure, now or earlier.
        """
        if self._sending:
            raise trio.BusyResourceError("another task is already sending")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            if self._closed:
                raise trio.ClosedResourceError("the stream was closed")
            if not self._handshook:
                await self.do_handshake()
            if self._broken:
                raise trio.BrokenResourceError("the TLS connection failed")
            if data:
                try:
                    self._write(data)
                except ssl.SSLError as exc:
                    raise self._failed(exc) from exc
            waited = await self._flush()
        finally:
            self._sending = False
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the socket is writable.

        Raises:
            trio.BusyResourceError: another task is sending.
            trio.ClosedResourceError: the stream was closed.
        """
        if self._sending:
            raise trio.BusyResourceError("another task is already sending")
        self._sending = True
        try:
            if self._closed:
                await trio.lowlevel.checkpoint()
                raise trio.ClosedResourceError("the stream was closed")
            await trio.lowlevel.wait_writable(self._sock)
        finally:
            self._sending = False

    async def aclose(self) -> None:
        """Send close_notify (with what is still held, within ``CLOSE_TIMEOUT_S``; at once
        only, if another task is sending) and close the socket."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            self._queue_close_notify()
            if self._sending:
                self._push_quietly()  # the sender waits on the socket: no second waiter
            elif self._held and not self._broken:
                self._sending = True
                try:
                    with trio.move_on_after(CLOSE_TIMEOUT_S):
                        await self._flush()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                finally:
                    self._sending = False
        finally:
            self._close_socket()
        await trio.lowlevel.checkpoint()

    # -- TLS details ------------------------------------------------------------------------

    def getpeercert(self) -> dict[str, Any] | None:
        """The verified client certificate (``ssl.SSLObject.getpeercert``), if any."""
        return self._ssl.getpeercert()

    def selected_alpn_protocol(self) -> str | None:
        """The protocol ALPN chose, if any."""
        return self._ssl.selected_alpn_protocol()

    def version(self) -> str | None:
        """The negotiated TLS version ("TLSv1.3"), once the handshake is done."""
        return self._ssl.version()


def _certificate_files(listener: ListenerConfig, data_dir: Path) -> tuple[Path, Path | None]:
    if listener.certfile is not None:
        return listener.certfile, listener.keyfile
    if listener.tls_dev_certs:
        dev = ensure_dev_certs(data_dir)
        return dev.cert_file, dev.key_file
    raise StartupError(
        f"{listener.type} listener {listener.host}:{listener.port}: "
        "set certfile and keyfile, or tls_dev_certs = true"
    )


class TlsContext:
    """The server TLS context of one running tls/wss listener, replaced whole on reload.

    Args:
        listener: the tls or wss listener.
        data_dir: where development certificates live.
        alpn: ALPN protocols to offer (``["http/1.1"]`` for wss).

    Raises:
        StartupError: the listener's certificate files are unusable.
    """

    __slots__ = ("alpn", "context", "data_dir", "listener")

    def __init__(
        self, listener: ListenerConfig, data_dir: Path, alpn: list[str] | None = None
    ) -> None:
        self.listener = listener
        self.data_dir = data_dir
        self.alpn = alpn
        #: the context new connections use; ``reload`` replaces it, never changes it
        self.context = server_ssl_context(listener, data_dir, alpn=alpn)

    def wrap(self, stream: trio.abc.Stream) -> TlsStream:
        """The server side of TLS over an accepted connection, with the current context.

        Args:
            stream: the ``TcpStream`` the accept loop made; its socket now belongs to the
                returned stream.

        Raises:
            TypeError: ``stream`` is not a ``TcpStream``.
        """
        if not isinstance(stream, TcpStream):
            raise TypeError(f"TLS needs a TcpStream, not {type(stream).__name__}")
        return TlsStream(stream.socket, self.context)

    def reload(self) -> None:
        """Build a new context from the listener's files and use it for new connections.

        Raises:
            StartupError: a file is missing or invalid; the current context stays.
        """
        self.context = server_ssl_context(self.listener, self.data_dir, alpn=self.alpn)


#: The TLS contexts of running listeners, so SIGHUP can reload them (``reload_certificates``).
_running: list[TlsContext] = []


@contextmanager
def running(tls: TlsContext) -> Iterator[None]:
    """Make ``tls`` reloadable by ``reload_certificates`` while the block runs."""
    _running.append(tls)
    try:
        yield
    finally:
        _running.remove(tls)


def reload_certificates(listeners: Iterable[ListenerConfig]) -> bool:
    """Re-read the certificate, key and CA files of these running tls/wss listeners (SIGHUP).

    Each listener gets a new TLS context built from its files, used by the connections
    accepted from now on; open connections keep theirs. A listener whose files are broken keeps
    its current context and the error is logged (``tls_reload_failed``).

    Returns:
        True if every listener took its files.
    """
    ok = True
    for listener in listeners:
        where = f"{listener.type} listener {listener.host}:{listener.port}"
        for tls in [t for t in _running if t.listener is listener]:
            try:
                tls.reload()
            except StartupError as exc:
                log.error("tls_reload_failed", listener=where, error=str(exc), kept="previous")
                ok = False
                continue
            certfile, _keyfile = _certificate_files(listener, tls.data_dir)
            log.info("tls_reloaded", listener=where, certfile=str(certfile))
    return ok


def server_ssl_context(
    listener: ListenerConfig, data_dir: Path, *, alpn: list[str] | None = None
) -> ssl.SSLContext:
    """Build the server-side TLS context a tls/wss listener describes.

    Uses ``certfile``/``keyfile`` when given, else the development certificates (created once
    under ``<data_dir>/tls/``) when ``tls_dev_certs`` is set. ``cafile`` makes the server verify
    client certificates: required with ``require_certificate``, optional otherwise.

    Raises:
        StartupError: no certificate configured, or a file is missing or invalid.
    """
    where = f"{listener.type} listener {listener.host}:{listener.port}"
    certfile, keyfile = _certificate_files(listener, data_dir)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # TlsStream relies on it: after the handshake a write never needs a read (TLS 1.2
    # renegotiation is also a known denial-of-service lever).
    context.options |= ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(f"{where}: cannot load certificate {certfile}: {exc}") from exc
    if listener.require_certificate and listener.cafile is None:
        raise StartupError(f"{where}: require_certificate = true needs cafile")
    if listener.cafile is not None:
        try:
            context.load_verify_locations(cafile=listener.cafile)
        except (OSError, ssl.SSLError) as exc:
            raise StartupError(f"{where}: cannot load cafile {listener.cafile}: {exc}") from exc
        context.verify_mode = (
            ssl.CERT_REQUIRED if listener.require_certificate else ssl.CERT_OPTIONAL
        )
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def client_identity(stream: TlsStream) -> str | None:
    """The common name of the client certificate the handshake verified, if any."""
    cert = stream.getpeercert()
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


async def tls_handshake(stream: TlsStream, timeout_s: float, logger: Any) -> bool:
    """Run the server handshake under a deadline; log and close on failure.

    Returns:
        True when the handshake completed; False when it failed or timed out (the stream is
        then closed and the reason logged as ``tls_handshake_failed``).
    """
    reason: str | None = None
    with trio.move_on_after(timeout_s) as scope:
        try:
            await stream.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            cause = exc.__cause__
            reason = str(cause) if cause is not None else "connection closed"
    if scope.cancelled_caught:
        reason = "timeout"
    if reason is None:
        return True
    logger.warning("tls_handshake_failed", reason=reason)
    await trio.aclose_forcefully(stream)
    return False


async def _serve_tls_connection(
    stream: trio.abc.Stream, info: ConnectionInfo, tls: TlsContext, handler: Handler
) -> None:
    """One accepted tls connection: TLS handshake, then ``handler``; leaves the gate at the end."""
    logger = log.bind(transport="tls", peer=info.peer)
    to_close: trio.abc.Stream = stream
    try:
        try:
            ssl_stream = tls.wrap(stream)
            to_close = ssl_stream
            if not await tls_handshake(ssl_stream, info.listener.tls_handshake_timeout_s, logger):
                return
            tls_info = ConnectionInfo(
                transport="tls",
                peer=info.peer,
                listener=info.listener,
                tls_identity=client_identity(ssl_stream),
                ip=info.ip,
            )
            await handler(ssl_stream, tls_info)
        except Exception:
            # The handler catches its own errors; this only keeps one bad connection from
            # taking the listener down with it.
            logger.exception("connection_task_failed")
        finally:
            await trio.aclose_forcefully(to_close)
    finally:
        if info.admission is not None:
            info.admission.leave(info.listener, info.ip)


async def serve_tls_listener(
    listener: ListenerConfig,
    handler: Handler,
    *,
    data_dir: Path,
    handler_nursery: trio.Nursery,
    gate: Gate | None = None,
    task_status: trio.TaskStatus[list[BoundSocket]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve MQTT over TLS until cancelled.

    Args:
        listener: a ``type = "tls"`` listener.
        handler: called with the decrypted byte stream and its ``ConnectionInfo``.
        data_dir: where development certificates live.
        handler_nursery: where connection tasks run.
        gate: admission control, applied before the TLS handshake.
        task_status: receives the list of bound sockets (``BoundSocket``).

    Raises:
        StartupError: certificates unusable or the port cannot be bound.
    """
    tls = TlsContext(listener, data_dir)

    def handle(stream: trio.abc.Stream, info: ConnectionInfo) -> Awaitable[None]:
        return _serve_tls_connection(stream, info, tls, handler)

    sockets = await open_listeners(listener)
    with running(tls):
        await accept_connections(
            listener,
            sockets,
            handle,
            handler_nursery=handler_nursery,
            gate=gate,
            task_status=task_status,
        )
