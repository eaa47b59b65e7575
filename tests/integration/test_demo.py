"""``make demo`` keeps telling its story: caught, restarted, fatal, escalated, visible in SQL."""

from __future__ import annotations

import subprocess
import sys

from tests.support.proc import child_env
from tests.support.timing import t


def test_the_demo_shows_the_watchdog_catching_a_silent_death(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "hermes.demo"],
        cwd=tmp_path,
        env=child_env({"HERMES_DEMO_SPEED": "0.2"}),
        capture_output=True,
        text=True,
        timeout=t(90),
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "systemd <- READY=1" in out
    assert out.count("health ok -> failing: adapter_exited") == 2
    assert "health ok -> fatal: adapter_exited" in out
    assert "systemd <- WATCHDOG=trigger" in out
    assert "== gateway exited with 75 (escalation: systemd restarts the unit)" in out
    assert "   demo-bot | connected | fatal | 2 | adapter_exited" in out
    assert "(exit code 2)" in out
    assert (tmp_path / ".demo" / "state" / "hermes.db").exists()
