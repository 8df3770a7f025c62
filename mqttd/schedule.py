"""The broker's own timers -- MQTT 5 session expiry and delayed Wills -- pure.

Times are wall-clock seconds (``time.time()``), like the session times the store keeps, so a
session expiring at 14:03 still expires at 14:03 after a restart. ``Schedule`` only orders the
timers; a task of the server calls ``run_due(now)`` when ``next_at()`` comes, and again
whenever ``on_sooner`` says a timer earlier than the one it waits for was added.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from heapq import heappop, heappush

__all__ = ["Schedule", "Timer"]


class Timer:
    """One scheduled call; ``cancel()`` makes it never run."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        """Do not run it (it leaves the heap when it comes due)."""
        self.cancelled = True


class Schedule:
    """Timers by time; ``run_due`` runs those whose time has come, in time order."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        #: called when a timer is added that is due before every other one (the server's task
        #: then waits for less)
        self.on_sooner: Callable[[], None] | None = None

    def __len__(self) -> int:
        """Timers not yet run (cancelled ones included until they come due)."""
        return len(self._heap)

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` once ``run_due`` is called with ``now >= when``."""
        timer = Timer(when, callback)
        sooner = not self._heap or when < self._heap[0][0]
        heappush(self._heap, (when, next(self._order), timer))
        if sooner and self.on_sooner is not None:
            self.on_sooner()
        return timer

    def next_at(self) -> float | None:
        """When the next timer is due (None: no timer)."""
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heappop(heap)
        return heap[0][0] if heap else None

    def run_due(self, now: float) -> int:
        """Run every timer due at ``now``; returns how many ran."""
        heap = self._heap
        ran = 0
        while heap and heap[0][0] <= now:
            timer = heappop(heap)[2]
            if not timer.cancelled:
                timer.cancelled = True  # it ran: cancelling it later does nothing
                ran += 1
                timer.callback()
        return ran
