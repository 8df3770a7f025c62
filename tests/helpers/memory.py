"""Run broker connections over trio memory streams (no sockets), for tests on the mock clock."""

from __future__ import annotations

import dataclasses

import trio
import trio.testing

from mqttd.access import AccessControl
from mqttd.broker import Broker
from mqttd.config import Config, LimitsConfig, ListenerConfig
from mqttd.connection import Connection
from mqttd.shared import ServerState
from mqttd.transports import ConnectionInfo
from tests.helpers import wire
from tests.helpers.client import WireClient


def server_state(**limits: object) -> ServerState:
    """Shared broker state with ``[limits]`` fields overridden (memory store)."""
    config = Config(limits=dataclasses.replace(LimitsConfig(), **limits))  # type: ignore[arg-type]
    return ServerState(config=config, broker=Broker(config.limits), access=AccessControl(config))


def serve_stream(nursery: trio.Nursery, state: ServerState, stream: trio.abc.Stream) -> None:
    """Serve one MQTT connection over ``stream`` in ``nursery``."""
    info = ConnectionInfo("memory", "memory:1", ListenerConfig())
    if state.nursery is None:
        state.nursery = nursery  # where the connections' writer tasks run
        nursery.start_soon(state.timeouts.run)  # CONNECT and keepalive deadlines
        nursery.start_soon(state.flusher)  # writes what the connections produce
    nursery.start_soon(Connection(stream, info, state).run)


async def memory_client(
    nursery: trio.Nursery, state: ServerState, client_id: str, **connect_args: object
) -> WireClient:
    """A client on a new memory stream, CONNECTed and accepted (CONNACK 0)."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    serve_stream(nursery, state, server_stream)
    client = WireClient(client_stream)
    await client.send(wire.connect(client_id, **connect_args))  # type: ignore[arg-type]
    await client.expect(wire.connack(0, 0))
    return client
