"""Settings the watchdog owns: ``[store]``, ``[watchdog]`` and per-platform supervision keys.

The gateway's configuration embeds these; the ``hermes-watchdog`` CLI reads only
``[store]`` from the same TOML file, so it finds the database the gateway writes.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from watchdog import secrets
from watchdog.clipping import clip_message, quote
from watchdog.exceptions import ConfigError
from watchdog.heartbeat import PlatformPolicy
from watchdog.restart import RestartPolicy
from watchdog.storeurl import DEFAULT_STATE_DIRECTORY as DEFAULT_STATE_DIRECTORY
from watchdog.storeurl import default_sqlite_url
from watchdog.storeurl import read_toml as read_toml

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h|d)?\s*")


def _duration(value: Any) -> Any:
    """Accept seconds as a number, or text like ``"500ms"``, ``"30s"``, ``"5min"``, ``"1h"``,
    ``"1d"``. The offending value is added to the message by whoever reports it."""
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if not match:
            raise ValueError('expected a duration like 30, "500ms", "30s", "5min", "1h" or "1d"')
        return float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if isinstance(value, bool):
        raise ValueError("expected a duration, got a boolean")
    return value


def parse_duration(text: str) -> float:
    """Seconds from ``"500ms"``, ``"30s"``, ``"5min"``, ``"1h"`` or a plain number (for CLIs);
    the pattern has no sign, so nothing negative gets through."""
    seconds = float(_duration(text))
    if not math.isfinite(seconds):
        raise ValueError("expected a finite duration")
    return seconds


Duration = Annotated[float, BeforeValidator(_duration), Field(gt=0, allow_inf_nan=False)]
"""Seconds, > 0 and finite (a huge number of digits would otherwise be infinity)."""
NonNegativeDuration = Annotated[float, BeforeValidator(_duration), Field(ge=0, allow_inf_nan=False)]


class Section(BaseModel):
    """A TOML table: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreSettings(Section):
    url: str | None = None
    """SQLAlchemy URL, or a secret reference to one (a URL with a password is a secret)."""
    directory: str | None = None
    """State directory for the default SQLite file; relative to the config file."""
    heartbeat_persist_interval: Duration = 5.0
    """Heartbeat timestamps reach the database at most this often per platform."""


class WatchdogSettings(Section):
    tick_interval: Annotated[Duration, Field(le=3600)] = 2.0
    """Seconds between watchdog passes (and systemd pings); at most half of WatchdogSec=."""
    trigger_on_escalation: bool = True
    """The backstop for an escalation's stop (exit 75) that hangs: send WATCHDOG=trigger once it has
    run shutdown_timeout + 3 s, so that systemd kills and restarts the gateway. An escalation
    that stops in time never triggers (systemd then shows exit-code 75 and the cause); exit 78
    never does. False leaves a hung stop to TimeoutStopSec=."""
    close_timeout: Duration = 5.0
    """How long an adapter gets to finish after close(), before it is cancelled."""


class SupervisionSettings(Section):
    """Per-platform supervision; also the ``[platform_defaults]`` table."""

    required: bool = True
    heartbeat_ttl: Duration = 30.0
    start_timeout: Duration = 60.0
    reconnect_timeout: Duration = 300.0
    restart_max: Annotated[int, Field(ge=0, le=10_000)] = 5
    restart_window: Duration = 300.0
    restart_backoff: NonNegativeDuration = 1.0
    restart_backoff_max: NonNegativeDuration = 60.0

    @model_validator(mode="after")
    def _backoff_order(self) -> SupervisionSettings:
        if self.restart_backoff > self.restart_backoff_max:
            raise ValueError(
                f"restart_backoff ({self.restart_backoff:g} s) exceeds restart_backoff_max "
                f"({self.restart_backoff_max:g} s)"
            )
        return self

    def policy(self) -> PlatformPolicy:
        return PlatformPolicy(
            heartbeat_ttl=self.heartbeat_ttl,
            start_timeout=self.start_timeout,
            reconnect_timeout=self.reconnect_timeout,
            restart=RestartPolicy(
                max_restarts=self.restart_max,
                window=self.restart_window,
                backoff_initial=self.restart_backoff,
                backoff_max=self.restart_backoff_max,
            ),
        )


SUPERVISION_KEYS = frozenset(SupervisionSettings.model_fields)


# -- reading TOML and reporting errors


def problems(exc: ValidationError, prefix: Sequence[str | int] = ()) -> list[str]:
    """One line per validation error: ``key.path: what was expected (got ...)``."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(clip_message(str(p)) for p in (*prefix, *err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the example configuration)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif "input" in err and err["type"] not in ("model_type",) and not _secretish(loc):
            msg += f" (got {quote(err['input'])})"
        lines.append(f"{loc or '<top level>'}: {msg}")
    return lines


def _secretish(loc: str) -> bool:
    return any(word in loc for word in ("secret", "token", "password", "url"))


def section(data: Mapping[str, Any], key: str, model: type[Section], source: str) -> Any:
    """Validate ``data[key]`` (a table, may be absent) with ``model``; errors name file and key."""
    raw = data.get(key, {})
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"{key}: expected a table [{key}], got {type(raw).__name__}"])
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, problems(exc, (key,))) from None


def database_url(store: StoreSettings, base_dir: Path, environ: Mapping[str, str]) -> str:
    """The store's URL: ``[store] url`` (possibly a secret reference), else SQLite in the state
    directory: ``[store] directory``, else ``$STATE_DIRECTORY`` (systemd), else /var/lib/hermes."""
    if store.url:
        if secrets.is_reference(store.url):
            return secrets.resolve(store.url, base_dir=base_dir, environ=environ).reveal()
        try:
            parsed = make_url(store.url)
        except ArgumentError as exc:
            raise ValueError(f"not a database URL: {exc}") from None
        if parsed.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError(
                f"unsupported database {quote(parsed.get_backend_name())}; use sqlite:///PATH or "
                "postgresql+psycopg://..."
            )
        if parsed.password:
            raise ValueError(
                "contains a password; give the URL as a secret reference "
                "(env:NAME, file:PATH or credential:NAME)"
            )
        return store.url
    if store.directory:
        directory = base_dir / os.path.expanduser(store.directory)
    else:
        env_dir = environ.get("STATE_DIRECTORY", "").split(":")[0]
        directory = Path(env_dir or DEFAULT_STATE_DIRECTORY)
    return default_sqlite_url(directory)


def store_url_from_config(path: Path, environ: Mapping[str, str]) -> str:
    """For readers (the CLI): the database a gateway with this config file writes to."""
    data = read_toml(path)
    store = section(data, "store", StoreSettings, str(path))
    try:
        return database_url(store, path.resolve().parent, environ)
    except ValueError as exc:
        raise ConfigError(str(path), [f"store.url: {exc}"]) from None


def _secret(value: Any, info: ValidationInfo) -> secrets.Secret:
    if isinstance(value, secrets.Secret):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a secret reference: env:NAME, file:PATH or credential:NAME")
    ctx = info.context or {}
    return secrets.resolve(
        value, base_dir=ctx.get("base_dir", Path.cwd()), environ=ctx.get("environ", os.environ)
    )


SecretValue = Annotated[secrets.Secret, PlainValidator(_secret)]
"""A settings field holding a secret; validate with ``context={"base_dir": ..., "environ": ...}``."""
