"""The timeout watch (mqttd.timeouts): deadlines fire on time, move, and forget closed items.

All on trio's MockClock with autojump: no real time passes.
"""

from __future__ import annotations

import gc

import trio
import trio.testing

from mqttd.timeouts import TimeoutWatch


class Item:
    """A stand-in connection whose deadline the test moves."""

    def __init__(self, due: float | None) -> None:
        self.due = due
        self.watch_entry = 0
        self.expired_at: float | None = None
        self.expired = trio.Event()

    def packet_due(self) -> float | None:
        return self.due

    def expire(self) -> None:
        self.expired_at = trio.current_time()
        self.expired.set()


async def test_expires_exactly_at_the_deadline(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    watch = TimeoutWatch()
    nursery.start_soon(watch.run)
    start = trio.current_time()
    item = Item(start + 15)
    watch.watch(item, start + 15)
    await item.expired.wait()
    assert item.expired_at == start + 15


async def test_a_later_deadline_is_rechecked_not_expired(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The reader moves its deadline by recording packets; the watch finds out when the old
    entry comes due and waits for the new deadline."""
    watch = TimeoutWatch()
    nursery.start_soon(watch.run)
    start = trio.current_time()
    item = Item(start + 10)
    watch.watch(item, start + 10)
    await trio.sleep(9)  # mock time (autojump clock)
    item.due = start + 25  # a packet arrived
    await item.expired.wait()
    assert item.expired_at == start + 25


async def test_watching_again_replaces_a_later_entry(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """CONNECT accepted with a keepalive shorter than the CONNECT timeout: the earlier
    deadline wins, and the old entry is ignored when it comes due."""
    watch = TimeoutWatch()
    nursery.start_soon(watch.run)
    start = trio.current_time()
    item = Item(start + 10)
    watch.watch(item, start + 10)
    await trio.sleep(1)  # mock time (autojump clock)
    item.due = start + 4
    watch.watch(item, start + 4)
    await item.expired.wait()
    assert item.expired_at == start + 4
    expired_once = item.expired_at
    await trio.sleep(20)  # mock time (autojump clock)
    assert item.expired_at == expired_once  # the stale entry did not fire again


async def test_no_deadline_stops_watching(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    watch = TimeoutWatch()
    nursery.start_soon(watch.run)
    start = trio.current_time()
    item = Item(start + 5)
    watch.watch(item, start + 5)
    await trio.sleep(1)  # mock time (autojump clock)
    item.due = None  # keepalive 0, or closed
    await trio.sleep(10)  # mock time (autojump clock)
    assert item.expired_at is None
    assert len(watch) == 0
    assert item.watch_entry == 0


async def test_closed_items_are_not_kept_alive(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Entries hold weak references: a connection that is gone is freed at once and its
    entry skipped."""
    watch = TimeoutWatch()
    nursery.start_soon(watch.run)
    start = trio.current_time()
    survivor = Item(start + 30)
    watch.watch(survivor, start + 30)
    gone = Item(start + 10)
    watch.watch(gone, start + 10)
    del gone
    gc.collect()
    await survivor.expired.wait()
    assert survivor.expired_at == start + 30
    assert len(watch) == 0


async def test_many_items_fire_in_deadline_order(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    watch = TimeoutWatch()
    nursery.start_soon(watch.run)
    start = trio.current_time()
    items = [Item(start + due) for due in (7, 3, 11, 5, 3)]
    for item in items:
        assert item.due is not None
        watch.watch(item, item.due)
    for item in items:
        await item.expired.wait()
    assert [item.expired_at for item in items] == [item.due for item in items]
