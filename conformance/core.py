"""Case registry, per-run context and the scripted MQTT client the cases drive."""

from __future__ import annotations

import dataclasses
import re
import secrets
import string as _string
from collections.abc import Awaitable, Callable, Collection, Iterable
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
#: Appended to the sections of MQTT 5.0 cases, whose numbers overlap 3.1.1's.
V5_SUFFIX = " (5.0)"
#: Protocol versions by their CONNECT level: 3 = MQTT 3.1, 4 = 3.1.1, 5 = 5.0.
PROTOCOLS = (3, 4, 5)
PROTOCOL_NAMES = {3: "MQTT 3.1", 4: "MQTT 3.1.1", 5: "MQTT 5.0"}


@dataclass(frozen=True, slots=True)
class Case:
    """One conformance case: it checks the listed normative statements.

    ``protocol`` is the MQTT version the case speaks and whose statement ids it cites: 4
    (3.1.1, the ids of ``conformance.statements``), 5 (5.0, ``conformance.statements5``) or 3
    (MQTT 3.1, ``mqtt31``, no ids).
    """

    id: str
    statements: tuple[str, ...]
    title: str
    func: CaseFunc
    transport: str = "any"  # "any" or "ws" (runs only with --ws/--wss)
    mqtt31: bool = False
    #: For a case that checks a paragraph with no statement id (such as the control characters
    #: of 1.5.3, which a receiver MAY refuse): the section it is in.
    section: str = ""
    protocol: int = 4

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
        suffix = V5_SUFFIX if self.protocol == 5 else ""
        return tuple(sec + suffix for sec in out) or ("other" + suffix,)


REGISTRY: dict[str, Case] = {}


def case(
    case_id: str,
    *statements: str,
    title: str,
    transport: str = "any",
    mqtt31: bool = False,
    section: str = "",
    protocol: int = 4,
) -> Callable[[CaseFunc], CaseFunc]:
    """Register an async case function under ``case_id``.

    A case names the statements it checks; one that checks a paragraph without a statement id
    names its ``section`` instead, and an MQTT 3.1 case sets ``mqtt31``. An MQTT 5.0 case sets
    ``protocol=5``: its statement ids are 5.0 ids, and its id starts with ``v5-``.
    """
    if mqtt31:
        protocol = 3
    if protocol not in PROTOCOLS:
        raise ValueError(f"bad protocol {protocol} in {case_id}")
    if (protocol == 5) != case_id.startswith("v5-"):
        raise ValueError(f"{case_id}: MQTT 5 case ids, and only they, start with 'v5-'")

    def register(func: CaseFunc) -> CaseFunc:
        if case_id in REGISTRY:
            raise ValueError(f"duplicate case id {case_id}")
        for sid in statements:
            if not re.match(r"MQTT-\d+\.\d+\.\d+-\d+$", sid):
                raise ValueError(f"bad statement id {sid!r} in {case_id}")
        if section and not re.match(r"\d+(\.\d+)*$", section):
            raise ValueError(f"bad section {section!r} in {case_id}")
        REGISTRY[case_id] = Case(
            case_id, tuple(statements), title, func, transport, mqtt31, section, protocol
        )
        return func

    return register


def case5(
    case_id: str,
    *statements: str,
    title: str,
    transport: str = "any",
    section: str = "",
) -> Callable[[CaseFunc], CaseFunc]:
    """Register an MQTT 5.0 case (``case`` with ``protocol=5``): its statement ids are 5.0 ids,
    its clients speak MQTT 5 unless told."""
    return case(case_id, *statements, title=title, transport=transport, section=section, protocol=5)


#: The packets a server may put a Reason String or User Property in after Request Problem
#: Information 0 [MQTT-3.1.2-29].
NO_PROBLEM_INFO_OK = frozenset({wire.PUBLISH, wire.CONNACK, wire.DISCONNECT})


