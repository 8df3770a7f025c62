"""The cluster route table: which nodes have subscribers for which topic filters, pure.

Theory of operation: a message must reach every node with a matching subscriber, and never a
node without one (broadcasting every message to every node would not scale). Each node counts
its own subscriptions per filter (``local_added``/``local_removed``): the first subscription to
a filter on this node registers the route (filter -> this node) cluster-wide, the last one
removes it. Every node keeps a copy of the whole table as a ``TopicTree`` whose "clients" are
node ids, updated from the route log in Redis; ``nodes_for(topic)`` is then one cached trie
walk per topic, like local routing. A route that is stale for a moment costs a node a message
it drops; a route that is missing would lose messages, which is why a SUBACK waits until every
live node has applied the route its subscription added (``mqttd.cluster.node``).

Shared subscriptions: a node with members of the group ``$share/{group}/{filter}`` registers
that string as its route. In the table it is a leaf under ``filter`` keyed by the group and the
node, so ``targets(topic)`` gives, beside the nodes with ordinary subscribers, every group with
the nodes that have members of it: the publishing node picks one node per group, so a message
reaches one member of each group cluster-wide ([MQTT-4.8.2-3] over several nodes).
"""

from __future__ import annotations

from collections.abc import Iterable

from mqttd.subscription import SHARED, parse_shared, shared_key
from mqttd.topics import TopicTree

__all__ = ["ClusterRoutes"]

#: Separates a shared group's key from the node id in a route table leaf (U+0000 is never in
#: a topic filter, a group name or a client or node id).
_NODE = "\x00@"


class ClusterRoutes:
    """This node's view of every node's subscribed filters, and its own filter counts.

    Args:
        node_id: this node; ``nodes_for`` never returns it (local routing covers it).
    """

    __slots__ = ("_local", "_remote", "node_id")

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._remote = TopicTree()
        #: filter -> subscriptions to it on this node
        self._local: dict[str, int] = {}

    # -- this node's filters --------------------------------------------------------------------

    def local_added(self, topic_filter: str) -> bool:
        """A session on this node subscribed to ``topic_filter``; True when the node's route
        must now be registered (the first such subscription)."""
        count = self._local.get(topic_filter, 0)
        self._local[topic_filter] = count + 1
        return count == 0

    def local_removed(self, topic_filter: str) -> bool:
        """A subscription to ``topic_filter`` on this node went; True when the node's route
        must now be removed (it was the last)."""
        count = self._local.get(topic_filter, 0)
        if count <= 1:
            self._local.pop(topic_filter, None)
            return count == 1
        self._local[topic_filter] = count - 1
        return False

    def local_filters(self) -> Iterable[str]:
        """Every filter this node has subscribers for (to register again after a resync)."""
        return self._local.keys()

    # -- every node's routes ----------------------------------------------------------------------

    def add(self, node_id: str, topic_filter: str) -> None:
        """The route (``topic_filter`` -> ``node_id``) exists."""
        if node_id != self.node_id:
            leaf, key, value = _leaf(topic_filter, node_id)
            self._remote.subscribe(leaf, key, value)

    def remove(self, node_id: str, topic_filter: str) -> None:
        """The route (``topic_filter`` -> ``node_id``) is gone."""
        if node_id != self.node_id:
            leaf, key, _ = _leaf(topic_filter, node_id)
            self._remote.unsubscribe(leaf, key)

    def replace(self, routes: Iterable[tuple[str, str]]) -> None:
        """Start over from a snapshot of (node id, filter) pairs (start-up, resync)."""
        self._remote = TopicTree()
        for node_id, topic_filter in routes:
            self.add(node_id, topic_filter)

    def nodes_for(self, topic: str) -> Iterable[str]:
        """The other nodes with a subscriber matching ``topic`` (ordinary subscriptions only;
        ``targets`` adds the shared groups)."""
        return [key for key, value in self._remote.matches(topic).items() if value != SHARED]

    def targets(self, topic: str) -> tuple[list[str], dict[str, list[str]]]:
        """The other nodes with an ordinary subscriber matching ``topic``, and each shared
        group matching it (by its key, ``mqttd.subscription.shared_key``) with the other
        nodes that have members of it."""
        nodes: list[str] = []
        groups: dict[str, list[str]] = {}
        for key, value in self._remote.matches(topic).items():
            if value == SHARED:
                group, _, node_id = key.rpartition(_NODE)
                groups.setdefault(group, []).append(node_id)
            else:
                nodes.append(key)
        return nodes, groups

    def __len__(self) -> int:
        """The number of (filter, other node) routes known."""
        return len(self._remote)


def _leaf(topic_filter: str, node_id: str) -> tuple[str, str, int]:
    """Where a route goes in the table: (filter, key, value); a shared group's route is keyed
    by its group and the node, under the group's filter."""
    shared = parse_shared(topic_filter)
    if shared is None:
        return topic_filter, node_id, 0
    group, inner = shared
    return inner, shared_key(group, inner) + _NODE + node_id, SHARED
