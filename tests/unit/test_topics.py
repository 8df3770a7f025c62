"""Topic name/filter validation and the subscription tree (MQTT 3.1.1 section 4.7)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttd.errors import MalformedPacket
from mqttd.topics import MAX_TOPIC_BYTES, TopicTree, validate_topic_filter, validate_topic_name

# -- a naive reference matcher, written from the spec text, independent of the trie -------------


def reference_matches(topic_filter: str, topic: str) -> bool:
    """Section 4.7 matching, level by level, with no cleverness."""
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    if topic.startswith("$") and filter_levels[0] in ("+", "#"):
        return False  # [MQTT-4.7.2-1]
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True  # the parent level and any number of child levels
        if index >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(filter_levels) == len(topic_levels)


def reference_match(subscriptions: dict[tuple[str, str], int], topic: str) -> dict[str, int]:
    """Walk every (filter, client, qos): each matching client with its maximum QoS."""
    result: dict[str, int] = {}
    for (topic_filter, client_id), qos in subscriptions.items():
        if reference_matches(topic_filter, topic):
            result[client_id] = max(qos, result.get(client_id, -1))
    return result


LEVELS = ["", "$SYS", "$x", "a", "b"]
level = st.sampled_from(LEVELS)
# A lone empty level would be the empty string: not a valid topic name ([MQTT-4.7.3-1]).
topics = st.lists(level, min_size=1, max_size=4).map("/".join).filter(bool)


@st.composite
def filters(draw: st.DrawFn) -> str:
    """Valid filters over the small alphabet, with '+' levels and an optional final '#'."""
    levels = draw(st.lists(st.sampled_from([*LEVELS, "+"]), min_size=0, max_size=4))
    if levels in ([], [""]) or draw(st.booleans()):
        levels.append("#")  # '' alone is not a valid filter ([MQTT-4.7.3-1])
    return "/".join(levels)


clients = st.sampled_from(["c1", "c2", "c3"])
qoses = st.integers(min_value=0, max_value=2)
operations = st.lists(
    st.tuples(st.sampled_from(["sub", "unsub"]), filters(), clients, qoses), max_size=40
)


def tree_of(*subscriptions: tuple[str, str, int]) -> TopicTree:
    tree = TopicTree()
    for topic_filter, client_id, qos in subscriptions:
        tree.subscribe(topic_filter, client_id, qos)
    return tree


def matches(topic_filter: str, topic: str) -> bool:
    """Whether the tree matches ``topic`` against a lone subscription to ``topic_filter``."""
    return tree_of((topic_filter, "c", 1)).match(topic) == {"c": 1}


# -- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("topic", ["a", "/", "a/b", "/finance", "a//b", "$SYS/x", " ", "é/ü"])
def test_valid_topic_names_pass(topic: str) -> None:
    """Non-empty names without wildcards are valid, empty levels and '$' included."""
    validate_topic_name(topic)


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("", "empty_topic_name"),  # [MQTT-4.7.3-1]
        ("+", "wildcard_in_topic_name"),  # [MQTT-4.7.1-1]
        ("a/#", "wildcard_in_topic_name"),
        ("a/b+", "wildcard_in_topic_name"),
        ("sport/tennis#", "wildcard_in_topic_name"),
    ],
)
def test_invalid_topic_names_are_malformed(topic: str, reason: str) -> None:
    """[MQTT-4.7.3-1] empty names and [MQTT-4.7.1-1] wildcards in names are rejected."""
    with pytest.raises(MalformedPacket) as info:
        validate_topic_name(topic)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    "topic_filter",
    ["#", "+", "/", "sport/#", "sport/tennis/#", "+/+", "/+", "+/tennis/#", "sport/+/player1", "a"],
)
def test_valid_topic_filters_pass(topic_filter: str) -> None:
    """Wildcards occupying whole levels ('#' last) are valid filters."""
    validate_topic_filter(topic_filter)


@pytest.mark.parametrize(
    ("topic_filter", "reason"),
    [
        ("", "empty_topic_filter"),  # [MQTT-4.7.3-1]
        ("sport/tennis#", "misplaced_multi_level_wildcard"),  # [MQTT-4.7.1-2]
        ("sport/tennis/#/ranking", "misplaced_multi_level_wildcard"),
        ("#/a", "misplaced_multi_level_wildcard"),
        ("##", "misplaced_multi_level_wildcard"),
        ("sport+", "misplaced_single_level_wildcard"),  # [MQTT-4.7.1-3]
        ("a/+b/c", "misplaced_single_level_wildcard"),
        ("++", "misplaced_single_level_wildcard"),
    ],
)
def test_invalid_topic_filters_are_malformed(topic_filter: str, reason: str) -> None:
    """[MQTT-4.7.1-2] '#' alone and last, [MQTT-4.7.1-3] '+' alone in its level, non-empty."""
    with pytest.raises(MalformedPacket) as info:
        validate_topic_filter(topic_filter)
    assert info.value.reason == reason


def test_max_topic_bytes_is_the_length_prefix_limit() -> None:
    """[MQTT-4.7.3-3] a 2-byte length prefix bounds topics to 65535 UTF-8 bytes."""
    assert MAX_TOPIC_BYTES == 2**16 - 1


# -- spec examples (4.7.1.2, 4.7.1.3, 4.7.2) ----------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport/tennis/player1/score/wimbledon",
    ],
)
def test_multi_level_wildcard_matches_children(topic: str) -> None:
    """4.7.1.2: 'sport/tennis/player1/#' matches the player and every level below it."""
    assert matches("sport/tennis/player1/#", topic)


@pytest.mark.parametrize("topic", ["sport", "sport/", "sport/tennis", "sport/tennis/player1"])
def test_multi_level_wildcard_matches_parent_level(topic: str) -> None:
    """4.7.1.2: 'sport/#' also matches 'sport', since '#' includes the parent level."""
    assert matches("sport/#", topic)


def test_multi_level_wildcard_does_not_match_siblings() -> None:
    """'sport/#' matches neither 'sports' nor 'sportx/tennis' nor 'other'."""
    assert not matches("sport/#", "sports")
    assert not matches("sport/#", "sportx/tennis")
    assert not matches("sport/#", "other")


@pytest.mark.parametrize("topic", ["a", "a/b", "/", "/finance", "a//b"])
def test_hash_alone_matches_every_non_dollar_topic(topic: str) -> None:
    """4.7.1.2: '#' alone matches every topic name (not starting with '$')."""
    assert matches("#", topic)


def test_single_level_wildcard_matches_one_level() -> None:
    """4.7.1.3: 'sport/tennis/+' matches 'sport/tennis/player1' but not deeper or the parent."""
    assert matches("sport/tennis/+", "sport/tennis/player1")
    assert matches("sport/tennis/+", "sport/tennis/player2")
    assert not matches("sport/tennis/+", "sport/tennis/player1/ranking")
    assert not matches("sport/tennis/+", "sport/tennis")


def test_single_level_wildcard_matches_an_empty_level() -> None:
    """4.7.1.3: 'sport/+' matches 'sport/' (empty last level) but not 'sport'."""
    assert matches("sport/+", "sport/")
    assert not matches("sport/+", "sport")
    assert matches("a/+/c", "a//c")


def test_single_level_wildcard_combinations() -> None:
    """4.7.1.3: '+/+' and '/+' match '/finance'; '+' alone does not."""
    assert matches("+/+", "/finance")
    assert matches("/+", "/finance")
    assert not matches("+", "/finance")
    assert matches("+/tennis/#", "sport/tennis/player1")
    assert matches("sport/+/player1", "sport/tennis/player1")


def test_wildcards_do_not_match_dollar_topics() -> None:
    """[MQTT-4.7.2-1] '#' and '+/...' never match topic names starting with '$'."""
    assert not matches("#", "$SYS/broker/uptime")
    assert not matches("#", "$SYS")
    assert not matches("+/monitor/Clients", "$SYS/monitor/Clients")
    assert not matches("+", "$x")
    assert not matches("+/#", "$SYS/x")


def test_literal_dollar_filters_match_dollar_topics() -> None:
    """[MQTT-4.7.2-1] '$SYS/#' and '$SYS/monitor/+' do match '$SYS/...' topics."""
    assert matches("$SYS/#", "$SYS/x")
    assert matches("$SYS/#", "$SYS")
    assert matches("$SYS/monitor/+", "$SYS/monitor/Clients")
    assert matches("$SYS/x", "$SYS/x")


def test_dollar_inside_a_topic_is_an_ordinary_character() -> None:
    """Only a leading '$' is special: '+/#' matches 'a/$x'."""
    assert matches("+/#", "a/$x")
    assert matches("a/+", "a/$x")


def test_empty_levels_are_real_levels() -> None:
    """'a//b' has three levels: it matches 'a/+/b' but not 'a/b' or 'a/+'."""
    assert matches("a//b", "a//b")
    assert matches("a/+/b", "a//b")
    assert not matches("a/b", "a//b")
    assert not matches("a/+", "a//b")
    assert matches("/", "/")
    assert not matches("/", "a")


def test_matching_does_no_normalisation() -> None:
    """[MQTT-4.7.3-4] exact code points: no Unicode normalisation, no case folding."""
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert not matches(composed, decomposed)
    assert not matches(decomposed, composed)
    assert not matches("Sport", "sport")
    assert not matches("a/ b", "a/b")
    assert matches(composed, composed)


# -- tree behaviour -----------------------------------------------------------------------------


def test_overlapping_subscriptions_deliver_once_at_maximum_qos() -> None:
    """[MQTT-3.3.5-1] a client with several matching filters appears once, at the max QoS."""
    tree = tree_of(
        ("a/b", "c1", 0),
        ("a/+", "c1", 2),
        ("#", "c1", 1),
        ("a/#", "c2", 1),
        ("+/b", "c2", 0),
    )
    assert tree.match("a/b") == {"c1": 2, "c2": 1}
    assert tree.match("a/c") == {"c1": 2, "c2": 1}
    assert tree.match("x") == {"c1": 1}


def test_identical_filter_replaces_subscription() -> None:
    """[MQTT-3.8.4-3] subscribing again to an identical filter replaces it, keeping one."""
    tree = TopicTree()
    assert tree.subscribe("a/+", "c1", 2) is True
    assert tree.subscribe("a/+", "c1", 0) is False
    assert len(tree) == 1
    assert tree.match("a/x") == {"c1": 0}
    assert tree.subscribe("a/+", "c2", 1) is True
    assert len(tree) == 2


def test_similar_filters_are_distinct_subscriptions() -> None:
    """'a/#', 'a/+' and 'a' are three subscriptions of the same client, not replacements."""
    tree = TopicTree()
    assert tree.subscribe("a/#", "c1", 0)
    assert tree.subscribe("a/+", "c1", 1)
    assert tree.subscribe("a", "c1", 2)
    assert len(tree) == 3


def test_unsubscribe_compares_filters_exactly() -> None:
    """[MQTT-3.10.4-1] unsubscribing 'a/+' leaves 'a/b' and 'a/#' alone."""
    tree = tree_of(("a/b", "c1", 1), ("a/#", "c1", 0))
    assert tree.unsubscribe("a/+", "c1") is False
    assert tree.unsubscribe("a/b/#", "c1") is False
    assert len(tree) == 2
    assert tree.unsubscribe("a/#", "c1") is True
    assert tree.match("a/b") == {"c1": 1}
    assert tree.match("a/c") == {}


def test_unsubscribe_unknown_filter_changes_nothing() -> None:
    """[MQTT-3.10.4-1] a filter never subscribed returns False and leaves the tree as it was."""
    tree = tree_of(("a/b", "c1", 1), ("a/+/c", "c2", 2), ("#", "c3", 0))
    nodes = tree._node_count()
    for topic_filter, client_id in [
        ("a/b", "c2"),  # right filter, other client
        ("a/b/c", "c1"),  # deeper than any subscription
        ("a", "c1"),  # an inner node without subscribers
        ("a/+", "c2"),  # a prefix of a subscribed filter
        ("x/#", "c3"),
        ("+", "c3"),
        ("a/#/b", "c1"),  # not even a valid filter
    ]:
        assert tree.unsubscribe(topic_filter, client_id) is False
    assert len(tree) == 3
    assert tree._node_count() == nodes
    assert tree.match("a/b") == {"c1": 1, "c3": 0}
    assert tree.match("a/x/c") == {"c2": 2, "c3": 0}


def test_unsubscribing_everything_prunes_every_node() -> None:
    """After every subscription is removed only the root node remains (no leaked nodes)."""
    subscriptions = [
        ("a/b/c", "c1"),
        ("a/b", "c2"),
        ("a/+/c", "c1"),
        ("+/+/#", "c2"),
        ("#", "c3"),
        ("a/#", "c3"),
        ("$SYS/#", "c1"),
        ("/", "c2"),
        ("a//b", "c3"),
    ]
    tree = tree_of(*((f, c, 1) for f, c in subscriptions))
    assert tree._node_count() > 1
    for topic_filter, client_id in reversed(subscriptions[::2]):
        assert tree.unsubscribe(topic_filter, client_id)
    for topic_filter, client_id in subscriptions[1::2]:
        assert tree.unsubscribe(topic_filter, client_id)
    assert len(tree) == 0
    assert tree._node_count() == 1
    assert tree.match("a/b/c") == {}


def test_partial_unsubscribe_keeps_shared_branch() -> None:
    """Pruning stops at a node still used by another client or filter."""
    tree = tree_of(("a/b/c", "c1", 1), ("a/b/c", "c2", 2), ("a/b", "c3", 0))
    before = tree._node_count()
    assert tree.unsubscribe("a/b/c", "c1")
    assert tree._node_count() == before
    assert tree.unsubscribe("a/b/c", "c2")
    assert tree._node_count() == before - 1
    assert tree.match("a/b") == {"c3": 0}


def test_subscribe_rejects_invalid_filter_without_change() -> None:
    """An invalid filter raises MalformedPacket and adds no node or subscription."""
    tree = TopicTree()
    for bad in ["", "a/#/b", "a+", "#/"]:
        with pytest.raises(MalformedPacket):
            tree.subscribe(bad, "c1", 1)
    assert len(tree) == 0
    assert tree._node_count() == 1


def test_match_returns_a_fresh_dict() -> None:
    """Mutating a match result does not change the tree's subscriptions."""
    tree = tree_of(("a", "c1", 1))
    tree.match("a")["c1"] = 2
    tree.match("a").clear()
    assert tree.match("a") == {"c1": 1}


