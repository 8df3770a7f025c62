"""scripts/bench.py's ``--compare-protocols``: the order it measures MQTT 3.1.1 and MQTT 5 in,
the per-round ratios and their medians, the 10 % bound, and the table. No timing is asserted:
only that every figure lands where it belongs."""

from __future__ import annotations

from scripts.mqttbench import protocols
from scripts.mqttbench.protocols import Sample


def sample(protocol: int, rnd: int, rate: float, us: float, *, error: str = "") -> Sample:
    return Sample(
        "qos0",
        "tcp",
        "mqttd",
        protocol,
        rnd,
        metrics={"rate": rate},
        cpu=90.0,
        us_per_delivery=us,
        lost=0,
        dup=0,
        error=error,
    )


def test_protocol_order_alternates_by_round() -> None:
    """Neither protocol always runs first: 3.1.1 first in odd rounds, MQTT 5 in even ones."""
    assert protocols.protocol_order(1) == [4, 5]
    assert protocols.protocol_order(2) == [5, 4]
    assert protocols.protocol_order(3) == [4, 5]


def test_ratios_pair_the_measurements_of_one_round() -> None:
    """Each ratio is v5/v4 of the same round; a round missing either side, or failed, is
    left out; the CPU per delivery has its own ratios."""
    samples = [
        sample(4, 1, 100.0, 5.0),
        sample(5, 1, 90.0, 5.5),
        sample(4, 2, 200.0, 4.0),
        sample(5, 2, 210.0, 4.0),
        sample(4, 3, 100.0, 5.0),
        sample(5, 3, 0.0, 0.0, error="broker exited"),
        sample(5, 4, 100.0, 5.0),
    ]
    assert protocols.ratios(samples, "qos0", "tcp", "mqttd", "rate") == [0.9, 1.05]
    assert protocols.ratios(samples, "qos0", "tcp", "mqttd", "us") == [1.1, 1.0]
    assert protocols.ratios(samples, "qos0", "ws", "mqttd", "rate") == []


def test_bound_is_ten_percent_of_the_311_figure() -> None:
    """A rate may drop to 0.90 of MQTT 3.1.1's, a time grow to 1/0.90 of it; no ratio, no
    verdict."""
    assert protocols.within_bound(0.90, higher_is_better=True)
    assert not protocols.within_bound(0.89, higher_is_better=True)
    assert protocols.within_bound(1.11, higher_is_better=False)
    assert not protocols.within_bound(1.12, higher_is_better=False)
    assert protocols.within_bound(None, higher_is_better=True) is None


def test_table_shows_medians_ratio_range_and_verdict() -> None:
    """One row per figure: the medians of each protocol, the median ratio with its range, the
    verdict, CPU and µs per delivery; failed measurements are listed under the table."""
    samples = [
        sample(4, 1, 100.0, 5.0),
        sample(5, 1, 80.0, 6.0),
        sample(4, 2, 100.0, 5.0),
        sample(5, 2, 95.0, 5.0),
        sample(4, 3, 100.0, 5.0),
        sample(5, 3, 85.0, 6.0),
        sample(5, 4, 0.0, 0.0, error="no CONNACK"),
    ]
    text = protocols.render_report(samples, ["mqttd"], 4)
    row = next(line for line in text.splitlines() if line.startswith("| QoS 0 1→1 [tcp]"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2:6] == ["100", "85", "0.85 (0.80 to 0.95)", "**no**"]
    assert cells[6:11] == ["90", "90", "5.00", "6.00", "1.20 (1.00 to 1.20)"]
    assert cells[11:] == ["0/0", "0/0"]
    assert "- round 4: qos0 over tcp on mqttd, v5: no CONNACK" in text
