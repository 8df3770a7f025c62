"""Authentication (Mosquitto-format password files), ACLs and SIGHUP-style reload, over real
sockets."""

from __future__ import annotations

from pathlib import Path

from mqttd.auth import hash_password
from mqttd.config import AuthConfig
from tests.helpers import wire
from tests.helpers.client import WireClient, connect_client, subscribe, sync

ACL = """\
# anonymous clients: read the news only
topic read news/#

user alice
topic readwrite home/alice/#
topic read news/#
topic write news/alice

user bob
topic read home/alice/#
topic deny home/alice/secret

pattern readwrite devices/%c/#
"""


def _auth(tmp_path: Path, *, acl: str | None = ACL, anonymous: bool = True) -> AuthConfig:
    passwords = tmp_path / "passwd"
    passwords.write_text(
        f"alice:{hash_password('wonderland')}\nbob:{hash_password('builder', iterations=1000)}\n"
    )
    acl_file = None
    if acl is not None:
        acl_file = tmp_path / "acl"
        acl_file.write_text(acl)
    return AuthConfig(allow_anonymous=anonymous, password_file=passwords, acl_file=acl_file)


async def test_right_password_accepted(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A user in the password file with the right password gets CONNACK 0."""
    server = await start_server(auth=_auth(tmp_path))
    await connect_client(server.port(), "a", username="alice", password=b"wonderland")


async def test_wrong_password_refused(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A wrong password gets CONNACK 0x04, then the connection is closed [MQTT-3.2.2-5]."""
    server = await start_server(auth=_auth(tmp_path))
    client = await WireClient.open(server.port())
    await client.send(wire.connect("a", username="alice", password=b"queen"))
    await client.expect(wire.connack(0, 4))
    await client.expect_closed()


async def test_unknown_user_and_missing_password_refused(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """An unknown user, or a known user without a password, gets CONNACK 0x04."""
    server = await start_server(auth=_auth(tmp_path))
    for connect in (
        wire.connect("x", username="mallory", password=b"wonderland"),
        wire.connect("y", username="alice"),
    ):
        client = await WireClient.open(server.port())
        await client.send(connect)
        await client.expect(wire.connack(0, 4))
        await client.expect_closed()


async def test_anonymous_off_refused_with_not_authorized(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """allow_anonymous = false: no user name gets CONNACK 0x05."""
    server = await start_server(auth=_auth(tmp_path, anonymous=False))
    client = await WireClient.open(server.port())
    await client.send(wire.connect("anon"))
    await client.expect(wire.connack(0, 5))
    await client.expect_closed()


async def test_anonymous_default_depends_on_listener_address(tmp_path: Path) -> None:
    """Unset allow_anonymous means yes on loopback listeners, no on other addresses."""
    unset = AuthConfig()
    assert unset.anonymous_allowed("127.0.0.1")
    assert unset.anonymous_allowed("::1")
    assert unset.anonymous_allowed("localhost")
    assert not unset.anonymous_allowed("0.0.0.0")
    assert not unset.anonymous_allowed("192.0.2.7")


async def test_publish_denied_is_acked_but_not_routed(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A PUBLISH the ACL refuses is acknowledged per QoS but never delivered [MQTT-3.3.5-2]."""
    server = await start_server(auth=_auth(tmp_path))
    reader = await connect_client(server.port(), "r", username="alice", password=b"wonderland")
    await subscribe(reader, 1, ("news/#", 1))
    anon = await connect_client(server.port(), "anon")
    await anon.send(wire.publish("news/fake", b"x", qos=1, pid=1))
    await anon.expect(wire.puback(1))
    await anon.send(wire.publish("news/fake", b"x", qos=2, pid=2))
    await anon.expect(wire.pubrec(2))
    await reader.send(wire.publish("news/alice", b"real", qos=1, pid=5))
    await reader.expect(wire.puback(5))
    await reader.expect(wire.publish("news/alice", b"real", qos=1, pid=1))


async def test_subscribe_denied_gets_0x80(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A filter the ACL does not cover gets SUBACK 0x80; allowed ones in the same packet are
    granted [MQTT-3.9.3-2] [MQTT-3.8.4-5]."""
    server = await start_server(auth=_auth(tmp_path))
    anon = await connect_client(server.port(), "anon")
    await anon.send(wire.subscribe(3, [("news/#", 1), ("home/#", 1), ("#", 0)]))
    await anon.expect(wire.suback(3, [1, 0x80, 0x80]))


async def test_mqtt31_denied_subscribe_gets_granted_code_but_nothing(
    start_server, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """MQTT 3.1 has no 0x80: the flow completes, but nothing is subscribed (as Mosquitto)."""
    server = await start_server(auth=_auth(tmp_path))
    anon = await connect_client(server.port(), "anon31", proto=("MQIsdp", 3))
    await anon.send(wire.subscribe(3, [("home/#", 1)]))
    await anon.expect(wire.suback(3, [1]))
    assert not server.broker.sessions["anon31"].subscriptions


async def test_read_deny_filters_delivery(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A granted subscription still never delivers a topic a deny rule covers."""
    server = await start_server(auth=_auth(tmp_path))
    bob = await connect_client(server.port(), "b", username="bob", password=b"builder")
    await subscribe(bob, 1, ("home/alice/#", 0))
    alice = await connect_client(server.port(), "a", username="alice", password=b"wonderland")
    await alice.send(wire.publish("home/alice/secret", b"s"))
    await alice.send(wire.publish("home/alice/door", b"open"))
    await bob.expect(wire.publish("home/alice/door", b"open"))


async def test_pattern_rules_use_client_id(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`pattern readwrite devices/%c/#` lets each client use its own subtree only."""
    server = await start_server(auth=_auth(tmp_path))
    dev = await connect_client(server.port(), "dev1")
    await dev.send(wire.subscribe(1, [("devices/dev1/#", 1), ("devices/dev2/#", 1)]))
    await dev.expect(wire.suback(1, [1, 0x80]))
    await dev.send(wire.publish("devices/dev1/temp", b"21", qos=1, pid=2))
    await dev.expect(wire.puback(2))
    await dev.expect(wire.publish("devices/dev1/temp", b"21", qos=1, pid=1))


async def test_reload_applies_to_existing_connections(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """After a reload (SIGHUP) new ACL rules apply to connections that are already open, and a
    broken file keeps the old rules."""
    auth = _auth(tmp_path)
    server = await start_server(auth=auth)
    anon = await connect_client(server.port(), "anon")
    await anon.send(wire.subscribe(1, [("weather/#", 0)]))
    await anon.expect(wire.suback(1, [0x80]))
    assert auth.acl_file is not None
    auth.acl_file.write_text(ACL.replace("topic read news/#", "topic read weather/#", 1))
    await server.reload()
    await subscribe(anon, 2, ("weather/#", 0))
    auth.acl_file.write_text("this is not an acl line\n")
    await server.reload()
    await subscribe(anon, 3, ("weather/today", 0))
    await sync(anon)


async def test_listener_auth_overrides_global(nursery, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A [listeners.auth] table replaces [auth] for that listener only (per_listener_settings)."""
    import trio

    from mqttd.config import Config, ListenerConfig, StoreConfig
    from mqttd.server import Server, serve

    config = Config(
        listeners=(
            ListenerConfig(port=0),
            ListenerConfig(port=0, auth=_auth(tmp_path, acl=None, anonymous=False)),
        ),
        auth=AuthConfig(allow_anonymous=True),
        store=StoreConfig(durability="memory"),
    )
    with trio.fail_after(10):
        server: Server = await nursery.start(serve, config)
    open_port, locked_port = (address.port for address in server.addresses)
    await connect_client(open_port, "anon-open")
    locked = await WireClient.open(locked_port)
    await locked.send(wire.connect("anon-locked"))
    await locked.expect(wire.connack(0, 5))
    await locked.expect_closed()
    await connect_client(locked_port, "alice", username="alice", password=b"wonderland")
    server.shutdown()
