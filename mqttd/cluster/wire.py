"""How the cluster writes messages, Wills and stored deliveries into Redis values, pure.

One compact binary form for everything that carries an application message, so a forwarded
message costs its payload plus a few bytes::

    message:   qos (1 byte) | retain (1) | topic length (2, big-endian) | topic | payload
    delivery:  qos (1) | retain (1) | topic length (2) | topic | payload     (the delivered QoS)
    will:      the message form of the Will

Keys are named here too. Every key of one persistent session shares the hash tag
``{prefix:s:<client id>}``, every key of one node's inbox ``{prefix:n:<node>}``, and the
cluster-wide keys ``{prefix}``, so a Lua script touches one slot and the layout works on Redis
Cluster as on one Redis.
"""

from __future__ import annotations

from dataclasses import dataclass

from mqttd.codec.packets import Will
from mqttd.message import Message

__all__ = ["Keys", "pack_message", "pack_will", "unpack_message", "unpack_will"]


def pack_message(topic: str, payload: bytes, qos: int, retain: bool) -> bytes:
    """The binary form of an application message."""
    encoded = topic.encode("utf-8")
    return bytes((qos, retain)) + len(encoded).to_bytes(2, "big") + encoded + payload


def unpack_message(data: bytes) -> Message:
    """A ``Message`` from ``pack_message`` bytes.

    Raises:
        ValueError: the bytes are not a packed message.
    """
    if len(data) < 4:
        raise ValueError("packed message too short")
    qos, retain = data[0], data[1]
    size = int.from_bytes(data[2:4], "big")
    if qos > 2 or retain > 1 or len(data) < 4 + size:
        raise ValueError("not a packed message")
    return Message(data[4 : 4 + size].decode("utf-8"), data[4 + size :], qos, bool(retain))


def pack_will(will: Will) -> bytes:
    """The binary form of a Will (stored so a surviving node can publish it)."""
    return pack_message(will.topic, will.message, will.qos, will.retain)


def unpack_will(data: bytes) -> Will:
    """A ``Will`` from ``pack_will`` bytes."""
    message = unpack_message(data)
    return Will(message.topic, message.payload, message.qos, message.retain)


@dataclass(frozen=True, slots=True)
class Keys:
    """Every Redis key and channel the cluster uses, under one prefix."""

    prefix: str = "mqttd"

    # -- cluster-wide (one hash tag, so Lua scripts may combine them) ---------------------------

    @property
    def epoch(self) -> str:
        """STRING: a random id set once per Redis data set: a new one means Redis lost it."""
        return f"{{{self.prefix}}}:epoch"

    @property
    def nodes(self) -> str:
        """ZSET node id -> last heartbeat (Redis time, ms)."""
        return f"{{{self.prefix}}}:nodes"

    def routes(self, node_id: str) -> str:
        """SET of the topic filters ``node_id`` has subscribers for."""
        return f"{{{self.prefix}}}:routes:{node_id}"

    @property
    def route_log(self) -> str:
        """STREAM of route changes: fields op (+/-), node, filter."""
        return f"{{{self.prefix}}}:routelog"

    @property
    def applied(self) -> str:
        """HASH node id -> the last route-log id it applied."""
        return f"{{{self.prefix}}}:applied"

    @property
    def applied_log(self) -> str:
        """STREAM: a node applied route-log entries (wakes barrier waiters)."""
        return f"{{{self.prefix}}}:appliedlog"

    @property
    def retained(self) -> str:
        """HASH topic -> packed retained message."""
        return f"{{{self.prefix}}}:retained"

    @property
    def retained_log(self) -> str:
        """STREAM of retained changes: fields topic, and message (absent = deleted)."""
        return f"{{{self.prefix}}}:retainedlog"

    @property
    def clients(self) -> str:
        """HASH client id -> the node its connection is on."""
        return f"{{{self.prefix}}}:clients"

    @property
    def hosts(self) -> str:
        """HASH client id -> the node hosting its persistent session."""
        return f"{{{self.prefix}}}:hosts"

    def hosted(self, node_id: str) -> str:
        """SET of client ids whose persistent sessions ``node_id`` hosts."""
        return f"{{{self.prefix}}}:hosted:{node_id}"

    def wills(self, node_id: str) -> str:
        """HASH client id -> packed Will, for the connections on ``node_id``."""
        return f"{{{self.prefix}}}:wills:{node_id}"

    def cleanup(self, node_id: str) -> str:
        """Lock taken by the node that cleans up after dead ``node_id``."""
        return f"{{{self.prefix}}}:cleanup:{node_id}"

    def stats(self, node_id: str) -> str:
        """HASH of ``node_id``'s counters, for cluster totals in $SYS."""
        return f"{{{self.prefix}}}:stats:{node_id}"

    # -- one node --------------------------------------------------------------------------------

    def inbox(self, node_id: str) -> str:
        """STREAM of what other nodes send ``node_id``: messages and control requests."""
        return f"{{{self.prefix}:n:{node_id}}}:inbox"

    # -- one persistent session --------------------------------------------------------------

    def session(self, client_id: str) -> str:
        """HASH owner, owned, last_seen."""
        return f"{{{self.prefix}:s:{client_id}}}:h"

    def subscriptions(self, client_id: str) -> str:
        """HASH topic filter -> granted QoS."""
        return f"{{{self.prefix}:s:{client_id}}}:subs"

    def deliveries(self, client_id: str) -> str:
        """HASH seq -> packed delivery (queued or in flight)."""
        return f"{{{self.prefix}:s:{client_id}}}:q"

    def packet_ids(self, client_id: str) -> str:
        """HASH seq -> packet id of a delivery in flight."""
        return f"{{{self.prefix}:s:{client_id}}}:pid"

    def released(self, client_id: str) -> str:
        """SET of seqs of QoS 2 deliveries released (PUBREL sent)."""
        return f"{{{self.prefix}:s:{client_id}}}:rel"

    def incoming(self, client_id: str) -> str:
        """SET of incoming QoS 2 packet ids awaiting PUBREL."""
        return f"{{{self.prefix}:s:{client_id}}}:in"

    def session_keys(self, client_id: str) -> tuple[str, ...]:
        """Every key of one persistent session."""
        return (
            self.session(client_id),
            self.subscriptions(client_id),
            self.deliveries(client_id),
            self.packet_ids(client_id),
            self.released(client_id),
            self.incoming(client_id),
        )
