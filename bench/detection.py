"""Detection latency per failure mode: from the fault to the fatal row in SQL, to the last
systemd ping, to the process exit; under the systemd sandbox, to the restarted gateway's READY.

A real ``hermes run`` subprocess, a real NOTIFY_SOCKET, the QQ simulator for the QQ cases.
Targets: an exited or crashed adapter is fatal within one tick; a stale heartbeat within
TTL + one tick; escalation to exit within 2 s.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import Section, median, p95, verdict

from hermes.config import load_config
from hermes.simulators.qqbot import QQSimulator
from tests.support.configs import write_config
from tests.support.notify import NotifyListener
from tests.support.proc import GatewayProcess
from watchdog.store import StateStore

TICK = 0.5
JITTER = 0.02
"""The tick fires on a timer: the first tick after a fault comes at most TICK + timer jitter later."""
QQ_INTERVAL = 0.4
QQ_TTL = QQ_INTERVAL * 2.5


def qq(sim: QQSimulator, adapter: str = "qqbot") -> dict[str, Any]:
    return {
        "adapter": adapter,
        "restart_max": 0,
        **sim.adapter_settings(
            client_secret="env:QQ_SECRET",
            reconnect_backoff=0.05,
            reconnect_backoff_max=0.1,
            reconnect_max_failures=2,
            hello_timeout=1.0,
        ),
    }


def scripted(*steps: str) -> dict[str, Any]:
    return {"runs": [["connect", "behave 1", *steps]], "restart_max": 0}


MODES = {
    "silent return": scripted("return"),
    "crash": scripted("raise boom"),
    "explicit fatal": scripted("fatal bench_broken retryable broken"),
}


def fatal_at(config: Path) -> float | None:
    """Monotonic time of the fatal transition, from its stored wall time."""
    store = StateStore(load_config(config, {"QQ_SECRET": "x"}).database_url, read_only=True)
    try:
        rows = [t for t in store.transitions(limit=None) if t["to_health"] == "fatal"]
    finally:
        store.close()
    if not rows:
        return None
    return rows[0]["at"].timestamp() - (time.time() - time.monotonic())


async def one_run(mode: str, tmp: Path) -> dict[str, float]:
    listener = NotifyListener(tmp)
    listener.start()
    sim: QQSimulator | None = None
    env = {"QQ_SECRET": "unused"}
    try:
        if mode in MODES:
            platforms = {"bot": MODES[mode]}
        else:
            sim = QQSimulator(heartbeat_interval=QQ_INTERVAL)
            await sim.start()
            env["QQ_SECRET"] = sim.client_secret
            variant = (
                "tests.qq_variants:NoZombieDetectionQQ"
                if mode == "stale heartbeat (half-open QQ)"
                else "qqbot"
            )
            platforms = {"bot": qq(sim, variant)}
        config = write_config(tmp, platforms, tick=TICK, gateway={"log_level": "INFO"})
        gw = await GatewayProcess(config, {**listener.env(10), **env}).start()
        try:
            if sim is not None:
                await sim.wait_ready(20)
                await asyncio.sleep(1.0)
                fault = time.monotonic()
                if mode == "stale heartbeat (half-open QQ)":
                    sim.go_silent()
                else:
                    await sim.refuse_connections()
            code = await gw.wait(30)
            exited = time.monotonic()
        finally:
            await gw.kill()
        if sim is None:
            event = {
                "silent return": "return",
                "crash": "raise",
                "explicit fatal": "fatal-bench_broken",
            }[mode]
            fault = gw.markers("bot", event)[0]
        pings = [p.at for p in listener.pings()]
        fatal = fatal_at(config)
        assert fatal is not None, gw.output
        return {
            "fatal": fatal - fault,
            "last_ping": max(pings) - fault,
            "exit": exited - fault,
            "code": code,
        }
    finally:
        listener.close()
        if sim is not None:
            await sim.stop()


def sandbox_runs(repeats: int) -> dict[str, list[float]]:
    """Under a real systemd: from the fault to the restarted gateway's READY (ActiveEnter)."""
    from tests.support.gateway_unit import UNIT, sandbox, sandbox_workdir, unit_config, unit_for
    from tests.support.sandbox import sandbox_unavailable_reason

    if sandbox_unavailable_reason():
        return {}
    out: dict[str, list[float]] = {"silent return": [], "blocked event loop": []}
    for mode, watchdog_sec, steps in (
        ("silent return", "20s", ["return"]),
        ("blocked event loop", "2s", ["block 30"]),
    ):
        for _ in range(repeats):
            with sandbox_workdir("bench") as workdir:
                config = unit_config(
                    workdir,
                    {
                        "bot": {
                            "runs": [["connect", "behave 1", *steps], ["connect", "behave"]],
                            "restart_max": 0,
                        }
                    },
                    tick=TICK,
                    log_level="INFO",
                )
                with sandbox(
                    workdir,
                    unit_for(workdir, config, watchdog_sec=watchdog_sec, start_limit_burst=5),
                ) as sb:
                    props = ("NRestarts", "ActiveState", "ActiveEnterTimestampMonotonic")
                    sb.wait_for(
                        UNIT,
                        lambda p: (
                            int(p.get("NRestarts") or 0) >= 1 and p.get("ActiveState") == "active"
                        ),
                        props,
                        timeout=60,
                        what="restarted and ready",
                        logs=[workdir / "gateway.log"],
                    )
                    ready_us = int(
                        sb.show(UNIT, "ActiveEnterTimestampMonotonic")[
                            "ActiveEnterTimestampMonotonic"
                        ]
                    )
                marker = {"silent return": "return", "blocked event loop": "block-start"}[mode]
                fault = next(
                    float(line.split()[3])
                    for line in (workdir / "gateway.log").read_text().splitlines()
                    if line.startswith(f"SCRIPT bot {marker} ")
                )
                out[mode].append(ready_us / 1e6 - fault)
    return out


