"""The supervisor's merge of its workers' metrics (``mqttd.worker_metrics``), without sockets:
exposition text in, merged families and text out, read back with prometheus_client's parser."""

from __future__ import annotations

import math
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.process_collector import ProcessCollector

from mqttd.worker_metrics import (
    SUPERVISOR_NAMES,
    SupervisorFigures,
    WorkerFigures,
    exposition,
    merge_worker_metrics,
    supervisor_families,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class _Broker:
    """A collector shaped like mqttd's own: counters and a histogram built as families."""

    def __init__(self, connects: int, commits: list[int], commit_sum: float) -> None:
        self.connects = connects
        self.commits = commits
        self.commit_sum = commit_sum

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily("mqttd_connects", "CONNECTs answered", labels=["result"])
        family.add_metric(["accepted"], self.connects)
        yield family
        buckets, total = [], 0
        for bound, count in zip(("0.001", "0.01", "+Inf"), self.commits, strict=True):
            total += count
            buckets.append((bound, total))
        yield HistogramMetricFamily(
            "mqttd_store_commit_seconds",
            "how long one store transaction took",
            buckets=buckets,
            sum_value=self.commit_sum,
        )


def worker_text(connects: int, commits: list[int], commit_sum: float, received: int) -> str:
    """One worker's /metrics text, written by prometheus_client as a worker writes it."""
    registry = CollectorRegistry()
    registry.register(_Broker(connects, commits, commit_sum))
    packets = Counter("mqttd_packets_received", "packets", ["type"], registry=registry)
    packets.labels("publish").inc(received)
    Gauge("mqttd_subscriptions", "subscriptions", registry=registry).set(connects)
    Histogram("mqttd_library_seconds", "a library histogram", registry=registry).observe(0.2)
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    return generate_latest(registry).decode()


def parse(text: str) -> Samples:
    """Every sample of ``text``, keyed by name and sorted labels."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, key  # no series twice
            samples[key] = sample.value
    return samples


def series(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (KeyError if absent)."""
    return samples[(name, tuple(sorted(labels.items())))]


TEXTS = {
    "1": worker_text(connects=3, commits=[2, 1, 0], commit_sum=0.004, received=10),
    "2": worker_text(connects=5, commits=[0, 4, 1], commit_sum=0.5, received=7),
}


def test_every_sample_gets_its_worker_label_and_the_sum_is_the_total() -> None:
    """Each worker's samples come back with worker="<k>"; summing over the label gives what
    the workers counted together."""
    merged = merge_worker_metrics(TEXTS)
    assert merged.unparsable == ()
    assert merged.conflicts == ()
    samples = parse(exposition(merged.families).decode())
    for worker, connects in (("1", 3), ("2", 5)):
        assert series(samples, "mqttd_connects_total", result="accepted", worker=worker) == connects
        assert series(samples, "mqttd_subscriptions", worker=worker) == connects
    total = sum(
        value
        for (name, labels), value in samples.items()
        if name == "mqttd_packets_received_total" and ("type", "publish") in labels
    )
    assert total == 17
    assert all(("worker", "1") in labels or ("worker", "2") in labels for _, labels in samples)


def test_counter_and_histogram_names_survive_the_round_trip() -> None:
    """Counters keep exactly one _total, histograms their _bucket/_count/_sum with le, and
    each family has one HELP and one TYPE line, whichever worker it came from."""
    text = exposition(merge_worker_metrics(TEXTS).families).decode()
    lines = text.splitlines()
    assert "_total_total" not in text
    for name, kind in (
        ("mqttd_connects_total", "counter"),
        ("mqttd_packets_received_total", "counter"),
        ("process_cpu_seconds_total", "counter"),
        ("mqttd_store_commit_seconds", "histogram"),
        ("mqttd_library_seconds", "histogram"),
        ("mqttd_subscriptions", "gauge"),
    ):
        assert lines.count(f"# TYPE {name} {kind}") == 1, name
        assert sum(1 for line in lines if line.startswith(f"# HELP {name} ")) == 1, name
    samples = parse(text)
    for worker, buckets, count, total in (("1", (2, 3, 3), 3, 0.004), ("2", (0, 4, 5), 5, 0.5)):
        for le, expected in zip(("0.001", "0.01", "+Inf"), buckets, strict=True):
            assert (
                series(samples, "mqttd_store_commit_seconds_bucket", le=le, worker=worker)
                == expected
            )
        assert series(samples, "mqttd_store_commit_seconds_count", worker=worker) == count
        assert math.isclose(series(samples, "mqttd_store_commit_seconds_sum", worker=worker), total)
    # The library's own histograms and counters carry their _created series through too.
    assert series(samples, "mqttd_library_seconds_count", worker="2") == 1
    assert ("mqttd_library_seconds_created", (("worker", "1"),)) in samples
    # What comes out parses to the same families the workers had, worker label aside.
    one = {f.name: f.type for f in text_string_to_metric_families(TEXTS["1"])}
    merged = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert merged == one


def test_one_worker_merged_is_its_own_samples_relabelled() -> None:
    """One worker merged alone is its own samples, each with worker="<k>" added and nothing
    else changed."""
    merged = exposition(merge_worker_metrics({"7": TEXTS["1"]}).families).decode()
    original = parse(TEXTS["1"])
    relabelled = parse(merged)
    assert relabelled == {
        (name, tuple(sorted((*labels, ("worker", "7"))))): value
        for (name, labels), value in original.items()
    }


def test_a_worker_whose_text_does_not_parse_is_left_out() -> None:
    """Unparsable text contributes nothing (not even what parsed before the bad line)."""
    broken = TEXTS["2"] + "mqttd_oops{ 1\n"
    merged = merge_worker_metrics({"1": TEXTS["1"], "2": broken})
    assert merged.unparsable == ("2",)
    samples = parse(exposition(merged.families).decode())
    assert {dict(labels)["worker"] for _, labels in samples} == {"1"}


def test_a_family_whose_type_differs_is_left_out_as_a_conflict() -> None:
    """A family named as another worker's but of another type is reported, not merged."""
    odd = "# HELP mqttd_subscriptions x\n# TYPE mqttd_subscriptions counter\n"
    odd += "mqttd_subscriptions_total 4\n# TYPE mqttd_extra gauge\nmqttd_extra 1\n"
    merged = merge_worker_metrics({"1": TEXTS["1"], "2": odd})
    assert merged.conflicts == (("2", "mqttd_subscriptions"),)
    samples = parse(exposition(merged.families).decode())
    assert series(samples, "mqttd_subscriptions", worker="1") == 3
    assert ("mqttd_subscriptions", (("worker", "2"),)) not in samples
    assert series(samples, "mqttd_extra", worker="2") == 1


def test_reserved_names_and_an_existing_worker_label() -> None:
    """A worker's family with a supervisor's name is a conflict; a worker label a worker
    already had moves to exported_worker."""
    text = (
        "# TYPE mqttd_workers_running gauge\nmqttd_workers_running 9\n"
        '# TYPE mqttd_thing gauge\nmqttd_thing{worker="x"} 2\n'
    )
    merged = merge_worker_metrics({"1": text}, reserved=SUPERVISOR_NAMES)
    assert merged.conflicts == (("1", "mqttd_workers_running"),)
    samples = parse(exposition(merged.families).decode())
    assert series(samples, "mqttd_thing", worker="1", exported_worker="x") == 2


def test_supervisor_families() -> None:
    """Workers configured and running, each worker's up/restarts/failures, the private Redis
    (only when there is one); together with the workers' families in one exposition."""
    figures = SupervisorFigures(
        workers=(
            WorkerFigures("1", running=True, scraped=True, restarts=0, scrape_failures=0),
            WorkerFigures("2", running=True, scraped=False, restarts=3, scrape_failures=2),
            WorkerFigures("3", running=False, scraped=False, restarts=1, scrape_failures=0),
        ),
        uptime_s=12.5,
        redis_up=True,
        redis_restarts=1,
    )
    merged = merge_worker_metrics({"1": TEXTS["1"]}, reserved=SUPERVISOR_NAMES)
    samples = parse(exposition(supervisor_families(figures), merged.families).decode())
    assert series(samples, "mqttd_workers_configured") == 3
    assert series(samples, "mqttd_workers_running") == 2
    assert [series(samples, "mqttd_worker_up", worker=w) for w in "123"] == [1, 0, 0]
    assert series(samples, "mqttd_worker_restarts_total", worker="2") == 3
    assert series(samples, "mqttd_worker_scrape_failures_total", worker="2") == 2
    assert series(samples, "mqttd_supervisor_uptime_seconds") == 12.5
    assert series(samples, "mqttd_private_redis_up") == 1
    assert series(samples, "mqttd_private_redis_restarts_total") == 1
    assert series(samples, "mqttd_connects_total", result="accepted", worker="1") == 3
    names = {f.name for f in supervisor_families(figures)}
    assert names == SUPERVISOR_NAMES
    without_redis = SupervisorFigures(workers=figures.workers, uptime_s=1.0)
    assert not any("redis" in f.name for f in supervisor_families(without_redis))
