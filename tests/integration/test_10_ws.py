"""WebSocket listeners over real loopback sockets, with a wsproto client and an echo handler."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from mqttd.config import ListenerConfig
from mqttd.errors import StartupError
from mqttd.transports import ConnectionInfo
from mqttd.transports.ws import WebSocketStream, open_websocket_stream, serve_ws_listener

TIMEOUT_S = 20


@dataclass
class EchoServer:
    """A ws listener whose handler echoes bytes and records each ConnectionInfo."""

    port: int
    infos: list[ConnectionInfo] = field(default_factory=list)
    streams: list[trio.abc.Stream] = field(default_factory=list)


async def start_echo(nursery: trio.Nursery, tmp_path: Path, **kwargs: object) -> EchoServer:
    server = EchoServer(port=0)

    async def echo(stream: trio.abc.Stream, info: ConnectionInfo) -> None:
        server.infos.append(info)
        server.streams.append(stream)
        try:
            while data := await stream.receive_some():
                await stream.send_all(data)
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)  # the handler owns the stream

    listener = ListenerConfig(type="ws", host="127.0.0.1", port=0, **kwargs)  # type: ignore[arg-type]
    listeners = await nursery.start(
        lambda task_status: serve_ws_listener(
            listener, echo, data_dir=tmp_path, handler_nursery=nursery, task_status=task_status
        )
    )
    server.port = listeners[0].socket.getsockname()[1]
    return server


@pytest.fixture
async def echo_server(nursery: trio.Nursery, tmp_path: Path) -> EchoServer:
    return await start_echo(nursery, tmp_path)


OPEN_STREAMS: list[trio.abc.Stream] = []


@pytest.fixture
async def close_client_streams() -> AsyncIterator[None]:
    """Close every client stream a test opened (requested explicitly: pytest-trio skips
    async autouse fixtures)."""
    yield
    while OPEN_STREAMS:
        await trio.aclose_forcefully(OPEN_STREAMS.pop())


async def open_tcp(port: int) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    OPEN_STREAMS.append(stream)
    return stream


class RawClient:
    """A wsproto client on a real socket."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)

    async def send(self, event: object) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def next_event(self) -> object:
        while True:
            for event in self.ws.events():
                return event
            data = await self.stream.receive_some(65536)
            self.ws.receive_data(data if data else None)

    async def handshake(
        self,
        subprotocols: list[str],
        headers: list[tuple[bytes, bytes]] | None = None,
        target: str = "/mqtt",
    ) -> AcceptConnection | RejectConnection:
        await self.send(
            Request(
                host="localhost",
                target=target,
                subprotocols=subprotocols,
                extra_headers=headers or [],
            )
        )
        event = await self.next_event()
        assert isinstance(event, AcceptConnection | RejectConnection)
        return event

    async def reject_body(self) -> bytes:
        body = bytearray()
        while True:
            event = await self.next_event()
            if isinstance(event, RejectData):
                body += event.data
                if event.body_finished:
                    return bytes(body)
            elif isinstance(event, CloseConnection):
                return bytes(body)


async def connect(server: EchoServer) -> RawClient:
    return RawClient(await open_tcp(server.port))


@pytest.mark.parametrize("subprotocol", ["mqtt", "mqttv3.1"])
async def test_subprotocol_is_echoed(
    close_client_streams: None, echo_server: EchoServer, subprotocol: str
) -> None:
    """Both MQTT subprotocols are accepted and answered with the one offered."""
    with trio.fail_after(TIMEOUT_S):
        client = await connect(echo_server)
        event = await client.handshake(["chat", subprotocol])
        assert isinstance(event, AcceptConnection)
        assert event.subprotocol == subprotocol


async def test_client_preference_wins(close_client_streams: None, echo_server: EchoServer) -> None:
    """When both MQTT subprotocols are offered, the client's first choice is taken."""
    with trio.fail_after(TIMEOUT_S):
        client = await connect(echo_server)
        event = await client.handshake(["mqttv3.1", "mqtt"])
        assert isinstance(event, AcceptConnection)
        assert event.subprotocol == "mqttv3.1"


