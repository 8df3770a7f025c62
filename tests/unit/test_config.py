"""Loading and validating the TOML configuration (``mqttd.config``)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import typing
from pathlib import Path
from typing import Any

import pytest

from mqttd.config import (
    DEFAULT_PORTS,
    AuthConfig,
    Config,
    LimitsConfig,
    ListenerConfig,
    LogConfig,
    check_workers,
    load_config,
    parse_config,
)
from mqttd.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# Defaults and successful loads
# ---------------------------------------------------------------------------------------------


def test_empty_file_gives_the_defaults(write_config: Any) -> None:
    """An empty file loads as Config() with one tcp listener on 127.0.0.1:1883."""
    path = write_config("")
    config = load_config(path)
    assert config.listeners == (ListenerConfig(type="tcp", host="127.0.0.1", port=1883),)
    assert config.auth == AuthConfig()
    assert config.limits == LimitsConfig()
    assert config.log == LogConfig(level="info", format="console")
    assert config.source == path
    assert config.broker.data_dir == path.parent / "data"


@pytest.mark.parametrize(("kind", "port"), sorted(DEFAULT_PORTS.items()))
def test_listener_port_defaults_to_its_type(write_config: Any, kind: str, port: int) -> None:
    """A listener without a port gets its type's default (1883, 8883, 8080, 8443)."""
    extra = "tls_dev_certs = true\n" if kind in ("tls", "wss") else ""
    config = load_config(write_config(f'[[listeners]]\ntype = "{kind}"\n{extra}'))
    assert config.listeners[0].port == port


def test_full_file_is_loaded(write_config: Any) -> None:
    """Every section's values reach the dataclasses, with arrays as tuples."""
    path = write_config(
        """
        [broker]
        data_dir = "/var/lib/mqttd"
        [[listeners]]
        type = "tcp"
        host = "0.0.0.0"
        port = 0
        [[listeners]]
        type = "ws"
        port = 0
        path = "/ws"
        allowed_origins = ["https://a.example", "https://b.example"]
        [auth]
        allow_anonymous = false
        [limits]
        max_inflight_messages = 5
        max_queued_messages = 7
        max_packet_size = 1024
        [log]
        level = "debug"
        format = "json"
        """
    )
    config = load_config(path)
    assert [(lc.type, lc.host, lc.port) for lc in config.listeners] == [
        ("tcp", "0.0.0.0", 0),
        ("ws", "127.0.0.1", 0),
    ]
    assert config.listeners[1].path == "/ws"
    assert config.listeners[1].allowed_origins == ("https://a.example", "https://b.example")
    assert config.auth.allow_anonymous is False
    assert (config.limits.max_inflight_messages, config.limits.max_queued_messages) == (5, 7)
    assert config.limits.max_packet_size == 1024
    assert config.log == LogConfig(level="debug", format="json")
    assert config.broker.data_dir == Path("/var/lib/mqttd")


def test_integer_is_accepted_for_a_float(write_config: Any) -> None:
    """An integer where a float is expected is accepted and stored as a float."""
    config = load_config(write_config("[limits]\nwrite_timeout_s = 5\n"))
    assert config.limits.write_timeout_s == 5.0
    assert isinstance(config.limits.write_timeout_s, float)


def test_two_listeners_on_port_zero_are_not_duplicates(write_config: Any) -> None:
    """Port 0 means "any free port", so two such listeners on one host are fine."""
    text = "[[listeners]]\nport = 0\n[[listeners]]\nport = 0\n"
    assert len(load_config(write_config(text)).listeners) == 2


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise AssertionError(f"no TOML form for {value!r}")


def _explicit_defaults(cls: type) -> str:
    return "".join(
        f"{f.name} = {_toml_value(f.default)}\n"
        for f in dataclasses.fields(cls)
        if f.default is not None and f.default is not dataclasses.MISSING
    )


