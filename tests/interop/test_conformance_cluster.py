"""The conformance suite against mqttd as one broker made of several processes, over TCP and WS.

Two clusters, each run over TCP and over WebSocket:

- ``workers``: ``mqttd --workers 3``, three worker processes sharing each port (SO_REUSEPORT),
  one broker over the private redis-server the supervisor starts. The suite is given the one
  port; the kernel spreads its connections over the workers (checked first: connections to that
  port reach every worker).
- ``nodes``: three mqttd processes, ``[cluster]`` nodes a, b and c on one redis-server
  (``tests/helpers/redis_server.py``), each with ports of its own. The suite is given the three
  ports (URLs), so the connections of each case take the nodes in turn: a case's publisher and
  subscriber, the two connections of a takeover, a persistent session and its resumption, and
  its cleanup are on different nodes.

Each must end every case exactly as a single mqttd process does: the same status and the same
detail (the choices the spec leaves to the broker), against a reference run on one process with
the same settings in this module. The cluster keeps the orderings the cases rely on (a SUBACK
only once every node routes the filter, a retained message acknowledged on one node is seen
from every node, a takeover's CONNACK only once the old connection on the other node is
closed); ``EXPECTED_DIFFERENCES`` lists the one case whose detail may differ, with the reason.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from conformance import load_cases, wire
from conformance.broker_process import BrokerProcess, listeners_toml, start_mqttd
from conformance.cli import build_parser
from conformance.runner import FAIL, Result, run_all
from conformance.transport import Target
from tests.helpers.redis_server import redis_server
from tests.interop.conftest import WORKERS, running_workers, serving_process, worker_pids

pytestmark = [pytest.mark.interop, pytest.mark.timeout(300)]

needs_redis = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)

TIMEOUT_S = 5.0
#: Bound on one run of the whole suite (it takes a few seconds).
RUN_S = 200.0
LISTENERS = listeners_toml("tcp", host="127.0.0.1") + listeners_toml(
    "ws", host="127.0.0.1", path="/mqtt"
)
NODE_IDS = ("a", "b", "c")
#: The protocol levels run, as in test_conformance.py's mqttd run.
PROTOCOLS = (3, 4, 5)
#: case id -> why a cluster may end it differently from one process.
EXPECTED_DIFFERENCES: dict[str, str] = {
    "v5-publish-no-matching-subscribers": (
        "the optional 0x10 depends on whether another case's '#' subscription is alive at "
        "that moment (cases run 8 at a time); a node learns that another node's route went "
        "a moment later, so a cluster answers 0x10 less often. The case passes either way; "
        "only its reported choice differs."
    ),
}

Outcomes = dict[str, tuple[str, str]]


def outcomes(results: list[Result]) -> Outcomes:
    """case id -> (status, detail)."""
    return {r.case_id: (r.status, r.detail) for r in results}


async def run_suite(target: Target) -> list[Result]:
    with trio.fail_after(RUN_S):
        return await run_all(load_cases(PROTOCOLS), target, concurrency=8)


def target_of(transport: str, brokers: list[BrokerProcess]) -> Target:
    """The suite's target: every broker process's port (or URL), taken in turn per case."""
    if transport == "ws":
        urls = tuple(f"ws://127.0.0.1:{b.ports['ws']}/mqtt" for b in brokers)
        return Target(ws_url=urls[0], ws_urls=urls if len(urls) > 1 else (), timeout=TIMEOUT_S)
    ports = tuple(b.ports["tcp"] for b in brokers)
    return Target(port=ports[0], ports=ports if len(ports) > 1 else (), timeout=TIMEOUT_S)


@dataclass
class Cluster:
    """mqttd processes that are one broker: the supervisor of ``--workers``, or the nodes."""

    kind: str
    brokers: list[BrokerProcess]

    def errors(self) -> int:
        """ERROR log records so far (broker bugs), over every process."""
        return sum(b.count("error") for b in self.brokers)


def _start_nodes(stack: ExitStack, root: Path) -> list[BrokerProcess]:
    redis = stack.enter_context(redis_server(root / "redis"))
    nodes = []
    for node_id in NODE_IDS:
        data_dir = root / node_id
        data_dir.mkdir()
        config = data_dir / "mqttd.toml"
        config.write_text(
            f'[broker]\ndata_dir = "{data_dir}"\n\n'
            f'[cluster]\nredis_url = "{redis.url}"\nnode_id = "{node_id}"\n'
            f'key_prefix = "conformance"\n\n{LISTENERS}'
        )
        # Entered after the redis-server, so each node stops before it does.
        nodes.append(stack.enter_context(start_mqttd(config)))
    return nodes


@pytest.fixture(scope="module", params=["workers", "nodes"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """``mqttd --workers 3`` on one port per transport, or nodes a, b, c on three."""
    with ExitStack() as stack:
        if request.param == "workers":
            brokers = [stack.enter_context(running_workers(LISTENERS))]
        else:
            brokers = _start_nodes(stack, tmp_path_factory.mktemp("nodes"))
        yield Cluster(str(request.param), brokers)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcomes]:
    """transport -> the outcome of every case against one mqttd process (no cluster)."""
    root = tmp_path_factory.mktemp("single")
    config = root / "mqttd.toml"
    config.write_text(f'[broker]\ndata_dir = "{root / "data"}"\n\n{LISTENERS}')
    with start_mqttd(config) as broker:
        return {
            transport: outcomes(trio.run(run_suite, target_of(transport, [broker])))
            for transport in ("tcp", "ws")
        }


async def connections_reach_every_worker(supervisor: BrokerProcess) -> None:
    """Connections to the one TCP port land on every worker (the kernel spreads them); bounded
    number of tries, each a CONNECT answered by a CONNACK."""
    pids = worker_pids(supervisor)
    assert len(pids) == WORKERS, pids
    port = supervisor.ports["tcp"]
    seen: set[int] = set()
    streams: list[trio.SocketStream] = []
    try:
        for n in range(40):
            with trio.fail_after(TIMEOUT_S):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                streams.append(stream)
                await stream.send_all(wire.connect(f"spread{n}"))
                connack = b""
                while len(connack) < 4:
                    chunk = await stream.receive_some(4 - len(connack))
                    assert chunk, "closed before its CONNACK"
                    connack += chunk
            assert connack == b"\x20\x02\x00\x00"
            seen.add(serving_process(port, stream.socket.getsockname()[1], pids))
            if len(seen) == WORKERS:
                break
    finally:
        for stream in streams:
            await trio.aclose_forcefully(stream)
    assert seen == set(pids), f"40 connections reached only {len(seen)} of {WORKERS} workers"


@pytest.mark.slow
@needs_redis
@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_cluster_ends_every_case_as_one_process_does(
    cluster: Cluster, reference: dict[str, Outcomes], transport: str
) -> None:
    """Against 3 workers on one port, and 3 nodes on 3 ports: no case fails, and every case
    ends with the status and detail it has against one mqttd process."""
    if cluster.kind == "workers" and transport == "tcp":
        await connections_reach_every_worker(cluster.brokers[0])
    results = outcomes(await run_suite(target_of(transport, cluster.brokers)))
    failed = {case: detail for case, (status, detail) in results.items() if status == FAIL}
    assert failed == {}
    expected = reference[transport]
    assert results.keys() == expected.keys()
    differ = {
        case: (expected[case], got)
        for case, got in results.items()
        if got != expected[case] and case not in EXPECTED_DIFFERENCES
    }
    assert differ == {}, "cases that end differently from one process (expected, got)"
    assert cluster.errors() == 0, "a broker process logged an ERROR"


async def test_port_and_url_lists_make_one_target_with_endpoints_in_turn() -> None:
    """``--port 1,2,3`` gives a target whose connections take ports 1, 2, 3, 1...; one port
    gives today's single-endpoint target; ``--ws`` takes a URL list the same way."""
    args = build_parser().parse_args(["--port", "1884,1885,1886"])
    assert args.port == (1884, 1885, 1886)
    target = Target(port=1884, ports=args.port)
    assert [target.endpoint(n).port for n in range(5)] == [1884, 1885, 1886, 1884, 1885]
    assert target.describe() == (
        "mqtt://127.0.0.1:1884, mqtt://127.0.0.1:1885, mqtt://127.0.0.1:1886"
    )
    single = Target(port=1883)
    assert single.endpoint(7) is single
    assert single.describe() == "mqtt://127.0.0.1:1883"

    urls = build_parser().parse_args(["--ws", "ws://h:1/mqtt,ws://h:2/mqtt"]).ws
    ws = Target(ws_url=urls[0], ws_urls=urls)
    assert ws.is_ws
    assert [ws.endpoint(n).ws_url for n in range(3)] == [
        "ws://h:1/mqtt",
        "ws://h:2/mqtt",
        "ws://h:1/mqtt",
    ]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--port", "1883,x"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--port", "1883,70000"])
