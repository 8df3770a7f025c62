"""What every connection of one broker shares: the configuration, the broker, the access
rules, who is connected, and the output that waits for one flush.

``ServerState`` is created by ``mqttd.server`` (or a test) and handed to each ``Connection``;
the connections register here by client id (``clients``) so a CONNECT can take an older
connection over, and join ``dirty`` when they have output to write with the next flush.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from mqttd.access import AccessControl
from mqttd.broker import Broker
from mqttd.config import Config
from mqttd.timeouts import TimeoutWatch

if TYPE_CHECKING:
    from mqttd.cluster.node import ClusterNode
    from mqttd.connection import Connection

__all__ = ["TAKEOVER_TIMEOUT_S", "ServerState"]

#: How long a takeover waits for the old connection to finish its cleanup.
TAKEOVER_TIMEOUT_S = 5.0


@dataclass(eq=False)
class ServerState:
    """What every connection shares: config, broker, and who is connected."""

    config: Config
    broker: Broker
    access: AccessControl
    clients: dict[str, Connection] = field(default_factory=dict)
    connections: set[Connection] = field(default_factory=set)
    shutting_down: bool = False
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    #: connections with new output and no writer task: written in one go (``flush_dirty``)
    dirty: list[Connection] = field(default_factory=list)
    flush_needed: trio.Event = field(default_factory=trio.Event)
    #: where writer tasks run: the nursery of the connections (set by whoever serves them)
    nursery: trio.Nursery | None = None
    #: CONNECT and keepalive deadlines; whoever serves the connections runs ``timeouts.run``
    timeouts: TimeoutWatch = field(default_factory=TimeoutWatch)
    #: this broker's node of a cluster, if it is one
    cluster: ClusterNode | None = None

    def next_connection_id(self) -> int:
        return next(self._ids)

    async def kick_client(self, client_id: str) -> None:
        """Close this broker's connection of ``client_id``, if any, and wait until it is
        closed (another node of the cluster takes the client over)."""
        connection = self.clients.get(client_id)
        if connection is None:
            return
        connection.kick("session_taken_over")
        with trio.move_on_after(TAKEOVER_TIMEOUT_S):
            await connection.closed.wait()

    def flush_dirty(self) -> None:
        """Write every pending output of a connection without a writer task, without blocking."""
        dirty = self.dirty
        while dirty:
            batch = dirty[:]
            dirty.clear()
            for connection in batch:
                connection.flush_now()

    async def flusher(self) -> None:
        """Write what the connections produced since the last round: woken when the first
        connection of a round becomes dirty, so it runs after the readers of that round."""
        while True:
            await self.flush_needed.wait()
            self.flush_needed = trio.Event()
            self.flush_dirty()
