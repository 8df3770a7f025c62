"""Run cases concurrently (bounded), print a live line per case, summarise and report."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import TextIO

import trio

from conformance import wire
from conformance.core import (
    MQTT31_SECTION,
    PROTOCOL_NAMES,
    PROTOCOLS,
    V5_SUFFIX,
    Case,
    Context,
    Fail,
    Skip,
    rand,
)
from conformance.transport import Closed, Target, open_connection

PASS, FAIL, SKIP, INFO = "pass", "fail", "skip", "info"


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one case."""

    case_id: str
    statements: tuple[str, ...]
    sections: tuple[str, ...]
    title: str
    status: str
    detail: str
    duration_s: float
    #: The protocol version the case speaks (3, 4 or 5) and whose statement ids it cites.
    protocol: int = 4


def select(
    cases: list[Case],
    only: str | None,
    target: Target,
    protocols: Iterable[int] | None = None,
) -> list[Case]:
    """Cases to run: those of ``protocols`` (default: all) that ``--only`` matches (a case id
    or a statement id, exactly or as a regex)."""
    if protocols is not None:
        wanted = set(protocols)
        cases = [c for c in cases if c.protocol in wanted]
    if only:
        pattern = re.compile(only)
        cases = [
            c
            for c in cases
            if only == c.id
            or only in c.statements
            or pattern.search(c.id)
            or any(pattern.search(s) for s in c.statements)
            or (c.section and pattern.search(f"section {c.section}"))
        ]
    return cases


async def run_case(case: Case, target: Target) -> Result:
    """Run one case with its own context; cleanup never turns a pass into a failure."""
    ctx = Context(target=target, case_id=case.id, version=5 if case.protocol == 5 else 4)
    start = time.monotonic()
    status, detail = PASS, ""
    if case.transport == "ws" and not target.is_ws:
        status, detail = SKIP, "WebSocket rule: run with --ws/--wss"
    else:
        try:
            with trio.fail_after(max(target.timeout * 6, 20)):
                await case.func(ctx)
        except Fail as exc:
            status, detail = FAIL, str(exc)
        except Skip as exc:
            status, detail = SKIP, str(exc)
        except trio.TooSlowError:
            status, detail = FAIL, "case did not finish in time"
        except (Closed, OSError) as exc:
            status, detail = FAIL, f"unexpected connection error: {exc!r}"
        else:
            if ctx.choices:
                status, detail = INFO, "; ".join(ctx.choices)
        try:
            await ctx.cleanup()
        except (Fail, Closed, OSError, trio.TooSlowError) as exc:
            ctx.notes.append(f"cleanup failed: {exc}")
    if ctx.notes:
        detail = "; ".join([detail, *ctx.notes]) if detail else "; ".join(ctx.notes)
    return Result(
        case.id,
        case.statements,
        case.sections,
        case.title,
        status,
        detail,
        round(time.monotonic() - start, 3),
        case.protocol,
    )


def references(r: Result) -> list[str]:
    """What a result checks: its statement ids, else its section (a paragraph with no id), or
    MQTT 3.1. MQTT 5.0 ids are marked ``(5.0)``: many exist in 3.1.1 too, with other meanings."""
    if r.statements:
        suffix = V5_SUFFIX if r.protocol == 5 else ""
        return [sid + suffix for sid in r.statements]
    return ["MQTT 3.1" if s == MQTT31_SECTION else f"section {s}" for s in r.sections]


def format_line(r: Result) -> str:
    ids = " ".join(f"[{s}]" for s in references(r))
    line = f"{r.status.upper():4}  {r.case_id:<44} {ids}"
    if r.detail:
        line += f"\n      {r.detail}"
    return line


