"""A new QQ session's window: a process killed before the session's id is stored.

READY names a new session and the platform sends its events at once; the id is stored
with the next commit. A process killed in between leaves a session nobody can resume:
its loss is recorded as an inbound gap, never silent.
"""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

from hermes.adapters.qqbot.simulator import QQSimulator
from tests.integration.test_inbox import qq, table
from tests.support.configs import write_config
from tests.support.proc import HERMES_WATCHDOG, GatewayProcess, run_cli
from tests.support.timing import t
from watchdog.schema import platform_transitions


def kill_config(directory: Path, sim: QQSimulator, store_url: str) -> Path:
    return write_config(
        directory,
        {"qq": qq(sim)},
        tick=0.1,
        store={"url": store_url},
        # One line per message at DEBUG, thousands of them through a pipe, would slow the
        # gateway down for nothing: INFO still shows every restart and recovery.
        gateway={"log_level": "INFO"},
        routes=[{"name": "echo", "handler": "echo", "on_crash": "retry"}],
        extra="[outbox]\nretry_backoff = 0.05\nretry_backoff_max = 0.2\n",
    )


async def started(sim: QQSimulator, config: Path, env: dict[str, str]) -> GatewayProcess:
    """A new gateway process, once its connection is ready (READY or RESUMED)."""
    before = len(sim.connections)
    proc = await GatewayProcess(config, env).start()
    try:
        await sim.wait_until(
            lambda: any(c.ready for c in sim.connections[before:]), t(20), "a new connection ready"
        )
    except BaseException:
        await proc.kill()
        raise
    return proc


async def test_a_process_killed_before_its_new_session_is_stored_leaves_a_gap_on_record(
    tmp_path: Path, sim: QQSimulator
) -> None:
    # The window: READY names a new session and its events follow at once, but the session
    # id is stored only with the next commit. Held open here by a write lock on the SQLite
    # store, taken while the WebSocket handshake is under way (after anything the gateway
    # stores before it connects), so the commit after READY waits on it.
    config = kill_config(tmp_path, sim, f"sqlite:///{tmp_path / 'state' / 'hermes.db'}")
    env = {"QQ_SECRET": sim.client_secret}
    sim.handshake_delay = 0.5
    first = await GatewayProcess(config, env).start()
    blocker = None
    try:
        await sim.wait_until(lambda: sim.handshakes >= 1, t(20), "the first handshake")
        blocker = sqlite3.connect(tmp_path / "state" / "hermes.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        await sim.wait_ready(t(10))
        lost = [await sim.send_message("group", f"lost {i}", chat="G0") for i in range(3)]
        first.signal(signal.SIGKILL)
        assert await first.wait(t(10)) == -signal.SIGKILL
    finally:
        if blocker is not None:
            blocker.rollback()
            blocker.close()
        await first.kill()
    sim.handshake_delay = 0.0
    second = await started(sim, config, env)
    try:
        after = await sim.send_message("group", "after", chat="G0")
        await sim.wait_until(lambda: sim.reply_count(after) == 1, t(10), "an answer")
        second.signal(signal.SIGTERM)
        assert await second.wait(t(20)) == 0, second.output
    finally:
        await second.kill()
    # Nobody can resume a session whose id was never stored: its events are lost. Not
    # silently: the next start finds the identify marker and records the gap.
    assert sim.reply_census(lost).unanswered == lost
    assert sim.connections[-1].frames[0].op == 2  # a new session, nothing to resume
    gaps = [r for r in table(config, platform_transitions) if r["reason_code"] == "inbound_gap"]
    assert len(gaps) == 1, second.output
    assert "ended before its session id was stored" in gaps[0]["reason_message"]
    status = run_cli(HERMES_WATCHDOG, "status", "--config", str(config))
    assert "on record: 1 gaps, 0 lost" in status.stdout, status.stdout


async def test_a_clean_stop_before_a_session_leaves_no_gap(
    tmp_path: Path, sim: QQSimulator
) -> None:
    # The identify marker is withdrawn when the adapter stops without a new session, so a
    # gateway stopped while it could not reach the platform reports nothing lost.
    config = kill_config(tmp_path, sim, f"sqlite:///{tmp_path / 'state' / 'hermes.db'}")
    env = {"QQ_SECRET": sim.client_secret}
    await sim.refuse_connections()
    first = await GatewayProcess(config, env).start()
    try:
        await first.wait_line("cannot connect to", t(20))
        first.signal(signal.SIGTERM)
        assert await first.wait(t(20)) == 0, first.output
    finally:
        await first.kill()
    await sim.accept_connections()
    second = await started(sim, config, env)
    try:
        hello = await sim.send_message("group", "hello", chat="G0")
        await sim.wait_until(lambda: sim.reply_count(hello) == 1, t(10), "an answer")
        second.signal(signal.SIGTERM)
        assert await second.wait(t(20)) == 0, second.output
    finally:
        await second.kill()
    assert [
        r for r in table(config, platform_transitions) if r["reason_code"] == "inbound_gap"
    ] == []
