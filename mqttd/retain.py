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

    __slots__ = ("children", "message", "topic", "version")

    def __init__(self) -> None:
        self.children: dict[str, _Node[T]] = _NO_CHILDREN
        self.topic = ""  # the full topic name, set while ``message`` is not None
        self.message: T | None = None
        self.version = 0  # ``RetainStore.version`` when ``message`` was set


class RetainStore(Generic[T]):
    """The last retained message per topic name, matchable by topic filter."""

    __slots__ = ("_count", "_root", "version")

    def __init__(self) -> None:
        # The root stands for "no level yet": every topic, even "", has at least one level.
        self._root: _Node[T] = _Node()
        self._count = 0
        #: counts the messages ever set: ``iter_matching(upto=...)`` skips newer ones
        self.version = 0

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
        self.version += 1
        node.version = self.version

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
        return list(self.iter_matching(topic_filter))

    def iter_matching(
        self, topic_filter: str, upto: int | None = None
    ) -> Iterator[tuple[str, T]]:
        """Like ``matching``, but lazily, and safe to resume after the store has changed.

        Each node's children are copied when the walk reaches it, so ``set`` and deletes
        between two ``next()`` calls never break the walk: a topic deleted meanwhile is
        skipped, one added meanwhile may or may not be seen. ``upto`` (a ``version``) skips
        messages set after it.

        Raises:
            MalformedPacket: ``topic_filter`` is not a valid filter (at once, not lazily).
        """
        validate_topic_filter(topic_filter)
        return self._walk(topic_filter.split("/"), self.version if upto is None else upto)

    def _walk(self, levels: list[str], upto: int) -> Iterator[tuple[str, T]]:
        last = len(levels)
        # A stack of (depth, nodes at that depth); depth -1 = whole subtrees below a '#'.
        stack: list[tuple[int, Iterator[_Node[T]]]] = [(0, iter((self._root,)))]
        while stack:
            depth, nodes = stack[-1]
            node = next(nodes, None)
            if node is None:
                stack.pop()
                continue
            if depth < 0 or depth == last:
                message = node.message
                if message is not None and node.version <= upto:
                    yield node.topic, message
                if depth < 0 and node.children:
                    stack.append((-1, iter(list(node.children.values()))))
                continue
            level = levels[depth]
            if level == "#" or level == "+":
                # [MQTT-4.7.2-1] a wildcard first level never matches a topic starting with '$'.
                children = [
                    child
                    for key, child in node.children.items()
                    if depth or not key.startswith("$")
                ]
                if level == "#":  # always the last level ([MQTT-4.7.1-2])
                    message = node.message  # 'a/#' matches the parent level 'a' too
                    if depth and message is not None and node.version <= upto:
                        yield node.topic, message
                    if children:
                        stack.append((-1, iter(children)))
                elif children:
                    stack.append((depth + 1, iter(children)))
            else:
                child = node.children.get(level)
                if child is not None:
                    stack.append((depth + 1, iter((child,))))

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
