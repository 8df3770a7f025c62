"""The retained-message store: set/get/delete, filter matching, pruning (MQTT 3.1.1 3.3.1.3)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttd.errors import MalformedPacket
from mqttd.retain import RetainStore


def reference_matches(topic_filter: str, topic: str) -> bool:
    """Section 4.7 matching, level by level, with no cleverness (independent of the trie)."""
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    if topic.startswith("$") and filter_levels[0] in ("+", "#"):
        return False  # [MQTT-4.7.2-1]
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(filter_levels) == len(topic_levels)


LEVELS = ["", "$SYS", "$x", "a", "b"]
topics = st.lists(st.sampled_from(LEVELS), min_size=1, max_size=4).map("/".join).filter(bool)


@st.composite
def filters(draw: st.DrawFn) -> str:
    """Valid filters over the small alphabet, with '+' levels and an optional final '#'."""
    levels = draw(st.lists(st.sampled_from([*LEVELS, "+"]), min_size=0, max_size=4))
    if levels in ([], [""]) or draw(st.booleans()):
        levels.append("#")  # '' alone is not a valid filter ([MQTT-4.7.3-1])
    return "/".join(levels)


# (topic, message or None to delete)
operations = st.lists(st.tuples(topics, st.one_of(st.none(), st.integers(0, 9))), max_size=40)


def store_of(*topics: str) -> RetainStore[str]:
    store: RetainStore[str] = RetainStore()
    for topic in topics:
        store.set(topic, f"m:{topic}")
    return store


def matched_topics(store: RetainStore[str], topic_filter: str) -> list[str]:
    return sorted(topic for topic, _message in store.matching(topic_filter))


# -- basic storage ------------------------------------------------------------------------------


def test_set_then_get_returns_last_message() -> None:
    """[MQTT-3.3.1-5] the last retained message per topic is stored, replacing older ones."""
    store: RetainStore[str] = RetainStore()
    assert store.get("a/b") is None
    store.set("a/b", "first")
    store.set("a/b", "second")
    assert store.get("a/b") == "second"
    assert len(store) == 1
    assert store.get("a") is None
    assert store.get("a/b/c") is None


def test_none_deletes_the_retained_message() -> None:
    """[MQTT-3.3.1-10] [MQTT-3.3.1-11] setting None removes the topic's retained message."""
    store = store_of("a/b", "a")
    store.set("a/b", None)
    assert store.get("a/b") is None
    assert store.matching("a/#") == [("a", "m:a")]
    assert len(store) == 1


def test_deleting_an_absent_topic_changes_nothing() -> None:
    """Deleting a topic without a retained message (or an inner level) is a no-op."""
    store = store_of("a/b/c")
    nodes = store._node_count()
    store.set("a/b", None)
    store.set("x", None)
    store.set("a/b/c/d", None)
    assert len(store) == 1
    assert store._node_count() == nodes
    assert store.get("a/b/c") == "m:a/b/c"


def test_deleting_everything_prunes_every_node() -> None:
    """After every retained message is deleted only the root node remains (no leaks)."""
    names = ["a/b/c", "a/b", "a", "/", "a//b", "$SYS/x/y", "b/c/d/e"]
    store = store_of(*names)
    assert store._node_count() > 1
    for topic in names:
        store.set(topic, None)
    assert len(store) == 0
    assert store._node_count() == 1
    assert list(store.items()) == []


def test_deleting_a_leaf_keeps_a_shared_branch() -> None:
    """Pruning stops at a node that still holds a message or has other children."""
    store = store_of("a/b", "a/b/c/d", "a/b/x")
    before = store._node_count()
    store.set("a/b/c/d", None)
    assert store._node_count() == before - 2  # 'c' and 'd' go, 'b' stays for 'x' and itself
    assert matched_topics(store, "#") == ["a/b", "a/b/x"]


def test_items_lists_every_message() -> None:
    """items() yields each stored (topic, message) pair once, for snapshots."""
    names = ["a", "a/b", "$SYS/x", "/", "c//d"]
    store = store_of(*names)
    assert sorted(store.items()) == sorted((topic, f"m:{topic}") for topic in names)


# -- matching (4.7) -----------------------------------------------------------------------------


SPORT = [
    "sport",
    "sport/",
    "sport/tennis",
    "sport/tennis/player1",
    "sport/tennis/player1/ranking",
    "sport/tennis/player1/score/wimbledon",
    "sport/tennis/player2",
    "sports",
    "/finance",
    "finance",
    "$SYS/broker/uptime",
    "$SYS/monitor/Clients",
]


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        (  # 4.7.1.2: the player and every level below it
            "sport/tennis/player1/#",
            [
                "sport/tennis/player1",
                "sport/tennis/player1/ranking",
                "sport/tennis/player1/score/wimbledon",
            ],
        ),
        (  # 4.7.1.2: '#' includes the parent level
            "sport/#",
            [
                "sport",
                "sport/",
                "sport/tennis",
                "sport/tennis/player1",
                "sport/tennis/player1/ranking",
                "sport/tennis/player1/score/wimbledon",
                "sport/tennis/player2",
            ],
        ),
        # 4.7.1.3: '+' is exactly one level, possibly empty
        ("sport/tennis/+", ["sport/tennis/player1", "sport/tennis/player2"]),
        ("sport/+", ["sport/", "sport/tennis"]),
        ("+/+", ["/finance", "sport/", "sport/tennis"]),
        ("/+", ["/finance"]),
        ("+", ["finance", "sport", "sports"]),
        ("+/tennis/#", [t for t in SPORT if t.startswith("sport/tennis")]),
        # [MQTT-4.7.2-1] wildcard first levels skip '$' topics; '$SYS/...' filters match them
        ("#", [t for t in SPORT if not t.startswith("$")]),
        ("+/monitor/Clients", []),
        ("$SYS/#", ["$SYS/broker/uptime", "$SYS/monitor/Clients"]),
        ("$SYS/monitor/+", ["$SYS/monitor/Clients"]),
        # literal filters
        ("sport/tennis", ["sport/tennis"]),
        ("sport/tennis/player3", []),
    ],
)
def test_matching_follows_the_spec_examples(topic_filter: str, expected: list[str]) -> None:
    """[MQTT-3.3.1-6] a new filter gets exactly the retained topics that 4.7 says it matches."""
    assert matched_topics(store_of(*SPORT), topic_filter) == sorted(expected)


