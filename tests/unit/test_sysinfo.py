"""The arithmetic and update rules of the ``$SYS`` tree, and the HTTP Basic parser."""

from __future__ import annotations

import base64
import dataclasses
import math

import h11
import pytest

from mqttd.sysinfo import PACKET_TYPES, Figures, LoadAverage, SysTree
from mqttd.transports.http import basic_credentials


def mosquitto_load(current: float, increase: float, elapsed_s: float, window_s: float) -> float:
    """Mosquitto 2.0's calc_load, written out: the interval's per-minute rate, damped."""
    interval = increase * (60.0 / elapsed_s)
    exponent = math.exp(-1.0 * elapsed_s / window_s)
    return interval + exponent * (current - interval)


@pytest.mark.parametrize("window_s", [60.0, 300.0, 900.0])
def test_load_average_follows_mosquittos_formula(window_s: float) -> None:
    """Each update moves the average as Mosquitto's calc_load does."""
    load = LoadAverage(window_s)
    expected = 0.0
    for increase, elapsed in [(600, 10.0), (0, 10.0), (1200, 10.0), (50, 3.0), (0, 60.0)]:
        expected = mosquitto_load(expected, increase, elapsed, window_s)
        assert load.update(increase, elapsed) == pytest.approx(expected)


def test_load_average_converges_to_the_rate_per_minute() -> None:
    """A steady 10 messages a second reads as 600 a minute once the window has passed."""
    load = LoadAverage(60.0)
    for _ in range(60):  # ten minutes of 10 s updates
        load.update(100, 10.0)
    assert load.value == pytest.approx(600.0, rel=1e-3)
    assert load.update(5, 0.0) == load.value  # no time passed: nothing changes


def figures(**changes: object) -> Figures:
    """Quiet figures, with ``changes``."""
    zero = dict.fromkeys(PACKET_TYPES, 0)
    base = Figures(
        uptime_s=0.0,
        clients_connected=0,
        clients_by_protocol={"5": 0, "3.1.1": 0, "3.1": 0},
        clients_disconnected=0,
        clients_total=0,
        sessions=0,
        slow_consumers=0,
        listeners=(),
        sockets_accepted=0,
        connections_refused={},
        connects={},
        disconnects={},
        packets_in=dict(zero),
        packets_out=dict(zero),
        bytes_in=dict(zero),
        bytes_out=dict(zero),
        publish_payload_in=0,
        publish_payload_out=0,
        messages_received=0,
        messages_routed=0,
        deliveries=0,
        dropped={"queue_full": 0, "outbox_full": 0},
        retained_refused=0,
        retained_count=0,
        retained_bytes=0,
        subscriptions=0,
        queued_messages=0,
        queued_bytes=0,
        inflight_messages=0,
        outbox_bytes=0,
        sessions_expired=0,
        sessions_reowned=0,
        store=None,
        rss_bytes=1,
        max_rss_bytes=1,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_first_update_publishes_every_topic_with_loads_at_zero() -> None:
    """The first update sends everything; the loads go out as 0.00, as Mosquitto's do."""
    values = SysTree().update(figures())
    assert values["$SYS/broker/load/messages/received/1min"] == "0.00"
    assert values["$SYS/broker/uptime"] == "0 seconds"
    assert values["$SYS/broker/version"].startswith("mqttd version ")
    assert "$SYS/broker/mqttd/store/commits" not in values  # no store, no store topics


def test_only_changed_topics_go_out_again_and_uptime_always() -> None:
    """Unchanged values are not published again; uptime is; a changed counter is."""
    tree = SysTree()
    tree.update(figures())
    changed = tree.update(figures(uptime_s=10.0))
    assert set(changed) == {"$SYS/broker/uptime", "$SYS/broker/mqttd/uptime_s"}
    packets = dict.fromkeys(PACKET_TYPES, 0) | {3: 100}
    changed = tree.update(figures(uptime_s=20.0, packets_in=packets))
    assert changed["$SYS/broker/publish/messages/received"] == "100"
    assert changed["$SYS/broker/messages/received"] == "100"
    # 100 PUBLISH in 10 s = 600 a minute; the 1-minute average moves 1 - e^(-1/6) of the way.
    assert (
        changed["$SYS/broker/load/publish/received/1min"] == f"{600 * (1 - math.exp(-1 / 6)):.2f}"
    )
    assert "$SYS/broker/bytes/received" not in changed


def test_small_load_moves_are_not_published() -> None:
    """A load average that moved by less than 0.01 is not sent again."""
    tree = SysTree()
    tree.update(figures())
    packets = dict.fromkeys(PACKET_TYPES, 0) | {3: 1}
    changed = tree.update(figures(uptime_s=10_000.0, packets_in=packets))
    # 1 message over 10,000 s: 0.006 a minute, under the threshold at every window.
    assert not any(topic.startswith("$SYS/broker/load/") for topic in changed)


def test_clients_maximum_only_grows() -> None:
    """clients/maximum is the most clients/total ever seen."""
    tree = SysTree()
    assert tree.update(figures(clients_total=5))["$SYS/broker/clients/maximum"] == "5"
    changed = tree.update(figures(uptime_s=1.0, clients_total=2))
    assert changed["$SYS/broker/clients/total"] == "2"
    assert "$SYS/broker/clients/maximum" not in changed


def _request(*headers: tuple[str, str]) -> h11.Request:
    return h11.Request(method="GET", target="/metrics", headers=[("Host", "x"), *headers])


def test_basic_credentials() -> None:
    """HTTP Basic: user name and password decoded; anything malformed is None."""
    token = base64.b64encode("prométhée:pa:ss".encode()).decode()
    assert basic_credentials(_request(("Authorization", f"Basic {token}"))) == (
        "prométhée",
        b"pa:ss",
    )
    assert basic_credentials(_request()) is None
    assert basic_credentials(_request(("Authorization", "Basic !!"))) is None
    no_colon = base64.b64encode(b"user").decode()
    assert basic_credentials(_request(("Authorization", f"Basic {no_colon}"))) is None
    assert basic_credentials(_request(("Authorization", "Bearer abc"))) is None


def test_readme_lists_every_topic_and_metric() -> None:
    """README.md's Monitoring tables name every $SYS topic and every mqttd_* metric."""
    import re
    from pathlib import Path

    from mqttd.access import AccessControl
    from mqttd.broker import Broker
    from mqttd.config import Config, LimitsConfig
    from mqttd.metrics import BrokerCollector
    from mqttd.shared import ServerState
    from mqttd.sysinfo import ListenerFigures, Monitor, StoreFigures

    readme = (Path(__file__).resolve().parent.parent.parent / "README.md").read_text()
    store = StoreFigures(1, 0, 0, 0.0, (0,) * 12, False)
    listener = ListenerFigures("tcp", "127.0.0.1", 1883, 0, 0, 0)
    topics = SysTree().values(figures(store=store, listeners=(listener,)))
    missing = set()
    for topic in topics:
        documented = re.sub(r"/(1min|5min|15min)$", "/+", topic)
        documented = documented.replace("/listener/1883/", "/listener/<port>/")
        if f"`{documented}`" not in readme and f"`{documented}`," not in readme:
            missing.add(documented)
    assert not missing, f"$SYS topics missing from README.md: {sorted(missing)}"

    config = Config()
    state = ServerState(config=config, broker=Broker(LimitsConfig()), access=AccessControl(config))
    names = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in BrokerCollector(Monitor(state)).collect()
    }
    assert not {n for n in names if f"`{n}`" not in readme}, "metrics missing from README.md"
