"""``scripts/bench_store.py``'s code: mqttd's durability modes measured side by side.

Modules: ``client`` (connections and payloads), ``flow`` (the measuring loop and its checks),
``scenarios`` (what is measured, on which broker), ``report`` (table and machine details),
``cli`` (the command line and the run).
"""

from __future__ import annotations
