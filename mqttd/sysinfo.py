"""``$SYS/broker/...`` status topics, published as retained messages like Mosquitto's, and the
figures behind them, which ``/metrics`` and the health endpoints read too.

Theory of operation: nothing here runs per packet. The broker counts as it goes -- plain
integers and lists in ``BrokerStats`` (packets and bytes by type, counted by the decoders and
the sessions; connects and disconnects by reason; drops by reason), the store's commit counts
and latency buckets, the admission gate's socket counts -- and ``Monitor.figures()`` reads them
all at once when someone asks: the ``$SYS`` task every ``sys_interval_s``, a Prometheus scrape,
the dashboard through ``$SYS``. Only what no counter holds (queue depths, clients per listener)
is summed over the sessions and connections then, once per ask.

``SysTree`` turns successive figures into the ``$SYS`` topics with Mosquitto 2.0's names, units
and update rules: a topic is published when its value changed (``uptime`` every time), the load
averages are Mosquitto's exponentially damped per-minute rates (``LoadAverage``), and
``clients/maximum`` only ever grows. The names Mosquitto lacks live under ``$SYS/broker/mqttd/``.
Subscribers of ``$SYS/#`` get the latest values at once (they are retained). Filters that start
with a wildcard never see them ([MQTT-4.7.2-1]), and clients cannot publish there. The values are
regenerated at start-up, so they are never written to the durable store.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import structlog
import trio

from mqttd import __version__
from mqttd.broker import TRAFFIC_PUBLISH_PAYLOAD, Broker
from mqttd.config import ListenerConfig
from mqttd.shared import ServerState
from mqttd.store import COMMIT_BUCKETS_S

if TYPE_CHECKING:
    from mqttd.store import Store

log = structlog.get_logger("mqttd.sysinfo")

#: MQTT control packet type -> name (the ``type`` label of the packet metrics).
PACKET_TYPES: dict[int, str] = {
    1: "connect",
    2: "connack",
    3: "publish",
    4: "puback",
    5: "pubrec",
    6: "pubrel",
    7: "pubcomp",
    8: "subscribe",
    9: "suback",
    10: "unsubscribe",
    11: "unsuback",
    12: "pingreq",
    13: "pingresp",
    14: "disconnect",
}

#: The load average windows Mosquitto publishes, in seconds, and their topic suffixes.
LOAD_WINDOWS: tuple[tuple[str, float], ...] = (("1min", 60.0), ("5min", 300.0), ("15min", 900.0))


class GateFigures(Protocol):
    """What the admission gate (``mqttd.server.ConnectionGate``) counts, read by monitoring."""

    #: open connections admitted per listener (keyed by ``id(listener)``)
    per_listener: dict[int, int]
    #: connections admitted since start, per listener (keyed by ``id(listener)``)
    accepted: dict[int, int]
    #: connections refused at accept time, by reason
    refused: dict[str, int]


@dataclass(frozen=True, slots=True)
class ListenerFigures:
    """One listener as monitoring shows it: how it is configured, where it listens, and what
    is connected to it."""

    type: str
    host: str
    port: int
    #: open connections (sockets admitted and not yet closed; HTTP-only ones included)
    connections: int
    #: MQTT clients connected (CONNACK sent)
    clients: int
    #: connections admitted since start
    accepted: int

    @property
    def name(self) -> str:
        """``host:port`` (IPv6 hosts in brackets), the ``listener`` label of the metrics."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


#: MQTT versions by protocol level, as monitoring names them.
PROTOCOL_NAMES = {5: "5", 4: "3.1.1", 3: "3.1"}


@dataclass(frozen=True, slots=True)
class StoreFigures:
    """The durable store's counters (see ``mqttd.store.Store``)."""

    commits: int
    failures: int
    backlog: int
    commit_seconds: float
    #: non-cumulative counts per bucket of ``mqttd.store.COMMIT_BUCKETS_S``, the last one +Inf
    commit_buckets: tuple[int, ...]
    last_commit_failed: bool


