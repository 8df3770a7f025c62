"""Hostile-client building blocks: hypothesis strategies for bad byte streams, and a harness
that runs many hypothesis examples against ONE in-process broker.

Theory of operation: a hostile test is an ordinary trio test (pytest-trio's ``trio_mode``). It
starts the broker in its nursery with ``FuzzHarness.start``, then hands a plain ``@given``
function to ``FuzzHarness.run_examples``, which calls it in a worker thread
(``trio.to_thread.run_sync``). Hypothesis drives its examples from that thread; each example
runs its network I/O back on the test's trio loop with ``trio.from_thread.run``. So the broker,
the healthy client and every offender share one event loop and one broker for the whole test,
while hypothesis keeps its usual shrinking and reporting.

Each ``Case`` says what the broker must do with its bytes: ``closes`` (malformed input: the
broker closes the connection by itself, [MQTT-4.8.0-1]) or not (the offender half-closes after
sending, so every connection ends), and ``expected``: None for "any well-formed server byte
stream", else the bytes the broker answers -- all of them (``exact``) or a prefix (it may close
before flushing replies to packets that came before a malformed one).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from hypothesis import strategies as st

from mqttd.config import Config, LimitsConfig, ListenerConfig, StoreConfig
from mqttd.server import Server, serve
from tests.helpers import wire
from tests.helpers.client import TIMEOUT_S, WireClient, connect_client, subscribe

#: Packet types a server may send (MQTT 3.1.1 Table 2.1).
SERVER_TO_CLIENT_TYPES = frozenset({2, 3, 4, 5, 6, 7, 9, 11, 13})

#: ``max_packet_size`` of the hostile brokers: small, so "too large" is cheap to provoke.
HOSTILE_MAX_PACKET_SIZE = 1 << 20

#: Byte sequences that are not well-formed UTF-8 [MQTT-1.5.3-1], plus U+0000 [MQTT-1.5.3-2].
BAD_UTF8 = (
    b"\xff",  # never valid
    b"\xc0\xaf",  # overlong '/'
    b"\xe0\x80\xaf",  # overlong, three bytes
    b"\xed\xa0\x80",  # UTF-16 surrogate U+D800
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xe2\x82",  # truncated sequence
    b"\x80",  # lone continuation byte
    b"\x00",  # U+0000
)


@dataclass(frozen=True)
class Case:
    """One offender: the bytes it sends and what the broker may answer.

    Attributes:
        kind: a short label for reports.
        data: everything the offender sends, in one go.
        expected: None = any valid server byte stream; otherwise what the broker answers.
        exact: the broker must send all of ``expected`` (else a prefix of it is fine: it may
            close before flushing replies to packets that came before a malformed one).
        closes: the broker must close the connection by itself (malformed input); otherwise
            the offender half-closes after sending, so the broker ends the connection anyway.
    """

    kind: str
    data: bytes
    expected: bytes | None = None
    exact: bool = False
    closes: bool = False


def server_packets(data: bytes) -> list[bytes]:
    """Split a server-to-client byte stream into packets, asserting it is well formed:
    whole packets, server packet types only, and at most one CONNACK, sent first."""
    packets = []
    pos = 0
    while pos < len(data):
        kind = data[pos] >> 4
        assert kind in SERVER_TO_CLIENT_TYPES, f"server sent packet type {kind}: {data.hex(' ')}"
        length = 0
        i = pos + 1
        for shift in range(0, 28, 7):
            assert i < len(data), f"truncated fixed header: {data.hex(' ')}"
            byte = data[i]
            i += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
        else:
            raise AssertionError(f"server sent a 5-byte Remaining Length: {data.hex(' ')}")
        end = i + length
        assert end <= len(data), f"truncated packet from the server: {data.hex(' ')}"
        packets.append(data[pos:end])
        pos = end
    kinds = [p[0] >> 4 for p in packets]
    assert kinds.count(2) <= 1, f"more than one CONNACK: {kinds}"
    assert 2 not in kinds[1:], f"CONNACK not first: {kinds}"
    return packets


# --- strategies --------------------------------------------------------------------------------

_LEVELS = st.sampled_from(["a", "b", "sensor", "x y", "é", ""])
topic_names = st.lists(_LEVELS, min_size=1, max_size=4).map("/".join)
topic_filters = st.one_of(
    topic_names,
    st.lists(st.one_of(_LEVELS, st.just("+")), min_size=1, max_size=4).map("/".join),
    st.lists(_LEVELS, max_size=3).map(lambda levels: "/".join([*levels, "#"])),
)
packet_ids = st.integers(1, 65535)


@st.composite
def client_packets(draw: st.DrawFn) -> bytes:
    """One valid client-to-server packet other than CONNECT (MQTT 3.1.1)."""
    kind = draw(st.sampled_from(["publish", "ack", "subscribe", "unsubscribe", "pingreq"]))
    if kind == "publish":
        qos = draw(st.integers(0, 2))
        return wire.publish(
            draw(topic_names),
            draw(st.binary(max_size=64)),
            qos=qos,
            retain=draw(st.booleans()),
            pid=draw(packet_ids) if qos else None,
        )
    if kind == "ack":
        build = draw(st.sampled_from([wire.puback, wire.pubrec, wire.pubrel, wire.pubcomp]))
        return build(draw(packet_ids))
    if kind == "subscribe":
        subs = draw(st.lists(st.tuples(topic_filters, st.integers(0, 2)), min_size=1, max_size=3))
        return wire.subscribe(draw(packet_ids), subs)
    if kind == "unsubscribe":
        return wire.unsubscribe(draw(packet_ids), draw(st.lists(topic_filters, min_size=1)))
    return wire.pingreq()


def fuzz_connect(client_id: str) -> bytes:
    """The valid CONNECT every post-CONNECT case starts with (clean session, no keepalive)."""
    return wire.connect(client_id)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few random bit flips, byte overwrites, insertions and deletions."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        if not out and op != "insert":
            op = "insert"
        i = draw(st.integers(0, max(len(out) - 1, 0)))
        if op == "flip":
            out[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            out[i] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        elif op == "insert":
            out[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del out[i : i + draw(st.integers(1, 8))]
    return bytes(out)


def client_ids() -> st.SearchStrategy[str]:
    """Offender client ids: never the healthy client's (``healthy-<uuid>``)."""
    return st.integers(0, 50).map(lambda n: f"fuzz-{n}")


