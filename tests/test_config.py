"""Configuration layers, validation, rendering and the documented key table."""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
from pathlib import Path

import pytest

from node import config as config_module
from node.config import (
    FIELDS,
    Config,
    ConfigError,
    add_config_arguments,
    load_config,
    overrides_from_args,
    render_config_toml,
)
from node.dialpolicy import DialPolicy

HOME_ENV = {"HOME": "/home/operator"}
DOCS = Path(__file__).parent.parent / "docs" / "operations.md"


def write_toml(directory: Path, text: str, name: str = "config.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    config = load_config({}, HOME_ENV, None)

    assert config.data_dir == Path("/home/operator/.local/share/pith-mirror")
    assert config.http_listen == "127.0.0.1:8080"
    assert config.gossip_listen == "127.0.0.1:9090"
    assert config.peers == ()
    assert config.public_url == "http://127.0.0.1:8080/"
    assert config.trust_file is None
    assert config.allow_private_addresses is False
    assert config.allow_loopback_addresses is False
    assert config.max_request_body_bytes == 8 * 1024 * 1024
    assert config.fetch_max_response_bytes == 64 * 1024 * 1024
    assert config.fetch_retries == 3
    assert config.log_level == "INFO"
    assert config.config_file is None


def test_default_sources() -> None:
    config = load_config({}, HOME_ENV, None)

    assert config.sources["http_listen"] == "default"
    assert config.sources["public_url"] == "derived from http_listen"


def test_xdg_data_home_used() -> None:
    config = load_config({}, {**HOME_ENV, "XDG_DATA_HOME": "/srv/data"}, None)

    assert config.data_dir == Path("/srv/data/pith-mirror")


def test_relative_xdg_data_home_ignored() -> None:
    config = load_config({}, {**HOME_ENV, "XDG_DATA_HOME": "data"}, None)

    assert config.data_dir == Path("/home/operator/.local/share/pith-mirror")


def test_layers_in_order(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'http_listen = "127.0.0.1:8001"\nlog_level = "debug"\n')
    env = {**HOME_ENV, "PITH_MIRROR_HTTP": "127.0.0.1:8002", "PITH_MIRROR_LOG_LEVEL": "warning"}

    from_file = load_config({}, HOME_ENV, path)
    from_env = load_config({}, env, path)
    from_flag = load_config({"http_listen": "127.0.0.1:8003", "log_level": None}, env, path)

    assert from_file.http_listen == "127.0.0.1:8001"
    assert from_file.sources["http_listen"] == str(path)
    assert from_file.log_level == "DEBUG"
    assert from_env.http_listen == "127.0.0.1:8002"
    assert from_env.sources["http_listen"] == "PITH_MIRROR_HTTP"
    assert from_env.log_level == "WARNING"
    assert from_flag.http_listen == "127.0.0.1:8003"
    assert from_flag.sources["http_listen"] == "--http"
    assert from_flag.log_level == "WARNING"


def test_config_file_from_env(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "fetch_retries = 5\n", "pith.toml")

    config = load_config({}, {**HOME_ENV, "PITH_MIRROR_CONFIG": str(path)}, None)

    assert config.fetch_retries == 5
    assert config.config_file == path


def test_config_flag_beats_env(tmp_path: Path) -> None:
    flag_file = write_toml(tmp_path, "fetch_retries = 1\n", "flag.toml")
    env_file = write_toml(tmp_path, "fetch_retries = 2\n", "env.toml")

    config = load_config({}, {**HOME_ENV, "PITH_MIRROR_CONFIG": str(env_file)}, flag_file)

    assert config.fetch_retries == 1


def test_config_file_in_data_dir(tmp_path: Path) -> None:
    write_toml(tmp_path, "fetch_retries = 7\n")

    config = load_config({}, {**HOME_ENV, "PITH_MIRROR_DATA_DIR": str(tmp_path)}, None)

    assert config.fetch_retries == 7
    assert config.config_file == tmp_path / "config.toml"


def test_config_file_in_flag_data_dir(tmp_path: Path) -> None:
    write_toml(tmp_path, "fetch_retries = 8\n")

    config = load_config({"data_dir": str(tmp_path)}, HOME_ENV, None)

    assert config.fetch_retries == 8


def test_missing_data_dir_file_ignored(tmp_path: Path) -> None:
    config = load_config({}, {**HOME_ENV, "PITH_MIRROR_DATA_DIR": str(tmp_path)}, None)

    assert config.config_file is None


@pytest.mark.parametrize(("env", "flag", "source"), [({}, True, "--config"), ({"PITH_MIRROR_CONFIG": "MISSING"}, False, "PITH_MIRROR_CONFIG")])
def test_named_missing_file_rejected(tmp_path: Path, env: dict[str, str], flag: bool, source: str) -> None:
    missing = tmp_path / "missing.toml"
    env = {key: str(missing) for key in env}

    with pytest.raises(ConfigError) as caught:
        load_config({}, {**HOME_ENV, **env}, missing if flag else None)

    assert caught.value.source == source
    assert caught.value.reason == "configuration file not found"
    assert caught.value.value == str(missing)


def test_unknown_toml_key(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'http = "127.0.0.1:8080"\n')

    with pytest.raises(ConfigError) as caught:
        load_config({}, HOME_ENV, path)

    assert caught.value.key == "http"
    assert caught.value.source == str(path)
    assert caught.value.value == "127.0.0.1:8080"
    assert caught.value.reason.startswith("unknown configuration key (known keys: allow_http_mirrors, ")


def test_invalid_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "http_listen = \n")

    with pytest.raises(ConfigError) as caught:
        load_config({}, HOME_ENV, path)

    assert caught.value.source == str(path)
    assert caught.value.reason.startswith("invalid TOML: ")


