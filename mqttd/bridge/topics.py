"""A bridge's topic mapping, pure: which topics cross, in which direction, under which name.

Each ``[[bridges.topics]]`` table is Mosquitto's ``topic pattern direction qos local-prefix
remote-prefix``: the filter ``local_prefix + pattern`` on this broker corresponds to
``remote_prefix + pattern`` on the remote one, so a message crossing the bridge keeps the part
of its topic after the prefix and swaps the prefix. A table without a pattern maps one topic
name onto another (Mosquitto's ``topic "" out 0 local/name remote/name``).

Matching reuses ``TopicTree`` (so ``+``, ``#`` and the ``$`` rule of [MQTT-4.7.2-1] behave as
for subscriptions). When several tables match a topic, the first one in the file decides how it
is renamed, as in Mosquitto.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mqttd.config import BridgeTopicConfig
from mqttd.topics import TopicTree

__all__ = ["TopicMap", "TopicRoute"]


@dataclass(frozen=True, slots=True)
class TopicRoute:
    """One table of the mapping, in one direction: topics matching ``source_filter`` get
    ``source_prefix`` replaced by ``target_prefix``."""

    source_filter: str
    source_prefix: str
    target_prefix: str
    exact: bool  # no pattern: the prefixes are whole topic names

    def rename(self, topic: str) -> str | None:
        """The topic's name on the other side, or None when the prefix does not apply (a
        ``prefix/#`` filter also matches the parent level ``prefix``, which has no name
        there)."""
        if self.exact:
            return self.target_prefix
        if not topic.startswith(self.source_prefix):
            return None
        renamed = self.target_prefix + topic[len(self.source_prefix) :]
        return renamed or None


class _Direction:
    """The routes of one direction, matched in file order."""

    __slots__ = ("_routes", "_tree")

    def __init__(self, routes: list[TopicRoute]) -> None:
        self._routes = routes
        self._tree = TopicTree()
        for index, route in enumerate(routes):
            self._tree.subscribe(route.source_filter, str(index), 0)

    def rename(self, topic: str) -> str | None:
        matches = self._tree.matches(topic)
        if not matches:
            return None
        for index in sorted(int(key) for key in matches):
            renamed = self._routes[index].rename(topic)
            if renamed is not None:
                return renamed
        return None


class TopicMap:
    """The whole mapping of one bridge.

    Args:
        topics: the bridge's ``[[bridges.topics]]`` tables, in file order.
    """

    __slots__ = ("_in", "_out", "identity_out", "in_subscriptions", "out_subscriptions")

    def __init__(self, topics: Iterable[BridgeTopicConfig]) -> None:
        out_routes: list[TopicRoute] = []
        in_routes: list[TopicRoute] = []
        #: local filter -> QoS: what the bridge's local session subscribes to
        self.out_subscriptions: dict[str, int] = {}
        #: (remote filter, QoS) in file order: what the bridge subscribes to on the remote
        self.in_subscriptions: list[tuple[str, int]] = []
        seen_in: dict[str, int] = {}
        for topic in topics:
            exact = not topic.pattern
            local, remote = topic.local_filter, topic.remote_filter
            if topic.direction in ("out", "both"):
                out_routes.append(TopicRoute(local, topic.local_prefix, topic.remote_prefix, exact))
                self.out_subscriptions[local] = max(topic.qos, self.out_subscriptions.get(local, 0))
            if topic.direction in ("in", "both"):
                in_routes.append(TopicRoute(remote, topic.remote_prefix, topic.local_prefix, exact))
                if remote in seen_in:  # one SUBSCRIBE entry per filter, at the highest QoS
                    index = seen_in[remote]
                    self.in_subscriptions[index] = (
                        remote,
                        max(topic.qos, self.in_subscriptions[index][1]),
                    )
                else:
                    seen_in[remote] = len(self.in_subscriptions)
                    self.in_subscriptions.append((remote, topic.qos))
        self._out = _Direction(out_routes)
        self._in = _Direction(in_routes)
        #: every outgoing topic keeps its name (all out prefixes equal): nothing to rename
        self.identity_out = all(
            r.source_prefix == r.target_prefix and not r.exact for r in out_routes
        )

    def to_remote(self, local_topic: str) -> str | None:
        """The remote name of a local message's topic; None: no ``out`` table renames it.

        The bridge's session only ever gets topics its ``out`` filters match, so when no
        table renames anything the name is kept without a lookup.
        """
        if self.identity_out:
            return local_topic
        return self._out.rename(local_topic)

    def to_local(self, remote_topic: str) -> str | None:
        """The local name of a message received from the remote; None: no ``in`` table
        matches it (the remote sent what the bridge did not ask for)."""
        return self._in.rename(remote_topic)
