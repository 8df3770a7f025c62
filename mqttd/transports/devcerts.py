"""A development CA and server certificate, created once in the data directory.

With ``tls_dev_certs = true`` a tls/wss listener needs no certificate files from the operator:
the first start writes ``<data_dir>/tls/ca.pem`` (the CA to trust), ``server.pem`` (the
server certificate, valid for localhost, 127.0.0.1 and ::1, followed by the CA) and
``server.key``; later starts reuse them, so a browser that trusted the CA once keeps trusting
it. Files are written to a temporary name and renamed, so a crash never leaves half a key.
Creation holds an exclusive lock on ``<data_dir>/tls/.lock``: the workers of ``mqttd --workers
N`` start together, and without it each made its own CA and key and the files they renamed into
place mixed one worker's key with another's certificate.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog
import trustme

from mqttd.errors import StartupError

DEV_CERT_HOSTS = ("localhost", "127.0.0.1", "::1")

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class DevCerts:
    """Paths of the development certificate files."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def dev_cert_paths(data_dir: Path) -> DevCerts:
    """Where the development certificates live under ``data_dir``."""
    tls_dir = data_dir / "tls"
    return DevCerts(tls_dir / "ca.pem", tls_dir / "server.pem", tls_dir / "server.key")


def _write_private(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextmanager
def _creation_lock(tls_dir: Path) -> Iterator[None]:
    """Hold ``tls_dir/.lock`` exclusively (other processes of this data_dir wait)."""
    try:
        import fcntl  # POSIX; elsewhere there are no workers to race with
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(tls_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _complete(paths: DevCerts) -> bool:
    return all(p.is_file() for p in (paths.ca_file, paths.cert_file, paths.key_file))


def ensure_dev_certs(data_dir: Path) -> DevCerts:
    """Create the development CA and server certificate unless they already exist.

    Logs ``tls_dev_certs_created`` or ``tls_dev_certs_reused`` with the CA file to trust.

    Args:
        data_dir: the broker's data directory (``[broker] data_dir``).

    Returns:
        The paths of the CA, server certificate chain and server key.

    Raises:
        StartupError: the directory or files cannot be written.
    """
    paths = dev_cert_paths(data_dir)
    if not _complete(paths):
        try:
            paths.ca_file.parent.mkdir(parents=True, exist_ok=True)
            with _creation_lock(paths.ca_file.parent):
                created = not _complete(paths)  # another process may have made them meanwhile
                if created:
                    _create(paths)
        except OSError as exc:
            raise StartupError(
                f"cannot create development certificates in {paths.ca_file.parent}: "
                f"{exc.strerror}"
            ) from exc
        if created:
            _log_created(paths)
            return paths
    log.info(
        "tls_dev_certs_reused",
        ca_file=str(paths.ca_file),
        hint="trust this CA in your browser or client to avoid certificate warnings",
    )
    return paths


def _create(paths: DevCerts) -> None:
    ca = trustme.CA(organization_name="mqttd development CA")
    server = ca.issue_cert(*DEV_CERT_HOSTS, organization_name="mqttd development server")
    # Key first, CA last: a CA file present means the set is complete.
    _write_private(paths.key_file, server.private_key_pem.bytes(), 0o600)
    _write_private(
        paths.cert_file, b"".join(blob.bytes() for blob in server.cert_chain_pems), 0o644
    )
    _write_private(paths.ca_file, ca.cert_pem.bytes(), 0o644)


def _log_created(paths: DevCerts) -> None:
    log.info(
        "tls_dev_certs_created",
        ca_file=str(paths.ca_file),
        hosts=list(DEV_CERT_HOSTS),
        hint=(
            "trust this CA to avoid certificate warnings: import it as an authority in the "
            "browser (chrome://settings/certificates, Firefox: Settings > Certificates), or "
            "pass it to clients (mosquitto_sub --cafile, curl --cacert)"
        ),
    )