@pytest.mark.parametrize(
    ("line", "key", "reason"),
    [
        ("http_listen = 8080", "http_listen", "must be HOST:PORT text, not int"),
        ('fetch_retries = "3"', "fetch_retries", "must be a whole number"),
        ("fetch_retries = true", "fetch_retries", "must be a whole number"),
        ("fetch_retries = 11", "fetch_retries", "must be at most 10"),
        ("fetch_retries = -1", "fetch_retries", "must be at least 0"),
        ('allow_loopback_addresses = "yes"', "allow_loopback_addresses", "must be true or false, not str"),
        ('peers = "a.example:9090"', "peers", "must be a list, not str"),
        ("peers = [9090]", "peers", "must be HOST:PORT text, not int"),
        ("fetch_read_timeout = 0", "fetch_read_timeout", "must be a finite number of at least 0.001"),
        ("fetch_total_timeout = inf", "fetch_total_timeout", "must be a finite number of at least 0.001"),
        ("max_request_body_bytes = 0", "max_request_body_bytes", "must be at least 1"),
        ("allowed_ports = [0]", "allowed_ports", "must be at least 1"),
        ("allowed_ports = [65536]", "allowed_ports", "must be at most 65535"),
        ('log_level = "verbose"', "log_level", "must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ('public_url = "ftp://mirror.example.org/"', "public_url", "has scheme 'ftp'"),
        ('public_url = "https://user@mirror.example.org/"', "public_url", "contains userinfo"),
        ('trust_file = ""', "trust_file", "must be a non-empty path"),
    ],
)
def test_wrong_toml_value(tmp_path: Path, line: str, key: str, reason: str) -> None:
    path = write_toml(tmp_path, line + "\n")

    with pytest.raises(ConfigError) as caught:
        load_config({}, HOME_ENV, path)

    assert caught.value.key == key
    assert caught.value.source == str(path)
    assert reason in caught.value.reason


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("127.0.0.1", "has no port (expected HOST:PORT)"),
        ("::1:9090", "write an IPv6 host in brackets"),
        ("[::1]", "has no port"),
        ("[::1", "no closing bracket"),
        ("host.example:70000", "is not a number from 1 to 65535"),
        ("bad_host:80", "is not an IP address or a valid host name"),
        ("0177.0.0.1:80", "is not a canonical dotted-quad IPv4 address"),
        ("2130706433:80", "is not a canonical dotted-quad IPv4 address"),
        (":80", "has an empty host"),
    ],
)
def test_bad_host_port_from_env(value: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({}, {**HOME_ENV, "PITH_MIRROR_GOSSIP": value}, None)

    assert caught.value.key == "gossip_listen"
    assert caught.value.source == "PITH_MIRROR_GOSSIP"
    assert caught.value.value == value
    assert reason in caught.value.reason


def test_listen_port_zero_allowed() -> None:
    config = load_config({"http_listen": "127.0.0.1:0", "gossip_listen": "[::1]:0"}, HOME_ENV, None)

    assert config.http_address == ("127.0.0.1", 0)
    assert config.gossip_address == ("::1", 0)
    assert config.public_url is None


def test_peer_port_zero_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"peers": ["host.example:0"]}, HOME_ENV, None)

    assert caught.value.key == "peers"
    assert "is not a number from 1 to 65535" in caught.value.reason


