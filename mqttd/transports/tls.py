"""TLS listeners (``type = "tls"``, mqtts) and the TLS layer shared with ``wss``.

Theory of operation: ``server_ssl_context`` builds the ``ssl.SSLContext`` a listener describes
(TLS 1.2 minimum, optional client certificates); a certificate problem is a ``StartupError``
with a one-line message, never a traceback. A running tls/wss listener keeps its context in a
``TlsContext``, which every accepted connection reads when it is wrapped in a
``trio.SSLStream``: a reload (SIGHUP, ``reload_certificates``) builds a whole new context from
the files and puts it there, so new handshakes trust exactly the new CA file and serve the new
certificate, while open connections keep the context they started with. Loading CA files into
the live context instead would only ever add CAs. The handshake runs in the connection's own
task under ``tls_handshake_timeout_s``, so a client that stalls or fails the handshake costs
only its own connection. A verified client certificate's common name becomes
``ConnectionInfo.tls_identity``.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog
import trio

from mqttd.config import ListenerConfig
from mqttd.errors import StartupError
from mqttd.transports import ConnectionInfo, Gate, Handler
from mqttd.transports.devcerts import ensure_dev_certs
from mqttd.transports.tcp import BoundSocket, accept_connections, open_listeners

log = structlog.get_logger()


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

    def wrap(
        self, stream: trio.abc.Stream, *, https_compatible: bool
    ) -> trio.SSLStream[trio.abc.Stream]:
        """The server side of TLS over an accepted ``stream``, with the current context."""
        return trio.SSLStream(
            stream, self.context, server_side=True, https_compatible=https_compatible
        )

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


def client_identity(stream: trio.SSLStream[Any]) -> str | None:
    """The common name of the client certificate the handshake verified, if any."""
    cert = stream.getpeercert()
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


async def tls_handshake(stream: trio.SSLStream[Any], timeout_s: float, logger: Any) -> bool:
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
            ssl_stream = tls.wrap(stream, https_compatible=False)
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
