"""The cost of the watchdog's hot paths: ``beat()`` and one engine pass over N platforms.

Prints median and p95 over repeated runs, with the machine's core count and Python
version. No I/O: the engine is pure, the clock is the real monotonic clock.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loguru import logger

from watchdog.engine import WatchdogEngine
from watchdog.heartbeat import HeartbeatBoard, PlatformPolicy
from watchdog.states import DeclaredState

REPEATS = 15


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def board_with(n: int) -> tuple[HeartbeatBoard, WatchdogEngine, list]:
    board = HeartbeatBoard()
    handles = []
    for i in range(n):
        record = board.register(f"p{i}", "bench", required=True, policy=PlatformPolicy())
        handle = board.begin_attempt(record, restart=False)
        handle.declare(DeclaredState.CONNECTED)
        handle.beat()
        handles.append(handle)
    board.drain_changes()
    engine = WatchdogEngine(board)
    engine.evaluate(time.monotonic())
    return board, engine, handles


def bench_beat() -> tuple[float, float]:
    _, _, (handle,) = board_with(1)
    per_call = []
    for _ in range(REPEATS):
        n = 1_000_000
        per_call.append(timeit.timeit(handle.beat, number=n) / n)
    return statistics.median(per_call), p95(per_call)


def bench_tick(n: int) -> tuple[float, float]:
    _, engine, _ = board_with(n)
    samples = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        engine.evaluate(time.monotonic())
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), p95(samples)


def main() -> None:
    logger.remove()
    print(
        f"# watchdog cost - {os.cpu_count()} cores, Python {platform.python_version()}, {platform.machine()}"
    )
    print()
    print("| measurement | median | p95 | target |")
    print("|---|---|---|---|")
    med, high = bench_beat()
    print(
        f"| one beat() | {med * 1e9:.0f} ns | {high * 1e9:.0f} ns | < 1 us: {'met' if high < 1e-6 else 'MISSED'} |"
    )
    for n in (10, 100, 1_000, 10_000):
        med, high = bench_tick(n)
        target = f"< 10 ms: {'met' if high < 0.010 else 'MISSED'}" if n == 1_000 else ""
        print(
            f"| engine pass, {n:,} healthy platforms | {med * 1e3:.2f} ms | {high * 1e3:.2f} ms | {target} |"
        )


if __name__ == "__main__":
    main()
