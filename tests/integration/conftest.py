"""Fixtures that run a real mqttd broker in the test's trio nursery on a free loopback port."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from mqttd.config import Config, LimitsConfig, ListenerConfig, StoreConfig
from mqttd.server import Server, serve
from tests.helpers.client import OPEN_CLIENTS

StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture(autouse=True)
async def close_wire_clients() -> AsyncIterator[None]:
    """Close every test client socket when the test ends."""
    yield
    while OPEN_CLIENTS:
        await OPEN_CLIENTS.pop().aclose()


@pytest.fixture(params=["memory", "fsync"])
def durability(request: pytest.FixtureRequest) -> str:
    """Every broker behaviour is checked without a store and with the SQLite store."""
    return str(request.param)


@pytest.fixture
def start_server(nursery: trio.Nursery, durability: str, tmp_path: Path) -> StartServer:
    """Start a broker with TCP on 127.0.0.1:0; keyword arguments override ``[limits]`` fields."""

    async def start(*, auth: Any = None, **limits: Any) -> Server:
        config = Config(
            listeners=(ListenerConfig(type="tcp", host="127.0.0.1", port=0),),
            limits=dataclasses.replace(LimitsConfig(), **limits),
            store=StoreConfig(durability=durability, path=tmp_path / "store" / "mqttd.db"),
        )
        if auth is not None:
            config = dataclasses.replace(config, auth=auth)
        with trio.fail_after(10):
            server: Server = await nursery.start(serve, config)
        return server

    return start


@pytest.fixture
async def server(start_server: StartServer) -> Server:
    """A broker with default limits."""
    return await start_server()
