"""Resident memory of the gateway: with 1, 100 and 1,000 platforms (scripted adapters that
beat), and before, right after and well after a burst of 100,000 QQ messages (the simulator
writes them in one go; the inbox takes them with backpressure; no route matches, so the
runner marks them skipped as they come).

Target: once the burst has drained, resident memory is back within 10 % of before it.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Section

from hermes.simulators.qqbot import QQSimulator, prepare_flood, write_raw
from tests.support.configs import write_config
from tests.support.notify import NotifyListener
from tests.support.proc import GatewayProcess

BURST = 100_000


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (the peak) of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def trim(pid: int) -> bool:
    """Ask glibc to hand freed heap memory back to the kernel (``malloc_trim(0)``) in process
    ``pid``, through gdb; False without gdb. What RSS loses then was the allocator's, not ours."""
    if shutil.which("gdb") is None:
        return False
    done = subprocess.run(
        ["gdb", "-p", str(pid), "-batch", "-nx", "-ex", "call (int) malloc_trim(0)"],
        capture_output=True,
        check=False,
        timeout=60,
    )
    return done.returncode == 0


def inbox_counts(db: Path) -> tuple[int, int]:
    """Rows in the inbox, and those still waiting for their run (read-only, beside the gateway)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        total, waiting = conn.execute(
            "SELECT count(*), coalesce(sum(status = 'received'), 0) FROM inbox"
        ).fetchone()
        return int(total), int(waiting)
    except sqlite3.OperationalError:
        return 0, 0  # not created yet
    finally:
        conn.close()


async def burst(
    directory: Path, count: int, bursts: int = 2, route: bool = False
) -> list[tuple[str, float]]:
    """Resident memory of a gateway with one QQ platform: idle, then after each burst of
    ``count`` messages, once absorbed (all in the inbox) and once drained (no row waiting).

    Without ``route`` no route matches, so the runner marks the rows skipped in bulk and the
    burst drains as fast as it is stored; with it, an ``ignore`` route runs every message
    (a ``job_runs`` row each), which takes minutes per 100,000."""
    listener = NotifyListener(directory)
    listener.start()
    out: list[tuple[str, float]] = []
    try:
        async with QQSimulator(heartbeat_interval=30) as sim:
            qq = {
                "adapter": "qqbot",
                **sim.adapter_settings(
                    client_secret="env:QQ_SECRET", intents=["GROUP_AND_C2C_EVENT"]
                ),
            }
            config = write_config(
                directory,
                {"qq": qq},
                tick=0.5,
                gateway={"log_level": "WARNING"},
                routes=[{"handler": "ignore", "concurrency": 64}] if route else [],
                extra="[runner]\nmax_concurrency = 64\n",
            )
            db = directory / "state" / "hermes.db"
            env = {**listener.env(30), "QQ_SECRET": sim.client_secret}
            gw = await GatewayProcess(config, env).start()
            try:
                await listener.wait_for(lambda d: d.fields.get("READY") == "1", 60, "READY=1")
                await sim.wait_ready(60)
                await listener.until(lambda: len(listener.pings()) >= 4, 60, "a few ticks")
                assert gw.proc is not None
                pid = gw.proc.pid
                out.append(("idle, connected", rss_mb(pid)))
                for n in range(1, bursts + 1):
                    data, _ = prepare_flood(sim, "group", count, text=f"burst {n}")
                    started = time.monotonic()
                    write_raw(sim, data)
                    # Checked at every datagram: the gateway sends one per tick.
                    await listener.until(
                        lambda n=n: inbox_counts(db)[0] >= n * count,  # type: ignore[misc]
                        900,
                        "the burst in the inbox",
                    )
                    absorbed = time.monotonic() - started
                    out.append(
                        (f"burst {n}: all {count:,} in the inbox ({absorbed:.0f} s)", rss_mb(pid))
                    )
                    await listener.until(lambda: inbox_counts(db)[1] == 0, 900, "every run done")
                    drained = time.monotonic() - started
                    pings = len(listener.pings())
                    await listener.until(
                        lambda p=pings: len(listener.pings()) >= p + 4, 60, "ticks"
                    )  # type: ignore[misc]
                    out.append((f"burst {n}: drained ({drained:.0f} s)", rss_mb(pid)))
                out.append(("peak (VmHWM)", rss_mb(pid, "VmHWM")))
                if trim(pid):
                    out.append(("then malloc_trim(0) through gdb", rss_mb(pid)))
            finally:
                await gw.kill()
    finally:
        listener.close()
    return out


async def measure(n: int, directory: Path) -> float:
    listener = NotifyListener(directory)
    listener.start()
    try:
        platforms = {
            f"p{i}": {"runs": [["connect", "behave"]], "beat_interval": 1.0} for i in range(n)
        }
        config = write_config(directory, platforms, tick=0.5, gateway={"log_level": "WARNING"})
        gw = await GatewayProcess(config, listener.env(10)).start()
        try:
            await listener.wait_for(lambda d: d.fields.get("READY") == "1", 60, "READY=1")
            await listener.until(lambda: len(listener.pings()) >= 6, 60, "a few ticks")
            assert gw.proc is not None
            return rss_mb(gw.proc.pid)
        finally:
            await gw.kill()
    finally:
        listener.close()


def run(quick: bool = False) -> Section:
    s = Section(
        "Memory",
        ["platforms", "resident memory (VmRSS)"],
        notes=["After READY and six ticks; each platform a scripted adapter beating every second."],
    )
    for n in (1, 100, 1_000):
        with tempfile.TemporaryDirectory() as tmp:
            mb = asyncio.run(measure(n, Path(tmp)))
        s.add(f"{n:,}", f"{mb:.1f} MB")
        s.data[str(n)] = mb
    count = 20_000 if quick else BURST
    with tempfile.TemporaryDirectory() as tmp:
        rows = asyncio.run(burst(Path(tmp), count))
    for what, mb in rows:
        s.add(f"1 (QQ), {what}", f"{mb:.1f} MB")
    s.data["burst"] = rows
    before, after = rows[0][1], rows[2][1]
    s.notes.append(
        f"A burst of {count:,} messages: {before:.1f} MB before, {after:.1f} MB once drained "
        f"({(after / before - 1) * 100:+.0f} %; target within 10 %: "
        f"{'met' if after <= before * 1.1 else 'MISSED'})."
    )
    return s


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv).markdown())
