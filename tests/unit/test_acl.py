"""ACL files in Mosquitto's syntax (mqttd.acl): parsing, the access matrix, subscribe rules."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from mqttd.acl import Acl, covers, matches
from mqttd.errors import ConfigError

# --- topic matching -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        # MQTT 3.1.1 section 4.7.1 examples.
        ("sport/tennis/player1/#", "sport/tennis/player1", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
        ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
        ("sport/#", "sport", True),
        ("sport/tennis/+", "sport/tennis/player1", True),
        ("sport/tennis/+", "sport/tennis/player1/ranking", False),
        ("sport/+", "sport", False),
        ("sport/+", "sport/", True),
        ("+/+", "/finance", True),
        ("/+", "/finance", True),
        ("+", "/finance", False),
        ("#", "a/b", True),
        ("a/b", "a/b/c", False),
        ("a/b/c", "a/b", False),
        # [MQTT-4.7.2-1] wildcards at the first level do not match "$" topics.
        ("#", "$SYS/broker", False),
        ("+/broker", "$SYS/broker", False),
        ("$SYS/#", "$SYS/broker", True),
        ("$SYS/+", "$SYS/broker", True),
        ("a/+", "a/$x", True),
    ],
)
def test_matches(topic_filter: str, topic: str, expected: bool) -> None:
    """matches() follows MQTT 3.1.1 section 4.7 including the $-topic rule."""
    assert matches(topic_filter.split("/"), topic.split("/")) is expected


def _filters(alphabet: tuple[str, ...], depth: int) -> list[str]:
    result = []
    for n in range(1, depth + 1):
        for levels in itertools.product(alphabet, repeat=n):
            if "#" in levels[:-1]:
                continue
            result.append("/".join(levels))
    return result


def test_covers_equals_brute_force_subset_check() -> None:
    """covers(r, f) holds exactly when every topic f matches is matched by r (exhaustive)."""
    filters = _filters(("a", "$s", "+", "#"), 3)
    topics = [
        "/".join(levels)
        for n in range(1, 6)
        for levels in itertools.product(("a", "b", "$s"), repeat=n)
    ]
    split_topics = [t.split("/") for t in topics]
    matched = {
        f: {t for t, lv in zip(topics, split_topics, strict=True) if matches(f.split("/"), lv)}
        for f in filters
    }
    checked = 0
    for rule, flt in itertools.product(filters, repeat=2):
        expected = matched[flt] <= matched[rule]
        assert covers(rule.split("/"), flt.split("/")) is expected, (rule, flt)
        checked += 1
    assert checked == len(filters) ** 2 > 2000


# --- parsing --------------------------------------------------------------------------------


def test_parse_accepts_mosquitto_syntax() -> None:
    """Comments, blank lines, extra spaces, no access keyword (readwrite) and spaces in topics."""
    acl = Acl.parse(
        "# anonymous\n"
        "\n"
        "   topic   read   pub/#   \r\n"
        "topic both/x\n"
        "topic read\n"
        "user  alice smith \n"
        "topic write with space/x\n"
        "user bob\n"
        "topic deny both/x\n"
        "pattern read dev/%c/#\n"
    )
    anon = {"username": None, "client_id": "c"}
    assert acl.can_receive(**anon, topic="pub/a")
    assert not acl.can_publish(**anon, topic="pub/a")
    assert acl.can_publish(**anon, topic="both/x")
    assert acl.can_receive(**anon, topic="both/x")
    # "topic read" with nothing else is the topic "read" with readwrite access, as in Mosquitto.
    assert acl.can_publish(**anon, topic="read")
    assert acl.can_publish(username="alice smith", client_id="c", topic="with space/x")
    assert not acl.can_publish(username="bob", client_id="c", topic="both/x")
    assert acl.can_receive(username="bob", client_id="c", topic="dev/c/t")
    assert acl.usernames == {"alice smith", "bob"}
    assert acl.warnings == ()


def test_user_sections_add_up() -> None:
    """A user named twice gets the rules of both sections; anonymous lines come first only."""
    acl = Acl.parse("topic anon\nuser u\ntopic one\nuser v\ntopic two\nuser u\ntopic three\n")
    for topic in ("one", "three"):
        assert acl.can_publish(username="u", client_id="c", topic=topic)
    assert not acl.can_publish(username="u", client_id="c", topic="two")
    assert not acl.can_publish(username="u", client_id="c", topic="anon")
    assert acl.can_publish(username=None, client_id="c", topic="anon")
    assert not acl.can_publish(username=None, client_id="c", topic="one")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("bogus line", "unknown keyword 'bogus'"),
        ("TOPIC read a", "unknown keyword 'TOPIC'"),
        ("  # indented comment", "unknown keyword '#'"),
        ("topic\tread a", "unknown keyword"),
        ("user", "needs a user name"),
        ("user    ", "needs a user name"),
        ("topic", "needs a topic filter"),
        ("pattern   ", "needs a topic filter"),
        ("topic foo a/b", "invalid access 'foo'"),
        ("topic a b", "invalid access 'a'"),
        ("topic read a/#/b", "invalid topic filter 'a/#/b'"),
        ("topic read a+/b", "invalid topic filter"),
        ("pattern write x#", "invalid topic filter"),
    ],
)
def test_parse_errors_name_the_line(line: str, reason: str) -> None:
    """Lines Mosquitto 2.0.11 refuses are ConfigErrors naming the file and line number."""
    text = f"# head\ntopic read ok\n{line}\ntopic read later\n"
    with pytest.raises(ConfigError, match=r"^acl\.conf:3: ") as info:
        Acl.parse(text, source="acl.conf")
    assert reason in str(info.value)


def test_pattern_warnings() -> None:
    """Patterns without a whole-level %c/%u parse but produce a warning naming the line."""
    acl = Acl.parse(
        "pattern read fixed/topic\npattern read a/x%c\npattern read %u/ok\n", source="f"
    )
    assert len(acl.warnings) == 2
    assert acl.warnings[0].startswith("f:1: ")
    assert acl.warnings[1].startswith("f:2: ")
    assert "whole topic level" in acl.warnings[1]


def test_load_reads_a_file_and_reports_errors(tmp_path: Path) -> None:
    """load() parses a file; missing or non-UTF-8 files are ConfigErrors naming the path."""
    path = tmp_path / "acl"
    path.write_text("user alice\ntopic read a/#\n")
    acl = Acl.load(path)
    assert acl.can_receive(username="alice", client_id="c", topic="a/b")
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "nope"))):
        Acl.load(tmp_path / "nope")
    path.write_bytes(b"user alice\ntopic read \xff\n")
    with pytest.raises(ConfigError, match=r"acl:2: .*UTF-8"):
        Acl.load(path)


# --- the access matrix ----------------------------------------------------------------------

MATRIX_ACL = """\
# Anonymous clients: read-only public data.
topic read public/#
topic deny public/secret

