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
"""

from __future__ import annotations

from collections.abc import Iterable

from mqttd.topics import TopicTree

__all__ = ["ClusterRoutes"]


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
            self._remote.subscribe(topic_filter, node_id, 0)

    def remove(self, node_id: str, topic_filter: str) -> None:
        """The route (``topic_filter`` -> ``node_id``) is gone."""
        if node_id != self.node_id:
            self._remote.unsubscribe(topic_filter, node_id)

    def replace(self, routes: Iterable[tuple[str, str]]) -> None:
        """Start over from a snapshot of (node id, filter) pairs (start-up, resync)."""
        self._remote = TopicTree()
        for node_id, topic_filter in routes:
            self.add(node_id, topic_filter)

    def nodes_for(self, topic: str) -> Iterable[str]:
        """The other nodes with a subscriber matching ``topic``."""
        return self._remote.matches(topic).keys()

    def __len__(self) -> int:
        """The number of (filter, other node) routes known."""
        return len(self._remote)
