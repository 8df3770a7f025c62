"""The conformance suite's own invariants: coverage table, statement ids, codec, independence."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conformance import coverage, load_cases, wire
from conformance.statements import STATEMENTS, server_testable

REPO = Path(__file__).resolve().parents[2]
README = REPO / "conformance" / "README.md"
SPEC_TSV = REPO.parent / "shared" / "spec" / "mqtt-3.1.1-normative.tsv"


def test_readme_coverage_table_is_up_to_date() -> None:
    """The README table equals what `python -m conformance --coverage-table` generates."""
    text = README.read_text(encoding="utf-8")
    start = text.index(coverage.BEGIN)
    end = text.index(coverage.END) + len(coverage.END) + 1
    assert text[start:end] == coverage.table(load_cases())


def test_every_testable_statement_is_covered_or_explained() -> None:
    """Each server-side testable statement has a case, or a reason it cannot have one."""
    cov = coverage.covering(load_cases())
    for sid in server_testable():
        if sid in coverage.NOT_COVERABLE:
            assert not cov[sid], f"{sid} is covered but listed as not coverable"
            assert coverage.NOT_COVERABLE[sid].strip()
        else:
            assert cov[sid], f"{sid} has no case"


def test_case_statement_ids_exist_and_case_ids_are_unique() -> None:
    """Every case names real statement ids (or a real section, for a paragraph without an id,
    or is an MQTT 3.1 case) and ids are unique."""
    cases = load_cases()
    sections = {row[0] for row in STATEMENTS.values()}
    assert len({c.id for c in cases}) == len(cases)
    for c in cases:
        assert c.statements or c.section or c.mqtt31, c.id
        for sid in c.statements:
            assert sid in STATEMENTS, (c.id, sid)
        assert not c.section or c.section in sections, (c.id, c.section)


@pytest.mark.skipif(not SPEC_TSV.exists(), reason="shared spec table not present")
def test_statements_match_the_spec_table() -> None:
    """conformance/statements.py is an exact copy of the shared normative-statement table."""
    with SPEC_TSV.open(encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    assert {r[0]: tuple(r[1:]) for r in rows} == STATEMENTS


def test_suite_does_not_import_mqttd() -> None:
    """Loading every case never imports the broker under test."""
    code = (
        "import sys, conformance; conformance.load_cases(); "
        "sys.exit(any(m == 'mqttd' or m.startswith('mqttd.') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, check=False).returncode == 0


def test_shared_client_modules_do_not_import_mqttd() -> None:
    """The wire library and the broker-process helper the tests and benchmarks share never
    import the broker: the tests compare mqttd's bytes with an independent codec."""
    code = (
        "import sys, conformance.wire, conformance.broker_process; "
        "sys.exit(any(m == 'mqttd' or m.startswith('mqttd.') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, check=False).returncode == 0


@given(
    topic=st.text(min_size=1, max_size=30),
    payload=st.binary(max_size=300),
    qos=st.integers(0, 2),
    cuts=st.lists(st.integers(0, 400), max_size=5),
)
def test_wire_decoder_reassembles_split_packets(
    topic: str, payload: bytes, qos: int, cuts: list[int]
) -> None:
    """Feeding encoded PUBLISH+PINGRESP in arbitrary pieces yields the same two packets."""
    pid = 7 if qos else None
    data = wire.publish(topic, payload, qos=qos, pid=pid) + bytes.fromhex("d000")
    dec = wire.Decoder()
    got = []
    prev = 0
    for cut in sorted({min(c, len(data)) for c in cuts} | {len(data)}):
        dec.feed(data[prev:cut])
        prev = cut
        while (pkt := dec.next()) is not None:
            got.append(pkt)
    assert [p.type for p in got] == [wire.PUBLISH, wire.PINGRESP]
    pub = got[0]
    assert (pub.topic, pub.payload, pub.qos, pub.pid) == (topic.encode(), payload, qos, pid)


def test_varint_boundaries() -> None:
    """Remaining Length encodes as 1-4 bytes at the spec's boundaries, and no further."""
    assert wire.varint(127) == b"\x7f"
    assert wire.varint(128) == b"\x80\x01"
    assert wire.varint(268_435_455) == b"\xff\xff\xff\x7f"
    with pytest.raises(ValueError, match="out of range"):
        wire.varint(268_435_456)


def test_framer_returns_packets_exactly_as_received() -> None:
    """A non-minimal Remaining Length (82 00 for 2) is kept, so tests that compare a broker's
    exact bytes see it; feed() gives the same packets as (first byte, body) pairs."""
    stream = b"\x20\x82\x00\x00\x00" + wire.suback(7, [1, 0x80]) + wire.pingresp()
    for cut in range(len(stream) + 1):
        framer = wire.Framer()
        raw = framer.feed_raw(stream[:cut]) + framer.feed_raw(stream[cut:])
        assert raw == [b"\x20\x82\x00\x00\x00", wire.suback(7, [1, 0x80]), b"\xd0\x00"]
        assert framer.buffered == 0
    assert wire.Framer().feed(stream) == [
        (0x20, b"\x00\x00"),
        (0x90, b"\x00\x07\x01\x80"),
        (0xD0, b""),
    ]
    parsed = [wire.parse(p) for p in wire.Framer().feed_raw(stream)]
    assert [p.name for p in parsed] == ["CONNACK", "SUBACK", "PINGRESP"]
    assert (parsed[0].body, parsed[1].pid, parsed[1].codes) == (b"\x00\x00", 7, (1, 0x80))
