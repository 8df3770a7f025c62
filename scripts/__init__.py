"""Developer scripts, run as files from the repository root (``python scripts/bench.py``).

The benchmarks' code lives in the ``mqttbench`` package next to them: a script run as a file has
its own directory on ``sys.path``, so it imports ``mqttbench``; the tests import the same code as
``scripts.mqttbench``. Their MQTT wire codec and broker start-up come from the installed
``conformance`` package (``conformance.wire``, ``conformance.broker_process``).
"""

from __future__ import annotations
