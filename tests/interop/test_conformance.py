"""The conformance suite against real brokers: Mosquitto (known deviations only) and mqttd.

Both run every case, MQTT 3.1, 3.1.1 and 5.0: Mosquitto proves the cases against a broker that
is not ours (its deviations are listed), and mqttd must pass them all.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio

from conformance import load_cases
from conformance.broker_process import (
    MOSQUITTO,
    free_port,
    listeners_toml,
    start_mosquitto,
    start_mqttd,
)
from conformance.runner import FAIL, Result, run_all
from conformance.transport import Target

pytestmark = [pytest.mark.interop, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
DEVIATIONS = REPO / "conformance" / "known_deviations" / "mosquitto-2.0.11.json"
# Mosquitto checks keep-alive only every ~6 s (src/keepalive.c); 8 s keeps its run deterministic.
MOSQUITTO_TIMEOUT_S = 8.0
MQTTD_TIMEOUT_S = 5.0
#: The protocol levels the mqttd run covers: 3 (MQTT 3.1) and 4 (3.1.1); add 5 once mqttd speaks
#: MQTT 5 and passes its cases.
MQTTD_PROTOCOLS = (3, 4, 5)

MQTTD_CONFIG = listeners_toml("tcp", host="127.0.0.1") + listeners_toml(
    "ws", host="127.0.0.1", path="/mqtt"
)


def _failed(results: list[Result]) -> dict[str, str]:
    return {r.case_id: r.detail for r in results if r.status == FAIL}


async def _run(target: Target, protocols: tuple[int, ...] | None = None) -> list[Result]:
    with trio.fail_after(200):
        return await run_all(load_cases(protocols), target, concurrency=8)


def _known() -> dict[str, list[str]]:
    data = json.loads(DEVIATIONS.read_text(encoding="utf-8"))
    return {"tcp": sorted(data["failing_cases"]), "ws": sorted(data["failing_cases_ws"])}


@pytest.mark.skipif(not os.path.exists(MOSQUITTO), reason="mosquitto is not installed")
async def test_mosquitto_fails_exactly_the_known_deviations(tmp_path: Path) -> None:
    """Against Mosquitto 2.0.11 (TCP and WebSocket; MQTT 3.1, 3.1.1 and 5.0) exactly the
    documented cases fail."""
    known = _known()
    ports = {"tcp": free_port(), "ws": free_port()}
    conf = (
        f"listener {ports['tcp']} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"listener {ports['ws']} 127.0.0.1\nprotocol websockets\n"
    )
    with start_mosquitto(conf, tmp_path, ports) as broker:
        tcp = await _run(Target(port=broker.ports["tcp"], timeout=MOSQUITTO_TIMEOUT_S))
        ws_url = f"ws://127.0.0.1:{broker.ports['ws']}/mqtt"
        ws = await _run(Target(ws_url=ws_url, timeout=MOSQUITTO_TIMEOUT_S))
    assert sorted(_failed(tcp)) == known["tcp"], _failed(tcp)
    assert sorted(_failed(ws)) == known["ws"], _failed(ws)


async def test_mqttd_passes_every_case(tmp_path: Path) -> None:
    """Against mqttd (TCP and WebSocket) no case of MQTT 3.1 and 3.1.1 fails."""
    config = tmp_path / "mqttd.toml"
    config.write_text(MQTTD_CONFIG)
    with start_mqttd(config) as broker:
        host = broker.host
        target = Target(host=host, port=broker.ports["tcp"], timeout=MQTTD_TIMEOUT_S)
        tcp = await _run(target, MQTTD_PROTOCOLS)
        ws_url = f"ws://{host}:{broker.ports['ws']}/mqtt"
        ws = await _run(Target(ws_url=ws_url, timeout=MQTTD_TIMEOUT_S), MQTTD_PROTOCOLS)
    assert _failed(tcp) == {}
    assert _failed(ws) == {}
