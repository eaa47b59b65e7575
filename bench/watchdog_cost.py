"""Watchdog cost at scale: beat(), one tick with 10 to 10,000 platforms, the database write
per tick, and the ping cadence while the database is stalled.

Targets: beat() under 1 us; a tick with 1,000 platforms under 10 ms of loop time; the ping
cadence unchanged while the database is slow.
"""

from __future__ import annotations

import asyncio
import itertools
import tempfile
import time
import timeit
import uuid
from datetime import UTC, datetime
from pathlib import Path

from common import Section, fresh_pg_schema, median, ms, p95, verdict
from loguru import logger
from sqlalchemy.engine import make_url

from watchdog.clock import SystemClock
from watchdog.engine import WatchdogEngine
from watchdog.heartbeat import HeartbeatBoard, PlatformHandle, PlatformPolicy
from watchdog.job import WatchdogJob
from watchdog.notify import Notifier
from watchdog.states import DeclaredState
from watchdog.store import Batch, StateStore
from watchdog.supervisor import Supervisor
from watchdog.tasks import TaskRegistry
from watchdog.writer import StoreStatus


class KeepLastWriter:
    """Stands in for the store writer: keeps the last batch (the tick's output) and nothing else."""

    instance_id = "bench"

    def __init__(self) -> None:
        self.last: Batch | None = None

    def submit(self, batch: Batch) -> None:
        self.last = batch

    def status(self) -> StoreStatus:
        return StoreStatus("ok", None, None, 0, 0, 0)

    def restart_if_dead(self) -> bool:
        return False


def gateway_of(n: int) -> tuple[WatchdogJob, list[PlatformHandle], KeepLastWriter]:
    board = HeartbeatBoard()
    handles = []
    for i in range(n):
        record = board.register(f"p{i}", "bench", required=True, policy=PlatformPolicy())
        handle = board.begin_attempt(record, restart=False)
        handle.declare(DeclaredState.CONNECTED)
        handle.beat()
        handles.append(handle)
    engine = WatchdogEngine(board)
    writer = KeepLastWriter()
    job = WatchdogJob(
        engine,
        Supervisor(board, engine, TaskRegistry()),
        Notifier(None),
        writer,  # type: ignore[arg-type]
        clock=SystemClock(),
        tick_interval=2.0,
        heartbeat_persist_interval=5.0,
        on_escalate=lambda esc: None,
    )
    job._tick()  # first tick: every row is new
    return job, handles, writer


def flip(handle: PlatformHandle) -> None:
    """A state change: connected <-> reconnecting."""
    connected = handle._record.declared is DeclaredState.CONNECTED
    handle.declare(DeclaredState.RECONNECTING if connected else DeclaredState.CONNECTED)


def bench_beat(repeats: int) -> list[float]:
    _, (handle,), _ = gateway_of(1)
    n = 1_000_000
    return [timeit.timeit(handle.beat, number=n) / n for _ in range(repeats)]


def bench_tick(n: int, changing: float, repeats: int) -> tuple[list[float], Batch | None]:
    job, handles, writer = gateway_of(n)
    flips = max(1, int(n * changing)) if changing else 0
    cycle = itertools.cycle(range(n))
    samples = []
    for _ in range(repeats):
        for h in handles:  # every platform proved alive since the last tick
            h.beat()
        for _ in range(flips):
            flip(handles[next(cycle)])
        start = time.perf_counter()
        job._tick()
        samples.append(time.perf_counter() - start)
    return samples, writer.last


def rows_for_store(batch: Batch, instance_id: str) -> Batch:
    rows = {k: dict(v, instance_id=instance_id) for k, v in batch.rows.items()}
    transitions = [dict(t, instance_id=instance_id) for t in batch.transitions]
    return Batch(rows=rows, transitions=transitions, instance=dict(batch.instance))


