"""``$SYS/broker/...`` status topics, published as retained messages like Mosquitto's.

Every ``sys_interval_s`` the broker publishes its counters under ``$SYS/broker/``; subscribers
of ``$SYS/#`` get the latest values at once (they are retained). Filters that start with a
wildcard never see them ([MQTT-4.7.2-1]), and clients cannot publish there. The values are
regenerated at start-up, so they are never written to the durable store.
"""

from __future__ import annotations

import trio

from mqttd import __version__
from mqttd.broker import Broker
from mqttd.connection import ServerState


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


async def publish_status(state: ServerState, interval_s: float) -> None:
    """Publish ``status`` now and then every ``interval_s`` seconds, until cancelled."""
    started = trio.current_time()
    last: dict[str, str] = {}
    while True:
        for topic, value in status(state, trio.current_time() - started).items():
            if last.get(topic) != value:  # unchanged values need no new retained message
                state.broker.publish(topic, value.encode(), 0, True, durable=False)
                last[topic] = value
        await trio.sleep(interval_s)