@pytest.mark.parametrize("offered", [[], ["chat"], ["mqttv5x"]])
async def test_missing_or_bad_subprotocol_is_400(
    close_client_streams: None, echo_server: EchoServer, offered: list[str]
) -> None:
    """A handshake without an MQTT subprotocol is refused with 400 and never reaches MQTT."""
    with trio.fail_after(TIMEOUT_S):
        client = await connect(echo_server)
        with capture_logs() as logs:
            event = await client.handshake(offered)
            body = await client.reject_body()
        assert isinstance(event, RejectConnection)
        assert event.status_code == 400
        assert b"mqtt" in body
        assert echo_server.infos == []
        assert any(e["event"] == "ws_handshake_rejected" for e in logs)


async def test_echo_over_socket_split_and_coalesced(
    close_client_streams: None, echo_server: EchoServer
) -> None:
    """[MQTT-6.0.0-2] bytes split over messages and coalesced in one write come back intact."""
    with trio.fail_after(TIMEOUT_S):
        client = await connect(echo_server)
        assert isinstance(await client.handshake(["mqtt"]), AcceptConnection)
        payload = bytes(range(256)) * 40
        frames = b"".join(
            client.ws.send(BytesMessage(data=payload[i : i + 1000]))
            for i in range(0, len(payload), 1000)
        )
        await client.stream.send_all(frames)
        got = bytearray()
        while len(got) < len(payload):
            event = await client.next_event()
            assert isinstance(event, BytesMessage)
            got += event.data
        assert got == payload


async def test_text_frame_closes_1003(close_client_streams: None, echo_server: EchoServer) -> None:
    """[MQTT-6.0.0-1] a text frame gets close code 1003 from the server."""
    with trio.fail_after(TIMEOUT_S):
        client = await connect(echo_server)
        assert isinstance(await client.handshake(["mqtt"]), AcceptConnection)
        await client.send(TextMessage(data="CONNECT"))
        event = await client.next_event()
        assert isinstance(event, CloseConnection)
        assert event.code == 1003


async def test_ping_and_close_handshake(
    close_client_streams: None, echo_server: EchoServer
) -> None:
    """Ping gets a pong; a close frame gets a close reply with the same code."""
    with trio.fail_after(TIMEOUT_S):
        client = await connect(echo_server)
        assert isinstance(await client.handshake(["mqtt"]), AcceptConnection)
        await client.send(Ping(payload=b"p1"))
        pong = await client.next_event()
        assert isinstance(pong, Pong)
        assert pong.payload == b"p1"
        await client.send(CloseConnection(code=1000))
        reply = await client.next_event()
        assert isinstance(reply, CloseConnection)
        assert reply.code == 1000