def run(quick: bool = False) -> Section:
    repeats = 2 if quick else 5
    modes = [*MODES, "stale heartbeat (half-open QQ)", "reconnect exhaustion (QQ)"]
    s = Section(
        "Detection latency (tick 0.5 s)",
        ["failure mode", "fault to fatal row, median / p95", "to last ping", "to exit", "target"],
        notes=[
            f"The fault is the moment the adapter returned/raised/reported (its own marker), the simulator went silent, or it began refusing connections. QQ heartbeat interval {QQ_INTERVAL} s, so TTL {QQ_TTL:g} s; reconnect exhaustion after 2 failed connections.",
            "'to last ping' is negative when the last ping came before the fault was noticed, as it should: no ping after the verdict.",
            f"'First tick after the fault' allows {JITTER * 1000:.0f} ms of timer jitter on top of the {TICK} s tick.",
        ],
    )
    for mode in modes:
        runs: list[dict[str, float]] = []
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as tmp:
                runs.append(asyncio.run(one_run(mode, Path(tmp))))
        fatal = [r["fatal"] for r in runs]
        last = [r["last_ping"] for r in runs]
        exits = [r["exit"] - r["fatal"] for r in runs]
        if mode in ("silent return", "crash"):
            first = sum(f <= TICK + JITTER for f in fatal)
            target = f"caught by the first tick after the fault in {first}/{len(fatal)} runs: " + (
                "met" if first == len(fatal) else "**MISSED**"
            )
        elif mode.startswith("stale"):
            target = (
                f"within TTL + tick ({QQ_TTL + TICK:g} s): {verdict(p95(fatal), QQ_TTL + TICK)}"
            )
        else:
            target = ""
        target += f"; exit within 2 s of the verdict: {verdict(p95(exits), 2.0)}"
        s.add(
            mode,
            f"{median(fatal):.3f} s / {p95(fatal):.3f} s",
            f"{median(last):+.3f} s",
            f"{median([r['exit'] for r in runs]):.3f} s",
            target,
        )
        s.data[mode] = runs
    blocked = run_blocked(repeats)
    s.add(
        "blocked event loop",
        "no tick runs: none",
        f"{median(blocked):+.3f} s",
        "systemd's WatchdogSec decides",
        "pings stop at once: " + verdict(p95(blocked), TICK),
    )
    s.data["blocked event loop"] = blocked
    sandbox = sandbox_runs(1 if quick else 3)
    for mode, values in sandbox.items():
        s.add(
            f"under systemd: {mode} -> restarted gateway READY",
            f"{median(values):.3f} s / {p95(values):.3f} s",
            "",
            "",
            "RestartSec=0.5s" + (", WatchdogSec=2s" if "blocked" in mode else ""),
        )
    if not sandbox:
        s.notes.append("The systemd sandbox was not available (needs root): no restart timings.")
    s.data["sandbox"] = sandbox
    return s


def run_blocked(repeats: int) -> list[float]:
    """A blocked loop: from the block to the last ping (the pings stop; systemd takes over)."""

    async def once(tmp: Path) -> float:
        listener = NotifyListener(tmp)
        listener.start()
        try:
            config = write_config(
                tmp, {"bot": {"runs": [["connect", "behave 1", "block 2", "behave"]]}}, tick=TICK
            )
            gw = await GatewayProcess(config, listener.env(10)).start()
            try:
                await gw.wait_line(r"SCRIPT bot block-end", 30)
            finally:
                await gw.kill()
            start = gw.markers("bot", "block-start")[0]
            before = [p.at for p in listener.pings() if p.at <= start + 1.5]
            return max(before) - start
        finally:
            listener.close()

    out = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            out.append(asyncio.run(once(Path(tmp))))
    return out


if __name__ == "__main__":
    sys.exit(print(run(quick="--quick" in sys.argv).markdown()))
