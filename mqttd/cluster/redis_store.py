"""The cluster's durable store: persistent sessions, retained messages and every change other
nodes must see, written to Redis in pipelines.

Theory of operation: this is ``mqttd.store.Store``'s twin for cluster mode, with the same
synchronous recording API (``session_saved``, ``delivery_added``, ``retained_set``, ...) that
``Session`` and ``Broker`` call without awaiting, plus what only a cluster needs: ``forward``
(a message for another node's inbox), ``route_added``/``route_removed``, ``will_set`` and
``retained_sync``. Each call appends an operation and bumps ``recorded``; one writer task takes
everything recorded so far and sends it as one pipeline -- many changes from every connection
per round trip -- then bumps ``committed``. Connections' output waits at their ``OutputGate``
exactly as with SQLite, so no PUBACK, PUBREC, SUBACK, CONNACK or delivery leaves before Redis
holds what it depends on.

Two kinds of operation complete later than their pipeline: ``route_added`` (the SUBACK of a new
filter waits until every live node routes it) and ``retained_sync`` (the retained messages of a
new subscription wait until this node has applied every retained change acknowledged anywhere
before). Their completion is awaited by the connection that recorded them only
(``settled``), never by everybody's output.

If Redis is unreachable the writer keeps its batch and tries again with backoff, so gated
output waits (and readers slow down at ``store_backlog_limit``) instead of being acknowledged
without Redis; QoS 0 messages for other nodes are dropped meanwhile (counted), as the README
says. A batch sent again after a connection error may have been applied once already: every
operation is idempotent or, for forwarded messages, carries its origin and sequence so the
receiving node drops a copy it has seen. Consecutive forwards to one node in a batch go as one
inbox entry (``mqttd.cluster.wire.pack_forwards``): Redis and both nodes then handle one entry
for many messages, in the order they were recorded.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

import structlog
import trio

if TYPE_CHECKING:
    from coredis import Redis

from mqttd.cluster.wire import Keys, pack_delivery, pack_forwards, pack_will, unpack_delivery
from mqttd.codec.packets import Will
from mqttd.message import Message
from mqttd.store import (
    COMMIT_BUCKETS_S,
    OutputGate,
    StoredDelivery,
    StoredSession,
    StoreError,
)

log = structlog.get_logger("mqttd.cluster")

#: Most operations one pipeline carries; more wait for the next round trip.
MAX_BATCH_OPS: Final = 5_000
#: Most forwarded messages one inbox entry carries (see ``_forward_run``).
MAX_ENTRY_FORWARDS: Final = 256
#: Packed bytes after which an inbox entry takes no more forwarded messages.
MAX_ENTRY_BYTES: Final = 256 * 1024
#: Retry delays (seconds) while Redis is unreachable: doubling up to the last.
RETRY_DELAYS_S: Final = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)

# Scripts keep multi-key changes atomic (one hash tag each, see ``mqttd.cluster.wire``).
_ROUTE_CHANGE = """
if ARGV[1] == '+' then
  redis.call('SADD', KEYS[1], ARGV[3])
else
  redis.call('SREM', KEYS[1], ARGV[3])
end
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
                  'op', ARGV[1], 'node', ARGV[2], 'filter', ARGV[3])
"""
_RETAINED_CHANGE = """
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*',
                  'topic', ARGV[1], 'message', ARGV[2])
