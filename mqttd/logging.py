"""Logging set-up: the only ``structlog.configure()`` call in mqttd.

Every module logs with ``structlog`` (``log = get_logger(__name__)``, snake_case event names, data
as key-values). ``configure_logging`` runs once, from ``mqttd.cli``, before the broker starts.
Output goes to stderr, one flushed line per event: coloured key-value lines for a person at a
terminal (``console``), or one JSON object per line for machines (``json``). Records from stdlib
loggers (trio's ``trio.serve_listeners`` among them) pass through the same renderer, so the
stream reads the same whichever library logged.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

__all__ = ["LEVELS", "configure_logging", "get_logger"]

#: Level names accepted by ``configure_logging`` (and by ``[log] level``).
LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

_HANDLER_MARK = "_mqttd_handler"


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

    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    renderer: Any
    if json:
        renderer = structlog.processors.JSONRenderer()
        final: list[Any] = [structlog.processors.dict_tracebacks, renderer]
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=_is_tty(sys.stderr))
        final = [renderer]

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.StackInfoRenderer(),
            *final,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        context_class=dict,
        # WriteLogger writes each line with one write() and flushes it: readers of a pipe see
        # whole lines as they happen.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=cache_logger_on_first_use,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            timestamper,
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