@st.composite
def mutated_streams(draw: st.DrawFn) -> Case:
    """A valid CONNECT, then valid packets; then random mutations of the packets (or of the
    CONNECT itself), or a truncation anywhere after the CONNECT."""
    connect = fuzz_connect(draw(client_ids()))
    tail = b"".join(draw(st.lists(client_packets(), min_size=1, max_size=6)))
    kind = draw(st.sampled_from(["mutated", "mutated_connect", "truncated"]))
    if kind == "mutated":
        tail = draw(mutated(tail))
    elif kind == "mutated_connect":
        connect = draw(mutated(connect))
    else:
        tail = tail[: draw(st.integers(0, len(tail) - 1))]
    return Case(kind, connect + tail)


@st.composite
def bytes_before_connect(draw: st.DrawFn) -> Case:
    """Random bytes instead of CONNECT: closed at once unless they could start a CONNECT
    [MQTT-3.1.0-1]."""
    data = draw(st.binary(min_size=1, max_size=512))
    if data[0] >> 4 == 1:
        return Case("random_connect", data)  # may be a (broken) CONNECT: wait for EOF
    return Case("random_before_connect", data, closes=True, expected=b"", exact=True)


def _varint_over(limit: int) -> st.SearchStrategy[bytes]:
    """Remaining Length encodings of values above ``limit``, or invalid 5-byte ones."""
    return st.one_of(
        st.integers(limit + 1, 268_435_455).map(wire.varint),
        st.just(b"\xff\xff\xff\x7f"),
        st.binary(min_size=1, max_size=3).map(lambda b: b"\xff\xff\xff\xff" + b),  # 5 bytes
    )


