"""``scripts/bench_connects.py``: the two-process forms really spread connections over two
processes on one port, the trio floor answers CONNECTs, and the table reports medians and
ratios against Mosquitto."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from scripts.mqttbench import connects, machine
from scripts.mqttbench.connects import Sample
from scripts.mqttbench.load import connect_many


def _plain_pair(tmp_path: Path) -> connects.PlainPair:
    return connects.start_plain_pair(tmp_path)


def _two_trio_floors(tmp_path: Path) -> connects.TrioFloor:
    return connects.start_trio_floor(copies=2)


@pytest.mark.parametrize(
    "start", [_plain_pair, _two_trio_floors], ids=["mqttd-x2", "trio-floor-x2"]
)
def test_two_processes_share_one_port_and_both_take_connections(
    tmp_path: Path, start: Callable[[Path], connects.PlainPair | connects.TrioFloor]
) -> None:
    """``mqttd-x2`` and ``trio-floor-x2``: both processes listen on the same port
    (SO_REUSEPORT) and the kernel gives each some of 40 connections, each answered with a
    CONNACK."""
    started = start(tmp_path)
    try:
        pids = started.target.processes()
        assert len(pids) == 2
        conns, _ = connect_many(started.target, "tcp", [f"x{i}" for i in range(40)], timeout_s=30)
        owners = machine.connection_owners(started.target.ports["tcp"], pids)
        for conn in conns:
            conn.close()
    finally:
        started.stop()
    assert len(conns) == 40
    assert set(owners.values()) == set(pids)  # 2**-39 odds of all landing on one


def test_trio_floor_answers_every_connect_and_holds_the_connections() -> None:
    """``trio-floor``: 40 connects through the benchmark's own client each get a CONNACK and
    stay open, all on the one process the target names, until the form is stopped."""
    floor = connects.start_trio_floor()
    (process,) = floor.processes
    try:
        assert floor.target.processes() == [process.pid]
        conns, _ = connect_many(floor.target, "tcp", [f"f{i}" for i in range(40)], timeout_s=30)
        owners = machine.connection_owners(floor.target.ports["tcp"], [process.pid])
        assert len(conns) == 40
        assert len(owners) == 40
        assert set(owners.values()) == {process.pid}
        for conn in conns:
            conn.close()
    finally:
        floor.stop()
    assert process.returncode is not None


def test_render_gives_medians_and_ratios_per_round() -> None:
    """Per form: the median connects/s, the ratio to Mosquitto's in each round and its
    median, the CPU medians, and every round's figure."""
    samples = [
        Sample("mqttd-x2", 1, 8000.0, 120.0, 50.0, 1.0),
        Sample("mosquitto", 1, 16000.0, 40.0, 55.0, 1.0),
        Sample("mqttd-x2", 2, 9000.0, 110.0, 52.0, 1.0),
        Sample("mosquitto", 2, 10000.0, 45.0, 60.0, 1.0),
        Sample("mqttd-x2", 3, 6000.0, None, 51.0, 1.0),
        Sample("mosquitto", 3, 12000.0, 42.0, 58.0, 1.0),
    ]
    table = connects.render(samples, ["mqttd-x2", "mosquitto"]).splitlines()
    assert table[2] == (
        "| mqttd-x2 | 8,000 | 0.50 / 0.90 / 0.50 (**0.50**) | 115.0 | 51.0 "
        "| 8,000 / 9,000 / 6,000 |"
    )
    assert table[3].startswith("| mosquitto | 12,000 | -- | 42.0 | 58.0 |")