user alice
topic readwrite home/alice/#
topic read home/+/status
topic write cmd/#
topic deny cmd/reboot
topic read $SYS/broker/#
topic readwrite $SYS/#

user bob
topic read #

user carol
topic write home/#
topic deny #

pattern readwrite dev/%c/#
pattern read users/%u/inbox/#
pattern write users/%u/outbox
pattern deny dev/%c/locked
pattern read mixed/%u/%c
"""

ANON = None
PUB, RECV, SUB = "publish", "receive", "subscribe"


def check(acl: Acl, op: str, username: str | None, client_id: str, target: str) -> bool:
    if op == PUB:
        return acl.can_publish(username=username, client_id=client_id, topic=target)
    if op == RECV:
        return acl.can_receive(username=username, client_id=client_id, topic=target)
    return acl.can_subscribe(username=username, client_id=client_id, topic_filter=target)


MATRIX = [
    # anonymous section: read only, deny wins
    (RECV, ANON, "c1", "public/news", True),
    (RECV, ANON, "c1", "public", True),
    (PUB, ANON, "c1", "public/news", False),
    (RECV, ANON, "c1", "public/secret", False),
    (RECV, ANON, "c1", "home/alice/x", False),
    # the anonymous section does not apply to named users
    (RECV, "alice", "c1", "public/news", False),
    (RECV, "dave", "c1", "public/news", False),
    # alice: read vs write
    (PUB, "alice", "c1", "home/alice/lamp", True),
    (RECV, "alice", "c1", "home/alice/lamp", True),
    (RECV, "alice", "c1", "home/bob/status", True),
    (PUB, "alice", "c1", "home/bob/status", False),
    (RECV, "alice", "c1", "home/bob/lamp", False),
    (PUB, "alice", "c1", "cmd/light", True),
    (RECV, "alice", "c1", "cmd/light", False),
    (PUB, "alice", "c1", "cmd/reboot", False),
    # $SYS: readable only through rules naming it, never writable
    (RECV, "alice", "c1", "$SYS/broker/uptime", True),
    (PUB, "alice", "c1", "$SYS/broker/uptime", False),
    (PUB, "alice", "c1", "$SYS/other", False),
    (RECV, "bob", "c1", "$SYS/broker/uptime", False),
    (RECV, "bob", "c1", "anything/at/all", True),
    (PUB, "bob", "c1", "anything", False),
    (PUB, "bob", "c1", "$share/x", False),
    # carol: a deny # wins over her write rule
    (PUB, "carol", "c1", "home/x", False),
    # patterns: %c / %u as whole levels, for everyone
    (PUB, ANON, "sensor7", "dev/sensor7/temp", True),
    (RECV, "alice", "sensor7", "dev/sensor7/temp", True),
    (PUB, ANON, "sensor7", "dev/sensor8/temp", False),
    (PUB, ANON, "sensor7", "dev/sensor7/locked", False),
    (RECV, "dave", "c1", "users/dave/inbox/1", True),
    (RECV, "dave", "c1", "users/erin/inbox/1", False),
    (PUB, "dave", "c1", "users/dave/outbox", True),
    (PUB, "dave", "c1", "users/dave/inbox", False),
    (RECV, "dave", "c1", "mixed/dave/c1", True),
    (RECV, "dave", "c2", "mixed/dave/c1", False),
    # %u patterns never apply to anonymous clients (no literal "%u" level either)
    (RECV, ANON, "c1", "users/%u/inbox/1", False),
    (RECV, ANON, "c1", "mixed/%u/c1", False),
    # dangerous ids / names get no pattern match (CVE-2017-7650)
    (PUB, ANON, "+", "dev/+/x", False),
    (PUB, ANON, "#", "dev/#/x", False),
    (PUB, ANON, "a/b", "dev/a/b/x", False),
    (RECV, "+", "c1", "users/+/inbox/x", False),
    (RECV, "x/y", "c1", "users/x/y/inbox/z", False),
    # ... and a deny pattern that needs the dangerous value denies everything (fail closed)
    (RECV, "bob", "evil+", "anything", False),
    (RECV, "bob", "fine", "anything", True),
]


@pytest.mark.parametrize(("op", "username", "client_id", "target", "expected"), MATRIX)
def test_access_matrix(
    op: str, username: str | None, client_id: str, target: str, expected: bool
) -> None:
    """Each (operation, user, client id, topic) gets Mosquitto's answer, with deny winning."""
    acl = Acl.parse(MATRIX_ACL)
    assert check(acl, op, username, client_id, target) is expected


