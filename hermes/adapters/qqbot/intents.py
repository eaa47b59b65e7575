"""Gateway intents: which events a QQ Bot session subscribes to."""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntFlag


class Intents(IntFlag):
    """Bit flags sent in Identify; names as in the QQ Bot documentation."""

    GUILDS = 1 << 0
    GUILD_MEMBERS = 1 << 1
    GUILD_MESSAGES = 1 << 9
    GUILD_MESSAGE_REACTIONS = 1 << 10
    DIRECT_MESSAGE = 1 << 12
    GROUP_AND_C2C_EVENT = 1 << 25
    INTERACTION = 1 << 26
    MESSAGE_AUDIT = 1 << 27
    FORUMS_EVENT = 1 << 28
    AUDIO_ACTION = 1 << 29
    PUBLIC_GUILD_MESSAGES = 1 << 30


DEFAULT_INTENTS = ("PUBLIC_GUILD_MESSAGES", "DIRECT_MESSAGE", "GROUP_AND_C2C_EVENT")


def parse_intents(names: Iterable[str]) -> Intents:
    """Combine intent names; ``ValueError`` naming the unknown one and the known ones."""
    value = Intents(0)
    for name in names:
        try:
            value |= Intents[name.upper()]
        except KeyError:
            known = ", ".join(m.name for m in Intents if m.name)
            raise ValueError(f"unknown intent {name!r} (known: {known})") from None
    return value
