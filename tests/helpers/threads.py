"""Blocking test bodies (paho-mqtt, subprocesses read by threads) inside the trio-mode suite."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import trio


def in_thread(test: Callable[..., None]) -> Callable[..., Awaitable[None]]:
    """Run a blocking test body in a worker thread, as a Trio test (the suite runs in trio mode)."""

    @functools.wraps(test)
    async def run(*args: object, **kwargs: object) -> None:
        await trio.to_thread.run_sync(functools.partial(test, *args, **kwargs))

    return run
