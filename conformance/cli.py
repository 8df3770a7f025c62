"""Command line: ``python -m conformance --host H --port P [options]``."""

from __future__ import annotations

import argparse
import sys
import time

import trio

from conformance import coverage, load_cases
from conformance.core import PROTOCOL_NAMES, PROTOCOLS
from conformance.runner import (
    FAIL,
    print_live,
    probe_protocols,
    protocols_text,
    run_all,
    select,
    summary_text,
    write_report,
)
from conformance.transport import Target


def port_list(text: str) -> tuple[int, ...]:
    """``--port 1883`` or ``--port 1883,1884,1885`` (the ports of one broker's nodes)."""
    try:
        ports = tuple(int(item) for item in text.split(","))
    except ValueError:
        message = f"not a port or a comma-separated port list: {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if not all(0 < port < 65536 for port in ports):
        raise argparse.ArgumentTypeError(f"a port is out of range in {text!r}")
    return ports


def url_list(text: str) -> tuple[str, ...]:
    """``--ws URL`` or ``--ws URL,URL,...`` (the WebSocket URLs of one broker's nodes)."""
    urls = tuple(item.strip() for item in text.split(","))
    if not all(urls):
        raise argparse.ArgumentTypeError(f"an empty URL in {text!r}")
    return urls


def protocol_list(text: str) -> tuple[int, ...]:
    """``--protocol 5`` or ``--protocol 3,4,5``: protocol levels (3 = 3.1, 4 = 3.1.1, 5 = 5.0)."""
    try:
        levels = tuple(sorted({int(item) for item in text.split(",")}))
    except ValueError:
        levels = ()
    if not levels or not set(levels) <= set(PROTOCOLS):
        message = f"protocols are 3 (3.1), 4 (3.1.1) and 5 (5.0), comma separated: {text!r}"
        raise argparse.ArgumentTypeError(message)
    return levels


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m conformance",
        description="Test an MQTT 5.0, 3.1.1 or 3.1 broker against the spec, statement by "
        "statement.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument(
        "--port",
        type=port_list,
        default=None,
        metavar="PORT[,PORT...]",
        help="default 1883, or 8883 with --tls; with several (the nodes of one broker), "
        "each case's connections take them in turn",
    )
    p.add_argument("--tls", action="store_true", help="connect with TLS")
    p.add_argument("--cafile", help="CA bundle to verify the broker's certificate")
    p.add_argument(
        "--ws",
        metavar="URL[,URL...]",
        type=url_list,
        help="run over WebSocket, e.g. ws://127.0.0.1:8080/mqtt (several: taken in turn)",
    )
    p.add_argument(
        "--wss",
        metavar="URL[,URL...]",
        type=url_list,
        help="run over secure WebSocket (wss://…; several: taken in turn)",
    )
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument(
        "--denied-topic",
        metavar="TOPIC",
        help="a topic the broker's ACL forbids this identity to publish to (enables ACL cases)",
    )
    p.add_argument(
        "--protocol",
        type=protocol_list,
        default=None,
        metavar="N[,N...]",
        help="protocol levels to test: 3 (MQTT 3.1), 4 (3.1.1), 5 (5.0), e.g. 4,5; default: "
        "every level the broker answers (one CONNECT of each is tried first)",
    )
    p.add_argument("--only", metavar="ID-OR-REGEX", help="case id or statement id, or a regex")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a reply/close")
    p.add_argument("--concurrency", type=int, default=8, help="cases run at the same time")
    p.add_argument("--report", metavar="FILE", help="write a report (.json or .md)")
    p.add_argument("--list", action="store_true", help="list every case with its statements")
    p.add_argument("--coverage-table", action="store_true", help="print the README coverage table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cases = load_cases()
    if args.coverage_table:
        print(coverage.table(cases) + "\n" + coverage.table(cases, protocol=5), end="")
        return 0
    ports: tuple[int, ...] = args.port or ((8883 if args.tls else 1883),)
    ws_urls: tuple[str, ...] = args.wss or args.ws or ()
    target = Target(
        host=args.host,
        port=ports[0],
        ports=ports if len(ports) > 1 else (),
        tls=args.tls,
        cafile=args.cafile,
        ws_url=ws_urls[0] if ws_urls else None,
        ws_urls=ws_urls if len(ws_urls) > 1 else (),
        username=args.username,
        password=args.password,
        timeout=args.timeout,
        denied_topic=args.denied_topic,
    )
    if args.list:
        for c in select(cases, args.only, target, args.protocol):
            extra = " (WebSocket only)" if c.transport == "ws" else ""
            extra += f" ({PROTOCOL_NAMES[c.protocol]})" if c.protocol != 4 else ""
            refs = " ".join(c.statements) or (f"section {c.section}" if c.section else "-")
            print(f"{c.id:<44} {refs}{extra}\n    {c.title}")
        return 0
    protocols: tuple[int, ...] = args.protocol or ()
    if not protocols:
        answers = trio.run(probe_protocols, target)
        print(f"Protocols of {target.describe()}:\n{protocols_text(answers)}", flush=True)
        protocols = tuple(v for v, (ok, _) in answers.items() if ok)
        if not protocols:
            print("the broker answers no MQTT version: nothing to test", file=sys.stderr)
            return 1
    selected = select(cases, args.only, target, protocols)
    if not selected:
        print(f"no case matches {args.only!r}", file=sys.stderr)
        return 2
    names = ", ".join(PROTOCOL_NAMES[v] for v in protocols)
    print(f"Running {len(selected)} cases ({names}) against {target.describe()}", flush=True)
    start = time.monotonic()
    results = trio.run(
        lambda: run_all(
            selected, target, concurrency=max(1, args.concurrency), on_result=print_live()
        )
    )
    elapsed = time.monotonic() - start
    print(summary_text(results, target, elapsed))
    if args.report:
        write_report(args.report, results, target, elapsed)
    return 1 if any(r.status == FAIL for r in results) else 0