@pytest.mark.parametrize(("op", "username", "client_id", "target", "expected"), MATRIX)
def test_client_acl_matches_acl(
    op: str, username: str | None, client_id: str, target: str, expected: bool
) -> None:
    """The per-connection ClientAcl (rules resolved once) answers exactly like Acl."""
    client = Acl.parse(MATRIX_ACL).for_client(username=username, client_id=client_id)
    method = {PUB: client.can_publish, RECV: client.can_receive}.get(op, client.can_subscribe)
    assert method(target) is expected


def test_allow_all_client_acl_refuses_only_dollar_publish() -> None:
    """Without an ACL file everything is allowed but publishing to `$` topics."""
    client = Acl.allow_all().for_client(username=None, client_id="c")
    assert client.allows_everything
    assert client.can_publish("a/b")
    assert not client.can_publish("$SYS/broker/load")
    assert client.can_subscribe("#")
    assert client.can_receive("$SYS/x")


def test_connection_state_topic_own_client_id_or_any_for_a_bridge() -> None:
    """[MQTT-4.7.2-1] keeps clients off `$` topics, with one exception Mosquitto makes too: a
    bridge's connection state. A client marked as a bridge (3.1.1's bridge bit) may write any
    name; any other client (Mosquitto's MQTT 5 bridge has no bridge bit) only its own id."""
    client = Acl.allow_all().for_client(username=None, client_id="edge.b1")
    assert client.can_publish("$SYS/broker/connection/edge.b1/state")
    assert not client.can_publish("$SYS/broker/connection/other/state")
    assert not client.can_publish("$SYS/broker/connection/edge.b1/state/x")
    assert client.can_publish("$SYS/broker/connection/other/state", bridge=True)
    assert not client.can_publish("$SYS/broker/load", bridge=True)
    ruled = Acl.parse("topic write $SYS/broker/connection/+/state\n").for_client(
        username=None, client_id="edge.b1"
    )
    assert ruled.can_publish("$SYS/broker/connection/edge.b1/state")
    assert not ruled.can_publish("$SYS/broker/connection/other/state")
    denied = Acl.parse("topic write other/#\n").for_client(username=None, client_id="edge.b1")
    assert not denied.can_publish("$SYS/broker/connection/edge.b1/state")  # the ACL still rules


