"""CONNECT / CONNACK over a real loopback socket (MQTT 3.1.1 section 3.1, 3.2; MQTT 3.1)."""

from __future__ import annotations

from mqttd.server import Server
from tests.helpers import wire
from tests.helpers.client import WireClient, connect_client


async def test_connect_accepted(server: Server) -> None:
    """A valid 3.1.1 CONNECT gets CONNACK 0 with Session Present 0 [MQTT-3.1.4-4] [MQTT-3.2.0-1]."""
    client = await WireClient.open(server.port())
    await client.send(wire.connect("c1"))
    await client.expect(wire.connack(0, 0))


async def test_mqtt31_connect_accepted(server: Server) -> None:
    """MQTT 3.1 (MQIsdp, level 3) is accepted; Session Present is always 0 for 3.1."""
    client = await WireClient.open(server.port())
    await client.send(wire.connect("c31", clean=False, proto=("MQIsdp", 3)))
    await client.expect(wire.connack(0, 0))
    await client.send(wire.disconnect())
    client = await WireClient.open(server.port())
    await client.send(wire.connect("c31", clean=False, proto=("MQIsdp", 3)))
    await client.expect(wire.connack(0, 0))


async def test_unacceptable_protocol_level(server: Server) -> None:
    """Level 6 with name MQTT → CONNACK 0x01, then close [MQTT-3.1.2-2] [MQTT-3.2.2-5]."""
    client = await WireClient.open(server.port())
    await client.send(wire.connect("c", proto=("MQTT", 6)))
    await client.expect(wire.connack(0, 1))
    await client.expect_closed()


async def test_mqisdp_with_level_4_refused(server: Server) -> None:
    """MQIsdp with a level other than 3 → CONNACK 0x01 (as Mosquitto)."""
    client = await WireClient.open(server.port())
    await client.send(wire.connect("c", proto=("MQIsdp", 4)))
    await client.expect(wire.connack(0, 1))
    await client.expect_closed()


async def test_unknown_protocol_name_closed(server: Server) -> None:
    """An unknown protocol name closes without CONNACK [MQTT-3.1.2-1]."""
    client = await WireClient.open(server.port())
    await client.send(wire.connect("c", proto=("MQTX", 4)))
    await client.expect_closed()


async def test_empty_client_id_persistent_rejected(server: Server) -> None:
    """Zero-length ClientId with CleanSession=0 → CONNACK 0x02, close [MQTT-3.1.3-8]."""
    client = await WireClient.open(server.port())
    await client.send(wire.connect("", clean=False))
    await client.expect(wire.connack(0, 2))
    await client.expect_closed()


async def test_empty_client_id_mqtt31_rejected(server: Server) -> None:
    """MQTT 3.1 requires 1-23 characters: an empty id → CONNACK 0x02."""
    client = await WireClient.open(server.port())
    await client.send(wire.connect("", proto=("MQIsdp", 3)))
    await client.expect(wire.connack(0, 2))
    await client.expect_closed()


async def test_empty_client_id_clean_assigned(server: Server) -> None:
    """Zero-length ClientId with CleanSession=1 is accepted; the broker assigns an id
    [MQTT-3.1.3-6] [MQTT-3.1.3-7]."""
    client = await WireClient.open(server.port())
    await client.send(wire.connect(""))
    await client.expect(wire.connack(0, 0))
    ids = list(server.broker.sessions)
    assert len(ids) == 1
    assert ids[0].startswith("auto-")


async def test_first_packet_must_be_connect(server: Server) -> None:
    """Anything before CONNECT closes the connection without CONNACK [MQTT-3.1.0-1]."""
    client = await WireClient.open(server.port())
    await client.send(wire.pingreq())
    await client.expect_closed()


async def test_second_connect_closes(server: Server) -> None:
    """A second CONNECT is a protocol violation: close [MQTT-3.1.0-2]."""
    client = await connect_client(server.port(), "twice")
    await client.send(wire.connect("twice"))
    await client.expect_closed()


async def test_reserved_connect_flag_closes(server: Server) -> None:
    """CONNECT reserved flag bit set → close without CONNACK [MQTT-3.1.2-3] [MQTT-3.1.4-1]."""
    client = await WireClient.open(server.port())
    await client.send(wire.connect("c", flags=0x03))
    await client.expect_closed()


async def test_data_after_refused_connect_ignored(server: Server) -> None:
    """After a refused CONNECT nothing else the client sent is processed [MQTT-3.1.4-5]."""
    watcher = await connect_client(server.port(), "watcher")
    await watcher.send(wire.subscribe(1, [("after/refused", 0)]))
    await watcher.expect(wire.suback(1, [0]))
    client = await WireClient.open(server.port())
    await client.send(wire.connect("", clean=False) + wire.publish("after/refused", b"x"))
    await client.expect(wire.connack(0, 2))
    await client.expect_closed()
    await watcher.send(wire.publish("after/refused", b"marker"))
    await watcher.expect(wire.publish("after/refused", b"marker"))


async def test_takeover_disconnects_existing_client(server: Server) -> None:
    """A second connection with the same ClientId disconnects the first [MQTT-3.1.4-2]."""
    first = await connect_client(server.port(), "dup")
    second = await connect_client(server.port(), "dup")
    await first.expect_closed()
    await second.send(wire.pingreq())
    await second.expect(wire.pingresp())


async def test_anonymous_refused_when_not_allowed(start_server) -> None:  # type: ignore[no-untyped-def]
    """allow_anonymous = false refuses a CONNECT without user name: CONNACK 0x05, close."""
    from mqttd.config import AuthConfig

    server = await start_server(auth=AuthConfig(allow_anonymous=False))
    client = await WireClient.open(server.port())
    await client.send(wire.connect("anon"))
    await client.expect(wire.connack(0, 5))
    await client.expect_closed()


async def test_malformed_packet_closes_only_offender(server: Server) -> None:
    """Garbage from one client closes it; another client carries on [MQTT-4.8.0-1]."""
    healthy = await connect_client(server.port(), "healthy")
    bad = await connect_client(server.port(), "bad")
    await bad.send(b"\xf0\x00")  # packet type 15 is reserved
    await bad.expect_closed()
    await healthy.send(wire.pingreq())
    await healthy.expect(wire.pingresp())
