"""Logging set-up: the only ``structlog.configure()`` call in mqttd.

Every module logs with ``structlog`` (``log = get_logger(__name__)``, snake_case event names, data
as key-values). ``configure_logging`` runs once, from ``mqttd.cli``, before the broker starts.
Output goes to stderr, one flushed line per event: coloured key-value lines for a person at a
terminal (``console``), or one JSON object per line for machines (``json``). Records from stdlib
loggers (trio's ``trio.serve_listeners`` among them) pass through the same renderer, so the
stream reads the same whichever library logged.

Every line a connection's tasks log names the connection (``conn_id``, ``peer``, ``transport``,
``client_id``): ``bind_connection`` stores them in one context variable, which the
``merge_connection`` processor reads. That costs one ``ContextVar.set`` per bind and one ``get``
per line, where structlog's general-purpose contextvars copy and scan the whole context on every
line -- a measurable share of the CPU a broker spends per connect.

For the same reason the broker's own lines go through one processor, ``_prepare_line``, that
does what ``merge_connection``, ``clip_client_text``, ``add_log_level`` and structlog's
``TimeStamper(fmt="iso", utc=True)`` would do one after the other, with the same result: a
processor call, and ``datetime.isoformat`` for every line, cost more than the work itself.
"""

from __future__ import annotations

import json as _json
import logging
import sys
import time
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any

import structlog

__all__ = [
    "LEVELS",
    "LOG_TEXT_LIMIT",
    "LogBudget",
    "bind_connection",
    "clip_client_text",
    "configure_logging",
    "get_logger",
    "merge_connection",
]

#: Level names accepted by ``configure_logging`` (and by ``[log] level``).
LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

_HANDLER_MARK = "_mqttd_handler"

#: (conn_id, peer, transport, client_id) of the connection the current task serves
_CONNECTION: ContextVar[tuple[int, str, str, str | None] | None] = ContextVar(
    "mqttd_connection", default=None
)


def bind_connection(conn_id: int, peer: str, transport: str, client_id: str | None) -> None:
    """Name this connection in every line the current task (and tasks it starts) logs."""
    _CONNECTION.set((conn_id, peer, transport, client_id))