@st.composite
def huge_remaining_lengths(draw: st.DrawFn) -> Case:
    """A fixed header announcing more than ``max_packet_size`` (or a 5-byte Remaining Length):
    closed without waiting for the body."""
    header = draw(_varint_over(HOSTILE_MAX_PACKET_SIZE))
    if draw(st.booleans()):
        return Case("huge_before_connect", b"\x10" + header, closes=True, expected=b"", exact=True)
    first = draw(st.sampled_from([0x30, 0x32, 0x82, 0xA2]))
    return Case(
        "huge_length",
        fuzz_connect(draw(client_ids())) + bytes([first]) + header,
        expected=wire.connack(0, 0),
    )


@st.composite
def bad_utf8_text(draw: st.DrawFn) -> bytes:
    """Text with one ill-formed UTF-8 sequence (or U+0000) somewhere in it."""
    text = draw(topic_names).encode()
    i = draw(st.integers(0, len(text)))
    return text[:i] + draw(st.sampled_from(BAD_UTF8)) + text[i:]


@st.composite
def invalid_utf8(draw: st.DrawFn) -> Case:
    """Ill-formed UTF-8 in any string field: the connection is closed [MQTT-1.5.3-1]; in
    CONNECT, without a CONNACK [MQTT-3.1.4-1]."""
    bad = draw(bad_utf8_text())
    field = draw(
        st.sampled_from(["client_id", "will_topic", "username", "topic", "filter", "unsub"])
    )
    client_id = draw(client_ids())
    if field == "client_id":
        return Case("utf8_client_id", wire.connect(bad), closes=True, expected=b"", exact=True)
    if field == "will_topic":
        return Case(
            "utf8_will_topic",
            wire.connect(client_id, will=(bad, b"x")),
            closes=True,
            expected=b"",
            exact=True,
        )
    if field == "username":
        return Case(
            "utf8_username",
            wire.connect(client_id, username=bad),
            closes=True,
            expected=b"",
            exact=True,
        )
    if field == "topic":
        packet = wire.publish(bad, b"x", qos=draw(st.integers(0, 1)), pid=1)
    elif field == "filter":
        packet = wire.subscribe(1, [("ok", 0), (bad, 0)])
    else:
        packet = wire.unsubscribe(1, [bad])
    return Case(
        f"utf8_{field}", fuzz_connect(client_id) + packet, closes=True, expected=wire.connack(0, 0)
    )


