"""The gateway's TOML configuration, validated before anything is touched.

Every problem is reported at once, one line each, naming the file, the key and
what was expected: ``gateway.toml: platforms.qq-main.heartbeat_ttl: Input should
be greater than 0 (got -1)``. ``hermes run`` exits 78 on any of them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from hermes.adapters import Adapter, AdapterSettings, resolve_adapter
from watchdog.exceptions import ConfigError
from watchdog.settings import (
    SUPERVISION_KEYS,
    Duration,
    Section,
    StoreSettings,
    SupervisionSettings,
    WatchdogSettings,
    database_url,
    problems,
    read_toml,
    section,
)

TOP_LEVEL = ("gateway", "store", "watchdog", "platform_defaults", "platforms")
PLATFORM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class GatewaySettings(Section):
    name: str = "hermes"
    log_level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    shutdown_timeout: Duration = 20.0
    """Graceful stop budget: adapters closed, state flushed. Keep below TimeoutStopSec=."""


@dataclass(frozen=True, slots=True)
class PlatformConfig:
    name: str
    adapter: str
    adapter_class: type[Adapter]
    supervision: SupervisionSettings
    settings: AdapterSettings
    raw: dict[str, Any]
    """The table as written (secret references, not values), to detect changes on reload."""


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    path: Path
    gateway: GatewaySettings
    store: StoreSettings
    watchdog: WatchdogSettings
    platforms: dict[str, PlatformConfig]
    database_url: str = field(repr=False)


def load_config(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Read and validate a configuration file; raises :class:`ConfigError` listing every problem."""
    path = Path(path)
    env = os.environ if environ is None else environ
    source = str(path)
    data = read_toml(path)
    base_dir = path.resolve().parent
    errors: list[str] = []

    for key in data:
        if key not in TOP_LEVEL:
            errors.append(f"{key}: unknown top-level key (expected one of: {', '.join(TOP_LEVEL)})")

    def take(key: str, model: type[Section]) -> Any:
        try:
            return section(data, key, model, source)
        except ConfigError as exc:
            errors.extend(exc.problems)
            return None

    gateway = take("gateway", GatewaySettings)
    store = take("store", StoreSettings)
    watchdog = take("watchdog", WatchdogSettings)
    defaults = take("platform_defaults", SupervisionSettings)
    defaults_raw = data.get("platform_defaults", {}) if defaults is not None else {}

    db_url = ""
    if store is not None:
        try:
            db_url = database_url(store, base_dir, env)
        except ValueError as exc:
            errors.append(f"store.url: {exc}")

    platforms: dict[str, PlatformConfig] = {}
    tables = data.get("platforms", {})
    if not isinstance(tables, dict):
        errors.append("platforms: expected tables like [platforms.NAME]")
        tables = {}
    elif not tables:
        errors.append("platforms: no platform configured; add a [platforms.NAME] table")
    context = {"base_dir": base_dir, "environ": env}
    for name, table in tables.items():
        where = f"platforms.{name}"
        if not PLATFORM_NAME.fullmatch(name):
            errors.append(
                f"{where}: platform names are 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit"
            )
            continue
        if not isinstance(table, dict):
            errors.append(f"{where}: expected a table [{where}]")
            continue
        kind = table.get("adapter")
        if not isinstance(kind, str) or not kind:
            errors.append(f'{where}.adapter: required key is missing (e.g. adapter = "qqbot")')
            continue
        try:
            cls = resolve_adapter(kind)
        except ValueError as exc:
            errors.append(f"{where}.adapter: {exc}")
            continue
        own = {k: v for k, v in table.items() if k not in SUPERVISION_KEYS and k != "adapter"}
        sup_raw = {**defaults_raw, **{k: v for k, v in table.items() if k in SUPERVISION_KEYS}}
        before = len(errors)
        try:
            supervision = SupervisionSettings.model_validate(sup_raw)
        except ValidationError as exc:
            errors.extend(problems(exc, ("platforms", name)))
        try:
            settings = cls.Settings.model_validate(own, context=context)
        except ValidationError as exc:
            errors.extend(problems(exc, ("platforms", name)))
        if len(errors) > before:
            continue
        platforms[name] = PlatformConfig(name, kind, cls, supervision, settings, dict(table))

    if errors:
        raise ConfigError(source, errors)
    assert gateway is not None and store is not None and watchdog is not None
    return GatewayConfig(path, gateway, store, watchdog, platforms, db_url)
