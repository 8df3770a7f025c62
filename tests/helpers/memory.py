"""Run broker connections over trio memory streams (no sockets), for tests on the mock clock."""

from __future__ import annotations

import dataclasses

import trio

from mqttd.access import AccessControl
from mqttd.broker import Broker
from mqttd.config import Config, LimitsConfig, ListenerConfig
from mqttd.connection import Connection, ServerState
from mqttd.transports import ConnectionInfo


def server_state(**limits: object) -> ServerState:
    """Shared broker state with ``[limits]`` fields overridden (memory store)."""
    config = Config(limits=dataclasses.replace(LimitsConfig(), **limits))  # type: ignore[arg-type]
    return ServerState(config=config, broker=Broker(config.limits), access=AccessControl(config))


def serve_stream(nursery: trio.Nursery, state: ServerState, stream: trio.abc.Stream) -> None:
    """Serve one MQTT connection over ``stream`` in ``nursery``."""
    info = ConnectionInfo("memory", "memory:1", ListenerConfig())
    nursery.start_soon(Connection(stream, info, state).run)
