"""Log lines name their connection (mqttd.logging.bind_connection / merge_connection)."""

from __future__ import annotations

from typing import Any

import trio

from mqttd.logging import bind_connection, merge_connection


def _line(**event: Any) -> dict[str, Any]:
    """What the processor chain makes of a log call in the current task."""
    return merge_connection(None, "info", dict(event))


async def test_a_bound_connection_is_named_in_every_line() -> None:
    bind_connection(7, "127.0.0.1:5000", "tcp", None)
    first = _line(event="before_connect")
    bind_connection(7, "127.0.0.1:5000", "tcp", "sensor-1")
    second = _line(event="after_connect")
    third = _line(event="explicit", client_id="other")
    assert first == {
        "event": "before_connect",
        "conn_id": 7,
        "peer": "127.0.0.1:5000",
        "transport": "tcp",
    }  # no client id before CONNECT
    assert second["client_id"] == "sensor-1"
    assert third["client_id"] == "other"  # a key passed to the call wins


async def test_tasks_log_as_their_own_connection() -> None:
    """Each task has its own binding; a task started by another inherits it until it binds
    its own (what a connection's writer task does), and the parent is unaffected."""
    lines: list[dict[str, Any]] = []

    async def child() -> None:
        lines.append(_line(event="inherited"))
        bind_connection(2, "peer-2", "ws", "c2")
        await trio.lowlevel.checkpoint()
        lines.append(_line(event="own"))

    async def connection() -> None:
        bind_connection(1, "peer-1", "tcp", "c1")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)
        lines.append(_line(event="parent"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(connection)
    outside = _line(event="outside")
    by_event = {line["event"]: line for line in lines}
    assert by_event["inherited"]["conn_id"] == 1
    assert by_event["own"]["client_id"] == "c2"
    assert by_event["parent"]["client_id"] == "c1"
    assert outside == {"event": "outside"}


def test_client_text_is_clipped_with_its_length() -> None:
    """String values over LOG_TEXT_LIMIT are cut and say how long they were; lists are cut
    too; the event name and tracebacks are left alone."""
    from mqttd.logging import LOG_ITEMS_LIMIT, LOG_TEXT_LIMIT, clip_client_text

    line = clip_client_text(
        None,
        "warning",
        {
            "event": "subscribe_refused",
            "first": "x" * 60_000,
            "offered": ["y" * 1000] * 100,
            "exception": "z" * 5000,
            "count": 3,
        },
    )
    assert line["first"] == "x" * LOG_TEXT_LIMIT + "...[60000 chars]"
    assert len(line["offered"]) == LOG_ITEMS_LIMIT + 1
    assert line["offered"][-1] == "...[100 items]"
    assert line["exception"] == "z" * 5000
    assert line["count"] == 3


def test_log_budget_logs_the_first_and_counts_the_rest() -> None:
    """LogBudget: True once per event, the rest counted for the closing line."""
    from mqttd.logging import LogBudget

    budget = LogBudget()
    assert budget.suppressed() == {}
    assert [budget.first("a") for _ in range(3)] == [True, False, False]
    assert budget.first("b")
    assert budget.suppressed() == {"a": 2}


def test_timestamps_are_written_as_structlogs_iso_utc_stamper_writes_them(
    monkeypatch: Any,
) -> None:
    """The cached-second timestamp equals TimeStamper(fmt="iso", utc=True)'s, with and
    without microseconds, across a change of second."""
    import datetime
    import time

    from mqttd import logging as mqttd_logging

    for now_us in (1_767_225_599_999_999, 1_767_225_600_000_000, 1_767_225_600_000_001):
        monkeypatch.setattr(time, "time_ns", lambda now_us=now_us: now_us * 1000)
        expected = (
            datetime.datetime.fromtimestamp(now_us // 1_000_000, tz=datetime.UTC)
            .replace(microsecond=now_us % 1_000_000)
            .isoformat()
            .replace("+00:00", "Z")
        )
        assert mqttd_logging._timestamp() == expected


def _raised() -> ValueError:
    """An exception with a traceback whose frame no longer changes."""
    try:
        raise ValueError("boom")
    except ValueError as exc:
        return exc


def test_the_json_line_is_what_structlogs_processor_chain_writes() -> None:
    """_JsonLine renders a line as merge_connection, clip_client_text, add_log_level,
    StackInfoRenderer, dict_tracebacks and JSONRenderer would, byte for byte (the timestamp
    aside), for the types log calls pass, an exception included."""
    import structlog

    from mqttd.logging import _JsonLine, clip_client_text

    def stamp(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        event_dict["timestamp"] = "T"
        return event_dict

    chain = [
        merge_connection,
        clip_client_text,
        structlog.processors.add_log_level,
        stamp,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.dict_tracebacks,
    ]
    bind_connection(3, "10.0.0.1:1883", "tcp", "sensor-1")
    error = _raised()
    events: list[tuple[str, dict[str, Any]]] = [
        ("info", {"event": "client_connected", "keepalive": 60, "will": False, "user": None}),
        ("warning", {"event": "x", "client_id": "given", "ratio": 0.5, "topic": "t" * 300}),
        ("info", {"event": "odd", "raw": b"\x00", "items": ["a", 1], "nested": {"k": [1]}}),
        ("exception", {"event": "connection_failed", "exc_info": error}),
        ("info", {"event": "no_exception", "exc_info": False, "stack_info": False}),
    ]
    for method, event in events:
        expected: Any = dict(event)
        for processor in chain:
            expected = processor(None, method, expected)
        line = _JsonLine()(None, method, dict(event))
        head, _, stamp_and_rest = line.partition('"timestamp": "')
        stamp, _, rest = stamp_and_rest.partition('"')
        assert stamp.endswith("Z")
        assert head + '"timestamp": "T"' + rest == structlog.processors.JSONRenderer()(
            None, method, expected
        )
