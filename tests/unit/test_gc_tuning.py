"""The broker process tunes CPython's cyclic GC (mqttd.cli.tune_gc)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from mqttd.cli import GC_YOUNG_THRESHOLD, tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_tune_gc_freezes_start_up_objects_and_raises_the_young_threshold(
    restore_gc: None,
) -> None:
    """Start-up objects go to the permanent generation; young collections are rarer."""
    gc.unfreeze()
    start_up_object = [["config loaded before serving"]]  # lists are always GC-tracked
    assert any(start_up_object is obj for obj in gc.get_objects())
    tune_gc()
    assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD > 700
    assert gc.get_freeze_count() > 0
    assert not any(start_up_object is obj for obj in gc.get_objects())  # frozen: not tracked
    gc.collect()  # a full collection still works and does not unfreeze
    assert gc.get_freeze_count() > 0
