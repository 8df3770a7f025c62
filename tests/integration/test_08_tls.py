"""TLS (mqtts) and wss listeners over real loopback sockets, with trustme certificates."""

from __future__ import annotations

import os
import ssl
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme
from structlog.testing import capture_logs

from mqttd.config import ListenerConfig
from mqttd.errors import StartupError
from mqttd.transports import ConnectionInfo
from mqttd.transports.devcerts import dev_cert_paths
from mqttd.transports.tls import TlsStream, serve_tls_listener
from mqttd.transports.ws import WebSocketStream, open_websocket_stream, serve_ws_listener

TIMEOUT_S = 20


@dataclass
class Certs:
    ca: trustme.CA
    certfile: Path
    keyfile: Path
    cafile: Path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    base = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    server.private_key_pem.write_to_path(str(base / "server.key"))
    server.cert_chain_pems[0].write_to_path(str(base / "server.pem"))
    ca.cert_pem.write_to_path(str(base / "ca.pem"))
    return Certs(ca, base / "server.pem", base / "server.key", base / "ca.pem")


@dataclass
class Server:
    port: int
    infos: list[ConnectionInfo] = field(default_factory=list)
    streams: list[trio.abc.Stream] = field(default_factory=list)
    #: what each connection's echo loop ended with: "eof", or the exception's type name
    endings: list[str] = field(default_factory=list)
    ended: trio.Event = field(default_factory=trio.Event)  # set when an echo loop ends


async def start(nursery: trio.Nursery, data_dir: Path, listener: ListenerConfig) -> Server:
    server = Server(port=0)

    async def echo(stream: trio.abc.Stream, info: ConnectionInfo) -> None:
        server.infos.append(info)
        server.streams.append(stream)
        try:
            while data := await stream.receive_some():
                await stream.send_all(data)
            server.endings.append("eof")
        except trio.BrokenResourceError as exc:
            server.endings.append(type(exc).__name__)
        finally:
            server.ended.set()
            await trio.aclose_forcefully(stream)  # the handler owns the stream (wss)

    serve = serve_ws_listener if listener.type == "wss" else serve_tls_listener
    listeners = await nursery.start(
        lambda task_status: serve(
            listener, echo, data_dir=data_dir, handler_nursery=nursery, task_status=task_status
        )
    )
    server.port = listeners[0].socket.getsockname()[1]
    return server


def tls_listener(certs: Certs, **kwargs: object) -> ListenerConfig:
    return ListenerConfig(
        type="tls",
        host="127.0.0.1",
        port=0,
        certfile=certs.certfile,
        keyfile=certs.keyfile,
        **kwargs,  # type: ignore[arg-type]
    )


OPEN: list[trio.abc.Stream] = []


@pytest.fixture
async def close_streams() -> AsyncIterator[None]:
    """Close every client stream a test opened (requested explicitly: pytest-trio skips
    async autouse fixtures)."""
    yield
    while OPEN:
        await trio.aclose_forcefully(OPEN.pop())


async def tls_connect(port: int, context: ssl.SSLContext) -> trio.SSLStream[trio.SocketStream]:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, context, server_hostname="localhost")
    OPEN.append(stream)
    return stream


async def exchange(stream: trio.SSLStream[trio.SocketStream]) -> None:
    """Handshake, send a byte and read one back; EOF counts as a broken stream."""
    await stream.do_handshake()
    await stream.send_all(b"\x10\x00")
    if not await stream.receive_some(10):
        raise trio.BrokenResourceError("closed by the server")


def client_context(certs: Certs) -> ssl.SSLContext:
    context = ssl.create_default_context()
    certs.ca.configure_trust(context)
    return context


