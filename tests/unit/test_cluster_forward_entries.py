"""How ``RedisStore`` turns recorded forwards into inbox entries, without Redis: a fake pipeline
records the XADDs. Whatever the mix of operations, each node's inbox gets its messages in the
order they were recorded, each operation gets a result, the entries' sequence numbers rise,
and a batch sent again after a connection error writes the very same entries (so the receiver
drops them as copies)."""

from __future__ import annotations

from typing import Any

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from mqttd.cluster.redis_store import MAX_ENTRY_BYTES, MAX_ENTRY_FORWARDS, RedisStore
from mqttd.cluster.wire import Keys, unpack_forwards, unpack_message
from mqttd.message import Message


class _Reply:
    """A pipelined command's reply: awaitable once the pipeline ran."""

    def __init__(self, value: str) -> None:
        self.value = value

    def __await__(self) -> Any:
        return self._value().__await__()

    async def _value(self) -> str:
        return self.value


class _Pipeline:
    def __init__(self, log: list[tuple[str, dict[bytes, bytes]]]) -> None:
        self.log = log

    async def __aenter__(self) -> _Pipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def xadd(self, key: str, fields: dict[bytes, bytes]) -> _Reply:
        self.log.append((key, dict(fields)))
        return _Reply(f"{len(self.log)}-0")


class _Redis:
    """What ``RedisStore`` needs of a client for forwards and control messages."""

    def __init__(self) -> None:
        self.log: list[tuple[str, dict[bytes, bytes]]] = []

    def register_script(self, script: str) -> object:
        return object()

    def pipeline(self, transaction: bool) -> _Pipeline:
        assert transaction
        return _Pipeline(self.log)


# An operation for node "a" or "b": "f" forwards a message to its subscribers, "s" to one
# session there, "c" is a control message. Long runs of "f" to one node exceed an entry.
OPERATIONS = st.lists(
    st.tuples(st.sampled_from("ffffsc"), st.sampled_from(["a", "b"]))
    | st.tuples(st.just("f"), st.just("a")),
    max_size=3 * MAX_ENTRY_FORWARDS,
)


def _record(store: RedisStore, operations: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Record the operations; returns what each node should read, in order."""
    expected: list[tuple[str, str]] = []
    for n, (kind, node) in enumerate(operations):
        message = Message(f"t/{n}", b"%d" % n, n % 3)
        if kind == "f":
            store.forward(node, message, groups=["g"] if n % 5 == 0 else ())
            expected.append((node, f"t/{n}"))
        elif kind == "s":
            store.forward_to(node, "one", message, 1)
            expected.append((node, f"session t/{n}"))
        else:
            store.control(node, {b"k": b"done", b"r": b"%d" % n})
            expected.append((node, f"control {n}"))
    return expected


def _read(log: list[tuple[str, dict[bytes, bytes]]], keys: Keys) -> list[tuple[str, str]]:
    """Every inbox entry's contents, in the order written."""
    got: list[tuple[str, str]] = []
    for key, fields in log:
        node = "a" if key == keys.inbox("a") else "b"
        assert key == keys.inbox(node)
        if b"b" in fields:
            items = unpack_forwards(fields[b"b"])
            assert len(items) > 1  # a single message goes as an m entry
            got += [(node, unpack_message(packed).topic) for _, _, packed in items]
        elif b"c" in fields:
            got.append((node, f"session {unpack_message(fields[b'm']).topic}"))
        elif b"m" in fields:
            got.append((node, unpack_message(fields[b"m"]).topic))
        else:
            got.append((node, f"control {int(fields[b'r'])}"))
    return got


@settings(max_examples=60, deadline=None)
@given(OPERATIONS)
def test_entries_keep_the_recorded_order_and_survive_a_retry(
    operations: list[tuple[str, str]],
) -> None:
    keys = Keys("p")
    redis = _Redis()
    store = RedisStore(redis, keys, "origin", "e1")  # type: ignore[arg-type]
    expected = _record(store, operations)
    batch = list(store._ops)

    async def send_twice() -> tuple[list[Any], list[Any]]:
        return await store._execute(batch), await store._execute(batch)

    first, again = trio.run(send_twice)
    half = len(redis.log) // 2
    written, rewritten = redis.log[:half], redis.log[half:]
    assert _read(written, keys) == expected
    assert len(first) == len(again) == len(batch)  # one result per operation
    assert rewritten == written  # the retry: the same entries, the same sequence numbers
    forwards = [fields for _, fields in written if b"s" in fields]
    sequences = [int(fields[b"s"]) for fields in forwards]
    assert sequences == sorted(set(sequences))
    for fields in forwards:
        if b"b" in fields:
            assert len(unpack_forwards(fields[b"b"])) <= MAX_ENTRY_FORWARDS


def test_a_long_run_of_forwards_is_cut_into_entries_of_at_most_the_limit() -> None:
    """Forwards to one node past ``MAX_ENTRY_FORWARDS`` (or ``MAX_ENTRY_BYTES``) start a new
    entry: no inbox entry grows without bound."""
    keys = Keys("p")
    redis = _Redis()
    store = RedisStore(redis, keys, "origin", "e1")  # type: ignore[arg-type]
    count = 2 * MAX_ENTRY_FORWARDS + 88
    for n in range(count):
        store.forward("a", Message(f"t/{n}", b"x", 0))
    big = bytes(MAX_ENTRY_BYTES // 2)
    for n in range(3):
        store.forward("b", Message(f"big/{n}", big, 0))
    trio.run(store._execute, list(store._ops))
    sizes = [len(unpack_forwards(fields[b"b"])) if b"b" in fields else 1 for _, fields in redis.log]
    assert sizes == [MAX_ENTRY_FORWARDS, MAX_ENTRY_FORWARDS, 88, 2, 1]
