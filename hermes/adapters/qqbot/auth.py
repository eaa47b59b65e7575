"""Access tokens for the QQ open platform: fetched from the token endpoint, refreshed ahead
of expiry.

The platform issues a *new* token only during the last 60 seconds of the current one's
life; asked earlier, it returns the same token with its remaining lifetime. So a token is
refreshed once fewer than ``refresh_before`` seconds (default 50) remain, and never used
past its expiry: a request without a valid token is never sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from hermes.adapters.qqbot.httpclient import HttpError, Poster
from hermes.errors import QQAuthError, QQTokenUnavailable
from watchdog.secrets import Secret


def parse_token_response(status: int, body: Any) -> tuple[str, float]:
    """``(token, expires_in seconds)`` from the token endpoint's answer, or the error it means.

    ``expires_in`` arrives as a string or a number. An answer without a token that carries an
    error code is a refusal of the credentials (:class:`QQAuthError`); a server error or
    nonsense is :class:`QQTokenUnavailable` (retryable).
    """
    if status >= 500:
        raise QQTokenUnavailable(f"token endpoint answered HTTP {status}")
    if not isinstance(body, dict):
        raise QQTokenUnavailable(f"token endpoint answered HTTP {status} without a JSON object")
    token = body.get("access_token")
    if isinstance(token, str) and token:
        raw = body.get("expires_in")
        try:
            expires_in = float(str(raw))
        except ValueError:
            raise QQTokenUnavailable(
                f"token endpoint sent expires_in={raw!r}, not a number"
            ) from None
        if not expires_in > 0:
            raise QQTokenUnavailable(f"token endpoint sent expires_in={raw!r}")
        return token, expires_in
    code = body.get("code")
    message = body.get("message") or body.get("msg") or ""
    if status >= 400 or code is not None:
        raise QQAuthError(
            f"token endpoint refused the credentials: code {code}: {message}".rstrip(": ")
        )
    raise QQTokenUnavailable(f"token endpoint answered HTTP {status} without an access_token")


class TokenManager:
    """One app's access token; concurrent callers share one refresh."""

    def __init__(
        self,
        http: Poster,
        *,
        token_url: str,
        app_id: str,
        secret: Secret,
        refresh_before: float = 50.0,
        min_refetch_gap: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.http = http
        self.token_url = token_url
        self.app_id = app_id
        self.secret = secret
        self.refresh_before = refresh_before
        self.min_refetch_gap = min_refetch_gap
        self._mono = monotonic
        self._token: str | None = None
        self._expires_at = 0.0
        self._refetch_at = 0.0
        self._lock = asyncio.Lock()
        self.fetches = 0

    @property
    def remaining(self) -> float:
        """Seconds the current token still lives (0 without one)."""
        return max(0.0, self._expires_at - self._mono()) if self._token else 0.0

    def _fresh(self) -> bool:
        return self._token is not None and self.remaining > self.refresh_before

    async def get(self) -> str:
        """A valid token, refreshed once fewer than ``refresh_before`` seconds remain.

        While refreshing fails (or keeps returning the same near-expiry token) the current
        token is used until it expires, and the endpoint is asked at most every
        ``min_refetch_gap`` seconds. Without a valid token this raises; it never returns
        an expired one.
        """
        if self._fresh():
            assert self._token is not None
            return self._token
        async with self._lock:
            if self._fresh() or (self.remaining > 0 and self._mono() < self._refetch_at):
                assert self._token is not None
                return self._token
            self._refetch_at = self._mono() + self.min_refetch_gap
            try:
                await self._fetch()
            except QQTokenUnavailable:
                if self.remaining > 0:
                    assert self._token is not None
                    return self._token
                raise
            assert self._token is not None
            return self._token

    def invalidate(self) -> None:
        """Forget the token (the gateway refused it): the next :meth:`get` fetches one."""
        self._token = None
        self._refetch_at = 0.0

    async def _fetch(self) -> None:
        body = {"appId": self.app_id, "clientSecret": self.secret.reveal()}
        try:
            response = await self.http.post(self.token_url, json=body)
        except HttpError as exc:
            raise QQTokenUnavailable(f"token endpoint unreachable: {exc}") from exc
        try:
            data = response.json()
        except ValueError:
            data = None
        token, expires_in = parse_token_response(response.status_code, data)
        self.fetches += 1
        self._token = token
        self._expires_at = self._mono() + expires_in
