"""The Telegram adapter: the Bot API over long polling, a thin driver around :mod:`.protocol`.

One loop: ``getMe`` (the token works, and the bot's username for ``/cmd@bot``), then
``getUpdates`` with ``offset``, ``timeout`` and ``limit`` until closed. Every update that
carries a message is offered to the inbox with the cursor ``{"offset": update_id + 1}``;
the next poll, which confirms those updates to the platform, is sent only after
``inbound.committed()``. So a crash never loses an update: either it is stored, or the
platform still holds it and the next process (starting from the stored cursor) gets it
again, and the inbox runs nothing twice.

Proof of life is a ``getUpdates`` that returned, empty or not; the heartbeat TTL is
derived from the poll and request timeouts. While the inbox's commit takes long (a slow
or failing store), the loop keeps asking the platform with the offset it already sent
(which confirms nothing new): the platform proves it is alive, the store is not blamed on
it, and nothing unstored is confirmed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Annotated, Any

import httpx
from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from hermes.adapters.base import Adapter, AdapterSettings
from hermes.adapters.telegram.api import BotApi
from hermes.adapters.telegram.protocol import (
    REPEAT_POLL_HOLD,
    TEXT_LIMIT,
    UNREACHABLE,
    UPDATE_RETENTION,
    Backoff,
    Offsets,
    PollPolicy,
    Step,
    parse_update,
    split_text,
)
from hermes.errors import (
    SendError,
    TelegramApiError,
    TelegramMessageRejected,
    TelegramRateLimited,
)
from hermes.messages import OutboundMessage
from watchdog.heartbeat import PlatformHandle
from watchdog.settings import Duration, SecretValue
from watchdog.states import DeclaredState
from watchdog.tasks import describe_exception

PRODUCTION_API = "https://api.telegram.org"
UPDATE_TYPES = frozenset(
    {
        "message",
        "edited_message",
        "channel_post",
        "edited_channel_post",
        "business_connection",
        "business_message",
        "edited_business_message",
        "deleted_business_messages",
        "message_reaction",
        "message_reaction_count",
        "inline_query",
        "chosen_inline_result",
        "callback_query",
        "shipping_query",
        "pre_checkout_query",
        "purchased_paid_media",
        "poll",
        "poll_answer",
        "my_chat_member",
        "chat_member",
        "chat_join_request",
        "chat_boost",
        "removed_chat_boost",
    }
)


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


def _update_types(names: list[str]) -> list[str]:
    unknown = sorted(set(names) - UPDATE_TYPES)
    if unknown:
        raise ValueError(
            f"unknown update types {unknown} (known: {', '.join(sorted(UPDATE_TYPES))})"
        )
    return names


class TelegramSettings(AdapterSettings):
    token: SecretValue
    """The bot token from @BotFather, as a secret reference (it is part of every URL)."""
    api_base: Annotated[str, AfterValidator(_http_url)] = PRODUCTION_API
    """The Bot API server: a local telegram-bot-api server, or ``hermes simulate telegram``."""
    poll_timeout: Annotated[int, Field(ge=1, le=50)] = 25
    """``getUpdates``' long-poll ``timeout``, whole seconds (the server allows 0-50)."""
    poll_limit: Annotated[int, Field(ge=1, le=100)] = 100
    allowed_updates: Annotated[list[str], AfterValidator(_update_types)] = Field(
        default_factory=lambda: ["message", "channel_post"]
    )
    request_timeout: Duration = 10.0
    """Connect, write and read timeout of every call but ``getUpdates``' read."""
    poll_read_timeout: Duration | None = None
    """How long a ``getUpdates`` may take before it is cut off; longer than the poll, and
    than the server's 3 s hold of a repeated poll. Default: ``max(poll_timeout, 3) +
    request_timeout``."""
    reconnect_backoff: Duration = 1.0
    reconnect_backoff_max: Duration = 60.0
    reconnect_max_failures: Annotated[int, Field(ge=0)] = 10
    """Calls in a row that fail (5xx, network, timeouts) before ``tg_unreachable``."""
    conflict_max: Annotated[int, Field(ge=1)] = 3
    conflict_window: Duration = 300.0
    """This many 409 conflicts with another poller within the window: ``tg_conflict``."""
    delete_webhook: bool = False
    """A webhook set for the bot is deleted (else ``tg_webhook_active``, not retryable)."""
    send_attempts: Annotated[int, Field(ge=1, le=20)] = 4
    """Attempts for one message while rate limited (429) or hit by a server error."""
    send_retry_after_max: Duration = 30.0
    """A 429 asking for a longer wait fails the attempt; the outbox retries it later."""

    @field_validator("poll_read_timeout")
    @classmethod
    def _read_after_poll(cls, value: float | None, info: ValidationInfo) -> float | None:
        poll = info.data.get("poll_timeout")
        if value is not None and isinstance(poll, int) and value <= max(poll, REPEAT_POLL_HOLD):
            raise ValueError(
                f"must be longer than poll_timeout ({poll} s) and than the 3 s the server may "
                "hold a repeated poll, or every quiet poll is cut off"
            )
        return value

    @model_validator(mode="after")
    def _backoff_order(self) -> TelegramSettings:
        if self.reconnect_backoff > self.reconnect_backoff_max:
            raise ValueError("reconnect_backoff must not exceed reconnect_backoff_max")
        return self

    @property
    def read_timeout(self) -> float:
        if self.poll_read_timeout is not None:
            return self.poll_read_timeout
        return max(self.poll_timeout, REPEAT_POLL_HOLD) + self.request_timeout


