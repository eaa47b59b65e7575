"""The batching WebSocket connection against a real websockets server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK
from websockets.protocol import Event

from hermes.adapters.batching import BatchingConnection, Message
from tests.support.timing import t

Script = Callable[[ServerConnection], Awaitable[None]]


@pytest.fixture
async def server() -> AsyncIterator[Callable[[Script], Awaitable[str]]]:
    """Start a server that runs a script on its one connection; returns its URL."""
    servers = []

    async def start(script: Script) -> str:
        s = await serve(script, "127.0.0.1", 0, compression=None)
        servers.append(s)
        port = next(iter(s.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}"

    yield start
    for s in servers:
        s.close()
        await s.wait_closed()


async def read_until_closed(ws: BatchingConnection) -> tuple[list[list[bytes]], BaseException]:
    batches: list[list[bytes]] = []
    while True:
        try:
            batch = await asyncio.wait_for(ws.recv_batch(), t(5))
        except (ConnectionClosedOK, ConnectionClosedError) as exc:
            return batches, exc
        batches.append([bytes(m) for m in batch])


async def test_messages_of_one_read_come_as_one_batch_in_order_and_then_the_close(server):
    async def script(ws: ServerConnection) -> None:
        # Many messages in one write, one message in fragments, a binary one, then a close.
        ws.transport.write(b"".join(bytes((0x81, 3)) + f"m{i:02d}".encode() for i in range(50)))
        await ws.send(["frag", "ment", "ed"])
        await ws.send(b"\x00binary")
        await ws.close(1000, "bye")

    url = await server(script)
    async with connect(url, create_connection=BatchingConnection, compression=None) as ws:
        assert isinstance(ws, BatchingConnection)
        batches, closed = await read_until_closed(ws)
    messages = [m for b in batches for m in b]
    assert messages == [f"m{i:02d}".encode() for i in range(50)] + [b"fragmented", b"\x00binary"]
    assert len(batches) < len(messages)  # the 50 written at once did not come one by one
    assert isinstance(closed, ConnectionClosedOK) and closed.rcvd is not None
    assert closed.rcvd.code == 1000


async def test_a_reader_that_falls_behind_pauses_the_socket_until_it_takes_the_batch(server):
    sent = asyncio.Event()

    async def script(ws: ServerConnection) -> None:
        for i in range(200):
            await ws.send(f"event {i}")
        sent.set()
        await ws.wait_closed()

    over = asyncio.Event()

    class Small(BatchingConnection):
        max_waiting = 10

        def process_event(self, event: Event) -> None:
            super().process_event(event)
            if len(self._waiting) > self.max_waiting:
                over.set()

    url = await server(script)
    async with connect(url, create_connection=Small, compression=None) as ws:
        assert isinstance(ws, BatchingConnection)
        await asyncio.wait_for(sent.wait(), t(5))
        await asyncio.wait_for(over.wait(), t(5))
        assert not ws.transport.is_reading()
        got: list[Message] = []
        while len(got) < 200:
            got += await asyncio.wait_for(ws.recv_batch(), t(5))
            assert ws.transport.is_reading() or len(ws._waiting) > ws.max_waiting
    assert [bytes(m) for m in got] == [f"event {i}".encode() for i in range(200)]


async def test_a_dropped_connection_ends_the_reader_with_an_error(server):
    async def script(ws: ServerConnection) -> None:
        await ws.send("last words")
        ws.transport.abort()

    url = await server(script)
    async with connect(url, create_connection=BatchingConnection, compression=None) as ws:
        assert isinstance(ws, BatchingConnection)
        batches, closed = await read_until_closed(ws)
    assert [m for b in batches for m in b] == [b"last words"]
    assert isinstance(closed, ConnectionClosedError)
