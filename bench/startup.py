"""Start-up and restart: process start to READY=1 (cold and with an existing store), where
the time goes (imports), and SIGKILL to ready again under a real systemd.

The gateway runs as installed: bytecode compiled first (pip does that at install; with
PYTHONDONTWRITEBYTECODE set, as in the development shell, every start would otherwise compile
the package's sources again). A new store is created at head in one step; alembic is loaded
only for a store behind head.

Target: ready in under 1 s on this machine.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Section, median, p95, verdict

from tests.support.configs import write_config
from tests.support.notify import NotifyListener
from tests.support.proc import GatewayProcess, child_env


async def to_ready(directory: Path) -> float:
    listener = NotifyListener(directory)
    listener.start()
    try:
        config = write_config(
            directory, {"bot": {"adapter": "demo"}}, tick=1.0, gateway={"log_level": "WARNING"}
        )
        start = time.monotonic()
        gw = await GatewayProcess(config, listener.env(10)).start()
        try:
            ready = await listener.wait_for(lambda d: d.fields.get("READY") == "1", 30, "READY=1")
        finally:
            await gw.kill()
        return ready.at - start
    finally:
        listener.close()


def import_profile() -> list[tuple[str, float]]:
    """Cumulative import time of the heaviest top-level packages of `hermes run`."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import hermes.gateway, hermes.cli"],
        capture_output=True, text=True, env=child_env(), check=True,
    )  # fmt: skip
    totals: dict[str, float] = {}
    for line in out.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| \s*(\S+)", line)
        # A package's own line (no dot) carries the cumulative cost of importing it.
        if m and "." not in m.group(2) and not m.group(2).startswith("_"):
            totals[m.group(2)] = max(totals.get(m.group(2), 0.0), int(m.group(1)) / 1e6)
    ours = ("hermes", "watchdog", "site", "encodings")
    return sorted(((k, v) for k, v in totals.items() if k not in ours), key=lambda kv: -kv[1])[:8]


def kill_to_ready(repeats: int) -> list[float]:
    from tests.support.gateway_unit import UNIT, sandbox, sandbox_workdir, unit_config, unit_for
    from tests.support.sandbox import sandbox_unavailable_reason

    if sandbox_unavailable_reason():
        return []
    out = []
    with sandbox_workdir("bench") as workdir:
        config = unit_config(workdir, {"bot": {"adapter": "demo"}}, tick=0.5, log_level="WARNING")
        with sandbox(
            workdir, unit_for(workdir, config, watchdog_sec="20s", start_limit_burst=100)
        ) as sb:
            props = ("NRestarts", "ActiveState", "ActiveEnterTimestampMonotonic")
            sb.wait_for(
                UNIT,
                lambda p: p.get("ActiveState") == "active",
                props,
                timeout=60,
                what="first start",
            )
            for i in range(repeats):
                killed = time.monotonic()
                sb.systemctl("kill", "-s", "KILL", UNIT)
                seen = sb.wait_for(
                    UNIT,
                    lambda p, i=i: (
                        int(p.get("NRestarts") or 0) >= i + 1 and p.get("ActiveState") == "active"
                    ),
                    props,
                    timeout=60,
                    what="ready again",
                )
                out.append(int(seen["ActiveEnterTimestampMonotonic"]) / 1e6 - killed)
    return out


def compile_bytecode() -> None:
    """What pip does at install: the gateway then loads bytecode instead of compiling sources."""
    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(root / "hermes"), str(root / "watchdog")],
        check=True,
    )


def run(quick: bool = False) -> Section:
    repeats = 3 if quick else 7
    compile_bytecode()
    s = Section("Start-up and restart", ["measurement", "median", "p95", "target"])
    cold, warm = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            cold.append(asyncio.run(to_ready(Path(tmp))))  # an empty store: created at head
            warm.append(asyncio.run(to_ready(Path(tmp))))  # the same store again
    s.add(
        "process start to READY=1, new store (created at head)",
        f"{median(cold):.3f} s",
        f"{p95(cold):.3f} s",
        f"< 1 s: {verdict(p95(cold), 1.0)}",
    )
    s.add(
        "process start to READY=1, existing store",
        f"{median(warm):.3f} s",
        f"{p95(warm):.3f} s",
        f"< 1 s: {verdict(p95(warm), 1.0)}",
    )
    kills = kill_to_ready(2 if quick else 5)
    if kills:
        s.add(
            "SIGKILL to ready again under systemd (RestartSec=0.5s)",
            f"{median(kills):.3f} s",
            f"{p95(kills):.3f} s",
            f"< 1 s after RestartSec: {verdict(p95(kills) - 0.5, 1.0)}",
        )
    profile = import_profile()
    s.notes.append(
        "Imports of `hermes run`, the heaviest top-level packages (seconds, one cold interpreter): "
        + ", ".join(f"{name} {t:.2f}" for name, t in profile)
        + "."
    )
    s.data.update(cold=cold, warm=warm, kill_to_ready=kills, imports=profile)
    return s


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv).markdown())
