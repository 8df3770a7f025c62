"""Case registry, per-run context and the scripted MQTT client the cases drive."""

from __future__ import annotations

import re
import secrets
import string as _string
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import trio

from conformance import wire
from conformance.transport import Closed, RawStream, Target, WebSocketStream, open_connection

ALNUM = _string.ascii_letters + _string.digits


class Fail(Exception):
    """The broker did not do what the statement requires."""


class Skip(Exception):
    """The case cannot run against this broker/configuration."""


#: The Keep Alive of the CONNECTs ``Client.connect`` sends unless a case asks for another.
KEEPALIVE_S = 60


def rand(n: int = 8) -> str:
    return "".join(secrets.choice(ALNUM) for _ in range(n))


CaseFunc = Callable[["Context"], Awaitable[None]]

#: The summary-table section of the MQTT 3.1 (``MQIsdp``) cases, which cite no 3.1.1 statement.
MQTT31_SECTION = "3.1 (MQIsdp)"


@dataclass(frozen=True, slots=True)
class Case:
    """One conformance case: it checks the listed normative statements."""

    id: str
    statements: tuple[str, ...]
    title: str
    func: CaseFunc
    transport: str = "any"  # "any" or "ws" (runs only with --ws/--wss)
    mqtt31: bool = False
    #: For a case that checks a paragraph with no statement id (such as the control characters
    #: of 1.5.3, which a receiver MAY refuse): the section it is in.
    section: str = ""

    @property
    def sections(self) -> tuple[str, ...]:
        if self.mqtt31:
            return (MQTT31_SECTION,)
        out = []
        for sid in self.statements:
            m = re.match(r"MQTT-(\d+\.\d+\.\d+)-\d+$", sid)
            sec = m.group(1) if m else sid
            if sec not in out:
                out.append(sec)
        if self.section and self.section not in out:
            out.append(self.section)
        return tuple(out) or ("other",)


REGISTRY: dict[str, Case] = {}


def case(
    case_id: str,
    *statements: str,
    title: str,
    transport: str = "any",
    mqtt31: bool = False,
    section: str = "",
) -> Callable[[CaseFunc], CaseFunc]:
    """Register an async case function under ``case_id``.

    A case names the statements it checks; one that checks a paragraph without a statement id
    names its ``section`` instead, and an MQTT 3.1 case sets ``mqtt31``.
    """

    def register(func: CaseFunc) -> CaseFunc:
        if case_id in REGISTRY:
            raise ValueError(f"duplicate case id {case_id}")
        for sid in statements:
            if not re.match(r"MQTT-\d+\.\d+\.\d+-\d+$", sid):
                raise ValueError(f"bad statement id {sid!r} in {case_id}")
        if section and not re.match(r"\d+(\.\d+)*$", section):
            raise ValueError(f"bad section {section!r} in {case_id}")
        REGISTRY[case_id] = Case(
            case_id, tuple(statements), title, func, transport, mqtt31, section
        )
        return func

    return register


