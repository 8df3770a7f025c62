"""The pure (sans-IO) modules must import without pulling in trio (STYLE.md section 1)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

#: Pure modules that exist from the start: never skipped.
REQUIRED = ["mqttd.codec", "mqttd.topics"]
#: Pure modules written later: skipped while they do not exist yet.
LATER = ["mqttd.protocol", "mqttd.session", "mqttd.retain", "mqttd.router", "mqttd.broker"]

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


@pytest.mark.parametrize("module", REQUIRED)
def test_required_pure_module_does_not_import_trio(module: str) -> None:
    """The codec and topics modules import without trio."""
    assert _probe(module) == "PURE"


@pytest.mark.parametrize("module", LATER)
def test_later_pure_module_does_not_import_trio(module: str) -> None:
    """Each pure module, once it exists, imports without trio."""
    outcome = _probe(module)
    if outcome == "MISSING":
        pytest.skip(f"{module} does not exist yet")
    assert outcome == "PURE"


def test_probe_detects_trio() -> None:
    """The probe itself can fail: a module that imports trio is reported as such."""
    assert _probe("mqttd.transports") == "TRIO"
