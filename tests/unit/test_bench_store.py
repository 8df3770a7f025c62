"""scripts/bench_store.py (``scripts/mqttbench/store``): its MQTT encoding/parsing, correctness
bookkeeping and table, and a tiny run against real mqttd subprocesses in every durability mode.
No timing is asserted: only that every message was delivered, acknowledged and counted.
"""

from __future__ import annotations

import math
import socket
import time
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conformance import wire
from scripts.mqttbench import load
from scripts.mqttbench.store import cli, client, flow, report, scenarios

# -- wire codec (what bench_store sends; conformance.wire itself: test_bench_codec.py) -------


def test_connect_bytes_persistent_and_clean() -> None:
    """CONNECT carries "MQTT", level 4, the clean-session flag, keepalive and the client id."""
    body = "00044d515454" + "04" + "{flags}" + "0258" + "0002" + "6162"
    assert load.connect_packet("ab", clean=False).hex() == "100e" + body.format(flags="00")
    assert load.connect_packet("ab", clean=True).hex() == "100e" + body.format(flags="02")


def test_subscribe_and_puback_bytes() -> None:
    """SUBSCRIBE has flags 0010 and one (filter, QoS) pair; PUBACK is 40 02 + packet id."""
    assert wire.subscribe(7, [("a/b", 1)]).hex() == "8208" + "0007" + "0003612f62" + "01"
    assert wire.puback(0x1234).hex() == "40021234"


def test_publish_bytes_and_parse() -> None:
    """A QoS 1 PUBLISH is 0x32, topic, packet id, payload, and parses back to the same parts."""
    raw = wire.publish("t", b"xy", 1, pid=5)
    assert raw.hex() == "3207" + "000174" + "0005" + "7879"
    (first, body), *_ = wire.Framer().feed(raw)
    assert wire.parse_publish(first, body) == ("t", 1, 5, b"xy")


def test_parse_publish_rejects_truncated_topic() -> None:
    """A PUBLISH whose topic length runs past the body is refused, not mis-read."""
    with pytest.raises(wire.WireError, match="shorter"):
        wire.parse_publish(0x32, b"\x00\x09abc")


def test_payload_round_trip_and_padding() -> None:
    """The payload holds (seq, send time) and is padded to the requested size."""
    payload = client.make_payload(42, 123_456_789, 64)
    assert len(payload) == 64
    assert client.read_payload(payload) == (42, 123_456_789)
    with pytest.raises(wire.WireError):
        client.read_payload(b"short")


def test_packet_id_stays_in_range() -> None:
    """Packet ids derived from sequence numbers are 1 ... 65535, never 0."""
    assert {load.packet_id_for(s) for s in (0, 65534, 65535, 10**9)} <= set(range(1, 65536))
    assert load.packet_id_for(65534) == 65535
    assert load.packet_id_for(65535) == 1


@given(
    st.lists(st.binary(max_size=300), min_size=1, max_size=8),
    st.lists(st.integers(min_value=0, max_value=4000), max_size=6),
)
def test_reader_splits_anywhere(payloads: list[bytes], cuts: list[int]) -> None:
    """Feeding a byte stream in arbitrary pieces yields the same packets as feeding it whole."""
    stream = b"".join(wire.publish("x/y", p, 1, pid=i + 1) for i, p in enumerate(payloads))
    whole = wire.Framer().feed(stream)
    reader = wire.Framer()
    pieces = []
    last = 0
    for cut in sorted(c % (len(stream) + 1) for c in cuts):
        pieces.append(stream[last:cut])
        last = cut
    pieces.append(stream[last:])
    got = [pkt for piece in pieces for pkt in reader.feed(piece)]
    assert got == whole
    assert [wire.parse_publish(f, b)[3] for f, b in got] == payloads
    assert reader.buffered == 0


# -- bookkeeping -------------------------------------------------------------------------------


def test_delivery_log_counts_duplicates_and_missing() -> None:
    """First deliveries count once, repeats count as duplicates, gaps count as missing."""
    log = flow.DeliveryLog(2)
    assert log.record(0, 0)
    assert log.record(0, 2)
    assert not log.record(0, 2)
    assert log.record(1, 5000)
    assert (log.unique, log.duplicates) == (3, 1)
    # seqs 0..2 for both subscribers: sub 0 lacks 1, sub 1 lacks 0, 1, 2
    assert log.missing(3) == 4


def test_check_flags_loss_and_broker_errors() -> None:
    """A Check is ok only with nothing lost, unacknowledged, unexpected or logged as error."""
    assert flow.Check(expected=10, delivered=10, duplicates=2).ok
    lost = flow.Check(expected=10, delivered=7)
    assert not lost.ok
    assert "3 LOST" in lost.summary()
    assert not flow.Check(expected=1, delivered=1, broker_errors=1).ok
    assert not flow.Check(expected=1, delivered=1, unacked=1).ok


def test_percentile_nearest_rank() -> None:
    """p50/p99 use the nearest rank; no samples gives NaN."""
    values = [float(v) for v in range(1, 101)]
    assert scenarios.nearest_rank(values, 50) == 50.0
    assert scenarios.nearest_rank(values, 99) == 99.0
    assert scenarios.nearest_rank(values, 100) == 100.0
    assert scenarios.nearest_rank([3.0], 99) == 3.0
    assert math.isnan(scenarios.nearest_rank([], 50))


