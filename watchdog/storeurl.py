"""Where the state store is: TOML files and database URLs, without SQLAlchemy or pydantic
(the status CLI starts with this module)."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, quote, quote_plus, unquote

from watchdog.exceptions import ConfigError

DEFAULT_STATE_DIRECTORY = "/var/lib/hermes"


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; errors name the file and, for syntax errors, the line."""
    import tomllib  # not needed by `hermes-watchdog status --database URL`

    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except IsADirectoryError:
        raise ConfigError(str(path), ["is a directory, expected a TOML file"]) from None
    except PermissionError:
        raise ConfigError(str(path), ["permission denied"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [f"invalid TOML: {exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), ["not UTF-8 text"]) from None


def default_sqlite_url(directory: str | os.PathLike[str]) -> str:
    return f"sqlite:///{Path(directory).resolve() / 'hermes.db'}"


# -- database URLs, parsed as SQLAlchemy parses them (``sqlalchemy.engine.url._parse_url``)

_URL = re.compile(
    r"""
        (?P<name>[\w\+]+)://
        (?:
            (?P<username>[^:/]*)
            (?::(?P<password>[^@]*))?
        @)?
        (?:
            (?:
                \[(?P<ipv6host>[^/\?]+)\] |
                (?P<ipv4host>[^/:\?]+)
            )?
            (?::(?P<port>[^/\?]*))?
        )?
        (?:/(?P<database>[^\?]*))?
        (?:\?(?P<query>.*))?
        """,
    re.X,
)


class DatabaseURL(NamedTuple):
    """The parts of a database URL, as SQLAlchemy's ``make_url`` finds them."""

    drivername: str
    username: str | None
    password: str | None
    host: str | None
    port: int | None
    database: str | None
    query: dict[str, str]

    @property
    def backend(self) -> str:
        return self.drivername.split("+")[0]

    def display(self) -> str:
        """The URL with any password hidden: SQLAlchemy's ``render_as_string()``."""
        s = self.drivername + "://"
        if self.username is not None:
            s += quote(self.username, safe=" +")
            if self.password is not None:
                s += ":***"
            s += "@"
        if self.host is not None:
            s += f"[{self.host}]" if ":" in self.host else self.host
        if self.port is not None:
            s += f":{self.port}"
        if self.database is not None:
            s += "/" + quote(self.database, safe=" +/")
        if self.query:
            s += "?" + "&".join(
                f"{quote_plus(k)}={quote_plus(self.query[k])}" for k in sorted(self.query)
            )
        return s


def parse_url(url: str) -> DatabaseURL | None:
    """``url``'s parts; None for what this parser leaves to SQLAlchemy: a URL it cannot parse,
    or one with a repeated query key or a port that is not a number."""
    m = _URL.match(url)
    if m is None:
        return None
    parts = m.groupdict()
    query: dict[str, str] = {}
    if parts["query"] is not None:
        for key, value in parse_qsl(parts["query"]):
            if key in query:
                return None
            query[key] = value
    port = parts["port"]
    if port and not (port.isascii() and port.isdigit()):
        return None

    def unquoted(name: str) -> str | None:
        value = parts[name]
        return None if value is None else unquote(value)

    return DatabaseURL(
        drivername=parts["name"],
        username=unquoted("username"),
        password=unquoted("password"),
        host=parts["ipv4host"] or parts["ipv6host"],
        port=int(port) if port else None,
        database=unquoted("database"),
        query=query,
    )


def store_url_quickly(path: Path, environ: Mapping[str, str]) -> str | None:
    """The URL :func:`watchdog.settings.store_url_from_config` finds in the config file at
    ``path``, without pydantic or SQLAlchemy; None whenever its ``[store]`` table is anything
    but plainly valid, for the full validation to find and word the problem."""
    from watchdog import secrets

    store = read_toml(path).get("store", {})
    if not isinstance(store, dict) or not store.keys() <= {
        "url",
        "directory",
        "heartbeat_persist_interval",
    }:
        return None
    url, directory = store.get("url"), store.get("directory")
    if not all(isinstance(v, str) for v in (url or "", directory or "")):
        return None
    if "heartbeat_persist_interval" in store and not _positive_duration(
        store["heartbeat_persist_interval"]
    ):
        return None
    if url:
        if secrets.is_reference(url):
            try:
                return secrets.resolve(
                    url, base_dir=path.resolve().parent, environ=environ
                ).reveal()
            except ValueError as exc:
                raise ConfigError(str(path), [f"store.url: {exc}"]) from None
        parsed = parse_url(url)
        if parsed is None or parsed.backend not in ("sqlite", "postgresql") or parsed.password:
            return None
        return str(url)
    if directory:
        where = path.resolve().parent / os.path.expanduser(directory)
    else:
        where = Path(environ.get("STATE_DIRECTORY", "").split(":")[0] or DEFAULT_STATE_DIRECTORY)
    return default_sqlite_url(where)


_DURATION = r"\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h|d)?\s*"  # as in watchdog.settings


def _positive_duration(value: Any) -> bool:
    """Whether ``value`` is a duration the settings accept (a subset is enough: anything
    else goes through the full validation)."""
    if isinstance(value, str):
        match = re.fullmatch(_DURATION, value)
        return match is not None and 0 < float(match.group(1)) < math.inf
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf
