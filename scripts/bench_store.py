#!/usr/bin/env python3
"""Benchmark mqttd's durable store: every ``[store] durability`` mode, measured in one run.

The code lives in ``scripts/mqttbench/store`` (client, measuring loop, scenarios, report); the MQTT
wire codec and broker start-up are the shared ``conformance.wire`` and
``conformance.broker_process``.

Usage: ``python scripts/bench_store.py [--quick] [--markdown FILE]`` (see ``--help``).
"""

from __future__ import annotations

import sys

from mqttbench.store.cli import main

if __name__ == "__main__":
    sys.exit(main())
