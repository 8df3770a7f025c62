"""The coredis client of a cluster node.

coredis is imported here only, and with ``BytesWarning`` silenced for the import: some of its
modules hold sets with both ``b"x"`` and ``"x"`` constants, and building them compares bytes
with str, which ``python -bb`` (how the tests run) would turn into an error at import time.
The warning says nothing about mqttd's own code, whose bytes/str mix-ups ``-bb`` still catches.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import trio

from mqttd.config import ClusterConfig
from mqttd.errors import StartupError

with warnings.catch_warnings():
    warnings.simplefilter("ignore", BytesWarning)
    import coredis
    import coredis.exceptions
    import coredis.patterns.pipeline  # imported lazily by coredis itself otherwise
    from coredis.connection import TCPLocation

__all__ = ["PureToken", "RedisError", "connect"]

#: coredis's tokens for command options (MAXLEN, MINID, ...).
PureToken = coredis.PureToken

#: Errors a Redis call raises on purpose (connection lost, error reply, ...).
RedisError = coredis.exceptions.RedisError


@asynccontextmanager
async def connect(config: ClusterConfig) -> AsyncIterator[Any]:
    """A connected coredis client for ``[cluster]``: ``redis_url`` (redis://, rediss:// or
    unix://), or the primary that ``sentinels`` name for ``sentinel_service`` (the client
    asks them again after a failover).

    Raises:
        StartupError: Redis cannot be reached within ``node_timeout_s``: one line for the
            operator.
    """
    timeout_s = config.node_timeout_s
    client: Any
    sentinel: Any = None
    if config.sentinels:
        sentinel = coredis.Sentinel(
            [
                TCPLocation(host, int(port))
                for host, _, port in (a.rpartition(":") for a in config.sentinels)
            ]
        )
        client = sentinel.primary_for(
            config.sentinel_service, decode_responses=False, max_connections=64
        )
        where = (
            f"cluster.sentinels {', '.join(config.sentinels)}: cannot reach the primary of "
            f"{config.sentinel_service!r}"
        )
    else:
        url = config.redis_url
        assert url is not None
        client = coredis.Redis.from_url(url, decode_responses=False, max_connections=64)
        where = f"cluster.redis_url {url}: cannot reach Redis"
    connected = False
    try:
        async with AsyncExitStack() as stack:
            if sentinel is not None:
                await stack.enter_async_context(sentinel)
            await stack.enter_async_context(client)
            try:
                with trio.fail_after(timeout_s):
                    await client.ping()
            except (trio.TooSlowError, OSError, RedisError) as exc:
                raise StartupError(f"{where}: {exc}") from None
            connected = True
            yield client
    except* (OSError, RedisError) as group:
        if connected:
            raise
        raise StartupError(f"{where}: {group.exceptions[0]}") from None
