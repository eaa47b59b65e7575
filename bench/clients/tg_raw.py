"""The Telegram simulator's ceiling: getUpdates in a loop, nothing parsed but the last id.

python tg_raw.py API_BASE TOKEN COUNT
"""

from __future__ import annotations

import asyncio
import sys
import time

import httpx

api_base, token, count = sys.argv[1:4]
EXPECTED = int(count)


async def main() -> None:
    url = f"{api_base}/bot{token}/getUpdates"
    seen, offset = 0, 0
    print("READY", flush=True)
    async with httpx.AsyncClient(timeout=30) as http:
        while seen < EXPECTED:
            body = (await http.post(url, json={"offset": offset, "timeout": 10})).content
            # The update ids only: the number of updates and the last one.
            n = body.count(b'"update_id":')
            if n:
                last = body.rindex(b'"update_id":') + 12
                offset = int(body[last : body.index(b",", last)]) + 1
                seen += n
    print(f"DONE {seen} {time.monotonic()}", flush=True)


asyncio.run(main())
