"""Control characters in UTF-8 strings: section 1.5.3 lets the receiver close — a choice.

Section 1.5.3, the paragraph after [MQTT-1.5.3-2] (it has no statement id): the data SHOULD
NOT include encodings of the control characters U+0001..U+001F and U+007F..U+009F, and "if a
receiver (Server or Client) receives a Control Packet containing any of them it MAY close the
Network Connection". One case per string field a client sends: the topic name of PUBLISH, the
topic filters of SUBSCRIBE and UNSUBSCRIBE, and the ClientId, User Name and Will Topic of
CONNECT. Each case sends the field with the first and last character of each range (one
connection per character) and reports, as a choice, what the broker did with each: closed the
connection with nothing sent, or processed the packet as usual (any other answer fails).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from conformance import wire
from conformance.core import Client, Context, Fail, case

#: The ends of both ranges the paragraph names.
CONTROL_CHARS = ("\x01", "\x1f", "\x7f", "\x9f")

CLOSES = "closes the connection"

#: Sends the field with one control character on a new connection; returns what happened.
Probe = Callable[[Context, str], Awaitable[str]]


async def _answer(c: Client, what: str) -> wire.Packet | None:
    """The broker's first packet, or None if it closed the connection without sending one."""
    try:
        return await c.recv(what=what)
    except Fail:
        if c.closed:
            return None
        raise


async def _refused_then_closed(c: Client, pkt: wire.Packet, codes: tuple[int, ...]) -> str:
    """A CONNACK refusing the CONNECT with one of ``codes``, which must then close."""
    if pkt.type != wire.CONNACK or len(pkt.raw) != 4 or pkt.raw[3] not in codes:
        raise Fail(f"{c.label}: CONNECT answered with {pkt.describe()}")
    await c.expect_closed()
    return f"refused with CONNACK {pkt.raw[3]:#04x}"


async def _publish_topic(ctx: Context, char: str) -> str:
    c = await ctx.connected("pub")
    await c.send(wire.publish(ctx.topic(f"a{char}b"), b"x", qos=1, pid=1))
    pkt = await _answer(c, "PUBACK or close")
    if pkt is None:
        return CLOSES
    if pkt.raw != wire.puback(1):
        raise Fail(f"QoS 1 PUBLISH answered with {pkt.describe()}")
    return "accepted (PUBACK)"


async def _subscribe_filter(ctx: Context, char: str) -> str:
    c = await ctx.connected("sub")
    await c.send(wire.subscribe(1, [(ctx.topic(f"a{char}b"), 1)]))
    pkt = await _answer(c, "SUBACK or close")
    if pkt is None:
        return CLOSES
    if pkt.raw == wire.suback(1, [1]):
        return "accepted (SUBACK 0x01)"
    if pkt.raw == wire.suback(1, [0x80]):
        return "refused with SUBACK 0x80"
    raise Fail(f"SUBSCRIBE answered with {pkt.describe()}")


async def _unsubscribe_filter(ctx: Context, char: str) -> str:
    c = await ctx.connected("unsub")
    await c.send(wire.unsubscribe(1, [ctx.topic(f"a{char}b")]))
    pkt = await _answer(c, "UNSUBACK or close")
    if pkt is None:
        return CLOSES
    if pkt.raw != wire.ack(wire.UNSUBACK, 1):
        raise Fail(f"UNSUBSCRIBE answered with {pkt.describe()}")
    return "accepted (UNSUBACK)"


def _credentials(ctx: Context) -> tuple[str | None, bytes | None]:
    """The configured User Name and Password (``--username/--password``), if any."""
    target = ctx.target
    if target.username is None or target.password is None:
        return target.username, None
    return target.username, target.password.encode()


async def _connect_probe(ctx: Context, packet: bytes, refusals: tuple[int, ...]) -> str:
    """Send a CONNECT; CONNACK 0 is "accepted", a refusal in ``refusals`` must close."""
    c = await ctx.client("conn")
    await c.send(packet)
    pkt = await _answer(c, "CONNACK or close")
    if pkt is None:
        return CLOSES
    if pkt.raw == wire.connack(False, 0):
        return "accepted (CONNACK 0x00)"
    return await _refused_then_closed(c, pkt, refusals)


async def _client_id(ctx: Context, char: str) -> str:
    username, password = _credentials(ctx)
    packet = wire.connect(f"a{char}{ctx.cid()}"[:23], username=username, password=password)
    # A broker may reject any ClientId that is not 1-23 alphanumerics ([MQTT-3.1.3-9]): 0x02.
    return await _connect_probe(ctx, packet, (2,))


async def _username(ctx: Context, char: str) -> str:
    # Not the configured identity, so a broker with authentication refuses it (0x04, 0x05).
    packet = wire.connect(ctx.cid(), username=f"a{char}b")
    return await _connect_probe(ctx, packet, (4, 5))


async def _will_topic(ctx: Context, char: str) -> str:
    username, password = _credentials(ctx)
    will = (ctx.topic(f"w{char}b"), b"will")
    packet = wire.connect(ctx.cid(), will=will, username=username, password=password)
    return await _connect_probe(ctx, packet, ())


def _summary(field: str, outcomes: dict[str, str]) -> str:
    """One line: what each character did, grouped by outcome, in the order tried."""
    by_outcome: dict[str, list[str]] = {}
    for char, outcome in outcomes.items():
        by_outcome.setdefault(outcome, []).append(f"U+{ord(char):04X}")
    parts = [f"{', '.join(chars)}: {outcome}" for outcome, chars in by_outcome.items()]
    return f"control characters in {field}: " + "; ".join(parts)


def _register(case_id: str, field: str, probe: Probe) -> None:
    async def run(ctx: Context) -> None:
        outcomes = {char: await probe(ctx, char) for char in CONTROL_CHARS}
        ctx.choice(_summary(field, outcomes))

    case(
        case_id,
        section="1.5.3",
        title=f"U+0001/001F/007F/009F in {field}: closed (MAY) or processed — a choice",
    )(run)


for _case_id, _field, _probe in (
    ("publish-topic-control-chars", "a PUBLISH topic name", _publish_topic),
    ("subscribe-filter-control-chars", "a SUBSCRIBE topic filter", _subscribe_filter),
    ("unsubscribe-filter-control-chars", "an UNSUBSCRIBE topic filter", _unsubscribe_filter),
    ("connect-client-id-control-chars", "the ClientId", _client_id),
    ("connect-username-control-chars", "the User Name", _username),
    ("connect-will-topic-control-chars", "the Will Topic", _will_topic),
):
    _register(_case_id, _field, _probe)
