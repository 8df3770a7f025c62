"""The brokers a benchmark run starts: Mosquitto and mqttd on free loopback ports, each in its
own work directory, with throw-away TLS certificates for the wss listener.

Both start through ``conformance.broker_process``, which waits for the broker's own "ready" log
lines (Mosquitto's "running", mqttd's ``listener_started`` per listener) instead of polling.
"""

from __future__ import annotations

import contextlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

from conformance.broker_process import (
    MOSQUITTO,
    BrokerProcess,
    free_port,
    listeners_toml,
    mqttd_version,
    start_mosquitto,
    start_mqttd,
)

from .load import Target


@dataclass
class Certs:
    """A throw-away CA and a server certificate for 127.0.0.1/localhost."""

    cafile: str
    certfile: str
    keyfile: str


def make_certs(directory: Path) -> Certs | None:
    """Create development certificates with trustme (None if it is not installed)."""
    try:
        import trustme
    except ImportError:
        return None
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    paths = Certs(
        str(directory / "ca.pem"), str(directory / "server.pem"), str(directory / "key.pem")
    )
    ca.cert_pem.write_to_path(paths.cafile)
    cert.cert_chain_pems[0].write_to_path(paths.certfile)
    cert.private_key_pem.write_to_path(paths.keyfile)
    return paths


@dataclass
class Broker:
    """A broker process this benchmark started, and where to reach it."""

    name: str
    process: BrokerProcess
    target: Target

    def exited(self) -> bool:
        """True if the process has ended."""
        return self.process.proc.poll() is not None

    def tail(self) -> str:
        """Its last log lines, for an error message."""
        return self.process.log.tail_text()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it takes too long (bounded)."""
        self.process.stop()


def start_mosquitto_broker(workdir: Path, certs: Certs | None) -> Broker:
    """Start Mosquitto with a generated config on free loopback ports."""
    ports = {"tcp": free_port(), "ws": free_port()}
    lines = [
        "per_listener_settings false",
        "allow_anonymous true",
        "set_tcp_nodelay true",
        "persistence false",
        "max_queued_messages 1000000",
        "max_inflight_messages 20",
        f"listener {ports['tcp']} 127.0.0.1",
        # A websockets listener only starts in 2.0.11 when a plain listener exists too.
        f"listener {ports['ws']} 127.0.0.1",
        "protocol websockets",
    ]
    if certs is not None:
        ports["wss"] = free_port()
        lines += [
            f"listener {ports['wss']} 127.0.0.1",
            "protocol websockets",
            f"certfile {certs.certfile}",
            f"keyfile {certs.keyfile}",
        ]
    process = start_mosquitto("\n".join(lines), workdir, ports)
    target = Target("mosquitto", "127.0.0.1", ports, process.pid, certs.cafile if certs else None)
    return Broker("mosquitto", process, target)


def mqttd_toml(transports: list[str], certs: Certs | None, data_dir: Path) -> str:
    """An mqttd config with one listener per transport on port 0 and deep queues."""
    parts = [
        f'[broker]\ndata_dir = "{data_dir}"\n',
        "[limits]\nmax_queued_messages = 1000000\nmax_queued_bytes = 1073741824\n",
    ]
    for t in transports:
        if t == "wss" and certs is not None:
            files = {"certfile": certs.certfile, "keyfile": certs.keyfile}
            parts.append(listeners_toml(t, host="127.0.0.1", **files))
        else:
            parts.append(listeners_toml(t, host="127.0.0.1"))
    return "\n".join(parts)


def start_mqttd_broker(workdir: Path, certs: Certs | None) -> Broker:
    """Start mqttd; fall back to fewer listener types if this build rejects some."""
    wanted = ["tcp", "ws"] + (["wss"] if certs is not None else [])
    attempts = [wanted, ["tcp", "ws"], ["tcp"]]
    last_error = ""
    for transports in attempts:
        conf = workdir / "mqttd.toml"
        conf.write_text(mqttd_toml(transports, certs, workdir / "mqttd-data"))
        try:
            process = start_mqttd(conf, cwd=workdir, timeout_s=20.0)
        except RuntimeError as exc:
            last_error = str(exc)
            continue
        target = Target(
            "mqttd", "127.0.0.1", process.ports, process.pid, certs.cafile if certs else None
        )
        return Broker("mqttd", process, target)
    raise RuntimeError(f"mqttd did not start: {last_error}")


def version_of(name: str) -> str:
    """Version string of a broker binary/package."""
    if name == "mqttd":
        return mqttd_version()
    with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
        out = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, timeout=5).stdout
        return out.splitlines()[0].replace("mosquitto version ", "")
    return "?"