def test_every_key_accepts_its_own_default(write_config: Any) -> None:
    """Writing every field's default explicitly loads the same config as an empty file.

    The sections are found from Config's annotations, so this covers any section or key added
    later, and proves the loader handles the type of every field without new loader code.
    """
    hints = typing.get_type_hints(Config)
    text = ""
    for f in dataclasses.fields(Config):
        tp = hints[f.name]
        if typing.get_origin(tp) is tuple:  # an array of tables: one element
            if not getattr(Config(), f.name):
                continue  # empty by default ([[bridges]]): one element would add something
            text += f"[[{f.name}]]\n" + _explicit_defaults(typing.get_args(tp)[0])
        elif dataclasses.is_dataclass(tp):
            text += f"[{f.name}]\n" + _explicit_defaults(tp)
    assert "[[listeners]]" in text
    assert "[limits]" in text
    explicit = load_config(write_config(text, "explicit.toml"))
    implicit = load_config(write_config("", "explicit.toml"))
    assert explicit == implicit


# ---------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_directory(
    write_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """certfile, keyfile, cafile, web_root and data_dir resolve against the file's directory."""
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write_config(
        """
        [broker]
        data_dir = "state"
        [[listeners]]
        type = "wss"
        certfile = "tls/server.pem"
        keyfile = "tls/server.key"
        cafile = "../ca.pem"
        web_root = "www"
        """,
        "etc/mqttd.toml",
    )
    config = load_config(path)
    lc = config.listeners[0]
    base = tmp_path / "etc"
    assert lc.certfile == base / "tls/server.pem"
    assert lc.keyfile == base / "tls/server.key"
    assert lc.cafile == base / "../ca.pem"
    assert lc.web_root == base / "www"
    assert config.broker.data_dir == base / "state"
    assert all(p is not None and p.is_absolute() for p in (lc.certfile, lc.web_root))


def test_relative_config_path_still_gives_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config named relative to the working directory still yields absolute paths."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "m.toml").write_text('[broker]\ndata_dir = "d"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    config = load_config("conf/m.toml")
    assert config.broker.data_dir == tmp_path / "conf" / "d"


def test_absolute_paths_are_kept(write_config: Any, tmp_path: Path) -> None:
    """An absolute path in the file is used as written."""
    target = tmp_path / "abs" / "state"
    config = load_config(write_config(f"[broker]\ndata_dir = {json.dumps(str(target))}\n"))
    assert config.broker.data_dir == target


def test_parse_config_without_source_resolves_against_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """parse_config(data) without a source resolves paths against the working directory."""
    monkeypatch.chdir(tmp_path)
    config = parse_config({"broker": {"data_dir": "x"}})
    assert config.broker.data_dir == tmp_path / "x"
    assert config.source is None


def test_parse_config_without_source_names_a_placeholder() -> None:
    """Errors from parse_config(data) without a file name ``<config>``."""
    with pytest.raises(ConfigError, match=r"^<config>: limits\.max_queued_messages: "):
        parse_config({"limits": {"max_queued_messages": -1}})


# ---------------------------------------------------------------------------------------------
# Errors: one line, naming the file, the key path and the problem
# ---------------------------------------------------------------------------------------------

TLS = 'type = "tls"\ncertfile = "c.pem"\nkeyfile = "k.pem"\n'