@dataclass(frozen=True, slots=True)
class Figures:
    """Everything monitoring reports, read at one instant (counters and gauges alike)."""

    uptime_s: float
    clients_connected: int
    #: connected clients by MQTT version ("5", "3.1.1", "3.1")
    clients_by_protocol: dict[str, int]
    #: persistent sessions whose client is not connected
    clients_disconnected: int
    #: connected clients plus disconnected persistent sessions (Mosquitto's clients/total)
    clients_total: int
    sessions: int
    #: connected clients with messages waiting beyond their inflight window
    slow_consumers: int
    listeners: tuple[ListenerFigures, ...]
    sockets_accepted: int
    connections_refused: dict[str, int]
    connects: dict[str, int]
    disconnects: dict[str, int]
    #: per packet type (1-14): packets and bytes received and sent
    packets_in: dict[int, int]
    packets_out: dict[int, int]
    bytes_in: dict[int, int]
    bytes_out: dict[int, int]
    publish_payload_in: int
    publish_payload_out: int
    messages_received: int
    messages_routed: int
    deliveries: int
    dropped: dict[str, int]
    retained_refused: int
    retained_count: int
    retained_bytes: int
    subscriptions: int
    queued_messages: int
    queued_bytes: int
    inflight_messages: int
    outbox_bytes: int
    sessions_expired: int
    sessions_reowned: int
    store: StoreFigures | None
    rss_bytes: int
    max_rss_bytes: int
    cluster: dict[str, int] = field(default_factory=dict)
    cluster_node: str | None = None
    cluster_link_up: bool | None = None

    @property
    def packets_received(self) -> int:
        """Every MQTT control packet received (Mosquitto's messages/received)."""
        return sum(self.packets_in.values())

    @property
    def packets_sent(self) -> int:
        """Every MQTT control packet sent (Mosquitto's messages/sent)."""
        return sum(self.packets_out.values())

    @property
    def bytes_received(self) -> int:
        """MQTT bytes received, fixed headers included."""
        return sum(self.bytes_in.values())

    @property
    def bytes_sent(self) -> int:
        """MQTT bytes sent, fixed headers included."""
        return sum(self.bytes_out.values())

    @property
    def messages_dropped(self) -> int:
        """Deliveries dropped for any reason."""
        return sum(self.dropped.values())

    @property
    def stored_messages(self) -> int:
        """Retained messages plus the messages queued or in flight for sessions (Mosquitto's
        messages/stored; a message queued for several sessions counts once per session)."""
        return self.retained_count + self.queued_messages + self.inflight_messages


def memory_usage() -> tuple[int, int]:
    """The process's resident set size now and at its peak, in bytes (Linux: ``/proc``;
    elsewhere the peak serves for both)."""
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = usage if sys.platform == "darwin" else usage * 1024  # macOS says bytes, Linux KiB
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return peak, peak
    return pages * os.sysconf("SC_PAGE_SIZE"), max(peak, pages * os.sysconf("SC_PAGE_SIZE"))


