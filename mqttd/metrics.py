"""Prometheus metrics: the broker's counters in the text exposition format, for ``/metrics``.

Theory of operation: ``prometheus_client`` does the registry and the exposition
(``generate_latest``); nothing here formats text by hand. The broker's hot paths never touch a
``prometheus_client`` object: ``BrokerCollector`` is a custom collector that reads the counters
the broker keeps anyway (``mqttd.sysinfo.Monitor.figures()``) when Prometheus scrapes, and turns
them into metric families. Each server gets a registry of its own (several brokers in one test
process must not share one), with the library's process collector (RSS, CPU seconds, open file
descriptors), platform and garbage-collector collectors beside ours.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from mqttd import __version__
from mqttd.store import COMMIT_BUCKETS_S
from mqttd.sysinfo import PACKET_TYPES, Figures, Monitor

__all__ = ["CONTENT_TYPE", "BrokerCollector", "new_registry", "render"]

#: The Content-Type of ``render``'s output (Prometheus text format 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class BrokerCollector:
    """A ``prometheus_client`` collector reading one broker's counters at each scrape.

    Args:
        monitor: the broker's figures.
    """

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[Metric]:
        """Yield every ``mqttd_*`` metric family, read now."""
        f = self.monitor.figures()
        yield from _build_and_uptime(f)
        yield from _connections(f)
        yield from _traffic(f)
        yield from _messages(f)
        yield from _state(f)
        yield from _store(f)
        yield from _cluster(f)


def _build_and_uptime(f: Figures) -> Iterator[Metric]:
    info = GaugeMetricFamily(
        "mqttd_build_info",
        "mqttd's version and the Python running it (always 1)",
        labels=["version", "python"],
    )
    info.add_metric([__version__, platform.python_version()], 1)
    yield info
    yield GaugeMetricFamily("mqttd_uptime_seconds", "seconds since the broker started", f.uptime_s)


def _connections(f: Figures) -> Iterator[Metric]:
    open_ = GaugeMetricFamily(
        "mqttd_connections",
        "open connections per listener (admitted sockets, before and after CONNECT)",
        labels=["listener", "transport"],
    )
    clients = GaugeMetricFamily(
        "mqttd_clients_connected",
        "MQTT clients connected (CONNACK sent) per listener",
        labels=["listener", "transport"],
    )
    accepted = CounterMetricFamily(
        "mqttd_connections_accepted",
        "connections admitted per listener since start",
        labels=["listener", "transport"],
    )
    for listener in f.listeners:
        labels = [listener.name, listener.type]
        open_.add_metric(labels, listener.connections)
        clients.add_metric(labels, listener.clients)
        accepted.add_metric(labels, listener.accepted)
    yield open_
    yield clients
    yield accepted
    by_protocol = GaugeMetricFamily(
        "mqttd_clients_connected_by_protocol",
        "MQTT clients connected, by protocol version",
        labels=["protocol"],
    )
    for protocol, count in f.clients_by_protocol.items():
        by_protocol.add_metric([protocol], count)
    yield by_protocol
    refused = CounterMetricFamily(
        "mqttd_connections_refused",
        "connections closed at accept time by the admission limits, by reason",
        labels=["reason"],
    )
    for reason, count in sorted(f.connections_refused.items()):
        refused.add_metric([reason], count)
    yield refused
    connects = CounterMetricFamily(
        "mqttd_connects",
        "CONNECT packets answered, by result: accepted, or why the CONNACK refused",
        labels=["result"],
    )
    for result, count in sorted(f.connects.items()):
        connects.add_metric([result], count)
    yield connects
    disconnects = CounterMetricFamily(
        "mqttd_disconnects", "MQTT connections ended, by reason", labels=["reason"]
    )
    for reason, count in sorted(f.disconnects.items()):
        disconnects.add_metric([reason], count)
    yield disconnects
    sessions = GaugeMetricFamily(
        "mqttd_sessions",
        "sessions held: connected clients, and persistent sessions of disconnected clients",
        labels=["state"],
    )
    sessions.add_metric(["connected"], f.clients_connected)
    sessions.add_metric(["disconnected"], f.clients_disconnected)
    yield sessions
    yield GaugeMetricFamily(
        "mqttd_slow_consumers",
        "connected clients with messages waiting beyond their inflight window",
        f.slow_consumers,
    )
    yield CounterMetricFamily(
        "mqttd_sessions_expired",
        "persistent sessions removed by persistent_client_expiration",
        f.sessions_expired,
    )
    yield CounterMetricFamily(
        "mqttd_sessions_reowned",
        "persistent sessions discarded because another user took their client id",
        f.sessions_reowned,
    )


def _traffic(f: Figures) -> Iterator[Metric]:
    for direction, packets, sizes in (
        ("received", f.packets_in, f.bytes_in),
        ("sent", f.packets_out, f.bytes_out),
    ):
        count = CounterMetricFamily(
            f"mqttd_packets_{direction}",
            f"MQTT control packets {direction}, by type"
            + (" (sent: when queued for the connection)" if direction == "sent" else ""),
            labels=["type"],
        )
        size = CounterMetricFamily(
            f"mqttd_packet_bytes_{direction}",
            f"bytes of the MQTT control packets {direction}, by type (fixed header included)",
            labels=["type"],
        )
        for kind, name in PACKET_TYPES.items():
            count.add_metric([name], packets[kind])
            size.add_metric([name], sizes[kind])
        yield count
        yield size
    yield CounterMetricFamily(
        "mqttd_publish_payload_bytes_received",
        "payload bytes of the PUBLISH packets received",
        f.publish_payload_in,
    )
    yield CounterMetricFamily(
        "mqttd_publish_payload_bytes_sent",
        "payload bytes of the PUBLISH packets sent",
        f.publish_payload_out,
    )


def _messages(f: Figures) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "mqttd_messages_received",
        "application messages published into the broker (client PUBLISH, Wills, $SYS)",
        f.messages_received,
    )
    yield CounterMetricFamily(
        "mqttd_messages_routed",
        "application messages that matched at least one subscription",
        f.messages_routed,
    )
    yield CounterMetricFamily(
        "mqttd_messages_delivered",
        "deliveries to sessions: sent at once or queued",
        f.deliveries,
    )
    dropped = CounterMetricFamily(
        "mqttd_messages_dropped",
        "deliveries dropped, by reason: queue_full (max_queued_messages/bytes), outbox_full "
        "(QoS 0 to a client that does not read), cluster_forward (in a cluster)",
        labels=["reason"],
    )
    for reason, count in f.dropped.items():
        dropped.add_metric([reason], count)
    yield dropped
    yield CounterMetricFamily(
        "mqttd_retained_refused",
        "retained messages not kept because of max_retained_messages/bytes",
        f.retained_refused,
    )


def _state(f: Figures) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "mqttd_queued_messages",
        "messages waiting in session queues (beyond the inflight window, or offline)",
        f.queued_messages,
    )
    yield GaugeMetricFamily(
        "mqttd_queued_bytes", "topic and payload bytes of the queued messages", f.queued_bytes
    )
    yield GaugeMetricFamily(
        "mqttd_inflight_messages",
        "QoS 1/2 messages sent and not yet acknowledged",
        f.inflight_messages,
    )
    yield GaugeMetricFamily(
        "mqttd_outbox_bytes", "bytes waiting to be written to clients", f.outbox_bytes
    )
    yield GaugeMetricFamily(
        "mqttd_retained_messages", "retained messages ($SYS included)", f.retained_count
    )
    yield GaugeMetricFamily(
        "mqttd_retained_bytes",
        "what the clients' retained messages cost against max_retained_bytes",
        f.retained_bytes,
    )
    yield GaugeMetricFamily(
        "mqttd_subscriptions", "subscriptions (client, topic filter)", f.subscriptions
    )


def _store(f: Figures) -> Iterator[Metric]:
    store = f.store
    if store is None:
        return
    yield CounterMetricFamily(
        "mqttd_store_commits", "transactions the SQLite store committed", store.commits
    )
    yield CounterMetricFamily(
        "mqttd_store_commit_failures",
        "transactions of the SQLite store that failed",
        store.failures,
    )
    yield GaugeMetricFamily(
        "mqttd_store_backlog_operations",
        "store operations recorded and not yet committed",
        store.backlog,
    )
    buckets = []
    cumulative = 0
    for bound, count in zip((*COMMIT_BUCKETS_S, float("inf")), store.commit_buckets, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    yield HistogramMetricFamily(
        "mqttd_store_commit_seconds",
        "how long one store transaction took, sync included",
        buckets=buckets,
        sum_value=store.commit_seconds,
    )


def _cluster(f: Figures) -> Iterator[Metric]:
    if f.cluster_node is None:
        return
    node = GaugeMetricFamily(
        "mqttd_cluster_node_info", "this node's id in the cluster (always 1)", labels=["node"]
    )
    node.add_metric([f.cluster_node], 1)
    yield node
    yield GaugeMetricFamily(
        "mqttd_cluster_link_up", "1 while the link to Redis is up", int(bool(f.cluster_link_up))
    )
    yield GaugeMetricFamily(
        "mqttd_cluster_routes", "topic filters other nodes subscribe to", f.cluster.get("routes", 0)
    )
    for key, name, text in (
        ("forwarded", "mqttd_cluster_messages_forwarded", "messages sent to other nodes"),
        ("received", "mqttd_cluster_messages_from_nodes", "messages received from other nodes"),
        ("wills_published", "mqttd_cluster_wills_published", "Wills of dead nodes' clients"),
        ("sessions_adopted", "mqttd_cluster_sessions_adopted", "sessions taken from dead nodes"),
    ):
        yield CounterMetricFamily(name, text, f.cluster.get(key, 0))


def new_registry(monitor: Monitor) -> CollectorRegistry:
    """A registry with the broker's collector and the library's process, platform and
    garbage-collector collectors.

    Args:
        monitor: the broker's figures.

    Returns:
        The registry ``render`` exposes.
    """
    registry = CollectorRegistry()
    registry.register(BrokerCollector(monitor))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The registry's metrics in the Prometheus text format (``CONTENT_TYPE``)."""
    return generate_latest(registry)
