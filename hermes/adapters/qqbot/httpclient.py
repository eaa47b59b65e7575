"""The HTTP client of the QQ REST calls (token, gateway URL, sends): one aiohttp session.

Chosen by numbers (bench/http_clients.py, the simulator on 127.0.0.1, keep-alive): per
request, httpx cost about five times the client CPU of an aiohttp session (2.2 ms against
0.4 ms on a busy 2-core machine), and httpx's tuned settings (no environment lookups, a
larger pool, the body encoded once) did not change that. A chat's replies go out one at a
time, in order, so that per-request cost bounds a chat's replies per second.

This module is the boundary: the rest of the adapter sees :class:`HttpResponse` and
:class:`HttpError` only, never aiohttp's types.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson


class HttpError(Exception):
    """The request got no HTTP answer: connection refused or dropped, a timeout, bad TLS."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status_code: int
    reason_phrase: str
    headers: Mapping[str, str]
    content: bytes

    def json(self) -> Any:
        """The body as JSON; ValueError if it is not."""
        return orjson.loads(self.content)


class Answer(Protocol):
    """What a token request needs of a response (httpx's fits too)."""

    @property
    def status_code(self) -> int: ...

    def json(self) -> Any: ...


class Poster(Protocol):
    """What a token request needs of a client (:class:`HttpClient`; httpx's fits too)."""

    async def post(self, url: str, *, json: Any = None) -> Answer: ...


class HttpClient:
    """An aiohttp session with keep-alive; open it inside the event loop that uses it."""

    def __init__(self, *, timeout: float, headers: Mapping[str, str] | None = None) -> None:
        self._session = aiohttp.ClientSession(
            headers=dict(headers or {}),
            timeout=aiohttp.ClientTimeout(total=timeout),
            connector=aiohttp.TCPConnector(limit=100),
            trust_env=True,  # HTTP(S)_PROXY and NO_PROXY are honoured, as they were with httpx
        )

    async def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        data = None
        if json is not None:
            data = orjson.dumps(json)
            headers = {**(headers or {}), "Content-Type": "application/json"}
        try:
            async with self._session.request(method, url, data=data, headers=headers) as r:
                content = await r.read()
                return HttpResponse(r.status, r.reason or "", r.headers, content)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise HttpError(f"{type(exc).__name__}: {exc}") from exc

    async def post(self, url: str, *, json: Any = None) -> HttpResponse:
        return await self.request("POST", url, json=json)

    async def aclose(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