class Client:
    """One scripted connection. Packets that arrive while waiting for something else are kept."""

    def __init__(
        self,
        ctx: Context,
        stream: RawStream | WebSocketStream,
        name: str,
        endpoint: str | None = None,
    ) -> None:
        self.ctx = ctx
        self.stream = stream
        self.name = name
        #: Where this connection goes, when the target has several endpoints (else None).
        self.endpoint = endpoint
        self.decoder = wire.Decoder()
        self.backlog: list[wire.Packet] = []
        self.auto_ack = True
        self.closed = False
        self.client_id: str | None = None
        self._next_pid = 0
        self._marker_topic: str | None = None

    # -- raw I/O ---------------------------------------------------------------------------
    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    @property
    def label(self) -> str:
        """How failures name this connection: its name, and its endpoint when the target has
        several (so a failure says which node each connection talked to)."""
        return self.name if self.endpoint is None else f"{self.name}@{self.endpoint}"

    def pid(self) -> int:
        """A fresh non-zero packet identifier for this connection."""
        self._next_pid = self._next_pid % 65535 + 1
        return self._next_pid

    async def _read_packet(self) -> wire.Packet:
        while True:
            try:
                pkt = self.decoder.next()
            except wire.WireError as exc:
                raise Fail(f"{self.label}: broker sent an unparsable packet: {exc}") from exc
            if pkt is not None:
                if self.auto_ack:
                    await self._auto_ack(pkt)
                return pkt
            try:
                self.decoder.feed(await self.stream.receive())
            except Closed:
                self.closed = True
                raise

    async def _auto_ack(self, pkt: wire.Packet) -> None:
        try:
            if pkt.type == wire.PUBLISH and pkt.qos == 1 and pkt.pid is not None:
                await self.send(wire.puback(pkt.pid))
            elif pkt.type == wire.PUBLISH and pkt.qos == 2 and pkt.pid is not None:
                await self.send(wire.pubrec(pkt.pid))
            elif pkt.type == wire.PUBREL and pkt.pid is not None:
                await self.send(wire.pubcomp(pkt.pid))
        except Closed:
            self.closed = True

    async def recv(self, timeout: float | None = None, what: str = "a packet") -> wire.Packet:
        """The next packet (backlog first); Fail if nothing arrives within the timeout."""
        if self.backlog:
            return self.backlog.pop(0)
        with trio.move_on_after(self.ctx.timeout if timeout is None else timeout):
            try:
                return await self._read_packet()
            except Closed as exc:
                raise Fail(
                    f"{self.label}: connection closed while waiting for {what} ({exc})"
                ) from exc
        raise Fail(f"{self.label}: no {what} within {self.ctx.timeout}s")

    async def wait_for(
        self, pred: Callable[[wire.Packet], bool], what: str, timeout: float | None = None
    ) -> wire.Packet:
        """The first packet matching ``pred``; packets before it stay in the backlog."""
        for i, pkt in enumerate(self.backlog):
            if pred(pkt):
                return self.backlog.pop(i)
        with trio.move_on_after(self.ctx.timeout if timeout is None else timeout):
            while True:
                try:
                    pkt = await self._read_packet()
                except Closed as exc:
                    got = ", ".join(p.describe() for p in self.backlog) or "nothing"
                    raise Fail(
                        f"{self.label}: connection closed while waiting for {what} "
                        f"(received before: {got})"
                    ) from exc
                if pred(pkt):
                    return pkt
                self.backlog.append(pkt)
        got = ", ".join(p.describe() for p in self.backlog) or "nothing"
        raise Fail(f"{self.label}: no {what} within {self.ctx.timeout}s (received: {got})")

    async def expect_type(self, kind: int, pid: int | None = None) -> wire.Packet:
        name = wire.NAMES[kind] + (f" pid={pid}" if pid is not None else "")
        return await self.wait_for(lambda p: p.type == kind and (pid is None or p.pid == pid), name)

    async def expect_bytes(self, expected: bytes, what: str | None = None) -> wire.Packet:
        """The next packet must be exactly ``expected``."""
        pkt = await self.recv(what=what or expected.hex(" "))
        if pkt.raw != expected:
            raise Fail(
                f"{self.label}: expected {what or ''} bytes {expected.hex(' ')}, "
                f"got {pkt.raw.hex(' ')} ({pkt.describe()})"
            )
        return pkt

    async def expect_closed(
        self, *, allow_packets: bool = False, grace: float = 0.0
    ) -> list[wire.Packet]:
        """The broker must close the connection within ``grace`` + the timeout; returns the
        packets received before the close."""
        seen = list(self.backlog)
        self.backlog.clear()
        with trio.move_on_after(grace + self.ctx.timeout):
            try:
                while True:
                    pkt = await self._read_packet()
                    seen.append(pkt)
            except Closed:
                if seen and not allow_packets:
                    raise Fail(
                        f"{self.label}: connection closed, but only after sending "
                        + ", ".join(p.describe() for p in seen)
                    ) from None
                return seen
        got = ", ".join(p.describe() for p in seen)
        raise Fail(
            f"{self.label}: connection still open {grace + self.ctx.timeout:g}s later"
            + (f" (received: {got})" if got else "")
        )

    async def aclose(self) -> None:
        self.closed = True
        await self.stream.aclose()

    # -- protocol helpers ------------------------------------------------------------------
    async def connect(
        self,
        client_id: str | None = None,
        *,
        expect_code: int | None = 0,
        clean: bool = True,
        keepalive: int = KEEPALIVE_S,
        will: wire.Will | None = None,
        username: str | None = None,
        password: bytes | None = None,
        proto: tuple[str, int] = ("MQTT", 4),
    ) -> wire.Packet:
        """Send CONNECT (with the configured credentials unless ``username`` is given) and read
        the CONNACK; ``will`` and ``proto`` are as in ``wire.connect``."""
        if client_id is None:
            client_id = self.ctx.cid(self.name)
        self.client_id = client_id
        if self.ctx.target.username is not None and username is None:
            username = self.ctx.target.username
            if self.ctx.target.password is not None:
                password = self.ctx.target.password.encode()
        if not clean:
            self.ctx.persistent_ids.add((client_id, proto[0] == "MQTT"))
        await self.send(wire.connect(client_id, clean, keepalive, will, username, password, proto))
        pkt = await self.recv(what="CONNACK")
        if pkt.type != wire.CONNACK or len(pkt.raw) != 4:
            raise Fail(f"{self.label}: expected CONNACK, got {pkt.describe()}")
        if expect_code is not None and pkt.raw[3] != expect_code:
            raise Fail(f"{self.label}: CONNACK code {pkt.raw[3]:#04x}, expected {expect_code:#04x}")
        return pkt

    async def subscribe(
        self, filters: Iterable[tuple[str | bytes, int]], *, check: bool = True
    ) -> wire.Packet:
        """SUBSCRIBE and wait for the SUBACK; with ``check`` every code must equal the QoS."""
        filters = list(filters)
        pid = self.pid()
        await self.send(wire.subscribe(pid, filters))
        suback = await self.expect_type(wire.SUBACK, pid)
        if check and list(suback.codes) != [q for _, q in filters]:
            raise Fail(
                f"{self.label}: SUBACK codes {[hex(c) for c in suback.codes]} for requested "
                f"{[q for _, q in filters]}"
            )
        return suback

    async def unsubscribe(self, filters: list[str | bytes]) -> wire.Packet:
        pid = self.pid()
        await self.send(wire.unsubscribe(pid, filters))
        return await self.expect_type(wire.UNSUBACK, pid)

    async def publish(
        self,
        topic: str | bytes,
        payload: bytes = b"",
        *,
        qos: int = 0,
        retain: bool = False,
        dup: bool = False,
        complete: bool = True,
    ) -> int | None:
        """PUBLISH; with ``complete`` finish the QoS 1/2 flow before returning."""
        pid = self.pid() if qos else None
        if retain:
            self.ctx.retained_topics.add(topic)
        await self.send(wire.publish(topic, payload, qos=qos, retain=retain, dup=dup, pid=pid))
        if complete and qos == 1:
            await self.expect_type(wire.PUBACK, pid)
        elif complete and qos == 2:
            assert pid is not None
            await self.expect_type(wire.PUBREC, pid)
            await self.send(wire.pubrel(pid))
            await self.expect_type(wire.PUBCOMP, pid)
        return pid

    async def ping(self) -> None:
        await self.send(wire.pingreq())
        await self.expect_type(wire.PINGRESP)

    async def disconnect(self) -> None:
        try:
            await self.send(wire.disconnect())
        except Closed:
            pass
        await self.aclose()

    async def ensure_marker(self) -> str:
        """Subscribe (once) to this client's private marker topic at QoS 1."""
        if self._marker_topic is None:
            topic = self.ctx.topic(f"marker/{rand(6)}")
            await self.subscribe([(topic, 1)])
            self._marker_topic = topic
        return self._marker_topic

    async def flush(self, via: Client | None = None) -> list[wire.Packet]:
        """Prove what did not arrive: ``via`` (default: self) publishes a marker after the
        things under test; everything this client received before the marker is returned."""
        topic = await self.ensure_marker()
        token = b"marker-" + rand(10).encode()
        sender = via or self
        await sender.publish(topic, token, qos=1)

        def is_marker(p: wire.Packet) -> bool:
            return p.type == wire.PUBLISH and p.topic == topic.encode() and p.payload == token

        await self.wait_for(is_marker, "marker message")
        before = self.backlog
        self.backlog = []
        return before

    async def publishes(self, n: int, what: str = "PUBLISH") -> list[wire.Packet]:
        """The next ``n`` PUBLISH packets (other packets stay in the backlog)."""
        return [
            await self.wait_for(lambda p: p.type == wire.PUBLISH, f"{what} #{i + 1}")
            for i in range(n)
        ]


