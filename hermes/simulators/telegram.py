"""A local stand-in for the Telegram Bot API on 127.0.0.1: ``/bot<token>/<method>``.

Where the Bot API documentation (https://core.telegram.org/bots/api) is silent, it does
what the open-source Bot API server does (tdlib/telegram-bot-api,
``telegram-bot-api/Client.cpp``), which is the reference for its error texts and its
``getUpdates`` rules:

- Answers are ``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code": N,
  "description": "...", "parameters": {"retry_after": N} | {"migrate_to_chat_id": N}}``.
  A well-formed but unknown or revoked token: 401 ``Unauthorized``; a malformed one: 404
  ``Not Found``; an unknown method: 404 ``Not Found: method not found``.
- ``getUpdates``: ``offset`` confirms every update before it (they are forgotten), a
  negative one keeps only the last ``-offset``; ``limit`` is clamped to 1-100, ``timeout``
  to 0-50. ``allowed_updates`` is kept for later calls and applies to updates created
  after it. A call with the same offset as the previous one within 3 s is held at least 3 s
  (``timeout`` raised to 3), within 0.5 s it gets at most one update. A call that finds
  nothing and has a timeout waits; a new waiting call ends the older one with 409
  ``Conflict: terminated by other getUpdates request; make sure that only one bot
  instance is running`` (one conflict answer per ``conflict_pacing`` seconds, 3 on the
  server; later ones are answered that much later). While a webhook is set: 409
  ``Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to
  delete the webhook first``; setting one ends a waiting poll with 409 ``Conflict:
  terminated by setWebhook request``. Updates are kept until confirmed.
- ``sendMessage``: text of 1-4096 characters (``Bad Request: message text is empty``,
  ``Bad Request: message is too long``), ``reply_parameters`` (or the older
  ``reply_to_message_id``; ``Bad Request: message to be replied not found`` unless
  ``allow_sending_without_reply``), ``Bad Request: chat not found``, ``Forbidden: bot was
  blocked by the user``, and a group migrated to a supergroup: 400 ``Bad Request: group
  chat was upgraded to a supergroup chat`` with ``parameters.migrate_to_chat_id``.
- ``getMe``, ``setWebhook``, ``deleteWebhook`` (``drop_pending_updates``),
  ``getWebhookInfo``. Parameters come as a query string, a JSON body, a form, or
  multipart form data, as client libraries send them.

Controls (methods of :class:`TelegramSimulator`), for tests, benchmarks and ``hermes
simulate telegram``: :meth:`~TelegramSimulator.message` and
:meth:`~TelegramSimulator.burst` inject updates (private, group, supergroup, channel);
faults: :meth:`~TelegramSimulator.revoke` (401), :meth:`~TelegramSimulator.compete` (a
second poller on the same token: 409s), :meth:`~TelegramSimulator.fail_next` (any status
with ``retry_after``, such as 429 or 502, or an answer that never comes, or a dropped
connection), ``hang_polls`` (every ``getUpdates`` is read and never answered),
``stall`` (connections are accepted and nothing is read from them),
:meth:`~TelegramSimulator.block` (403), :meth:`~TelegramSimulator.migrate` (a group
upgraded to a supergroup), and :meth:`~TelegramSimulator.after_delivered` (run a hook,
such as SIGKILL of the bot, once the k-th update of a burst went out). It counts what it
sent and which replies it accepted (:meth:`~TelegramSimulator.reply_census`), so tests
count losses and repeats from the platform's side.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import h11
import orjson

from hermes.simulators.base import Observed, read_request, sigkill

DEFAULT_TOKEN = "123456789:SIMULATOR-aaaaaaaaaaaaaaaaaaaaaaaaaaa"
MAX_TIMEOUT = 50
TEXT_LIMIT = 4096
CONFLICT_PACING = 3.0
REPEAT_HOLD = 3.0
LONG_POLL_WAIT_AFTER = 0.001
"""After an update wakes a waiting poll, the server waits this long for more (1 ms)."""

CONFLICT_POLLER = (
    "Conflict: terminated by other getUpdates request; make sure that only one bot instance "
    "is running"
)
CONFLICT_WEBHOOK = (
    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to "
    "delete the webhook first"
)
CONFLICT_SET_WEBHOOK = "Conflict: terminated by setWebhook request"
PATH = re.compile(r"^/bot([^/]*)/([A-Za-z0-9_]+)$")
TOKEN = re.compile(r"^\d+:[A-Za-z0-9_-]+$")
CHAT_KINDS = ("private", "group", "supergroup", "channel")


class _Hang(Exception):
    """Raised inside a request whose answer never comes."""


@dataclass
class Fault:
    """A scripted answer for one call: an error, no answer at all, or a dropped connection."""

    status: int = 500
    description: str = ""
    parameters: dict[str, Any] | None = None
    hang: bool = False
    drop: bool = False


@dataclass
class Chat:
    id: int
    type: str
    title: str
    next_message_id: int = 1
    messages: set[int] = field(default_factory=set)

    def as_json(self) -> dict[str, Any]:
        if self.type == "private":
            return {
                "id": self.id,
                "first_name": self.title,
                "username": f"user{self.id}",
                "type": "private",
            }
        return {"id": self.id, "title": self.title, "type": self.type}


@dataclass
class SentMessage:
    """One ``sendMessage`` call as the platform saw it."""

    chat_id: Any
    text: str
    reply_to: int | None
    status: int
    description: str
    at: float


@dataclass
class PollRecord:
    at: float
    offset: int
    limit: int
    timeout: int
    outcome: str
    """``N updates``, or the error: ``conflict``, ``webhook``, ``unauthorized``, a fault."""


@dataclass(frozen=True)
class ReplyCensus:
    messages: int
    unanswered: list[tuple[int, int]]
    repeated: dict[tuple[int, int], int]

    @property
    def exactly_once(self) -> bool:
        return not self.unanswered and not self.repeated


@dataclass
class _Waiter:
    future: asyncio.Future[str]
    competitor: bool = False


class TelegramSimulator(Observed):
    """See the module docstring. ``async with TelegramSimulator() as sim:``."""

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        username: str = "hermes_sim_bot",
        host: str = "127.0.0.1",
        port: int = 0,
        conflict_pacing: float = CONFLICT_PACING,
        repeat_hold: float = REPEAT_HOLD,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.token = token
        self.username = username
        self.bot_id = int(token.split(":")[0]) if ":" in token else 1
        self.host = host
        self.port = port
        self.conflict_pacing = conflict_pacing
        self.repeat_hold = repeat_hold
        self.clock = clock
        # The platform's state.
        self.queue: deque[tuple[int, str, bytes]] = deque()
        """Unconfirmed updates: (update_id, type, JSON)."""
        self.next_update_id = 100_000_001
        self.allowed_updates: set[str] | None = None
        self.webhook_url = ""
        self.chats: dict[int, Chat] = {}
        self.blocked: set[int] = set()
        self.migrated: dict[int, int] = {}
        self.revoked = False
        self.hang_polls = False
        """Every getUpdates is read and never answered."""
        self.stall = False
        """Connections are accepted and no request is read from them."""
        self.faults: dict[str, deque[Fault]] = {}
        # What the bot did.
        self.calls: Counter[str] = Counter()
        self.polls: list[PollRecord] = []
        self.sent: list[SentMessage] = []
        self.replies: Counter[tuple[int, int]] = Counter()
        """Accepted replies per (chat id, message id replied to)."""
        self.delivered: Counter[int] = Counter()
        """Times each update id went out in a getUpdates answer."""
        self.confirmed_through = 0
        self.filtered = 0
        """Updates not created because ``allowed_updates`` excluded their type."""
        self.stolen = 0
        """Updates the competing poller (:meth:`compete`) got instead of the bot."""
        self._burst: dict[int, int] = {}
        """update id -> its position in its burst (1-based), for after_delivered."""
        self._burst_out = 0
        self._after: list[tuple[int, Callable[[], object]]] = []
        self._waiter: _Waiter | None = None
        self._prev_offset: int | None = None
        self._prev_start = -1e9
        self._next_conflict = -1e9
        self._arrived = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._competitor: asyncio.Task[None] | None = None
        self._released = asyncio.Event()
        """Set at stop: requests held forever (hang, stall) end."""
        self._writers: set[asyncio.StreamWriter] = set()

    # -- lifecycle

    async def __aenter__(self) -> TelegramSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.stop_competing()
        if self._server is not None:
            self._server.close()
            # Ended, not cancelled: a handler cancelled while reading upsets asyncio's streams.
            self._released.set()
            self._terminate("stopping")
            for writer in list(self._writers):
                writer.transport.abort()
            if self._handlers:
                await asyncio.wait(set(self._handlers), timeout=2)
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    @property
    def waiting(self) -> bool:
        """A getUpdates is waiting for updates (a long poll under way)."""
        return self._waiter is not None

    @property
    def api_base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def adapter_settings(self, **overrides: Any) -> dict[str, Any]:
        """Settings for a ``telegram`` platform pointed here (give ``token`` as a reference)."""
        return {"api_base": self.api_base, **overrides}

    # -- waiting for the bot

    # -- injecting updates

    def chat(self, kind: str, chat_id: int | None = None, title: str | None = None) -> Chat:
        """The chat of ``kind`` with ``chat_id`` (made up when None), created on first use."""
        if kind not in CHAT_KINDS:
            raise ValueError(f"chat kind must be one of {', '.join(CHAT_KINDS)}, got {kind!r}")
        if chat_id is None:
            chat_id = {
                "private": 500_000_001,
                "group": -400_000_001,
                "supergroup": -1_001_000_000_001,
                "channel": -1_002_000_000_001,
            }[kind]
        found = self.chats.get(chat_id)
        if found is None:
            found = Chat(chat_id, kind, title or f"{kind} {abs(chat_id)}")
            self.chats[chat_id] = found
        return found

    def message(
        self,
        kind: str = "private",
        text: str = "hello",
        *,
        chat_id: int | None = None,
        user_id: int = 500_000_001,
    ) -> tuple[int, int]:
        """A new message update in a chat of ``kind``; returns (chat id, message id)."""
        chat = self.chat(
            kind, chat_id if chat_id is not None else (user_id if kind == "private" else None)
        )
        message_id = chat.next_message_id
        chat.next_message_id += 1
        chat.messages.add(message_id)
        m: dict[str, Any] = {"message_id": message_id}
        if kind == "channel":
            m["sender_chat"] = chat.as_json()
            field_name = "channel_post"
        else:
            m["from"] = {
                "id": user_id,
                "is_bot": False,
                "first_name": "Sim",
                "username": f"user{user_id}",
                "language_code": "en",
            }
            field_name = "message"
        m["chat"] = chat.as_json()
        m["date"] = int(time.time())
        m["text"] = text
        if text.startswith("/"):
            end = next((i for i, c in enumerate(text) if c.isspace()), len(text))
            m["entities"] = [{"offset": 0, "length": end, "type": "bot_command"}]
        self._push(field_name, m)
        return chat.id, message_id

    def _push(self, kind: str, payload: dict[str, Any]) -> int | None:
        if self.allowed_updates is not None and kind not in self.allowed_updates:
            self.filtered += 1
            return None
        update_id = self.next_update_id
        self.next_update_id += 1
        self.queue.append((update_id, kind, orjson.dumps({"update_id": update_id, kind: payload})))
        self._arrived.set()
        if self._waiter is not None and not self._waiter.future.done():
            self._waiter.future.set_result("wake")
        return update_id

    def raw_update(self, blob: bytes) -> int:
        """An update sent exactly as given, broken ones too (no ``update_id``, ...); it is
        queued under the next id, which it may not carry."""
        update_id = self.next_update_id
        self.next_update_id += 1
        self.queue.append((update_id, "raw", blob))
        if self._waiter is not None and not self._waiter.future.done():
            self._waiter.future.set_result("wake")
        return update_id

    def update(self, kind: str, payload: dict[str, Any]) -> int | None:
        """Any other update (``edited_message``, ``my_chat_member``, ...); its id."""
        return self._push(kind, payload)

    def burst(
        self, n: int, kind: str = "group", *, chats: int = 1, text: str = "burst"
    ) -> list[tuple[int, int]]:
        """``n`` messages at once, spread over ``chats`` chats of ``kind``."""
        base = self.chat(kind).id
        ids = []
        for i in range(n):
            cid = base - (i % chats) if kind != "private" else base + (i % chats)
            first = self.next_update_id
            ids.append(
                self.message(kind, f"{text} {i + 1}", chat_id=cid, user_id=500_000_001 + i % 97)
            )
            if self.next_update_id > first:
                self._burst[first] = i + 1
        return ids

    def after_delivered(self, k: int, callback: Callable[[], object]) -> None:
        """Run ``callback`` right after the answer that carries the k-th burst update (the
        k-th since the simulator started) was written."""
        self._after.append((k, callback))

    # -- faults

    def fail_next(
        self,
        method: str,
        count: int = 1,
        *,
        status: int = 500,
        description: str = "",
        retry_after: int | None = None,
        migrate_to_chat_id: int | None = None,
        hang: bool = False,
        drop: bool = False,
    ) -> None:
        """The next ``count`` calls of ``method`` fail: ``status`` with the server's text for
        it, or no answer at all (``hang``), or a connection closed (``drop``)."""
        params: dict[str, Any] | None = None
        if retry_after is not None:
            params = {"retry_after": retry_after}
            description = description or f"Too Many Requests: retry after {retry_after}"
        if migrate_to_chat_id is not None:
            params = {"migrate_to_chat_id": migrate_to_chat_id}
        text = description or {
            400: "Bad Request",
            401: "Unauthorized",
            403: "Forbidden",
            404: "Not Found",
            409: CONFLICT_POLLER,
            500: "Internal Server Error",
            502: "Bad Gateway",
        }.get(status, f"Error {status}")
        for _ in range(count):
            self.faults.setdefault(method.lower(), deque()).append(
                Fault(status, text, params, hang, drop)
            )

    def revoke(self) -> None:
        """The token is revoked (@BotFather): every call answers 401 Unauthorized."""
        self.revoked = True

    def block(self, chat_id: int) -> None:
        """The user blocked the bot: sendMessage there answers 403."""
        self.blocked.add(chat_id)

    def migrate(self, chat_id: int) -> int:
        """The group became a supergroup; returns its new id."""
        old = self.chats[chat_id]
        new_id = int(f"-100{abs(chat_id)}")
        self.migrated[chat_id] = new_id
        new = self.chat("supergroup", new_id, old.title)
        new.messages |= old.messages
        new.next_message_id = old.next_message_id
        return new_id

    def set_webhook(self, url: str) -> None:
        self.webhook_url = url
        if url:
            self._terminate(CONFLICT_SET_WEBHOOK)

    def compete(self) -> None:
        """Another process polls with this token from now on (until :meth:`stop_competing`)."""
        if self._competitor is None:
            self._competitor = asyncio.get_running_loop().create_task(
                self._compete(), name="telegram-simulator:competitor"
            )

    def stop_competing(self) -> None:
        if self._competitor is not None:
            self._competitor.cancel()
            self._competitor = None

    async def _compete(self) -> None:
        """A poller as another instance would run it: it confirms (takes) what it gets."""
        offset = 0
        while True:
            status, body, _ = await self._get_updates(
                {"timeout": MAX_TIMEOUT, "offset": offset}, competitor=True
            )
            if status != 200:
                await asyncio.sleep(0.05)
                continue
            for update in orjson.loads(body)["result"]:
                offset = max(offset, update["update_id"] + 1)
                self.stolen += 1

    # -- the HTTP side

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                if self.stall:
                    await self._released.wait()
                    return
                request, body = await read_request(conn, reader)
                if request is None:
                    return
                try:
                    status, payload, after = await self._route(request, body)
                except _Hang:
                    await self._released.wait()
                    return
                if status < 0:
                    return  # a dropped connection
                headers = [
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(payload))),
                ]
                writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
                writer.write(conn.send(h11.Data(data=payload)) or b"")
                writer.write(conn.send(h11.EndOfMessage()) or b"")
                await writer.drain()
                for callback in after:
                    result = callback()
                    if asyncio.iscoroutine(result):
                        await result
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.RemoteProtocolError, asyncio.IncompleteReadError):
            return
        finally:
            self._handlers.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _route(
        self, request: h11.Request, body: bytes
    ) -> tuple[int, bytes, list[Callable[[], object]]]:
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        m = PATH.match(path)
        if m is None or not TOKEN.match(m[1]):
            return _error(404, "Not Found")
        token, method = m[1], m[2].lower()
        if token != self.token or self.revoked:
            self.calls["unauthorized"] += 1
            if method == "getupdates":
                self.polls.append(PollRecord(self.clock(), 0, 0, 0, "unauthorized"))
            await self._notify()
            return _error(401, "Unauthorized")
        self.calls[method] += 1
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in request.headers}
        try:
            params = parse_params(query, headers.get("content-type", ""), body)
        except ValueError as exc:
            return _error(400, f"Bad Request: {exc}")
        faults = self.faults.get(method)
        if faults:
            fault = faults.popleft()
            if method == "getupdates":
                self.polls.append(PollRecord(self.clock(), 0, 0, 0, f"fault {fault.status}"))
            await self._notify()
            if fault.hang:
                raise _Hang
            if fault.drop:
                return -1, b"", []
            return _error(fault.status, fault.description, fault.parameters)
        if method == "getupdates":
            if self.hang_polls:
                self.polls.append(PollRecord(self.clock(), 0, 0, 0, "hung"))
                await self._notify()
                raise _Hang
            answer = await self._get_updates(params)
        elif method == "getme":
            answer = 200, _ok(self.me()), []
        elif method == "sendmessage":
            answer = self._send_message(params)
        elif method in ("setwebhook", "deletewebhook"):
            answer = self._set_webhook(method, params)
        elif method == "getwebhookinfo":
            info = {
                "url": self.webhook_url,
                "has_custom_certificate": False,
                "pending_update_count": len(self.queue),
            }
            answer = 200, _ok(info), []
        else:
            answer = _error(404, "Not Found: method not found")
        await self._notify()
        return answer

    def me(self) -> dict[str, Any]:
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": "Hermes Simulator",
            "username": self.username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    # -- getUpdates

    def _terminate(self, description: str) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.future.done():
            waiter.future.set_result(description)
        self._waiter = None

    async def _get_updates(
        self, params: dict[str, Any], *, competitor: bool = False
    ) -> tuple[int, bytes, list[Callable[[], object]]]:
        if self.webhook_url:
            self.polls.append(PollRecord(self.clock(), 0, 0, 0, "webhook"))
            return _error(409, CONFLICT_WEBHOOK)
        offset = _int(params.get("offset"), 0)
        limit = min(max(_int(params.get("limit"), 100), 1), 100)
        timeout = min(max(_int(params.get("timeout"), 0), 0), MAX_TIMEOUT)
        allowed = params.get("allowed_updates")
        if isinstance(allowed, str):
            allowed = json.loads(allowed) if allowed else None
        if isinstance(allowed, list):
            self.allowed_updates = {str(a) for a in allowed} or None
        now = self.clock()
        if not competitor and self.repeat_hold:
            # The server's throttle of a poll repeated with the same offset (0: turned off).
            if (
                offset == self._prev_offset
                and timeout < self.repeat_hold
                and now < self._prev_start + self.repeat_hold
            ):
                timeout = math.ceil(self.repeat_hold)
            if offset == self._prev_offset and now < self._prev_start + 0.5:
                limit = 1
            self._prev_offset, self._prev_start = offset, now
        record = PollRecord(now, offset, limit, timeout, "")
        if not competitor:
            self.polls.append(record)
        self._confirm(offset)
        batch = self._take(offset, limit)
        if not batch and timeout > 0:
            self._terminate(CONFLICT_POLLER)
            waiter = _Waiter(asyncio.get_running_loop().create_future(), competitor)
            self._waiter = waiter
            await self._notify()
            try:
                outcome = await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
            except TimeoutError:
                outcome = "timeout"
            finally:
                if self._waiter is waiter:
                    self._waiter = None
            if outcome not in ("wake", "timeout"):
                # Ended by another poll or a webhook: one such answer per pacing interval.
                now = self.clock()
                if now < self._next_conflict:
                    await asyncio.sleep(self.conflict_pacing)
                else:
                    self._next_conflict = now + self.conflict_pacing
                record.outcome = "conflict"
                return _error(409, outcome)
            if outcome == "wake":
                await asyncio.sleep(LONG_POLL_WAIT_AFTER)
            batch = self._take(offset, limit)
        record.outcome = f"{len(batch)} updates"
        after: list[Callable[[], object]] = []
        for update_id, _, _ in batch:
            first = self.delivered[update_id] == 0
            self.delivered[update_id] += 1
            if first and update_id in self._burst:
                self._burst_out += 1
                for k, callback in self._after:
                    if k == self._burst_out:
                        after.append(callback)
        body = b'{"ok":true,"result":[' + b",".join(b for _, _, b in batch) + b"]}"
        return 200, body, after

    def _confirm(self, offset: int) -> None:
        q = self.queue
        if offset < 0:
            while len(q) > -offset:
                self.confirmed_through = q.popleft()[0]
        elif offset > 0:
            while q and q[0][0] < offset:
                self.confirmed_through = q.popleft()[0]

    def _take(self, offset: int, limit: int) -> list[tuple[int, str, bytes]]:
        batch = []
        for item in self.queue:
            if item[0] >= offset:
                batch.append(item)
                if len(batch) >= limit:
                    break
        return batch

    # -- sendMessage and webhooks

    def _send_message(self, p: dict[str, Any]) -> tuple[int, bytes, list[Callable[[], object]]]:
        chat_id = _int(p.get("chat_id"), None)
        text = p.get("text")
        text = text if isinstance(text, str) else ""
        reply = p.get("reply_parameters")
        if isinstance(reply, str):
            try:
                reply = json.loads(reply)
            except ValueError:
                return self._record(
                    chat_id,
                    text,
                    None,
                    400,
                    "Bad Request: can't parse reply parameters JSON object",
                )
        reply_to = _int(reply.get("message_id"), None) if isinstance(reply, dict) else None
        allow = bool(reply.get("allow_sending_without_reply")) if isinstance(reply, dict) else False
        if reply_to is None:
            reply_to = _int(p.get("reply_to_message_id"), None)
        if not text.strip():
            return self._record(chat_id, text, reply_to, 400, "Bad Request: message text is empty")
        if len(text) > TEXT_LIMIT:
            return self._record(chat_id, text, reply_to, 400, "Bad Request: message is too long")
        if chat_id in self.migrated:
            return self._record(
                chat_id,
                text,
                reply_to,
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                {"migrate_to_chat_id": self.migrated[chat_id]},
            )
        if chat_id in self.blocked:
            return self._record(
                chat_id, text, reply_to, 403, "Forbidden: bot was blocked by the user"
            )
        chat = self.chats.get(chat_id) if chat_id is not None else None
        if chat is None:
            return self._record(chat_id, text, reply_to, 400, "Bad Request: chat not found")
        if reply_to is not None and reply_to not in chat.messages and not allow:
            return self._record(
                chat_id, text, reply_to, 400, "Bad Request: message to be replied not found"
            )
        message_id = chat.next_message_id
        chat.next_message_id += 1
        chat.messages.add(message_id)
        self._record(chat_id, text, reply_to, 200, "")
        if reply_to is not None:
            original = next((old for old, new in self.migrated.items() if new == chat.id), chat.id)
            self.replies[(chat.id, reply_to)] += 1
            if original != chat.id:
                self.replies[(original, reply_to)] += 1
        if self.observer is not None and not self._burst:
            self.observer(f"message to {chat.type} {chat.id}: {text[:80]!r}")
        result = {
            "message_id": message_id,
            "from": {
                "id": self.bot_id,
                "is_bot": True,
                "first_name": "Hermes Simulator",
                "username": self.username,
            },
            "chat": chat.as_json(),
            "date": int(time.time()),
            "text": text,
        }
        return 200, _ok(result), []

    def _record(
        self,
        chat_id: Any,
        text: str,
        reply_to: int | None,
        status: int,
        description: str,
        parameters: dict[str, Any] | None = None,
    ) -> tuple[int, bytes, list[Callable[[], object]]]:
        self.sent.append(SentMessage(chat_id, text, reply_to, status, description, self.clock()))
        return _error(status, description, parameters) if status != 200 else (200, b"", [])

    def _set_webhook(
        self, method: str, p: dict[str, Any]
    ) -> tuple[int, bytes, list[Callable[[], object]]]:
        url = str(p.get("url") or "") if method == "setwebhook" else ""
        if str(p.get("drop_pending_updates", "")).lower() in ("true", "1"):
            self.queue.clear()
        was = self.webhook_url
        self.set_webhook(url)
        if url:
            text = "Webhook was set" if url != was else "Webhook is already set"
        else:
            text = "Webhook was deleted" if was else "Webhook is already deleted"
        return 200, orjson.dumps({"ok": True, "result": True, "description": text}), []

    # -- counting

    def replies_to(self, chat_id: int, message_id: int) -> int:
        return self.replies[(chat_id, message_id)]

    def reply_census(self, ids: Iterable[tuple[int, int]]) -> ReplyCensus:
        ids = list(ids)
        unanswered = [i for i in ids if self.replies[i] == 0]
        repeated = {i: self.replies[i] for i in ids if self.replies[i] > 1}
        return ReplyCensus(len(ids), unanswered, repeated)


def _ok(result: Any) -> bytes:
    return orjson.dumps({"ok": True, "result": result})


def _error(
    status: int, description: str, parameters: dict[str, Any] | None = None
) -> tuple[int, bytes, list[Callable[[], object]]]:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return status, orjson.dumps(body), []


def _int(value: Any, default: Any) -> Any:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return default
    return default


def parse_params(query: str, content_type: str, body: bytes) -> dict[str, Any]:
    """A call's parameters from the query string and the body: JSON, a form, or multipart
    form data (values of complex types arrive there as JSON text)."""
    params: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
    kind = content_type.split(";")[0].strip().lower()
    if not body:
        return params
    if kind == "application/json":
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        params.update(data)
    elif kind == "application/x-www-form-urlencoded":
        params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    elif kind == "multipart/form-data":
        m = re.search(r'boundary="?([^";]+)"?', content_type)
        if m is None:
            raise ValueError("multipart without a boundary")
        for part in body.split(b"--" + m[1].encode())[1:]:
            if part.startswith(b"--"):
                break
            head, _, value = part.partition(b"\r\n\r\n")
            name = re.search(rb'name="([^"]*)"', head)
            if name is not None:
                params[name[1].decode()] = value.removesuffix(b"\r\n").decode("utf-8", "replace")
    return params


# -- the command line's script


@dataclass
class Script:
    """What ``hermes simulate telegram`` does besides serving."""

    message_every: float = 0.0
    message_kind: str = "private"
    messages: int = 0
    burst: int = 0
    burst_kind: str = "group"
    kill_pid: int = 0
    kill_pid_file: str = ""
    kill_after: int = 0
    revoke_after: float = 0.0
    hang_after: float = 0.0
    compete_after: float = 0.0

    def problems(self) -> list[str]:
        out = []
        if (self.kill_pid or self.kill_pid_file) and not (self.burst and self.kill_after):
            out.append("--kill-pid/--kill-pid-file need --burst and --kill-after")
        if self.kill_after and self.kill_after > self.burst:
            out.append(f"--kill-after {self.kill_after} is beyond --burst {self.burst}")
        return out


async def run_script(sim: TelegramSimulator, script: Script, say: Callable[[str], None]) -> None:
    async def later(delay: float, what: str, action: Callable[[], None]) -> None:
        await asyncio.sleep(delay)
        action()
        say(what)

    tasks = []
    if script.revoke_after:
        tasks.append(
            later(script.revoke_after, "token revoked: every call answers 401", sim.revoke)
        )
    if script.hang_after:
        tasks.append(
            later(
                script.hang_after,
                "getUpdates hangs from now on",
                lambda: setattr(sim, "hang_polls", True),
            )
        )
    if script.compete_after:
        tasks.append(later(script.compete_after, "another poller uses the token", sim.compete))
    if script.burst:
        tasks.append(_run_burst(sim, script, say))
    if script.message_every:
        tasks.append(_messages(sim, script, say))
    if tasks:
        await asyncio.gather(*tasks)
    await asyncio.Event().wait()


async def _messages(sim: TelegramSimulator, script: Script, say: Callable[[str], None]) -> None:
    n = 0
    while not script.messages or n < script.messages:
        await asyncio.sleep(script.message_every)
        n += 1
        chat, mid = sim.message(script.message_kind, f"message {n}")
        say(f"update: message {mid} in {script.message_kind} {chat}")


async def _run_burst(sim: TelegramSimulator, script: Script, say: Callable[[str], None]) -> None:
    if script.kill_after:

        def kill() -> None:
            outcome = sigkill(script.kill_pid, script.kill_pid_file)
            say(f"burst: update {script.kill_after} went out; {outcome}")

        sim.after_delivered(script.kill_after, kill)
    ids = sim.burst(script.burst, script.burst_kind, chats=8)
    say(f"burst: {len(ids)} {script.burst_kind} messages queued")
    start = time.monotonic()
    try:
        await sim.wait_until(lambda: not sim.reply_census(ids).unanswered, 120.0, "every answer")
    except AssertionError:
        pass
    census = sim.reply_census(ids)
    say(
        f"burst: census after {time.monotonic() - start:.1f} s: "
        f"{census.messages - len(census.unanswered) - len(census.repeated)} answered exactly once, "
        f"{len(census.unanswered)} unanswered, {len(census.repeated)} answered more than once"
    )


def config_snippet(sim: TelegramSimulator, platform: str = "telegram-sim") -> str:
    return (
        f"[platforms.{platform}]\n"
        'adapter = "telegram"\n'
        'token = "env:TELEGRAM_TOKEN"            # export TELEGRAM_TOKEN=' + f"'{sim.token}'\n"
        f'api_base = "{sim.api_base}"\n'
    )