INVALID: list[tuple[str, str, str, str]] = [
    # (test id, TOML, key path, expected text)
    ("unknown-top-level", "colour = 1\n", "colour", "unknown key"),
    ("unknown-section", "[limit]\nmax_queued_messages = 1\n", "limit", "did you mean 'limits'"),
    ("unknown-limit", "[limits]\nmax_queued_mesages = 5\n", "limits.max_queued_mesages", "unknown"),
    (
        "unknown-listener-key",
        "[[listeners]]\nport = 1\n[[listeners]]\nprot = 2\n",
        "listeners[1].prot",
        "did you mean 'port'",
    ),
    ("unknown-source", 'source = "x"\n', "source", "unknown key"),
    ("bool-for-int", "[[listeners]]\nport = true\n", "listeners[0].port", "expected an integer"),
    (
        "string-for-int",
        '[limits]\nmax_queued_messages = "10"\n',
        "limits.max_queued_messages",
        "expected an integer, got string '10'",
    ),
    ("float-for-int", "[limits]\nmax_packet_size = 1.5\n", "limits.max_packet_size", "integer"),
    ("bool-for-float", "[limits]\nconnect_timeout_s = true\n", "limits.connect_timeout_s", "num"),
    (
        "string-for-bool",
        '[auth]\nallow_anonymous = "yes"\n',
        "auth.allow_anonymous",
        "expected a boolean",
    ),
    ("int-for-string", "[[listeners]]\nhost = 1\n", "listeners[0].host", "expected a string"),
    ("empty-string", '[[listeners]]\nhost = ""\n', "listeners[0].host", "must not be empty"),
    ("int-for-path", "[broker]\ndata_dir = 5\n", "broker.data_dir", "expected a path"),
    ("section-not-table", "limits = 5\n", "limits", "expected a table"),
    ("listeners-not-array", "[listeners]\nport = 1\n", "listeners", "array of tables"),
    ("listener-not-table", "listeners = [1]\n", "listeners[0]", "expected a table"),
    ("no-listeners", "listeners = []\n", "listeners", "at least one listener"),
    (
        "array-item-type",
        '[[listeners]]\ntype = "ws"\nallowed_origins = ["a", 2]\n',
        "listeners[0].allowed_origins[1]",
        "expected a string",
    ),
    (
        "string-for-array",
        '[[listeners]]\ntype = "ws"\nallowed_origins = "a"\n',
        "listeners[0].allowed_origins",
        "expected an array of strings",
    ),
    ("port-too-big", "[[listeners]]\nport = 65536\n", "listeners[0].port", "between 0 and 65535"),
    ("port-negative", "[[listeners]]\nport = -1\n", "listeners[0].port", "between 0 and 65535"),
    (
        "listener-max-connections-negative",
        "[[listeners]]\nmax_connections = -1\n",
        "listeners[0].max_connections",
        "at least 0",
    ),
    (
        "queue-zero",
        "[limits]\nmax_queued_messages = 0\n",
        "limits.max_queued_messages",
        "greater than 0",
    ),
    (
        "queue-bytes-negative",
        "[limits]\nmax_queued_bytes = -5\n",
        "limits.max_queued_bytes",
        "greater than 0",
    ),
    (
        "inflight-zero",
        "[limits]\nmax_inflight_messages = 0\n",
        "limits.max_inflight_messages",
        "between 1 and 65535",
    ),
    (
        "inflight-above-packet-ids",
        "[limits]\nmax_inflight_messages = 65536\n",
        "limits.max_inflight_messages",
        "between 1 and 65535",
    ),
    (
        "packet-size-above-varint",
        "[limits]\nmax_packet_size = 268435456\n",
        "limits.max_packet_size",
        "between 1 and 268435455",
    ),
    ("timeout-zero", "[limits]\nwrite_timeout_s = 0\n", "limits.write_timeout_s", "greater than 0"),
    (
        "timeout-negative",
        "[[listeners]]\ntls_handshake_timeout_s = -1.5\n",
        "listeners[0].tls_handshake_timeout_s",
        "greater than 0",
    ),
    ("timeout-nan", "[limits]\nwrite_timeout_s = nan\n", "limits.write_timeout_s", "finite"),
    ("timeout-inf", "[limits]\ngraceful_timeout_s = inf\n", "limits.graceful_timeout_s", "finite"),
    ("level-enum", '[log]\nlevel = "trace"\n', "log.level", "one of 'debug', 'info'"),
    ("format-enum", '[log]\nformat = "xml"\n', "log.format", "one of 'console', 'json'"),
    ("type-enum", '[[listeners]]\ntype = "udp"\n', "listeners[0].type", "one of 'tcp', 'tls'"),
    (
        "tls-without-cert",
        '[[listeners]]\ntype = "tls"\n',
        "listeners[0].certfile",
        "required for a tls listener (or set tls_dev_certs = true)",
    ),
    (
        "wss-without-key",
        '[[listeners]]\ntype = "wss"\ncertfile = "c.pem"\n',
        "listeners[0].keyfile",
        "required for a wss listener",
    ),
    (
        "client-certs-without-ca",
        f"[[listeners]]\n{TLS}require_certificate = true\n",
        "listeners[0].cafile",
        "required when require_certificate = true",
    ),
    (
        "ws-path-without-slash",
        '[[listeners]]\ntype = "ws"\npath = "mqtt"\n',
        "listeners[0].path",
        "must start with '/'",
    ),
    (
        "duplicate-host-port",
        "[[listeners]]\nport = 1884\n[[listeners]]\nport = 1883\n[[listeners]]\nport = 1884\n",
        "listeners[2].port",
        "127.0.0.1:1884 is already used by listeners[0]",
    ),
    (
        "duplicate-by-default-port",
        '[[listeners]]\ntype = "tcp"\n[[listeners]]\ntype = "ws"\nport = 1883\n',
        "listeners[1].port",
        "already used by listeners[0]",
    ),
]