def test_topics_module_is_pure() -> None:
    """Importing mqttd.topics and mqttd.retain loads neither trio nor structlog."""
    code = (
        "import sys, mqttd.topics, mqttd.retain; "
        "bad = [m for m in ('trio', 'structlog') if m in sys.modules]; "
        "sys.exit(str(bad) if bad else 0)"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stderr


# -- property tests against the reference matcher -----------------------------------------------


@given(topic_filter=filters(), topic=topics)
def test_single_filter_matches_like_reference(topic_filter: str, topic: str) -> None:
    """One subscription matches exactly the topics the naive matcher accepts."""
    assert matches(topic_filter, topic) == reference_matches(topic_filter, topic)


@settings(max_examples=300)
@given(ops=operations, probes=st.lists(topics, min_size=1, max_size=8))
def test_tree_matches_like_reference_after_operations(
    ops: list[tuple[str, str, str, int]], probes: list[str]
) -> None:
    """After random subscribe/unsubscribe sequences, match() equals the naive matcher."""
    tree = TopicTree()
    model: dict[tuple[str, str], int] = {}
    for op, topic_filter, client_id, qos in ops:
        key = (topic_filter, client_id)
        if op == "sub":
            assert tree.subscribe(topic_filter, client_id, qos) is (key not in model)
            model[key] = qos
        else:
            assert tree.unsubscribe(topic_filter, client_id) is (model.pop(key, None) is not None)
        assert len(tree) == len(model)
    for topic in probes:
        assert tree.match(topic) == reference_match(model, topic)


@given(ops=operations)
def test_removing_all_subscriptions_leaves_only_the_root(
    ops: list[tuple[str, str, str, int]],
) -> None:
    """Whatever was subscribed, unsubscribing all of it leaves an empty one-node tree."""
    tree = TopicTree()
    live: set[tuple[str, str]] = set()
    for op, topic_filter, client_id, qos in ops:
        if op == "sub":
            tree.subscribe(topic_filter, client_id, qos)
            live.add((topic_filter, client_id))
    for topic_filter, client_id in sorted(live):
        assert tree.unsubscribe(topic_filter, client_id)
    assert len(tree) == 0
    assert tree._node_count() == 1


def test_cached_matches_follow_subscription_changes() -> None:
    """`matches` caches per topic, and every subscribe/unsubscribe invalidates the cache."""
    tree = TopicTree()
    assert dict(tree.matches("a/b")) == {}
    tree.subscribe("a/+", "c1", 1)
    assert dict(tree.matches("a/b")) == {"c1": 1}
    assert tree.matches("a/b") is tree.matches("a/b")
    tree.subscribe("a/#", "c2", 2)
    assert dict(tree.matches("a/b")) == {"c1": 1, "c2": 2}
    tree.unsubscribe("a/+", "c1")
    assert dict(tree.matches("a/b")) == {"c2": 2}
    tree.subscribe("a/#", "c2", 0)  # replaced with another QoS
    assert dict(tree.matches("a/b")) == {"c2": 0}