class Monitor:
    """Reads the broker's counters for ``$SYS``, ``/metrics`` and the health endpoints.

    Created by ``mqttd.server`` (or a test) for one running broker; the server reports each
    listener it starts (``listener_started``).

    Args:
        state: the server's shared state (broker, connections, cluster node).
        gate: the admission gate's counters, if connections pass one.
    """

    def __init__(self, state: ServerState, gate: GateFigures | None = None) -> None:
        self.state = state
        self.gate = gate
        self.started = time.monotonic()
        #: (listener, bound host, bound port) of every listener started so far
        self.bound: list[tuple[ListenerConfig, str, int]] = []

    @property
    def broker(self) -> Broker:
        """The broker whose figures these are."""
        return self.state.broker

    def uptime_s(self) -> float:
        """Seconds since the monitor (the server) started."""
        return time.monotonic() - self.started

    def listener_started(
        self, listener: ListenerConfig, addresses: Iterable[tuple[str, int]]
    ) -> None:
        """``listener`` listens at ``addresses`` (host, port) now."""
        for host, port in addresses:
            self.bound.append((listener, host, port))

    def listeners_up(self) -> tuple[int, int]:
        """How many configured listeners are listening, and how many are configured."""
        started = {id(listener) for listener, _host, _port in self.bound}
        listeners = self.state.config.listeners
        return sum(1 for listener in listeners if id(listener) in started), len(listeners)

    def figures(self) -> Figures:
        """Read every counter and gauge now."""
        state = self.state
        broker = state.broker
        stats = broker.stats
        connected = persistent_offline = persistent_online = slow = 0
        queued = queued_bytes = inflight = outbox = 0
        for session in broker.sessions.values():
            queue_length = len(session.queue)
            queued += queue_length
            queued_bytes += session.queued_bytes
            inflight += len(session.inflight)
            outbox += session.outbox_bytes
            if session.connected:
                connected += 1
                if queue_length:
                    slow += 1
                if not session.clean_session:
                    persistent_online += 1
            elif not session.clean_session:
                persistent_offline += 1
        clients = len(state.clients)
        per_listener: dict[int, int] = {}
        by_protocol = dict.fromkeys(PROTOCOL_NAMES.values(), 0)
        for connection in state.clients.values():
            key = id(connection.info.listener)
            per_listener[key] = per_listener.get(key, 0) + 1
            level = connection.protocol.decoder.protocol_level or 4
            name = PROTOCOL_NAMES.get(level, "3.1.1")
            by_protocol[name] += 1
        gate = self.gate
        open_by_listener = gate.per_listener if gate is not None else {}
        accepted_by_listener = gate.accepted if gate is not None else {}
        listeners = []
        seen: set[int] = set()
        for listener, host, port in self.bound:
            key = id(listener)
            first = key not in seen  # a listener bound to several addresses counts once
            seen.add(key)
            listeners.append(
                ListenerFigures(
                    type=listener.type,
                    host=host,
                    port=port,
                    connections=open_by_listener.get(key, 0) if first else 0,
                    clients=per_listener.get(key, 0) if first else 0,
                    accepted=accepted_by_listener.get(key, 0) if first else 0,
                )
            )
        sockets = sum(
            accepted_by_listener.get(id(listener), 0)
            for listener in state.config.listeners
            if listener.type != "http"
        )
        traffic_in, traffic_out = stats.traffic_in, stats.traffic_out
        dropped = {
            "queue_full": stats.dropped_queue_full,
            "outbox_full": stats.dropped_outbox_full,
        }
        cluster: dict[str, int] = {}
        node = state.cluster
        if node is not None:
            cluster = node.figures()
            dropped["cluster_forward"] = cluster.get("forwards_dropped", 0)
        rss, max_rss = memory_usage()
        return Figures(
            uptime_s=self.uptime_s(),
            clients_connected=clients,
            clients_by_protocol=by_protocol,
            clients_disconnected=persistent_offline,
            clients_total=clients + persistent_offline,
            sessions=len(broker.sessions),
            slow_consumers=slow,
            listeners=tuple(listeners),
            sockets_accepted=sockets,
            connections_refused=dict(gate.refused) if gate is not None else {},
            connects=dict(stats.connects),
            disconnects=dict(stats.disconnects),
            packets_in={t: traffic_in[t] for t in PACKET_TYPES},
            packets_out={t: traffic_out[t] for t in PACKET_TYPES},
            bytes_in={t: traffic_in[16 + t] for t in PACKET_TYPES},
            bytes_out={t: traffic_out[16 + t] for t in PACKET_TYPES},
            publish_payload_in=traffic_in[TRAFFIC_PUBLISH_PAYLOAD],
            publish_payload_out=traffic_out[TRAFFIC_PUBLISH_PAYLOAD],
            messages_received=stats.messages_received,
            messages_routed=stats.messages_routed,
            deliveries=stats.deliveries,
            dropped=dropped,
            retained_refused=stats.retained_refused,
            retained_count=len(broker.retained),
            retained_bytes=broker.retained_bytes,
            subscriptions=len(broker.tree),
            queued_messages=queued,
            queued_bytes=queued_bytes,
            inflight_messages=inflight,
            outbox_bytes=outbox,
            sessions_expired=stats.sessions_expired,
            sessions_reowned=stats.sessions_reowned,
            store=_store_figures(broker.store),
            rss_bytes=rss,
            max_rss_bytes=max_rss,
            cluster=cluster,
            cluster_node=node.node_id if node is not None else None,
            cluster_link_up=node.store.link_up if node is not None else None,
        )


