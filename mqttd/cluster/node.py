"""One node of an mqttd cluster: its link to Redis, its view of the other nodes, its inbox.

Theory of operation. Every node runs the whole single-process broker for the clients connected
to it, and Redis (through coredis) joins the nodes into one broker:

* **Membership.** A node adds a heartbeat (Redis's own clock) to the ``nodes`` sorted set every
  ``node_timeout_s / 5`` and is alive while its heartbeat is younger than ``node_timeout_s``.
* **Routes.** The first subscription to a filter on a node registers the route (filter ->
  node); the last one removes it (``mqttd.cluster.routes``). Routes live in one set per node and
  every change is appended to the route log, which every node follows to keep its cached
  route table. A SUBACK for a new route waits until every live node has applied it (each node
  records how far it applied the log and says so on a pub/sub channel), so a message published
  anywhere after the SUBACK reaches the new subscriber.
* **Messages.** A message published here goes to the local subscribers and, once, to the inbox
  stream of every other node with a matching route -- never to a node without one. Inbox
  entries are written by the ``RedisStore`` writer in pipelines, in publication order, and the
  receiving node routes them to its own sessions only. A PUBACK waits until Redis holds them.
* **Retained messages** are a hash in Redis plus a log of changes every node applies to its own
  copy; the retained messages of a new subscription wait until this node has applied every
  change Redis held when the SUBSCRIBE was processed.
* **Client ids.** ``clients`` maps a client id to the node of its connection and ``hosts`` to the
  node that keeps its persistent session. A CONNECT asks both nodes (``take`` over the inbox)
  to close the old connection and to let the session go -- everything recorded for it is
  committed first -- then loads the session from Redis; only then is CONNACK sent. The claims
  of CONNECTs in flight at once go to Redis together, in one script call (``_claim_loop``): a
  connect storm pays coredis's per-call cost once per round trip, not once per CONNECT.
* **Dead nodes.** A node whose heartbeat is too old is cleaned up by one survivor (a lock):
  the Wills of its clients are published, its routes removed, the persistent sessions it
  hosted adopted (with the messages still in its inbox for them), its registry entries dropped.
  A node that restarts under the same id first cleans up after its previous life.
  An MQTT 5 Will is published with its properties, and at once even with a Will Delay
  Interval: part of the delay ran while the death went unnoticed (up to ``node_timeout_s``),
  and a Will held back on the survivor would be lost if the survivor died too, or sent
  although its client came back in time through a node that cannot cancel it. An adopted
  session keeps its Session Expiry Interval, counted from its last disconnect (from now when
  its client was connected to the dead node).
"""

from __future__ import annotations

import itertools
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Container, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import structlog
import trio

if TYPE_CHECKING:
    from coredis import Redis

from mqttd.broker import Broker
from mqttd.cluster.client import PureToken
from mqttd.cluster.redis_store import RedisStore
from mqttd.cluster.routes import ClusterRoutes
from mqttd.cluster.wire import (
    Keys,
    unpack_delivery,
    unpack_forwards,
    unpack_message,
    unpack_will,
)
from mqttd.codec.packets import NO_PROPERTIES, Will
from mqttd.config import ClusterConfig, LimitsConfig
from mqttd.errors import TakeOverFailed
from mqttd.message import Message
from mqttd.session import OfferResult, Ready, Session
from mqttd.store import StoredSession

log = structlog.get_logger("mqttd.cluster")

#: How long a CONNECT waits for another node to close the old connection / release a session.
TAKE_TIMEOUT_S = 5.0
#: Entries read from a stream at once.
READ_COUNT = 1000
#: How long a blocking stream read waits before it looks again (ms).
READ_BLOCK_MS = 1000
#: How long a node keeps deduplicating a session handed over to it after the old node
#: stopped forwarding (copies of a message may still be on their way by the other path).
HANDOVER_DEDUP_S = 10.0
#: How long a node forwards a session handed over if the new node never says stop.
FORWARDER_TIMEOUT_S = 30.0
#: Backoff while Redis is unreachable, seconds.
RETRY_DELAYS_S = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
#: Most client ids one claim call carries; more wait for the next round trip.
MAX_CLAIMS: Final = 1000

_HEARTBEAT = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  redis.call('SET', KEYS[2], ARGV[3], 'NX')
  epoch = redis.call('GET', KEYS[2])
end
return {epoch, redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))}
"""
_LIVE = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')
"""
# ARGV: this node, then the client ids it claims; returns each one's previous connection
# node and host, in turn (false -> nil: none).
_CLAIM = """
local out = {}
for i = 2, #ARGV do
  local prev = redis.call('HGET', KEYS[1], ARGV[i])
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[1])
  out[#out + 1] = prev
  out[#out + 1] = redis.call('HGET', KEYS[2], ARGV[i])
end
return out
"""
_ADOPT = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
return 1
"""
_LAST_ID = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last == 0 then return '0-0' end
return last[1][1]
"""


def default_node_id(worker: int | None = None) -> str:
    """The host name, with the worker number when there are several workers."""
    name = socket.gethostname() or "mqttd"
    return name if worker is None else f"{name}-w{worker}"


