#!/usr/bin/env python3
"""Connects/s on this machine: one mqttd process, two plain processes sharing the port (the
ceiling of ``--workers 2`` without any cluster cost), ``--workers 2``, Mosquitto, and the least
a trio server does per connect, in one process and in two sharing the port (``trio-floor``,
``trio-floor-x2``).

The code lives in ``scripts/mqttbench/connects.py``.

Usage: ``python scripts/bench_connects.py [--connects N] [--rounds R] [--forms ...]``.
"""

from __future__ import annotations

import sys

from mqttbench.connects import main

if __name__ == "__main__":
    sys.exit(main())
