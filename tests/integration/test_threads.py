"""Blocking calls on daemon threads: results and exceptions come back to the loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests.support.timing import t
from watchdog.threads import DaemonWorker, in_thread


async def test_in_thread_returns_the_result_from_a_named_daemon_thread():
    def work(a: int) -> tuple[int, str, bool]:
        me = threading.current_thread()
        return a * 2, me.name, me.daemon

    assert await in_thread(work, 21, name="hermes-test") == (42, "hermes-test", True)


async def test_in_thread_raises_what_the_call_raised():
    def boom() -> None:
        raise KeyError("nope")

    with pytest.raises(KeyError, match="nope"):
        await in_thread(boom, name="hermes-test")


async def test_a_daemon_worker_runs_calls_in_order_on_its_one_thread():
    worker = DaemonWorker("hermes-worker")
    seen: list[tuple[int, str]] = []

    def record(n: int, *, scale: int = 1) -> int:
        seen.append((n, threading.current_thread().name))
        return n * scale

    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(worker.call(record, n, scale=10) for n in range(5))), t(5)
        )
        assert results == [0, 10, 20, 30, 40]
        assert seen == [(n, "hermes-worker") for n in range(5)]
        with pytest.raises(ValueError, match="bad"):
            await worker.call(int, "bad")
        assert await worker.call(record, 7) == 7  # an exception does not end the worker
    finally:
        worker.stop()
