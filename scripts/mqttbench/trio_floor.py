"""The least a trio server does per MQTT connect: ``bench_connects.py``'s ``trio-floor`` form.

Not a broker: it accepts (a batch at a time, non-blocking, ``TCP_NODELAY``, as mqttd's accept
loop does), runs one task per connection, reads once -- the CONNECT, taken on trust -- answers
with a fixed CONNACK and holds the connection until the client closes it. What mqttd spends
per connect above this is mqttd's own work (the CONNECT's checks, the session, the log line,
the timeouts); what this spends is trio's and the kernel's, the floor of any mqttd design.

Run as a script: ``python trio_floor.py`` binds a free loopback port, prints it on one line
and serves until terminated; ``--reuse-port`` gives the socket SO_REUSEPORT and ``--port N``
binds N, so that two of them share one port as mqttd's workers do (``trio-floor-x2``).
"""

from __future__ import annotations

import argparse
import socket
import sys

import trio

#: CONNACK: session present 0, return code 0 (accepted).
CONNACK = b"\x20\x02\x00\x00"
#: Connections accepted before the accept loop waits again (mqttd's ACCEPT_BATCH).
ACCEPT_BATCH = 64


async def _hold(sock: socket.socket) -> None:
    with sock:
        await trio.lowlevel.wait_readable(sock)
        try:
            if not sock.recv(65536):
                return
            sock.send(CONNACK)
            while True:
                await trio.lowlevel.wait_readable(sock)
                if not sock.recv(65536):
                    return
        except OSError:
            return
        finally:
            trio.lowlevel.notify_closing(sock)


async def serve(listening: socket.socket) -> None:
    """Accept on ``listening`` (bound, listening, non-blocking) until cancelled."""
    async with trio.open_nursery() as nursery:
        while True:
            await trio.lowlevel.wait_readable(listening)
            for _ in range(ACCEPT_BATCH):
                try:
                    sock, _address = listening.accept()
                except BlockingIOError:
                    break
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
                nursery.start_soon(_hold, sock)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="the least a trio server does per connect")
    parser.add_argument("--port", type=int, default=0, help="loopback port (0: a free one)")
    parser.add_argument("--reuse-port", action="store_true", help="set SO_REUSEPORT")
    args = parser.parse_args(argv)
    listening = socket.socket()
    if args.reuse_port:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listening.bind(("127.0.0.1", args.port))
    listening.listen(0xFFFF)
    listening.setblocking(False)
    print(listening.getsockname()[1], flush=True)
    trio.run(serve, listening)


if __name__ == "__main__":
    sys.exit(main())
