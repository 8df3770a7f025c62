"""``[[bridges]]`` in the TOML configuration (``mqttd.config.BridgeConfig``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mqttd.config import BridgeConfig, BridgeTopicConfig, load_config, parse_address
from mqttd.errors import ConfigError

MINIMAL = """
[[bridges]]
name = "edge"
address = ["central.example:1884"]
[[bridges.topics]]
pattern = "sensors/#"
"""


def test_minimal_bridge_gets_mosquittos_defaults(write_config: Any) -> None:
    """A name, an address and one topic: the rest is Mosquitto's bridge defaults."""
    config = load_config(write_config(MINIMAL))
    (bridge,) = config.bridges
    assert bridge.name == "edge"
    assert bridge.endpoints() == [("central.example", 1884)]
    assert bridge.topics == (BridgeTopicConfig(pattern="sensors/#"),)
    assert bridge.topics[0].direction == "out"
    assert bridge.topics[0].qos == 0
    assert (bridge.keepalive, bridge.clean_session, bridge.try_private) == (60, False, True)
    assert (bridge.reconnect_delay_s, bridge.reconnect_delay_max_s) == (5.0, 30.0)
    assert bridge.protocol == "3.1.1"


def test_full_bridge_is_loaded(write_config: Any, tmp_path: Path) -> None:
    """Every key reaches the dataclasses; paths resolve against the file's directory."""
    config = load_config(
        write_config(
            """
            [[bridges]]
            name = "central"
            address = ["[::1]:8884", "backup"]
            transport = "wss"
            ws_path = "/ws"
            cafile = "ca.pem"
            certfile = "me.pem"
            keyfile = "me.key"
            protocol = "3.1"
            try_private = false
            client_id = "edge-1"
            username = "edge"
            password = "secret"
            keepalive = 30
            clean_session = true
            max_inflight_messages = 5
            max_queued_messages = 50000
            max_queued_bytes = 1000000
            connect_timeout_s = 3
            reconnect_delay_s = 0.5
            reconnect_delay_max_s = 60
            [[bridges.topics]]
            pattern = "a/#"
            direction = "both"
            qos = 2
            local_prefix = "edge/"
            remote_prefix = "sites/1/"
            [[bridges.topics]]
            local_prefix = "status"
            remote_prefix = "sites/1/status"
            direction = "in"
            """
        )
    )
    (bridge,) = config.bridges
    assert bridge.endpoints() == [("::1", 8884), ("backup", 443)]
    assert bridge.cafile == tmp_path / "ca.pem"
    assert bridge.topics[0].local_filter == "edge/a/#"
    assert bridge.topics[0].remote_filter == "sites/1/a/#"
    assert bridge.topics[1].pattern == ""
    assert bridge.max_queued_messages == 50000
    assert bridge.connect_timeout_s == 3.0


@pytest.mark.parametrize(
    ("edit", "replacement", "key", "message"),
    [
        ('name = "edge"', "", "bridges[0].name", "required"),
        ('name = "edge"', 'name = "a/b"', "bridges[0].name", "one topic level"),
        ('address = ["central.example:1884"]', "", "bridges[0].address", "required"),
        (
            'address = ["central.example:1884"]',
            'address = ["h:0"]',
            "bridges[0].address[0]",
            "port",
        ),
        (
            'address = ["central.example:1884"]',
            'address = ["::1"]',
            "bridges[0].address[0]",
            "IPv6",
        ),
        ('pattern = "sensors/#"', "", "bridges[0].topics[0].pattern", "required"),
        (
            'pattern = "sensors/#"',
            'pattern = "a/#/b"',
            "bridges[0].topics[0].pattern",
            "not a valid",
        ),
        (
            'pattern = "sensors/#"',
            'pattern = "x"\nlocal_prefix = "+/"',
            "bridges[0].topics[0].local_prefix",
            "wildcards",
        ),
        (
            'pattern = "sensors/#"',
            'pattern = "x"\nqos = 3',
            "bridges[0].topics[0].qos",
            "between 0 and 2",
        ),
        (
            'pattern = "sensors/#"',
            'pattern = "x"\ndirection = "up"',
            "bridges[0].topics[0].direction",
            "'out', 'in', 'both'",
        ),
    ],
)
def test_bridge_mistakes_name_the_key(
    write_config: Any, edit: str, replacement: str, key: str, message: str
) -> None:
    """Each mistake is one error line naming the key."""
    text = MINIMAL.replace(edit, replacement)
    with pytest.raises(ConfigError) as raised:
        load_config(write_config(text))
    assert f": {key}: " in str(raised.value)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("extra", "key", "message"),
    [
        ('cafile = "ca.pem"', "bridges[0].cafile", "only for a tls or wss bridge"),
        ('transport = "tls"\nkeyfile = "k.pem"', "bridges[0].certfile", "required with keyfile"),
        ('password = "x"', "bridges[0].password", "requires username"),
        ('ws_path = "mqtt"', "bridges[0].ws_path", "must start with '/'"),
        (
            "reconnect_delay_s = 10\nreconnect_delay_max_s = 5",
            "bridges[0].reconnect_delay_max_s",
            "at least",
        ),
        ("keepalive = 70000", "bridges[0].keepalive", "between 0 and 65535"),
    ],
)
def test_bridge_field_rules(write_config: Any, extra: str, key: str, message: str) -> None:
    """Rules between a bridge's fields."""
    text = MINIMAL.replace('name = "edge"', f'name = "edge"\n{extra}')
    with pytest.raises(ConfigError) as raised:
        load_config(write_config(text))
    assert f": {key}: " in str(raised.value)
    assert message in str(raised.value)


