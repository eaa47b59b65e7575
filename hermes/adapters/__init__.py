"""Platform adapters. Built-in kinds are named; others load as ``package.module:Class``."""

from __future__ import annotations

import importlib

from hermes.adapters.base import Adapter, AdapterSettings

BUILTIN = {
    "demo": "hermes.adapters.demo:DemoAdapter",
    "qqbot": "hermes.adapters.qqbot:QQBotAdapter",
    "telegram": "hermes.adapters.telegram:TelegramAdapter",
}

__all__ = ["BUILTIN", "Adapter", "AdapterSettings", "resolve_adapter"]


def resolve_adapter(spec: str) -> type[Adapter]:
    """The adapter class for ``adapter = "..."``; ``ValueError`` with a clear message otherwise."""
    target = BUILTIN.get(spec) or (spec if ":" in spec else None)
    if target is None:
        known = ", ".join(sorted(BUILTIN))
        raise ValueError(f"unknown adapter {spec!r} (built-in: {known}; or 'package.module:Class')")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import adapter module {module_name!r}: {exc}") from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise ValueError(f"{target!r} is not an Adapter subclass")
    return cls
