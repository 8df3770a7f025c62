"""``$SYS/broker/...`` status topics, published as retained messages like Mosquitto's.

Every ``sys_interval_s`` the broker publishes its counters under ``$SYS/broker/``; subscribers
of ``$SYS/#`` get the latest values at once (they are retained). Filters that start with a
wildcard never see them ([MQTT-4.7.2-1]), and clients cannot publish there. The values are
regenerated at start-up, so they are never written to the durable store.
"""

from __future__ import annotations

import structlog
import trio

from mqttd import __version__
from mqttd.broker import Broker
from mqttd.shared import ServerState

log = structlog.get_logger("mqttd.sysinfo")


def status(state: ServerState, uptime_s: float) -> dict[str, str]:
    """The current ``$SYS`` topic -> payload map (Mosquitto's names where one exists)."""
    broker: Broker = state.broker
    stats = broker.stats
    persistent = sum(1 for s in broker.sessions.values() if not s.clean_session)
    return {
        "$SYS/broker/version": f"mqttd version {__version__}",
        "$SYS/broker/uptime": f"{int(uptime_s)} seconds",
        "$SYS/broker/clients/connected": str(len(state.clients)),
        "$SYS/broker/clients/disconnected": str(
            sum(1 for s in broker.sessions.values() if not s.connected and not s.clean_session)
        ),
        "$SYS/broker/clients/total": str(
            len(state.clients)
            + persistent
            - sum(1 for s in broker.sessions.values() if s.connected and not s.clean_session)
        ),
        "$SYS/broker/messages/received": str(stats.messages_received),
        "$SYS/broker/messages/sent": str(stats.deliveries),
        "$SYS/broker/publish/messages/dropped": str(stats.messages_dropped),
        "$SYS/broker/retained messages/count": str(len(broker.retained)),
        "$SYS/broker/subscriptions/count": str(len(broker.tree)),
    }


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


async def publish_status(state: ServerState, interval_s: float) -> None:
    """Publish ``status`` now and then every ``interval_s`` seconds, until cancelled."""
    started = trio.current_time()
    last: dict[str, str] = {}
    while True:
        values = status(state, trio.current_time() - started)
        try:
            values.update(await cluster_status(state))
        except Exception as exc:  # Redis away: this node's own figures still go out
            log.warning("cluster_status_failed", error=str(exc))
        for topic, value in values.items():
            if last.get(topic) != value:  # unchanged values need no new retained message
                state.broker.publish(topic, value.encode(), 0, True, durable=False)
                last[topic] = value
        await trio.sleep(interval_s)