def test_matching_returns_the_messages() -> None:
    """matching() pairs each topic with its current retained message."""
    store = store_of("a/b", "a/c")
    store.set("a/c", "newer")
    assert sorted(store.matching("a/+")) == [("a/b", "m:a/b"), ("a/c", "newer")]


def test_matching_does_no_normalisation() -> None:
    """[MQTT-4.7.3-4] composed and decomposed spellings are different topics."""
    composed, decomposed = "caf\u00e9/x", "cafe\u0301/x"
    store = store_of(composed)
    assert store.matching(decomposed) == []
    assert store.get(decomposed) is None
    assert matched_topics(store, "caf\u00e9/+") == [composed]
    assert matched_topics(store, "Caf\u00e9/#") == []


def test_dollar_only_special_at_first_level() -> None:
    """[MQTT-4.7.2-1] only a leading '$' hides a topic from wildcards: 'a/$x' is matched."""
    store = store_of("a/$x", "$x/a")
    assert matched_topics(store, "a/+") == ["a/$x"]
    assert matched_topics(store, "+/+") == ["a/$x"]
    assert matched_topics(store, "+/#") == ["a/$x"]


def test_matching_rejects_invalid_filters() -> None:
    """An invalid filter raises MalformedPacket rather than matching something odd."""
    store = store_of("a/b")
    for bad in ["", "a/#/b", "a+", "#a"]:
        with pytest.raises(MalformedPacket):
            store.matching(bad)


# -- property tests -----------------------------------------------------------------------------


@settings(max_examples=300)
@given(ops=operations, probes=st.lists(filters(), min_size=1, max_size=8))
def test_matching_equals_filtering_items(
    ops: list[tuple[str, int | None]], probes: list[str]
) -> None:
    """matching(f) equals items() filtered by the naive matcher, after random set/delete."""
    store: RetainStore[int] = RetainStore()
    model: dict[str, int] = {}
    for topic, message in ops:
        store.set(topic, message)
        if message is None:
            model.pop(topic, None)
        else:
            model[topic] = message
    assert len(store) == len(model)
    assert sorted(store.items()) == sorted(model.items())
    for topic, message in model.items():
        assert store.get(topic) == message
    for topic_filter in probes:
        found = store.matching(topic_filter)
        assert len(found) == len(set(found))  # no duplicates
        expected = [(t, m) for t, m in store.items() if reference_matches(topic_filter, t)]
        assert sorted(found) == sorted(expected)


@given(ops=operations)
def test_deleting_all_topics_leaves_only_the_root(ops: list[tuple[str, int | None]]) -> None:
    """Whatever was stored, deleting every topic leaves an empty one-node trie."""
    store: RetainStore[int] = RetainStore()
    for topic, message in ops:
        store.set(topic, message)
    for topic, _message in list(store.items()):
        store.set(topic, None)
    assert len(store) == 0
    assert store._node_count() == 1


# -- the lazy walk used to pace retained delivery ------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(before=operations, during=operations, topic_filter=filters(), split=st.integers(0, 50))
def test_iter_matching_survives_changes_between_steps(
    before: list[tuple[str, int | None]],
    during: list[tuple[str, int | None]],
    topic_filter: str,
    split: int,
) -> None:
    """A walk resumed after sets and deletes never fails, never yields a topic twice, yields
    only matching messages set before it started (``upto``), and every such message no one
    touched meanwhile."""
    store: RetainStore[str] = RetainStore()
    for topic, value in before:
        store.set(topic, None if value is None else f"{topic}={value}")
    snapshot = dict(store.matching(topic_filter))
    walk = store.iter_matching(topic_filter)
    seen = [pair for _, pair in zip(range(split), walk, strict=False)]
    touched = set()
    for topic, value in during:
        store.set(topic, None if value is None else f"{topic}={value}:new")
        touched.add(topic)
    seen.extend(walk)
    topics = [topic for topic, _ in seen]
    assert len(topics) == len(set(topics))
    for topic, message in seen:
        assert reference_matches(topic_filter, topic)
        assert not message.endswith(":new")
    untouched = {t for t in snapshot if t not in touched}
    assert untouched <= set(topics)


def test_iter_matching_skips_messages_newer_than_upto() -> None:
    """``upto`` is a version: what was set after it is left to the live path."""
    store = store_of("a/1", "a/2")
    upto = store.version
    store.set("a/3", "m:a/3")
    store.set("a/1", "m:a/1 again")
    assert sorted(store.iter_matching("a/#", upto)) == [("a/2", "m:a/2")]
