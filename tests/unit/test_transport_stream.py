"""The MqttStream interface: which transports implement it, and StreamAdapter for the rest."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from mqttd.transports import MqttStream, StreamAdapter, as_mqtt_stream
from mqttd.transports.tcp import TcpStream
from mqttd.transports.tls import TlsStream
from mqttd.transports.ws import WebSocketStream

TIMEOUT_S = 10


def test_every_transport_stream_implements_the_interface() -> None:
    """TcpStream, TlsStream and WebSocketStream are MqttStreams: the driver needs no probing."""
    for cls in (TcpStream, TlsStream, WebSocketStream, StreamAdapter):
        assert issubclass(cls, MqttStream)
        assert issubclass(cls, trio.abc.Stream)


def test_the_interface_cannot_be_instantiated_half_done() -> None:
    """A stream that leaves try_send, has_unsent or close_now out is refused at construction."""

    class Partial(MqttStream):
        async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...
        async def wait_send_all_might_not_block(self) -> None: ...
        async def receive_some(self, max_bytes: int | None = None) -> bytes:
            return b""

        async def aclose(self) -> None: ...

    with pytest.raises(TypeError, match="try_send"):
        Partial()  # type: ignore[abstract]


def test_as_mqtt_stream_keeps_mqtt_streams_and_adapts_the_rest() -> None:
    """as_mqtt_stream returns an MqttStream unchanged and wraps any other trio stream."""
    ours, theirs = socket.socketpair()
    tcp = TcpStream(ours)
    assert as_mqtt_stream(tcp) is tcp
    a, _b = trio.testing.memory_stream_pair()
    adapted = as_mqtt_stream(a)
    assert isinstance(adapted, StreamAdapter)
    assert adapted.stream is a
    ours.close()
    theirs.close()


async def test_stream_adapter_never_sends_without_awaiting_and_delegates_the_rest() -> None:
    """The adapter's try_send takes nothing, it holds nothing, close_now leaves the close to
    aclose; send_all, receive_some and aclose reach the wrapped stream."""
    a, b = trio.testing.memory_stream_pair()
    stream = StreamAdapter(a)
    assert stream.try_send(b"x") == 0
    assert not stream.has_unsent
    assert not stream.close_now()
    with trio.fail_after(TIMEOUT_S):
        await stream.send_all(b"hello")
        assert await b.receive_some() == b"hello"
        await b.send_all(b"world")
        assert await stream.receive_some(100) == b"world"
        await stream.wait_send_all_might_not_block()
        await stream.aclose()
        assert await b.receive_some() == b""


async def test_stream_adapter_passes_trios_generic_stream_checks() -> None:
    """Wrapped memory streams still behave as trio streams (lockstep streams clog)."""

    async def maker() -> tuple[StreamAdapter, StreamAdapter]:
        a, b = trio.testing.memory_stream_pair()
        return StreamAdapter(a), StreamAdapter(b)

    async def clogged() -> tuple[StreamAdapter, StreamAdapter]:
        a, b = trio.testing.lockstep_stream_pair()
        return StreamAdapter(a), StreamAdapter(b)

    with trio.fail_after(60):
        await trio.testing.check_two_way_stream(maker, clogged)
