"""Configuration of ``pith-mirror run`` and ``pith-mirror import``.

Each key is read from four layers; a later layer wins:

1. built-in defaults;
2. a TOML file: the ``--config`` path, else ``$PITH_MIRROR_CONFIG``, else
   ``<data_dir>/config.toml`` if that file exists;
3. environment variables (``PITH_MIRROR_HTTP`` and so on, see ``FIELDS``);
4. command-line flags, which the caller passes as a dict of overrides.

``load_config`` validates every value and raises ``ConfigError`` naming
the key, the layer it came from (file path, variable name or flag) and the
value. ``render_config_toml`` writes the effective configuration back as
TOML that ``load_config`` reads to an equal ``Config``.

Relative paths in the TOML file are relative to the file's directory.
Relative paths from variables and flags are relative to the working
directory. Both are stored as absolute paths.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .dialpolicy import DialPolicy, DialRejected, split_host_port, split_url

__all__ = [
    "CONFIG_ENV",
    "Config",
    "ConfigError",
    "FIELDS",
    "Field",
    "add_config_arguments",
    "default_data_dir",
    "load_config",
    "overrides_from_args",
    "render_config_toml",
]

CONFIG_ENV = "PITH_MIRROR_CONFIG"
CONFIG_FILE_NAME = "config.toml"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MIB = 1024 * 1024

_HOST_NAME = re.compile(r"\A(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\Z", re.ASCII)
_TRUE_WORDS = ("1", "true", "yes", "on")
_FALSE_WORDS = ("0", "false", "no", "off")


class ConfigError(Exception):
    """A configuration value is invalid.

    Attributes:
        key: the configuration key, or "" for the file as a whole.
        source: where the value came from: a file path, an environment
            variable name or a command-line flag.
        value: the offending value as it was given.
        reason: what is wrong with it.
    """

    def __init__(self, key: str, source: str, value: object, reason: str) -> None:
        self.key = key
        self.source = source
        self.value = value
        self.reason = reason
        excerpt = repr(value)
        if len(excerpt) > 120:
            excerpt = excerpt[:117] + "..."
        subject = f"{key} = {excerpt}" if key else excerpt
        super().__init__(f"{source}: {subject}: {reason}")


@dataclass(frozen=True)
class Field:
    """One configuration key and how each layer spells it.

    Attributes:
        key: the TOML key and ``Config`` attribute.
        kind: the value type: ``path``, ``host_port``, ``host_ports``,
            ``url``, ``bool``, ``int``, ``float``, ``ports`` or ``log_level``.
        env: the environment variable.
        flag: the command-line flag, or "" if there is none.
        meaning: one line for the docs and the rendered TOML.
        minimum: the smallest accepted number, for ``int`` and ``float``.
        maximum: the largest accepted number, for ``int``.
    """

    key: str
    kind: str
    env: str
    flag: str
    meaning: str
    minimum: float = 0
    maximum: int | None = None


FIELDS: tuple[Field, ...] = (
    Field("data_dir", "path", "PITH_MIRROR_DATA_DIR", "--data-dir", "Directory of the database and the default config.toml"),
    Field("http_listen", "host_port", "PITH_MIRROR_HTTP", "--http", "HOST:PORT the HTTP API listens on"),
    Field("gossip_listen", "host_port", "PITH_MIRROR_GOSSIP", "--gossip", "HOST:PORT the gossip protocol listens on; port 0 picks a free port"),
    Field("peers", "host_ports", "PITH_MIRROR_PEERS", "--peer", "Seed peers as HOST:PORT"),
    Field(
        "gossip_advertise", "host_port", "PITH_MIRROR_GOSSIP_ADVERTISE", "",
        "HOST:PORT other nodes should dial for gossip; when unset, the bound gossip address, or none when it binds every interface",
    ),
    Field("public_url", "url", "PITH_MIRROR_PUBLIC_URL", "", "URL this mirror advertises in /pith-mirrors.json"),
    Field("trust_file", "path", "PITH_MIRROR_TRUST", "--trust", "Trust configuration JSON file; when unset, the built-in trust applies"),
    Field(
        "allow_private_addresses", "bool", "PITH_MIRROR_ALLOW_PRIVATE_ADDRESSES", "",
        "Whether addresses from hints, peers and redirects may be private (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7) or local names",
    ),
    Field(
        "allow_loopback_addresses", "bool", "PITH_MIRROR_ALLOW_LOOPBACK_ADDRESSES", "",
        "Whether addresses from hints, peers and redirects may be loopback (127.0.0.0/8, ::1)",
    ),
    Field("allow_http_mirrors", "bool", "PITH_MIRROR_ALLOW_HTTP_MIRRORS", "", "Whether mirrors may be fetched over http://, not only https://"),
    Field("allowed_ports", "ports", "PITH_MIRROR_ALLOWED_PORTS", "", "The only ports that may be dialled; when empty, 80, 443 and 1024-65535"),
    Field("max_request_body_bytes", "int", "PITH_MIRROR_MAX_REQUEST_BODY_BYTES", "", "Maximum HTTP request body the API accepts, in bytes", minimum=1),
    Field("fetch_connect_timeout", "float", "PITH_MIRROR_FETCH_CONNECT_TIMEOUT", "", "Seconds to resolve and connect to a mirror", minimum=0.001),
    Field("fetch_read_timeout", "float", "PITH_MIRROR_FETCH_READ_TIMEOUT", "", "Seconds to wait for the next bytes of a mirror's response", minimum=0.001),
    Field("fetch_total_timeout", "float", "PITH_MIRROR_FETCH_TOTAL_TIMEOUT", "", "Seconds for one whole fetch attempt, redirects and body included", minimum=0.001),
    Field("fetch_max_response_bytes", "int", "PITH_MIRROR_FETCH_MAX_RESPONSE_BYTES", "", "Maximum response body accepted from a mirror, in bytes", minimum=1),
    Field("fetch_retries", "int", "PITH_MIRROR_FETCH_RETRIES", "", "Retries after a timeout, a connection error or HTTP 429 or 5xx", maximum=10),
    Field("fetch_backoff", "float", "PITH_MIRROR_FETCH_BACKOFF", "", "Seconds before the first retry; the delay doubles on each retry, up to 30"),
    Field("log_level", "log_level", "PITH_MIRROR_LOG_LEVEL", "--log-level", "Log level: DEBUG, INFO, WARNING, ERROR or CRITICAL"),
)
_FIELDS_BY_KEY = {item.key: item for item in FIELDS}


@dataclass(frozen=True)
class Config:
    """The effective configuration; ``FIELDS`` describes every key.

    ``public_url`` is ``None`` when it is not set and ``http_listen`` binds
    every interface (``0.0.0.0`` or ``::``), because no address to
    advertise can be derived then. ``sources`` maps each key to the layer
    its value came from, and ``config_file`` is the TOML file that was read.
    """

    data_dir: Path
    http_listen: str = "127.0.0.1:8080"
    gossip_listen: str = "127.0.0.1:9090"
    peers: tuple[str, ...] = ()
    gossip_advertise: str | None = None
    public_url: str | None = None
    trust_file: Path | None = None
    allow_private_addresses: bool = False
    allow_loopback_addresses: bool = False
    allow_http_mirrors: bool = False
    allowed_ports: tuple[int, ...] = ()
    max_request_body_bytes: int = 8 * MIB
    fetch_connect_timeout: float = 5.0
    fetch_read_timeout: float = 10.0
    fetch_total_timeout: float = 60.0
    fetch_max_response_bytes: int = 64 * MIB
    fetch_retries: int = 3
    fetch_backoff: float = 0.5
    log_level: str = "INFO"
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    config_file: Path | None = field(default=None, compare=False)

    @property
    def http_address(self) -> tuple[str, int]:
        """The HTTP listen host (without brackets) and port; port 0 means any free port."""
        return _split_listen(self.http_listen)

    @property
    def gossip_address(self) -> tuple[str, int]:
        """The gossip listen host (without brackets) and port; port 0 means any free port."""
        return _split_listen(self.gossip_listen)

    def dial_policy(self) -> DialPolicy:
        """Return the dial policy these settings describe."""
        return DialPolicy(
            allow_loopback=self.allow_loopback_addresses,
            allow_private=self.allow_private_addresses,
            allow_http=self.allow_http_mirrors,
            allowed_ports=frozenset(self.allowed_ports) if self.allowed_ports else None,
        )


def _split_listen(text: str) -> tuple[str, int]:
    if text.endswith(":0"):
        return split_host_port(text[:-2] + ":1")[0], 0
    return split_host_port(text)


def default_data_dir(env: Mapping[str, str]) -> Path:
    """Return ``$XDG_DATA_HOME/pith-mirror``, or ``~/.local/share/pith-mirror``.

    The XDG Base Directory specification treats a relative
    ``XDG_DATA_HOME`` as invalid, to be ignored.
    """
    xdg = env.get("XDG_DATA_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "pith-mirror"
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "share" / "pith-mirror"


# Parsing one value. Each parser gets the value as the layer gave it (text
# from variables and flags, TOML types from the file) and raises ValueError
# with the reason.


def _parse_bool(value: Any, from_text: bool) -> bool:
    if isinstance(value, bool):
        return value
    if from_text and isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
        raise ValueError(f"is not a boolean (use one of {', '.join(_TRUE_WORDS + _FALSE_WORDS)})")
    raise ValueError(f"must be true or false, not {type(value).__name__}")


def _parse_int(value: Any, from_text: bool, item: Field) -> int:
    if from_text and isinstance(value, str) and re.fullmatch(r"[0-9]{1,18}", value.strip(), re.ASCII):
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be a whole number")
    if value < item.minimum:
        raise ValueError(f"must be at least {int(item.minimum)}")
    if item.maximum is not None and value > item.maximum:
        raise ValueError(f"must be at most {item.maximum}")
    return value


def _parse_float(value: Any, from_text: bool, item: Field) -> float:
    if from_text and isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError("must be a number of seconds") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a number of seconds")
    number = float(value)
    if not math.isfinite(number) or number < item.minimum:
        raise ValueError(f"must be a finite number of at least {item.minimum:g}")
    return number


def _parse_host_port(value: Any, *, listen: bool = False) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be HOST:PORT text, not {type(value).__name__}")
    text = value.strip()
    if listen and text.endswith(":0"):
        # Port 0 requests a free port from the operating system, which only makes
        # sense for an address to listen on, never for a peer to dial.
        host, _ = split_host_port(text[:-2] + ":1")
        port = 0
    else:
        host, port = split_host_port(text)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if re.fullmatch(r"0x[0-9a-f]*|[0-9]+", host.lower().rsplit(".", 1)[-1], re.ASCII):
            raise ValueError(f"host {host!r} is not a canonical dotted-quad IPv4 address") from None
        if _HOST_NAME.match(host.lower()) is None:
            raise ValueError(f"host {host!r} is not an IP address or a valid host name") from None
        return f"{host.lower()}:{port}"
    if isinstance(address, ipaddress.IPv6Address):
        return f"[{address}]:{port}"
    if str(address) != host:
        raise ValueError(f"host {host!r} is not a canonical dotted-quad IPv4 address")
    return f"{address}:{port}"


def _parse_list(value: Any, from_text: bool) -> list[Any]:
    if from_text and isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ValueError(f"must be a list, not {type(value).__name__}")


def _parse_ports(value: Any, from_text: bool) -> tuple[int, ...]:
    ports: list[int] = []
    for entry in _parse_list(value, from_text):
        port = _parse_int(entry, from_text, Field("port", "int", "", "", "", minimum=1, maximum=65535))
        if port not in ports:
            ports.append(port)
    return tuple(sorted(ports))


def _parse_url(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a URL, not {type(value).__name__}")
    try:
        split_url(value)
    except DialRejected as error:
        raise ValueError(error.reason) from None
    return value


def _parse_path(value: Any, base: Path | None) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty path")
    path = _expand_user(value)
    if not path.is_absolute():
        path = base / path if base is not None else path.absolute()
    return path


def _expand_user(value: str | Path) -> Path:
    """Return ``value`` with a leading ``~`` or ``~name`` expanded; raise ValueError for an unknown user."""
    try:
        return Path(value).expanduser()
    except RuntimeError:
        # pathlib raises RuntimeError when it cannot find the home directory.
        head = str(value).split("/", 1)[0]
        raise ValueError(f"cannot expand {head}: no such user or no home directory") from None


def _parse_log_level(value: Any) -> str:
    if not isinstance(value, str) or value.strip().upper() not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return value.strip().upper()


def _parse_value(item: Field, value: Any, *, from_text: bool, base: Path | None = None) -> Any:
    """Validate one value of ``item`` and return it in its ``Config`` type.

    Args:
        item: the key being set.
        value: the value; text when ``from_text`` (variables and flags),
            a TOML value otherwise.
        from_text: whether numbers, booleans and lists arrive as text.
        base: the directory relative paths are resolved against.

    Raises:
        ValueError: with the reason, without the key or source.
    """
    if item.kind == "bool":
        return _parse_bool(value, from_text)
    if item.kind == "int":
        return _parse_int(value, from_text, item)
    if item.kind == "float":
        return _parse_float(value, from_text, item)
    if item.kind == "host_port":
        return _parse_host_port(value, listen=True)
    if item.kind == "host_ports":
        return tuple(_parse_host_port(entry) for entry in _parse_list(value, from_text))
    if item.kind == "ports":
        return _parse_ports(value, from_text)
    if item.kind == "url":
        return _parse_url(value)
    if item.kind == "path":
        return _parse_path(value, base)
    if item.kind == "log_level":
        return _parse_log_level(value)
    raise AssertionError(f"unknown field kind {item.kind!r}")


def _set(values: dict[str, Any], sources: dict[str, str], item: Field, raw: Any, source: str, *, from_text: bool, base: Path | None = None) -> None:
    try:
        values[item.key] = _parse_value(item, raw, from_text=from_text, base=base)
    except ValueError as error:
        raise ConfigError(item.key, source, raw, str(error)) from None
    sources[item.key] = source


def _flag_label(item: Field) -> str:
    return item.flag or f"command-line override {item.key}"


def _find_config_file(overrides: Mapping[str, Any], env: Mapping[str, str], config_path: Path | None) -> tuple[Path | None, str]:
    """Return the TOML file to read, or None, and the label of who named it."""
    if config_path is not None:
        try:
            return _expand_user(config_path), "--config"
        except ValueError as error:
            raise ConfigError("", "--config", str(config_path), str(error)) from None
    if env.get(CONFIG_ENV):
        try:
            return _expand_user(env[CONFIG_ENV]), CONFIG_ENV
        except ValueError as error:
            raise ConfigError("", CONFIG_ENV, env[CONFIG_ENV], str(error)) from None

    item = _FIELDS_BY_KEY["data_dir"]
    if overrides.get("data_dir") is not None:
        raw, source = overrides["data_dir"], _flag_label(item)
    elif item.env in env:
        raw, source = env[item.env], item.env
    else:
        raw, source = None, "default"
    try:
        data_dir = default_data_dir(env) if raw is None else _parse_value(item, str(raw), from_text=True)
    except ValueError as error:
        raise ConfigError(item.key, source, raw, str(error)) from None
    candidate = data_dir / CONFIG_FILE_NAME
    return (candidate, "default") if candidate.is_file() else (None, "default")


def _read_toml(path: Path, named_by: str) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError("", named_by, str(path), "configuration file not found") from None
    except OSError as error:
        raise ConfigError("", str(path), str(path), f"cannot read the configuration file: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError("", str(path), str(path), f"not valid UTF-8 at byte {error.start}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError("", str(path), str(path), f"invalid TOML: {error}") from None


def load_config(overrides: Mapping[str, Any], env: Mapping[str, str], config_path: Path | None = None) -> Config:
    """Build the effective configuration from defaults, file, environment and flags.

    Args:
        overrides: values from command-line flags by configuration key
            (``{"http_listen": "0.0.0.0:8080", "peers": [...]}``); a value
            of ``None`` means the flag was not given.
        env: the environment, normally ``os.environ``.
        config_path: the ``--config`` path, or ``None``.

    Raises:
        ConfigError: naming the key, the source and the value.

    Reading the TOML file (and checking whether the default one exists) is
    the only I/O.
    """
    values: dict[str, Any] = {"data_dir": default_data_dir(env)}
    sources: dict[str, str] = {item.key: "default" for item in FIELDS}

    path, named_by = _find_config_file(overrides, env, config_path)
    if path is not None:
        document = _read_toml(path, named_by)
        for key, raw in document.items():
            item = _FIELDS_BY_KEY.get(key)
            if item is None:
                known = ", ".join(sorted(_FIELDS_BY_KEY))
                raise ConfigError(key, str(path), raw, f"unknown configuration key (known keys: {known})")
            _set(values, sources, item, raw, str(path), from_text=False, base=path.parent)

    for item in FIELDS:
        if item.env in env:
            _set(values, sources, item, env[item.env], item.env, from_text=True)

    for key, raw in overrides.items():
        if raw is None:
            continue
        item = _FIELDS_BY_KEY.get(key)
        if item is None:
            raise ConfigError(key, "command line", raw, "unknown configuration key")
        _set(values, sources, item, raw, _flag_label(item), from_text=True)

    if "public_url" not in values:
        values["public_url"] = _derive_public_url(values.get("http_listen", "127.0.0.1:8080"))
        sources["public_url"] = "derived from http_listen"

    return Config(**values, sources=MappingProxyType(sources), config_file=path)


def _derive_public_url(http_listen: str) -> str | None:
    host, port = _split_listen(http_listen)
    if host in ("0.0.0.0", "::") or port == 0:
        # No address to advertise is known until the socket is bound; the
        # daemon then advertises the bound address.
        return None
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


# Rendering.


def _toml_string(text: str) -> str:
    escapes = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
    parts = ['"']
    for character in text:
        if character in escapes:
            parts.append(escapes[character])
        elif ord(character) < 0x20 or ord(character) == 0x7F:
            parts.append(f"\\u{ord(character):04x}")
        else:
            parts.append(character)
    parts.append('"')
    return "".join(parts)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Path):
        return _toml_string(str(value))
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(entry) for entry in value) + "]"
    raise AssertionError(f"no TOML form for {type(value).__name__}")


def render_config_toml(config: Config) -> str:
    """Render the effective configuration as TOML, with each key's meaning and source.

    Keys whose value is unset (``None``) are written as comments, because
    TOML has no null.
    """
    lines = ["# Effective pith-mirror configuration."]
    if config.config_file is not None:
        lines.append(f"# Read from {config.config_file}, then the environment and the command line.")
    for item in FIELDS:
        value = getattr(config, item.key)
        source = config.sources.get(item.key, "default")
        lines.append("")
        lines.append(f"# {item.meaning}. Source: {source}.")
        if value is None:
            lines.append(f"# {item.key} is not set")
        else:
            lines.append(f"{item.key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


# Command-line wiring.

_ARGUMENT_DESTS = {
    "data_dir": "data_dir",
    "http_listen": "http_listen",
    "gossip_listen": "gossip_listen",
    "peers": "peers",
    "trust_file": "trust_file",
    "log_level": "log_level",
}


def add_config_arguments(parser: argparse.ArgumentParser, *, listeners: bool = True) -> None:
    """Add ``--config`` and the configuration flags to ``parser``.

    ``overrides_from_args`` reads them back. Every default is ``None``, so
    that an absent flag leaves the lower layers in effect. Without
    ``listeners`` the daemon's network flags (``--http``, ``--gossip``,
    ``--peer``) are left out, for commands that start no daemon.
    """
    parser.add_argument("--config", dest="config_path", metavar="PATH", type=Path, help=f"TOML configuration file (default: ${CONFIG_ENV}, else DATA_DIR/{CONFIG_FILE_NAME} if it exists)")
    parser.add_argument("--data-dir", dest="data_dir", metavar="PATH", help="data directory (default: $XDG_DATA_HOME/pith-mirror or ~/.local/share/pith-mirror)")
    if listeners:
        parser.add_argument("--http", dest="http_listen", metavar="HOST:PORT", help="HTTP API listen address (default: 127.0.0.1:8080)")
        parser.add_argument("--gossip", dest="gossip_listen", metavar="HOST:PORT", help="gossip listen address (default: 127.0.0.1:9090)")
        parser.add_argument("--peer", dest="peers", metavar="HOST:PORT", action="append", help="seed peer; repeat for several (replaces the configured list)")
    parser.add_argument("--trust", dest="trust_file", metavar="PATH", help="trust configuration JSON file (default: the built-in trust)")
    parser.add_argument("--log-level", dest="log_level", metavar="LEVEL", help=f"log level: {', '.join(LOG_LEVELS)} (default: INFO)")


def overrides_from_args(args: argparse.Namespace) -> tuple[dict[str, Any], Path | None]:
    """Return the overrides and the ``--config`` path from parsed arguments."""
    overrides = {key: getattr(args, dest, None) for key, dest in _ARGUMENT_DESTS.items()}
    return overrides, getattr(args, "config_path", None)
