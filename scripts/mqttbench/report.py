"""The benchmark's results table: one row per (scenario, figure, transport), one column per
broker, with the ratio of two brokers, their CPU % and any lost/duplicated deliveries."""

from __future__ import annotations

import datetime
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .machine import machine_info


@dataclass
class Metric:
    """One table row's worth of numbers for one broker."""

    value: float | None
    cpu: float | None = None
    lost: int | None = None
    dup: int | None = None
    note: str = ""


@dataclass
class Row:
    """One row of the results table."""

    label: str
    unit: str
    higher_is_better: bool
    cells: dict[str, Metric] = field(default_factory=dict)


def fmt(v: float | None, unit: str) -> str:
    """A figure as the table shows it (n/a for a missing value)."""
    if v is None or v != v:
        return "n/a"
    if unit in ("ms", "s", "KiB"):
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"
    return f"{v:,.0f}"


def fmt_ld(m: Metric | None) -> str:
    """Lost/duplicated deliveries; a loss is flagged in bold."""
    if m is None or m.lost is None:
        return "-"
    text = f"{m.lost}/{m.dup}"
    return f"**{text} DROPPED**" if m.lost > 0 else text


def render_table(rows: list[Row], brokers: list[str]) -> str:
    """The results as a Markdown table."""
    one = len(brokers) == 1
    head = ["scenario", "unit", *brokers]
    if len(brokers) == 2:
        head.append(f"ratio {brokers[1]}/{brokers[0]}")
    head += [f"CPU% {b}" for b in brokers]
    head += [f"lost/dup {b}" for b in brokers]
    head.append("notes")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row.label, row.unit + ("" if row.higher_is_better else " (lower is better)")]
        vals = []
        for b in brokers:
            m = row.cells.get(b)
            vals.append(m.value if m else None)
            cells.append(fmt(m.value, row.unit) if m else "n/a")
        if not one and len(brokers) == 2:
            a, c = vals
            cells.append(f"{c / a:.2f}" if a and c is not None and a == a and c == c else "n/a")
        for b in brokers:
            m = row.cells.get(b)
            cells.append(f"{m.cpu:.0f}" if m and m.cpu is not None else "n/a")
        for b in brokers:
            cells.append(fmt_ld(row.cells.get(b)))
        notes = [
            f"{b}: {row.cells[b].note}" for b in brokers if b in row.cells and row.cells[b].note
        ]
        cells.append("; ".join(notes))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_markdown(
    path: Path,
    table: str,
    names: list[str],
    versions: dict[str, str],
    argv: list[str] | None,
    elapsed: float,
) -> None:
    """Write the table with date, machine and versions."""
    info = machine_info()
    cmd = "python scripts/bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    vers = ", ".join(f"{n} {versions.get(n, '?')}" for n in names)
    text = (
        f"Date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}  \n"
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram']} RAM, "
        f"Linux {info['kernel']}  \n"
        f"Python {info['python']}; {vers}  \n"
        f"Command: `{cmd}` ({elapsed:.0f} s)\n\n{table}\n"
    )
    path.write_text(text)
