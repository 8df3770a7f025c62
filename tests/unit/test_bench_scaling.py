"""scripts/bench.py's scaling mode (``--workers``, ``--cluster``, ``--scaling``, ``--model``):
the /proc and RESP parsing it measures with, where it finds each connection, the arithmetic of
its medians, ratios and model, and one tiny run against ``mqttd --workers 2`` and a single
cluster node. No timing is asserted: only that every figure is counted where it belongs.
"""

from __future__ import annotations

import math
import shutil
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scripts.mqttbench import brokers, flow, machine, meter, model, redisinfo, scaling
from scripts.mqttbench.load import Target, connect_many
from scripts.mqttbench.scenarios import Settings

# -- /proc -------------------------------------------------------------------------------------


def test_tree_pids_lists_root_then_descendants_by_level() -> None:
    """A supervisor's tree: itself, its workers and Redis, then their children; nothing else."""
    parents = {10: 1, 11: 10, 12: 10, 13: 10, 20: 11, 30: 1, 31: 30}
    assert machine.tree_pids(10, parents) == [10, 11, 12, 13, 20]
    assert machine.tree_pids(31, parents) == [31]


def test_cpu_delta_prefers_schedstat_unless_a_thread_took_its_time_away() -> None:
    """schedstat's ns are used; when a thread ended meanwhile (its CPU gone from the sum, so
    the process-wide ticks say more), the ticks are; a negative sum never comes out."""
    tick = 10_000_000
    assert machine.cpu_delta_ns(123_456_789, 120_000_000, tick) == 123_456_789
    assert machine.cpu_delta_ns(5_000_000, 400_000_000, tick) == 400_000_000
    assert machine.cpu_delta_ns(-3_000_000, 0, tick) == 0
    assert machine.cpu_delta_ns(None, 20_000_000, tick) == 20_000_000


PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0B32 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1
   1: 0100007F:0B32 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 1002 1
   2: 0100007F:9C40 0100007F:0B32 01 00000000:00000000 00:00000000 00000000     0        0 1003 1
   3: 0100007F:0B32 0100007F:9C41 06 00000000:00000000 00:00000000 00000000     0        0 0 3
   4: 0100007F:0B33 0100007F:9C42 01 00000000:00000000 00:00000000 00000000     0        0 1004 1
"""


def test_proc_net_tcp_gives_the_server_side_of_established_connections() -> None:
    """Only ESTABLISHED sockets whose local port is the broker's: listening, TIME_WAIT, the
    client's own side and other ports are left out."""
    assert machine.parse_proc_net_tcp(PROC_NET_TCP, 0x0B32) == {0x9C40: 1002}


# -- RESP ---------------------------------------------------------------------------------------


def test_resp_command_encoding() -> None:
    """A command is an array of bulk strings (lengths in bytes)."""
    assert redisinfo.encode_command("HLEN", "k€") == b"*2\r\n$4\r\nHLEN\r\n$4\r\nk\xe2\x82\xac\r\n"