@dataclass
class Context:
    """Everything one case run needs: unique names, clients, cleanup and the outcome."""

    target: Target
    case_id: str
    run_id: str = field(default_factory=lambda: rand(8))
    clients: list[Client] = field(default_factory=list)
    retained_topics: set[str | bytes] = field(default_factory=set)
    persistent_ids: set[tuple[str, bool]] = field(default_factory=set)
    choices: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Connections opened so far (the next one goes to ``target.endpoint(connections)``).
    connections: int = 0
    _n: int = 0

    @property
    def timeout(self) -> float:
        return self.target.timeout

    def cid(self, tag: str = "c") -> str:
        """A unique client id of 1-23 alphanumerics (so every broker must accept it)."""
        self._n += 1
        tag = re.sub(r"[^A-Za-z0-9]", "", tag)[:6] or "c"
        return f"{tag}{self._n}{self.run_id}"[:23]

    def topic(self, suffix: str = "t") -> str:
        """A topic unique to this case run."""
        return f"conf/{self.run_id}/{suffix}"

    def choice(self, text: str) -> None:
        """Record a broker choice the spec allows (reported as info, not failure)."""
        self.choices.append(text)

    async def client(self, name: str = "c", *, subprotocols: list[str] | None = None) -> Client:
        """Open a new connection (no CONNECT sent yet); with several endpoints, the case's
        connections take them in turn (``Target.endpoint``)."""
        target = self.target.endpoint(self.connections)
        self.connections += 1
        try:
            with trio.fail_after(self.timeout):
                stream = await open_connection(target, subprotocols=subprotocols)
        except (OSError, trio.TooSlowError, Closed) as exc:
            raise Fail(f"cannot connect to {target.describe()}: {exc!r}") from exc
        several = target is not self.target
        c = Client(self, stream, name, target.describe() if several else None)
        self.clients.append(c)
        return c

    async def connected(self, name: str = "c", **kwargs: object) -> Client:
        """Open a connection and complete CONNECT/CONNACK (clean session unless told)."""
        c = await self.client(name)
        await c.connect(**kwargs)  # type: ignore[arg-type]
        return c

    async def persistent_subscriber(self, qos: int) -> tuple[Client, str, str]:
        """A CleanSession 0 client subscribed at ``qos`` to a fresh topic: (client, id, topic)."""
        cid = self.cid("p")
        topic = self.topic("s")
        client = await self.client("a")
        await client.connect(cid, clean=False)
        await client.subscribe([(topic, qos)])
        return client, cid, topic

    async def cleanup(self) -> None:
        """Close clients, clear retained messages and persistent sessions this run made."""
        try:
            await self._close_clients()
            if self.retained_topics or self.persistent_ids:
                with trio.move_on_after(self.timeout * 2):
                    await self._clear_state()
        finally:
            await self._close_clients()

    async def _close_clients(self) -> None:
        for c in self.clients:
            await c.stream.aclose()
            c.closed = True

    async def _clear_state(self) -> None:
        for client_id, v311 in sorted(self.persistent_ids):
            c = await self.client("cleanup")
            proto = ("MQTT", 4) if v311 else ("MQIsdp", 3)
            await c.connect(client_id, clean=True, expect_code=None, proto=proto)
            await c.disconnect()
        if self.retained_topics:
            c = await self.client("cleanup")
            await c.connect()
            for topic in sorted(self.retained_topics, key=repr):
                await c.send(wire.publish(topic, b"", qos=1, retain=True, pid=c.pid()))
                await c.expect_type(wire.PUBACK)
            await c.disconnect()
