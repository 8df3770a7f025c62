"""Monitoring: the ``$SYS`` tree, ``/metrics`` (parsed with prometheus_client's own parser),
``/healthz`` and ``/readyz`` on an ``http`` listener and at a ws listener's ``metrics_path``."""

from __future__ import annotations

import base64
import json
import platform
from collections.abc import Callable
from pathlib import Path

import h11
import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

import mqttd
from mqttd.auth import hash_password
from mqttd.config import (
    AuthConfig,
    BrokerConfig,
    ClusterConfig,
    Config,
    LimitsConfig,
    ListenerConfig,
    StoreConfig,
)
from mqttd.server import Server, serve
from tests.helpers import wire
from tests.helpers.client import TIMEOUT_S, WireClient, connect_client, subscribe, sync
from tests.helpers.redis_server import redis_server

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def start(
    nursery: trio.Nursery,
    tmp_path: Path,
    *listeners: ListenerConfig,
    durability: str = "fsync",
    sys_interval_s: float = 0.0,
    auth: AuthConfig | None = None,
    **limits: int,
) -> Server:
    """A broker with a tcp listener, an http listener and ``listeners``, all on free ports."""
    config = Config(
        listeners=(
            ListenerConfig(type="tcp", port=0),
            ListenerConfig(type="http", port=0),
            *listeners,
        ),
        auth=auth or AuthConfig(),
        limits=LimitsConfig(**limits),  # type: ignore[arg-type]
        store=StoreConfig(durability=durability, path=tmp_path / "store" / "mqttd.db"),  # type: ignore[arg-type]
        broker=BrokerConfig(data_dir=tmp_path, sys_interval_s=sys_interval_s),
    )
    with trio.fail_after(TIMEOUT_S):
        server: Server = await nursery.start(serve, config)
    return server