def _stream_id(value: Any) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes | bytearray) else str(value)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


class _AllBut:
    """Every client id but those in ``kept``: ``Broker.route``'s ``skip`` when only a few
    sessions may get a message."""

    __slots__ = ("kept",)

    def __init__(self, kept: set[str]) -> None:
        self.kept = kept

    def __contains__(self, client_id: object) -> bool:
        return client_id not in self.kept


class _Claim:
    """One CONNECT's claim on its client id, waiting for the call that carries it."""

    __slots__ = ("abandoned", "client_id", "done", "error", "result", "traceback")

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.done = trio.Event()
        #: the client id's previous connection node and host (None: none)
        self.result: tuple[Any, Any] = (None, None)
        self.error: Exception | None = None
        self.traceback: TracebackType | None = None
        #: its CONNECT went away before the claim was sent: leave it out
        self.abandoned = False

    def fail(self, error: Exception) -> None:
        self.error = error
        self.traceback = error.__traceback__
        self.done.set()


class ForwardingSession(Session):
    """Stands in for a persistent session handed over to another node, with its
    subscriptions: every message offered to it goes on to that node, aimed at the session."""

    __slots__ = ("_cluster_store", "_target")

    def __init__(
        self, client_id: str, limits: LimitsConfig, store: RedisStore, target: str
    ) -> None:
        super().__init__(client_id, clean_session=True, limits=limits)
        self._cluster_store = store
        self._target = target

    def offer(
        self,
        message: Message,
        qos: int,
        retain: bool = False,
        subscription_ids: tuple[int, ...] = (),
    ) -> OfferResult:
        self._cluster_store.forward_to(
            self._target, self.client_id, message, qos, retain, subscription_ids
        )
        return OfferResult.SENT


