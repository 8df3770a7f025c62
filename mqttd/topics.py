"""Topic names, topic filters, and the subscription tree (MQTT 3.1.1 section 4.7).

Validation here is shared by the decoder (bad names/filters are malformed packets) and by the
configuration (ACL filters).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, cast

from mqttd.errors import MalformedPacket

#: Topics whose subscribers ``TopicTree.matches`` remembers (cleared whole when full).
MATCH_CACHE_SIZE = 10_000
#: ... and the most bytes it may hold, counted as topic length + ``_CACHE_ENTRY_BYTES`` per
#: entry + ``_CACHE_MATCH_BYTES`` per matching client: 5,000 distinct 65 KB topics must not
#: pin 320 MB after their publisher has gone.
MATCH_CACHE_BYTES = 4 * 1024 * 1024
_CACHE_ENTRY_BYTES = 160  # the key's str header, the dict slot, the result mapping
_CACHE_MATCH_BYTES = 64  # one (client id, QoS) entry of a result
#: The shared result for a topic nobody matches (an empty dict per cached topic is 64 bytes).
_NO_MATCH: Mapping[str, int] = MappingProxyType({})

#: Longest topic in UTF-8 bytes: the 2-byte length prefix allows no more ([MQTT-4.7.3-3]).
MAX_TOPIC_BYTES = 65_535


def validate_topic_name(topic: str) -> None:
    """Check a PUBLISH Topic Name (already decoded from valid UTF-8 without U+0000).

    Raises:
        MalformedPacket: empty ([MQTT-4.7.3-1]) or containing a wildcard ([MQTT-3.3.2-2],
            [MQTT-4.7.1-1]).
    """
    if not topic:
        raise MalformedPacket("empty_topic_name")  # [MQTT-4.7.3-1]
    if "+" in topic or "#" in topic:
        raise MalformedPacket("wildcard_in_topic_name")  # [MQTT-3.3.2-2] [MQTT-4.7.1-1]


def validate_topic_filter(topic_filter: str) -> None:
    """Check a SUBSCRIBE/UNSUBSCRIBE Topic Filter.

    Invalid wildcard placement is treated as a malformed packet (the connection is closed), as
    Mosquitto does; the spec leaves the reaction open.

    Raises:
        MalformedPacket: empty ([MQTT-4.7.3-1]), ``#`` not alone in the last level
            ([MQTT-4.7.1-2]), or ``+`` not alone in its level ([MQTT-4.7.1-3]).
    """
    if not topic_filter:
        raise MalformedPacket("empty_topic_filter")  # [MQTT-4.7.3-1]
    if "+" not in topic_filter and "#" not in topic_filter:
        return
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != last):
            raise MalformedPacket("misplaced_multi_level_wildcard")  # [MQTT-4.7.1-2]
        if "+" in level and level != "+":
            raise MalformedPacket("misplaced_single_level_wildcard")  # [MQTT-4.7.1-3]


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether the valid filter ``topic_filter`` matches the topic name ``topic`` (4.7), as
    ``TopicTree.match`` decides, for one filter."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False  # [MQTT-4.7.2-1]
    levels = topic.split("/")
    parts = topic_filter.split("/")
    for index, part in enumerate(parts):
        if part == "#":
            return True  # also matches the parent level: index may equal len(levels)
        if index >= len(levels) or (part != "+" and part != levels[index]):
            return False
    return len(parts) == len(levels)


# Theory of operation (TopicTree): a trie keyed by topic level. Each node keeps its literal
# children in a dict, the ``+`` child in its own slot, the subscribers of filters ending at the
# node in ``subs`` and those of filters ending in ``/#`` right below it in ``hash_subs`` (a ``#``
# level is always last, [MQTT-4.7.1-2], so it needs no node of its own). ``match`` walks the topic
# level by level, carrying the set of nodes reached so far: at most one literal and one ``+`` step
# per node and level, so its cost depends on the topic's depth and on the matching filters,
# never on the number of subscriptions. Leaves hold client ids (session keys), never connection
# objects: a client-id takeover changes no node. Empty nodes are pruned on unsubscribe, so the
# tree's size follows the live subscriptions.

#: Shared "no children" mapping: most nodes are leaves, and an empty dict per leaf would cost 64
#: bytes each. It is read-only (any write raises), and is swapped for a real dict on the first
#: insertion; typed as a dict so lookups on the hot path need no casts.
_NO_CHILDREN = cast("dict[str, Any]", MappingProxyType({}))


class _Node:
    """One level of the subscription trie."""

    __slots__ = ("children", "hash_subs", "plus", "subs")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = _NO_CHILDREN  # literal next level -> node
        self.plus: _Node | None = None  # the ``+`` next level
        self.subs: dict[str, int] | None = None  # filters ending here: client id -> QoS
        self.hash_subs: dict[str, int] | None = None  # filters ending in ``/#`` here

    def is_empty(self) -> bool:
        return not (self.children or self.plus or self.subs or self.hash_subs)


#: The merged value of a client with several matching subscriptions, one of them at least
#: with more than a QoS (``mqttd.subscription``: its options decide per subscription).
OVERLAP = 1 << 62


def _merge_max(result: dict[str, int], subs: dict[str, int]) -> None:
    """Fold ``subs`` into ``result`` keeping the maximum QoS per client ([MQTT-3.3.5-1]);
    a client matched twice where either value is more than a QoS (0-2) becomes ``OVERLAP``."""
    if not result:
        result.update(subs)
        return
    get = result.get
    for client_id, value in subs.items():
        old = get(client_id)
        if old is None:
            result[client_id] = value
        elif old > 2 or value > 2:
            result[client_id] = OVERLAP
        elif old < value:
            result[client_id] = value


class TopicTree:
    """Subscriptions: topic filter -> {client_id: granted QoS}, matchable by topic name.

    Leaves hold client ids, never connection objects, so a client-id takeover changes no tree
    node. Matching follows MQTT 3.1.1 section 4.7: ``+`` matches exactly one level (possibly
    empty), ``#`` matches the parent level and any number of child levels, filters starting
    with a wildcard never match topic names starting with ``$`` ([MQTT-4.7.2-1]), and levels
    are compared code point by code point with no normalisation ([MQTT-4.7.3-4]).
    """

    __slots__ = ("_cache", "_cache_bytes", "_count", "_root")

    def __init__(self) -> None:
        self._root = _Node()
        self._count = 0
        #: topic -> match result, valid until the next subscription change (``matches``)
        self._cache: dict[str, Mapping[str, int]] = {}
        self._cache_bytes = 0

    def __len__(self) -> int:
        """The number of (topic filter, client id) subscriptions."""
        return self._count

    def subscribe(self, topic_filter: str, client_id: str, qos: int) -> bool:
        """Add ``client_id``'s subscription to ``topic_filter`` with granted ``qos`` (0-2).

        A subscription to a filter identical to one the client already holds replaces it: one
        subscription remains, with the new QoS ([MQTT-3.8.4-3]).

        Returns:
            True if the subscription is new, False if it replaced an existing one.

        Raises:
            MalformedPacket: ``topic_filter`` is not a valid filter (see
                ``validate_topic_filter``); the tree is left unchanged.
        """
        validate_topic_filter(topic_filter)
        levels = topic_filter.split("/")
        multi = levels[-1] == "#"
        if multi:
            levels.pop()
        node = self._root
        for level in levels:
            if level == "+":
                child = node.plus
                if child is None:
                    child = node.plus = _Node()
            else:
                child = node.children.get(level)
                if child is None:
                    if node.children is _NO_CHILDREN:
                        node.children = {}
                    child = node.children[level] = _Node()
            node = child
        if multi:
            subs = node.hash_subs
            if subs is None:
                subs = node.hash_subs = {}
        else:
            subs = node.subs
            if subs is None:
                subs = node.subs = {}
        is_new = client_id not in subs
        subs[client_id] = qos  # [MQTT-3.8.4-3] replace, keep one
        self._clear_cache()
        if is_new:
            self._count += 1
        return is_new

    def unsubscribe(self, topic_filter: str, client_id: str) -> bool:
        """Remove ``client_id``'s subscription to exactly ``topic_filter`` ([MQTT-3.10.4-1]).

        The filter is compared character by character with the subscribed ones (``a/+`` does
        not remove ``a/b``); nodes left empty are pruned.

        Returns:
            True if a subscription was removed, False if there was none (nothing changes).
        """
        levels = topic_filter.split("/")
        multi = levels[-1] == "#"
        if multi:
            levels.pop()
        node = self._root
        path: list[tuple[_Node, str]] = []
        for level in levels:
            child = node.plus if level == "+" else node.children.get(level)
            if child is None:
                return False
            path.append((node, level))
            node = child
        subs = node.hash_subs if multi else node.subs
        if subs is None or client_id not in subs:
            return False
        del subs[client_id]
        self._clear_cache()
        if not subs:
            if multi:
                node.hash_subs = None
            else:
                node.subs = None
        self._count -= 1
        # Prune the branch bottom-up while nodes are empty; the root always stays.
        while path and node.is_empty():
            parent, level = path.pop()
            if level == "+":
                parent.plus = None
            else:
                children = parent.children
                del children[level]
                if not children:
                    parent.children = _NO_CHILDREN
            node = parent
        return True

    def matches(self, topic: str) -> Mapping[str, int]:
        """Like ``match``, but cached per topic until the subscriptions change: the result is
        shared and must not be modified. Routing the same topic again costs one dict lookup.
        """
        result = self._cache.get(topic)
        if result is None:
            result = self.match(topic) or _NO_MATCH
            cost = len(topic) + _CACHE_ENTRY_BYTES + _CACHE_MATCH_BYTES * len(result)
            if len(self._cache) >= MATCH_CACHE_SIZE or self._cache_bytes + cost > MATCH_CACHE_BYTES:
                self._clear_cache()
            if cost <= MATCH_CACHE_BYTES:
                self._cache[topic] = result
                self._cache_bytes += cost
        return result

    def _clear_cache(self) -> None:
        self._cache.clear()
        self._cache_bytes = 0

    def match(self, topic: str) -> dict[str, int]:
        """Every client with a filter matching the topic name ``topic``, with its QoS.

        A client whose subscriptions overlap appears once, with the maximum QoS granted over
        all its matching filters ([MQTT-3.3.5-1]).

        Returns:
            A new dict client id -> granted QoS (empty when nobody matches).
        """
        result: dict[str, int] = {}
        levels = topic.split("/")
        root = self._root
        if topic.startswith("$"):
            # [MQTT-4.7.2-1] filters starting with + or # never match a $ topic: skip the
            # root's wildcard slots and follow the literal first level only.
            first = root.children.get(levels[0])
            if first is None:
                return result
            nodes = [first]
            del levels[0]
        else:
            nodes = [root]
        for level in levels:
            following: list[_Node] = []
            for node in nodes:
                if node.hash_subs is not None:  # '#' below node matches this and deeper levels
                    _merge_max(result, node.hash_subs)
                child = node.children.get(level)
                if child is not None:
                    following.append(child)
                if node.plus is not None:  # '+' matches exactly one level, even an empty one
                    following.append(node.plus)
            if not following:
                return result
            nodes = following
        for node in nodes:
            if node.subs is not None:
                _merge_max(result, node.subs)
            if node.hash_subs is not None:  # 'a/#' also matches the parent level 'a'
                _merge_max(result, node.hash_subs)
        return result

    def _node_count(self) -> int:
        """The number of trie nodes, root included (for leak checks in tests)."""
        count = 0
        stack = [self._root]
        while stack:
            node = stack.pop()
            count += 1
            stack.extend(node.children.values())
            if node.plus is not None:
                stack.append(node.plus)
        return count
