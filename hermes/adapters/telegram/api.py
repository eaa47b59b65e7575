"""Calls to the Telegram Bot API: ``{api_base}/bot{token}/{method}``, answers ``{"ok": ...}``.

The token is part of every request URL. Nothing here ever puts the URL, or anything
derived from the request, into an exception or a log line: errors name the method only,
and text that comes back from the server or from httpx is scrubbed of the token before it
is kept (:meth:`BotApi.scrub`).
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from hermes.errors import TelegramApiError
from watchdog.secrets import Secret


class BotApi:
    """One bot's calls over a shared :class:`httpx.AsyncClient`."""

    def __init__(self, http: httpx.AsyncClient, *, api_base: str, token: Secret) -> None:
        self.http = http
        self._token = token.reveal()
        self._base = f"{api_base.rstrip('/')}/bot{self._token}/"
        self.calls = 0

    def scrub(self, text: str) -> str:
        """``text`` without the token (an echo of the URL, by a proxy or a library)."""
        return text.replace(self._token, "<token>") if self._token in text else text

    async def call(
        self, method: str, params: dict[str, Any] | None = None, *, limits: httpx.Timeout
    ) -> Any:
        """The ``result`` of one call; :class:`TelegramApiError` for an error answer, a
        network error, a timeout or an answer that is not the API's (``status`` 0 or 5xx)."""
        self.calls += 1
        try:
            response = await self.http.post(
                self._base + method,
                content=orjson.dumps(params or {}),
                headers={"Content-Type": "application/json"},
                timeout=limits,
            )
        except httpx.TimeoutException as exc:
            # Not chained: the underlying exception may carry the request, and its URL
            # carries the token. The type and the phase are what matter.
            raise TelegramApiError(
                f"no answer within the time limit ({type(exc).__name__})", method=method, status=0
            ) from None
        except httpx.HTTPError as exc:
            raise TelegramApiError(
                f"{type(exc).__name__}: {self.scrub(str(exc))}"[:300], method=method, status=0
            ) from None
        return self.result(method, response.status_code, response.content)

    def result(self, method: str, status: int, content: bytes) -> Any:
        try:
            data = orjson.loads(content)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("ok"), bool):
            raise TelegramApiError(
                f"HTTP {status}, not a Bot API answer ({len(content)} bytes)",
                method=method,
                status=status if status >= 400 else 502,
            )
        if data["ok"] and status < 300:
            return data.get("result")
        code = data.get("error_code")
        code = code if type(code) is int else status
        description = self.scrub(str(data.get("description") or ""))[:300]
        params = data.get("parameters")
        if not isinstance(params, dict):
            params = {}
        retry_after: Any = params.get("retry_after")
        migrate = params.get("migrate_to_chat_id")
        raise TelegramApiError(
            f"{code} {description}".strip(),
            method=method,
            status=code,
            description=description,
            retry_after=float(retry_after) if type(retry_after) in (int, float) else None,
            migrate_to_chat_id=migrate if type(migrate) is int else None,
        )