class Client:
    """One scripted connection. Packets that arrive while waiting for something else are kept.

    An MQTT 5 client (``version`` 5, the default in an MQTT 5 case) reads packets in the MQTT 5
    layout and checks every packet the broker sends against the rules that bind a server
    whatever the case is about (``_check5``): what ``wire.check_packet`` finds, the Maximum
    Packet Size, Topic Alias Maximum, Receive Maximum and Request Problem Information this
    client announced, CONNACK first and once, nothing after a DISCONNECT. A broken rule fails
    the case with the statement it breaks. Topic aliases the broker sends are resolved, so
    ``Packet.topic`` is always the topic name.
    """

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
        self.version = ctx.version
        self.decoder = wire.Decoder(self.version)
        self.backlog: list[wire.Packet] = []
        self.auto_ack = True
        self.closed = False
        self.client_id: str | None = None
        self._next_pid = 0
        self._marker_topic: str | None = None
        # MQTT 5 state: what this client announced in CONNECT, what the broker answered.
        #: The CONNACK (None until one arrived).
        self.connack: wire.Packet | None = None
        #: The DISCONNECT the broker sent (None if none).
        self.disconnect_packet: wire.Packet | None = None
        self.max_packet_size: int | None = None
        self.topic_alias_max = 0
        self.receive_max = 65535
        self.request_problem_info = True
        self.auth_method: str | None = None
        #: What the broker's CONNACK announced (defaults: everything on).
        self.server_max_qos = 2
        self.retain_available = True
        self.server_max_packet_size: int | None = None
        #: Topic aliases the broker set up on this connection: alias -> topic.
        self.aliases: dict[int, bytes] = {}
        #: Packet ids of QoS 1/2 PUBLISHes from the broker not acknowledged yet ([MQTT-3.3.4-9]).
        self.unacked: set[int] = set()
        self._sent = wire.Framer()

    # -- raw I/O ---------------------------------------------------------------------------
    async def send(self, data: bytes) -> None:
        if self.version == 5:
            self._note_sent(data)
        await self.stream.send(data)

    def _note_sent(self, data: bytes) -> None:
        """Track the acknowledgements this client sends, for the Receive Maximum check."""
        try:
            sent = self._sent.feed(data)
        except wire.WireError:
            return  # a case sending a broken packet on purpose
        for first, body in sent:
            kind = first >> 4
            if kind in (wire.PUBACK, wire.PUBREC, wire.PUBCOMP) and len(body) >= 2:
                failed = kind == wire.PUBREC and len(body) > 2 and body[2] >= 0x80
                if kind != wire.PUBREC or failed:
                    self.unacked.discard(wire.packet_id(body))

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
                if self.version == 5:
                    pkt = self._check5(pkt)
                if self.auto_ack:
                    await self._auto_ack(pkt)
                return pkt
            try:
                self.decoder.feed(await self.stream.receive())
            except Closed:
                self.closed = True
                raise

    def _check5(self, pkt: wire.Packet) -> wire.Packet:
        """Check a packet from the broker against the server rules of MQTT 5 (see the class
        docstring); returns it with an aliased topic resolved."""
        problems = wire.check_packet(pkt)
        if self.disconnect_packet is not None:
            problems.append(
                f"{pkt.name} after the broker's DISCONNECT [MQTT-3.14.4-1] [MQTT-3.14.4-2]"
            )
        if self.max_packet_size is not None and len(pkt.raw) > self.max_packet_size:
            problems.append(
                f"{pkt.name} of {len(pkt.raw)} bytes exceeds this client's Maximum Packet Size "
                f"{self.max_packet_size} [MQTT-3.1.2-24]"
            )
        accepted = self.connack is not None and (self.connack.reason or 0) < 0x80
        if pkt.type == wire.DISCONNECT and not accepted:
            problems.append(
                "DISCONNECT before a CONNACK with a reason code below 0x80 [MQTT-3.14.0-1]"
            )
        elif self.connack is None and pkt.type not in (wire.CONNACK, wire.AUTH):
            problems.append(f"{pkt.name} before the CONNACK [MQTT-3.2.0-1]")
        elif self.connack is not None and pkt.type == wire.CONNACK:
            problems.append("a second CONNACK [MQTT-3.2.0-2]")
        problem_info = pkt.has(wire.REASON_STRING) or pkt.has(wire.USER_PROPERTY)
        if problem_info and not self.request_problem_info and pkt.type not in NO_PROBLEM_INFO_OK:
            problems.append(
                f"{pkt.name} with a Reason String or User Property after Request Problem "
                "Information 0 [MQTT-3.1.2-29]"
            )
        if self.auth_method is None and (
            pkt.type == wire.AUTH
            or (pkt.type == wire.CONNACK and pkt.has(wire.AUTHENTICATION_METHOD))
        ):
            problems.append(
                f"{pkt.name} with authentication, but the CONNECT had no Authentication Method "
                "[MQTT-4.12.0-6]"
            )
        if pkt.type == wire.DISCONNECT:
            if pkt.has(wire.SESSION_EXPIRY_INTERVAL):
                problems.append(
                    "DISCONNECT from the server with a Session Expiry Interval [MQTT-3.14.2-2]"
                )
            self.disconnect_packet = pkt
        if pkt.type == wire.CONNACK and self.connack is None:
            self.connack = pkt
        if pkt.type == wire.PUBLISH:
            pkt, alias_problems = self._resolve_alias(pkt)
            problems += alias_problems
            if pkt.qos and pkt.pid is not None:
                self.unacked.add(pkt.pid)
                if len(self.unacked) > self.receive_max:
                    problems.append(
                        f"{len(self.unacked)} unacknowledged QoS 1/2 PUBLISHes, above this "
                        f"client's Receive Maximum {self.receive_max} [MQTT-3.3.4-9]"
                    )
        if problems:
            raise Fail(f"{self.label}: broker sent {pkt.describe()}: " + "; ".join(problems))
        return pkt

    def _resolve_alias(self, pkt: wire.Packet) -> tuple[wire.Packet, list[str]]:
        alias = pkt.prop(wire.TOPIC_ALIAS)
        if not isinstance(alias, int):
            return pkt, []
        if alias > self.topic_alias_max:
            which = (
                "[MQTT-3.1.2-27]" if not self.topic_alias_max else "[MQTT-3.1.2-26] [MQTT-3.3.2-11]"
            )
            return pkt, [
                f"Topic Alias {alias} above this client's Topic Alias Maximum "
                f"{self.topic_alias_max} {which}"
            ]
        if pkt.topic:
            self.aliases[alias] = pkt.topic
            return pkt, []
        if alias not in self.aliases:
            return pkt, [f"Topic Alias {alias} used before the broker set it up"]
        return dataclasses.replace(pkt, topic=self.aliases[alias]), []

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
        self,
        *,
        allow_packets: bool = False,
        grace: float = 0.0,
        reasons: Collection[int] | None = None,
    ) -> list[wire.Packet]:
        """The broker must close the connection within ``grace`` + the timeout; returns the
        packets received before the close.

        An MQTT 5 broker may send a DISCONNECT with a reason code first (4.13): that is not
        an extra packet. With ``reasons``, such a DISCONNECT must carry one of them (closing
        without a DISCONNECT stays allowed).
        """
        seen = list(self.backlog)
        self.backlog.clear()
        with trio.move_on_after(grace + self.ctx.timeout):
            try:
                while True:
                    pkt = await self._read_packet()
                    seen.append(pkt)
            except Closed:
                extra = seen
                if self.version == 5 and seen and seen[-1].type == wire.DISCONNECT:
                    extra = seen[:-1]
                if extra and not allow_packets:
                    raise Fail(
                        f"{self.label}: connection closed, but only after sending "
                        + ", ".join(p.describe() for p in extra)
                    ) from None
                sent = self.disconnect_packet
                if reasons is not None and sent is not None and sent.reason not in reasons:
                    want = " or ".join(f"{r:#04x}" for r in sorted(reasons))
                    raise Fail(
                        f"{self.label}: closed with DISCONNECT reason {sent.reason:#04x}, "
                        f"expected {want}"
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
        proto: tuple[str, int] | None = None,
        version: int | None = None,
        properties: Iterable[wire.PropertyIn] | None = None,
        will_properties: Iterable[wire.PropertyIn] | None = None,
        session_expiry: int | None = None,
    ) -> wire.Packet:
        """Send CONNECT (with the configured credentials unless ``username`` is given) and read
        the CONNACK; ``will`` and ``proto`` are as in ``wire.connect``.

        ``version`` (default: the case's) 5 sends an MQTT 5 CONNECT with ``properties``
        (``session_expiry`` adds a Session Expiry Interval first) and ``will_properties``;
        ``expect_code`` is then the CONNACK reason code. The limits the properties announce
        (Maximum Packet Size, Topic Alias Maximum, Receive Maximum, Request Problem
        Information, Authentication Method) are checked on every packet the broker sends. A
        zero-length ClientId becomes the Assigned Client Identifier.
        """
        if client_id is None:
            client_id = self.ctx.cid(self.name)
        self.client_id = client_id
        if self.ctx.target.username is not None and username is None:
            username = self.ctx.target.username
            if self.ctx.target.password is not None:
                password = self.ctx.target.password.encode()
        version = self.version if version is None else version
        if version != 5:
            self.version = self.decoder.version = 4
            proto = proto or ("MQTT", 4)
            if not clean:
                self.ctx.persistent_ids.add((client_id, 4 if proto[0] == "MQTT" else 3))
            await self.send(
                wire.connect(client_id, clean, keepalive, will, username, password, proto)
            )
            pkt = await self.recv(what="CONNACK")
            if pkt.type != wire.CONNACK or len(pkt.raw) != 4:
                raise Fail(f"{self.label}: expected CONNACK, got {pkt.describe()}")
            if expect_code is not None and pkt.raw[3] != expect_code:
                raise Fail(
                    f"{self.label}: CONNACK code {pkt.raw[3]:#04x}, expected {expect_code:#04x}"
                )
            return pkt
        props = list(properties or ())
        if session_expiry is not None:
            props.insert(0, (wire.SESSION_EXPIRY_INTERVAL, session_expiry))
        self.announce(props)
        self.version = self.decoder.version = 5
        await self.send(
            wire.connect(
                client_id,
                clean,
                keepalive,
                will,
                username,
                password,
                proto,
                version=5,
                properties=props,
                will_properties=will_properties,
            )
        )
        try:
            pkt = await self.recv(what="CONNACK")
        except Fail:
            small = self.max_packet_size is not None and self.max_packet_size < 64
            if self.closed and small:
                # [MQTT-3.1.2-24]: a broker whose CONNACK needs more than the client allows
                # can only close the connection.
                raise Skip(
                    f"closed before CONNACK: the broker's CONNACK may not fit in "
                    f"{self.max_packet_size} bytes"
                ) from None
            raise
        if pkt.type != wire.CONNACK:
            raise Fail(f"{self.label}: expected CONNACK, got {pkt.describe()}")
        max_qos = pkt.prop(wire.MAXIMUM_QOS)
        self.server_max_qos = max_qos if isinstance(max_qos, int) else 2
        self.retain_available = pkt.prop(wire.RETAIN_AVAILABLE) != 0
        limit = pkt.prop(wire.MAXIMUM_PACKET_SIZE)
        self.server_max_packet_size = limit if isinstance(limit, int) else None
        assigned = pkt.prop(wire.ASSIGNED_CLIENT_IDENTIFIER)
        if not client_id and isinstance(assigned, str):
            self.client_id = assigned
        expiry = dict(props).get(wire.SESSION_EXPIRY_INTERVAL)
        if isinstance(expiry, int) and expiry > 0 and self.client_id:
            self.ctx.persistent_ids.add((self.client_id, 5))
        if expect_code is not None and pkt.reason != expect_code:
            raise Fail(
                f"{self.label}: CONNACK reason {pkt.reason:#04x}, expected {expect_code:#04x} "
                f"({pkt.describe()})"
            )
        return pkt

    def announce(self, props: list[wire.PropertyIn]) -> None:
        """Remember the limits an MQTT 5 CONNECT announces (the last value of each counts);
        ``connect`` calls it, a case sending its own CONNECT bytes may too."""
        for ident, value in props:
            if ident == wire.MAXIMUM_PACKET_SIZE and isinstance(value, int):
                self.max_packet_size = value
            elif ident == wire.TOPIC_ALIAS_MAXIMUM and isinstance(value, int):
                self.topic_alias_max = value
            elif ident == wire.RECEIVE_MAXIMUM and isinstance(value, int):
                self.receive_max = value
            elif ident == wire.REQUEST_PROBLEM_INFORMATION and isinstance(value, int):
                self.request_problem_info = value != 0
            elif ident == wire.AUTHENTICATION_METHOD and isinstance(value, str):
                self.auth_method = value

    def requires(self, *, qos: int = 0, retain: bool = False, size: int = 0) -> None:
        """Skip the case if this client's CONNACK (MQTT 5) announced that the broker does not
        take a PUBLISH of this QoS, retained messages, or packets of ``size`` bytes."""
        if self.server_max_packet_size is not None and size > self.server_max_packet_size:
            raise Skip(f"the broker announces Maximum Packet Size {self.server_max_packet_size}")
        if qos > self.server_max_qos:
            raise Skip(f"the broker announces Maximum QoS {self.server_max_qos}")
        if retain and not self.retain_available:
            raise Skip("the broker announces Retain Available 0")

    async def subscribe(
        self,
        filters: Iterable[tuple[str | bytes, int]],
        *,
        check: bool = True,
        properties: Iterable[wire.PropertyIn] | None = None,
    ) -> wire.Packet:
        """SUBSCRIBE and wait for the SUBACK; with ``check`` every code must equal the QoS.

        MQTT 5: the number after each filter is the Subscription Options byte
        (``wire.subscription_options``), whose QoS bits are what ``check`` compares.
        """
        filters = list(filters)
        pid = self.pid()
        if self.version == 5:
            await self.send(wire.subscribe(pid, filters, version=5, properties=properties))
        else:
            await self.send(wire.subscribe(pid, filters))
        suback = await self.expect_type(wire.SUBACK, pid)
        want = [min(q & 0x03, self.server_max_qos) if self.version == 5 else q for _, q in filters]
        if check and list(suback.codes) != want:
            raise Fail(
                f"{self.label}: SUBACK codes {[hex(c) for c in suback.codes]} for requested {want}"
            )
        return suback

    async def unsubscribe(
        self, filters: list[str | bytes], *, properties: Iterable[wire.PropertyIn] | None = None
    ) -> wire.Packet:
        pid = self.pid()
        if self.version == 5:
            await self.send(wire.unsubscribe(pid, filters, version=5, properties=properties))
        else:
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
        properties: Iterable[wire.PropertyIn] | None = None,
    ) -> int | None:
        """PUBLISH; with ``complete`` finish the QoS 1/2 flow before returning (MQTT 5: a
        PUBREC with a reason code of 0x80 or more ends it, without PUBREL). An MQTT 5 case
        that publishes what the broker announced it does not take is skipped (``requires``)."""
        self.requires(qos=qos, retain=retain)
        pid = self.pid() if qos else None
        if retain:
            self.ctx.retained_topics.add(topic)
        if self.version == 5:
            data = wire.publish(
                topic, payload, qos, retain, dup, pid, version=5, properties=properties
            )
        else:
            data = wire.publish(topic, payload, qos=qos, retain=retain, dup=dup, pid=pid)
        await self.send(data)
        if complete and qos == 1:
            await self.expect_type(wire.PUBACK, pid)
        elif complete and qos == 2:
            assert pid is not None
            rec = await self.expect_type(wire.PUBREC, pid)
            if (rec.reason or 0) < 0x80:
                await self.send(wire.pubrel(pid))
                await self.expect_type(wire.PUBCOMP, pid)
        return pid

    async def ping(self) -> None:
        await self.send(wire.pingreq())
        await self.expect_type(wire.PINGRESP)

    async def disconnect(
        self,
        *,
        reason: int | None = None,
        properties: Iterable[wire.PropertyIn] | None = None,
    ) -> None:
        """DISCONNECT (MQTT 5: with an optional reason code and properties), then close."""
        try:
            await self.send(wire.disconnect(reason=reason, properties=properties))
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
    #: (ClientId, protocol level) of every session that may outlive its connection.
    persistent_ids: set[tuple[str, int]] = field(default_factory=set)
    choices: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Connections opened so far (the next one goes to ``target.endpoint(connections)``).
    connections: int = 0
    #: The protocol level the case's clients speak unless told: 5 in an MQTT 5 case, else 4.
    version: int = 4
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

    async def requires(self, *, qos: int = 0, retain: bool = False) -> None:
        """Skip the case unless the broker takes QoS ``qos`` and (if ``retain``) retained
        messages, as its CONNACK to a probe connection announces (MQTT 5)."""
        probe = await self.connected("probe")
        probe.requires(qos=qos, retain=retain)
        await probe.disconnect()

    async def persistent_subscriber(
        self, qos: int, *, session_expiry: int = 300
    ) -> tuple[Client, str, str]:
        """A CleanSession 0 client subscribed at ``qos`` to a fresh topic: (client, id, topic).
        In an MQTT 5 case: Clean Start 0 with a Session Expiry Interval of ``session_expiry``
        seconds."""
        cid = self.cid("p")
        topic = self.topic("s")
        client = await self.client("a")
        if self.version == 5:
            await client.connect(cid, clean=False, session_expiry=session_expiry)
        else:
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
        for client_id, level in sorted(self.persistent_ids):
            c = await self.client("cleanup")
            if level == 5:  # Clean Start 1, Session Expiry 0: the session ends with the close
                await c.connect(client_id, clean=True, expect_code=None, version=5)
            else:
                proto = ("MQTT", 4) if level == 4 else ("MQIsdp", 3)
                await c.connect(client_id, clean=True, expect_code=None, proto=proto, version=4)
            await c.disconnect()
        if self.retained_topics:
            c = await self.client("cleanup")
            await c.connect()
            for topic in sorted(self.retained_topics, key=repr):
                pid = c.pid()
                await c.send(wire.publish(topic, b"", 1, True, pid=pid, version=c.version))
                await c.expect_type(wire.PUBACK)
            await c.disconnect()