@st.composite
def forbidden_packets(draw: st.DrawFn) -> Case:
    """Packet types a client may not send, reserved types, a second CONNECT, and bad fixed
    header flags: closed, with nothing answered to them [MQTT-4.8.0-1]."""
    choice = draw(
        st.sampled_from(["server_type", "reserved", "connect", "flags", "qos3", "early", "level"])
    )
    body = draw(st.binary(max_size=8))
    if choice == "server_type":
        first = draw(st.sampled_from([0x20, 0x90, 0xB0, 0xD0])) | draw(st.integers(0, 15))
        packet = wire.packet(first, body)
    elif choice == "reserved":
        packet = wire.packet(draw(st.sampled_from([0x00, 0xF0])) | draw(st.integers(0, 15)), body)
    elif choice == "connect":
        packet = wire.connect("second")  # [MQTT-3.1.0-2]
    elif choice == "flags":
        # [MQTT-2.2.2-2] [MQTT-3.6.1-1] [MQTT-3.8.1-1] [MQTT-3.10.1-1] [MQTT-3.14.1-1]
        packet = draw(
            st.sampled_from(
                [
                    wire.packet(0x60, wire.u16(1)),
                    wire.packet(0x80, wire.u16(1) + wire.string("a") + b"\x00"),
                    wire.packet(0xA0, wire.u16(1) + wire.string("a")),
                    wire.packet(0xC1),
                    wire.packet(0xE2),
                    wire.packet(0x41, wire.u16(1)),
                ]
            )
        )
    elif choice == "qos3":
        packet = wire.packet(0x36 | draw(st.sampled_from([0, 1, 8, 9])), wire.string("a") + body)
    elif choice == "level":
        # [MQTT-3.1.2-2] unsupported protocol level: CONNACK 0x01, then close
        # Accepted: MQTT 4 and 5, MQIsdp 3, and each with a bridge's high bit (0x80).
        name, good = draw(st.sampled_from([("MQTT", (4, 5)), ("MQIsdp", (3,))]))
        level = draw(st.integers(0, 255).filter(lambda n: n & 0x7F not in good))
        data = wire.connect(draw(client_ids()), proto=(name, level))
        return Case("protocol_level", data, closes=True, expected=wire.connack(0, 1), exact=True)
    else:
        # [MQTT-3.1.0-1] any valid packet before CONNECT
        return Case("before_connect", draw(client_packets()), closes=True, expected=b"", exact=True)
    pings = draw(st.integers(0, 2))
    data = fuzz_connect(draw(client_ids())) + wire.pingreq() * pings + packet
    return Case(choice, data, closes=True, expected=wire.connack(0, 0) + wire.pingresp() * pings)


@st.composite
def deep_topics(draw: st.DrawFn, max_levels: int) -> Case:
    """Thousands of topic levels: a deeper-than-allowed PUBLISH closes the connection, a
    deeper filter gets SUBACK 0x80 [MQTT-3.9.3-2]; within the limit both work."""
    level = draw(st.sampled_from(["", "a", "+"]))
    # A string holds at most 65,535 bytes: 65,534 slashes between empty levels, 32,767 else.
    most = 65_534 if level == "" else 32_767
    counts = st.integers(1, min(max_levels - 1, most))
    if max_levels <= most:
        counts = st.one_of(st.integers(max_levels, most), counts)
    slashes = draw(counts)
    deep = "/".join([level] * (slashes + 1))
    client_id = draw(client_ids())
    if draw(st.booleans()):
        granted = 0x80 if slashes >= max_levels else 1
        data = fuzz_connect(client_id) + wire.subscribe(7, [(deep, 1)])
        return Case(
            "deep_filter", data, expected=wire.connack(0, 0) + wire.suback(7, [granted]), exact=True
        )
    topic = deep.replace("+", "p")
    data = fuzz_connect(client_id) + wire.publish(topic, b"deep", qos=1, pid=9)
    if slashes >= max_levels:
        return Case("deep_publish", data, closes=True, expected=wire.connack(0, 0))
    return Case("deep_publish_ok", data, expected=wire.connack(0, 0) + wire.puback(9), exact=True)


# --- the harness -------------------------------------------------------------------------------


def hostile_config(**limits: Any) -> Config:
    """A memory-only broker on 127.0.0.1:0 with ``HOSTILE_MAX_PACKET_SIZE`` and ``limits``."""
    limits.setdefault("max_packet_size", HOSTILE_MAX_PACKET_SIZE)
    return Config(
        listeners=(ListenerConfig(type="tcp", host="127.0.0.1", port=0),),
        limits=dataclasses.replace(LimitsConfig(), **limits),
        store=StoreConfig(durability="memory"),
    )