def test_dangerous_names_keep_their_section_rules() -> None:
    """A client id or user name with +, # or / loses pattern grants, not its section's rules."""
    acl = Acl.parse("topic read public/#\nuser a/b\ntopic read mine\npattern read dev/%c\n")
    assert acl.can_receive(username=None, client_id="c/1", topic="public/news")
    assert not acl.can_receive(username=None, client_id="c/1", topic="dev/c/1")
    assert acl.can_receive(username="a/b", client_id="x", topic="mine")
    # A grant pattern without %c/%u is still a pattern: it grants nothing to such clients.
    fixed = Acl.parse("pattern read fixed\n")
    assert fixed.can_receive(username=None, client_id="ok", topic="fixed")
    assert not fixed.can_receive(username=None, client_id="n#t", topic="fixed")


def test_user_without_section_and_no_patterns_gets_nothing() -> None:
    """Without patterns, a user with no section (and anonymous without rules) is refused."""
    acl = Acl.parse("user alice\ntopic #\n")
    assert acl.can_publish(username="alice", client_id="c", topic="t")
    assert not acl.can_publish(username="bob", client_id="c", topic="t")
    assert not acl.can_receive(username=None, client_id="c", topic="t")
    assert not acl.can_subscribe(username=None, client_id="c", topic_filter="t")


def test_empty_acl_refuses_everything() -> None:
    """An ACL file without rules (only comments) grants nothing."""
    acl = Acl.parse("# nothing yet\n")
    assert not acl.can_publish(username="u", client_id="c", topic="t")
    assert not acl.can_receive(username=None, client_id="c", topic="t")


def test_deny_wins_regardless_of_order_and_source() -> None:
    """A matching deny refuses even when a grant comes first or comes from a pattern."""
    acl = Acl.parse(
        "user u\ntopic readwrite a/#\ntopic deny a/b\n"
        "pattern readwrite p/%u/#\npattern deny a/c\npattern deny p/%u/no\n"
    )
    who = {"username": "u", "client_id": "c"}
    assert acl.can_publish(**who, topic="a/x")
    assert not acl.can_publish(**who, topic="a/b")
    # Mosquitto 2.0 would let the user grant win over the pattern deny; mqttd refuses.
    assert not acl.can_publish(**who, topic="a/c")
    assert acl.can_publish(**who, topic="p/u/yes")
    assert not acl.can_receive(**who, topic="p/u/no")


