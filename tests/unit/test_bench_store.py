"""scripts/bench_store.py: its MQTT encoding/parsing, correctness bookkeeping and table, and a
tiny run against real mqttd subprocesses in every durability mode. No timing is asserted:
only that every message was delivered, acknowledged and counted.
"""

from __future__ import annotations

import importlib.util
import math
import socket
import sys
import time
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_store.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mqttd_bench_store_script", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


bs = _load()


# -- wire codec --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "encoded"),
    [(0, "00"), (127, "7f"), (128, "8001"), (16_383, "ff7f"), (268_435_455, "ffffff7f")],
)
def test_varint_matches_the_spec_examples(n: int, encoded: str) -> None:
    """Remaining Length encodes as in the MQTT 3.1.1 table (2.2.3)."""
    assert bs.encode_varint(n).hex() == encoded


def test_varint_rejects_out_of_range() -> None:
    """Lengths outside 0 ... 268,435,455 cannot be encoded."""
    with pytest.raises(ValueError, match="out of range"):
        bs.encode_varint(268_435_456)


def test_connect_bytes_persistent_and_clean() -> None:
    """CONNECT carries "MQTT", level 4, the clean-session flag, keepalive and the client id."""
    body = "00044d515454" + "04" + "{flags}" + "0258" + "0002" + "6162"
    assert bs.encode_connect("ab", clean_session=False).hex() == "100e" + body.format(flags="00")
    assert bs.encode_connect("ab", clean_session=True).hex() == "100e" + body.format(flags="02")


def test_subscribe_and_puback_bytes() -> None:
    """SUBSCRIBE has flags 0010 and one (filter, QoS) pair; PUBACK is 40 02 + packet id."""
    assert bs.encode_subscribe(7, "a/b").hex() == "8208" + "0007" + "0003612f62" + "01"
    assert bs.encode_puback(0x1234).hex() == "40021234"


def test_publish_bytes_and_parse() -> None:
    """A QoS 1 PUBLISH is 0x32, topic, packet id, payload, and parses back to the same parts."""
    raw = bs.encode_publish("t", b"xy", 5)
    assert raw.hex() == "3207" + "000174" + "0005" + "7879"
    (first, body), *_ = bs.PacketReader().feed(raw)
    assert bs.parse_publish(first, body) == ("t", 1, 5, b"xy")


def test_parse_publish_rejects_truncated_topic() -> None:
    """A PUBLISH whose topic length runs past the body is refused, not mis-read."""
    with pytest.raises(bs.WireError, match="shorter"):
        bs.parse_publish(0x32, b"\x00\x09abc")


def test_payload_round_trip_and_padding() -> None:
    """The payload holds (seq, send time) and is padded to the requested size."""
    payload = bs.make_payload(42, 123_456_789, 64)
    assert len(payload) == 64
    assert bs.read_payload(payload) == (42, 123_456_789)
    with pytest.raises(bs.WireError):
        bs.read_payload(b"short")


def test_packet_id_stays_in_range() -> None:
    """Packet ids derived from sequence numbers are 1 ... 65535, never 0."""
    assert {bs.packet_id_for(s) for s in (0, 65534, 65535, 10**9)} <= set(range(1, 65536))
    assert bs.packet_id_for(65534) == 65535
    assert bs.packet_id_for(65535) == 1


@given(
    st.lists(st.binary(max_size=300), min_size=1, max_size=8),
    st.lists(st.integers(min_value=0, max_value=4000), max_size=6),
)
def test_reader_splits_anywhere(payloads: list[bytes], cuts: list[int]) -> None:
    """Feeding a byte stream in arbitrary pieces yields the same packets as feeding it whole."""
    stream = b"".join(bs.encode_publish("x/y", p, i + 1) for i, p in enumerate(payloads))
    whole = bs.PacketReader().feed(stream)
    reader = bs.PacketReader()
    pieces = []
    last = 0
    for cut in sorted(c % (len(stream) + 1) for c in cuts):
        pieces.append(stream[last:cut])
        last = cut
    pieces.append(stream[last:])
    got = [pkt for piece in pieces for pkt in reader.feed(piece)]
    assert got == whole
    assert [bs.parse_publish(f, b)[3] for f, b in got] == payloads
    assert reader.buffered == 0


def test_reader_rejects_five_byte_length() -> None:
    """A Remaining Length longer than 4 bytes is a wire error."""
    with pytest.raises(bs.WireError, match="longer than 4"):
        bs.PacketReader().feed(b"\x30\xff\xff\xff\xff\x01")


# -- bookkeeping -------------------------------------------------------------------------------


def test_delivery_log_counts_duplicates_and_missing() -> None:
    """First deliveries count once, repeats count as duplicates, gaps count as missing."""
    log = bs.DeliveryLog(2)
    assert log.record(0, 0)
    assert log.record(0, 2)
    assert not log.record(0, 2)
    assert log.record(1, 5000)
    assert (log.unique, log.duplicates) == (3, 1)
    # seqs 0..2 for both subscribers: sub 0 lacks 1, sub 1 lacks 0, 1, 2
    assert log.missing(3) == 4