def _store_figures(store: Store | None) -> StoreFigures | None:
    """The store's counters: the SQLite ``Store``'s, or in a cluster the Redis store's, which
    keeps the same names; a counter a store does not keep reads as zero."""
    if store is None:
        return None
    buckets = getattr(store, "commit_buckets", None)
    return StoreFigures(
        commits=getattr(store, "commits", 0),
        failures=getattr(store, "failures", 0),
        backlog=store.backlog(),
        commit_seconds=getattr(store, "commit_seconds", 0.0),
        commit_buckets=tuple(buckets) if buckets else (0,) * (len(COMMIT_BUCKETS_S) + 1),
        last_commit_failed=getattr(store, "last_commit_failed", False),
    )


class LoadAverage:
    """Mosquitto's ``$SYS/broker/load/...`` value for one counter and one window: a rate per
    minute, exponentially damped over ``window_s`` (1, 5 or 15 minutes).

    At each update the counter's increase since the last one becomes a per-minute rate, and
    the average moves towards it by ``1 - exp(-elapsed / window_s)`` of the distance (as
    Mosquitto's ``calc_load`` does).

    Args:
        window_s: the averaging window, in seconds.
    """

    __slots__ = ("value", "window_s")

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.value = 0.0

    def update(self, increase: float, elapsed_s: float) -> float:
        """Fold in ``increase`` counted over the last ``elapsed_s`` seconds.

        Returns:
            The new average, per minute.
        """
        if elapsed_s <= 0:
            return self.value
        rate = increase * 60.0 / elapsed_s
        self.value = rate + math.exp(-elapsed_s / self.window_s) * (self.value - rate)
        return self.value


def _load_counters(figures: Figures) -> dict[str, int]:
    """The counter behind each ``$SYS/broker/load/<name>/...`` (Mosquitto's choices)."""
    return {
        "messages/received": figures.packets_received,
        "messages/sent": figures.packets_sent,
        "publish/dropped": figures.messages_dropped,
        "publish/received": figures.packets_in[3],
        "publish/sent": figures.packets_out[3],
        "bytes/received": figures.bytes_received,
        "bytes/sent": figures.bytes_sent,
        "sockets": figures.sockets_accepted,
        "connections": figures.packets_in[1],
    }


def _mean_latency_ms(now: StoreFigures, before: StoreFigures | None) -> float:
    commits = now.commits + now.failures - (before.commits + before.failures if before else 0)
    if commits <= 0:
        return 0.0
    seconds = now.commit_seconds - (before.commit_seconds if before else 0.0)
    return seconds * 1000.0 / commits