@pytest.mark.parametrize(
    ("text", "key", "expected"), [case[1:] for case in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_value_names_file_and_key(
    write_config: Any, text: str, key: str, expected: str
) -> None:
    """An invalid file raises ConfigError: one line, '<file>: <key path>: <problem>'."""
    path = write_config(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}: "), message
    assert expected in message


def test_metrics_path_is_refused_with_workers(write_config: Any) -> None:
    """With workers > 1 (in the file, or --workers over it) a ws metrics_path would be served
    by one worker at random: one line naming the key and the http listener to use instead."""
    listeners = '[[listeners]]\ntype = "tcp"\n[[listeners]]\ntype = "ws"\nmetrics_path = "/m"\n'
    path = write_config("[broker]\nworkers = 2\n" + listeners)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: listeners[1].metrics_path: not served with 2 workers")
    assert "add an http listener" in message
    single = load_config(write_config(listeners))
    check_workers(single, 1)
    with pytest.raises(ConfigError, match=r"listeners\[1\]\.metrics_path: not served with 3"):
        check_workers(single, 3)


def test_tls_dev_certs_replace_certfile_and_keyfile(write_config: Any) -> None:
    """A tls listener with tls_dev_certs = true needs no certfile/keyfile."""
    config = load_config(write_config('[[listeners]]\ntype = "tls"\ntls_dev_certs = true\n'))
    assert config.listeners[0].tls_dev_certs is True
    assert config.listeners[0].certfile is None


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A file that does not exist gives one line naming it, not an OSError."""
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read the file: No such file"):
        load_config(path)


def test_directory_is_a_config_error(tmp_path: Path) -> None:
    """A directory given as the config file is reported as unreadable."""
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path)


def test_invalid_toml_names_file_and_position(write_config: Any) -> None:
    """Broken TOML names the file and the parser's line/column."""
    path = write_config("[limits]\nmax_queued_messages == 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "line 2" in message
    assert "\n" not in message


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    """A file that is not UTF-8 is reported as invalid TOML, not a UnicodeDecodeError."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[broker]\ndata_dir = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path)


# ---------------------------------------------------------------------------------------------
# Shipped files
# ---------------------------------------------------------------------------------------------


def test_shipped_configs_all_load(repo_root: Path) -> None:
    """Every configs/*.toml in the repository is valid."""
    files = sorted((repo_root / "configs").glob("*.toml"))
    assert files, "no configs/*.toml found"
    for path in files:
        assert isinstance(load_config(path), Config), path


def test_shipped_default_config_is_local_tcp(repo_root: Path) -> None:
    """configs/mqttd.toml listens on TCP 127.0.0.1:1883 with anonymous access, at info level."""
    config = load_config(repo_root / "configs" / "mqttd.toml")
    assert config.listeners[0] == ListenerConfig(type="tcp", host="127.0.0.1", port=1883)
    assert config.auth.allow_anonymous is True
    assert config.log.level == "info"
    assert config.broker.data_dir == repo_root / "configs" / "data"


def _load_reference_script(repo_root: Path) -> Any:
    spec = importlib.util.spec_from_file_location(
        "config_reference", repo_root / "scripts" / "config_reference.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_config_reference_is_current(repo_root: Path) -> None:
    """The README's key table equals scripts/config_reference.py's output."""
    script = _load_reference_script(repo_root)
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    assert script.embedded(readme) == script.render(), (
        "README.md is stale: run python3 scripts/config_reference.py --write README.md"
    )


def test_config_reference_lists_every_key(repo_root: Path) -> None:
    """The generated table has one row per dataclass field of every section."""
    script = _load_reference_script(repo_root)
    table = script.render()
    hints = typing.get_type_hints(Config)
    expected = 0
    for f in dataclasses.fields(Config):
        tp = hints[f.name]
        section = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else tp
        if not dataclasses.is_dataclass(section):
            continue
        for sub in dataclasses.fields(section):
            expected += 1
            assert f"{f.name}.{sub.name}`" in table or f"{f.name}[].{sub.name}`" in table
    assert table.count("\n| `") == expected