async def http_request(
    port: int,
    path: str,
    *,
    method: str = "GET",
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes = b"",
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on a new connection: status, headers (lower-case names), body."""
    client = h11.Connection(h11.CLIENT)
    all_headers = [("Host", "127.0.0.1"), ("Connection", "close"), *headers]
    if body:
        all_headers.append(("Content-Length", str(len(body))))
    with trio.fail_after(TIMEOUT_S):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            data = client.send(h11.Request(method=method, target=path, headers=all_headers))
            if body:
                data += client.send(h11.Data(data=body))
            data += client.send(h11.EndOfMessage())
            await stream.send_all(data)
            status, response_headers, received = 0, {}, b""
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    client.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    response_headers = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    received += event.data
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return status, response_headers, received


async def scrape(port: int, path: str = "/metrics", **kwargs: object) -> Samples:
    """GET the metrics and parse them with prometheus_client's text parser."""
    status, headers, body = await http_request(port, path, **kwargs)  # type: ignore[arg-type]
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (KeyError if absent)."""
    return samples[(name, tuple(sorted(labels.items())))]


async def test_metrics_count_what_clients_do(nursery: trio.Nursery, tmp_path: Path) -> None:
    """/metrics parses with prometheus_client and counts connects, packets by type, bytes,
    deliveries, subscriptions, queue depths and store commits as a client makes them."""
    server = await start(nursery, tmp_path)
    http = server.port("http")
    before = await scrape(http)
    tcp_listener = f"127.0.0.1:{server.port('tcp')}"
    assert value(before, "mqttd_clients_connected", listener=tcp_listener, transport="tcp") == 0
    build = {"version": mqttd.__version__, "python": platform.python_version()}
    assert value(before, "mqttd_build_info", **build) == 1

    sub = await connect_client(server.port(), "sub", clean=False)
    await subscribe(sub, 1, ("metrics/#", 1))
    pub = await connect_client(server.port(), "pub")
    for pid in range(1, 6):
        await pub.send(wire.publish("metrics/t", b"12345", qos=1, pid=pid))
        await pub.expect(wire.puback(pid))
    for _ in range(5):
        packet = wire.parse(await sub.read_packet())
        assert packet.type == wire.PUBLISH
        await sub.send(wire.puback(packet.pid or 0))
    await sync(sub)
    await sync(pub)

    after = await scrape(http)
    assert value(after, "mqttd_clients_connected", listener=tcp_listener, transport="tcp") == 2
    assert value(after, "mqttd_connections", listener=tcp_listener, transport="tcp") == 2
    assert value(after, "mqttd_connects_total", result="accepted") == 2
    assert value(after, "mqttd_packets_received_total", type="connect") == 2
    assert value(after, "mqttd_packets_received_total", type="publish") == 5
    assert value(after, "mqttd_packets_received_total", type="puback") == 5
    assert value(after, "mqttd_packets_received_total", type="subscribe") == 1
    assert value(after, "mqttd_packets_received_total", type="pingreq") == 2
    assert value(after, "mqttd_packets_sent_total", type="publish") == 5
    assert value(after, "mqttd_packets_sent_total", type="puback") == 5
    assert value(after, "mqttd_packets_sent_total", type="connack") == 2
    assert value(after, "mqttd_packets_sent_total", type="suback") == 1
    assert value(after, "mqttd_publish_payload_bytes_received_total") == 25
    assert value(after, "mqttd_publish_payload_bytes_sent_total") == 25
    # PUBLISH qos 1 "metrics/t" + 5 bytes: 2 header + 2+9 topic + 2 packet id + 5 payload
    assert value(after, "mqttd_packet_bytes_received_total", type="publish") == 5 * 20
    assert value(after, "mqttd_messages_delivered_total") == 5
    assert value(after, "mqttd_subscriptions") == 1
    assert value(after, "mqttd_inflight_messages") == 0
    assert value(after, "mqttd_sessions", state="connected") == 2
    assert value(after, "mqttd_store_commits_total") > 0
    assert value(after, "mqttd_store_commit_seconds_count") == value(
        after, "mqttd_store_commits_total"
    ) + value(after, "mqttd_store_commit_failures_total")
    assert value(after, "mqttd_store_commit_seconds_bucket", le="+Inf") == value(
        after, "mqttd_store_commit_seconds_count"
    )
    assert value(after, "process_resident_memory_bytes") > 0
    assert value(after, "process_cpu_seconds_total") > 0

    await pub.send(wire.disconnect())
    await pub.expect_closed()
    with trio.fail_after(TIMEOUT_S):
        while (await scrape(http)).get(
            ("mqttd_disconnects_total", (("reason", "client_disconnect"),))
        ) != 1:
            await trio.testing.wait_all_tasks_blocked()


async def test_messages_dropped_by_reason(nursery: trio.Nursery, tmp_path: Path) -> None:
    """A full queue drops and counts with reason queue_full, in /metrics and $SYS."""
    server = await start(nursery, tmp_path, durability="memory", max_queued_messages=1)
    sub = await connect_client(server.port(), "slow", clean=False)
    await subscribe(sub, 1, ("drop/#", 1))
    await sub.send(wire.disconnect())
    await sub.expect_closed()
    pub = await connect_client(server.port(), "pub")
    for pid in range(1, 4):
        await pub.send(wire.publish("drop/t", b"x", qos=1, pid=pid))
        await pub.expect(wire.puback(pid))
    samples = await scrape(server.port("http"))
    assert value(samples, "mqttd_messages_dropped_total", reason="queue_full") == 2
    assert value(samples, "mqttd_messages_dropped_total", reason="outbox_full") == 0
    assert value(samples, "mqttd_queued_messages") == 1
    assert value(samples, "mqttd_sessions", state="disconnected") == 1


async def test_health_endpoints(nursery: trio.Nursery, tmp_path: Path) -> None:
    """/healthz and /readyz answer JSON; readyz says 503 once the store cannot commit;
    unknown paths are 404, other methods 405, HEAD has no body."""
    server = await start(nursery, tmp_path)
    http = server.port("http")
    status, headers, body = await http_request(http, "/healthz")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["status"] == "alive"
    status, _, body = await http_request(http, "/readyz")
    ready = json.loads(body)
    assert status == 200, ready
    assert ready["status"] == "ready"
    assert ready["checks"]["listeners"] == {"ok": True, "up": 2, "configured": 2}
    assert ready["checks"]["store"]["ok"] is True

    assert (await http_request(http, "/nope"))[0] == 404
    assert (await http_request(http, "/"))[0] == 404
    status, headers, _ = await http_request(http, "/metrics", method="POST", body=b"x")
    assert status == 405
    assert headers["allow"] == "GET, HEAD"
    status, headers, body = await http_request(http, "/metrics", method="HEAD")
    assert status == 200
    assert body == b""
    assert int(headers["content-length"]) > 0

    store = server.broker.store
    assert store is not None
    store.last_commit_failed = True  # what a failed commit (disk full) leaves behind
    status, _, body = await http_request(http, "/readyz")
    assert status == 503
    assert json.loads(body)["checks"]["store"]["ok"] is False
    store.last_commit_failed = False
    server.state.shutting_down = True
    status, _, body = await http_request(http, "/readyz")
    assert status == 503
    assert json.loads(body)["checks"]["running"]["ok"] is False
    server.state.shutting_down = False


async def test_keep_alive_serves_several_requests(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Several requests on one kept-alive connection are all answered."""
    server = await start(nursery, tmp_path, durability="memory")
    client = h11.Connection(h11.CLIENT)
    with trio.fail_after(TIMEOUT_S):
        stream = await trio.open_tcp_stream("127.0.0.1", server.port("http"))
        async with stream:
            for path in ("/healthz", "/metrics", "/readyz"):
                await stream.send_all(
                    client.send(h11.Request(method="GET", target=path, headers=[("Host", "x")]))
                    + client.send(h11.EndOfMessage())
                )
                status = 0
                while True:
                    event = client.next_event()
                    if event is h11.NEED_DATA:
                        client.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.Response):
                        status = event.status_code
                    elif isinstance(event, h11.EndOfMessage):
                        break
                assert status == 200
                client.start_next_cycle()


