"""The conformance suite's own invariants: coverage table, statement ids, codec, independence."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conformance import coverage, load_cases, statements, statements5, wire
from conformance.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
README = REPO / "conformance" / "README.md"
SPEC_DIR = REPO.parent / "shared" / "spec"
#: protocol level -> (the statement module its cases cite, the shared spec table it copies).
SPECS = {
    4: (statements, SPEC_DIR / "mqtt-3.1.1-normative.tsv"),
    5: (statements5, SPEC_DIR / "mqtt-5.0-normative.tsv"),
}
MARKERS = {4: (coverage.BEGIN, coverage.END), 5: (coverage.BEGIN_5, coverage.END_5)}
NOT_COVERABLE = {4: coverage.NOT_COVERABLE, 5: coverage.NOT_COVERABLE_5}


@pytest.mark.parametrize("protocol", [4, 5])
def test_readme_coverage_table_is_up_to_date(protocol: int) -> None:
    """The README's 3.1.1 and 5.0 tables equal what `python -m conformance --coverage-table`
    generates."""
    text = README.read_text(encoding="utf-8")
    begin, end_marker = MARKERS[protocol]
    start = text.index(begin)
    end = text.index(end_marker) + len(end_marker) + 1
    assert text[start:end] == coverage.table(load_cases(), protocol)


@pytest.mark.parametrize("protocol", [4, 5])
def test_every_testable_statement_is_covered_or_explained(protocol: int) -> None:
    """Each server-side testable statement (3.1.1 and 5.0) has a case, or a reason it cannot
    have one."""
    module, _ = SPECS[protocol]
    cov = coverage.covering(load_cases(), protocol)
    for sid in module.server_testable():
        if sid in NOT_COVERABLE[protocol]:
            assert not cov[sid], f"{sid} is covered but listed as not coverable"
            assert NOT_COVERABLE[protocol][sid].strip()
        else:
            assert cov[sid], f"{sid} has no case"


def test_partly_testable_5_0_statements_say_their_condition() -> None:
    """Every 5.0 statement a black-box test sees only in part says, in the table, what its
    cases need or see; conditions name only server-side testable statements."""
    testable = set(statements5.server_testable())
    partly = {sid for sid in testable if statements5.STATEMENTS[sid][2] == "partly"}
    assert partly <= set(coverage.CONDITIONS_5)
    assert set(coverage.CONDITIONS_5) <= testable
    assert all(text.strip() for text in coverage.CONDITIONS_5.values())


def test_case_statement_ids_exist_and_case_ids_are_unique() -> None:
    """Every case names real statement ids of its protocol's spec (or a real section, for a
    paragraph without an id, or is an MQTT 3.1 case) and ids are unique; MQTT 5 case ids
    start with 'v5-'."""
    cases = load_cases()
    assert len({c.id for c in cases}) == len(cases)
    for c in cases:
        table = (statements5 if c.protocol == 5 else statements).STATEMENTS
        sections = {row[0] for row in table.values()}
        assert c.statements or c.section or c.mqtt31, c.id
        for sid in c.statements:
            assert sid in table, (c.id, sid)
        assert not c.section or c.section in sections, (c.id, c.section)
        assert c.id.startswith("v5-") == (c.protocol == 5), c.id
        assert c.mqtt31 == (c.protocol == 3), c.id


@pytest.mark.parametrize("protocol", [4, 5])
def test_statements_match_the_spec_table(protocol: int) -> None:
    """conformance/statements.py and statements5.py are exact copies of the shared
    normative-statement tables (3.1.1 and 5.0)."""
    module, tsv = SPECS[protocol]
    if not tsv.exists():
        pytest.skip("shared spec table not present")
    with tsv.open(encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    assert {r[0]: tuple(r[1:]) for r in rows} == module.STATEMENTS


def test_load_cases_by_protocol() -> None:
    """load_cases(protocols) keeps the registry order and only the cases of those levels."""
    every = load_cases()
    assert {c.protocol for c in every} == {3, 4, 5}
    for protocols in ((3,), (3, 4), (5,), (4, 5)):
        assert load_cases(protocols) == [c for c in every if c.protocol in protocols]


def test_protocol_option() -> None:
    """--protocol takes one level or a comma list of 3, 4 and 5; absent means probe."""
    parser = build_parser()
    assert parser.parse_args([]).protocol is None
    assert parser.parse_args(["--protocol", "5"]).protocol == (5,)
    assert parser.parse_args(["--protocol", "5,3,4,4"]).protocol == (3, 4, 5)
    for bad in ("6", "x", "4,", ""):
        with pytest.raises(SystemExit):
            parser.parse_args(["--protocol", bad])


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