def test_mqtt5_bridge_is_loaded(write_config: Any) -> None:
    """protocol = "5"; MQTT 5 allows a password without a user name (3.1.2.9)."""
    text = MINIMAL.replace('name = "edge"', 'name = "edge"\nprotocol = "5"\npassword = "token"')
    (bridge,) = load_config(write_config(text)).bridges
    assert (bridge.protocol, bridge.username, bridge.password) == ("5", None, "token")


@pytest.mark.parametrize("value", ['"5.0"', "5", '"mqttv50"'])
def test_protocol_names_one_of_three_versions(write_config: Any, value: str) -> None:
    """Anything but "3.1.1", "3.1" or "5" is refused, naming the choices."""
    text = MINIMAL.replace('name = "edge"', f'name = "edge"\nprotocol = {value}')
    with pytest.raises(ConfigError, match=r"bridges.0..protocol: expected .*'5'"):
        load_config(write_config(text))


def test_bridge_without_topics_is_refused(write_config: Any) -> None:
    """A bridge must carry at least one topic."""
    text = MINIMAL.split("[[bridges.topics]]")[0]
    with pytest.raises(ConfigError, match=r"bridges.0..topics: at least one"):
        load_config(write_config(text))


def test_bridge_names_are_unique(write_config: Any) -> None:
    """Two bridges may not share a name (it names their state topic and their session)."""
    with pytest.raises(ConfigError, match=r"bridges.1..name: 'edge' is already used by bridges.0."):
        load_config(write_config(MINIMAL + MINIMAL))


@pytest.mark.parametrize(
    "section", ['[cluster]\nredis_url = "redis://127.0.0.1:6379"', "[broker]\nworkers = 2"]
)
def test_bridges_are_refused_in_cluster_mode(write_config: Any, section: str) -> None:
    """Cluster mode has no bridges: the error says to run them in a separate mqttd."""
    with pytest.raises(ConfigError, match="bridges: not supported in cluster mode"):
        load_config(write_config(section + "\n" + MINIMAL))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host", ("host", 1883)),
        ("host:1", ("host", 1)),
        ("10.0.0.1:65535", ("10.0.0.1", 65535)),
        ("[::1]", ("::1", 1883)),
        ("[fe80::1]:8883", ("fe80::1", 8883)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    """host, host:port and [IPv6]:port, with the transport's default port."""
    assert parse_address(text, 1883) == expected


@pytest.mark.parametrize("text", ["", ":1883", "h:x", "h:70000", "[::1", "[::1]x", "a:b:c"])
def test_parse_address_refuses(text: str) -> None:
    """Anything else is a ValueError (the loader turns it into a ConfigError)."""
    with pytest.raises(ValueError, match=r"expected|IPv6|port"):
        parse_address(text, 1883)


def test_default_ports_follow_the_transport() -> None:
    """No port: 1883 (tcp), 8883 (tls), 80 (ws), 443 (wss)."""
    ports = [
        BridgeConfig(name="b", address=("h",), transport=t).endpoints()[0][1]  # type: ignore[arg-type]
        for t in ("tcp", "tls", "ws", "wss")
    ]
    assert ports == [1883, 8883, 80, 443]
