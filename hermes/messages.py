"""Platform-neutral messages: what handlers receive and send, whatever the platform."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(slots=True)
class InboundMessage:
    """A message someone sent to the bot. Read-only by contract: not frozen, because one is
    built for every event on the receive path and a frozen dataclass takes 4x as long."""

    platform: str
    """The configured platform name (``qq-main``)."""
    message_id: str
    chat_kind: str
    """Adapter-defined; QQ: ``c2c`` (one-to-one), ``group``, ``channel`` (guild), ``dm`` (guild DM)."""
    chat_id: str
    """Where a reply goes: the user/group/channel/guild id the chat kind calls for."""
    author_id: str
    text: str
    timestamp: datetime | None
    author_name: str | None = None
    event: str = ""
    """The platform's event type (``GROUP_AT_MESSAGE_CREATE``)."""
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """A message to send; ``reply_to`` makes it a reply (QQ: a passive reply to ``msg_id``)."""

    chat_kind: str
    chat_id: str
    text: str
    reply_to: str | None = None
    reply_seq: int | None = None
    """Which reply to ``reply_to`` this is (1, 2, ...), fixed by the outbox so that a retry
    is the same message to the platform (QQ: ``msg_seq``). None: the adapter counts."""


class RecentIds:
    """The last ``capacity`` ids seen, to drop duplicates in bounded memory."""

    __slots__ = ("_capacity", "_ids")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, key: str) -> bool:
        """True if ``key`` was seen recently; otherwise remember it and return False."""
        ids = self._ids
        if key in ids:
            return True
        ids[key] = None
        if len(ids) > self._capacity:
            ids.popitem(last=False)
        return False

    def forget(self, key: str) -> None:
        """Take ``key`` back (its event was not taken and will come again)."""
        self._ids.pop(key, None)

    def __len__(self) -> int:
        return len(self._ids)
