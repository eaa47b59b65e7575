"""Receive throughput on the Telegram Bot API simulator: hermes against python-telegram-bot
and aiogram 3, each in a process (and a venv) of its own, the same simulator and stream.

Each client is polling (a long poll waiting) when a burst of group messages is queued at
once; the clock runs from the burst to the client's last message:

- python-telegram-bot: an ``Application`` with one ``MessageHandler`` that counts;
- aiogram 3: a ``Dispatcher`` with one message handler that counts;
- hermes: ``hermes run`` with a ``telegram`` platform; a message counts once it is
  committed to the inbox (SQLite) and its offset sent, which is when the simulator
  forgets it: durable, not merely parsed;
- the simulator's ceiling: a client that polls and parses nothing but the last update id.

The libraries are pointed at the simulator through their documented base-URL settings
(``Application.builder().base_url(...)``, ``TelegramAPIServer.from_base(...)``). Rounds
are interleaved (every client once per round) and the median is reported.

Target: hermes at least 1.5 times the faster library.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from common import REPO, Section, median

from hermes.simulators.telegram import TelegramSimulator
from tests.support.configs import write_config
from tests.support.proc import GatewayProcess, child_env

PTB = REPO / ".venv-ptb" / "bin" / "python"
AIOGRAM = REPO / ".venv-aiogram" / "bin" / "python"
CLIENTS = REPO / "bench" / "clients"
HERMES_PY = REPO / ".venv" / "bin" / "python"


async def _client_rate(argv: list[str], count: int) -> float:
    async with TelegramSimulator() as sim:
        proc = await asyncio.create_subprocess_exec(
            *argv, sim.api_base, sim.token, str(count),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=child_env(),
        )  # fmt: skip
        try:
            await sim.wait_until(lambda: sim.waiting, 60, "a waiting poll")
            start = time.monotonic()
            sim.burst(count, "group", chats=50)
            assert proc.stdout is not None
            while True:
                line = (await asyncio.wait_for(proc.stdout.readline(), 300)).decode()
                if not line:
                    raise RuntimeError(f"{argv[-1]} ended before its last message")
                if line.startswith("DONE"):
                    end = float(line.split()[2])
                    break
        finally:
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    return count / (end - start)


async def _hermes_rate(count: int) -> float:
    async with TelegramSimulator() as sim:
        with tempfile.TemporaryDirectory() as tmp:
            platform = {
                "adapter": "telegram",
                **sim.adapter_settings(token="env:TG_TOKEN", poll_timeout=10),
            }
            config = write_config(
                Path(tmp), {"tg": platform}, tick=0.5, gateway={"log_level": "WARNING"}
            )
            proc = await GatewayProcess(config, {"TG_TOKEN": sim.token}).start()
            try:
                await sim.wait_until(lambda: sim.waiting, 60, "a waiting poll")
                start = time.monotonic()
                ids = sim.burst(count, "group", chats=50)
                last = sim.next_update_id - 1
                await sim.wait_until(
                    lambda: sim.confirmed_through >= last, 300, "every update stored"
                )
                end = time.monotonic()
                assert len(ids) == count
            finally:
                proc.signal(15)
                try:
                    await proc.wait(20)
                finally:
                    await proc.kill()
    return count / (end - start)


def run(quick: bool = False) -> Section:
    count = 5_000 if quick else 20_000
    rounds = 1 if quick else 3
    clients = {
        "simulator ceiling (parses nothing)": [str(HERMES_PY), str(CLIENTS / "tg_raw.py")],
        "python-telegram-bot 22.8": [str(PTB), str(CLIENTS / "ptb_client.py")],
        "aiogram 3.31": [str(AIOGRAM), str(CLIENTS / "aiogram_client.py")],
    }
    rates: dict[str, list[float]] = {name: [] for name in [*clients, "hermes (inbox on, SQLite)"]}
    for _ in range(rounds):
        for name, argv in clients.items():
            rates[name].append(asyncio.run(_client_rate(argv, count)))
        rates["hermes (inbox on, SQLite)"].append(asyncio.run(_hermes_rate(count)))
    s = Section(
        f"Telegram: messages received per second ({count:,}-message burst, median of {rounds})",
        ["client", "messages/s", "vs faster library"],
        notes=[
            "each client in its own process; libraries pointed at the simulator by their base-URL settings",
            "hermes counts a message once it is committed to the inbox and its offset confirmed",
        ],
    )
    faster = max(median(rates["python-telegram-bot 22.8"]), median(rates["aiogram 3.31"]))
    for name, values in rates.items():
        m = median(values)
        s.add(name, f"{m:,.0f}", f"{m / faster:.2f}x")
        s.data[name] = values
    ratio = median(rates["hermes (inbox on, SQLite)"]) / faster
    s.notes.append(
        f"target hermes >= 1.5x the faster library: {'met' if ratio >= 1.5 else '**MISSED**'} ({ratio:.2f}x)"
    )
    return s


if __name__ == "__main__":
    print(run(quick=True).markdown())
