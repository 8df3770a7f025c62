"""Fixtures shared by every test directory (keep this file small)."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

#: The repository root (``tests/..``).
REPO_ROOT = Path(__file__).resolve().parent.parent

WriteConfig = Callable[..., Path]


@pytest.fixture
def repo_root() -> Path:
    """The repository root, for tests that read shipped files (README, configs/)."""
    return REPO_ROOT


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    """Write TOML text to a file under ``tmp_path`` and return its path."""

    def write(text: str, name: str = "mqttd.toml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def coredis_garbage_collected() -> Iterator[None]:
    """For tests that run cluster nodes in-process: collect the test's garbage at its end,
    ignoring one warning. coredis leaves some buffers (anyio memory streams) of its
    connections unclosed, in reference cycles -- a node's connections when it stops, any
    connection that failed while Redis was down. Collected at a random later point instead,
    in whichever test runs then, their ResourceWarning would fail that test."""
    yield
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Unclosed <MemoryObject", ResourceWarning)
        gc.collect()