def _password_auth(tmp_path: Path) -> AuthConfig:
    passwords = tmp_path / "passwd"
    passwords.write_text(f"prom:{hash_password('scrape')}\n")
    return AuthConfig(allow_anonymous=False, password_file=passwords)


def _basic(user: str, password: str) -> tuple[tuple[str, str], ...]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return (("Authorization", f"Basic {token}"),)


async def test_metrics_path_on_ws_listener_behind_auth(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A ws listener's metrics_path needs HTTP Basic credentials from its password file when
    anonymous clients are not allowed; the health endpoints beside it need none."""
    ws = ListenerConfig(type="ws", port=0, metrics_path="/internal/metrics")
    server = await start(nursery, tmp_path, ws, auth=_password_auth(tmp_path), durability="memory")
    port = server.port("ws")
    status, headers, _ = await http_request(port, "/internal/metrics")
    assert status == 401
    assert headers["www-authenticate"].startswith("Basic realm=")
    assert (await http_request(port, "/internal/metrics", headers=_basic("prom", "nope")))[0] == 401
    assert (await http_request(port, "/internal/metrics", headers=(("Authorization", "Basic !"),)))[
        0
    ] == 401
    samples = await scrape(port, "/internal/metrics", headers=_basic("prom", "scrape"))
    assert value(samples, "mqttd_connections", listener=f"127.0.0.1:{port}", transport="ws") >= 1
    # Remembered: the second scrape with the same password needs no new PBKDF2 check.
    await scrape(port, "/internal/metrics", headers=_basic("prom", "scrape"))
    assert (await http_request(port, "/healthz"))[0] == 200
    assert (await http_request(port, "/readyz"))[0] == 200
    assert (await http_request(port, "/metrics"))[0] == 404  # only the configured path
    # The http listener applies the same [auth].
    assert (await http_request(server.port("http"), "/metrics"))[0] == 401


async def test_ws_listener_without_metrics_path_serves_none(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Without metrics_path a ws listener answers 404 for the monitoring paths."""
    server = await start(nursery, tmp_path, ListenerConfig(type="ws", port=0), durability="memory")
    for path in ("/metrics", "/healthz", "/readyz"):
        assert (await http_request(server.port("ws"), path))[0] == 404


async def _sys_values(
    client: WireClient, until: Callable[[dict[str, str]], bool]
) -> dict[str, str]:
    """Read $SYS publishes into a topic -> payload map until ``until`` holds for it."""
    seen: dict[str, str] = {}
    with trio.fail_after(TIMEOUT_S):
        while not until(seen):
            packet = wire.parse(await client.read_packet())
            if packet.type == wire.PUBLISH and packet.topic is not None:
                seen[packet.topic.decode()] = packet.payload.decode()
    return seen


async def test_sys_tree_has_mosquittos_topics(nursery: trio.Nursery, tmp_path: Path) -> None:
    """$SYS/# has Mosquitto's topics (loads, bytes, heap, store, clients) and mqttd's extras,
    and the counters move while a client publishes."""
    server = await start(nursery, tmp_path, sys_interval_s=0.05)
    watcher = await connect_client(server.port(), "watcher")
    await subscribe(watcher, 1, ("$SYS/#", 0))
    expected = [
        "version",
        "uptime",
        "clients/total",
        "clients/maximum",
        "clients/connected",
        "clients/active",
        "clients/disconnected",
        "clients/inactive",
        "clients/expired",
        "messages/stored",
        "store/messages/count",
        "store/messages/bytes",
        "subscriptions/count",
        "retained messages/count",
        "heap/current",
        "heap/maximum",
        "messages/received",
        "messages/sent",
        "publish/messages/dropped",
        "publish/messages/received",
        "publish/messages/sent",
        "bytes/received",
        "bytes/sent",
        "publish/bytes/received",
        "publish/bytes/sent",
        *(
            f"load/{name}/{window}"
            for name in (
                "messages/received",
                "messages/sent",
                "publish/dropped",
                "publish/received",
                "publish/sent",
                "bytes/received",
                "bytes/sent",
                "sockets",
                "connections",
            )
            for window in ("1min", "5min", "15min")
        ),
        "mqttd/messages/dropped/queue_full",
        "mqttd/store/commit_latency_ms",
        "mqttd/clients/slow_consumers",
        f"mqttd/listener/{server.port()}/clients",
    ]
    topics = [f"$SYS/broker/{name}" for name in expected]
    seen = await _sys_values(watcher, lambda s: all(t in s for t in topics))
    assert seen["$SYS/broker/version"].startswith("mqttd version ")
    assert int(seen["$SYS/broker/heap/current"]) > 1_000_000  # RSS, in bytes
    assert seen["$SYS/broker/uptime"].endswith(" seconds")

    pub = await connect_client(server.port(), "pub")
    for pid in range(1, 11):
        await pub.send(wire.publish("sys/t", b"abc", qos=1, pid=pid))
        await pub.expect(wire.puback(pid))
    seen = await _sys_values(
        watcher,
        lambda s: (
            s.get("$SYS/broker/publish/messages/received") == "10"
            and s.get(f"$SYS/broker/mqttd/listener/{server.port()}/clients") == "2"
            and float(s.get("$SYS/broker/load/publish/received/1min", "0")) > 0
        ),
    )
    assert seen["$SYS/broker/clients/connected"] == "2"
    assert int(seen["$SYS/broker/clients/maximum"]) >= 2
    assert int(seen["$SYS/broker/publish/bytes/received"]) >= 30


@pytest.mark.parametrize("metrics_path", ["/healthz", "/mqtt"])
async def test_metrics_path_must_not_clash(metrics_path: str) -> None:
    """metrics_path may not be the WebSocket path or a health endpoint's."""
    from mqttd.config import parse_config
    from mqttd.errors import ConfigError

    with pytest.raises(ConfigError, match="metrics_path"):
        parse_config({"listeners": [{"type": "ws", "metrics_path": metrics_path}]})


@pytest.mark.usefixtures("coredis_garbage_collected")
async def test_cluster_node_metrics_and_readiness(
    nursery: trio.Nursery, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """In cluster mode /metrics names the node and its Redis link, and /readyz checks the link
    (not a SQLite file)."""
    with redis_server(tmp_path_factory.mktemp("redis")) as redis:
        config = Config(
            listeners=(ListenerConfig(type="tcp", port=0), ListenerConfig(type="http", port=0)),
            broker=BrokerConfig(data_dir=tmp_path, sys_interval_s=0.0),
            store=StoreConfig(durability="memory"),
            cluster=ClusterConfig(redis_url=redis.url, node_id="obs-a", key_prefix="obs"),
        )
        async with trio.open_nursery() as cluster:
            with trio.fail_after(TIMEOUT_S):
                server: Server = await cluster.start(serve, config)
            samples = await scrape(server.port("http"))
            assert value(samples, "mqttd_cluster_node_info", node="obs-a") == 1
            assert value(samples, "mqttd_cluster_link_up") == 1
            status, _, body = await http_request(server.port("http"), "/readyz")
            checks = json.loads(body)["checks"]
            assert status == 200, checks
            assert checks["cluster"] == {"ok": True, "node": "obs-a"}
            assert "store" not in checks
            server.shutdown()
