"""The benchmarks' code: ``scripts/bench.py`` (brokers compared) and ``scripts/bench_store.py``
(mqttd's durability modes compared).

Theory of operation
-------------------
The load generator speaks MQTT 3.1.1 (or MQTT 5 with ``--protocol 5``) itself, with the
client-side wire library ``conformance.wire``; it never imports mqttd. PUBLISH packets are
built from a pre-encoded fixed header + topic, with only the packet id and a 20-byte payload
head (sequence number, publisher index, send time) packed per message, and are written in big
batches with one ``sendall``.
Incoming bytes go through ``wire.Framer``, which cuts whole packets by their fixed header only.
WebSocket clients do the HTTP upgrade by hand and wrap each batch in one masked binary frame.

Publishers and subscribers run in separate processes (``multiprocessing``, fork) using plain
blocking sockets plus ``selectors``; shared counters (published per publisher, delivered per
subscriber process) implement an end-to-end window so no broker is pushed into dropping
messages, and QoS 1/2 publishers keep at most ``window`` messages unacknowledged.

Correctness is checked while measuring: every subscriber records which sequence numbers it saw
from each publisher, so the run reports losses, duplicates and out-of-order deliveries. Broker
CPU % comes from ``/proc/<pid>/task/*/schedstat`` deltas, memory from ``VmRSS``, both summed
over every process of the broker (``mqttd --workers N``: supervisor, workers, redis-server).

Everything is bounded: each phase has a deadline, every wait has a timeout, workers exit by
themselves, brokers listen on loopback only and are stopped at the end.

Modules: ``wsclient`` (RFC 6455 client framing), ``load`` (payloads, connections, the pipelined
connector), ``flow`` (publisher/subscriber worker processes), ``probes`` (idle connections, one
big payload), ``clusterprobes`` (what a cluster's Redis pays per event), ``machine`` (/proc
readings), ``meter`` (a broker's CPU by role, Redis's command counts, which worker holds each
connection), ``redisinfo`` (INFO commandstats over RESP), ``brokers`` (starting mosquitto and
the forms of mqttd), ``scenarios``, ``report``, ``scaling`` (``--scaling``: interleaved
rounds, medians, ratios), ``model`` (``--model``: bounds for N workers), ``protocols``
(``--compare-protocols``: MQTT 5 against MQTT 3.1.1 in interleaved rounds), ``cli``; ``store``
holds bench_store's client, scenarios and report.
"""

from __future__ import annotations