async def test_oversize_message_closes_1009(
    close_client_streams: None, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A message over ws_max_message_size is refused with close code 1009."""
    server = await start_echo(nursery, tmp_path, ws_max_message_size=1024)
    with trio.fail_after(TIMEOUT_S):
        client = await connect(server)
        assert isinstance(await client.handshake(["mqtt"]), AcceptConnection)
        await client.send(BytesMessage(data=b"x" * 2048))
        while True:
            event = await client.next_event()
            if isinstance(event, CloseConnection):
                break
        assert event.code == 1009


async def test_bad_origin_is_403(
    close_client_streams: None, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """With allowed_origins set, other origins get 403 and listed ones are accepted."""
    server = await start_echo(nursery, tmp_path, allowed_origins=("https://good.example",))
    with trio.fail_after(TIMEOUT_S):
        bad = await connect(server)
        event = await bad.handshake(["mqtt"], [(b"Origin", b"https://evil.example")])
        assert isinstance(event, RejectConnection)
        assert event.status_code == 403
        good = await connect(server)
        event = await good.handshake(["mqtt"], [(b"Origin", b"https://GOOD.example")])
        assert isinstance(event, AcceptConnection)
        no_origin = await connect(server)
        assert isinstance(await no_origin.handshake(["mqtt"]), AcceptConnection)
        for client in (good, no_origin):
            await client.send(BytesMessage(data=b"\xc0\x00"))
            assert isinstance(await client.next_event(), BytesMessage)
        assert len(server.infos) == 2


async def test_forwarded_for_from_trusted_proxy(
    close_client_streams: None, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """X-Forwarded-For sets the peer when the proxy is trusted."""
    server = await start_echo(nursery, tmp_path, trusted_proxies=("127.0.0.1",))
    with trio.fail_after(TIMEOUT_S):
        client = await connect(server)
        event = await client.handshake(["mqtt"], [(b"X-Forwarded-For", b"203.0.113.9")])
        assert isinstance(event, AcceptConnection)
        await client.send(BytesMessage(data=b"\xc0\x00"))
        assert isinstance(await client.next_event(), BytesMessage)
        assert server.infos[0].peer == "203.0.113.9"
        assert server.infos[0].transport == "ws"


async def test_forwarded_for_ignored_from_untrusted_peer(
    close_client_streams: None, echo_server: EchoServer
) -> None:
    """X-Forwarded-For from an untrusted peer is ignored: the socket address is used."""
    with trio.fail_after(TIMEOUT_S):
        client = await connect(echo_server)
        event = await client.handshake(["mqtt"], [(b"X-Forwarded-For", b"203.0.113.9")])
        assert isinstance(event, AcceptConnection)
        await client.send(BytesMessage(data=b"\xc0\x00"))
        assert isinstance(await client.next_event(), BytesMessage)
        local_port = client.stream.socket.getsockname()[1]
        assert echo_server.infos[0].peer == f"127.0.0.1:{local_port}"


async def test_upgrade_to_other_path_is_404(
    close_client_streams: None, echo_server: EchoServer
) -> None:
    """A WebSocket upgrade to a path other than `path` is refused with 404."""
    with trio.fail_after(TIMEOUT_S):
        client = await connect(echo_server)
        event = await client.handshake(["mqtt"], target="/other")
        assert isinstance(event, RejectConnection)
        assert event.status_code == 404


async def test_missing_websocket_key_is_400(
    close_client_streams: None, echo_server: EchoServer
) -> None:
    """An upgrade request without Sec-WebSocket-Key is a 400."""
    with trio.fail_after(TIMEOUT_S):
        stream = await open_tcp(echo_server.port)
        await stream.send_all(
            b"GET /mqtt HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        )
        response = b""
        while chunk := await stream.receive_some(4096):
            response += chunk
        assert response.startswith(b"HTTP/1.1 400 ")


async def test_handshake_timeout_closes_connection(
    close_client_streams: None,
    nursery: trio.Nursery,
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that never finishes its upgrade request is dropped at the deadline."""
    server = await start_echo(nursery, tmp_path, ws_handshake_timeout_s=5.0)
    with trio.fail_after(TIMEOUT_S):
        stream = await open_tcp(server.port)
        with capture_logs() as logs:
            await stream.send_all(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n")
            start = trio.current_time()
            assert await stream.receive_some(4096) == b""
        assert trio.current_time() - start >= 5.0
        assert any(e["event"] == "http_request_timeout" for e in logs)
        assert server.infos == []


async def test_client_twin_round_trip(close_client_streams: None, echo_server: EchoServer) -> None:
    """open_websocket_stream (the client twin) talks to the server as a plain byte stream."""
    with trio.fail_after(TIMEOUT_S):
        transport = await open_tcp(echo_server.port)
        stream = await open_websocket_stream(transport, host="localhost", subprotocols=("mqtt",))
        assert isinstance(stream, WebSocketStream)
        assert stream.subprotocol == "mqtt"
        await stream.send_all(b"\x10\x00")
        assert await stream.receive_some() == b"\x10\x00"
        await stream.aclose()


async def test_client_close_delivers_eof_to_handler(
    close_client_streams: None, echo_server: EchoServer
) -> None:
    """A client close frame ends the handler's stream with EOF, then the server closes TCP."""
    with trio.fail_after(TIMEOUT_S):
        client = await connect(echo_server)
        assert isinstance(await client.handshake(["mqtt"]), AcceptConnection)
        await client.send(CloseConnection(code=1000, reason="bye"))
        reply = await client.next_event()
        assert isinstance(reply, CloseConnection)
        # The echo handler returns on EOF and the server then closes the TCP connection.
        assert await client.stream.receive_some(4096) == b""
        server_stream = echo_server.streams[0]
        assert isinstance(server_stream, WebSocketStream)
        assert server_stream.close_code == 1000
        assert server_stream.close_reason == "bye"


async def test_port_in_use_is_startup_error(
    close_client_streams: None, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Binding a port that is already taken raises StartupError with a one-line message."""
    server = await start_echo(nursery, tmp_path)
    listener = ListenerConfig(type="ws", host="127.0.0.1", port=server.port)

    async def handler(stream: trio.abc.Stream, info: ConnectionInfo) -> None:
        raise AssertionError("never called")

    with pytest.raises(StartupError, match=f"127.0.0.1:{server.port}"):
        await serve_ws_listener(listener, handler, data_dir=tmp_path, handler_nursery=nursery)


async def test_handler_crash_does_not_kill_listener(
    close_client_streams: None, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A handler that fails to start (the broker's builds its connection first) is logged,
    the client's stream closed, and the listener keeps accepting."""
    calls: list[str] = []

    def crashing(stream: trio.abc.Stream, info: ConnectionInfo) -> Awaitable[None]:
        calls.append(info.peer)
        raise RuntimeError("boom")

    listener = ListenerConfig(type="ws", host="127.0.0.1", port=0)
    listeners = await nursery.start(
        lambda task_status: serve_ws_listener(
            listener, crashing, data_dir=tmp_path, handler_nursery=nursery, task_status=task_status
        )
    )
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(TIMEOUT_S), capture_logs() as logs:
        for _ in range(2):
            transport = await open_tcp(port)
            stream = await open_websocket_stream(transport, host="localhost")
            assert await stream.receive_some() == b""
    assert len(calls) == 2
    assert [e["event"] for e in logs].count("connection_task_failed") == 2


async def test_broker_over_ws_delivers_large_and_fanned_out_messages(nursery: trio.Nursery) -> None:
    """Through the broker over plain ws: a 3 MiB message (more than one non-blocking send takes,
    so the writer finishes the frame) and a small one after it arrive whole and in order, at
    every ws subscriber, while a publisher on TCP is acknowledged."""
    from mqttd.config import Config, StoreConfig
    from mqttd.server import serve
    from tests.helpers import wire
    from tests.helpers.client import WireClient, connect_client

    config = Config(
        listeners=(ListenerConfig(port=0), ListenerConfig(type="ws", port=0)),
        store=StoreConfig(durability="memory"),
    )
    payload = bytes(range(256)) * (3 * 4096)
    with trio.fail_after(TIMEOUT_S):
        server = await nursery.start(serve, config)
        subscribers = []
        for i in range(3):
            tcp = await trio.open_tcp_stream("127.0.0.1", server.port("ws"))
            ws = await open_websocket_stream(tcp, host="localhost")
            client = WireClient(ws)
            await client.send(wire.connect(f"ws{i}") + wire.subscribe(1, [("big/#", 1)]))
            await client.expect(wire.connack(0, 0))
            await client.expect(wire.suback(1, [1]))
            subscribers.append(client)
        pub = await connect_client(server.port("tcp"), "pub")
        await pub.send(wire.publish("big/1", payload, qos=1, pid=1) + wire.publish("big/2", b"x"))
        await pub.expect(wire.puback(1))
        for client in subscribers:
            await client.expect(wire.publish("big/1", payload, qos=1, pid=1))
            await client.expect(wire.publish("big/2", b"x"))
            await client.stream.aclose()
        server.shutdown()


async def test_frames_sent_with_the_upgrade_request_are_read(
    close_client_streams: None, echo_server: EchoServer
) -> None:
    """Frames written in the same segment as the upgrade request (which h11 reads past the
    head) reach the handler first, in order, followed by later frames."""
    with trio.fail_after(TIMEOUT_S):
        client = await connect(echo_server)
        request = client.ws.send(Request(host="localhost", target="/mqtt", subprotocols=["mqtt"]))
        # wsproto frames nothing before the 101: two masked binary frames built by hand (an
        # all-zero masking key leaves the payload as it is).
        early = b"\x82\x82\x00\x00\x00\x00\xc0\x00" + b"\x82\x82\x00\x00\x00\x00\xe0\x00"
        await client.stream.send_all(request + early)
        assert isinstance(await client.next_event(), AcceptConnection)
        await client.send(BytesMessage(data=b"\x10\x00"))
        echoed = bytearray()
        while len(echoed) < 6:
            event = await client.next_event()
            assert isinstance(event, BytesMessage)
            echoed += event.data
        assert echoed == b"\xc0\x00\xe0\x00\x10\x00"