@pytest.mark.timeout(30)
def test_flow_acks_publishes_and_counts_odd_packets() -> None:
    """The client loop PUBACKs each delivery, counts duplicates, and flags stray PUBACKs."""
    pub_side, broker_pub = socket.socketpair()
    sub_side, broker_sub = socket.socketpair()
    with pub_side, broker_pub, sub_side, broker_sub:
        for s in (pub_side, broker_pub, sub_side, broker_sub):
            s.settimeout(5)
        loop = flow.Flow(client.Client(pub_side, "p"), [client.Client(sub_side, "s")], "t", 32)
        loop.publish(2)
        sent = wire.Framer().feed(broker_pub.recv(65536))
        assert [wire.parse_publish(f, b)[2] for f, b in sent] == [1, 2]
        broker_pub.sendall(wire.puback(1) + wire.puback(9))
        delivery = wire.publish("t", client.make_payload(0, 0, 32), 1, pid=77)
        broker_sub.sendall(delivery + delivery)
        deadline = time.monotonic() + 10
        while loop.acked < 1 or loop.log.unique + loop.log.duplicates < 2:
            assert time.monotonic() < deadline, "the loop never saw the packets"
            loop.poll(1)
        assert broker_sub.recv(64) == wire.puback(77) * 2
        assert (loop.acked, loop.unexpected, list(loop.outstanding)) == (1, 1, [2])
        assert (loop.log.unique, loop.log.duplicates) == (1, 1)
        loop.close()


# -- report ------------------------------------------------------------------------------------


def test_table_has_ratio_and_reports_failures() -> None:
    """Rows show each mode, fsync/memory, and name the mode whose check failed."""
    ok = flow.Check(expected=4, delivered=4)
    results = {
        ("1to1", "memory"): scenarios.Result({"msgs": 1000.0}, ok),
        ("1to1", "os"): scenarios.Result({"msgs": 800.0}, ok),
        ("1to1", "fsync"): scenarios.Result({"msgs": 250.0}, flow.Check(expected=4, delivered=3)),
        ("latency", "memory"): scenarios.Result({"p50": 0.5, "p99": 1.0}, ok),
        ("latency", "fsync"): "failed: boom",
    }
    table = report.render_table(results, ["memory", "os", "fsync"], ["1to1", "latency"])
    lines = table.splitlines()
    assert lines[0] == "| scenario | unit | memory | os | fsync | fsync/memory | check |"
    one = next(line for line in lines if "1→1" in line).split(" | ")
    assert one[2:6] == ["1,000", "800", "250", "0.25"]
    assert "fsync: 3/4 delivered, 0 dup; 1 LOST" in one[6]
    p50 = next(line for line in lines if "p50" in line)
    assert "| 0.50 | n/a | n/a | n/a |" in p50
    assert "os: not run" in p50
    assert "fsync: failed: boom" in p50


def test_broker_toml_sets_mode_path_and_limits(tmp_path: Path) -> None:
    """The generated config is valid TOML with the store mode, its file and the big queues."""
    conf = tomllib.loads(scenarios.broker_toml("os", tmp_path))
    assert conf["store"] == {"durability": "os", "path": str(tmp_path / "m.db")}
    assert conf["listeners"] == [{"type": "tcp", "host": "127.0.0.1", "port": 0}]
    assert conf["limits"]["max_queued_messages"] == 1_000_000
    assert conf["limits"]["max_queued_bytes"] == 1_073_741_824


# -- against real brokers ----------------------------------------------------------------------


TINY = scenarios.Settings(
    duration_s=0.3, offline_messages=20, samples=5, gap_s=0.0, fanout=5, stall_s=10.0
)


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["memory", "os", "fsync"])
def test_every_scenario_delivers_everything(mode: str, tmp_path: Path) -> None:
    """On a real mqttd in each mode, all four scenarios deliver every message exactly once."""
    broker = scenarios.start_broker(mode, tmp_path / "b")
    try:
        port = broker.ports["tcp"]
        for name, scenario in scenarios.SCENARIOS.items():
            result = scenario(port, TINY, f"{name}-{mode}")
            check = result.check
            assert check.expected > 0, name
            assert check.ok, f"{name}: {check.summary()}"
            assert (check.delivered, check.duplicates) == (check.expected, 0), name
            wanted = {row.key for row in scenarios.ROWS if row.scenario == name}
            assert set(result.values) == wanted
            assert all(v > 0 for v in result.values.values()), (name, result.values)
    finally:
        broker.stop()
    assert broker.count("error") == 0, list(broker.log.tail)
    assert (tmp_path / "b" / "m.db").exists() == (mode != "memory")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_quick_run_writes_markdown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``main`` runs modes in turn, exits 0 when every check passed and writes the report."""
    out = tmp_path / "report.md"
    argv = ["--quick", "--scenarios", "1to1", "--modes", "memory,fsync", "--duration", "0.2"]
    assert cli.main([*argv, "--dir", str(tmp_path), "--markdown", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[1/2] 1to1 on memory" in printed
    assert "[2/2] 1to1 on fsync" in printed
    report = out.read_text()
    assert "| scenario | unit | memory | fsync | fsync/memory | check |" in report
    assert "| ok |" in report
    assert "SQLite " in report
    assert "Command: `python scripts/bench_store.py --quick" in report
    assert list(tmp_path.iterdir()) == [out]  # the databases are cleaned up
