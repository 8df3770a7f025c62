#!/usr/bin/env python3
"""Benchmark an MQTT broker (mqttd, Mosquitto, or any running broker) with its own load generator.

The code lives in ``scripts/mqttbench`` (load generator, flows, scenarios, report; see its
docstring for the theory of operation); the MQTT wire codec and broker start-up are the shared
``conformance.wire`` and ``conformance.broker_process``.

Usage: ``python scripts/bench.py --against mosquitto [--quick]`` (see ``--help``).
"""

from __future__ import annotations

import sys

from mqttbench.cli import main

if __name__ == "__main__":
    sys.exit(main())