class TelegramAdapter(Adapter):
    """A Telegram bot over ``getUpdates``."""

    kind = "telegram"
    Settings = TelegramSettings

    def __init__(self, name: str, settings: AdapterSettings, handle: PlatformHandle) -> None:
        super().__init__(name, settings, handle)
        assert isinstance(settings, TelegramSettings)
        self.s: TelegramSettings = settings
        self.policy = PollPolicy(
            Backoff(settings.reconnect_backoff, settings.reconnect_backoff_max),
            max_failures=settings.reconnect_max_failures,
            conflict_max=settings.conflict_max,
            conflict_window=settings.conflict_window,
            delete_webhook=settings.delete_webhook,
        )
        self.api: BotApi | None = None
        self.username: str | None = None
        self.offsets = Offsets()
        self.migrated: dict[str, str] = {}
        """Groups that became supergroups: old chat id -> new."""
        self.malformed = 0
        t = settings.request_timeout
        self._timeout = httpx.Timeout(t)
        self._poll_timeout = httpx.Timeout(t, read=settings.read_timeout)
        self._probe_timeout = httpx.Timeout(t, read=REPEAT_POLL_HOLD + t)

    @property
    def heartbeat_ttl(self) -> float:
        """Beats come with every returned poll: at most a poll's read timeout apart, plus a
        request timeout of slack (the inbox's commit, a probe while it takes long)."""
        return self.s.read_timeout + self.s.request_timeout

    # -- lifecycle

    async def run(self) -> None:
        self.handle.set_heartbeat_ttl(self.heartbeat_ttl)
        async with httpx.AsyncClient(headers={"User-Agent": "hermes-gateway"}) as http:
            self.api = BotApi(http, api_base=self.s.api_base, token=self.s.token)
            try:
                if await self._serve():
                    self.stopped()
            finally:
                self.api = None

    def give_up(self, code: str, message: str, *, retryable: bool) -> None:
        self.log.error("giving up: {}: {}", code, message)
        self.handle.fatal(code, message, retryable=retryable)

    async def _until(self, event: Awaitable[Any]) -> bool:
        """Wait for ``event`` or for :meth:`close`, whichever is first; True if closing."""
        waiting = asyncio.ensure_future(event)
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({waiting, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
            closing.cancel()
            if waiting.done() and not waiting.cancelled():
                waiting.exception()  # retrieved here; the caller reads the result
        return self.closing()

    async def _call(self, method: str, params: dict[str, Any], limits: httpx.Timeout) -> Any:
        """One call, or None once closing (``TelegramApiError`` as it comes)."""
        assert self.api is not None
        call = asyncio.ensure_future(self.api.call(method, params, limits=limits))
        if await self._until(call):
            return None
        return call.result()

    # -- the loop

    def _start_offset(self) -> None:
        """Continue from the inbox's cursor: the next process gets what a dead one never
        stored, because its offset was never sent."""
        found = self.inbound.cursor()
        if found is None:
            return
        cursor, saved_at = found
        offset = cursor.get("offset")
        if type(offset) is not int:
            return
        self.offsets = Offsets(offset)
        if saved_at is not None:
            age = (datetime.now(UTC) - saved_at).total_seconds()
            if age > UPDATE_RETENTION:
                self.inbound.gap(
                    f"offset {offset} stored {age / 3600:.0f} h ago: the platform keeps "
                    "updates at most 24 h, so any older ones are gone"
                )
        self.log.info("continuing from stored offset {}", offset)

    async def _serve(self) -> bool:
        """The receive loop; True once closed, False after giving up."""
        self._start_offset()
        me = await self._until_ok("getMe", {}, self._timeout)
        if me is None:
            return self.closing()
        self.username = me.get("username") if isinstance(me, dict) else None
        self.log.info("bot @{} ready; polling every {} s", self.username, self.s.poll_timeout)
        # A restarted instance may find events taken by its predecessor in this process
        # still on their way to the store: confirm nothing before they are stored.
        if await self._until_committed():
            return self.closing()
        stuck = 0  # polls in a row that made no progress: only updates without an update_id
        while not self.closing():
            offset = self.offsets.next_offset()
            params: dict[str, Any] = {
                "timeout": self.s.poll_timeout,
                "limit": self.s.poll_limit,
                "allowed_updates": self.s.allowed_updates,
            }
            if offset is not None:
                params["offset"] = offset
            updates = await self._until_ok("getUpdates", params, self._poll_timeout)
            if updates is None:
                return self.closing()
            self.offsets.polled(offset)
            malformed, taken = self.malformed, self.offsets.taken
            if not await self._take(updates):
                return self.closing()
            if self.malformed > malformed and self.offsets.taken == taken:
                # Nothing to confirm them with: the same answer would come back at once.
                stuck += 1
                if stuck > self.s.reconnect_max_failures:
                    self.give_up(
                        UNREACHABLE,
                        f"{stuck} polls in a row answered only updates without an update_id",
                        retryable=True,
                    )
                    return False
                delay = min(
                    self.s.reconnect_backoff * 2 ** (stuck - 1), self.s.reconnect_backoff_max
                )
                if await self.pause(delay):
                    return True
            else:
                stuck = 0
        return True

    async def _until_ok(
        self, method: str, params: dict[str, Any], limits: httpx.Timeout
    ) -> Any | None:
        """Call until it succeeds, following :class:`PollPolicy`; None if closing or given up."""
        while not self.closing():
            try:
                result = await self._call(method, params, limits)
            except TelegramApiError as exc:
                plan = self.policy.after(exc, time.monotonic())
                if plan.step is Step.GIVE_UP:
                    self.give_up(plan.code, plan.message, retryable=plan.retryable)
                    return None
                if plan.step is Step.DELETE_WEBHOOK:
                    self.log.warning(
                        "{}; deleting the webhook (delete_webhook = true)", plan.message
                    )
                    try:
                        await self._call("deleteWebhook", {}, self._timeout)
                    except TelegramApiError as err:
                        self.log.warning("deleteWebhook failed: {}", err)
                    continue
                self.handle.declare(DeclaredState.RECONNECTING)
                self.log.warning("{}; again in {:.1f} s", plan.message, plan.delay)
                if await self.pause(plan.delay):
                    return None
                continue
            if self.closing():
                return None
            if method == "getUpdates":
                self.handle.beat()  # a poll that returned, empty or not: proof of life
                self.handle.declare(DeclaredState.CONNECTED)
                if not isinstance(result, list):
                    result = []
            self.policy.succeeded()
            return result if result is not None else {}
        return None

    async def _take(self, updates: list[Any]) -> bool:
        """Offer what one poll returned to the inbox and wait for the commit; False if
        closing or given up meanwhile."""
        taken_before = self.offsets.taken
        cursor_at: int | None = None  # the offset of the last cursor given with this batch
        refused = False
        for update in updates:
            try:
                update_id, message, event_id = parse_update(self.name, update, self.username)
            except ValueError as exc:
                self.malformed += 1
                self.log.error("ignoring a malformed update: {}", exc)
                continue
            if not self.offsets.is_new(update_id):
                continue
            if message is not None:
                if not self.inbound.offer(message, {"offset": update_id + 1}, event_id):
                    # Not taken: the platform keeps it (its offset is not sent). The gateway
                    # holds the platform meanwhile (inbox_full).
                    refused = True
                    break
                cursor_at = update_id + 1
            self.offsets.take(update_id)  # a message, or passed over (not one)
        if self.offsets.taken not in (taken_before, cursor_at):
            # Passed-over updates at the end: their offset is stored too.
            assert self.offsets.taken is not None
            self.inbound.note_cursor({"offset": self.offsets.taken})
        if refused:
            self.log.warning(
                "inbox full: updates from {} left with the platform", self.offsets.taken
            )
            if await self._until(self.inbound.room()):
                return False
        return not await self._until_committed()

    async def _until_committed(self) -> bool:
        """Wait until the inbox has stored what it took; True if closing or given up (a probe
        refused). While the store
        is slow, probe the platform with the offset already sent (it confirms nothing new):
        a platform that answers is alive, and the silence is the store's, not its own."""
        committed = asyncio.ensure_future(self.inbound.committed())
        try:
            while True:
                if await self._until(asyncio.wait({committed}, timeout=self.s.poll_timeout)):
                    return True
                if committed.done():
                    return False
                params: dict[str, Any] = {"timeout": 0, "limit": 1}
                if self.offsets.sent is not None:
                    params["offset"] = self.offsets.sent
                self.log.info("the inbox's commit takes long; probing the platform meanwhile")
                if await self._until_ok("getUpdates", params, self._probe_timeout) is None:
                    return True
        finally:
            committed.cancel()

    # -- outbound

    async def send(self, message: OutboundMessage) -> dict[str, Any]:
        """``sendMessage``, as a reply (``reply_parameters``) when ``reply_to`` is set; text
        over 4,096 characters goes as several messages, the first one the reply."""
        if self.api is None:
            raise SendError(f"{self.name}: not running")
        chat = self.migrated.get(message.chat_id, message.chat_id)
        first: Any = None
        for i, part in enumerate(split_text(message.text, TEXT_LIMIT)):
            params: dict[str, Any] = {"chat_id": _chat_ref(chat), "text": part}
            if i == 0 and message.reply_to and message.reply_to.isdigit():
                params["reply_parameters"] = {
                    "message_id": int(message.reply_to),
                    "allow_sending_without_reply": True,
                }
            result, chat = await self._send_one(params, message.chat_id, chat)
            first = first if first is not None else result
        pid = first.get("message_id") if isinstance(first, dict) else None
        return {"id": str(pid)} if pid is not None else {}

    async def _send_one(self, params: dict[str, Any], original: str, chat: str) -> tuple[Any, str]:
        assert self.api is not None
        for attempt in range(1, self.s.send_attempts + 1):
            try:
                return await self.api.call("sendMessage", params, limits=self._timeout), chat
            except TelegramApiError as exc:
                if exc.migrate_to_chat_id is not None:
                    chat = str(exc.migrate_to_chat_id)
                    self.migrated[original] = chat
                    params["chat_id"] = exc.migrate_to_chat_id
                    self.log.warning("chat {} became supergroup {}: sending there", original, chat)
                    continue
                last = attempt == self.s.send_attempts
                if exc.status == 429:
                    wait = exc.retry_after or 1.0
                    if last or wait > self.s.send_retry_after_max:
                        raise TelegramRateLimited(
                            f"still rate limited: {exc}",
                            method=exc.method,
                            status=429,
                            description=exc.description,
                            retry_after=exc.retry_after,
                        ) from None
                    self.log.warning("sendMessage rate limited; retry in {:g} s", wait)
                    await asyncio.sleep(wait)
                    continue
                if exc.status in (400, 403):
                    raise TelegramMessageRejected(
                        str(exc), method=exc.method, status=exc.status, description=exc.description
                    ) from None
                if last or (exc.status != 0 and exc.status < 500):
                    raise
                self.log.warning(
                    "sendMessage failed ({}); retry {} in {:g} s",
                    describe_exception(exc),
                    attempt,
                    self.s.reconnect_backoff,
                )
                await asyncio.sleep(self.s.reconnect_backoff)
        raise SendError("sendMessage: chat migrated more than once in a row")


def _chat_ref(chat: str) -> int | str:
    return int(chat) if chat.lstrip("-").isdigit() else chat
