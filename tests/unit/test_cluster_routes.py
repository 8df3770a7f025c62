"""The cluster route table (``mqttd.cluster.routes``), pure: ordinary routes and shared
subscription groups by node."""

from __future__ import annotations

from mqttd.cluster.routes import ClusterRoutes
from mqttd.subscription import shared_key


def test_ordinary_routes_and_counts() -> None:
    routes = ClusterRoutes("me")
    assert routes.local_added("a/+")  # the first subscription registers the route
    assert not routes.local_added("a/+")
    assert not routes.local_removed("a/+")
    assert routes.local_removed("a/+")  # the last one removes it
    routes.add("n1", "a/#")
    routes.add("n2", "a/b")
    routes.add("me", "a/b")  # this node's own route is not in the table
    assert sorted(routes.nodes_for("a/b")) == ["n1", "n2"]
    routes.remove("n2", "a/b")
    assert list(routes.nodes_for("a/b")) == ["n1"]


def test_shared_groups_list_the_nodes_with_members() -> None:
    """A shared route is its group under its filter: ``targets`` lists each matching group
    with its nodes, apart from the nodes with ordinary subscribers."""
    routes = ClusterRoutes("me")
    routes.add("n1", "$share/g/jobs/+")
    routes.add("n2", "$share/g/jobs/+")
    routes.add("n2", "$share/h/jobs/#")
    routes.add("n3", "jobs/1")
    nodes, groups = routes.targets("jobs/1")
    assert nodes == ["n3"]
    assert {k: sorted(v) for k, v in groups.items()} == {
        shared_key("g", "jobs/+"): ["n1", "n2"],
        shared_key("h", "jobs/#"): ["n2"],
    }
    assert list(routes.nodes_for("jobs/1")) == ["n3"]
    routes.remove("n1", "$share/g/jobs/+")
    _, groups = routes.targets("jobs/1")
    assert groups[shared_key("g", "jobs/+")] == ["n2"]
    routes.replace([("n4", "$share/g/jobs/+")])
    assert routes.targets("jobs/2") == ([], {shared_key("g", "jobs/+"): ["n4"]})
