"""Subscription options and shared subscriptions, without sockets: the options int, the
``$share/{group}/{filter}`` syntax (4.8.2), one member per group per message, No Local and
Retain As Published in routing."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttd.broker import Broker
from mqttd.config import LimitsConfig
from mqttd.errors import MalformedPacket
from mqttd.session import Session
from mqttd.subscription import (
    SharedGroup,
    granted_qos,
    make_options,
    parse_shared,
    retain_handling,
    subscription_id,
)
from mqttd.topics import OVERLAP, TopicTree


def broker(**limits: object) -> Broker:
    return Broker(dataclasses.replace(LimitsConfig(), **limits))  # type: ignore[arg-type]


def online(b: Broker, client_id: str) -> Session:
    session, _ = b.open_session(client_id, True)
    session.attach(lambda: None)
    return session


def publishes(session: Session) -> list[tuple[int, bool, bytes]]:
    """(QoS, RETAIN, payload) of every PUBLISH in the session's outbox, taken from it."""
    data = session.take_outbox()
    out = []
    while data:
        size, shift, index = 0, 0, 1
        while True:
            byte = data[index]
            size |= (byte & 0x7F) << shift
            index += 1
            shift += 7
            if not byte & 0x80:
                break
        packet, data = data[: index + size], data[index + size :]
        if packet[0] >> 4 == 3:
            qos = (packet[0] >> 1) & 3
            topic_length = int.from_bytes(packet[index : index + 2], "big")
            start = index + 2 + topic_length + (2 if qos else 0)
            out.append((qos, bool(packet[0] & 1), packet[start:]))
    return out


@settings(max_examples=200, deadline=None)
@given(
    qos=st.integers(0, 2),
    no_local=st.booleans(),
    rap=st.booleans(),
    handling=st.integers(0, 2),
    sub_id=st.integers(0, 268_435_455),
)
def test_options_round_trip(
    qos: int, no_local: bool, rap: bool, handling: int, sub_id: int
) -> None:
    """The options int keeps every field; without MQTT 5 options it is the QoS itself."""
    options = make_options(
        qos,
        no_local=no_local,
        retain_as_published=rap,
        retain_handling=handling,
        subscription_id=sub_id,
    )
    assert granted_qos(options) == qos
    assert retain_handling(options) == handling
    assert subscription_id(options) == sub_id
    assert bool(options & 4) == no_local
    assert bool(options & 8) == rap
    if not (no_local or rap or handling or sub_id):
        assert options == qos
    assert options < OVERLAP


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        ("$share/g/a/b", ("g", "a/b")),
        ("$share/group-1/#", ("group-1", "#")),
        ("$share/g/+/x", ("g", "+/x")),
        ("$share/g//", ("g", "/")),
        ("a/$share/g/x", None),
        ("$shared/g/x", None),
        ("$SYS/#", None),
    ],
)
def test_shared_filter_syntax(topic_filter: str, expected: tuple[str, str] | None) -> None:
    """4.8.2: ``$share/``, a ShareName of one character or more, ``/``, a Topic Filter."""
    assert parse_shared(topic_filter) == expected


@pytest.mark.parametrize(
    "topic_filter",
    ["$share/", "$share//a", "$share/g", "$share/g/", "$share/g+/a", "$share/#/a", "$share/g/a#"],
)
def test_malformed_shared_filters_are_refused(topic_filter: str) -> None:
    """A ShareName that is empty or holds ``+``/``#``, or a missing or invalid filter after
    it, is a malformed SUBSCRIBE ([MQTT-4.8.2-1], [MQTT-4.8.2-2]; Mosquitto closes too)."""
    with pytest.raises(MalformedPacket):
        parse_shared(topic_filter)