def test_error_message_names_everything() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"http_listen": "127.0.0.1"}, HOME_ENV, None)

    assert str(caught.value) == "--http: http_listen = '127.0.0.1': '127.0.0.1' has no port (expected HOST:PORT)"


@pytest.mark.parametrize(
    ("value", "stored", "address"),
    [
        ("[::1]:9090", "[::1]:9090", ("::1", 9090)),
        ("[0:0::1]:9090", "[::1]:9090", ("::1", 9090)),
        ("Mirror.Example.org:9090", "mirror.example.org:9090", ("mirror.example.org", 9090)),
        ("0.0.0.0:9090", "0.0.0.0:9090", ("0.0.0.0", 9090)),
    ],
)
def test_host_port_normalized(value: str, stored: str, address: tuple[str, int]) -> None:
    config = load_config({"gossip_listen": value}, HOME_ENV, None)

    assert config.gossip_listen == stored
    assert config.gossip_address == address


def test_peers_from_env() -> None:
    config = load_config({}, {**HOME_ENV, "PITH_MIRROR_PEERS": "a.example:9090, [2001:db8::1]:9090,"}, None)

    assert config.peers == ("a.example:9090", "[2001:db8::1]:9090")


def test_empty_peers_variable() -> None:
    config = load_config({}, {**HOME_ENV, "PITH_MIRROR_PEERS": ""}, None)

    assert config.peers == ()


def test_peer_flags_replace_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'peers = ["a.example:9090", "b.example:9090"]\n')

    config = load_config({"peers": ["c.example:9090"]}, HOME_ENV, path)

    assert config.peers == ("c.example:9090",)
    assert config.sources["peers"] == "--peer"


def test_bad_peer_flag_named() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"peers": ["c.example:9090", "d.example"]}, HOME_ENV, None)

    assert caught.value.source == "--peer"
    assert caught.value.value == ["c.example:9090", "d.example"]


@pytest.mark.parametrize(("text", "expected"), [("yes", True), ("1", True), ("TRUE", True), ("off", False), ("0", False)])
def test_boolean_variables(text: str, expected: bool) -> None:
    config = load_config({}, {**HOME_ENV, "PITH_MIRROR_ALLOW_LOOPBACK_ADDRESSES": text}, None)

    assert config.allow_loopback_addresses is expected


def test_invalid_boolean_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({}, {**HOME_ENV, "PITH_MIRROR_ALLOW_PRIVATE_ADDRESSES": "maybe"}, None)

    assert caught.value.source == "PITH_MIRROR_ALLOW_PRIVATE_ADDRESSES"
    assert caught.value.reason.startswith("is not a boolean")


@pytest.mark.parametrize(
    ("variable", "value", "key", "expected"),
    [
        ("PITH_MIRROR_FETCH_RETRIES", "0", "fetch_retries", 0),
        ("PITH_MIRROR_FETCH_BACKOFF", "0.25", "fetch_backoff", 0.25),
        ("PITH_MIRROR_FETCH_TOTAL_TIMEOUT", "90", "fetch_total_timeout", 90.0),
        ("PITH_MIRROR_MAX_REQUEST_BODY_BYTES", "1048576", "max_request_body_bytes", 1048576),
        ("PITH_MIRROR_ALLOWED_PORTS", "8443, 443,443", "allowed_ports", (443, 8443)),
    ],
)
def test_number_variables(variable: str, value: str, key: str, expected: object) -> None:
    config = load_config({}, {**HOME_ENV, variable: value}, None)

    assert getattr(config, key) == expected


