"""TLS listeners (``type = "tls"``, mqtts) and the TLS layer shared with ``wss``.

Theory of operation: ``server_ssl_context`` builds one ``ssl.SSLContext`` per listener at start
(TLS 1.2 minimum, optional client certificates); a certificate problem is a ``StartupError``
with a one-line message, never a traceback. Each accepted TCP connection is wrapped in a
``trio.SSLStream`` whose handshake runs in the connection's own task under
``tls_handshake_timeout_s``, so a client that stalls or fails the handshake costs only its own
connection. A verified client certificate's common name becomes ``ConnectionInfo.tls_identity``.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import structlog
import trio

from mqttd.config import ListenerConfig
from mqttd.errors import StartupError
from mqttd.transports import ConnectionInfo, Gate, Handler, gated
from mqttd.transports.devcerts import ensure_dev_certs
from mqttd.transports.peer import stream_peer

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


#: The TLS contexts of running listeners (by listener identity), so SIGHUP can reload their
#: certificate files in place: new handshakes use the new certificate, open connections stay.
_live_contexts: dict[int, tuple[ListenerConfig, Path, ssl.SSLContext, list[str] | None]] = {}


@contextmanager
def live_context(
    listener: ListenerConfig, data_dir: Path, context: ssl.SSLContext, alpn: list[str] | None
) -> Iterator[None]:
    """Register ``context`` as the running context of ``listener`` while the block runs."""
    _live_contexts[id(listener)] = (listener, data_dir, context, alpn)
    try:
        yield
    finally:
        _live_contexts.pop(id(listener), None)


def reload_certificates(listeners: Iterable[ListenerConfig]) -> bool:
    """Re-read the certificate, key and CA files of these running tls/wss listeners (SIGHUP).

    Files are checked in a fresh context first; a listener whose files are broken keeps its
    current certificate and the error is logged.

    Returns:
        True if every listener took its files.
    """
    ok = True
    for listener in listeners:
        entry = _live_contexts.get(id(listener))
        if entry is None:
            continue
        _listener, data_dir, context, alpn = entry
        where = f"{listener.type} listener {listener.host}:{listener.port}"
        try:
            server_ssl_context(listener, data_dir, alpn=alpn)  # validate before touching
        except StartupError as exc:
            log.error("tls_reload_failed", listener=where, error=str(exc), kept="previous")
            ok = False
            continue
        certfile, keyfile = _certificate_files(listener, data_dir)
        context.load_cert_chain(certfile, keyfile)
        if listener.cafile is not None:
            context.load_verify_locations(cafile=listener.cafile)
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


async def open_listeners(listener: ListenerConfig) -> list[trio.SocketListener]:
    """Bind the TCP sockets of a listener.

    Raises:
        StartupError: the address cannot be bound (in use, no permission, bad host).
    """
    try:
        return await trio.open_tcp_listeners(listener.port, host=listener.host)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StartupError(
            f"cannot listen on {listener.host}:{listener.port} ({listener.type}): {reason}"
        ) from exc


async def _serve_tls_connection(
    stream: trio.SSLStream[Any], listener: ListenerConfig, handler: Handler
) -> None:
    _, peer = stream_peer(stream)
    logger = log.bind(transport="tls", peer=peer)
    try:
        if not await tls_handshake(stream, listener.tls_handshake_timeout_s, logger):
            return
        info = ConnectionInfo(
            transport="tls", peer=peer, listener=listener, tls_identity=client_identity(stream)
        )
        await handler(stream, info)
    except Exception:
        # The handler catches its own errors; this only keeps one bad connection from
        # taking the listener down with it.
        logger.exception("connection_task_failed")
    finally:
        await trio.aclose_forcefully(stream)


async def serve_tls_listener(
    listener: ListenerConfig,
    handler: Handler,
    *,
    data_dir: Path,
    handler_nursery: trio.Nursery,
    gate: Gate | None = None,
    task_status: trio.TaskStatus[list[trio.SSLListener[trio.SocketStream]]] = (
        trio.TASK_STATUS_IGNORED
    ),
) -> None:
    """Serve MQTT over TLS until cancelled.

    Args:
        listener: a ``type = "tls"`` listener.
        handler: called with the decrypted byte stream and its ``ConnectionInfo``.
        data_dir: where development certificates live.
        handler_nursery: where connection tasks run.
        task_status: receives the list of bound ``trio.SSLListener`` objects.

    Raises:
        StartupError: certificates unusable or the port cannot be bound.
    """
    context = server_ssl_context(listener, data_dir)
    tcp_listeners = await open_listeners(listener)
    ssl_listeners = [
        trio.SSLListener(tcp, context, https_compatible=False) for tcp in tcp_listeners
    ]
    with live_context(listener, data_dir, context, None):
        await trio.serve_listeners(
            partial(
                gated,
                gate,
                listener,
                partial(_serve_tls_connection, listener=listener, handler=handler),
            ),
            ssl_listeners,
            handler_nursery=handler_nursery,
            task_status=task_status,
        )