def test_resp_replies_parse_whole_or_wait() -> None:
    """Simple, integer, bulk, null and nested array replies parse; a partial one waits."""
    assert redisinfo.parse_reply(b"+PONG\r\n") == ("PONG", 7)
    assert redisinfo.parse_reply(b":42\r\n") == (42, 5)
    assert redisinfo.parse_reply(b"$-1\r\n") == (None, 5)
    assert redisinfo.parse_reply(b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n") == ([b"a", [1]], 19)
    assert redisinfo.parse_reply(b"$5\r\nabc") is None
    assert redisinfo.parse_reply(b"*2\r\n:1\r\n") is None
    with pytest.raises(redisinfo.RespError, match="WRONGTYPE"):
        redisinfo.parse_reply(b"-WRONGTYPE bad\r\n")


@given(st.binary(max_size=200), st.integers(min_value=1, max_value=199))
def test_resp_bulk_split_anywhere(data: bytes, cut: int) -> None:
    """A bulk reply cut short is incomplete; whole, it gives back exactly its bytes."""
    raw = b"$%d\r\n%s\r\n" % (len(data), data)
    assert redisinfo.parse_reply(raw) == (data, len(raw))
    if cut < len(raw):
        assert redisinfo.parse_reply(raw[:cut]) is None


def test_commandstats_parse_and_delta() -> None:
    """cmdstat lines become calls/usec per command; the delta keeps what ran in between."""
    before = redisinfo.parse_commandstats(
        "# Commandstats\r\ncmdstat_xadd:calls=10,usec=50,usec_per_call=5.00,rejected_calls=0\r\n"
        "cmdstat_ping:calls=3,usec=1,usec_per_call=0.33\r\n"
    )
    after = redisinfo.parse_commandstats(
        "cmdstat_xadd:calls=25,usec=110,usec_per_call=4.40\r\n"
        "cmdstat_ping:calls=3,usec=1\r\ncmdstat_config|get:calls=1,usec=7\r\n"
    )
    assert before["xadd"] == redisinfo.CommandStat(10, 50)
    assert redisinfo.commandstats_delta(before, after) == {
        "xadd": redisinfo.CommandStat(15, 60),
        "config|get": redisinfo.CommandStat(1, 7),
    }


# -- placement ----------------------------------------------------------------------------------


def test_roles_of_a_brokers_processes() -> None:
    """redis-server is Redis; the root of several workers is their supervisor; others serve."""
    assert meter.role_of(5, "redis-server", 1, 2) == "redis"
    assert meter.role_of(1, "python", 1, 2) == "supervisor"
    assert meter.role_of(1, "python", 1, 0) == "broker"
    assert meter.role_of(2, "python", 1, 2) == "broker"


def test_crossing_when_everyone_receives_everything() -> None:
    """A publisher on worker 1, subscribers 3 on worker 1 and 1 on worker 2: a quarter of its
    deliveries cross, and each of its messages is forwarded once (worker 2 has a subscriber)."""
    assert meter.crossing(1, [1, 1, 1, 2]) == (0.25, 1.0)
    assert meter.crossing(1, [1, 1]) == (0.0, 0.0)
    assert meter.crossing(3, [1, 2]) == (1.0, 2.0)
    assert meter.crossing(1, []) == (0.0, 0.0)


def test_place_counts_per_worker_and_unknown() -> None:
    """Connections map to workers by client port; unmatched ports are counted as unknown."""
    owners = {40000: 7, 40001: 8, 40002: 8}
    p = meter.place(owners, {0: 40000}, {0: 40001, 1: 40002, 2: 49999})
    assert p.per_worker == {7: 1, 8: 2}
    assert p.unknown == 1
    assert p.crossed == 1.0
    assert p.forwards_per_message == 1.0


def test_pairs_cross_whole_weighted_by_messages_sent() -> None:
    """A pair crosses whole or not at all; the share is weighted by what each pair sent."""
    owners = {1: 7, 2: 7, 3: 8, 4: 7}
    p = meter.place(owners, {0: 1, 1: 2}, {0: 3, 1: 4}, pairs=True)
    assert p.per_publisher == {0: (1.0, 1.0), 1: (0.0, 0.0)}
    assert p.crossed == 0.5
    p.weigh([30, 10])
    assert p.crossed == 0.75
    assert p.forwards_per_message == 0.75
    p.weigh([0, 0])  # nothing sent: the shares stay as they were
    assert p.crossed == 0.75


# -- medians, ratios, rounds ----------------------------------------------------------------------


def _sample(scenario: str, broker: str, rnd: int, rate: float | None) -> scaling.Sample:
    return scaling.Sample(scenario, broker, rnd, metrics={"rate": rate})


def test_median_skips_missing_and_nan() -> None:
    """Missing and NaN figures do not count; nothing left is None."""
    assert scaling.median([3.0, None, 1.0, math.nan, 2.0]) == 2.0
    assert scaling.median([None]) is None


def test_ratio_is_the_median_of_per_round_ratios() -> None:
    """Each round's pair gives one ratio; the median of those, not the ratio of medians."""
    samples = [
        _sample("many", "a", 1, 10.0),
        _sample("many", "b", 1, 5.0),  # 2.0
        _sample("many", "a", 2, 30.0),
        _sample("many", "b", 2, 10.0),  # 3.0
        _sample("many", "a", 3, 100.0),
        _sample("many", "b", 3, 20.0),  # 5.0
        _sample("many", "a", 4, 1.0),  # no partner in round 4
    ]
    ratio, ratios = scaling.per_round_ratio(samples, "many", "rate", "a", "b")
    assert ratios == [2.0, 3.0, 5.0]
    assert ratio == 3.0


def test_rounds_rotate_the_broker_order() -> None:
    """Every broker takes each position once over as many rounds as brokers."""
    names = ["a", "b", "c"]
    orders = [scaling.rotated(names, k) for k in range(3)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
    assert scaling.rotated([], 2) == []


def test_main_table_shows_medians_ratios_and_losses() -> None:
    """The table has one column per broker and one per ratio, and flags a loss."""
    samples = [_sample("many", b, r, v) for r in (1, 2, 3) for b, v in (("mqttd", 100.0),)]
    samples += [_sample("many", "mqttd-cluster1", r, 80.0) for r in (1, 2, 3)]
    samples[0].lost = 3
    text = scaling.render_main(samples, ["mqttd", "mqttd-cluster1"])
    head, _, row = text.splitlines()
    assert "cluster1 / single" in head
    assert "w2 / w1" not in head
    assert "| 100 | 80 | 0.80 |" in row
    assert "**3/0 LOST**" in row


def test_saved_run_reads_back() -> None:
    """A run saved as JSON reads back with its samples, brokers and probes; a bare list of
    samples (the first runs' format) too."""
    import json

    sample = scaling.Sample("pairs", "mqttd-w2", 2, metrics={"rate": 5.0}, per_worker=[3, 4])
    probe = scaling.Sample("quiet", "mqttd-w2", 2, costs={"redis_us_per_s": 9.0})
    run = scaling.Run(["mqttd-w2"], ["pairs"], ["quiet"], 2, 1.5, 60.0, [sample, probe])
    back = scaling.Run.from_json(json.loads(json.dumps(run.to_json())))
    assert back == run
    bare = scaling.Run.from_json(json.loads(json.dumps([vars(sample), vars(probe)])))
    assert (bare.brokers, bare.flows, bare.probes, bare.rounds) == (
        ["mqttd-w2"],
        ["pairs"],
        ["quiet"],
        2,
    )


def test_run_rounds_keeps_failures_and_goes_on() -> None:
    """A broker that fails to start is a failed sample; the others are still measured."""

    def broken() -> brokers.Broker:
        raise RuntimeError("no such broker")

    st_ = Settings(1.0, True, 10, 1, 1.0, 1)
    lines: list[str] = []
    samples = scaling.run_rounds(["x"], {"x": broken}, ["idle"], [], 2, st_, lines.append)
    assert [s.error for s in samples] == ["no such broker"] * 2
    assert all("FAILED" in line for line in lines)


# -- the model ----------------------------------------------------------------------------------


def test_forwards_per_message() -> None:
    """One worker forwards nothing; a pair crosses with probability (N-1)/N; many subscribers
    reach every other worker."""
    assert model.forwards_per_message(1, 100) == 0.0
    assert model.forwards_per_message(2, 1) == pytest.approx(0.5)
    assert model.forwards_per_message(8, 1) == pytest.approx(7 / 8)
    assert model.forwards_per_message(4, 1000) == pytest.approx(3.0)


def test_forward_and_split_delivery_costs() -> None:
    """f = (CPU per message on two workers - on one node) / forwards per message; the
    per-delivery cost on two workers is their figure less its share of the forwarding."""
    assert model.forward_cost(30.0, 6.0, 0.5) == pytest.approx(48.0)
    with pytest.raises(ValueError, match="no forwards"):
        model.forward_cost(3.0, 2.0, 0.0)
    assert model.split_delivery_cost(2.5, 100, 1.0, 50.0) == pytest.approx(2.0)


def test_message_limits_switch_from_workers_to_redis() -> None:
    """Pairs at 10 µs per delivery and 10 µs per forward on the workers, 5 µs per forward in
    Redis: 2 workers do 2e6/(10+0.5*10) = 133 k/s, Redis allows 1e6/(0.5*5) = 400 k/s; at 16
    workers the workers would do 16e6/(10+0.9375*10) = 826 k/s, Redis only 213 k/s."""
    c = model.Costs(forward_us=10.0, redis_forward_us=5.0)
    t = model.Topology("pairs", 1, delivery_us=8.0, delivery_split_us=10.0)
    w2, r2 = model.message_limits(c, t, 2)
    assert (w2, r2) == (pytest.approx(2e6 / 15), pytest.approx(4e5))
    w16, r16 = model.message_limits(c, t, 16)
    assert w16 == pytest.approx(16e6 / (10 + 15 / 16 * 10))
    assert r16 == pytest.approx(1e6 / (15 / 16 * 5))
    assert model.message_limits(c, t, 1) == (pytest.approx(1e6 / 8), None)  # one node's c
    c.topologies.append(t)
    assert "(Redis)" in model.render_model(c, ns=(16,))
    assert "(workers)" in model.render_model(c, ns=(1,))


def test_connect_limits_and_lines() -> None:
    """Workers scale with N, Redis does not; route costs follow the line through N=1, 2."""
    c = model.Costs(connect_us=500.0, redis_connect_us=40.0, redis_disconnect_us=10.0)
    assert model.connect_limits(c, 4) == (8000.0, 25000.0, 20000.0)
    assert model.on_line(100.0, 150.0, 8) == 450.0
    assert model.on_line(None, 150.0, 8) is None


def test_costs_from_samples() -> None:
    """The model's inputs are the medians of the right brokers' per-event costs: forwarding
    from the pairs runs, per-delivery costs per shape with the forwarding taken out."""

    def s(scenario: str, broker: str, **costs: float) -> scaling.Sample:
        return scaling.Sample(scenario, broker, 1, costs=dict(costs))

    samples = [
        s("pairs", "mqttd-cluster1", broker_us_per_delivery=10.0),
        s(
            "pairs",
            "mqttd-w2",
            broker_us_per_delivery=14.0,
            redis_us_per_forward=6.0,
            forwards_per_published=0.5,
        ),
        s("many", "mqttd-cluster1", broker_us_per_delivery=2.0),
        s("many", "mqttd-w2", broker_us_per_delivery=2.5, forwards_per_published=1.0),
        s("idle", "mqttd-w2", broker_us_per_connect=400.0),
        s("churn", "mqttd-w2", redis_us_connect=40.0, redis_us_disconnect=15.0),
        s("routes", "mqttd-cluster1", redis_us_add=100.0),
        s("routes", "mqttd-w2", redis_us_add=160.0),
        s("quiet", "mqttd-cluster1", redis_us_per_s=2000.0),
    ]
    c = scaling.costs_from(samples)
    assert (c.forward_us, c.redis_forward_us) == (8.0, 6.0)
    pairs, many = c.topologies
    assert (pairs.name, pairs.delivery_us, pairs.delivery_split_us) == ("pairs", 10.0, 10.0)
    assert (many.subscribers, many.delivery_us) == (100, 2.0)
    assert many.delivery_split_us == pytest.approx(2.5 - 8.0 / 100)
    assert (c.connect_us, c.redis_connect_us, c.redis_disconnect_us) == (400.0, 40.0, 15.0)
    assert (c.route_n1_us, c.route_n2_us) == (100.0, 160.0)
    assert (c.idle_n1_us_per_s, c.idle_n2_us_per_s) == (2000.0, None)


# -- configuration ------------------------------------------------------------------------------


def test_mqttd_forms_and_cluster_config(tmp_path: Path) -> None:
    """Column names per form; a cluster node's config names the Redis and a node id."""
    assert brokers.mqttd_name() == "mqttd"
    assert brokers.mqttd_name(workers=2) == "mqttd-w2"
    assert brokers.mqttd_name(cluster=True) == "mqttd-cluster1"
    text = brokers.mqttd_toml(
        ["tcp"], None, tmp_path, durability="memory", redis_url="unix:///r.sock"
    )
    conf = tomllib.loads(text)
    assert conf["cluster"] == {"redis_url": "unix:///r.sock", "node_id": "bench-c1"}
    assert conf["store"] == {"durability": "memory"}
    assert "cluster" not in tomllib.loads(brokers.mqttd_toml(["tcp"], None, tmp_path))


def test_pairs_expect_one_delivery_per_message() -> None:
    """Pairs fan out to one subscriber; the other flows to every subscriber."""
    assert flow.fan_out(flow.FlowSpec("tcp", n_pub=100, n_sub=100, pairs=True)) == 1
    assert flow.fan_out(flow.FlowSpec("tcp", n_pub=100, n_sub=100)) == 100


def test_one_filter_per_client_must_match_the_ids() -> None:
    """Per-client filters come one per client id."""
    target = Target("x", "127.0.0.1", {"tcp": 1})
    with pytest.raises(ValueError, match="one topic filter per client id"):
        connect_many(target, "tcp", ["a", "b"], ["f"])


# -- a tiny run ---------------------------------------------------------------------------------

needs_redis = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)


@needs_redis
def test_two_workers_every_connection_found_and_counted(tmp_path: Path) -> None:
    """``--workers 2``: the meter sees supervisor, two workers and Redis; every connection of a
    pairs flow is found on one of the two workers, and what crossed went through Redis."""
    tmp_path.chmod(0o755)
    broker = brokers.start_mqttd_broker(tmp_path, None, workers=2, durability="memory")
    try:
        m = meter.BrokerMeter(broker.target)
        assert sorted(m.roles.values()) == ["broker", "broker", "redis", "supervisor"]
        spec = flow.FlowSpec(
            "tcp", n_pub=20, n_sub=20, shared_topic=False, pairs=True, duration_s=0.3, tag="t"
        )
        r = flow.run_flow(spec, broker.target)
    finally:
        broker.stop()
    assert r["lost"] == 0
    assert r["dup"] == 0
    assert r["bad"] == 0
    placement = r["placement"]
    assert placement.unknown == 0
    assert sum(placement.per_worker.values()) == 40
    usage = r["usage"]
    assert usage.cpu_by_role["broker"] > 0
    # Each message of a pair split over the workers goes into the other's inbox: one XADD for
    # it alone, or for it and the messages pipelined with it; up to a few per subscription
    # more are the route log of the subscriptions and the nodes saying they applied it, when
    # those land after the clock started.
    forwarded = placement.crossed * r["published"]
    assert forwarded > 0
    assert 1 <= usage.calls("xadd") <= forwarded + 3 * 20


@needs_redis
def test_cluster_node_probes_count_their_events(tmp_path: Path) -> None:
    """One cluster node over a Redis started here: routes and churn probes see every event in
    Redis's own counters, and the Redis is stopped with the broker."""
    tmp_path.chmod(0o755)
    st_ = Settings(1.0, True, 10, 1, 1.0, 1, quiet_s=0.2, route_changes=5, churn_conns=10)
    broker = brokers.start_mqttd_broker(tmp_path, None, cluster=True, durability="memory")
    redis = broker.redis
    assert redis is not None
    try:
        samples = []
        for scenario in ("routes", "churn", "quiet"):
            unit = scaling.scenario_units(scenario, "tcp", st_, "x")[0]
            raw = scaling.run_unit(unit, broker.target, st_, f"p-{scenario}")
            samples.append(scaling.sample_of(scenario, broker.name, 1, raw, st_))
    finally:
        broker.stop()
    assert redis.proc.poll() is not None
    routes, churn, quiet = samples
    assert routes.calls["sadd"] == 5  # one route script per new filter
    assert routes.costs["redis_us_add"] is not None
    assert churn.costs["redis_us_connect"] is not None
    assert churn.costs["broker_us_connect"] is not None
    assert quiet.costs["redis_us_per_s"] is not None