"""
_CLIENT_GONE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
"""
_LAST_ID = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last == 0 then return '0-0' end
return last[1][1]
"""

Op = tuple[str, tuple[Any, ...]]


class RedisStore:
    """Durable cluster state in Redis. Create it with a coredis client; run ``writer``.

    Args:
        redis: the coredis client (already entered).
        keys: the key names.
        node_id: this node.
        epoch: distinguishes this run of the node from earlier ones (forward dedup).
        log_length: the approximate length route and retained logs are trimmed to.
    """

    def __init__(
        self,
        redis: Redis[bytes],
        keys: Keys,
        node_id: str,
        epoch: str,
        *,
        log_length: int = 100_000,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.node_id = node_id
        self.epoch = epoch
        self.log_length = log_length
        self.path = f"redis:{keys.prefix}"  # for the start-up log line
        self.durability = "redis"
        self._ops: list[Op] = []
        self._work = trio.Event()
        self.recorded = 0
        self.committed = 0
        self._failures: list[tuple[int, int]] = []
        self._commit_event = trio.Event()
        self._forward_seq = itertools.count(1)
        self._message_ids = itertools.count(1)
        self._id_prefix = f"{node_id}:{epoch}:".encode()
        #: operation number -> set once its late completion (a barrier) is done
        self._settling: dict[int, trio.Event] = {}
        self.link_up = True
        self.forwards_dropped = 0
        self.commits = 0  # batches Redis took
        self.failures = 0  # batches Redis refused (an error reply)
        #: batch latency for monitoring, as ``mqttd.store.Store`` keeps it (round trips here,
        #: retries while Redis is away included)
        self.commit_buckets = [0] * (len(COMMIT_BUCKETS_S) + 1)
        self.commit_seconds = 0.0
        self.last_commit_failed = False
        #: called with (route-log id) / (retained-log id) to wait for a barrier; set by the node
        self.wait_routes: Callable[[str], Awaitable[None]] | None = None
        self.wait_retained: Callable[[str], Awaitable[None]] | None = None
        self._route_script = redis.register_script(_ROUTE_CHANGE)
        self._retained_script = redis.register_script(_RETAINED_CHANGE)
        self._last_id_script = redis.register_script(_LAST_ID)
        self._client_gone_script = redis.register_script(_CLIENT_GONE)
        self._closing = False
        self._nursery: trio.Nursery | None = None

    # -- recording (synchronous, from the broker's code) --------------------------------------

    def _record(self, kind: str, params: tuple[Any, ...]) -> None:
        self._ops.append((kind, params))
        self.recorded += 1
        if len(self._ops) == 1:
            self._work.set()

    def session_saved(
        self,
        client_id: str,
        owner: str | None,
        expiry_interval: int | None = None,
        *,
        connected: bool = False,
    ) -> None:
        """A persistent session of user ``owner`` exists here, or was seen now (with its
        MQTT 5 Session Expiry Interval, None = never; ``connected``: a connection is
        attached now), as ``mqttd.store.Store.session_saved``."""
        self._record("session_put", (client_id, owner, time.time(), expiry_interval, connected))

    def session_deleted(self, client_id: str, messages: Iterable[Message]) -> None:
        """A persistent session is gone with everything it held."""
        self._record("session_del", (client_id,))

    def session_released(self, client_id: str) -> None:
        """This node no longer hosts the session (another node takes it over)."""
        self._record("session_release", (client_id,))

    def subscription_set(self, client_id: str, topic_filter: str, qos: int) -> None:
        self._record("sub_put", (client_id, topic_filter, qos))

    def subscription_removed(self, client_id: str, topic_filter: str) -> None:
        self._record("sub_del", (client_id, topic_filter))

    def delivery_added(
        self,
        client_id: str,
        seq: int,
        message: Message,
        qos: int,
        retain: bool,
        packet_id: int | None,
        subscription_ids: tuple[int, ...] = (),
    ) -> None:
        packed = pack_delivery(message, qos, retain, subscription_ids)
        self._record("delivery_put", (client_id, seq, packed, packet_id))

    def delivery_sent(self, client_id: str, seq: int, packet_id: int) -> None:
        self._record("delivery_sent", (client_id, seq, packet_id))

    def delivery_released(self, client_id: str, seq: int) -> None:
        self._record("delivery_released", (client_id, seq))

    def delivery_removed(self, client_id: str, seq: int, message: Message) -> None:
        self._record("delivery_del", (client_id, seq))

    def incoming_added(self, client_id: str, packet_id: int) -> None:
        self._record("incoming_put", (client_id, packet_id))

    def incoming_removed(self, client_id: str, packet_id: int) -> None:
        self._record("incoming_del", (client_id, packet_id))

    def retained_set(self, topic: str, old: Message | None, new: Message | None) -> None:
        """The retained message of ``topic`` changed: stored and logged for every node."""
        packed = b"" if new is None else pack_delivery(new, new.qos, True)
        self._record("retained", (topic, packed))

    # -- cluster operations ----------------------------------------------------------------------

    def forward(self, node_id: str, message: Message, groups: Sequence[str] = ()) -> None:
        """Send ``message`` to ``node_id``'s inbox (it has matching subscribers, or members
        of the shared ``groups`` it is to serve). QoS 0 is dropped, and counted, while Redis
        is unreachable."""
        if not self.link_up and message.qos == 0:
            self.forwards_dropped += 1
            return
        fields = self._fields(message)
        if groups:
            # Group keys hold no newline: control characters are refused in topic filters.
            fields[b"G"] = "\n".join(groups).encode()
        self._record("forward", (node_id, fields))

    def forward_to(
        self,
        node_id: str,
        client_id: str,
        message: Message,
        qos: int,
        retain: bool = False,
        subscription_ids: tuple[int, ...] = (),
    ) -> None:
        """Send ``message`` to one session, ``client_id``, now hosted by ``node_id``, at the
        QoS, RETAIN flag and Subscription Identifiers already decided (a session handed
        over: see ``ClusterNode``)."""
        fields = {
            b"m": pack_delivery(message, message.qos, retain, subscription_ids),
            b"i": self.message_id(message),
            b"c": client_id.encode(),
            b"g": b"%d" % qos,
        }
        self._record("forward", (node_id, fields))

    def message_id(self, message: Message) -> bytes:
        """The message's cluster id, given here if it has none yet."""
        cluster_id = message.cluster_id
        if cluster_id is None:
            cluster_id = message.cluster_id = self._id_prefix + b"%d" % next(self._message_ids)
        return cluster_id

    def _fields(self, message: Message) -> dict[bytes, bytes]:
        return {
            # RETAIN as published: a subscription with Retain As Published needs it.
            b"m": pack_delivery(message, message.qos, message.retain),
            b"i": self.message_id(message),
        }

    def control(self, node_id: str, fields: dict[bytes, bytes]) -> None:
        """Send a control request or reply to ``node_id``'s inbox."""
        self._record("control", (node_id, fields))

    def inbox_done(self, node_id: str, entry_ids: list[str]) -> None:
        """Entries of ``node_id``'s inbox were processed: they go in the same transaction as
        the changes they caused."""
        self._record("inbox_done", (node_id, entry_ids))

    def route_added(self, topic_filter: str) -> None:
        """This node has its first subscriber for ``topic_filter``: register the route; the
        recording connection's output waits until every live node routes it."""
        self._record("route", ("+", topic_filter))

    def route_removed(self, topic_filter: str) -> None:
        """This node's last subscriber for ``topic_filter`` went."""
        self._record("route", ("-", topic_filter))

    def will_set(self, client_id: str, will: Will) -> None:
        """A client here has a Will: stored so a surviving node publishes it if this one dies."""
        self._record("will_put", (client_id, pack_will(will)))

    def will_removed(self, client_id: str) -> None:
        self._record("will_del", (client_id,))

    def client_here(self, client_id: str) -> None:
        """Register a client connected here again (after Redis lost its data)."""
        self._record("client_put", (client_id,))

    def retained_restored(self, topic: str, message: Message) -> None:
        """Put a retained message back where no node put it yet (after Redis lost its data)."""
        packed = pack_delivery(message, message.qos, True)
        self._record("retained_nx", (topic, packed))

    def client_gone(self, client_id: str) -> None:
        """A client's connection here ended: forget it in the registry (if it is still ours)."""
        self._record("client_del", (client_id,))

    def retained_sync(self) -> trio.Event:
        """A barrier for a new subscription's retained messages: the returned event is set
        once this node has applied every retained change Redis held when the barrier was
        taken."""
        self._record("retained_sync", ())
        return self._settling.setdefault(self.recorded, trio.Event())

    def route_of_dead_node(self, node_id: str, topic_filter: str) -> None:
        """Remove a dead node's route (its cleanup)."""
        self._record("route_of", (node_id, topic_filter))

    # -- durability (the Store interface) --------------------------------------------------------

    def mark(self) -> int:
        return self.recorded

    async def durable(self, upto: int) -> None:
        while self.committed < upto:
            await self._commit_event.wait()

    def failed(self, first: int, last: int) -> bool:
        return any(lo < last and hi > first for lo, hi in self._failures)

    async def settled(self, first: int, last: int) -> None:
        """Wait for the late completions (barriers) of operations numbered (first, last]."""
        for index in [i for i in self._settling if first < i <= last]:
            event = self._settling.get(index)
            if event is not None:
                await event.wait()

    def backlog(self) -> int:
        return self.recorded - self.committed

    async def drain(self, below: int) -> None:
        while self.recorded - self.committed >= below:
            await self._commit_event.wait()

    def gate(self, backlog_limit: int) -> OutputGate:
        return OutputGate(self, backlog_limit)  # type: ignore[arg-type]

    def close(self) -> None:
        """Stop the writer once everything recorded so far has been sent."""
        self._closing = True
        self._work.set()

    # -- the writer ------------------------------------------------------------------------------

    async def writer(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Send what is recorded, batch after batch, until ``close`` and nothing is left."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery  # barrier waits run here
            task_status.started()
            while True:
                if not self._ops:
                    if self._closing:
                        break
                    self._work = trio.Event()
                    await self._work.wait()
                    continue
                batch = self._ops[:MAX_BATCH_OPS]
                del self._ops[:MAX_BATCH_OPS]
                await self._send(batch)
            nursery.cancel_scope.cancel()

    async def _send(self, batch: list[Op]) -> None:
        first = self.committed
        started = time.perf_counter()
        error: BaseException | None = None
        attempt = 0
        while True:
            try:
                results = await self._execute(batch)
                break
            except (OSError, EOFError, TimeoutError, trio.BrokenResourceError) as exc:
                error = exc
            except Exception as exc:  # a connection error of coredis, or a Redis error reply
                if not _is_connection_error(exc):
                    error = exc
                    results = None
                    break
                error = exc
            if self.link_up:
                self.link_up = False
                log.warning("redis_unreachable", error=str(error), retrying=True)
            await trio.sleep(RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)])
            attempt += 1
        if results is not None and not self.link_up:
            self.link_up = True
            log.info("redis_reachable_again")
        if results is None:
            self._failures.append((first, first + len(batch)))
            self._failures = self._failures[-64:]
            self.failures += 1
            log.error("cluster_commit_failed", error=str(error), operations=len(batch))
            for index in range(first + 1, first + len(batch) + 1):
                event = self._settling.pop(index, None)
                if event is not None:
                    event.set()  # nothing will complete it: the connection fails on its own
        else:
            self.commits += 1
            self._start_barriers(first, batch, results)
        elapsed = time.perf_counter() - started
        self.commit_seconds += elapsed
        self.commit_buckets[bisect.bisect_left(COMMIT_BUCKETS_S, elapsed)] += 1
        self.last_commit_failed = results is None
        self.committed = first + len(batch)
        event, self._commit_event = self._commit_event, trio.Event()
        event.set()

    def _start_barriers(self, first: int, batch: list[Op], results: list[Any]) -> None:
        nursery = self._nursery
        for offset, ((kind, _params), result) in enumerate(zip(batch, results, strict=True)):
            index = first + offset + 1
            if kind == "route" and _params[0] == "+" and self.wait_routes is not None:
                event = self._settling.setdefault(index, trio.Event())
                assert nursery is not None
                nursery.start_soon(self._settle, index, event, self.wait_routes, _text(result))
            elif kind == "retained_sync":
                event = self._settling.setdefault(index, trio.Event())
                if self.wait_retained is None:
                    self._settling.pop(index, None)
                    event.set()
                else:
                    assert nursery is not None
                    nursery.start_soon(
                        self._settle, index, event, self.wait_retained, _text(result)
                    )

    async def _settle(
        self,
        index: int,
        event: trio.Event,
        wait: Callable[[str], Awaitable[None]],
        stream_id: str,
    ) -> None:
        try:
            await wait(stream_id)
        finally:
            self._settling.pop(index, None)
            event.set()

    async def _execute(self, batch: list[Op]) -> list[Any]:
        keys = self.keys
        node = self.node_id
        requests: list[Any] = []
        # One transaction per batch: after a crash, Redis holds all of it or none of it.
        async with self.redis.pipeline(transaction=True) as pipe:
            index = 0
            while index < len(batch):
                kind, params = batch[index]
                run = _forward_run(batch, index) if kind == "forward" else 1
                if run > 1:
                    # Consecutive messages for one node: one inbox entry (a pipelined
                    # command costs ~25 us of CPU here, reading an entry ~9 us there).
                    request = self._forwards(pipe, keys, node, batch[index : index + run])
                else:
                    request = self._command(pipe, keys, node, kind, params)
                requests += [request] * run
                index += run
        # A batch entry's result stands for each of its operations.
        awaited: dict[int, Any] = {}
        results: list[Any] = []
        for request in requests:
            key = id(request)
            if key not in awaited:
                awaited[key] = await request
            results.append(awaited[key])
        return results

    def _forwards(self, pipe: Any, keys: Keys, node: str, run: list[Op]) -> Any:
        """One inbox entry for several ``forward`` operations to the same node."""
        first = run[0][1][1]
        # As for one message (see ``_command``): the sequence the first attempt gave is kept
        # for the retries, which group the same batch the same way.
        if b"s" not in first:
            first[b"s"] = b"%d" % next(self._forward_seq)
        items = [(f[b"i"], f.get(b"G", b""), f[b"m"]) for _, (_, f) in run]
        fields = {b"b": pack_forwards(items), b"o": node.encode(), b"e": self.epoch.encode()}
        fields[b"s"] = first[b"s"]
        return pipe.xadd(keys.inbox(run[0][1][0]), fields)

    def _command(
        self, pipe: Any, keys: Keys, node: str, kind: str, params: tuple[Any, ...]
    ) -> Any:
        if kind == "forward":
            target, fields = params
            # Who sent it, in which run, with which sequence: the receiver drops a copy sent
            # again when a pipeline is retried after a connection error.
            # The sequence is given at the first attempt and kept for the retries.
            if b"s" not in fields:
                fields[b"o"] = node.encode()
                fields[b"e"] = self.epoch.encode()
                fields[b"s"] = b"%d" % next(self._forward_seq)
            return pipe.xadd(keys.inbox(target), fields)
        if kind == "control":
            target, fields = params
            return pipe.xadd(keys.inbox(target), fields)
        if kind == "inbox_done":
            inbox_of, entry_ids = params
            return pipe.xdel(keys.inbox(inbox_of), entry_ids)
        if kind == "route":
            op, topic_filter = params
            return self._route_script(
                keys=[keys.routes(node), keys.route_log],
                args=[op, node, topic_filter, self.log_length],
                client=pipe,
            )
        if kind == "route_of":
            dead, topic_filter = params
            return self._route_script(
                keys=[keys.routes(dead), keys.route_log],
                args=["-", dead, topic_filter, self.log_length],
                client=pipe,
            )
        if kind == "retained":
            topic, packed = params
            return self._retained_script(
                keys=[keys.retained, keys.retained_log],
                args=[topic, packed, self.log_length],
                client=pipe,
            )
        if kind == "retained_sync":
            return self._last_id_script(keys=[keys.retained_log], args=[], client=pipe)
        client_id = params[0]
        if kind == "session_put":
            _, owner, seen, expiry_interval, connected = params
            fields = {
                "last_seen": repr(seen),
                "owned": "1",
                "owner": owner or "",
                "anon": "0" if owner is not None else "1",
                # MQTT 5 Session Expiry Interval ("": never, as in records made before it)
                "expiry": "" if expiry_interval is None else str(expiry_interval),
                "connected": "1" if connected else "0",
            }
            pipe.sadd(keys.hosted(node), [client_id])
            pipe.hset(keys.hosts, {client_id: node})
            return pipe.hset(keys.session(client_id), fields)
        if kind == "session_del":
            pipe.srem(keys.hosted(node), [client_id])
            pipe.hdel(keys.hosts, [client_id])
            return pipe.delete(list(keys.session_keys(client_id)))
        if kind == "session_release":
            return pipe.srem(keys.hosted(node), [client_id])
        if kind == "sub_put":
            return pipe.hset(keys.subscriptions(client_id), {params[1]: str(params[2])})
        if kind == "sub_del":
            return pipe.hdel(keys.subscriptions(client_id), [params[1]])
        if kind == "delivery_put":
            _, seq, packed, packet_id = params
            if packet_id is not None:
                pipe.hset(keys.packet_ids(client_id), {str(seq): str(packet_id)})
            return pipe.hset(keys.deliveries(client_id), {str(seq): packed})
        if kind == "delivery_sent":
            _, seq, packet_id = params
            return pipe.hset(keys.packet_ids(client_id), {str(seq): str(packet_id)})
        if kind == "delivery_released":
            return pipe.sadd(keys.released(client_id), [str(params[1])])
        if kind == "delivery_del":
            seq = str(params[1])
            pipe.hdel(keys.packet_ids(client_id), [seq])
            pipe.srem(keys.released(client_id), [seq])
            return pipe.hdel(keys.deliveries(client_id), [seq])
        if kind == "incoming_put":
            return pipe.sadd(keys.incoming(client_id), [str(params[1])])
        if kind == "incoming_del":
            return pipe.srem(keys.incoming(client_id), [str(params[1])])
        if kind == "will_put":
            return pipe.hset(keys.wills(node), {client_id: params[1]})
        if kind == "will_del":
            return pipe.hdel(keys.wills(node), [client_id])
        if kind == "client_put":
            return pipe.hset(keys.clients, {client_id: node})
        if kind == "retained_nx":
            return pipe.hsetnx(keys.retained, client_id, params[1])
        if kind == "client_del":
            # Only if the entry is still this node's: the client may be on another one now.
            return self._client_gone_script(
                keys=[keys.clients], args=[client_id, node], client=pipe
            )
        raise AssertionError(f"unknown cluster operation {kind}")

    # -- loading -----------------------------------------------------------------------------

    async def load_session(self, client_id: str) -> StoredSession | None:
        """Read a persistent session from Redis (None when there is none)."""
        keys = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            head = pipe.hgetall(keys.session(client_id))
            subs = pipe.hgetall(keys.subscriptions(client_id))
            rows = pipe.hgetall(keys.deliveries(client_id))
            pids = pipe.hgetall(keys.packet_ids(client_id))
            rel = pipe.smembers(keys.released(client_id))
            incoming = pipe.smembers(keys.incoming(client_id))
        fields = {_text(k): _text(v) for k, v in (await head).items()}
        if not fields:
            return None
        anonymous = fields.get("anon", "1") == "1"
        expiry = fields.get("expiry", "")
        stored = StoredSession(
            client_id,
            float(fields.get("last_seen", "0")),
            None if anonymous else fields.get("owner", ""),
            fields.get("owned", "0") == "1",
            int(expiry) if expiry else None,
            fields.get("connected", "0") == "1",
        )
        stored.subscriptions = {_text(f): int(q) for f, q in (await subs).items()}
        packet_ids = {int(k): int(v) for k, v in (await pids).items()}
        released = {int(x) for x in await rel}
        for seq_text, packed in sorted((await rows).items(), key=lambda kv: int(kv[0])):
            seq = int(seq_text)
            message, identifiers = unpack_delivery(bytes(packed))
            stored.deliveries.append(
                StoredDelivery(
                    seq,
                    message,
                    message.qos,
                    message.retain,
                    packet_ids.get(seq),
                    seq in released,
                    identifiers,
                )
            )
        stored.incoming = {int(x) for x in await incoming}
        return stored


def _forward_run(batch: list[Op], start: int) -> int:
    """How many operations from ``start`` forward messages to the same node (not to one
    session: ``forward_to``'s entries stay on their own): at most ``MAX_ENTRY_FORWARDS``, and
    none more once they reach ``MAX_ENTRY_BYTES``."""
    target = batch[start][1][0]
    end = min(len(batch), start + MAX_ENTRY_FORWARDS)
    stop = start
    size = 0
    while stop < end and size < MAX_ENTRY_BYTES:
        kind, params = batch[stop]
        if kind != "forward" or params[0] != target or b"c" in params[1]:
            break
        size += len(params[1][b"m"])
        stop += 1
    return max(stop - start, 1)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


def _is_connection_error(exc: BaseException) -> bool:
    name = type(exc).__name__
    known = {"ConnectionError", "TimeoutError", "ClosedResourceError", "BrokenResourceError"}
    return name in known or isinstance(exc, ConnectionError)


__all__ = ["RedisStore", "StoreError"]