async def test_tls_echo_round_trip(
    close_streams: None, nursery: trio.Nursery, tmp_path: Path, certs: Certs
) -> None:
    """A verified TLS client exchanges bytes; the handler sees transport "tls", no identity."""
    server = await start(nursery, tmp_path, tls_listener(certs))
    with trio.fail_after(TIMEOUT_S):
        stream = await tls_connect(server.port, client_context(certs))
        await stream.send_all(b"\x10\x00")
        assert await stream.receive_some(10) == b"\x10\x00"
    assert server.infos[0].transport == "tls"
    assert server.infos[0].tls_identity is None
    assert server.infos[0].peer.startswith("127.0.0.1:")
    assert server.infos[0].ip == "127.0.0.1"


async def test_tls_and_wss_listeners_hand_over_mqtt_streams(
    close_streams: None, nursery: trio.Nursery, tmp_path: Path, certs: Certs
) -> None:
    """The handler gets a TlsStream (tls) or a WebSocketStream over one (wss): both are
    MqttStreams, so the connection can send without a task switch."""
    tls_server = await start(nursery, tmp_path, tls_listener(certs))
    wss_listener = ListenerConfig(
        type="wss", host="127.0.0.1", port=0, certfile=certs.certfile, keyfile=certs.keyfile
    )
    wss_server = await start(nursery, tmp_path, wss_listener)
    with trio.fail_after(TIMEOUT_S):
        stream = await tls_connect(tls_server.port, client_context(certs))
        await exchange(stream)
        ws = await open_websocket_stream(
            await tls_connect(wss_server.port, client_context(certs)), host="localhost"
        )
        OPEN.append(ws)
        await ws.send_all(b"\xc0\x00")
        assert await ws.receive_some() == b"\xc0\x00"
    (tls_stream,) = tls_server.streams
    assert isinstance(tls_stream, TlsStream)
    (wss_stream,) = wss_server.streams
    assert isinstance(wss_stream, WebSocketStream)
    assert isinstance(wss_stream.transport, TlsStream)
    assert wss_stream.transport.selected_alpn_protocol() is None  # the client offered none


async def test_tls_client_that_drops_tcp_without_close_notify_reads_as_eof(
    close_streams: None, nursery: trio.Nursery, tmp_path: Path, certs: Certs
) -> None:
    """A TLS client that closes its socket without close_notify ends the connection as an
    EOF, not as a broken stream (the same for tls as for wss, where browsers do it)."""
    server = await start(nursery, tmp_path, tls_listener(certs))
    with trio.fail_after(TIMEOUT_S):
        stream = await tls_connect(server.port, client_context(certs))
        await exchange(stream)
        await stream.transport_stream.aclose()
        await server.ended.wait()
    assert server.endings == ["eof"]


