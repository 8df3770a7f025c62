"""A bridge's topic mapping (``mqttd.bridge.topics``) and reconnection delays (``backoff``)."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from mqttd.bridge.backoff import Backoff
from mqttd.bridge.topics import TopicMap
from mqttd.config import BridgeTopicConfig as T


def test_prefixes_swap_both_ways() -> None:
    """Mosquitto's `topic a/# both 1 l/ r/`: l/a/x goes out as r/a/x, r/a/y comes in as l/a/y."""
    topics = TopicMap([T("a/#", "both", 1, "l/", "r/")])
    assert topics.out_subscriptions == {"l/a/#": 1}
    assert topics.in_subscriptions == [("r/a/#", 1)]
    assert topics.to_remote("l/a/x") == "r/a/x"
    assert topics.to_local("r/a/y/z") == "l/a/y/z"
    assert topics.to_local("r/b") is None  # not asked for: not published here


def test_without_prefixes_names_are_kept() -> None:
    """No prefixes: every topic keeps its name, with no lookup on the way out."""
    topics = TopicMap([T("#", "both", 2)])
    assert topics.identity_out
    assert topics.to_remote("x/y") == "x/y"
    assert topics.to_local("x/y") == "x/y"
    assert topics.out_subscriptions == {"#": 2}


def test_direction_decides_what_is_subscribed_where() -> None:
    """`out` subscribes locally only, `in` on the remote only."""
    topics = TopicMap([T("o/#", "out", 0), T("i/#", "in", 1)])
    assert topics.out_subscriptions == {"o/#": 0}
    assert topics.in_subscriptions == [("i/#", 1)]
    assert topics.to_local("o/x") is None


def test_exact_mapping_without_pattern() -> None:
    """Mosquitto's `topic "" out 0 local/name remote/name` maps one name onto another."""
    topics = TopicMap([T("", "both", 0, "here/name", "there/other")])
    assert topics.out_subscriptions == {"here/name": 0}
    assert topics.to_remote("here/name") == "there/other"
    assert topics.to_local("there/other") == "here/name"


def test_first_matching_table_renames() -> None:
    """Overlapping tables: the first one in the file decides the name, as in Mosquitto."""
    topics = TopicMap([T("a/+", "out", 0, "x/", "first/"), T("a/#", "out", 1, "x/", "second/")])
    assert topics.to_remote("x/a/b") == "first/a/b"
    assert topics.to_remote("x/a/b/c") == "second/a/b/c"
    assert topics.out_subscriptions == {"x/a/+": 0, "x/a/#": 1}


def test_parent_level_of_a_prefix_has_no_remote_name() -> None:
    """`l/#` also matches `l` itself [MQTT-4.7.1-2], which the prefix `l/` cannot rename."""
    topics = TopicMap([T("#", "out", 0, "l/", "r/")])
    assert topics.to_remote("l") is None
    assert topics.to_remote("l/x") == "r/x"


def test_in_subscriptions_are_one_per_filter_at_the_highest_qos() -> None:
    """Two tables with the same remote filter make one SUBSCRIBE entry, at the higher QoS."""
    topics = TopicMap([T("a/#", "in", 0), T("b", "in", 1), T("a/#", "both", 2)])
    assert topics.in_subscriptions == [("a/#", 2), ("b", 1)]


def test_dollar_topics_need_a_dollar_filter() -> None:
    """`#` does not carry $SYS topics [MQTT-4.7.2-1]; a `$SYS/#` table does."""
    assert TopicMap([T("#", "in", 0)]).to_local("$SYS/x") is None
    assert TopicMap([T("$SYS/#", "in", 0, "remote/")]).to_local("$SYS/x") == "remote/$SYS/x"


def test_pure_modules_do_not_import_trio() -> None:
    """The bridge's sans-IO modules import without trio (STYLE.md section 1)."""
    code = (
        "import sys, mqttd.bridge.topics, mqttd.bridge.session, mqttd.bridge.protocol, "
        "mqttd.bridge.backoff; print('trio' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "False"


# -- backoff ----------------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    """Each failure doubles the delay (random within its upper half) until the cap."""
    backoff = Backoff(1.0, 30.0, random.Random(7))
    delays = [backoff.next_delay() for _ in range(10)]
    ceilings = [1, 2, 4, 8, 16, 30, 30, 30, 30, 30]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert len(set(delays)) == len(delays)  # jittered: no two the same


def test_backoff_reset_starts_over() -> None:
    """A link that came up makes the next failure wait the base delay again."""
    backoff = Backoff(0.5, 8.0, random.Random(1))
    for _ in range(6):
        backoff.next_delay()
    backoff.reset()
    assert 0.25 <= backoff.next_delay() <= 0.5


@pytest.mark.parametrize("failures", [100, 10_000])
def test_backoff_never_overflows(failures: int) -> None:
    """However many failures, the delay stays within [cap/2, cap]."""
    backoff = Backoff(2.0, 60.0)
    backoff.failures = failures
    assert 30.0 <= backoff.next_delay() <= 60.0
