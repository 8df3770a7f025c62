"""Benchmark: how long a 1 MiB message takes from a TCP publisher to a TCP, ws or wss subscriber.

Starts ``python -m mqttd`` with tcp, ws and wss listeners on free ports (wss with development
certificates in a temporary data directory), then for each subscriber transport publishes a
1 MiB QoS 1 message over TCP ``--rounds`` times and reports the time from ``publish()`` to the
subscriber's ``on_message`` (min / median / max, in milliseconds).

    python scripts/bench_ws_1mb.py [--rounds 10] [--size 1048576]
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from conformance.broker_process import listeners_toml, start_mqttd

CONFIG = '[broker]\ndata_dir = "data"\n[auth]\nallow_anonymous = true\n' + listeners_toml(
    "tcp", "ws", "wss"
)
WAIT_S = 60.0


def client(
    role: str, transport: str, port: int, ca_file: Path
) -> tuple[paho.Client, queue.Queue[float]]:
    """A connected paho client; the queue receives the arrival time of each message."""
    arrivals: queue.Queue[float] = queue.Queue()
    connected = threading.Event()
    c = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-{role}-{transport}-{os.getpid()}",
        transport="websockets" if transport in ("ws", "wss") else "tcp",
    )
    if transport == "wss":
        c.tls_set(ca_certs=str(ca_file))
    c.on_connect = lambda *args: connected.set()
    c.on_message = lambda *args: arrivals.put(time.perf_counter())
    c.connect("localhost", port)
    c.loop_start()
    if not connected.wait(WAIT_S):
        raise SystemExit(f"could not connect over {transport}")
    return c, arrivals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--size", type=int, default=1024 * 1024)
    args = parser.parse_args()
    payload = os.urandom(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "mqttd.toml"
        config.write_text(CONFIG)
        with start_mqttd(config) as broker:
            ports = broker.ports
            ca_file = Path(tmp) / "data" / "tls" / "ca.pem"
            publisher, _ = client("pub", "tcp", ports["tcp"], ca_file)
            print(f"{args.size} bytes, {args.rounds} rounds, TCP publisher, QoS 1")
            for transport in ("tcp", "ws", "wss"):
                subscriber, arrivals = client("sub", transport, ports[transport], ca_file)
                subscribed = threading.Event()
                subscriber.on_subscribe = lambda *a, ev=subscribed: ev.set()
                subscriber.subscribe(f"bench/{transport}", 1)
                if not subscribed.wait(WAIT_S):
                    raise SystemExit("no SUBACK")
                times = []
                for _ in range(args.rounds):
                    start = time.perf_counter()
                    publisher.publish(f"bench/{transport}", payload, 1)
                    times.append((arrivals.get(timeout=WAIT_S) - start) * 1000)
                subscriber.disconnect()
                subscriber.loop_stop()
                print(
                    f"  {transport:>3} subscriber: min {min(times):7.1f} ms  "
                    f"median {statistics.median(times):7.1f} ms  max {max(times):7.1f} ms"
                )
            publisher.disconnect()
            publisher.loop_stop()


if __name__ == "__main__":
    main()