def merge_connection(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Processor: add the bound connection's keys (a key passed to the log call wins)."""
    bound = _CONNECTION.get()
    if bound is not None:
        conn_id, peer, transport, client_id = bound
        event_dict.setdefault("conn_id", conn_id)
        event_dict.setdefault("peer", peer)
        event_dict.setdefault("transport", transport)
        if client_id is not None:
            event_dict.setdefault("client_id", client_id)
    return event_dict


#: Most characters of one string value a log line carries. Client ids, user names, topics and
#: filters come from the network: a 60 KB filter must not become 60 KB of log per line.
LOG_TEXT_LIMIT = 256
#: Most items of one list or tuple value a log line carries.
LOG_ITEMS_LIMIT = 16
#: Keys whose values the broker writes itself (tracebacks of its own bugs): never clipped.
_UNCLIPPED = frozenset({"event", "exception", "timestamp", "level", "logger"})


_CLIPPED_TYPES = (str, list, tuple)


def _clip(value: Any) -> Any:
    if isinstance(value, str):
        if len(value) > LOG_TEXT_LIMIT:
            return f"{value[:LOG_TEXT_LIMIT]}...[{len(value)} chars]"
        return value
    if isinstance(value, list | tuple):
        items = [_clip(item) for item in value[:LOG_ITEMS_LIMIT]]
        if len(value) > LOG_ITEMS_LIMIT:
            items.append(f"...[{len(value)} items]")
        return items
    return value


def clip_client_text(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Processor: cut every string value to ``LOG_TEXT_LIMIT`` characters (and lists to
    ``LOG_ITEMS_LIMIT`` items), saying how long it was, so no line carries more than a bounded
    slice of client-supplied text."""
    # Runs for every log line: the common case (a short string, a number) costs one type
    # check and one comparison.
    for key, value in event_dict.items():
        kind = type(value)
        if kind is str:
            if len(value) > LOG_TEXT_LIMIT and key not in _UNCLIPPED:
                event_dict[key] = _clip(value)
        elif kind is int or kind is float or kind is bool or value is None:
            continue
        elif isinstance(value, _CLIPPED_TYPES) and key not in _UNCLIPPED:
            event_dict[key] = _clip(value)
    return event_dict


#: (second, "YYYY-MM-DDTHH:MM:SS") of the latest timestamp: one tuple, so a thread that logs
#: (a stdlib record) never sees one half of an update.
_SECOND: tuple[int, str] = (-1, "")


def _timestamp() -> str:
    """Now as structlog's ``TimeStamper(fmt="iso", utc=True)`` writes it:
    ``2026-01-31T12:00:00.123456Z`` (no fraction when the microseconds are 0, as
    ``datetime.isoformat`` does); the date and time of day are formatted once a second."""
    global _SECOND
    second, micros = divmod(time.time_ns() // 1000, 1_000_000)
    cached, prefix = _SECOND
    if second != cached:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _SECOND = (second, prefix)
    if micros:
        return f"{prefix}.{micros:06d}Z"
    return f"{prefix}Z"


def _add_timestamp(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Processor: the ``timestamp`` key (see ``_timestamp``)."""
    event_dict["timestamp"] = _timestamp()
    return event_dict


#: Level names as structlog's ``add_log_level`` maps them; any other method is its own name.
_LEVEL_NAMES = {"exception": "error", "warn": "warning"}


def _prepare_line(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Processor: ``merge_connection``, ``clip_client_text``, ``add_log_level`` and the
    timestamp in one call, with the same keys in the same order."""
    merge_connection(logger, method_name, event_dict)
    clip_client_text(logger, method_name, event_dict)
    event_dict["level"] = _LEVEL_NAMES.get(method_name, method_name)
    event_dict["timestamp"] = _timestamp()
    return event_dict


class _JsonLine:
    """The whole processor chain of ``--log-format json`` in one call: ``_prepare_line``, then
    ``StackInfoRenderer`` and ``dict_tracebacks`` when the line asks for a stack or carries an
    exception, then what ``JSONRenderer()`` writes (``json.dumps`` with structlog's fallback for
    other types), by one encoder made once."""

    __slots__ = ("_encode", "_stack_info")

    def __init__(self) -> None:
        # This module's frames are not the caller a stack starts from.
        self._stack_info = structlog.processors.StackInfoRenderer(additional_ignores=[__name__])
        self._encode = _json.JSONEncoder(default=_json_fallback).encode

    def __call__(self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> str:
        _prepare_line(logger, method_name, event_dict)
        if "stack_info" in event_dict or "exc_info" in event_dict:
            self._stack_info(logger, method_name, event_dict)
            structlog.processors.dict_tracebacks(logger, method_name, event_dict)
        return self._encode(event_dict)


def _json_fallback(value: Any) -> Any:
    """A value JSON has no type for: its ``__structlog__()`` or its ``repr`` (as structlog's
    ``JSONRenderer`` does)."""
    try:
        return value.__structlog__()
    except AttributeError:
        return repr(value)


class LogBudget:
    """Per-connection log lines a client can trigger again and again: the first of each event is
    logged, the rest are counted and reported once, in the connection's closing line.

    A client looping on something refused (a SUBSCRIBE the ACL denies, a publish to a forbidden
    topic) must not turn each packet into a log line.
    """

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[str, int] | None = None

    def first(self, event: str) -> bool:
        """Count one occurrence of ``event``; True only for the first one (log it then)."""
        counts = self._counts
        if counts is None:
            counts = self._counts = {}
        seen = counts.get(event, 0)
        counts[event] = seen + 1
        return not seen

    def suppressed(self) -> dict[str, int]:
        """Occurrences not logged, by event (for the closing line)."""
        if not self._counts:
            return {}
        return {event: n - 1 for event, n in self._counts.items() if n > 1}


def configure_logging(*, json: bool, level: str, cache_logger_on_first_use: bool = True) -> None:
    """Configure structlog and the stdlib root logger to write to stderr.

    Args:
        json: one JSON object per line (with structured tracebacks) when true; otherwise the
            human-readable console format, coloured only when stderr is a terminal.
        level: the least severe level written: ``debug``, ``info``, ``warning`` or ``error``.
        cache_logger_on_first_use: cache bound loggers (fast); tests that reconfigure pass False.

    Raises:
        ValueError: ``level`` is not one of ``LEVELS``.
    """
    try:
        numeric_level = LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; expected one of {list(LEVELS)}") from None

    processors: list[Any]
    final: list[Any]
    if json:
        final = [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
        processors = [_JsonLine()]
    else:
        final = [structlog.dev.ConsoleRenderer(colors=_is_tty(sys.stderr))]
        processors = [_prepare_line, structlog.processors.StackInfoRenderer(), *final]

    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        context_class=dict,
        # WriteLogger writes each line with one write() and flushes it: readers of a pipe see
        # whole lines as they happen.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=cache_logger_on_first_use,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            merge_connection,
            clip_client_text,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            _add_timestamp,
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = logging.StreamHandler(sys.stderr)  # flushes after every record
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric_level)


def get_logger(name: str | None = None, **initial_values: Any) -> Any:
    """Return a structlog logger, bound to ``logger=name`` when a name is given.

    Args:
        name: usually ``__name__``; shows up as the ``logger`` key, like stdlib records.
        initial_values: more key-values bound to every event of this logger.

    Returns:
        A lazy bound logger: it picks up the configuration in force when first used.
    """
    if name is not None:
        initial_values["logger"] = name
    # Bound, not passed to get_logger(): its own ``logger`` parameter would clash with the key.
    return structlog.get_logger().bind(**initial_values)


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or the stream is closed
        return False
