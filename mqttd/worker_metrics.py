"""PURE: the metrics of several workers as one exposition, for the supervisor's ``/metrics``.

Theory of operation
-------------------
Under ``mqttd --workers N`` the supervisor serves the ``http`` listeners and each worker its
own metrics on a private Unix socket (``mqttd.worker_endpoints``). At each scrape the supervisor
fetches every worker's text and hands it here: ``merge_worker_metrics`` parses each text with
``prometheus_client``'s parser and re-emits every sample with one more label,
``worker="<k>"``. Families of the same name from different workers become one family (one
HELP, one TYPE; the first worker's wins), so Prometheus sees one series per worker and
``sum without(worker) (...)`` gives the broker's totals; a restarted worker's counters start
again from 0 in its own series, which ``rate()`` and ``increase()`` treat as a counter reset.

The parser hands counters back without their ``_total`` (OpenMetrics names), and histograms as
one family whose samples are ``_bucket``, ``_count`` and ``_sum``; re-emitting those families
through ``generate_latest`` writes the same names again, so nothing here edits a name. A
worker's text that does not parse, or a family whose type differs from the one already taken
for that name (two versions of mqttd during an upgrade), is left out and reported, never
guessed at. ``supervisor_families`` adds the supervisor's own figures: workers configured and
running, which workers this scrape covers, restarts, failed fetches, the private Redis.

No trio, no sockets, no clock: text and dataclasses in, metric families and bytes out.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "SUPERVISOR_NAMES",
    "WORKER_LABEL",
    "Merged",
    "SupervisorFigures",
    "WorkerFigures",
    "exposition",
    "merge_worker_metrics",
    "supervisor_families",
]

#: The label that says which worker a sample comes from.
WORKER_LABEL = "worker"
#: Where a worker's own sample already has a ``worker`` label, that value moves here (as
#: Prometheus renames a clashing target label to ``exported_<name>``).
EXPORTED_WORKER_LABEL = "exported_worker"


@dataclass(frozen=True, slots=True)
class Merged:
    """What ``merge_worker_metrics`` made of the workers' texts.

    Attributes:
        families: the merged metric families, in the order they first appeared.
        unparsable: the workers whose text did not parse (left out entirely).
        conflicts: ``(worker, family name)`` of families left out because their type differed
            from the type that name already had.
    """

    families: list[Metric]
    unparsable: tuple[str, ...] = ()
    conflicts: tuple[tuple[str, str], ...] = ()


def merge_worker_metrics(texts: Mapping[str, str], *, reserved: Iterable[str] = ()) -> Merged:
    """Parse each worker's exposition text and merge them, each sample labelled with its worker.

    Args:
        texts: worker label value (``"1"``, ``"2"``...) -> that worker's ``/metrics`` text, in
            the order the samples should appear.
        reserved: family names that belong to someone else (the supervisor's own): a worker's
            family of such a name is left out as a conflict.

    Returns:
        The merged families, and which workers or families were left out.
    """
    merged: dict[str, Metric] = {}
    taken = set(reserved)
    unparsable: list[str] = []
    conflicts: list[tuple[str, str]] = []
    for worker, text in texts.items():
        try:
            # The parser is lazy and lax: read it all before using any of it, so a worker
            # whose text breaks halfway contributes nothing rather than half.
            families = list(text_string_to_metric_families(text))
        except Exception:  # ValueError mostly; a lax parser's other failures count the same
            unparsable.append(worker)
            continue
        for family in families:
            target = merged.get(family.name)
            if target is None:
                if family.name in taken:
                    conflicts.append((worker, family.name))
                    continue
                target = Metric(family.name, family.documentation, family.type, family.unit)
                merged[family.name] = target
                taken.add(family.name)
            elif target.type != family.type:
                conflicts.append((worker, family.name))
                continue
            for sample in family.samples:
                labels = dict(sample.labels)
                if WORKER_LABEL in labels:
                    labels[EXPORTED_WORKER_LABEL] = labels.pop(WORKER_LABEL)
                labels[WORKER_LABEL] = worker
                target.samples.append(sample._replace(labels=labels))
    return Merged(list(merged.values()), tuple(unparsable), tuple(conflicts))


@dataclass(frozen=True, slots=True)
class WorkerFigures:
    """One worker as the supervisor sees it at a scrape.

    Attributes:
        worker: its label value (its number).
        running: its process is alive.
        scraped: its metrics are in this scrape.
        restarts: how many times it was started again after it exited.
        scrape_failures: fetches of its metrics that failed (no answer in time, an error
            status, or a text that did not parse) since the supervisor started.
    """

    worker: str
    running: bool
    scraped: bool
    restarts: int
    scrape_failures: int


@dataclass(frozen=True, slots=True)
class SupervisorFigures:
    """The supervisor's own figures at a scrape.

    Attributes:
        workers: each configured worker.
        uptime_s: seconds since the supervisor started.
        redis_up: whether the private redis-server accepts connections; None when the
            workers use the operator's Redis.
        redis_restarts: how many times the private redis-server was started again.
    """

    workers: tuple[WorkerFigures, ...]
    uptime_s: float
    redis_up: bool | None = None
    redis_restarts: int = 0


def supervisor_families(figures: SupervisorFigures) -> Iterator[Metric]:
    """The supervisor's metric families (``mqttd_workers_*``, ``mqttd_worker_*``,
    ``mqttd_supervisor_*``, ``mqttd_private_redis_*``)."""
    yield GaugeMetricFamily(
        "mqttd_workers_configured", "worker processes configured (--workers)", len(figures.workers)
    )
    yield GaugeMetricFamily(
        "mqttd_workers_running",
        "worker processes alive",
        sum(1 for w in figures.workers if w.running),
    )
    up = GaugeMetricFamily(
        "mqttd_worker_up",
        "1 when this scrape includes the worker's metrics, 0 when it does not (not running, "
        "or it did not answer in time)",
        labels=[WORKER_LABEL],
    )
    restarts = CounterMetricFamily(
        "mqttd_worker_restarts",
        "times the worker was started again after it exited",
        labels=[WORKER_LABEL],
    )
    failures = CounterMetricFamily(
        "mqttd_worker_scrape_failures",
        "fetches of the worker's metrics by the supervisor that failed (no answer in time, "
        "an error status, or unparsable text); such a scrape leaves the worker out",
        labels=[WORKER_LABEL],
    )
    for w in figures.workers:
        up.add_metric([w.worker], int(w.scraped))
        restarts.add_metric([w.worker], w.restarts)
        failures.add_metric([w.worker], w.scrape_failures)
    yield up
    yield restarts
    yield failures
    yield GaugeMetricFamily(
        "mqttd_supervisor_uptime_seconds", "seconds since the supervisor started", figures.uptime_s
    )
    if figures.redis_up is not None:
        yield GaugeMetricFamily(
            "mqttd_private_redis_up",
            "1 while the private redis-server the supervisor runs accepts connections",
            int(figures.redis_up),
        )
        yield CounterMetricFamily(
            "mqttd_private_redis_restarts",
            "times the private redis-server was started again after it exited",
            figures.redis_restarts,
        )


#: The names ``supervisor_families`` uses (a worker's family of such a name is left out).
SUPERVISOR_NAMES: frozenset[str] = frozenset(
    family.name
    for family in supervisor_families(SupervisorFigures(workers=(), uptime_s=0.0, redis_up=False))
)


class _Families:
    """A ``prometheus_client`` collector that yields families made beforehand."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        """The families, as given."""
        return iter(self.families)


def exposition(*groups: Iterable[Metric]) -> bytes:
    """The Prometheus text format of ``groups``' families, written by ``generate_latest``.

    Returns:
        The bytes a ``/metrics`` reply carries (``mqttd.metrics.CONTENT_TYPE``).
    """
    registry = CollectorRegistry(auto_describe=False)
    for group in groups:
        registry.register(_Families(group))
    return generate_latest(registry)