class ClusterNode:
    """This process as a node of the cluster; also the broker's ``ClusterLink``.

    Args:
        config: the ``[cluster]`` section.
        broker: this node's broker (its ``store`` and ``cluster`` are set here).
        redis: an entered coredis client.
        node_id: this node's id.
        kick_client: closes this node's connection of a client id, if it has one, and waits
            until it is closed (the server's registry does it).
    """

    def __init__(
        self,
        config: ClusterConfig,
        broker: Broker,
        redis: Redis[bytes],
        node_id: str,
        *,
        kick_client: Callable[[str], Awaitable[None]],
    ) -> None:
        self.config = config
        self.broker = broker
        self.redis = redis
        self.node_id = node_id
        self.keys = Keys(config.key_prefix)
        self.epoch = uuid.uuid4().hex[:12]
        self.store = RedisStore(redis, self.keys, node_id, self.epoch)
        self.store.wait_routes = self.wait_routes_applied
        self.store.wait_retained = self.wait_retained_applied
        self.routes = ClusterRoutes(node_id)
        self._kick_client = kick_client
        self._timeout_ms = int(config.node_timeout_s * 1000)
        self._heartbeat_s = config.node_timeout_s / 5
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._live = redis.register_script(_LIVE)
        self._claim = redis.register_script(_CLAIM)
        self._adopt = redis.register_script(_ADOPT)
        self._last_id = redis.register_script(_LAST_ID)
        self._route_log_id = "0-0"
        #: the Redis data's identity: a new one means Redis lost its data (restarted empty)
        self._redis_epoch: str | None = None
        #: the Wills of this node's connected clients, to store again if Redis loses them
        self._wills: dict[str, Will] = {}
        #: times this node put its state back into a Redis that lost its data; ``restored``
        #: is set (and replaced) each time, once that state is committed
        self.restorations = 0
        self.restored = trio.Event()
        self._retained_log_id = "0-0"
        self._retained_applied = (0, 0)
        self._retained_changed = trio.Event()
        self._routes_changed = trio.Event()
        self._requests: dict[str, trio.Event] = {}
        #: CONNECTs' claims not yet sent (one per connection in CONNECT: bounded by them)
        self._claims: list[_Claim] = []
        self._claims_pending = trio.Event()
        self.claim_calls = 0  # round trips that carried claims
        #: sessions being handed over to this node -> cluster ids of messages delivered
        self._handover: dict[str, set[bytes]] = {}
        #: sessions being loaded here -> messages aimed at them meanwhile (message, QoS,
        #: cluster id, Subscription Identifiers)
        self._loading: dict[str, list[tuple[Message, int, bytes | None, tuple[int, ...]]]] = {}
        #: sessions handed over to other nodes, still forwarding to them
        self._forwarders: dict[str, ForwardingSession] = {}
        self._request_ids = itertools.count(1)
        #: (origin node, its epoch) -> the highest forward seq seen: drops copies of a
        #: forward sent again after a connection error
        self._seen: dict[tuple[bytes, bytes], int] = {}
        self.forwarded = 0
        self.received = 0
        self.wills_published = 0
        self.sessions_adopted = 0
        #: shared group key -> messages placed so far (the turn of the next one)
        self._group_turns: dict[str, int] = {}
        self._nursery: trio.Nursery | None = None
        broker.store = self.store  # type: ignore[assignment]
        broker.cluster = self

    # -- the broker's ClusterLink (synchronous) ---------------------------------------------------

    def forward(self, message: Message) -> Container[str]:
        nodes, groups = self.routes.targets(message.topic)
        elsewhere: set[str] = set()
        assigned: dict[str, list[str]] = {}
        if groups:
            # One node per shared group, in turn among the nodes with members (this one
            # included when it has some): one member of each group gets the message
            # cluster-wide ([MQTT-4.8.2-3] across nodes).
            local = self.broker.shared
            turns = self._group_turns
            for key, members in groups.items():
                candidates = sorted(members)
                if key in local:
                    candidates.append(self.node_id)
                turn = turns.get(key, 0)
                turns[key] = turn + 1
                chosen = candidates[turn % len(candidates)]
                if chosen != self.node_id:
                    elsewhere.add(key)
                    assigned.setdefault(chosen, []).append(key)
        for node_id in {*nodes, *assigned}:
            self.store.forward(node_id, message, assigned.get(node_id, ()))
            self.forwarded += 1
        if self._handover:
            # A session being handed over here gets this message now, locally: a copy coming
            # back through its previous node must not be delivered again.
            self._handed_over(message, self.store.message_id(message))
        return elsewhere

    def has_routes(self, topic: str) -> bool:
        nodes, groups = self.routes.targets(topic)
        return bool(nodes or groups)

    def filter_added(self, topic_filter: str) -> None:
        if self.routes.local_added(topic_filter):
            self.store.route_added(topic_filter)

    def filter_removed(self, topic_filter: str) -> None:
        if self.routes.local_removed(topic_filter):
            self.store.route_removed(topic_filter)

    def retained_ready(self) -> Ready | None:
        return self.store.retained_sync()

    def client_attached(self, client_id: str, will: Will | None) -> None:
        if will is not None:
            self._wills[client_id] = will
            self.store.will_set(client_id, will)

    def client_detached(self, client_id: str) -> None:
        self._wills.pop(client_id, None)
        self.store.will_removed(client_id)
        self.store.client_gone(client_id)

    def _restore_into_redis(self) -> None:
        """Redis came back empty: write this node's part of the cluster state again -- its
        routes, the persistent sessions it hosts with everything queued or in flight, its
        clients and their Wills, and the retained messages (where no node wrote them yet)."""
        store = self.store
        for topic_filter in self.routes.local_filters():
            store.route_added(topic_filter)
        for client_id, session in self.broker.sessions.items():
            if session.connected:
                store.client_here(client_id)
            if session.clean_session or isinstance(session, ForwardingSession):
                continue
            store.session_saved(
                client_id, session.owner, session.expiry_interval, connected=session.connected
            )
            for topic_filter, qos in session.subscriptions.items():
                store.subscription_set(client_id, topic_filter, qos)
            for packet_id, outgoing in session.inflight.items():
                store.delivery_added(
                    client_id, outgoing.seq, outgoing.message, outgoing.qos, outgoing.retain,
                    packet_id, outgoing.subscription_ids,
                )  # fmt: skip
                if outgoing.released:
                    store.delivery_released(client_id, outgoing.seq)
            for entry in session.queue:
                if isinstance(entry, tuple) and entry[1]:
                    message, qos, retain, seq, identifiers = entry
                    store.delivery_added(client_id, seq, message, qos, retain, None, identifiers)
            for packet_id in session.awaiting_release:
                store.incoming_added(client_id, packet_id)
        for client_id, will in self._wills.items():
            store.will_set(client_id, will)
        for topic, message in self.broker.retained.items():
            if not topic.startswith("$"):
                store.retained_restored(topic, message)

    def session_released(self, client_id: str) -> None:
        self.store.session_released(client_id)

    # -- start-up and the background tasks -------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join the cluster, then keep this node's part of it going until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.store.writer)
            nursery.start_soon(self._claim_loop)
            await self._join()
            nursery.start_soon(self._heartbeat_loop)
            nursery.start_soon(self._follow_routes)
            nursery.start_soon(self._follow_retained)
            nursery.start_soon(self._follow_inbox)
            nursery.start_soon(self._follow_applied)
            log.info(
                "cluster_joined",
                node_id=self.node_id,
                routes=len(self.routes),
                retained=len(self.broker.retained),
            )
            task_status.started()

    async def _join(self) -> None:
        keys = self.keys
        # A node restarting under the same id first cleans up after its previous life.
        if await self.redis.zscore(keys.nodes, self.node_id) is not None:
            await self._cleanup(self.node_id, previous_self=True)
        await self._beat()
        self._route_log_id = _text(await self._last_id(keys=[keys.route_log], args=[]))
        self._retained_log_id = _text(await self._last_id(keys=[keys.retained_log], args=[]))
        self._retained_applied = _stream_id(self._retained_log_id)
        await self._load_routes()
        # The snapshot covers the route log up to here: say so, or a SUBACK elsewhere would
        # wait for this node to apply entries it will never read.
        await self.redis.hset(keys.applied, {self.node_id: self._route_log_id})
        for topic, packed in (await self.redis.hgetall(keys.retained)).items():
            message = unpack_message(bytes(packed))
            self.broker.apply_retained(_text(topic), message)

    async def _load_routes(self) -> None:
        live = await self.live_nodes()
        pairs: list[tuple[str, str]] = []
        for node_id in live:
            if node_id == self.node_id:
                continue
            for topic_filter in await self.redis.smembers(self.keys.routes(node_id)):
                pairs.append((node_id, _text(topic_filter)))
        self.routes.replace(pairs)

    async def live_nodes(self) -> list[str]:
        """The nodes whose heartbeat is recent."""
        nodes: Any = await self._live(keys=[self.keys.nodes], args=[self._timeout_ms])
        return [_text(n) for n in nodes]

    async def _beat(self) -> list[Any]:
        """One heartbeat; notices a Redis that lost its data (its epoch key is new) and puts
        this node's part of the cluster state back. Returns the dead nodes."""
        beat: Any = await self._heartbeat(
            keys=[self.keys.nodes, self.keys.epoch],
            args=[self.node_id, self._timeout_ms, uuid.uuid4().hex],
        )
        epoch, dead = _text(beat[0]), beat[1]
        if self._redis_epoch is None:
            self._redis_epoch = epoch
        elif epoch != self._redis_epoch:
            self._redis_epoch = epoch
            log.warning("redis_lost_its_data", node_id=self.node_id, restoring=True)
            self._restore_into_redis()
            await self.store.durable(self.store.recorded)
            await self._load_routes()
            self.restorations += 1
            event, self.restored = self.restored, trio.Event()
            event.set()
        return list(dead or ())

    async def _heartbeat_loop(self) -> None:
        failing = False
        while True:
            await trio.sleep(self._heartbeat_s)
            try:
                dead = await self._beat()
            except Exception as exc:
                if not failing:  # once per outage, not every heartbeat
                    log.warning("cluster_heartbeat_failed", error=str(exc))
                failing = True
                continue
            if failing:
                log.info("cluster_heartbeat_restored")
                failing = False
            for node_id in dead:
                name = _text(node_id)
                if name != self.node_id and await self.redis.set(
                    self.keys.cleanup(name), self.node_id, condition=PureToken.NX, px=30_000
                ):
                    try:
                        await self._cleanup(name)
                    except Exception:
                        log.exception("cluster_cleanup_failed", dead_node=name)

    async def _read(self, stream: str, last: str) -> tuple[str, list[Any]]:
        """One blocking read of ``stream`` after ``last``; retries while Redis is away."""
        attempt = 0
        while True:
            try:
                result = await self.redis.xread(
                    {stream: last}, count=READ_COUNT, block=READ_BLOCK_MS
                )
                break
            except Exception as exc:
                if attempt == 0:
                    log.warning("cluster_read_failed", stream=stream, error=str(exc))
                await trio.sleep(RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)])
                attempt += 1
        if not result:
            return last, []
        entries = list(next(iter(result.values())))
        return _text(entries[-1].identifier), entries

    async def _follow_routes(self) -> None:
        keys = self.keys
        while True:
            last, entries = await self._read(keys.route_log, self._route_log_id)
            if not entries:
                continue
            for entry in entries:
                fields = entry.field_values
                node_id = _text(fields[b"node"])
                topic_filter = _text(fields[b"filter"])
                if fields[b"op"] == b"+":
                    self.routes.add(node_id, topic_filter)
                else:
                    self.routes.remove(node_id, topic_filter)
            self._route_log_id = last
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.hset(keys.applied, {self.node_id: last})
                    pipe.xadd(
                        keys.applied_log,
                        {b"node": self.node_id.encode(), b"id": last.encode()},
                        trim_strategy=PureToken.MAXLEN,
                        threshold=1000,
                        trim_operator=PureToken.APPROXIMATELY,
                    )
            except Exception as exc:
                log.warning("cluster_applied_failed", error=str(exc))

    async def _follow_applied(self) -> None:
        """Wake route-barrier waiters whenever some node says it applied the route log."""
        last = "$"
        while True:
            last, entries = await self._read(self.keys.applied_log, last)
            if last == "$":
                continue
            if entries:
                event, self._routes_changed = self._routes_changed, trio.Event()
                event.set()

    async def wait_routes_applied(self, stream_id: str) -> None:
        """Return once every live node has applied the route log up to ``stream_id`` (a
        node that dies meanwhile stops counting once its heartbeat is too old; one that is
        alive but does not answer within two node timeouts is logged and not waited for)."""
        target = _stream_id(stream_id)
        deadline = trio.current_time() + 2 * self.config.node_timeout_s
        while True:
            if trio.current_time() > deadline:
                log.warning("cluster_route_barrier_timeout", route_log_id=stream_id)
                return
            changed = self._routes_changed
            try:
                live = [n for n in await self.live_nodes() if n != self.node_id]
                if not live:
                    return
                applied = await self.redis.hmget(self.keys.applied, live)
            except Exception as exc:
                log.warning("cluster_barrier_retry", error=str(exc))
                await trio.sleep(RETRY_DELAYS_S[2])
                continue
            if all(a is not None and _stream_id(a) >= target for a in applied):
                return
            with trio.move_on_after(self._heartbeat_s):
                await changed.wait()

    async def _follow_retained(self) -> None:
        while True:
            last, entries = await self._read(self.keys.retained_log, self._retained_log_id)
            for entry in entries:
                fields = entry.field_values
                packed = fields.get(b"message", b"")
                topic = _text(fields[b"topic"])
                self.broker.apply_retained(topic, unpack_message(bytes(packed)) if packed else None)
            self._retained_log_id = last
            self._retained_applied = _stream_id(last)
            event, self._retained_changed = self._retained_changed, trio.Event()
            event.set()

    async def wait_retained_applied(self, stream_id: str) -> None:
        """Return once this node has applied the retained log up to ``stream_id``."""
        target = _stream_id(stream_id)
        while self._retained_applied < target:
            await self._retained_changed.wait()

    async def _follow_inbox(self) -> None:
        inbox = self.keys.inbox(self.node_id)
        last = "0-0"
        while True:
            last, entries = await self._read(inbox, last)
            for entry in entries:
                self._receive(entry.field_values)
            if entries:
                # Processed entries leave the inbox in the same transaction as what they
                # changed here: a node adopting this one's sessions after a crash finds in
                # the inbox exactly what was not yet taken, nothing twice.
                self.store.inbox_done(self.node_id, [_text(e.identifier) for e in entries])

    def _receive(self, fields: Mapping[Any, Any], only: set[str] | None = None) -> None:
        """One inbox entry: one forwarded message or several, or a control request or reply."""
        packed = fields.get(b"m")
        if packed is None:
            batch = fields.get(b"b")
            if batch is None:
                self._control(fields)
            elif self._first_time(fields):
                for cluster_id, named, one in unpack_forwards(bytes(batch)):
                    self._receive_forward(one, cluster_id, named, only)
            return
        if not self._first_time(fields):
            return
        target = fields.get(b"c")
        if target is None:
            self._receive_forward(bytes(packed), fields.get(b"i"), fields.get(b"G"), only)
            return
        message, identifiers = unpack_delivery(bytes(packed))
        message_id = fields.get(b"i")
        message.cluster_id = message_id
        self.received += 1
        client_id = _text(target)
        if only is None or client_id in only:
            qos = int(fields[b"g"])
            self._deliver_to(client_id, message, qos, message_id, identifiers)

    def _first_time(self, fields: Mapping[Any, Any]) -> bool:
        """False for a copy of a forward sent again after a connection error."""
        origin = (fields.get(b"o", b""), fields.get(b"e", b""))
        seq = int(fields.get(b"s", b"0"))
        if seq and seq <= self._seen.get(origin, 0):
            return False
        self._seen[origin] = seq
        return True

    def _control(self, fields: Mapping[Any, Any]) -> None:
        """A control request or reply between nodes (see ``take_over``)."""
        kind = fields.get(b"k")
        if kind == b"take":
            assert self._nursery is not None
            self._nursery.start_soon(
                self._handle_take,
                _text(fields[b"c"]),
                _text(fields[b"f"]),
                _text(fields[b"r"]),
                fields.get(b"n") == b"1",
            )
        elif kind == b"stop":
            self._drop_forwarder(_text(fields[b"c"]))
            self.store.control(_text(fields[b"f"]), {b"k": b"done", b"r": fields[b"r"]})
        elif kind == b"done":
            event = self._requests.pop(_text(fields[b"r"]), None)
            if event is not None:
                event.set()

    def _receive_forward(
        self, packed: bytes, message_id: bytes | None, named: bytes | None, only: set[str] | None
    ) -> None:
        """A message forwarded to this node's subscribers (``only``: to these adopted
        sessions), and the shared groups ``named`` that the publishing node chose this node to
        serve (none from a node older than shared groups across nodes)."""
        message = unpack_delivery(packed)[0]
        message.cluster_id = message_id
        self.received += 1
        if only is not None:
            self._route_to(message, only)
            return
        groups = set(_text(named).split("\n")) if named else set()
        skip = self._handed_over(message, message_id) if self._handover else ()
        self.broker.route(message, from_cluster=True, skip=skip, groups=groups)

    def _route_to(self, message: Message, client_ids: set[str]) -> None:
        """Deliver ``message`` only to the sessions ``client_ids`` (adopted ones), as the
        broker routes (subscription options and identifiers included)."""
        self.broker.route(message, from_cluster=True, skip=_AllBut(client_ids))

    # -- client ids across nodes -----------------------------------------------------------------
    #
    # A persistent session moving from node B to node C must lose nothing and deliver nothing
    # twice, although other nodes keep routing its messages to B until C's routes are in
    # place. So B does not just drop the session: a ForwardingSession takes its place, with
    # its subscriptions, and sends whatever is still routed there on to C, aimed at that one
    # session. C loads the session, registers its routes and waits until every node has
    # them, then tells B to stop forwarding. Meanwhile a message can reach C twice -- once by
    # route, once through B -- so for a while C remembers the cluster ids of the messages it
    # delivered to that session and delivers each once.

    async def take_over(self, client_id: str, clean_session: bool) -> StoredSession | None:
        """Make this node the one with ``client_id``'s connection ([MQTT-3.1.4-2]).

        The nodes with its old connection and with its persistent session close the one and
        hand the other over (see above); a persistent session is loaded from Redis and
        resumed here before this returns, its routes in place on every live node.

        Returns:
            None: the session, if any, is in the broker already (``open_session`` finds it).
        """
        keys = self.keys
        self._drop_forwarder(client_id)  # it comes back here: nothing more to forward
        self._loading[client_id] = []
        try:
            previous, host = await self.claim(client_id)
            host_id = _text(host) if host is not None else None
            elsewhere = {_text(n) for n in (previous, host) if n is not None} - {self.node_id}
            # A client id new to the cluster (or last here) needs nobody's answer: no second
            # round trip for the live nodes.
            live = set(await self.live_nodes()) if elsewhere else set()
            if host_id is not None and host_id != self.node_id and host_id not in live:
                # The host died: its cleanup adopts the session (with what its inbox still
                # held for it) -- here, or on another node, which then hands it over.
                await self._cleaned_up(host_id)
                new_host = await self.redis.hget(keys.hosts, client_id)
                host_id = _text(new_host) if new_host is not None else None
                live = set(await self.live_nodes())
            others = {_text(n) for n in (previous,) if n is not None}
            if host_id is not None:
                others.add(host_id)
            for node_id in sorted((others - {self.node_id}) & live):
                if not await self._request(node_id, "take", client_id, clean=clean_session):
                    # A node that looks alive did not let go of the client: taking its
                    # session anyway could leave two nodes with it. The client tries again.
                    raise TakeOverFailed(f"node {node_id} did not answer")
            if client_id in self.broker.sessions or host_id is None:
                return None
            # Read this node's own writes first: a session it ended a moment ago (a DISCONNECT
            # with Session Expiry Interval 0, then a reconnect here) may still be on its way
            # to Redis, and would come back with Session Present 1 (1 conformance run in ~15).
            await self.store.durable(self.store.recorded)
            stored = await self.store.load_session(client_id)
            if stored is None:
                return None
            if clean_session:
                self.store.session_deleted(client_id, ())
                return None
            seen = self._handover[client_id] = set()
            first = self.store.recorded
            self.broker.restore_session(stored)
            for message, qos, message_id, identifiers in self._loading.pop(client_id, ()):
                self._deliver_to(client_id, message, qos, message_id, identifiers)
            # Its routes in place everywhere before CONNACK, then B may stop forwarding.
            last = self.store.recorded
            await self.store.durable(last)
            await self.store.settled(first, last)
            if host_id is not None and host_id != self.node_id:
                assert self._nursery is not None
                self._nursery.start_soon(self._end_handover, host_id, client_id, seen)
            return None
        finally:
            self._loading.pop(client_id, None)

    async def claim(self, client_id: str) -> tuple[Any, Any]:
        """Register ``client_id``'s connection here, atomically with reading where it was:
        its previous connection node and the host of its persistent session (None: none).

        The claim waits for ``_claim_loop`` to send it, with every other claim pending then.

        Raises:
            Exception: what the Redis call raised (the same for every claim it carried);
                ``TakeOverFailed`` when this node stops first.
        """
        claim = _Claim(client_id)
        self._claims.append(claim)
        if len(self._claims) == 1:
            self._claims_pending.set()
        try:
            await claim.done.wait()
        except BaseException:
            claim.abandoned = True  # not sent yet: left out (sent: nobody waits for it)
            raise
        if claim.error is not None:
            # Raised in every CONNECT of the call: each with the traceback of the call only.
            raise claim.error.with_traceback(claim.traceback)
        return claim.result

    async def _claim_loop(self) -> None:
        """Send the pending claims, as many as are pending when this runs, in one script
        call. No timer gathers them: an idle node sends one claim at once; under a connect
        storm the claims made during one round trip go together in the next."""
        keys = [self.keys.clients, self.keys.hosts]
        batch: list[_Claim] = []
        try:
            while True:
                if not self._claims:
                    self._claims_pending = trio.Event()
                    await self._claims_pending.wait()
                    continue
                batch = [c for c in self._claims[:MAX_CLAIMS] if not c.abandoned]
                del self._claims[:MAX_CLAIMS]
                if not batch:
                    continue
                self.claim_calls += 1
                try:
                    claimed: Any = await self._claim(
                        keys=keys, args=[self.node_id, *(c.client_id for c in batch)]
                    )
                except Exception as exc:  # every CONNECT of the call fails as alone
                    for claim in batch:
                        claim.fail(exc)
                else:
                    for index, claim in enumerate(batch):
                        claim.result = (claimed[2 * index], claimed[2 * index + 1])
                        claim.done.set()
                batch = []
        finally:
            # This node stops: nobody will send what is left.
            stopped = TakeOverFailed("cluster node stopped")
            for claim in (*batch, *self._claims):
                claim.fail(stopped)
            self._claims.clear()

    async def _end_handover(self, old_host: str, client_id: str, seen: set[bytes]) -> None:
        """Tell the old host to stop forwarding; keep deduplicating a little longer for
        copies still on their way."""
        await self._request(old_host, "stop", client_id)
        await self._forget_handover(client_id, seen)

    async def _forget_handover(self, client_id: str, seen: set[bytes]) -> None:
        await trio.sleep(HANDOVER_DEDUP_S)
        if self._handover.get(client_id) is seen:
            del self._handover[client_id]

    async def _request(
        self, node_id: str, kind: str, client_id: str, *, clean: bool = False
    ) -> bool:
        """Ask ``node_id`` to do ``kind`` for ``client_id``; True once it answered, False
        after ``TAKE_TIMEOUT_S`` without an answer."""
        request_id = f"{self.node_id}:{next(self._request_ids)}"
        event = self._requests[request_id] = trio.Event()
        fields = {
            b"k": kind.encode(),
            b"c": client_id.encode(),
            b"f": self.node_id.encode(),
            b"r": request_id.encode(),
            b"n": b"1" if clean else b"0",
        }
        self.store.control(node_id, fields)
        with trio.move_on_after(TAKE_TIMEOUT_S) as scope:
            await event.wait()
        if scope.cancelled_caught:
            self._requests.pop(request_id, None)
            log.warning("cluster_request_timeout", node=node_id, request=kind, client_id=client_id)
            return False
        return True

    async def _handle_take(
        self, client_id: str, new_node: str, request_id: str, clean: bool
    ) -> None:
        """Another node takes ``client_id`` over: close its connection here; once everything
        recorded for its persistent session is in Redis, a forwarder takes the session's
        place (or, when the new connection starts a clean session, the session ends here and
        its messages with it [MQTT-3.1.2-6]); then say so."""
        try:
            await self._kick_client(client_id)
            session = self.broker.sessions.get(client_id)
            if session is not None and not session.clean_session and clean:
                self.broker.discard_session(client_id)
                log.info("session_discarded", client_id=client_id, reason="clean_session_elsewhere")
            elif session is not None and not session.clean_session:
                await self.store.durable(self.store.recorded)
                forwarder = ForwardingSession(client_id, self.broker.limits, self.store, new_node)
                self.broker.release_session(client_id, forwarder)
                self._forwarders[client_id] = forwarder
                assert self._nursery is not None
                self._nursery.start_soon(self._expire_forwarder, client_id, forwarder)
                log.info("session_handed_over", client_id=client_id, to_node=new_node)
        finally:
            self.store.control(new_node, {b"k": b"done", b"r": request_id.encode()})

    async def _expire_forwarder(self, client_id: str, forwarder: ForwardingSession) -> None:
        """A forwarder whose new node never said stop (it died) goes after a while."""
        await trio.sleep(FORWARDER_TIMEOUT_S)
        if self._forwarders.get(client_id) is forwarder:
            self._drop_forwarder(client_id)

    def _drop_forwarder(self, client_id: str) -> None:
        forwarder = self._forwarders.pop(client_id, None)
        if forwarder is not None:
            self.broker.drop_forwarder(client_id, forwarder)

    def _deliver_to(
        self,
        client_id: str,
        message: Message,
        qos: int,
        message_id: bytes | None,
        subscription_ids: tuple[int, ...] = (),
    ) -> None:
        """A message aimed at one session (forwarded by its previous node, with the RETAIN
        flag -- ``message.retain`` -- and Subscription Identifiers of its delivery)."""
        pending = self._loading.get(client_id)
        if pending is not None and client_id not in self.broker.sessions:
            # delivered once the session is here
            pending.append((message, qos, message_id, subscription_ids))
            return
        seen = self._handover.get(client_id)
        if seen is None:
            return  # not a session handed over here (any more): a stale forward
        if message_id is not None:
            if message_id in seen:
                return
            seen.add(message_id)
        session = self.broker.sessions.get(client_id)
        if session is None or isinstance(session, ForwardingSession):
            return
        if session.may_receive is not None and not session.may_receive(message.topic):
            return
        if session.offer(message, qos, message.retain, subscription_ids) is OfferResult.DROPPED:
            self.broker.stats.messages_dropped += 1

    def _handed_over(self, message: Message, message_id: bytes | None) -> set[str]:
        """The sessions being handed over here that already have ``message`` (and note the
        others have it now)."""
        skip: set[str] = set()
        if message_id is None:
            return skip
        matches = self.broker.tree.matches(message.topic)
        for client_id, seen in self._handover.items():
            if client_id in matches:
                if message_id in seen:
                    skip.add(client_id)
                else:
                    seen.add(message_id)
        return skip

    # -- dead nodes -------------------------------------------------------------------------------

    async def _cleanup(self, dead: str, *, previous_self: bool = False) -> None:
        """Clean up after a dead node (or this node's previous life): its hosted sessions
        first (a client that sees its Will and reconnects must find its session), then its
        routes and registry entries, then the Wills of its clients."""
        keys = self.keys
        redis = self.redis
        log.warning("cluster_node_dead", dead_node=dead, previous_self=previous_self)
        # Its hosted persistent sessions come here, with what its inbox still held for them.
        adopted: set[str] = set()
        for raw in await redis.smembers(keys.hosted(dead)):
            client_id = _text(raw)
            won: Any = await self._adopt(
                keys=[keys.hosts, keys.hosted(dead), keys.hosted(self.node_id)],
                args=[client_id, dead, self.node_id],
            )
            if not won or client_id in self.broker.sessions:
                continue
            stored = await self.store.load_session(client_id)
            if stored is not None:
                self.broker.restore_session(stored)
                adopted.add(client_id)
        if adopted:
            self.sessions_adopted += len(adopted)
            for client_id in adopted:  # forwards still aimed at the dead node's sessions
                seen = self._handover[client_id] = set()
                assert self._nursery is not None
                self._nursery.start_soon(self._forget_handover, client_id, seen)
            entries = await redis.xrange(keys.inbox(dead), "-", "+")
            for entry in entries:
                self._receive(entry.field_values, only=adopted)
        for topic_filter in await redis.smembers(keys.routes(dead)):
            self.store.route_of_dead_node(dead, _text(topic_filter))
        await self.store.durable(self.store.recorded)
        await redis.delete([keys.routes(dead), keys.inbox(dead), keys.hosted(dead)])
        await redis.hdel(keys.applied, [dead])
        # Wills of its clients, once: a client that reconnected elsewhere took its Will along.
        wills = await redis.hgetall(keys.wills(dead))
        for will_client, packed in wills.items():
            owner = await redis.hget(keys.clients, will_client)
            if owner is not None and _text(owner) != dead:
                continue
            will = unpack_will(bytes(packed))
            # At once, Will Delay Interval or not (see the module docstring); an MQTT 5 Will
            # with its properties, its Message Expiry Interval starting now.
            if will.properties is NO_PROPERTIES:
                self.broker.publish(will.topic, will.message, will.qos, will.retain)
            else:
                self.broker.publish_message(
                    Message.from_publish(
                        will.topic,
                        will.message,
                        will.qos,
                        will.retain,
                        will.properties,
                        time.time(),
                    )
                )
            self.wills_published += 1
        await redis.delete([keys.wills(dead)])
        if not previous_self:
            await redis.zrem(keys.nodes, [dead])
        log.info(
            "cluster_node_cleaned",
            dead_node=dead,
            wills=len(wills),
            sessions_adopted=len(adopted),
        )

    async def _cleaned_up(self, dead: str) -> None:
        """Make sure dead ``dead`` is cleaned up: here, or by whoever holds its lock (then wait
        until it is gone from the nodes, bounded)."""
        lock = await self.redis.set(
            self.keys.cleanup(dead), self.node_id, condition=PureToken.NX, px=30_000
        )
        if lock:
            await self._cleanup(dead)
            return
        with trio.move_on_after(TAKE_TIMEOUT_S):
            while await self.redis.zscore(self.keys.nodes, dead) is not None:  # noqa: ASYNC110
                await trio.sleep(self._heartbeat_s / 4)  # another node is cleaning up

    async def leave(self) -> None:
        """Graceful shutdown: the Wills of this node's clients are not due (the server is
        shutting down), and the other nodes may clean up at once -- remove the routes, adopt
        the hosted sessions -- instead of waiting for the heartbeat to expire."""
        try:
            await self.store.durable(self.store.recorded)
            await self.redis.delete([self.keys.wills(self.node_id)])
            await self.redis.zadd(self.keys.nodes, {self.node_id: 0})
        except Exception as exc:  # best effort: the heartbeat expires all the same
            log.warning("cluster_leave_incomplete", error=str(exc))
            return
        log.info("cluster_left", node_id=self.node_id)

    # -- figures for $SYS --------------------------------------------------------------------------

    async def totals(self, mine: dict[str, int]) -> tuple[dict[str, int], int]:
        """Publish this node's figures; return the sums over every live node, and how many
        live nodes there are."""
        key = self.keys.stats(self.node_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, {name: str(value) for name, value in mine.items()})
            pipe.pexpire(key, self._timeout_ms * 3)
        live = await self.live_nodes()
        totals: dict[str, int] = {}
        for node_id in live:
            figures = await self.redis.hgetall(self.keys.stats(node_id))
            for name, value in figures.items():
                totals[_text(name)] = totals.get(_text(name), 0) + int(value)
        return totals, len(live)

    def figures(self) -> dict[str, int]:
        """This node's cluster counters."""
        return {
            "routes": len(self.routes),
            "forwarded": self.forwarded,
            "received": self.received,
            "forwards_dropped": self.store.forwards_dropped,
            "wills_published": self.wills_published,
            "sessions_adopted": self.sessions_adopted,
        }