@dataclass(eq=False)
class FuzzHarness:
    """One broker, one healthy client, and a count of the hostile examples run against them."""

    server: Server
    serve_ended: trio.Event
    healthy: WireClient
    healthy_topic: str
    logs: list[dict[str, Any]]
    examples: int = 0
    kinds: dict[str, int] = dataclasses.field(default_factory=dict)

    @classmethod
    async def start(
        cls, nursery: trio.Nursery, logs: list[dict[str, Any]], **limits: Any
    ) -> FuzzHarness:
        """Start the broker (its task flags when ``serve`` returns or raises) and connect a
        healthy client subscribed to its own topic."""
        serve_ended = trio.Event()

        async def run_serve(*, task_status: trio.TaskStatus[Server]) -> None:
            try:
                await serve(hostile_config(**limits), task_status=task_status)
            finally:
                serve_ended.set()

        with trio.fail_after(TIMEOUT_S):
            server: Server = await nursery.start(run_serve)
        name = f"healthy-{uuid.uuid4().hex}"
        healthy = await connect_client(server.port(), name)
        topic = f"{name}/echo"
        await subscribe(healthy, 1, (topic, 0))
        return cls(server, serve_ended, healthy, topic, logs)

    async def attack(self, case: Case) -> bytes:
        """Send the case's bytes from a fresh connection; return everything the broker sent
        until it closed the connection (which it must do within ``TIMEOUT_S``)."""
        received = bytearray()
        with trio.fail_after(TIMEOUT_S):
            stream = await trio.open_tcp_stream("127.0.0.1", self.server.port())
        try:
            with trio.fail_after(TIMEOUT_S):
                try:
                    await stream.send_all(case.data)
                    if not case.closes:
                        await stream.send_eof()
                except trio.BrokenResourceError:
                    pass  # the broker closed first: allowed, the rest shows what it sent
                while True:
                    try:
                        chunk = await stream.receive_some(65536)
                    except trio.BrokenResourceError:
                        break  # reset by the broker: closed
                    if not chunk:
                        break
                    received += chunk
        finally:
            with trio.move_on_after(1):
                await stream.aclose()
        return bytes(received)

    async def check_healthy(self) -> None:
        """The healthy client still gets a publish back and a PINGRESP."""
        payload = self.examples.to_bytes(4, "big")
        await self.healthy.send(wire.publish(self.healthy_topic, payload) + wire.pingreq())
        await self.healthy.expect(wire.publish(self.healthy_topic, payload))
        await self.healthy.expect(wire.pingresp())

    def check_broker(self) -> None:
        """The serve task is still running and nothing was logged at ERROR."""
        assert not self.serve_ended.is_set(), "the broker's serve() task ended"
        errors = [e for e in self.logs if e.get("log_level") in ("error", "critical")]
        assert not errors, f"broker logged errors: {errors[:3]}"

    async def _example(self, case: Case) -> bytes:
        received = await self.attack(case)
        self.examples += 1
        self.kinds[case.kind] = self.kinds.get(case.kind, 0) + 1
        self.check_broker()
        await self.check_healthy()
        self.check_broker()
        return received

    def example(self, case: Case) -> bytes:
        """Run one case from hypothesis's worker thread and check the broker and the healthy
        client afterwards; returns what the broker sent the offender."""
        return trio.from_thread.run(self._example, case)

    async def run_examples(self, given_test: Callable[[], None]) -> None:
        """Run a ``@given`` test (which calls ``example``) in a worker thread."""
        await trio.to_thread.run_sync(given_test)

    def summary(self, name: str) -> str:
        kinds = ", ".join(f"{k}={n}" for k, n in sorted(self.kinds.items()))
        return f"{name}: {self.examples} hostile examples ({kinds})"


def check_answer(case: Case, received: bytes) -> None:
    """The broker's bytes for ``case`` obey what the case expects."""
    server_packets(received)
    if case.expected is None:
        return
    if case.exact:
        assert received.hex(" ") == case.expected.hex(" "), case.kind
    else:
        assert case.expected.startswith(received), (
            f"{case.kind}: got {received.hex(' ')}, expected a prefix of {case.expected.hex(' ')}"
        )