@pytest.mark.parametrize(("value", "reason"), [("three", "must be a whole number"), ("1.5", "must be a whole number"), ("", "must be a whole number")])
def test_invalid_number_variable(value: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({}, {**HOME_ENV, "PITH_MIRROR_FETCH_RETRIES": value}, None)

    assert caught.value.reason == reason


def test_file_paths_relative_to_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'data_dir = "state"\ntrust_file = "trust.json"\n')

    config = load_config({}, HOME_ENV, path)

    assert config.data_dir == tmp_path / "state"
    assert config.trust_file == tmp_path / "trust.json"


def test_env_paths_relative_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    config = load_config({}, {**HOME_ENV, "PITH_MIRROR_TRUST": "trust.json"}, None)

    assert config.trust_file == tmp_path / "trust.json"


def test_home_in_paths_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))

    config = load_config({"data_dir": "~/pith"}, HOME_ENV, None)

    assert config.data_dir == tmp_path / "pith"


@pytest.mark.parametrize(
    ("http_listen", "public_url"),
    [
        ("127.0.0.1:8080", "http://127.0.0.1:8080/"),
        ("[::1]:8080", "http://[::1]:8080/"),
        ("mirror.example.org:80", "http://mirror.example.org:80/"),
        ("0.0.0.0:8080", None),
        ("[::]:8080", None),
    ],
)
def test_public_url_derived(http_listen: str, public_url: str | None) -> None:
    config = load_config({"http_listen": http_listen}, HOME_ENV, None)

    assert config.public_url == public_url


def test_public_url_explicit() -> None:
    env = {**HOME_ENV, "PITH_MIRROR_PUBLIC_URL": "https://mirror.example.org/pith/"}

    config = load_config({"http_listen": "0.0.0.0:8080"}, env, None)

    assert config.public_url == "https://mirror.example.org/pith/"
    assert config.sources["public_url"] == "PITH_MIRROR_PUBLIC_URL"


def test_unknown_override_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"listen": "127.0.0.1:1"}, HOME_ENV, None)

    assert caught.value.key == "listen"
    assert caught.value.source == "command line"


def test_override_without_flag_named() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({"fetch_retries": "many"}, HOME_ENV, None)

    assert caught.value.source == "command-line override fetch_retries"


def test_dial_policy_from_config() -> None:
    config = load_config({}, {**HOME_ENV, "PITH_MIRROR_ALLOW_LOOPBACK_ADDRESSES": "true", "PITH_MIRROR_ALLOWED_PORTS": "443"}, None)

    assert config.dial_policy() == DialPolicy(allow_loopback=True, allowed_ports=frozenset({443}))


def test_default_dial_policy_is_strict() -> None:
    assert load_config({}, HOME_ENV, None).dial_policy() == DialPolicy()


def every_key_changed(tmp_path: Path) -> Config:
    """Return a configuration where every key differs from its default."""
    text = f"""
data_dir = "{tmp_path}/data \\"quoted\\" \\\\ dir"
http_listen = "[::1]:8081"
gossip_listen = "0.0.0.0:9091"
peers = ["a.example:9090", "[2001:db8::1]:9092"]
public_url = "https://mirror.example.org/pith/"
gossip_advertise = "mirror.example.org:9091"
trust_file = "{tmp_path}/trust.json"
allow_private_addresses = true
allow_loopback_addresses = true
allow_http_mirrors = true
allowed_ports = [443, 8443]
max_request_body_bytes = 1024
fetch_connect_timeout = 1.5
fetch_read_timeout = 2
fetch_total_timeout = 30.25
fetch_max_response_bytes = 2048
fetch_retries = 0
fetch_backoff = 1e-3
log_level = "error"
"""
    return load_config({}, HOME_ENV, write_toml(tmp_path, text, "every.toml"))


def test_every_key_differs_from_default(tmp_path: Path) -> None:
    changed = every_key_changed(tmp_path)
    defaults = load_config({}, HOME_ENV, None)

    for item in FIELDS:
        assert getattr(changed, item.key) != getattr(defaults, item.key), item.key


def test_render_round_trip(tmp_path: Path) -> None:
    config = every_key_changed(tmp_path)
    rendered = write_toml(tmp_path, render_config_toml(config), "rendered.toml")

    reloaded = load_config({}, HOME_ENV, rendered)

    assert reloaded == config


