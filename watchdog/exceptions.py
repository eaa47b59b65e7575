"""Exceptions raised by the watchdog package.

::

    WatchdogError
     ├── ConfigError            bad settings; the gateway exits 78 before touching anything
     ├── StoreError             the state store cannot be opened, read or migrated
     │    └── StoreNotFound     no store at the given place (never created by readers)
     └── WatchdogTimingError    tick interval incompatible with systemd's WatchdogSec
"""

from __future__ import annotations


class WatchdogError(Exception):
    """Base class of every error raised on purpose by this package."""


class ConfigError(WatchdogError):
    """Settings are invalid; ``problems`` lists one line per problem, each naming where."""

    def __init__(self, source: str, problems: list[str]) -> None:
        from watchdog.clipping import clip_message

        self.source = source
        # Problems echo what was written; a 5 MB value must not make a 5 MB message.
        self.problems = [clip_message(p) for p in problems]
        super().__init__("\n".join(f"{source}: {p}" for p in self.problems))


class StoreError(WatchdogError):
    """The state store failed; the message names the database (never with a password)."""


class StoreNotFound(StoreError):
    """There is no state store where one was expected."""


class WatchdogTimingError(WatchdogError):
    """The tick interval is too long for systemd's watchdog timeout."""
