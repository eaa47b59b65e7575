"""HTTP clients for sends: per-request cost of the candidates against the QQ simulator.

Replies within one chat go out one at a time, in order (the outbox's per-chat order), so
a one-chat burst is bound by one request's round trip and the client's cost per request.
Each candidate runs in a process of its own (bench/clients/http_sender.py) against the same
simulator, on one client with keep-alive; measured: requests per second, one at a time and
16 at a time, and the client's own CPU per request (user + system: stable when the machine
is busy, unlike wall-clock rates).

- httpx as the QQ adapter uses it (``request(json=...)``, default pool and settings);
- httpx tuned: ``trust_env=False``, a pool sized for the senders, the body encoded once;
- aiohttp (``ClientSession``, run with the qq-botpy environment, which has it).
"""

from __future__ import annotations

import asyncio
import os
import sys

from common import REPO, Section, median

from hermes.simulators.qqbot import QQSimulator
from tests.support.proc import child_env

SENDER = REPO / "bench" / "clients" / "http_sender.py"
BOTPY = REPO / ".venv-botpy" / "bin" / "python"


async def measure(python: str, variant: str, count: int, parallel: int) -> tuple[float, float]:
    async with QQSimulator(heartbeat_interval=30) as sim:
        for i in range(count):  # the messages the replies answer
            sim.messages[f"m{i}"] = ("group", sim.clock())
        proc = await asyncio.create_subprocess_exec(
            python, str(SENDER), variant, sim.api_base, sim.token_url, sim.app_id,
            sim.client_secret, str(count), str(parallel),
            stdout=asyncio.subprocess.PIPE, env=child_env(),
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 300)
    for line in out.decode().splitlines():
        if line.startswith("DONE"):
            _, rate, cpu = line.split()
            return float(rate), float(cpu)
    raise RuntimeError(f"{variant}: no result ({out.decode()[-300:]!r})")


def run(quick: bool = False) -> Section:
    count = 1_000 if quick else 3_000
    repeats = 1 if quick else 3
    s = Section(
        "HTTP clients for sends (POST a group reply to the simulator, keep-alive)",
        [
            "client",
            "one at a time (one chat), req/s",
            "16 at a time, req/s",
            "client CPU per request, one at a time",
        ],
        notes=[
            f"{count:,} requests per run, median of {repeats} run(s), the candidates interleaved."
        ],
    )
    variants = [(sys.executable, "httpx"), (sys.executable, "httpx-tuned")]
    if BOTPY.exists():
        variants.append((str(BOTPY), "aiohttp"))
    results: dict[str, dict[str, list[float]]] = {
        v: {"serial": [], "parallel": [], "cpu": []} for _, v in variants
    }
    for _ in range(repeats):
        for python, variant in variants:
            rate, cpu = asyncio.run(measure(python, variant, count, 1))
            prate, _ = asyncio.run(measure(python, variant, count, 16))
            results[variant]["serial"].append(rate)
            results[variant]["parallel"].append(prate)
            results[variant]["cpu"].append(cpu)
    for _, variant in variants:
        r = results[variant]
        s.add(
            variant,
            f"{median(r['serial']):,.0f}",
            f"{median(r['parallel']):,.0f}",
            f"{median(r['cpu']):.3f} ms",
        )
    s.data.update(results)
    return s


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    print(run(quick="--quick" in sys.argv).markdown())
