"""``conformance.broker_process.LogLines.take``: wait for one kind of line, keep the others."""

from __future__ import annotations

import io
import os

import pytest

from conformance.broker_process import LogLines, LogWaitError


def _lines(*records: str) -> LogLines:
    """``LogLines`` over a finished output of these lines."""
    lines = LogLines(io.BytesIO("".join(f"{r}\n" for r in records).encode()))
    lines.thread.join(5)
    return lines


def test_take_leaves_the_records_before_the_match_unread() -> None:
    """``take`` removes only the record it returns; those before it stay for later waits."""
    lines = _lines('{"event": "message", "n": 1}', '{"event": "answer"}', "plain text")
    assert lines.take(lambda r: r["event"] == "answer", "answer", 1) == {"event": "answer"}
    assert lines.take(lambda r: r["event"] == "output", "text", 1)["line"] == "plain text"
    assert lines.next(1) == {"event": "message", "n": 1}
    assert lines.next(1) is None


def test_take_gives_up_at_an_unwanted_record_and_at_the_end() -> None:
    """A ``give_up`` record before the match, or the end of the output, raises."""
    lines = _lines('{"event": "error"}', '{"event": "answer"}')
    with pytest.raises(LogWaitError, match="while waiting for answer"):
        lines.take(lambda r: r["event"] == "answer", "answer", 1, give_up=lambda r: True)
    with pytest.raises(LogWaitError, match="output ended before nothing"):
        lines.take(lambda r: False, "nothing", 1)


def test_take_times_out_while_the_output_stays_open() -> None:
    """With no matching line and the output still open, ``take`` raises after its timeout."""
    read_end, write_end = os.pipe()
    with open(read_end, "rb") as pipe, open(write_end, "wb", buffering=0) as writer:
        lines = LogLines(pipe)
        writer.write(b'{"event": "other"}\n')
        with pytest.raises(LogWaitError, match=r"within 0\.1 s, no late"):
            lines.take(lambda r: r["event"] == "late", "late", 0.1)
        writer.close()
        lines.thread.join(5)
    assert lines.next(1) == {"event": "other"}