class SysTree:
    """Successive ``Figures`` -> the ``$SYS`` topics to publish, with Mosquitto's update
    rules: a topic goes out when its value changed, ``uptime`` every time, a load average when
    it moved by 0.01 or more (all of them, as 0.00, at the first update), and
    ``clients/maximum`` when a new maximum of ``clients/total`` is seen."""

    PREFIX = "$SYS/broker/"

    def __init__(self) -> None:
        self._last: dict[str, str] = {}
        self._loads = {
            (name, suffix): LoadAverage(window)
            for name in _LOAD_NAMES
            for suffix, window in LOAD_WINDOWS
        }
        self._previous: Figures | None = None
        self._clients_maximum = 0

    def values(self, figures: Figures) -> dict[str, str]:
        """Every ``$SYS`` topic and its current payload (loads as last computed)."""
        p = self.PREFIX
        self._clients_maximum = max(self._clients_maximum, figures.clients_total)
        stored = str(figures.stored_messages)
        values = {
            p + "version": f"mqttd version {__version__}",
            p + "uptime": f"{int(figures.uptime_s)} seconds",
            p + "clients/total": str(figures.clients_total),
            p + "clients/maximum": str(self._clients_maximum),
            p + "clients/connected": str(figures.clients_connected),
            p + "clients/active": str(figures.clients_connected),
            p + "clients/disconnected": str(figures.clients_disconnected),
            p + "clients/inactive": str(figures.clients_disconnected),
            p + "clients/expired": str(figures.sessions_expired),
            p + "messages/stored": stored,
            p + "store/messages/count": stored,
            p + "store/messages/bytes": str(figures.queued_bytes + figures.retained_bytes),
            p + "subscriptions/count": str(figures.subscriptions),
            p + "retained messages/count": str(figures.retained_count),
            p + "heap/current": str(figures.rss_bytes),
            p + "heap/maximum": str(figures.max_rss_bytes),
            p + "messages/received": str(figures.packets_received),
            p + "messages/sent": str(figures.packets_sent),
            p + "publish/messages/dropped": str(figures.messages_dropped),
            p + "publish/messages/received": str(figures.packets_in[3]),
            p + "publish/messages/sent": str(figures.packets_out[3]),
            p + "bytes/received": str(figures.bytes_received),
            p + "bytes/sent": str(figures.bytes_sent),
            p + "publish/bytes/received": str(figures.publish_payload_in),
            p + "publish/bytes/sent": str(figures.publish_payload_out),
        }
        values.update(self._extras(figures))
        for (name, suffix), load in self._loads.items():
            values[f"{p}load/{name}/{suffix}"] = f"{load.value:.2f}"
        return values

    def _extras(self, figures: Figures) -> dict[str, str]:
        """``$SYS/broker/mqttd/...``: what Mosquitto does not publish."""
        p = self.PREFIX + "mqttd/"
        refused = sum(n for result, n in figures.connects.items() if result != "accepted")
        extras = {
            p + "version": __version__,
            p + "python": platform.python_version(),
            p + "uptime_s": str(int(figures.uptime_s)),
            p + "connects/accepted": str(figures.connects.get("accepted", 0)),
            p + "connects/refused": str(refused),
            p + "clients/slow_consumers": str(figures.slow_consumers),
            **{
                f"{p}clients/protocol/{name}": str(count)
                for name, count in figures.clients_by_protocol.items()
            },
            p + "clients/disconnected_slow": str(figures.disconnects.get("slow_consumer", 0)),
            p + "sessions/reowned": str(figures.sessions_reowned),
            p + "messages/routed": str(figures.messages_routed),
            p + "messages/delivered": str(figures.deliveries),
            p + "queue/messages": str(figures.queued_messages),
            p + "queue/bytes": str(figures.queued_bytes),
            p + "inflight/messages": str(figures.inflight_messages),
            p + "retained/refused": str(figures.retained_refused),
        }
        for reason, count in figures.dropped.items():
            extras[f"{p}messages/dropped/{reason}"] = str(count)
        ports: dict[int, tuple[int, int]] = {}
        for listener in figures.listeners:
            if listener.type == "http":
                continue  # no MQTT there
            clients, connections = ports.get(listener.port, (0, 0))
            ports[listener.port] = (clients + listener.clients, connections + listener.connections)
        for port, (clients, connections) in ports.items():
            extras[f"{p}listener/{port}/clients"] = str(clients)
            extras[f"{p}listener/{port}/connections"] = str(connections)
        store = figures.store
        if store is not None:
            before = self._previous.store if self._previous is not None else None
            extras[p + "store/commits"] = str(store.commits)
            extras[p + "store/failures"] = str(store.failures)
            extras[p + "store/backlog"] = str(store.backlog)
            extras[p + "store/commit_latency_ms"] = f"{_mean_latency_ms(store, before):.3f}"
        return extras

    def update(self, figures: Figures) -> dict[str, str]:
        """Take new figures (every ``sys_interval_s``): move the load averages on, and return
        the topics whose payload changed since the last update, plus ``uptime``."""
        previous = self._previous
        moved: set[str] = set()
        if previous is not None:
            elapsed = figures.uptime_s - previous.uptime_s
            before, now = _load_counters(previous), _load_counters(figures)
            for (name, suffix), load in self._loads.items():
                old_value = load.value
                # Mosquitto's threshold, on the unrounded values: small moves are not sent.
                if abs(load.update(now[name] - before[name], elapsed) - old_value) >= 0.01:
                    moved.add(f"{self.PREFIX}load/{name}/{suffix}")
        values = self.values(figures)
        self._previous = figures
        changed = {}
        for topic, value in values.items():
            old = self._last.get(topic)
            if old == value and not topic.endswith("/uptime"):
                continue
            if old is not None and topic not in moved and topic.startswith(self.PREFIX + "load/"):
                continue
            changed[topic] = value
            self._last[topic] = value
        return changed


