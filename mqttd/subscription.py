"""What a subscription asks for, as one int, and shared subscriptions' groups; pure.

Theory of operation. A subscription is a topic filter and its *options*: the granted QoS and,
from MQTT 5, No Local, Retain As Published and a Subscription Identifier. The options travel as
one ``int`` -- in ``Session.subscriptions``, in the ``TopicTree`` leaves and in the store --
laid out like the SUBSCRIBE options byte (3.8.3.1) with the identifier above it::

    bits 0-1  granted QoS            bit 2  No Local       bit 3  Retain As Published
    bits 4-5  Retain Handling        bits 8+  Subscription Identifier (0 = none)

so a subscription with none of the MQTT 5 options (every MQTT 3.1.1 one) *is* its QoS, 0-2,
and routing keeps its fast path: ``value <= 2`` means "deliver at min(QoS, value), RETAIN 0".

A *shared* subscription ``$share/{group}/{filter}`` (4.8.2; mqttd accepts it from MQTT 3.1.1
and 3.1 clients too, as Mosquitto does) puts one leaf in the tree for the whole group, under
the key ``shared_key(group, filter)`` with the value ``SHARED``; the group's members, in the
order they joined, are a ``SharedGroup``. Each message goes to one member ([MQTT-4.8.2-3]
respects that member's options): the next in turn whose session can take it now, or, when none
can, the next one online, or the next one at all (a persistent session queues it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from mqttd.errors import MalformedPacket
from mqttd.topics import OVERLAP, validate_topic_filter

__all__ = [
    "NO_LOCAL",
    "OVERLAP",
    "RETAIN_AS_PUBLISHED",
    "SHARED",
    "SHARE_PREFIX",
    "SharedGroup",
    "make_options",
    "parse_shared",
    "shared_key",
]

QOS_MASK: Final = 0x03
NO_LOCAL: Final = 0x04
RETAIN_AS_PUBLISHED: Final = 0x08
RETAIN_HANDLING_SHIFT: Final = 4
SUBSCRIPTION_ID_SHIFT: Final = 8

#: The tree value of a shared subscription's group leaf. Like ``OVERLAP`` (a client with
#: several matching subscriptions, at least one with options: the router works the delivery
#: out from ``Session.subscriptions``), it is above any options value a client can ask for,
#: so the router's one ``value > 2`` test catches both with the subscriptions that have options.
SHARED: Final = 1 << 61

SHARE_PREFIX: Final = "$share/"


def make_options(
    qos: int,
    *,
    no_local: bool = False,
    retain_as_published: bool = False,
    retain_handling: int = 0,
    subscription_id: int = 0,
) -> int:
    """The options int of a subscription (see the module docstring)."""
    return (
        qos
        | (NO_LOCAL if no_local else 0)
        | (RETAIN_AS_PUBLISHED if retain_as_published else 0)
        | (retain_handling << RETAIN_HANDLING_SHIFT)
        | (subscription_id << SUBSCRIPTION_ID_SHIFT)
    )


def granted_qos(options: int) -> int:
    """The QoS granted to a subscription."""
    return options & QOS_MASK


def retain_handling(options: int) -> int:
    """Retain Handling (3.8.3.1): 0 send retained messages at subscribe, 1 only if the
    subscription is new, 2 never."""
    return (options >> RETAIN_HANDLING_SHIFT) & 0x03


def subscription_id(options: int) -> int:
    """The Subscription Identifier (0 = none)."""
    return options >> SUBSCRIPTION_ID_SHIFT


def parse_shared(topic_filter: str) -> tuple[str, str] | None:
    """``(group, filter)`` of a shared subscription's filter, None for any other filter.

    Raises:
        MalformedPacket: ``$share/`` without a group name of at least one character free of
            ``/``, ``+`` and ``#``, followed by ``/`` and a valid topic filter (4.8.2); Mosquitto
            closes the connection for these too.
    """
    if not topic_filter.startswith(SHARE_PREFIX):
        return None
    group, slash, inner = topic_filter[len(SHARE_PREFIX) :].partition("/")
    if not group or not slash or "+" in group or "#" in group:
        raise MalformedPacket("invalid_shared_subscription")
    validate_topic_filter(inner)
    return group, inner


def shared_key(group: str, topic_filter: str) -> str:
    """The tree key of a shared group: unique per (group, filter), and never a client id
    (client ids cannot hold U+0000, [MQTT-1.5.3-2])."""
    return f"\x00{group}\x00{topic_filter}"


class SharedGroup:
    """The members of one shared subscription (group, filter), with their options.

    Args:
        group: the ShareName.
        topic_filter: the filter the group subscribes to.
    """

    __slots__ = ("_order", "_turn", "group", "members", "topic_filter")

    def __init__(self, group: str, topic_filter: str) -> None:
        self.group = group
        self.topic_filter = topic_filter
        #: client id -> options
        self.members: dict[str, int] = {}
        self._order: list[str] = []  # the members in the order they joined: the turns
        self._turn = 0

    def add(self, client_id: str, options: int) -> None:
        """``client_id`` joins (or changes its options: it keeps its turn)."""
        if client_id not in self.members:
            self._order.append(client_id)
        self.members[client_id] = options

    def remove(self, client_id: str) -> None:
        """``client_id`` leaves the group."""
        if self.members.pop(client_id, None) is not None:
            index = self._order.index(client_id)
            del self._order[index]
            if index < self._turn:
                self._turn -= 1  # the member whose turn is next keeps it

    def pick(self, can_take: Callable[[str], int]) -> str | None:
        """The member the next message goes to.

        Args:
            can_take: 2 when the member's session can send the message now, 1 when it is
                online but busy (its window or output is full), 0 when it is offline.

        Returns:
            The next member in turn that can take the message now, else the next one online,
            else the next one; None when the group is empty.
        """
        members = self._order
        count = len(members)
        if not count:
            return None
        start = self._turn % count
        fallback_online = fallback = -1
        for step in range(count):
            index = (start + step) % count
            state = can_take(members[index])
            if state == 2:
                chosen = index
                break
            if state == 1 and fallback_online < 0:
                fallback_online = index
            if fallback < 0:
                fallback = index
        else:
            chosen = fallback_online if fallback_online >= 0 else fallback
        self._turn = chosen + 1
        return members[chosen]
