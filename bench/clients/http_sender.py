"""A client for bench/http_clients.py: POST group replies to the simulator, one HTTP client.

    python http_sender.py VARIANT API_BASE TOKEN_URL APP_ID SECRET COUNT PARALLEL

VARIANT: httpx (as the QQ adapter configures it), httpx-tuned, aiohttp (run it with an
interpreter that has aiohttp: the qq-botpy environment). Sends COUNT replies, PARALLEL at a
time (1: one chat, in order, as the outbox sends a chat), on one client with keep-alive.
Prints ``DONE <requests/s> <CPU ms per request>`` (this process's CPU, user + system).
Standalone: imports nothing from hermes, so any environment can run it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

Post = Callable[[str, bytes, dict[str, str]], Awaitable[int]]


async def token(
    post_json: Callable[[str, Any], Awaitable[Any]], url: str, app: str, secret: str
) -> str:
    answer = await post_json(url, {"appId": app, "clientSecret": secret})
    return str(answer["access_token"])


async def run(
    variant: str, api: str, token_url: str, app: str, secret: str, count: int, parallel: int
) -> None:
    if variant.startswith("httpx"):
        import httpx

        kwargs: dict[str, Any] = {"timeout": 10.0, "headers": {"User-Agent": "hermes-gateway"}}
        if variant == "httpx-tuned":
            # No proxy/.netrc lookups, one pool sized for the senders, HTTP/1.1 only.
            kwargs |= {
                "trust_env": False,
                "limits": httpx.Limits(max_connections=64, max_keepalive_connections=64),
            }
        client = httpx.AsyncClient(**kwargs)

        async def post_json(url: str, body: Any) -> Any:
            return (await client.post(url, json=body)).json()

        async def post(url: str, body: bytes, headers: dict[str, str]) -> int:
            if variant == "httpx-tuned":
                r = await client.post(url, content=body, headers=headers)
            else:
                r = await client.request("POST", url, json=json.loads(body), headers=headers)
            r.json()
            return r.status_code

        close: Callable[[], Awaitable[None]] = client.aclose
    elif variant == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(
            headers={"User-Agent": "hermes-gateway"},
            connector=aiohttp.TCPConnector(limit=64),
            timeout=aiohttp.ClientTimeout(total=10),
        )

        async def post_json(url: str, body: Any) -> Any:
            async with session.post(url, json=body) as r:
                return await r.json()

        async def post(url: str, body: bytes, headers: dict[str, str]) -> int:
            async with session.post(url, data=body, headers=headers) as r:
                await r.json()
                return r.status

        close = session.close
    else:
        raise SystemExit(f"unknown variant {variant}")
    tok = await token(post_json, token_url, app, secret)
    headers = {
        "Authorization": f"QQBot {tok}",
        "X-Union-Appid": app,
        "Content-Type": "application/json",
    }
    url = api.rstrip("/") + "/v2/groups/G1/messages"
    bodies = [
        json.dumps(
            {"content": f"reply {i}", "msg_type": 0, "msg_id": f"m{i}", "msg_seq": 1}
        ).encode()
        for i in range(count)
    ]
    await post(url, bodies[0], headers)  # the connection, opened before the clock starts
    queue = list(reversed(bodies[1:]))

    async def worker() -> None:
        while queue:
            status = await post(url, queue.pop(), headers)
            if status != 200:
                raise SystemExit(f"HTTP {status}")

    cpu0, t0 = time.process_time(), time.monotonic()
    await asyncio.gather(*(worker() for _ in range(parallel)))
    cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    await close()
    n = count - 1
    print(f"DONE {n / wall:.1f} {cpu / n * 1000:.4f}", flush=True)


if __name__ == "__main__":
    v, api_base, token_url, app_id, secret, n, par = sys.argv[1:8]
    asyncio.run(run(v, api_base, token_url, app_id, secret, int(n), int(par)))
