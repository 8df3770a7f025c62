"""The retained-message store (MQTT 3.1.1 section 3.3.1.3), pure and synchronous.

Theory of operation: retained messages live in a trie keyed by topic level, so that a new
subscription's filter ([MQTT-3.3.1-6]) walks only the branches it can match: a literal level
follows one child, ``+`` every child, and ``#`` takes the node reached (the parent level) and its
whole subtree. Filters starting with a wildcard skip first levels starting with ``$``
([MQTT-4.7.2-1]); levels compare code point by code point ([MQTT-4.7.3-4]). Storing ``None``
deletes a topic's message and prunes the nodes left empty, so the trie holds only live topics.

The store is generic over the message type: the broker keeps ``Message`` objects, tests may
keep anything. What to retain (a zero-byte payload deletes, [MQTT-3.3.1-10], [MQTT-3.3.1-11])
is the caller's decision: it passes ``None`` to delete.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import MappingProxyType
from typing import Any, Generic, TypeVar, cast

from mqttd.topics import validate_topic_filter

T = TypeVar("T")

#: Shared read-only "no children" mapping for leaves (see ``topics._NO_CHILDREN``).
_NO_CHILDREN = cast("dict[str, Any]", MappingProxyType({}))


class _Node(Generic[T]):
    """One topic level; holds the retained message of the topic ending here, if any."""

    __slots__ = ("children", "message", "topic")

    def __init__(self) -> None:
        self.children: dict[str, _Node[T]] = _NO_CHILDREN
        self.topic = ""  # the full topic name, set while ``message`` is not None
        self.message: T | None = None


class RetainStore(Generic[T]):
    """The last retained message per topic name, matchable by topic filter."""

    __slots__ = ("_count", "_root")

    def __init__(self) -> None:
        # The root stands for "no level yet": every topic, even "", has at least one level.
        self._root: _Node[T] = _Node()
        self._count = 0

    def __len__(self) -> int:
        """The number of topics with a retained message."""
        return self._count

    def set(self, topic: str, message: T | None) -> None:
        """Make ``message`` the retained message of ``topic``, replacing any previous one.

        ``None`` removes the topic's retained message, so future subscribers get none
        ([MQTT-3.3.1-10], [MQTT-3.3.1-11]); removing an absent one changes nothing.
        """
        if message is None:
            self._delete(topic)
            return
        node = self._root
        for level in topic.split("/"):
            child = node.children.get(level)
            if child is None:
                if node.children is _NO_CHILDREN:
                    node.children = {}
                child = node.children[level] = _Node()
            node = child
        if node.message is None:
            self._count += 1
            node.topic = topic
        node.message = message

    def _delete(self, topic: str) -> None:
        node = self._root
        path: list[tuple[_Node[T], str]] = []
        for level in topic.split("/"):
            child = node.children.get(level)
            if child is None:
                return
            path.append((node, level))
            node = child
        if node.message is None:
            return
        node.message = None
        node.topic = ""
        self._count -= 1
        while path and node.message is None and not node.children:
            parent, level = path.pop()
            children = parent.children
            del children[level]
            if not children:
                parent.children = _NO_CHILDREN
            node = parent

    def get(self, topic: str) -> T | None:
        """The retained message of exactly ``topic``, or None."""
        node = self._root
        for level in topic.split("/"):
            child = node.children.get(level)
            if child is None:
                return None
            node = child
        return node.message

    def matching(self, topic_filter: str) -> list[tuple[str, T]]:
        """The (topic, message) pairs whose topic name matches ``topic_filter``.

        Only the branches the filter can match are visited; the order is unspecified.

        Raises:
            MalformedPacket: ``topic_filter`` is not a valid filter.
        """
        validate_topic_filter(topic_filter)
        found: list[tuple[str, T]] = []
        nodes = [self._root]
        for depth, level in enumerate(topic_filter.split("/")):
            # [MQTT-4.7.2-1] a wildcard first level never matches a topic starting with '$'.
            skip_dollar = depth == 0
            if level == "#":  # always the last level ([MQTT-4.7.1-2])
                for node in nodes:
                    if node.message is not None:  # 'a/#' matches the parent level 'a' too
                        found.append((node.topic, node.message))
                    self._collect_below(node, skip_dollar, found)
                return found
            following: list[_Node[T]] = []
            if level == "+":
                for node in nodes:
                    for key, child in node.children.items():
                        if not (skip_dollar and key.startswith("$")):
                            following.append(child)
            else:
                for node in nodes:
                    child = node.children.get(level)
                    if child is not None:
                        following.append(child)
            if not following:
                return found
            nodes = following
        for node in nodes:
            if node.message is not None:
                found.append((node.topic, node.message))
        return found

    @staticmethod
    def _collect_below(node: _Node[T], skip_dollar: bool, found: list[tuple[str, T]]) -> None:
        """Append every message strictly below ``node`` (iteratively: topics may be deep)."""
        stack = [
            child
            for key, child in node.children.items()
            if not (skip_dollar and key.startswith("$"))
        ]
        while stack:
            current = stack.pop()
            if current.message is not None:
                found.append((current.topic, current.message))
            stack.extend(current.children.values())

    def items(self) -> Iterator[tuple[str, T]]:
        """Every (topic, message) pair, for persistence and snapshots.

        The store must not be modified while the iterator is in use.
        """
        stack = [self._root]
        while stack:
            node = stack.pop()
            if node.message is not None:
                yield node.topic, node.message
            stack.extend(node.children.values())

    def _node_count(self) -> int:
        """The number of trie nodes, root included (for leak checks in tests)."""
        count = 0
        stack = [self._root]
        while stack:
            node = stack.pop()
            count += 1
            stack.extend(node.children.values())
        return count
