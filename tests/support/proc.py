"""The gateway and the CLIs as real subprocesses."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.support.timing import t

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HERMES = str(BIN / "hermes")
HERMES_WATCHDOG = str(BIN / "hermes-watchdog")


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
    }
    env["PYTHONPATH"] = str(REPO)
    env.update(extra or {})
    return env


def run_cli(
    *argv: str, env: Mapping[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run ``hermes``/``hermes-watchdog`` to completion."""
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        env=child_env(env),
        timeout=t(timeout),
        check=False,
    )


class GatewayProcess:
    """``hermes run --config FILE`` with its stderr collected line by line."""

    def __init__(self, config: Path, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.env = child_env(env)
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._reader: asyncio.Task[None] | None = None
        self._new_line = asyncio.Event()

    async def start(self) -> GatewayProcess:
        self.proc = await asyncio.create_subprocess_exec(
            HERMES,
            "run",
            "--config",
            str(self.config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.env,
        )
        self._reader = asyncio.get_running_loop().create_task(
            self._read(), name="test:gateway-output"
        )
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
            self._new_line.set()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    async def wait_line(self, pattern: str, timeout: float) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = asyncio.get_running_loop().time() + t(timeout)
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if m := regex.search(line):
                    return m
            seen = len(self.lines)
            self._new_line.clear()
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0 or (
                self.proc is not None
                and self.proc.returncode is not None
                and self._reader
                and self._reader.done()
            ):
                raise AssertionError(
                    f"no line matching {pattern!r} within {timeout} s:\n{self.output}"
                )
            try:
                await asyncio.wait_for(self._new_line.wait(), min(left, 0.5))
            except TimeoutError:
                pass

    def markers(self, platform: str, event: str) -> list[float]:
        """Monotonic times of ``SCRIPT platform event`` markers printed by the scripted adapter."""
        out = []
        for line in self.lines:
            parts = line.split()
            if len(parts) == 4 and parts[:3] == ["SCRIPT", platform, event]:
                out.append(float(parts[3]))
        return out

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            code = await asyncio.wait_for(self.proc.wait(), t(timeout))
        except TimeoutError:
            raise AssertionError(
                f"gateway did not exit within {timeout} s:\n{self.output}"
            ) from None
        if self._reader is not None:
            await asyncio.wait_for(self._reader, t(5))
        return code

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