def test_check_flags_loss_and_broker_errors() -> None:
    """A Check is ok only with nothing lost, unacknowledged, unexpected or logged as error."""
    assert bs.Check(expected=10, delivered=10, duplicates=2).ok
    lost = bs.Check(expected=10, delivered=7)
    assert not lost.ok
    assert "3 LOST" in lost.summary()
    assert not bs.Check(expected=1, delivered=1, broker_errors=1).ok
    assert not bs.Check(expected=1, delivered=1, unacked=1).ok


def test_percentile_nearest_rank() -> None:
    """p50/p99 use the nearest rank; no samples gives NaN."""
    values = [float(v) for v in range(1, 101)]
    assert bs._percentile(values, 50) == 50.0
    assert bs._percentile(values, 99) == 99.0
    assert bs._percentile(values, 100) == 100.0
    assert bs._percentile([3.0], 99) == 3.0
    assert math.isnan(bs._percentile([], 50))


@pytest.mark.timeout(30)
def test_flow_acks_publishes_and_counts_odd_packets() -> None:
    """The client loop PUBACKs each delivery, counts duplicates, and flags stray PUBACKs."""
    pub_side, broker_pub = socket.socketpair()
    sub_side, broker_sub = socket.socketpair()
    with pub_side, broker_pub, sub_side, broker_sub:
        for s in (pub_side, broker_pub, sub_side, broker_sub):
            s.settimeout(5)
        flow = bs.Flow(bs.Client(pub_side, "p"), [bs.Client(sub_side, "s")], "t", 32)
        flow.publish(2)
        sent = bs.PacketReader().feed(broker_pub.recv(65536))
        assert [bs.parse_publish(f, b)[2] for f, b in sent] == [1, 2]
        broker_pub.sendall(bs.encode_puback(1) + bs.encode_puback(9))
        delivery = bs.encode_publish("t", bs.make_payload(0, 0, 32), 77)
        broker_sub.sendall(delivery + delivery)
        deadline = time.monotonic() + 10
        while flow.acked < 1 or flow.log.unique + flow.log.duplicates < 2:
            assert time.monotonic() < deadline, "the loop never saw the packets"
            flow.poll(1)
        assert broker_sub.recv(64) == bs.encode_puback(77) * 2
        assert (flow.acked, flow.unexpected, list(flow.outstanding)) == (1, 1, [2])
        assert (flow.log.unique, flow.log.duplicates) == (1, 1)
        flow.close()


# -- report ------------------------------------------------------------------------------------


def test_table_has_ratio_and_reports_failures() -> None:
    """Rows show each mode, fsync/memory, and name the mode whose check failed."""
    ok = bs.Check(expected=4, delivered=4)
    results = {
        ("1to1", "memory"): bs.Result({"msgs": 1000.0}, ok),
        ("1to1", "os"): bs.Result({"msgs": 800.0}, ok),
        ("1to1", "fsync"): bs.Result({"msgs": 250.0}, bs.Check(expected=4, delivered=3)),
        ("latency", "memory"): bs.Result({"p50": 0.5, "p99": 1.0}, ok),
        ("latency", "fsync"): "failed: boom",
    }
    table = bs.render_table(results, ["memory", "os", "fsync"], ["1to1", "latency"])
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
    conf = tomllib.loads(bs.broker_toml("os", tmp_path))
    assert conf["store"] == {"durability": "os", "path": str(tmp_path / "m.db")}
    assert conf["listeners"] == [{"type": "tcp", "host": "127.0.0.1", "port": 0}]
    assert conf["limits"]["max_queued_messages"] == 1_000_000
    assert conf["limits"]["max_queued_bytes"] == 1_073_741_824


# -- against real brokers ----------------------------------------------------------------------


TINY = bs.Settings(
    duration_s=0.3, offline_messages=20, samples=5, gap_s=0.0, fanout=5, stall_s=10.0
)


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["memory", "os", "fsync"])
def test_every_scenario_delivers_everything(mode: str, tmp_path: Path) -> None:
    """On a real mqttd in each mode, all four scenarios deliver every message exactly once."""
    broker = bs.BrokerProcess(mode, tmp_path / "b")
    try:
        port = broker.wait_ready()
        for name, scenario in bs.SCENARIOS.items():
            result = scenario(port, TINY, f"{name}-{mode}")
            check = result.check
            assert check.expected > 0, name
            assert check.ok, f"{name}: {check.summary()}"
            assert (check.delivered, check.duplicates) == (check.expected, 0), name
            wanted = {row.key for row in bs.ROWS if row.scenario == name}
            assert set(result.values) == wanted
            assert all(v > 0 for v in result.values.values()), (name, result.values)
    finally:
        broker.stop()
    assert broker.errors == 0, list(broker.tail)
    assert (tmp_path / "b" / "m.db").exists() == (mode != "memory")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_quick_run_writes_markdown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``main`` runs modes in turn, exits 0 when every check passed and writes the report."""
    out = tmp_path / "report.md"
    argv = ["--quick", "--scenarios", "1to1", "--modes", "memory,fsync", "--duration", "0.2"]
    assert bs.main([*argv, "--dir", str(tmp_path), "--markdown", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[1/2] 1to1 on memory" in printed
    assert "[2/2] 1to1 on fsync" in printed
    report = out.read_text()
    assert "| scenario | unit | memory | fsync | fsync/memory | check |" in report
    assert "| ok |" in report
    assert "SQLite " in report
    assert "Command: `python scripts/bench_store.py --quick" in report
    assert list(tmp_path.iterdir()) == [out]  # the databases are cleaned up
