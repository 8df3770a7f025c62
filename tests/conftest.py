"""Fixtures shared by every test directory (keep this file small)."""

from __future__ import annotations

from collections.abc import Callable
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
