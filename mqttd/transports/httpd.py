"""The ``http`` listener (``type = "http"``): monitoring endpoints over plain HTTP/1.1, no MQTT.

Theory of operation: the TCP listener's accept loop (``mqttd.transports.tcp``) admits each
connection through the same gate as every other listener; then ``HttpConnection`` (h11) reads
one request at a time, each within ``REQUEST_TIMEOUT_S`` (a kept-alive connection that goes
quiet that long is closed), and the request goes to the ``Endpoints`` it was given (``/metrics``,
``/healthz``, ``/readyz``). Any other path is 404, any other method 405; bodies are not wanted.
It is meant for a scraper or a probe on the same host or network: it listens on 127.0.0.1
unless told otherwise, and has no TLS (put it behind a proxy, or use ``metrics_path`` on a wss
listener, to scrape over TLS).
"""

from __future__ import annotations

from collections.abc import Awaitable

import structlog
import trio

from mqttd.config import ListenerConfig
from mqttd.transports import ConnectionInfo, Gate
from mqttd.transports.http import Endpoints, HttpConnection, request_path, serve_endpoint
from mqttd.transports.tcp import BoundSocket, accept_connections, open_listeners

log = structlog.get_logger("mqttd.transports.httpd")

#: Seconds one request may take to arrive (and a kept-alive connection may stay quiet).
REQUEST_TIMEOUT_S = 10.0


async def serve_http_connection(
    stream: trio.abc.Stream, info: ConnectionInfo, endpoints: Endpoints
) -> None:
    """Answer requests on one connection until it closes, goes quiet or misbehaves (an http
    listener's connections, and those of a worker's private socket: ``mqttd.worker_endpoints``).
    """
    listener = info.listener
    logger = log.bind(transport="http", peer=info.peer)
    http = HttpConnection(stream)
    try:
        while True:
            with trio.move_on_after(REQUEST_TIMEOUT_S) as scope:
                request = await http.next_request()
                if request is None:
                    if http.last_error:
                        logger.warning("http_request_rejected", reason=http.last_error)
                    return
                path = request_path(request)
                if path is not None and endpoints.handles(listener, path):
                    status, reason = await serve_endpoint(http, request, endpoints, listener, path)
                else:
                    complete = await http.finish_request_body()
                    head_only = request.method.upper() == b"HEAD"
                    await http.send_error(404, "not found", head_only=head_only, close=not complete)
                    status, reason = 404, "not_found"
                logger.debug(
                    "http_request",
                    method=request.method.decode("ascii", "replace"),
                    path=path,
                    status=status,
                    reason=reason,
                )
            if scope.cancelled_caught:
                logger.debug("http_request_timeout", timeout_s=REQUEST_TIMEOUT_S)
                return
            if not http.start_next_cycle():
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        logger.debug("http_connection_lost", reason=str(exc))
    except Exception:
        # Caught here: an exception escaping a connection task would end the listener.
        logger.exception("connection_task_failed")
    finally:
        await trio.aclose_forcefully(stream)
        if info.admission is not None:
            info.admission.leave(listener, info.ip)


async def serve_http_listener(
    listener: ListenerConfig,
    endpoints: Endpoints,
    *,
    handler_nursery: trio.Nursery,
    gate: Gate | None = None,
    task_status: trio.TaskStatus[list[BoundSocket]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the monitoring endpoints on ``listener`` until cancelled.

    Args:
        listener: a ``type = "http"`` listener.
        endpoints: what the endpoints answer.
        handler_nursery: where connection tasks run.
        gate: admission control, applied at accept time.
        task_status: receives the list of bound sockets (``BoundSocket``).

    Raises:
        StartupError: the port cannot be bound.
    """
    sockets = await open_listeners(listener)

    def handler(stream: trio.abc.Stream, info: ConnectionInfo) -> Awaitable[None]:
        return serve_http_connection(stream, info, endpoints)

    await accept_connections(
        listener,
        sockets,
        handler,
        handler_nursery=handler_nursery,
        gate=gate,
        task_status=task_status,
    )