def test_render_defaults_round_trip(tmp_path: Path) -> None:
    config = load_config({"http_listen": "0.0.0.0:8080"}, HOME_ENV, None)
    rendered = write_toml(tmp_path, render_config_toml(config), "rendered.toml")

    assert load_config({}, HOME_ENV, rendered) == config


def test_render_comments_unset_keys() -> None:
    config = load_config({"http_listen": "0.0.0.0:8080"}, HOME_ENV, None)
    text = render_config_toml(config)

    assert "# trust_file is not set" in text
    assert "# public_url is not set" in text
    assert "trust_file" not in tomllib.loads(text)


def test_render_names_sources() -> None:
    config = load_config({"http_listen": "127.0.0.1:8000"}, {**HOME_ENV, "PITH_MIRROR_FETCH_RETRIES": "1"}, None)
    text = render_config_toml(config)

    assert "# HOST:PORT the HTTP API listens on. Source: --http.\nhttp_listen = \"127.0.0.1:8000\"\n" in text
    assert "Source: PITH_MIRROR_FETCH_RETRIES.\nfetch_retries = 1\n" in text


def test_render_escapes_control_characters(tmp_path: Path) -> None:
    config = load_config({"data_dir": f"{tmp_path}/new\nline\x7f"}, HOME_ENV, None)
    rendered = write_toml(tmp_path, render_config_toml(config), "rendered.toml")

    assert load_config({}, HOME_ENV, rendered).data_dir == config.data_dir


def test_fields_match_config() -> None:
    config_keys = [item.name for item in dataclasses.fields(Config) if item.name not in ("sources", "config_file")]

    assert [item.key for item in FIELDS] == config_keys


def test_env_names_unique_and_prefixed() -> None:
    names = [item.env for item in FIELDS]

    assert len(set(names)) == len(names)
    assert all(name.startswith("PITH_MIRROR_") for name in names)


def test_argparse_flags_to_overrides(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(
        ["--http", "0.0.0.0:8080", "--peer", "a.example:9090", "--peer", "b.example:9090", "--log-level", "debug", "--config", str(tmp_path / "x.toml")]
    )

    overrides, config_path = overrides_from_args(args)
    config = load_config(overrides, HOME_ENV, None)

    assert config_path == tmp_path / "x.toml"
    assert config.peers == ("a.example:9090", "b.example:9090")
    assert config.log_level == "DEBUG"
    assert config.public_url is None
    assert config.sources["data_dir"] == "default"


def test_absent_flags_leave_lower_layers() -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    overrides, config_path = overrides_from_args(parser.parse_args([]))

    config = load_config(overrides, {**HOME_ENV, "PITH_MIRROR_HTTP": "127.0.0.1:8100"}, config_path)

    assert config_path is None
    assert config.http_listen == "127.0.0.1:8100"


def test_operations_doc_lists_every_key() -> None:
    text = DOCS.read_text(encoding="utf-8")

    for item in FIELDS:
        assert f"`{item.key}`" in text, item.key
        assert f"`{item.env}`" in text, item.env
        if item.flag:
            assert f"`{item.flag}" in text, item.flag


def test_public_names_pinned() -> None:
    expected = [
        "CONFIG_ENV", "Config", "ConfigError", "FIELDS", "Field", "add_config_arguments", "default_data_dir", "load_config",
        "overrides_from_args", "render_config_toml",
    ]

    assert sorted(config_module.__all__) == expected


@pytest.mark.parametrize(
    ("env", "config_path", "source"),
    [
        ({"PITH_MIRROR_CONFIG": "~nosuchuser-pith-test/pith.toml"}, None, "PITH_MIRROR_CONFIG"),
        ({}, Path("~nosuchuser-pith-test/pith.toml"), "--config"),
        ({"PITH_MIRROR_DATA_DIR": "~nosuchuser-pith-test/pith"}, None, "PITH_MIRROR_DATA_DIR"),
    ],
)
def test_unknown_user_home_rejected(tmp_path: Path, env: dict[str, str], config_path: Path | None, source: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config({}, {"HOME": str(tmp_path), **env}, config_path)

    assert source in str(raised.value)
    assert "cannot expand ~nosuchuser-pith-test: no such user or no home directory" in str(raised.value)
