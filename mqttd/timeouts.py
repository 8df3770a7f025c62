"""Connection deadlines (the CONNECT timeout, 1.5 x Keep Alive), watched by one task.

A cancel-scope deadline per connection would cost every reader a deadline update per batch of
packets (trio re-registers the scope each time) and every idle connection a registered scope.
Instead a connection only records when its last complete packet arrived, and one task keeps a
heap with one live entry per connection (watching again replaces it). When an entry comes due
the task asks the connection for its current deadline: passed -> ``expire()``; later -> the
entry goes back in. Entries hold weak references, so a closed connection is freed at once, not
when its entry would have come due.
"""

from __future__ import annotations

import itertools
import math
import weakref
from heapq import heappop, heappush
from typing import Protocol

import trio


class Watched(Protocol):
    """What the watch needs from a connection."""

    #: the id of the connection's live heap entry, 0 for none (the watch maintains it)
    watch_entry: int

    def packet_due(self) -> float | None:
        """The time (trio clock) by which the next complete packet must arrive, or None when
        no deadline applies now."""

    def expire(self) -> None:
        """The deadline passed: close the connection."""


class TimeoutWatch:
    """Fires connection deadlines from a single task: ``run``, which the server starts in its
    background nursery (not among the connections, whose nursery must empty on shutdown)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, weakref.ref[Watched]]] = []
        self._ids = itertools.count(1)
        self._next_wake = math.inf
        self._changed: trio.Event | None = None

    def watch(self, item: Watched, due: float) -> None:
        """Check ``item`` at ``due`` (and from then on, as long as it reports a deadline),
        instead of when its previous entry would have come due."""
        entry = next(self._ids)
        heappush(self._heap, (due, entry, weakref.ref(item)))
        item.watch_entry = entry
        if due < self._next_wake and self._changed is not None:
            self._changed.set()

    def __len__(self) -> int:
        return len(self._heap)

    async def run(self) -> None:
        """Expire connections as their deadlines pass, until cancelled."""
        heap = self._heap
        ids = self._ids
        try:
            while True:
                now = trio.current_time()
                while heap and heap[0][0] <= now:
                    _, entry, ref = heappop(heap)
                    item = ref()
                    if item is None or item.watch_entry != entry:
                        continue  # closed and gone, or watched anew since
                    item.watch_entry = 0
                    due = item.packet_due()
                    if due is None:
                        continue
                    if due <= now:
                        item.expire()
                    else:
                        entry = next(ids)
                        heappush(heap, (due, entry, ref))
                        item.watch_entry = entry
                self._next_wake = heap[0][0] if heap else math.inf
                self._changed = trio.Event()
                with trio.move_on_at(self._next_wake):
                    await self._changed.wait()
        finally:
            self._changed = None
