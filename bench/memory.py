"""Resident memory of the gateway with 1, 100 and 1,000 platforms (scripted adapters that beat)."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from common import Section

from tests.support.configs import write_config
from tests.support.notify import NotifyListener
from tests.support.proc import GatewayProcess


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


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
    return s


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv).markdown())
