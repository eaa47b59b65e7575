"""The simulator's sending ceiling: a client that parses nothing, it only counts bytes.

    python raw_reader.py GATEWAY_URL TOKEN

It performs the WebSocket handshake and an Identify by hand, prints ``READY``, reads the
number of bytes to expect from stdin, then prints ``DONE <bytes> <monotonic>`` once they
arrived. Whatever the simulator can push through loopback is the ceiling.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from urllib.parse import urlsplit


def masked_text_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    header = (
        bytes((0x81, 0x80 | n)) if n < 126 else bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    )
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readexactly(2)
    n = head[1] & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    return await reader.readexactly(n)


async def main() -> None:
    url, token = sys.argv[1:3]
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port, limit=2**24)
    writer.write(
        f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await reader.readuntil(b"\r\n\r\n")
    await read_frame(reader)  # Hello
    identify = {"op": 2, "d": {"token": f"QQBot {token}", "intents": 1 << 25, "shard": [0, 1]}}
    writer.write(masked_text_frame(json.dumps(identify).encode()))
    await read_frame(reader)  # READY
    print("READY", flush=True)
    expected = int(await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline))
    got = 0
    while got < expected:
        chunk = await reader.read(2**20)
        if not chunk:
            break
        got += len(chunk)
    print(f"DONE {got} {time.monotonic():.6f}", flush=True)
    writer.close()


if __name__ == "__main__":
    asyncio.run(main())
