"""The Telegram Bot API's long polling, without I/O: what an answer means and what comes next.

Everything here is pure and tested without sockets or sleeps (the clock is passed in):

- :class:`PollPolicy` classifies every failed ``getUpdates`` (or ``getMe``) into a
  :class:`PollPlan`: retry after a backoff, wait ``retry_after``, delete a webhook, or give
  up with a reason code, retryable or not.
- :class:`Offsets` keeps the two positions of a long poll: the offset last *sent* (the
  platform has forgotten everything before it) and the offset after the last update
  *taken* by the inbox (sent with the next poll, only once the inbox has committed).
- :func:`parse_update` turns an update into an :class:`~hermes.messages.InboundMessage`,
  :func:`split_text` cuts a long reply into messages the platform accepts.

Error texts and ``getUpdates`` rules follow the open-source Bot API server
(tdlib/telegram-bot-api, ``telegram-bot-api/Client.cpp``).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from hermes.errors import TelegramApiError
from hermes.messages import InboundMessage

TEXT_LIMIT = 4096
"""Characters per message ("1-4096 characters after entities parsing")."""
UPDATE_RETENTION = 86_400.0
"""The platform keeps an unconfirmed update at most 24 hours (Bot API documentation)."""
REPEAT_POLL_HOLD = 3.0
"""The server holds a ``getUpdates`` repeated with the same offset within 3 s for at least
3 s, whatever its ``timeout`` (``process_get_updates_query``): read timeouts must allow it."""

# Reason codes (a public contract, see watchdog.reasons).
INVALID_TOKEN = "tg_invalid_token"
CONFLICT = "tg_conflict"
WEBHOOK_ACTIVE = "tg_webhook_active"
UNREACHABLE = "tg_unreachable"
REQUEST_REFUSED = "tg_request_refused"

CONFLICT_OTHER_POLLER = "terminated by other getUpdates request"
CONFLICT_WEBHOOK = "webhook is active"
CONFLICT_SET_WEBHOOK = "terminated by setWebhook"

CHAT_KINDS = frozenset({"private", "group", "supergroup", "channel"})
MESSAGE_UPDATES = {"message": "message", "channel_post": "channel_post"}
"""Update fields that carry a new message (edits and the rest are confirmed, not handled)."""


class Step(Enum):
    RETRY = "retry"
    """Try again after ``delay`` (declared reconnecting)."""
    DELETE_WEBHOOK = "delete_webhook"
    """Call deleteWebhook, then poll again at once."""
    GIVE_UP = "give_up"
    """Report ``code`` to the watchdog and return."""


@dataclass(frozen=True, slots=True)
class PollPlan:
    step: Step
    delay: float = 0.0
    code: str = ""
    message: str = ""
    retryable: bool = True


class Backoff:
    """Capped exponential delays with jitter in ``[1 - jitter, 1]`` of each step."""

    def __init__(
        self,
        initial: float = 1.0,
        maximum: float = 60.0,
        factor: float = 2.0,
        jitter: float = 0.3,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.initial, self.maximum, self.factor, self.jitter = initial, maximum, factor, jitter
        self._rng = rng
        self.steps = 0

    def next(self) -> float:
        base = min(self.initial * self.factor**self.steps, self.maximum)
        self.steps += 1
        return float(base * (1 - self.jitter * self._rng()))

    def reset(self) -> None:
        self.steps = 0


def is_conflict_with_poller(exc: TelegramApiError) -> bool:
    return exc.status == 409 and CONFLICT_OTHER_POLLER in exc.description


def is_conflict_with_webhook(exc: TelegramApiError) -> bool:
    return exc.status == 409 and (
        CONFLICT_WEBHOOK in exc.description or CONFLICT_SET_WEBHOOK in exc.description
    )


class PollPolicy:
    """What a failed call of the receive loop (``getMe``, ``getUpdates``) means.

    - 401, or 404 on the token path: the token is revoked or wrong; not retryable.
    - 409 "terminated by other getUpdates request": another process polls with the same
      token. Retried (it happens once when a restarted gateway meets its predecessor's
      poll), but ``conflict_max`` of them within ``conflict_window`` seconds mean two
      instances share the token: not retryable, a restart cannot fix that.
    - 409 while a webhook is set: not retryable, unless ``delete_webhook``.
    - 429: wait ``parameters.retry_after`` (at least the backoff's first step).
    - 5xx, a network error, a timeout, an answer that is not the API's: backoff; after
      ``max_failures`` in a row, ``tg_unreachable`` (retryable: the watchdog restarts).
    - Any other 4xx: the request itself is refused (a bad ``allowed_updates``); not retryable.
    """

    def __init__(
        self,
        backoff: Backoff,
        *,
        max_failures: int = 10,
        conflict_max: int = 3,
        conflict_window: float = 300.0,
        delete_webhook: bool = False,
    ) -> None:
        self.backoff = backoff
        self.max_failures = max_failures
        self.conflict_max = conflict_max
        self.conflict_window = conflict_window
        self.delete_webhook = delete_webhook
        self.failures = 0
        """Failed calls in a row (reset by a call that succeeds)."""
        self.conflicts: deque[float] = deque()
        """When 409 conflicts with another poller happened, within the window."""
        self.webhook_deleted = False

    def succeeded(self) -> None:
        self.failures = 0
        self.backoff.reset()

    def after(self, exc: TelegramApiError, now: float) -> PollPlan:
        status, what = exc.status, f"{exc.method}: {exc}"
        if status == 401 or (status == 404 and exc.method in ("getMe", "getUpdates")):
            return PollPlan(
                Step.GIVE_UP,
                code=INVALID_TOKEN,
                message=f"{what}: the bot token is revoked or wrong (or api_base is not a Bot "
                "API server); get a valid token from @BotFather",
                retryable=False,
            )
        if is_conflict_with_poller(exc):
            self.conflicts.append(now)
            while self.conflicts and now - self.conflicts[0] > self.conflict_window:
                self.conflicts.popleft()
            if len(self.conflicts) >= self.conflict_max:
                return PollPlan(
                    Step.GIVE_UP,
                    code=CONFLICT,
                    message=f"{len(self.conflicts)} getUpdates conflicts within "
                    f"{self.conflict_window:g} s: another process polls with the same bot "
                    "token (two gateway instances, or another bot program, use one token); "
                    "only one may poll",
                    retryable=False,
                )
            return PollPlan(Step.RETRY, self.backoff.next(), message=what)
        if is_conflict_with_webhook(exc):
            if self.delete_webhook and not self.webhook_deleted:
                self.webhook_deleted = True  # once per instance: a webhook set again is news
                return PollPlan(Step.DELETE_WEBHOOK, message=what)
            return PollPlan(
                Step.GIVE_UP,
                code=WEBHOOK_ACTIVE,
                message=f"{what}: a webhook is set for this bot, and getUpdates cannot be used "
                "while it is; delete it (deleteWebhook), or set delete_webhook = true",
                retryable=False,
            )
        if status == 429:
            wait = exc.retry_after if exc.retry_after is not None else self.backoff.next()
            return PollPlan(Step.RETRY, max(wait, 0.0), message=what)
        if 400 <= status < 500:
            return PollPlan(
                Step.GIVE_UP,
                code=REQUEST_REFUSED,
                message=f"{what}: the Bot API refused the request; check the configuration",
                retryable=False,
            )
        self.failures += 1
        if self.failures > self.max_failures:
            return PollPlan(
                Step.GIVE_UP,
                code=UNREACHABLE,
                message=f"{self.failures} call{'s' if self.failures != 1 else ''} in a row "
                f"failed; last: {what}",
                retryable=True,
            )
        return PollPlan(Step.RETRY, self.backoff.next(), message=what)


class Offsets:
    """The long poll's positions.

    ``sent``: the offset of the last ``getUpdates`` sent; the platform has forgotten every
    update before it (an update is confirmed by a call with a higher offset).
    ``taken``: one past the last update handed to the inbox (or passed over: not a message).
    The next poll sends ``taken``, and only once the inbox has committed what it took, so
    the platform never forgets an update that is not stored.
    """

    __slots__ = ("sent", "taken")

    def __init__(self, start: int | None = None) -> None:
        self.sent: int | None = None
        """Unknown at start: a stored cursor may be ahead of what the platform was sent (a
        predecessor in this process took updates it never confirmed)."""
        self.taken: int | None = start

    def next_offset(self) -> int | None:
        """The offset for the next poll (after :meth:`committed`)."""
        return self.taken

    def is_new(self, update_id: int) -> bool:
        """False for an update this process already took (a poll with an older offset
        returns it again)."""
        return self.taken is None or update_id >= self.taken

    def take(self, update_id: int) -> None:
        self.taken = update_id + 1

    def polled(self, offset: int | None) -> None:
        if offset is not None:
            self.sent = offset

    def unconfirmed(self) -> bool:
        """Updates were taken that the platform still holds (no poll has confirmed them)."""
        return self.taken != self.sent


def command_for(text: str, username: str | None) -> str:
    """``/cmd@thisbot args`` becomes ``/cmd args``, so that a route's ``prefix = "/cmd"``
    matches a command addressed to this bot in a group. A command addressed to another
    bot (``/cmd@otherbot``) stays as it is, and matches no ``/cmd`` route."""
    if not username or not text.startswith("/"):
        return text
    end = len(text)
    for i, ch in enumerate(text):
        if ch.isspace():
            end = i
            break
    head = text[:end]
    cmd, at, bot = head.partition("@")
    if at and bot.lower() == username.lower():
        return cmd + text[end:]
    return text


def _ident(value: Any) -> str | None:
    if type(value) is int:
        return str(value)
    if isinstance(value, str) and value:
        return value
    return None


def parse_update(
    platform: str, update: Any, username: str | None
) -> tuple[int, InboundMessage | None, str | None]:
    """``(update_id, message or None, event id)`` for one update; ``ValueError`` without a
    usable ``update_id``. Updates that are not new messages (edits, member changes, ...)
    and messages without a chat give ``None``: they are confirmed, not handled."""
    if not isinstance(update, dict) or type(update.get("update_id")) is not int:
        raise ValueError(f"an update without an integer update_id: {str(update)[:200]}")
    update_id: int = update["update_id"]
    for field in MESSAGE_UPDATES:
        m = update.get(field)
        if m is not None:
            break
    else:
        return update_id, None, None
    if not isinstance(m, dict):
        return update_id, None, None
    chat = m.get("chat")
    message_id = _ident(m.get("message_id"))
    if not isinstance(chat, dict) or message_id is None:
        return update_id, None, None
    chat_id = _ident(chat.get("id"))
    kind = chat.get("type")
    if chat_id is None or kind not in CHAT_KINDS:
        return update_id, None, None
    author = m.get("from") if isinstance(m.get("from"), dict) else m.get("sender_chat")
    author_id = chat_id
    name: str | None = None
    if isinstance(author, dict):
        author_id = _ident(author.get("id")) or chat_id
        raw = author.get("username") or author.get("first_name") or author.get("title")
        name = raw if isinstance(raw, str) else None
    text: Any = m.get("text")
    if not isinstance(text, str):
        text = m.get("caption")
        if not isinstance(text, str):
            text = ""
    date = m.get("date")
    extra = {"update_id": str(update_id)}
    title = chat.get("title")
    if isinstance(title, str):
        extra["chat_title"] = title
    message = InboundMessage(
        platform=platform,
        message_id=message_id,
        chat_kind=kind,
        chat_id=chat_id,
        author_id=author_id,
        text=command_for(text, username),
        timestamp=datetime.fromtimestamp(date, UTC) if type(date) is int else None,
        author_name=name,
        event=field,
        extra=extra,
    )
    # Message ids are unique within a chat; update ids may restart at random after a week
    # without updates, so they are not a key that lasts.
    return update_id, message, f"{chat_id}:{message_id}"


def split_text(text: str, limit: int = TEXT_LIMIT) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters, cut at a line break where one
    falls in the second half of a piece, else at a space, else anywhere. Never empty."""
    if len(text) <= limit:
        return [text]
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        cut = rest.rfind("\n", limit // 2, limit + 1)
        if cut < 0:
            cut = rest.rfind(" ", limit // 2, limit + 1)
        if cut <= 0:
            cut = limit
            parts.append(rest[:cut])
            rest = rest[cut:]
        else:
            parts.append(rest[:cut])
            rest = rest[cut + 1 :]  # the line break or space itself goes
    if rest:
        parts.append(rest)
    return parts
