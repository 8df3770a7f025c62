"""The ``mqttd`` command: run the broker, check a configuration file, manage passwords.

    mqttd --config FILE [--workers N] [--log-format console|json] [--log-level LEVEL]
    mqttd check-config FILE
    mqttd passwd ...
    mqttd --version

Operator mistakes (a bad configuration, a port in use) end with one ``mqttd: <message>`` line on
stderr and exit status 2, never a traceback. A graceful shutdown (SIGINT or SIGTERM) exits 0.

With more than one worker (``--workers N`` or ``[broker] workers``) this process supervises N
worker processes (``mqttd.supervisor``), each started as ``mqttd --config FILE --worker SPEC``;
``--worker`` is for the supervisor only and not in ``--help``.
"""

from __future__ import annotations

import argparse
import gc
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from mqttd import __version__
from mqttd.config import Config, load_config
from mqttd.errors import ConfigError, StartupError
from mqttd.logging import LEVELS, configure_logging

__all__ = ["main"]

#: Exit status for operator errors (like argparse's usage errors).
EXIT_USAGE = 2
#: Exit status when an interrupt (Ctrl-C) stops the process before a graceful shutdown.
EXIT_INTERRUPTED = 130
#: Bounds of ``--workers`` (those of ``[broker] workers``).
MAX_WORKERS = 256

_SUBCOMMANDS = """\
other commands:
  mqttd check-config FILE   validate FILE, print "FILE: ok" (exit 0) or the error (exit 2)
  mqttd passwd ...          manage a password file (mqttd passwd --help)
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The process exit status: 0 after a graceful shutdown or a successful command, 2 for
        operator errors, 130 when interrupted before the broker could shut down gracefully.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] == "passwd":
            from mqttd import passwd  # imported here: only this command needs it

            return passwd.main(args[1:])
        if args and args[0] == "check-config":
            return _check_config(args[1:])
        return _run(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except SystemExit as e:  # argparse's --help, --version and usage errors
        return _exit_status(e.code)


def _check_config(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mqttd check-config", description="Validate an mqttd configuration file."
    )
    parser.add_argument("file", metavar="FILE", help="the TOML configuration file")
    ns = parser.parse_args(args)
    try:
        load_config(ns.file)
    except ConfigError as e:
        return _fail(e)
    print(f"{ns.file}: ok", flush=True)
    return 0


def _run(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="mqttd",
        description="An MQTT 3.1.1 (and 3.1) broker.",
        epilog=_SUBCOMMANDS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mqttd {__version__}")
    parser.add_argument(
        "-c", "--config", metavar="FILE", required=True, help="the TOML configuration file"
    )
    parser.add_argument(
        "--log-format",
        choices=["console", "json"],
        help="override [log] format: console (human-readable) or json (one object per line)",
    )
    parser.add_argument(
        "--log-level",
        type=str.lower,
        choices=list(LEVELS),
        help="override [log] level",
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help="override [broker] workers: N broker processes sharing every listener port, "
        "one broker over Redis ([cluster] redis_url, or a private redis-server in data_dir)",
    )
    parser.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    ns = parser.parse_args(args)

    if ns.worker is not None:
        # A worker of a supervisor: a SIGHUP before its server handles signals must not end
        # it (it loads its files after this point anyway).
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        config = load_config(ns.config)
    except ConfigError as e:
        return _fail(e)
    log_format = ns.log_format or config.log.format
    log_level = ns.log_level or config.log.level
    if ns.worker is not None:
        return _run_worker(config, ns.worker, log_format=log_format, log_level=log_level)
    workers = ns.workers or config.broker.workers
    configure_logging(json=log_format == "json", level=log_level)
    if workers > 1:
        return _supervise(config, workers, log_format=log_format, log_level=log_level)
    return _serve(config)


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(
            f"expected a number of workers from 1 to {MAX_WORKERS}, got {text!r}"
        )
    return value


#: Allocations between young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Tune the cyclic garbage collector for a broker process (not for library use).

    A broker keeps tens of objects alive per connection for a long time and makes little
    cyclic garbage, so CPython's default thresholds spend much of a connection burst walking
    live connections again and again (in-process harness, 5,000 connects: 42 of 320 µs of
    broker CPU per connection in collections, most of them full ones). Start-up objects are
    frozen (never walked again), and the young generation is collected every 10,000
    allocations: cyclic garbage is still collected, in fewer, larger passes (same harness:
    4 µs of collection per connection, 6,700 instead of 4,100 connects/s).
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 10)


def _serve(config: Config) -> int:
    from mqttd import server
    from mqttd.logging import get_logger

    log = get_logger(__name__)
    log.info("mqttd_starting", version=__version__, config=str(config.source))
    tune_gc()
    status = _run_trio(server.main, config)
    if status == 0:
        log.info("mqttd_stopped")
    return status


def _supervise(config: Config, workers: int, *, log_format: str, log_level: str) -> int:
    from functools import partial

    from mqttd import supervisor
    from mqttd.logging import get_logger

    try:
        supervisor.check(config, workers)  # before any output: an error is one line
    except StartupError as e:
        return _fail(e)
    log = get_logger(__name__)
    log.info("mqttd_starting", version=__version__, config=str(config.source), workers=workers)
    status = _run_trio(
        partial(supervisor.supervise, log_format=log_format, log_level=log_level),
        config,
        workers,
    )
    if status == 0:
        log.info("mqttd_stopped")
    return status


def _run_worker(config: Config, spec_text: str, *, log_format: str, log_level: str) -> int:
    from mqttd import supervisor
    from mqttd.logging import get_logger
    from mqttd.transports.tcp import share_ports

    try:
        spec = supervisor.WorkerSpec.from_json(spec_text)
        config = supervisor.worker_config(config, spec)
    except ConfigError as e:
        return _fail(e)
    configure_logging(json=log_format == "json", level=log_level)
    share_ports()  # every worker binds the same ports: the kernel spreads the connections
    log = get_logger(__name__)
    log.info(
        "mqttd_starting",
        version=__version__,
        config=str(config.source),
        worker=spec.index,
        node_id=config.cluster.node_id,
    )
    tune_gc()
    status = _run_trio(supervisor.run_worker, config, spec)
    if status == 0:
        log.info("mqttd_stopped", worker=spec.index)
    return status


def _run_trio(function: Callable[..., Coroutine[Any, Any, int | None]], *args: Any) -> int:
    """``trio.run(function, *args)``; operator errors become one line and exit status 2.

    Returns:
        What ``function`` returned (None counts as 0), 2 for an operator error, 130 for an
        interrupt.
    """
    import trio

    try:
        status = trio.run(function, *args)
    except (ConfigError, StartupError) as e:
        return _fail(e)
    except BaseExceptionGroup as group:
        # Errors raised inside the server's nurseries arrive wrapped in exception groups.
        operator_errors, rest = group.split((ConfigError, StartupError))
        if operator_errors is not None:
            return _fail(_first_leaf(operator_errors))
        interrupts, rest = group.split(KeyboardInterrupt)
        if interrupts is not None and rest is None:
            return EXIT_INTERRUPTED
        raise
    return status or 0


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _fail(error: BaseException) -> int:
    message = " ".join(str(error).split())  # always one line
    print(f"mqttd: {message}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
