"""Access control lists in Mosquitto 2.0's ``acl_file`` syntax, read unchanged.

Theory of operation. The file is a list of lines (Mosquitto's parser, reproduced rule by rule)::

    # comment: only when "#" is the very first character of the line
    topic [read|write|readwrite|deny] <filter>     no keyword = readwrite
    user <name>                                    the following topic lines apply to <name>
    pattern [read|write|readwrite|deny] <filter>   applies to every client; %c / %u substituted

Words are separated by spaces (a tab is not a separator, as in Mosquitto); trailing whitespace is
ignored; the filter is the rest of the line, so it may contain spaces, but then the access keyword
is required (``topic a b`` reads as access ``a``, which is an error). ``topic read`` with nothing
after it is the topic named ``read``. ``topic`` lines before the first ``user`` line apply to
anonymous clients (no user name). A ``user`` may appear several times; its rules add up. Any
other line, an unknown access keyword or an invalid filter is a ``ConfigError`` naming the line.

``%c`` (client id) and ``%u`` (user name) are substituted only when they are a whole topic level
(``devices/%c/#``); ``a/x%c`` is literal. A client whose id or user name contains ``+``, ``#`` or
``/`` could otherwise widen a pattern to other clients' topics (CVE-2017-7650), so for such a
client no pattern grants anything, and a ``deny`` pattern that needs the offending value denies
everything (fail closed). ``%u`` patterns never apply to anonymous clients.

Decisions (the client's rules = its ``user`` section, or the anonymous section when it has no
user name, plus all patterns):

* **deny wins**: if any ``deny`` rule of the client matches, access is refused, whatever grants
  exist. Mosquitto 2.0 checks a user's ``topic`` rules before the patterns, so there a user grant
  beats a ``pattern deny``; mqttd refuses in that case (stricter, never more permissive).
* otherwise access needs a matching rule with that access bit (read for delivery and subscribe,
  write for publish); no matching rule means no access.
* matching follows MQTT 4.7 including [MQTT-4.7.2-1]: ``#`` and ``+`` at the first level do not
  match topics starting with ``$``, so ``$SYS`` needs rules that name it (as in Mosquitto).
* **publish**: a client may never publish to a topic starting with ``$`` ([MQTT-4.7.2-1]
  reserves them for the server), whatever the rules say.
* **subscribe**: Mosquitto 2.0 accepts every SUBSCRIBE and only filters at delivery; mqttd decides
  up front. A filter is granted when one read rule *covers* it (every topic the filter can match
  is matched by the rule: ``a/#`` covers ``a/+/b`` and ``a``, ``a/+`` does not cover ``a/#``) and
  no deny rule covers it. A deny rule that covers only part of a granted filter does not refuse
  the subscription: ``can_receive`` drops those messages at delivery.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mqttd.errors import ConfigError, MalformedPacket
from mqttd.topics import validate_topic_filter

__all__ = ["Access", "Acl", "AclRule", "covers", "matches"]



def is_bridge_state_topic(topic: str) -> bool:
    """``$SYS/broker/connection/<name>/state``: the one ``$`` topic a bridge may publish to
    (its connection state, 1 or 0, which a Mosquitto bridge sends as its Will and on
    connecting). Mosquitto lets any client write it; mqttd lets a client marked as a bridge
    (MQTT 3.1/3.1.1's bridge bit) write any name, and any other client only its own client id,
    which is what Mosquitto's MQTT 5 bridge (no bridge bit) uses."""
    parts = topic.split("/")
    return (
        len(parts) == 5
        and parts[:3] == ["$SYS", "broker", "connection"]
        and parts[3] != ""
        and parts[4] == "state"
    )

class Access(enum.IntFlag):
    """Access bits of a rule; ``NONE`` is a ``deny`` rule."""

    NONE = 0
    READ = 1
    WRITE = 2
    READWRITE = 3


_ACCESS_WORDS = {
    "read": Access.READ,
    "write": Access.WRITE,
    "readwrite": Access.READWRITE,
    "deny": Access.NONE,
}

#: Characters that must not appear in a client id / user name substituted into a pattern.
_DANGEROUS = frozenset("+#/")


@dataclass(frozen=True, slots=True)
class AclRule:
    """One ``topic`` or ``pattern`` line.

    Attributes:
        access: the access bits; ``Access.NONE`` denies.
        topic_filter: the filter as written in the file.
        levels: ``topic_filter`` split at ``/``.
        line: line number in the file, for diagnostics.
        uses_client_id: a pattern with a whole ``%c`` level.
        uses_username: a pattern with a whole ``%u`` level.
    """

    access: Access
    topic_filter: str
    levels: tuple[str, ...]
    line: int
    uses_client_id: bool = False
    uses_username: bool = False

    @property
    def deny(self) -> bool:
        """Whether this is a ``deny`` rule."""
        return self.access == Access.NONE


def matches(filter_levels: Sequence[str], topic_levels: Sequence[str]) -> bool:
    """Whether a topic filter matches a topic name (MQTT 3.1.1 section 4.7).

    Args:
        filter_levels: the filter split at ``/``.
        topic_levels: the topic name split at ``/`` (no wildcards).
    """
    # [MQTT-4.7.2-1] a wildcard first level does not match topics starting with "$".
    if topic_levels[0].startswith("$") and filter_levels[0] in ("+", "#"):
        return False
    count = len(topic_levels)
    for index, level in enumerate(filter_levels):
        if level == "#":
            # [MQTT-4.7.1-2] "#" also matches the parent level: "a/#" matches "a".
            return True
        if index >= count:
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(filter_levels) == count


def covers(rule_levels: Sequence[str], filter_levels: Sequence[str]) -> bool:
    """Whether every topic that ``filter_levels`` matches is also matched by ``rule_levels``.

    Both are topic filters split at ``/``. Used to decide SUBSCRIBE: the rule must authorise
    everything the subscription could deliver.
    """
    # A filter whose first level is literal "$..." can match "$" topics, which a rule with a
    # wildcard first level never matches ([MQTT-4.7.2-1]).
    if filter_levels[0].startswith("$") and rule_levels[0] in ("+", "#"):
        return False
    count = len(filter_levels)
    for index, level in enumerate(rule_levels):
        if level == "#":
            return True
        if index >= count:
            return False
        wanted = filter_levels[index]
        if wanted == "#":
            # The filter matches its parent and anything below it: only a "#" here covers that.
            # One exception: a lone "#" filter matches topics of one level or more (a topic
            # always has a level), exactly what "+/#" matches.
            return index == 0 and tuple(rule_levels) == ("+", "#")
        if level == "+":
            continue
        if wanted == "+" or wanted != level:
            return False
    return len(rule_levels) == count


def _has_dangerous(value: str | None) -> bool:
    return value is not None and not _DANGEROUS.isdisjoint(value)


class Acl:
    """A parsed ACL file; immutable, so a reload builds a new ``Acl`` and swaps the reference."""

    __slots__ = ("_allow_all", "_anonymous", "_patterns", "_users", "source", "warnings")

    def __init__(
        self,
        *,
        anonymous: Sequence[AclRule] = (),
        users: dict[str, Sequence[AclRule]] | None = None,
        patterns: Sequence[AclRule] = (),
        source: str = "<string>",
        warnings: Sequence[str] = (),
        allow_all: bool = False,
    ) -> None:
        self._anonymous = tuple(anonymous)
        self._users = {name: tuple(rules) for name, rules in (users or {}).items()}
        self._patterns = tuple(patterns)
        self._allow_all = allow_all
        self.source = source
        #: Lines that are valid but probably not what the operator meant (log them at load).
        self.warnings: tuple[str, ...] = tuple(warnings)

    @classmethod
    def allow_all(cls) -> Acl:
        """The ACL used when no ``acl_file`` is configured.

        Everything is allowed except what is never allowed: publishing to ``$`` topics.
        """
        return cls(source="<allow all>", allow_all=True)

    @classmethod
    def load(cls, path: Path) -> Acl:
        """Read and parse an ACL file.

        Raises:
            ConfigError: unreadable, not UTF-8, or a bad line (message names file and line).
        """
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ACL file: {exc.strerror}") from exc
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise ConfigError(f"{path}:{line}: ACL file is not valid UTF-8") from None
        return cls.parse(text, source=str(path))

    @classmethod
    def parse(cls, text: str, *, source: str = "<string>") -> Acl:
        """Parse the text of an ACL file (syntax in the module docstring).

        Raises:
            ConfigError: ``"<source>:<line>: <reason>"`` for the first bad line.
        """
        anonymous: list[AclRule] = []
        users: dict[str, list[AclRule]] = {}
        patterns: list[AclRule] = []
        warnings: list[str] = []
        current: list[AclRule] = anonymous

        for number, raw in enumerate(text.split("\n"), start=1):
            line = raw.rstrip(" \t\r\n\v\f")
            if line.startswith("#"):
                continue
            keyword, _, rest = line.lstrip(" ").partition(" ")
            if not keyword:
                continue

            def fail(reason: str, number: int = number) -> ConfigError:
                return ConfigError(f"{source}:{number}: {reason}")

            if keyword == "user":
                name = rest.strip(" \t")
                if not name:
                    raise fail("'user' needs a user name")
                current = users.setdefault(name, [])
                continue
            if keyword not in ("topic", "pattern"):
                raise fail(f"unknown keyword {keyword!r} (expected topic, pattern or user)")

            rest = rest.lstrip(" ")
            word, _, tail = rest.partition(" ")
            tail = tail.strip(" \t")
            if not word:
                raise fail(f"'{keyword}' needs a topic filter")
            if tail:
                if word not in _ACCESS_WORDS:
                    raise fail(f"invalid access {word!r} (expected read, write, readwrite or deny)")
                access, topic_filter = _ACCESS_WORDS[word], tail
            else:
                # Mosquitto: a single word is the topic, with readwrite access.
                access, topic_filter = Access.READWRITE, word
            try:
                validate_topic_filter(topic_filter)
            except MalformedPacket as exc:
                raise fail(f"invalid topic filter {topic_filter!r}: {exc.reason}") from None
            levels = tuple(topic_filter.split("/"))

            if keyword == "topic":
                current.append(AclRule(access, topic_filter, levels, number))
                continue
            uses_c = "%c" in levels
            uses_u = "%u" in levels
            if not (uses_c or uses_u):
                if "%c" in topic_filter or "%u" in topic_filter:
                    warnings.append(
                        f"{source}:{number}: %c/%u are substituted only as a whole topic "
                        f"level; {topic_filter!r} is matched literally"
                    )
                else:
                    warnings.append(
                        f"{source}:{number}: pattern {topic_filter!r} contains no %c or %u"
                    )
            patterns.append(AclRule(access, topic_filter, levels, number, uses_c, uses_u))

        return cls(
            anonymous=anonymous,
            users=dict(users),
            patterns=patterns,
            source=source,
            warnings=warnings,
        )

    @property
    def usernames(self) -> frozenset[str]:
        """The user names that have a ``user`` section."""
        return frozenset(self._users)

    def _rules_for(self, username: str | None, client_id: str) -> tuple[list[AclRule], bool]:
        """The client's rules, with patterns substituted; and whether any deny is unresolvable.

        Returns:
            ``(rules, deny_everything)``: ``deny_everything`` is true when a deny pattern needs a
            client id or user name containing ``+``, ``#`` or ``/`` (fail closed).
        """
        section = self._anonymous if username is None else self._users.get(username, ())
        rules = list(section)
        if not self._patterns:
            return rules, False
        bad_id = _has_dangerous(client_id)
        bad_user = _has_dangerous(username)
        dangerous = bad_id or bad_user
        for rule in self._patterns:
            if rule.uses_username and username is None:
                continue  # as Mosquitto: %u patterns do not apply to anonymous clients
            unresolvable = (rule.uses_client_id and bad_id) or (rule.uses_username and bad_user)
            if unresolvable:
                if rule.deny:
                    return rules, True
                continue
            if dangerous and not rule.deny:
                continue  # no pattern grants anything to a client with a dangerous id/name
            if rule.uses_client_id or rule.uses_username:
                levels = tuple(
                    client_id
                    if level == "%c"
                    else (username if level == "%u" and username is not None else level)
                    for level in rule.levels
                )
                rule = AclRule(rule.access, rule.topic_filter, levels, rule.line)
            rules.append(rule)
        return rules, False

    def _check_topic(
        self, username: str | None, client_id: str, topic: str, wanted: Access
    ) -> bool:
        if self._allow_all:
            return True
        return _check_rules(*self._rules_for(username, client_id), topic, wanted)

    def can_publish(self, *, username: str | None, client_id: str, topic: str) -> bool:
        """Whether the client may publish to ``topic`` (a topic name, no wildcards).

        Always ``False`` for topics starting with ``$`` ([MQTT-4.7.2-1]: reserved for the
        server, e.g. ``$SYS``), even with ``allow_all``. Otherwise deny wins, then a matching
        ``write``/``readwrite`` rule is required.
        """
        if topic.startswith("$"):
            return False
        return self._check_topic(username, client_id, topic, Access.WRITE)

    def can_receive(self, *, username: str | None, client_id: str, topic: str) -> bool:
        """Whether a message published to ``topic`` may be delivered to the client.

        Deny wins, then a matching ``read``/``readwrite`` rule is required. ``$`` topics need a
        rule whose first level names them ([MQTT-4.7.2-1]).
        """
        return self._check_topic(username, client_id, topic, Access.READ)

    def for_client(self, *, username: str | None, client_id: str) -> ClientAcl:
        """The rules of one client, resolved once (patterns substituted) for its connection."""
        if self._allow_all:
            return ClientAcl(None, False, client_id)
        return ClientAcl(*self._rules_for(username, client_id), client_id)

    def can_subscribe(self, *, username: str | None, client_id: str, topic_filter: str) -> bool:
        """Whether the client may subscribe to ``topic_filter`` (SUBACK 0x80 if not).

        Granted when a ``read``/``readwrite`` rule covers the whole filter (see ``covers``) and
        no ``deny`` rule covers it. Deny rules that cover only part of the filter are enforced
        per message by ``can_receive``. Mosquitto 2.0 grants every subscription and filters at
        delivery only; mqttd refuses up front what could only be partly delivered.
        """
        if self._allow_all:
            return True
        return _check_subscription(*self._rules_for(username, client_id), topic_filter)

    def __repr__(self) -> str:
        return (
            f"Acl(source={self.source!r}, anonymous={len(self._anonymous)}, "
            f"users={len(self._users)}, patterns={len(self._patterns)})"
        )


def _check_rules(
    rules: Sequence[AclRule], deny_everything: bool, topic: str, wanted: Access
) -> bool:
    if deny_everything:
        return False
    topic_levels = topic.split("/")
    granted = False
    for rule in rules:
        if not matches(rule.levels, topic_levels):
            continue
        if rule.deny:
            return False  # deny wins
        if rule.access & wanted:
            granted = True
    return granted


def _check_subscription(rules: Sequence[AclRule], deny_everything: bool, topic_filter: str) -> bool:
    if deny_everything:
        return False
    filter_levels = topic_filter.split("/")
    granted = False
    for rule in rules:
        if not covers(rule.levels, filter_levels):
            continue
        if rule.deny:
            return False
        if rule.access & Access.READ:
            granted = True
    return granted


class ClientAcl:
    """One client's ACL, resolved at CONNECT so per-message checks do no pattern work.

    ``rules`` is None for the allow-all ACL (no ``acl_file``); ``client_id`` names the one
    connection-state topic the client may write (see ``is_bridge_state_topic``).
    """

    __slots__ = ("_deny_everything", "_own_state_topic", "_rules")

    def __init__(
        self, rules: Sequence[AclRule] | None, deny_everything: bool, client_id: str = ""
    ) -> None:
        self._rules = None if rules is None else tuple(rules)
        self._deny_everything = deny_everything
        self._own_state_topic = f"$SYS/broker/connection/{client_id}/state" if client_id else None

    @property
    def allows_everything(self) -> bool:
        """True for the allow-all ACL: delivery needs no per-message check."""
        return self._rules is None

    def can_publish(self, topic: str, *, bridge: bool = False) -> bool:
        """See ``Acl.can_publish``: never to ``$`` topics ([MQTT-4.7.2-1]), except a
        connection state: any name for a bridge (``bridge``: connected with the bridge bit),
        the client's own client id for any other client."""
        if topic.startswith("$") and not (
            topic == self._own_state_topic or (bridge and is_bridge_state_topic(topic))
        ):
            return False
        if self._rules is None:
            return True
        return _check_rules(self._rules, self._deny_everything, topic, Access.WRITE)

    def can_receive(self, topic: str) -> bool:
        """See ``Acl.can_receive``."""
        if self._rules is None:
            return True
        return _check_rules(self._rules, self._deny_everything, topic, Access.READ)

    def can_subscribe(self, topic_filter: str) -> bool:
        """See ``Acl.can_subscribe``."""
        if self._rules is None:
            return True
        return _check_subscription(self._rules, self._deny_everything, topic_filter)