async def test_tls_1_1_is_refused(
    close_streams: None, nursery: trio.Nursery, tmp_path: Path, certs: Certs
) -> None:
    """A client limited to TLS 1.1 cannot complete the handshake."""
    server = await start(nursery, tmp_path, tls_listener(certs))
    context = client_context(certs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is deprecated: the point
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # so only the server can be the one refusing
    with trio.fail_after(TIMEOUT_S):
        stream = await tls_connect(server.port, context)
        with pytest.raises(trio.BrokenResourceError):
            await stream.do_handshake()
    assert server.infos == []


async def test_client_certificate_required(
    close_streams: None, nursery: trio.Nursery, tmp_path: Path, certs: Certs
) -> None:
    """With require_certificate, a client without a certificate never reaches the handler."""
    listener = tls_listener(certs, cafile=certs.cafile, require_certificate=True)
    server = await start(nursery, tmp_path, listener)
    with trio.fail_after(TIMEOUT_S):
        stream = await tls_connect(server.port, client_context(certs))
        # TLS 1.3 may finish the client's side first; the refusal then shows on first use.
        with pytest.raises(trio.BrokenResourceError):
            await exchange(stream)
    assert server.infos == []


async def test_client_certificate_cn_is_identity(
    close_streams: None, nursery: trio.Nursery, tmp_path: Path, certs: Certs
) -> None:
    """A verified client certificate's common name becomes ConnectionInfo.tls_identity."""
    listener = tls_listener(certs, cafile=certs.cafile, require_certificate=True)
    server = await start(nursery, tmp_path, listener)
    context = client_context(certs)
    certs.ca.issue_cert("sensor-17@example", common_name="sensor-17").configure_cert(context)
    with trio.fail_after(TIMEOUT_S):
        stream = await tls_connect(server.port, context)
        await stream.send_all(b"\xc0\x00")
        assert await stream.receive_some(10) == b"\xc0\x00"
    assert server.infos[0].tls_identity == "sensor-17"


async def test_tls_handshake_timeout(
    close_streams: None,
    nursery: trio.Nursery,
    tmp_path: Path,
    certs: Certs,
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that never sends a ClientHello is dropped after tls_handshake_timeout_s."""
    server = await start(nursery, tmp_path, tls_listener(certs, tls_handshake_timeout_s=3.0))
    with trio.fail_after(TIMEOUT_S), capture_logs() as logs:
        tcp = await trio.open_tcp_stream("127.0.0.1", server.port)
        OPEN.append(tcp)
        start_time = trio.current_time()
        assert await tcp.receive_some(100) == b""
        assert trio.current_time() - start_time >= 3.0
    assert {"event": "tls_handshake_failed", "reason": "timeout"}.items() <= next(
        e for e in logs if e["event"] == "tls_handshake_failed"
    ).items()
    assert server.infos == []


async def test_dev_certs_created_once_and_reused(
    close_streams: None, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """tls_dev_certs creates a CA + server cert under data_dir/tls once, then reuses them."""
    listener = ListenerConfig(type="tls", host="127.0.0.1", port=0, tls_dev_certs=True)
    with capture_logs() as logs:
        first = await start(nursery, tmp_path, listener)
    paths = dev_cert_paths(tmp_path)
    ca_bytes = paths.ca_file.read_bytes()
    assert paths.key_file.stat().st_mode & 0o077 == 0
    created = next(e for e in logs if e["event"] == "tls_dev_certs_created")
    assert created["ca_file"] == str(paths.ca_file)
    with capture_logs() as logs:
        second = await start(nursery, tmp_path, listener)
    assert any(e["event"] == "tls_dev_certs_reused" for e in logs)
    assert paths.ca_file.read_bytes() == ca_bytes
    context = ssl.create_default_context(cafile=str(paths.ca_file))
    with trio.fail_after(TIMEOUT_S):
        for server in (first, second):
            stream = await tls_connect(server.port, context)
            await stream.send_all(b"\xc0\x00")
            assert await stream.receive_some(10) == b"\xc0\x00"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "set certfile and keyfile"),
        ({"certfile": Path("/nonexistent/cert.pem")}, "cannot load certificate"),
    ],
)
async def test_certificate_problems_are_startup_errors(
    close_streams: None,
    nursery: trio.Nursery,
    tmp_path: Path,
    kwargs: dict[str, object],
    message: str,
) -> None:
    """A tls listener without usable certificates fails to start with a one-line StartupError."""
    listener = ListenerConfig(type="tls", host="127.0.0.1", port=0, **kwargs)  # type: ignore[arg-type]

    async def handler(stream: trio.abc.Stream, info: ConnectionInfo) -> None:
        raise AssertionError("never called")

    with pytest.raises(StartupError, match=message) as info:
        await serve_tls_listener(listener, handler, data_dir=tmp_path, handler_nursery=nursery)
    assert "\n" not in str(info.value)


async def test_wss_round_trip_with_dev_certs(
    close_streams: None, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A wss listener with dev certs speaks WebSocket over TLS; transport is "wss"."""
    listener = ListenerConfig(type="wss", host="127.0.0.1", port=0, tls_dev_certs=True)
    server = await start(nursery, tmp_path, listener)
    context = ssl.create_default_context(cafile=str(dev_cert_paths(tmp_path).ca_file))
    with trio.fail_after(TIMEOUT_S):
        tls = await tls_connect(server.port, context)
        stream = await open_websocket_stream(tls, host="localhost", subprotocols=("mqttv3.1",))
        OPEN.append(stream)
        assert stream.subprotocol == "mqttv3.1"
        payload = bytes(range(256)) * 4096  # 1 MiB
        async with trio.open_nursery() as inner:
            inner.start_soon(stream.send_all, payload)
            got = bytearray()
            while len(got) < len(payload):
                got += await stream.receive_some()
        assert got == payload
    assert server.infos[0].transport == "wss"


async def test_certificate_identity_is_the_user_name(
    nursery: trio.Nursery, tmp_path: Path, certs: Certs
) -> None:
    """With use_identity_as_username, a client certificate's CN is the user name: no password
    is needed, and the ACL of that user applies."""
    from mqttd.config import AuthConfig, Config, StoreConfig
    from mqttd.server import serve
    from tests.helpers import wire
    from tests.helpers.client import WireClient

    (tmp_path / "acl").write_text("user sensor-17\ntopic readwrite sensors/17/#\n")
    (tmp_path / "passwd").write_text("")
    listener = tls_listener(
        certs, cafile=certs.cafile, require_certificate=True, use_identity_as_username=True
    )
    config = Config(
        listeners=(listener,),
        auth=AuthConfig(
            allow_anonymous=False,
            password_file=tmp_path / "passwd",
            acl_file=tmp_path / "acl",
        ),
        store=StoreConfig(durability="memory"),
    )
    with trio.fail_after(TIMEOUT_S):
        server = await nursery.start(serve, config)
        context = client_context(certs)
        certs.ca.issue_cert("sensor-17@example", common_name="sensor-17").configure_cert(context)
        stream = await tls_connect(server.port("tls"), context)
        client = WireClient(stream)
        await client.send(wire.connect("s17"))
        await client.expect(wire.connack(0, 0))
        await client.send(wire.subscribe(1, [("sensors/17/#", 1), ("sensors/18/#", 1)]))
        await client.expect(wire.suback(1, [1, 0x80]))
        await stream.aclose()
        server.shutdown()


async def test_sighup_reload_swaps_certificate_for_new_handshakes(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Server.reload (SIGHUP) loads a renewed certificate for new handshakes, keeps open
    connections, and keeps the old certificate when the new files are broken."""
    from mqttd.config import Config, StoreConfig
    from mqttd.server import serve
    from tests.helpers import wire
    from tests.helpers.client import WireClient

    old_ca, new_ca = trustme.CA(), trustme.CA()
    certfile, keyfile = tmp_path / "server.pem", tmp_path / "server.key"

    def install(ca: trustme.CA) -> None:
        cert = ca.issue_cert("localhost", "127.0.0.1")
        cert.private_key_pem.write_to_path(str(keyfile))
        cert.cert_chain_pems[0].write_to_path(str(certfile))

    install(old_ca)
    listener = ListenerConfig(type="tls", port=0, certfile=certfile, keyfile=keyfile)
    config = Config(listeners=(listener,), store=StoreConfig(durability="memory"))

    async def handshake(ca: trustme.CA) -> WireClient:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        client = WireClient(await tls_connect(server.port("tls"), context))
        await client.send(wire.connect(""))
        await client.expect(wire.connack(0, 0))
        return client

    with trio.fail_after(TIMEOUT_S):
        server = await nursery.start(serve, config)
        before = await handshake(old_ca)
        install(new_ca)
        with capture_logs() as logs:
            await server.reload()
        assert "tls_reloaded" in [e["event"] for e in logs]
        await handshake(new_ca)
        with pytest.raises(trio.BrokenResourceError):
            await handshake(old_ca)  # the old chain is no longer served
        await before.send(wire.pingreq())  # the connection made before the reload lives on
        await before.expect(wire.pingresp())
        keyfile.write_text("not a key")
        with capture_logs() as logs:
            await server.reload()
        assert "tls_reload_failed" in [e["event"] for e in logs]
        await handshake(new_ca)
        server.shutdown()


@pytest.mark.parametrize("transport", ["tls", "wss"])
async def test_max_connections_counts_tls_and_wss_until_they_close(
    nursery: trio.Nursery, tmp_path: Path, certs: Certs, transport: str
) -> None:
    """A listener's max_connections admits tls/wss connections before the TLS handshake and
    frees the place when the connection ends."""
    from mqttd.config import Config, StoreConfig
    from mqttd.server import serve
    from tests.helpers import wire
    from tests.helpers.client import WireClient

    listener = ListenerConfig(
        type=transport,  # type: ignore[arg-type]
        host="127.0.0.1",
        port=0,
        certfile=certs.certfile,
        keyfile=certs.keyfile,
        max_connections=1,
    )
    config = Config(listeners=(listener,), store=StoreConfig(durability="memory"))

    async def open_client(client_id: str) -> WireClient:
        stream: trio.abc.Stream = await tls_connect(server.port(transport), client_context(certs))
        if transport == "wss":
            stream = await open_websocket_stream(stream, host="localhost")
            OPEN.append(stream)
        client = WireClient(stream)
        await client.send(wire.connect(client_id))
        await client.expect(wire.connack(0, 0))
        return client

    with trio.fail_after(TIMEOUT_S):
        server = await nursery.start(serve, config)
        first = await open_client("first")
        with pytest.raises((trio.BrokenResourceError, EOFError)):
            await open_client("refused")
        await first.send(wire.disconnect())
        await first.expect_closed()
        await trio.testing.wait_all_tasks_blocked()  # the server has finished with it
        await open_client("after")
        server.shutdown()



_RACE_SCRIPT = """
import sys
from pathlib import Path
from mqttd.transports.devcerts import ensure_dev_certs
sys.stdin.read(1)  # every process starts creating when the test says go
ensure_dev_certs(Path(sys.argv[1]))
"""


async def test_dev_certs_made_by_racing_processes_are_one_consistent_set(tmp_path: Path) -> None:
    """Workers of ``mqttd --workers N`` create the development certificates at the same time:
    exactly one of them makes the set, its key matches its certificate and its CA signed it."""
    import subprocess
    import sys

    outputs: list[bytes] = []

    async def race(proc: trio.Process, go: trio.Event) -> None:
        assert proc.stdin is not None
        assert proc.stdout is not None
        await go.wait()
        await proc.stdin.send_all(b"x")
        await proc.stdin.aclose()
        chunks = []
        while chunk := await proc.stdout.receive_some():
            chunks.append(chunk)
        await proc.wait()
        outputs.append(b"".join(chunks))

    go = trio.Event()
    with trio.fail_after(TIMEOUT_S):
        procs = [
            await trio.lowlevel.open_process(
                [sys.executable, "-c", _RACE_SCRIPT, str(tmp_path)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            for _ in range(4)
        ]
        async with trio.open_nursery() as nursery:
            for proc in procs:
                nursery.start_soon(race, proc, go)
            go.set()  # all started: go
    assert [proc.returncode for proc in procs] == [0, 0, 0, 0]
    logged = b"".join(outputs)  # structlog's default: one line per event on stdout
    assert logged.count(b"tls_dev_certs_created") == 1, logged
    assert logged.count(b"tls_dev_certs_reused") == 3, logged
    paths = dev_cert_paths(tmp_path)
    context = ssl.create_default_context(cafile=str(paths.ca_file))
    # load_cert_chain refuses a key that does not match the certificate (KEY_VALUES_MISMATCH)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(str(paths.cert_file), str(paths.key_file))
    client_in, server_in = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(client_in, server_in, server_hostname="localhost")
    serving = server.wrap_bio(server_in, client_in, server_side=True)
    for _ in range(10):  # a handshake in memory: the client verifies the chain against the CA
        for side in (client, serving):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
    client.do_handshake()  # raises if the handshake did not complete
    assert not [p for p in os.listdir(tmp_path / "tls") if p.endswith(".tmp")]
