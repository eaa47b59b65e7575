"""Gateway configuration files for tests."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SCRIPTED = "tests.scripted:ScriptedAdapter"


def qq_platform(sim: Any, **extra: Any) -> dict[str, Any]:
    """A ``qqbot`` platform table for the simulator ``sim``, reconnecting quickly; its secret
    in ``QQ_SECRET`` (the ``sim`` fixture sets it)."""
    return {
        "adapter": "qqbot",
        **sim.adapter_settings(
            client_secret="env:QQ_SECRET",
            reconnect_backoff=0.05,
            reconnect_backoff_max=0.2,
            hello_timeout=1.0,
        ),
        **extra,
    }


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Mapping):  # an inline table
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    # JSON strings and arrays of strings are valid TOML.
    return json.dumps(value, ensure_ascii=False)


def table(name: str, values: Mapping[str, Any]) -> str:
    lines = [f"[{name}]"] + [f"{k} = {toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def write_config(
    directory: Path,
    platforms: Mapping[str, Mapping[str, Any]],
    *,
    tick: float = 0.1,
    store: Mapping[str, Any] | None = None,
    watchdog: Mapping[str, Any] | None = None,
    gateway: Mapping[str, Any] | None = None,
    routes: Sequence[Mapping[str, Any]] = (),
    jobs: Sequence[Mapping[str, Any]] = (),
    extra: str = "",
) -> Path:
    """Write a config; platforms default to the scripted test adapter."""
    parts = [
        table("gateway", {"log_level": "DEBUG", "shutdown_timeout": 5, **(gateway or {})}),
        table("store", dict(store) if store is not None else {"directory": "state"}),
        table("watchdog", {"tick_interval": tick, "close_timeout": 1, **(watchdog or {})}),
    ]
    for pname, values in platforms.items():
        parts.append(table(f'platforms."{pname}"', {"adapter": SCRIPTED, **values}))
    for route in routes:
        parts.append(table("[routes]", route))
    for job in jobs:
        parts.append(table("[jobs]", job))
    parts.append(extra)
    path = directory / "gateway.toml"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
