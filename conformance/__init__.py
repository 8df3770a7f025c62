"""MQTT 5.0, 3.1.1 and 3.1 conformance suite: ``python -m conformance --host H --port P``.

Independent of ``mqttd``: its own wire codec (``conformance.wire``), its own cases
(``conformance.cases``), runnable against any broker. ``conformance.wire`` and
``conformance.broker_process`` (start a broker process, learn its ports) are also the client
side the tests and the benchmarks share.
"""

from __future__ import annotations

from collections.abc import Iterable

from conformance.core import REGISTRY, Case, Context, Fail, Skip
from conformance.runner import Result, run_all
from conformance.transport import Target


def load_cases(protocols: Iterable[int] | None = None) -> list[Case]:
    """Import every case module and return the registered cases in registry order: all of
    them, or those of ``protocols`` (3 = MQTT 3.1, 4 = 3.1.1, 5 = 5.0)."""
    import conformance.cases  # noqa: F401  (registers the cases)

    wanted = None if protocols is None else set(protocols)
    return [c for c in REGISTRY.values() if wanted is None or c.protocol in wanted]


__all__ = ["Case", "Context", "Fail", "Result", "Skip", "Target", "load_cases", "run_all"]