def test_dollar_publish_refused_even_when_allowing_all() -> None:
    """Publishing to a $ topic is always refused; allow_all permits everything else."""
    everything = Acl.allow_all()
    who = {"username": None, "client_id": "c"}
    assert not everything.can_publish(**who, topic="$SYS/broker/load")
    assert not everything.can_publish(**who, topic="$anything")
    assert everything.can_publish(**who, topic="a/b")
    assert everything.can_receive(**who, topic="$SYS/broker/load")
    assert everything.can_subscribe(**who, topic_filter="$SYS/#")
    explicit = Acl.parse("topic readwrite $SYS/#\ntopic readwrite #\n")
    assert not explicit.can_publish(**who, topic="$SYS/broker/load")
    assert explicit.can_receive(**who, topic="$SYS/broker/load")


# --- subscribe ------------------------------------------------------------------------------

SUB_ACL = """\
topic read a/#
topic deny a/secret/#
topic read b/+/c
topic write w/#
topic read $SYS/broker/+
topic deny a/+/hidden
"""


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        ("a/#", True),  # covered; the partly denied a/secret/... is dropped at delivery
        ("a", True),
        ("a/x/y", True),
        ("a/+/y", True),
        ("a/secret", False),  # wholly denied
        ("a/secret/#", False),
        ("a/secret/x", False),
        ("a/x/hidden", False),
        ("a/+/hidden", False),
        ("b/+/c", True),
        ("b/x/c", True),
        ("b/#", False),  # b/x/d would not be readable: not covered
        ("b/+/+", False),
        ("b/x", False),
        ("#", False),
        ("+/+/c", False),
        ("w/x", False),  # write-only is not enough to subscribe
        ("$SYS/broker/uptime", True),
        ("$SYS/broker/+", True),
        ("$SYS/#", False),
        ("c", False),
    ],
)
def test_subscribe_requires_a_covering_read_rule(topic_filter: str, expected: bool) -> None:
    """A filter is granted when one read rule covers it all and no deny rule covers it."""
    acl = Acl.parse(SUB_ACL)
    assert acl.can_subscribe(username=None, client_id="c", topic_filter=topic_filter) is expected


def test_partly_denied_subscription_is_filtered_at_delivery() -> None:
    """A granted a/# subscription still does not receive messages on denied topics."""
    acl = Acl.parse(SUB_ACL)
    who = {"username": None, "client_id": "c"}
    assert acl.can_subscribe(**who, topic_filter="a/#")
    assert acl.can_receive(**who, topic="a/open")
    assert not acl.can_receive(**who, topic="a/secret/plans")
    assert not acl.can_receive(**who, topic="a/x/hidden")


def test_subscribe_with_patterns() -> None:
    """Pattern rules cover subscriptions after substitution; dangerous ids get none."""
    acl = Acl.parse("pattern read dev/%c/#\npattern read u/%u/+\n")
    assert acl.can_subscribe(username=None, client_id="d1", topic_filter="dev/d1/#")
    assert acl.can_subscribe(username=None, client_id="d1", topic_filter="dev/d1/+/t")
    assert not acl.can_subscribe(username=None, client_id="d1", topic_filter="dev/+/#")
    assert not acl.can_subscribe(username=None, client_id="d1", topic_filter="dev/d2/x")
    assert acl.can_subscribe(username="ann", client_id="x", topic_filter="u/ann/+")
    assert not acl.can_subscribe(username="ann", client_id="x", topic_filter="u/ann/#")
    assert not acl.can_subscribe(username=None, client_id="+", topic_filter="dev/+/#")
    assert not acl.can_subscribe(username="#", client_id="x", topic_filter="u/#")
