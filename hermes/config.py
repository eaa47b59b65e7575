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
from hermes.inbox.intake import InboxSettings
from hermes.jobrunner.handlers import RouteSettings, parse_target
from hermes.jobrunner.outbox import OutboxSettings
from hermes.jobrunner.runs import RunnerSettings
from hermes.jobrunner.schedule import JobSettings
from watchdog.clipping import clip_message, quote
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

TOP_LEVEL = (
    "gateway",
    "store",
    "watchdog",
    "platform_defaults",
    "platforms",
    "runner",
    "outbox",
    "inbox",
    "routes",
    "jobs",
)
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
    runner: RunnerSettings = field(default_factory=RunnerSettings)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    routes: list[RouteSettings] = field(default_factory=list)
    jobs: list[JobSettings] = field(default_factory=list)
    inbox: InboxSettings = field(default_factory=InboxSettings)


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
            errors.append(
                f"{clip_message(key)}: unknown top-level key (expected one of: {', '.join(TOP_LEVEL)})"
            )

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
        where = f"platforms.{clip_message(name)}"
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

    runner = take("runner", RunnerSettings)
    outbox = take("outbox", OutboxSettings)
    inbox = take("inbox", InboxSettings)
    routes = _tables(data, "routes", RouteSettings, errors)
    jobs = _tables(data, "jobs", JobSettings, errors)
    known = set(tables)
    listing = ", ".join(sorted(clip_message(k) for k in known)) or "none"
    for i, route in routes:
        if route.platform is not None and route.platform not in known:
            errors.append(
                f"routes[{i}].platform: unknown platform {quote(route.platform)} (configured: {listing})"
            )
    seen: set[str] = set()
    for i, job in jobs:
        if job.name in seen:
            errors.append(f"jobs[{i}].name: a second job named {quote(job.name)}")
        seen.add(job.name)
        for target in job.targets:
            platform = parse_target(target)[0]
            if platform not in known:
                errors.append(
                    f"jobs[{i}].targets: unknown platform {quote(platform)} in {quote(target)} (configured: {listing})"
                )

    if errors:
        raise ConfigError(source, errors)
    assert gateway is not None and store is not None and watchdog is not None
    assert runner is not None and outbox is not None and inbox is not None
    return GatewayConfig(
        path,
        gateway,
        store,
        watchdog,
        platforms,
        db_url,
        runner,
        outbox,
        [r for _, r in routes],
        [j for _, j in jobs],
        inbox=inbox,
    )


def _tables(
    data: Mapping[str, Any], key: str, model: type[Any], errors: list[str]
) -> list[tuple[int, Any]]:
    """Validate an array of tables (``[[routes]]``); errors located as ``routes[2].handler``."""
    raw = data.get(key, [])
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        errors.append(f"{key}: expected tables like [[{key}]]")
        return []
    result = []
    for i, table in enumerate(raw, start=1):
        try:
            result.append((i, model.model_validate(table)))
        except ValidationError as exc:
            errors.extend(problems(exc, (f"{key}[{i}]",)))
    return result