def test_shared_group_takes_turns_and_skips_busy_members() -> None:
    """Round robin; a member that cannot take the message now is passed over for one that
    can, then one online, then anyone (a persistent session queues it)."""
    group = SharedGroup("g", "t")
    for member in "abc":
        group.add(member, 1)
    state = {"a": 2, "b": 2, "c": 2}
    picks = [group.pick(state.__getitem__) for _ in range(6)]
    assert picks == ["a", "b", "c", "a", "b", "c"]
    state["b"] = 1  # busy
    assert [group.pick(state.__getitem__) for _ in range(4)] == ["a", "c", "a", "c"]
    state.update(a=0, c=1)  # a offline, c busy: b and c are online, the next online goes
    assert group.pick(state.__getitem__) == "b"
    assert group.pick(state.__getitem__) == "c"
    state.update(a=0, b=0, c=0)
    assert group.pick(state.__getitem__) == "a"
    group.remove("b")
    assert [group.pick(state.__getitem__) for _ in range(3)] == ["c", "a", "c"]
    group.remove("a")
    group.remove("c")
    assert group.pick(state.__getitem__) is None


def test_shared_subscription_delivers_each_message_to_one_member() -> None:
    """Each message goes to one member of each group; every group and every ordinary
    subscriber gets every message; retained messages are not sent to a shared subscription."""
    b = broker()
    b.publish("jobs/1", b"old", 1, True)
    workers = [online(b, f"w{i}") for i in range(3)]
    for worker in workers:
        b.subscribe(worker, [("$share/pool/jobs/+", 1)])
        b.deliver_retained(worker, "$share/pool/jobs/+", 1)
    audit = online(b, "audit")
    b.subscribe(audit, [("$share/audit/jobs/#", 0), ("jobs/#", 1)])
    for n in range(9):
        b.publish(f"jobs/{n}", str(n).encode(), 1, False)
    got = [sorted(p for _, _, p in publishes(w)) for w in workers]
    assert [len(g) for g in got] == [3, 3, 3]
    assert sorted(p for g in got for p in g) == [str(n).encode() for n in range(9)]
    assert len(publishes(audit)) == 18  # its shared group's copy and its own subscription's
    for worker in workers:
        b.unsubscribe(worker, ["$share/pool/jobs/+"])
    assert not b.shared.keys() - {k for k in b.shared if "audit" in k}
    b.end_session(audit)
    assert not b.shared
    assert len(b.tree) == 0


def test_shared_group_member_with_a_full_window_is_skipped() -> None:
    """A member whose in-flight window is full is passed over while another has room."""
    b = broker(max_inflight_messages=1)
    slow, fast = online(b, "slow"), online(b, "fast")
    for member in (slow, fast):
        b.subscribe(member, [("$share/g/t", 1)])
    for n in range(4):  # slow never acknowledges; fast acknowledges everything at once
        b.publish("t", bytes([n]), 1, False)
        for packet_id in list(fast.inflight):
            fast.on_puback(packet_id)
    assert [p for _, _, p in publishes(slow)] == [b"\x00"]
    assert not slow.queue
    assert [p for _, _, p in publishes(fast)] == [b"\x01", b"\x02", b"\x03"]


def test_no_local_and_retain_as_published() -> None:
    """No Local: the publisher's own subscription does not get its message ([MQTT-3.8.3-3]);
    Retain As Published keeps RETAIN as sent ([MQTT-3.3.1-12], [MQTT-3.3.1-13])."""
    b = broker()
    me, other = online(b, "me"), online(b, "other")
    b.subscribe(me, [("t", make_options(1, no_local=True))])
    b.subscribe(other, [("t", make_options(1, retain_as_published=True))])
    b.publish("t", b"x", 1, True, publisher="me")
    assert publishes(me) == []
    assert publishes(other) == [(1, True, b"x")]
    b.publish("t", b"y", 1, True, publisher="other")
    assert publishes(me) == [(1, False, b"y")]


def test_overlapping_subscriptions_with_options_deliver_once() -> None:
    """Several matching subscriptions, one with options: one delivery at the highest QoS,
    without the No Local one when the client published it."""
    b = broker()
    me = online(b, "me")
    b.subscribe(me, [("t/#", make_options(2, no_local=True)), ("t/+", 1)])
    assert TopicTree.match(b.tree, "t/x") == {"me": OVERLAP}
    b.publish("t/x", b"other", 2, False, publisher="someone")
    b.publish("t/x", b"mine", 2, False, publisher="me")
    assert publishes(me) == [(2, False, b"other"), (1, False, b"mine")]