def bench_db_write(url: str, n: int, repeats: int) -> dict[str, list[float]]:
    store = StateStore(url)
    try:
        store.migrate()
        iid = str(uuid.uuid4())
        store.begin_instance(
            {
                "id": iid,
                "host": "bench",
                "pid": 1,
                "version": "bench",
                "started_at": datetime.now(UTC),
                "tick_interval": 2.0,
                "pinging": True,
                "store_failures": 0,
            }
        )
        job, handles, writer = gateway_of(n)
        assert writer.last is not None
        store.write(rows_for_store(writer.last, iid), iid)  # all rows exist now
        out: dict[str, list[float]] = {"changes": [], "heartbeats": []}
        for kind in ("changes", "heartbeats"):
            for _ in range(repeats):
                if kind == "changes":
                    for h in handles[: max(1, n // 100)]:
                        flip(h)
                else:
                    for h in handles:
                        h.beat()
                    job._beats_persisted_at = -1e9  # heartbeats due: every row carries a new beat
                job._tick()
                assert writer.last is not None
                batch = rows_for_store(writer.last, iid)
                start = time.perf_counter()
                store.write(batch, iid)
                out[kind].append(time.perf_counter() - start)
        return out
    finally:
        store.close()


async def ping_gaps_with_stalled_db(seconds: float) -> tuple[list[float], list[float]]:
    """Ping intervals of a real gateway (tick 0.2 s) before and while its PostgreSQL is stalled."""
    from hermes.config import load_config
    from hermes.gateway import Gateway
    from tests.support.configs import write_config
    from tests.support.notify import NotifyListener
    from tests.support.tcpproxy import TcpProxy

    url, drop = fresh_pg_schema()
    parsed = make_url(url)
    proxy = await TcpProxy(parsed.host or "127.0.0.1", parsed.port or 5432).start()
    with tempfile.TemporaryDirectory() as tmp:
        listener = NotifyListener(Path(tmp))
        listener.start()
        config = write_config(
            Path(tmp),
            {"demo": {"adapter": "demo"}},
            tick=0.2,
            store={
                "url": parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(
                    hide_password=False
                )
            },
        )
        gw = Gateway(load_config(config), notifier=Notifier(listener.address, watchdog_timeout=10))
        task = asyncio.get_running_loop().create_task(gw.run())
        try:
            await asyncio.wait_for(gw.ready.wait(), 20)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await asyncio.sleep(seconds)
            proxy.pause()
            t1 = loop.time()
            await asyncio.sleep(seconds)
            t2 = loop.time()
            proxy.resume()
        finally:
            gw.request_stop(0, "bench")
            await asyncio.wait_for(task, 30)
            await proxy.close()
            listener.close()
            drop()
    pings = [d.at for d in listener.pings()]

    def gaps(a: float, b: float) -> list[float]:
        inside = [p for p in pings if a <= p <= b]
        return [y - x for x, y in itertools.pairwise(inside)]

    return gaps(t0, t1), gaps(t1, t2)


def run(quick: bool = False) -> Section:
    logger.remove()
    reps = 5 if quick else 15
    s = Section(
        "Watchdog cost at scale",
        ["measurement", "median", "p95", "target"],
        notes=[
            "A tick is the whole watchdog pass on the loop: judging, batch building for the store, the status line; database work happens on the writer thread.",
            "1 % changing: that share of platforms flips connected/reconnecting before each tick (transitions and row writes).",
        ],
    )
    beat = bench_beat(reps)
    s.add(
        "one beat()",
        f"{median(beat) * 1e9:.0f} ns",
        f"{p95(beat) * 1e9:.0f} ns",
        f"< 1 us: {verdict(p95(beat), 1e-6)}",
    )
    s.data["beat_seconds"] = beat
    for n in (10, 100, 1_000, 10_000):
        for changing in (0.0, 0.01):
            samples, _ = bench_tick(n, changing, reps)
            target = f"< 10 ms: {verdict(p95(samples), 0.010)}" if n == 1_000 else ""
            label = f"tick, {n:,} platforms" + (", 1 % changing" if changing else ", all healthy")
            s.add(label, ms(median(samples)), ms(p95(samples)), target)
            s.data[label] = samples
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        pg_url, drop = fresh_pg_schema()
        try:
            for name, url in (("SQLite", sqlite_url), ("PostgreSQL", pg_url)):
                writes = bench_db_write(url, 1_000, 5 if quick else 10)
                s.add(
                    f"store write per tick, 1,000 platforms, {name}: 1 % changed",
                    ms(median(writes["changes"])),
                    ms(p95(writes["changes"])),
                    "on the writer thread",
                )
                s.add(
                    f"store write every 5 s, 1,000 platforms, {name}: all heartbeats",
                    ms(median(writes["heartbeats"])),
                    ms(p95(writes["heartbeats"])),
                    "on the writer thread",
                )
                s.data[f"db_write_{name}"] = writes
        finally:
            drop()
    normal, stalled = asyncio.run(ping_gaps_with_stalled_db(2.0 if quick else 4.0))
    ok = bool(stalled) and max(stalled) < 2 * max(normal or [0.2])
    s.add(
        "ping interval, tick 0.2 s, database answering",
        ms(median(normal)),
        f"max {ms(max(normal or [0]))}",
        "",
    )
    s.add(
        "ping interval, tick 0.2 s, database stalled (TCP proxy paused)",
        ms(median(stalled)),
        f"max {ms(max(stalled or [0]))}",
        "unchanged: " + ("met" if ok else "**MISSED**"),
    )
    s.data["ping_gaps"] = {"normal": normal, "stalled": stalled}
    return s


if __name__ == "__main__":
    print(run().markdown())
