"""The pure (sans-IO) modules must import without pulling in trio (STYLE.md section 1)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

#: The sans-IO core: bytes, packets, topics, sessions, routing, ACL and password checks.
PURE = [
    "mqttd.codec",
    "mqttd.topics",
    "mqttd.retain",
    "mqttd.message",
    "mqttd.session",
    "mqttd.broker",
    "mqttd.protocol",
    "mqttd.acl",
    "mqttd.auth",
    "mqttd.admission",
    "mqttd.worker_metrics",
]

_PROBE = textwrap.dedent(
    """
    import importlib, importlib.util, sys
    name = sys.argv[1]
    parent = name.rpartition(".")[0]
    if parent:
        importlib.import_module(parent)
    if importlib.util.find_spec(name) is None:
        print("MISSING")
        sys.exit(0)
    importlib.import_module(name)
    print("TRIO" if "trio" in sys.modules else "PURE")
    """
)


def _probe(module: str) -> str:
    """Import ``module`` in a fresh interpreter; report MISSING, PURE or TRIO."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, module],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("module", PURE)
def test_pure_module_does_not_import_trio(module: str) -> None:
    """Each pure module imports without trio (and exists)."""
    assert _probe(module) == "PURE"


def test_probe_detects_trio() -> None:
    """The probe itself can fail: a module that imports trio is reported as such."""
    assert _probe("mqttd.transports") == "TRIO"
