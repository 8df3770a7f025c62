"""A byte-level MQTT test client over any trio stream, independent of ``mqttd.codec``.

It frames incoming packets by their fixed header only (``wire.Framer``), so tests compare exact
bytes built with ``tests.helpers.wire``.
"""

from __future__ import annotations

from collections import deque

import trio

from tests.helpers import wire

#: Every network wait in a test is bounded by this many seconds of trio time.
TIMEOUT_S = 10.0

#: Clients opened by the current test; the ``close_wire_clients`` fixture closes them.
OPEN_CLIENTS: list[WireClient] = []


class WireClient:
    """Sends raw bytes and reads whole MQTT packets as bytes."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._framer = wire.Framer()
        self._packets: deque[bytes] = deque()  # whole packets read but not yet returned
        OPEN_CLIENTS.append(self)

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> WireClient:
        with trio.fail_after(TIMEOUT_S):
            return cls(await trio.open_tcp_stream(host, port))

    async def send(self, data: bytes) -> None:
        with trio.fail_after(TIMEOUT_S):
            await self.stream.send_all(data)

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        if not data:
            return False
        self._packets.extend(self._framer.feed_raw(data))
        return True

    async def read_packet(self, timeout: float = TIMEOUT_S) -> bytes:
        """The next whole packet; fails if the connection closes first."""
        with trio.fail_after(timeout):
            while not self._packets:
                if not await self._fill():
                    raise EOFError("connection closed before a whole packet arrived")
        return self._packets.popleft()

    async def expect(self, expected: bytes) -> None:
        """Read one packet and assert it is exactly ``expected``."""
        packet = await self.read_packet()
        assert packet.hex(" ") == expected.hex(" ")

    async def expect_closed(self, timeout: float = TIMEOUT_S) -> None:
        """Assert the server closes the connection, with no further packet before it."""
        with trio.fail_after(timeout):
            while True:
                try:
                    if not await self._fill():
                        break
                except (trio.BrokenResourceError, ConnectionResetError):
                    break
        unread = b"".join(self._packets) + self._framer.unparsed()
        assert not unread, f"unexpected bytes before close: {unread.hex(' ')}"

    async def aclose(self) -> None:
        with trio.move_on_after(1):
            await self.stream.aclose()


async def connect_client(
    port: int, client_id: str, *, session_present: bool = False, **connect_args: object
) -> WireClient:
    """Open a socket, CONNECT, and assert the CONNACK accepts with ``session_present``."""
    client = await WireClient.open(port)
    await client.send(wire.connect(client_id, **connect_args))  # type: ignore[arg-type]
    await client.expect(wire.connack(session_present, 0))
    return client


async def subscribe(client: WireClient, pid: int, *subscriptions: tuple[str, int]) -> None:
    """SUBSCRIBE and assert the SUBACK grants exactly the requested QoS values."""
    await client.send(wire.subscribe(pid, subscriptions))
    await client.expect(wire.suback(pid, [qos for _, qos in subscriptions]))


async def sync(client: WireClient) -> None:
    """Round-trip a PINGREQ: everything the broker sent before PINGRESP has been read first."""
    await client.send(wire.pingreq())
    await client.expect(wire.pingresp())