async def run_all(
    cases: list[Case],
    target: Target,
    *,
    concurrency: int = 8,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Run ``cases`` at most ``concurrency`` at a time; results in registry order."""
    limiter = trio.CapacityLimiter(concurrency)
    results: dict[str, Result] = {}

    async def one(case: Case) -> None:
        async with limiter:
            r = await run_case(case, target)
        results[case.id] = r
        if on_result is not None:
            on_result(r)

    async with trio.open_nursery() as nursery:
        for case in cases:
            nursery.start_soon(one, case)
    return [results[c.id] for c in cases]


def section_key(sec: str) -> tuple[int, ...]:
    """Sort key of a summary section: 3.1.1 sections by number, then MQTT 5.0 ones."""
    v5 = sec.endswith(V5_SUFFIX)
    if v5:
        sec = sec[: -len(V5_SUFFIX)]
    try:
        return (1 if v5 else 0, *(int(x) for x in sec.split(".")))
    except ValueError:
        return (2 if v5 else 1, 99)


def summary_rows(results: list[Result]) -> list[tuple[str, int, int, int, int]]:
    """(section, pass, fail, skip, info) per spec section; a case counts in each section."""
    table: dict[str, list[int]] = {}
    idx = {PASS: 0, FAIL: 1, SKIP: 2, INFO: 3}
    for r in results:
        for sec in r.sections:
            table.setdefault(sec, [0, 0, 0, 0])[idx[r.status]] += 1
    return [(sec, *table[sec]) for sec in sorted(table, key=section_key)]  # type: ignore[misc]


def summary_text(results: list[Result], target: Target, elapsed: float) -> str:
    rows = summary_rows(results)
    lines = [
        "",
        f"Summary for {target.describe()} ({len(results)} cases, {elapsed:.1f}s)",
        f"{'section':<14}{'pass':>6}{'fail':>6}{'skip':>6}{'info':>6}",
    ]
    lines += [f"{s:<14}{p:>6}{f:>6}{k:>6}{i:>6}" for s, p, f, k, i in rows]
    totals = [sum(1 for r in results if r.status == st) for st in (PASS, FAIL, SKIP, INFO)]
    lines.append(f"{'total':<14}{totals[0]:>6}{totals[1]:>6}{totals[2]:>6}{totals[3]:>6}")
    failed = [r.case_id for r in results if r.status == FAIL]
    if failed:
        lines.append("failed: " + ", ".join(failed))
    return "\n".join(lines)


def write_report(path: str, results: list[Result], target: Target, elapsed: float) -> None:
    """``--report FILE``: JSON if it ends in .json, else Markdown."""
    if path.endswith(".json"):
        doc = {
            "target": target.describe(),
            "elapsed_s": round(elapsed, 3),
            "counts": {
                st: sum(1 for r in results if r.status == st) for st in (PASS, FAIL, SKIP, INFO)
            },
            "results": [asdict(r) for r in results],
        }
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        return
    out = [
        f"# MQTT conformance report: {target.describe()}",
        "",
        "| section | pass | fail | skip | info |",
        "|---|---|---|---|---|",
    ]
    out += [f"| {s} | {p} | {f} | {k} | {i} |" for s, p, f, k, i in summary_rows(results)]
    out += ["", "| case | statements | result | detail |", "|---|---|---|---|"]
    for r in results:
        detail = r.detail.replace("|", "\\|").replace("\n", " ")
        out.append(f"| {r.case_id} | {', '.join(references(r))} | {r.status} | {detail} |")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")


def print_live(stream: TextIO = sys.stdout) -> Callable[[Result], None]:
    def emit(r: Result) -> None:
        print(format_line(r), file=stream, flush=True)

    return emit


async def probe(target: Target, version: int) -> tuple[bool, str]:
    """Does the broker answer a CONNECT of protocol ``version`` (3, 4 or 5)? Accepted (a
    CONNACK with code 0) counts as answered; returns (answered, what happened)."""
    stream = None
    try:
        with trio.fail_after(target.timeout):
            stream = await open_connection(target)
            proto = ("MQIsdp", 3) if version == 3 else ("MQTT", version)
            password = None if target.password is None else target.password.encode()
            await stream.send(
                wire.connect(
                    f"probe{version}{rand(10)}",
                    username=target.username,
                    password=password,
                    proto=proto,
                    version=version,
                )
            )
            decoder = wire.Decoder(5 if version == 5 else 4)
            while (pkt := decoder.next()) is None:
                decoder.feed(await stream.receive())
            if pkt.type != wire.CONNACK:
                return False, f"answered with {pkt.describe()}"
            if pkt.reason != 0:
                return False, f"refused: {pkt.describe()}"
            await stream.send(wire.disconnect())
            return True, "accepted"
    except wire.WireError as exc:
        return False, f"answered with a packet of another version ({exc})"
    except (Closed, OSError) as exc:
        return False, f"closed ({exc})"
    except trio.TooSlowError:
        return False, "no answer"
    finally:
        if stream is not None:
            await stream.aclose()


async def probe_protocols(target: Target) -> dict[int, tuple[bool, str]]:
    """Every protocol version (3, 4, 5) -> whether the broker answers it, and how."""
    out: dict[int, tuple[bool, str]] = {}

    async def one(version: int) -> None:
        out[version] = await probe(target, version)

    async with trio.open_nursery() as nursery:
        for version in PROTOCOLS:
            nursery.start_soon(one, version)
    return {v: out[v] for v in PROTOCOLS}


def protocols_text(answers: dict[int, tuple[bool, str]]) -> str:
    """One line per probed version, for the run's header."""
    return "\n".join(
        f"  {PROTOCOL_NAMES[v]}: {'answered' if ok else 'not answered'} ({how})"
        for v, (ok, how) in answers.items()
    )
