"""A real NOTIFY_SOCKET: a datagram socket that records what the gateway sends, as systemd would."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Datagram:
    at: float
    """time.monotonic() when received (the same clock as the gateway's on Linux)."""
    raw: bytes

    @property
    def fields(self) -> dict[str, str]:
        out = {}
        for line in self.raw.decode("utf-8").split("\n"):
            key, _, value = line.partition("=")
            out[key] = value
        return out


class NotifyListener:
    """Bind a path (``abstract=False``) or an abstract ``@name`` socket and collect datagrams."""

    def __init__(self, directory: Path, *, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        if abstract:
            name = f"hermes-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            path = directory / f"notify-{uuid.uuid4().hex[:8]}.sock"
            self.sock.bind(str(path))
            self.address = str(path)
        self.datagrams: list[Datagram] = []
        self._changed: asyncio.Event | None = None

    def env(self, watchdog_sec: float | None = 10.0) -> dict[str, str]:
        env = {"NOTIFY_SOCKET": self.address}
        if watchdog_sec is not None:
            env["WATCHDOG_USEC"] = str(int(watchdog_sec * 1_000_000))
        return env

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self) -> None:
        self.drain()
        assert self._changed is not None
        self._changed.set()

    def drain(self) -> None:
        """Read what is queued without an event loop."""
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            self.datagrams.append(Datagram(time.monotonic(), data))

    async def wait_for(
        self, predicate: Callable[[Datagram], bool], timeout: float, what: str, *, new: bool = False
    ) -> Datagram:
        """The first datagram (already received, unless ``new``, or arriving within ``timeout``)
        matching ``predicate``."""
        assert self._changed is not None
        seen = len(self.datagrams) if new else 0
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for d in self.datagrams[seen:]:
                if predicate(d):
                    return d
            seen = len(self.datagrams)
            self._changed.clear()
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(
                    f"no {what} within {timeout:g} s; got {[d.raw for d in self.datagrams]}"
                )
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                pass

    def with_field(self, key: str, value: str | None = None) -> list[Datagram]:
        return [
            d
            for d in self.datagrams
            if key in d.fields and (value is None or d.fields[key] == value)
        ]

    def pings(self) -> list[Datagram]:
        return self.with_field("WATCHDOG", "1")

    def close(self) -> None:
        if self._changed is not None:
            try:
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            except RuntimeError:
                pass
        self.sock.close()
        if not self.address.startswith("@"):
            try:
                os.unlink(self.address)
            except FileNotFoundError:
                pass

    async def until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Re-check ``condition`` at every datagram (the gateway sends one per tick) until true."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"{what}: not true within {timeout:g} s")
            try:
                await self.wait_for(lambda d: True, left, what, new=True)
            except AssertionError:
                if not condition():
                    raise