_LOAD_NAMES = (
    "messages/received",
    "messages/sent",
    "publish/dropped",
    "publish/received",
    "publish/sent",
    "bytes/received",
    "bytes/sent",
    "sockets",
    "connections",
)


async def cluster_status(state: ServerState) -> dict[str, str]:
    """In a cluster: this node's cluster figures and the totals over every live node, under
    ``$SYS/broker/cluster/`` (the other ``$SYS`` topics are this node's own)."""
    node = state.cluster
    if node is None:
        return {}
    broker = state.broker
    mine = {
        "clients_connected": len(state.clients),
        "messages_received": broker.stats.messages_received,
        "messages_sent": broker.stats.deliveries,
        "subscriptions": len(broker.tree),
        **node.figures(),
    }
    totals, nodes = await node.totals(mine)
    prefix = "$SYS/broker/cluster/"
    return {
        prefix + "node": node.node_id,
        prefix + "nodes": str(nodes),
        prefix + "redis": "1" if node.store.link_up else "0",
        prefix + "routes": str(mine["routes"]),
        prefix + "messages/forwarded": str(mine["forwarded"]),
        prefix + "messages/from_nodes": str(mine["received"]),
        prefix + "messages/dropped": str(mine["forwards_dropped"]),
        prefix + "wills/published": str(mine["wills_published"]),
        prefix + "sessions/adopted": str(mine["sessions_adopted"]),
        prefix + "total/clients/connected": str(totals.get("clients_connected", 0)),
        prefix + "total/messages/received": str(totals.get("messages_received", 0)),
        prefix + "total/messages/sent": str(totals.get("messages_sent", 0)),
        prefix + "total/subscriptions/count": str(totals.get("subscriptions", 0)),
    }


async def publish_status(
    state: ServerState, interval_s: float, monitor: Monitor | None = None
) -> None:
    """Publish the ``$SYS`` tree now and then every ``interval_s`` seconds, until cancelled.

    Args:
        state: the server whose figures are published.
        interval_s: seconds between updates (``broker.sys_interval_s``).
        monitor: where the figures come from (default: one of its own, without the gate's
            socket counts).
    """
    if monitor is None:
        monitor = Monitor(state)
    tree = SysTree()
    last_cluster: dict[str, str] = {}
    while True:
        values = tree.update(monitor.figures())
        try:
            cluster = await cluster_status(state)
        except Exception as exc:  # Redis away: this node's own figures still go out
            log.warning("cluster_status_failed", error=str(exc))
            cluster = {}
        for topic, value in cluster.items():
            if last_cluster.get(topic) != value:  # unchanged values need no new message
                values[topic] = value
                last_cluster[topic] = value
        for topic, value in values.items():
            state.broker.publish(topic, value.encode(), 0, True, durable=False)
        await trio.sleep(interval_s)
