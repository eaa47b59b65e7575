"""How long a hung ``getUpdates`` and a revoked token go unnoticed: hermes, and (as observed)
python-telegram-bot and aiogram 3, each against the Bot API simulator, polling with a
10 s long-poll timeout.

- hung: from then on every ``getUpdates`` is read and never answered. Measured: from the
  first hung request to the next one (the client cut the first off and noticed), and
  whether the client exits.
- revoked: every call answers 401 Unauthorized from then on. Measured: whether, and when,
  the client exits (and with which code), and how many calls it still makes.

hermes runs as ``hermes run`` with its defaults apart from ``poll_timeout = 10`` and one
restart allowed; the libraries as in the receive benchmark.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from common import Section
from telegram_receive import AIOGRAM, CLIENTS, PTB

from hermes.simulators.telegram import TelegramSimulator
from tests.support.configs import write_config
from tests.support.proc import HERMES, child_env


async def _start(name: str, sim: TelegramSimulator, tmp: Path) -> asyncio.subprocess.Process:
    if name == "hermes":
        platform = {
            "adapter": "telegram",
            **sim.adapter_settings(token="env:TG_TOKEN", poll_timeout=10),
        }
        config = write_config(tmp, {"tg": platform}, tick=1.0, gateway={"log_level": "WARNING"})
        argv = [HERMES, "run", "--config", str(config)]
    else:
        python, script = (PTB, "ptb_client.py") if name == "ptb" else (AIOGRAM, "aiogram_client.py")
        argv = [str(python), str(CLIENTS / script), sim.api_base, sim.token, "1000000"]
    return await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env=child_env({"TG_TOKEN": sim.token}),
    )


async def _observe(name: str, fault: str, observe: float) -> str:
    async with TelegramSimulator() as sim:
        with tempfile.TemporaryDirectory() as tmp:
            proc = await _start(name, sim, Path(tmp))
            try:
                await sim.wait_until(lambda: sim.waiting, 60, "a waiting poll")
                began = time.monotonic()
                if fault == "hung":
                    sim.hang_polls = True
                else:
                    sim.revoke()
                try:
                    code: int | None = await asyncio.wait_for(proc.wait(), observe)
                except TimeoutError:
                    code = None
                ended = time.monotonic() - began
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            exits = (
                f"exit {code} after {ended:.1f} s"
                if code is not None
                else f"still running after {observe:g} s"
            )
            if fault == "hung":
                hung = [p.at for p in sim.polls if p.outcome == "hung"]
                if len(hung) >= 2:
                    return f"noticed after {hung[1] - hung[0]:.1f} s; {exits}"
                return f"not noticed within {observe:g} s; {exits}"
            return f"{sim.calls['unauthorized']} calls refused; {exits}"


def run(quick: bool = False) -> Section:
    observe = 35.0 if quick else 45.0
    s = Section(
        "Telegram: a hung getUpdates and a revoked token (10 s long polls)",
        ["client", "hung getUpdates", "revoked token"],
        notes=[
            f"observed for {observe:g} s after the fault",
            "hermes: the read timeout (poll + 10 s) cuts a hung poll; a revoked token is "
            "tg_invalid_token, exit 78 (systemd does not restart it)",
        ],
    )
    for name, label in (
        ("hermes", "hermes"),
        ("ptb", "python-telegram-bot 22.8"),
        ("aiogram", "aiogram 3.31"),
    ):
        hung = asyncio.run(_observe(name, "hung", observe))
        revoked = asyncio.run(_observe(name, "revoked", observe))
        s.add(label, hung, revoked)
        s.data[name] = {"hung": hung, "revoked": revoked}
    return s


if __name__ == "__main__":
    print(run(quick=True).markdown())
