"""The QQ open platform's REST API: the gateway URL and sending messages.

Every request carries ``Authorization: QQBot {token}`` from the :class:`TokenManager`
(so none is ever sent without a valid token) and ``X-Union-Appid``. Rate limiting
(HTTP 429 or the platform's own codes) and server errors are retried with backoff,
each attempt logged; anything else raises :class:`~hermes.errors.QQApiError`.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger

from hermes.adapters.qqbot.auth import TokenManager
from hermes.adapters.qqbot.httpclient import HttpClient, HttpError, HttpResponse
from hermes.errors import (
    AlreadyDelivered,
    QQApiError,
    QQAuthError,
    QQMessageRejected,
    QQRateLimited,
    QQTokenUnavailable,
)
from hermes.messages import OutboundMessage

# Platform codes for a *frequency* limit, retried like HTTP 429. Quotas (304045, 304049,
# 304050: proactive messages per day) and permissions (304046) are not retried: waiting
# seconds cannot fix them.
RATE_LIMIT_CODES = frozenset(
    {20028, 22009, 610013, 620006, 1100100, 1100308, *range(504000, 505000)}
)

DUPLICATE_REPLY = 40054005
"""Same msg_id and msg_seq as a reply the platform already has ("消息被去重")."""

ROUTES = {
    "c2c": "/v2/users/{id}/messages",
    "group": "/v2/groups/{id}/messages",
    "channel": "/channels/{id}/messages",
    "dm": "/dms/{id}/messages",
}


class MsgSeq:
    """``msg_seq`` for replies: increasing per replied-to ``msg_id`` (the platform drops a
    second reply with the same pair), bounded memory."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._last: OrderedDict[str, int] = OrderedDict()

    def next(self, msg_id: str) -> int:
        value = self._last.pop(msg_id, 0) + 1
        self._last[msg_id] = value
        if len(self._last) > self._capacity:
            self._last.popitem(last=False)
        return value


V2_KINDS = frozenset({"c2c", "group"})


def message_body(out: OutboundMessage, msg_seq: int | None) -> dict[str, Any]:
    """The request body. The v2 endpoints (c2c, group) take ``msg_type`` and, for replies,
    ``msg_seq``; the guild endpoints (channel, dm) take neither."""
    body: dict[str, Any] = {"content": out.text}
    v2 = out.chat_kind in V2_KINDS
    if v2:
        body["msg_type"] = 0
    if out.reply_to:
        body["msg_id"] = out.reply_to
        if v2 and msg_seq is not None:
            body["msg_seq"] = msg_seq
    return body


class QQApi:
    """REST calls for one app."""

    def __init__(
        self,
        http: HttpClient,
        *,
        api_base: str,
        app_id: str,
        tokens: TokenManager,
        max_attempts: int = 4,
        retry_initial: float = 0.5,
        retry_max: float = 8.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        platform: str = "",
    ) -> None:
        self.http = http
        self.api_base = api_base.rstrip("/")
        self.app_id = app_id
        self.tokens = tokens
        self.max_attempts = max_attempts
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._sleep = sleep
        self.msg_seq = MsgSeq()
        self.log = logger.bind(platform=platform) if platform else logger

    async def gateway_url(self) -> str:
        data = await self.request("GET", "/gateway")
        url = data.get("url") if isinstance(data, dict) else None
        if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
            raise QQApiError(f"GET /gateway answered without a WebSocket url: {data!r}", status=200)
        return url

    async def send(self, out: OutboundMessage) -> dict[str, Any]:
        """Send a message; a reply gets the next ``msg_seq`` for its ``msg_id``."""
        route = ROUTES.get(out.chat_kind)
        if route is None:
            raise QQMessageRejected(f"cannot send to chat kind {out.chat_kind!r}", status=0)
        seq = None
        if out.reply_to and out.chat_kind in V2_KINDS:
            seq = out.reply_seq if out.reply_seq is not None else self.msg_seq.next(out.reply_to)
        try:
            data = await self.request(
                "POST", route.format(id=out.chat_id), message_body(out, seq), rejected=True
            )
        except QQApiError as exc:
            if exc.code == DUPLICATE_REPLY and out.reply_seq is not None:
                raise AlreadyDelivered(
                    f"the platform already has reply {seq} to {out.reply_to}"
                ) from exc
            raise
        return data if isinstance(data, dict) else {}

    async def request(
        self, method: str, path: str, body: Any = None, *, rejected: bool = False
    ) -> Any:
        """One API call, retried for transport errors, server errors and rate limits.

        ``rejected``: a client error (4xx other than 401 and rate limits) about what was
        sent raises :class:`QQMessageRejected`, which no retry can fix.
        """
        delay = self.retry_initial
        for attempt in range(1, self.max_attempts + 1):
            try:
                token = await self.tokens.get()
            except (QQAuthError, QQTokenUnavailable) as exc:
                raise QQApiError(f"{method} {path}: no access token: {exc}", status=0) from exc
            headers = {"Authorization": f"QQBot {token}", "X-Union-Appid": self.app_id}
            try:
                response = await self.http.request(
                    method, self.api_base + path, json=body, headers=headers
                )
            except HttpError as exc:
                if attempt == self.max_attempts:
                    raise QQApiError(f"{method} {path}: {exc}", status=0) from exc
                why, wait = f"{method} {path}: {str(exc).split(':')[0]}", delay
            else:
                if response.status_code < 300:
                    return response.json() if response.content else {}
                error = _error(method, path, response)
                if error.status == 401 and attempt == 1:
                    self.tokens.invalidate()  # the token was refused: fetch a new one, once
                    continue
                transient = (
                    error.status == 429 or error.code in RATE_LIMIT_CODES or error.status >= 500
                )
                if not transient:
                    if rejected and 400 <= error.status < 500 and error.status != 401:
                        raise QQMessageRejected(
                            error.summary,
                            status=error.status,
                            code=error.code,
                            trace_id=error.trace_id,
                        ) from error
                    raise error
                if attempt == self.max_attempts:
                    if error.status >= 500:
                        raise error
                    raise QQRateLimited(
                        f"{method} {path}: still rate limited after {attempt} attempts",
                        status=error.status,
                        code=error.code,
                        trace_id=error.trace_id,
                    ) from error
                why, wait = str(error), max(delay, _retry_after(response) or 0.0)
            self.log.warning("{}; retry {} in {:.1f} s", why, attempt, wait)
            await self._sleep(wait)
            delay = min(delay * 2, self.retry_max)
        raise AssertionError("unreachable")


def _error(method: str, path: str, response: HttpResponse) -> QQApiError:
    try:
        data = response.json()
    except ValueError:
        data = None
    code = data.get("code") if isinstance(data, dict) else None
    if isinstance(data, dict) and isinstance(data.get("err_code"), int) and code in (None, 0):
        code = data["err_code"]
    message = (data.get("message") if isinstance(data, dict) else None) or response.reason_phrase
    trace = response.headers.get("X-Tps-trace-ID") or (
        data.get("trace_id") if isinstance(data, dict) else None
    )
    return QQApiError(
        f"{method} {path}: {message}",
        status=response.status_code,
        code=code if isinstance(code, int) else None,
        trace_id=trace,
    )


def _retry_after(response: HttpResponse) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return min(60.0, float(value)) if value else None
    except ValueError:
        return None
