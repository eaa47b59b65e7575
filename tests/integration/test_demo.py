"""``make demo`` keeps telling its story: a crash mid-burst and the replay, echoes, silence,
reconnects, restart, fatal, escalation."""

from __future__ import annotations

import subprocess
import sys

from tests.support.proc import child_env
from tests.support.timing import t


def test_the_demo_shows_the_watchdog_catching_a_silent_platform(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "hermes.demo"],
        cwd=tmp_path,
        env=child_env({"HERMES_DEMO_SPEED": "0.25"}),
        capture_output=True,
        text=True,
        timeout=t(120),
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "systemd  <- READY=1" in out
    # The crash mid-burst: killed, started again, resumed; the simulator counts the replies.
    assert "burst: event 300 sent (seq 301); killed pid" in out
    assert "== gateway died (-9): started again" in out
    assert out.count("systemd  <- READY=1") >= 2
    assert "replayed" in out.split("gateway died", 1)[1]
    assert "burst: census after" in out
    assert "1000 answered exactly once, 0 unanswered, 0 answered more than once" in out
    assert "message to group chat-1: 'hello #1 from the simulator' -> HTTP 200" in out
    assert "zombie connection" in out
    assert out.count("giving up: qq_reconnect_exhausted") == 2
    assert "health degraded -> fatal: qq_reconnect_exhausted" in out
    assert "systemd  <- STATUS=stopped (exit 75): fatal: qq-demo: qq_reconnect_exhausted" in out
    assert "WATCHDOG=trigger" not in out  # the stop finished: systemd sees exit 75, not a watchdog
    assert "== gateway exited with 75 (escalation: systemd restarts the unit)" in out
    assert "   qq-demo | fatal | fatal | 1 | qq_reconnect_exhausted" in out
    assert "OK: 1 of 1 platforms ok" in out  # the status taken while messages flowed
