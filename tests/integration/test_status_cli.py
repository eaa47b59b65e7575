"""``hermes-watchdog`` as a subprocess: exit codes, JSON, a dead gateway, bad stores and arguments."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.proc import HERMES, HERMES_WATCHDOG, GatewayProcess, run_cli
from watchdog.store import Batch, StateStore


def seed(
    url: str,
    platforms: list[dict[str, Any]],
    *,
    tick_age: float = 0.5,
    stopped: bool = False,
    exit_code: int | None = None,
    transitions: int = 0,
) -> None:
    now = datetime.now(UTC)
    store = StateStore(url)
    try:
        store.migrate()
        store.begin_instance(
            {
                "id": "11111111-2222-3333-4444-555555555555",
                "host": "gw1",
                "pid": 4242,
                "version": "0.1.0",
                "started_at": now - timedelta(hours=2),
                "last_tick_at": now - timedelta(seconds=tick_age),
                "tick_interval": 2.0,
                "pinging": not stopped,
                "status_text": "status line",
                "store_failures": 0,
                "stopped_at": now - timedelta(seconds=tick_age) if stopped else None,
                "exit_code": exit_code,
                "exit_reason": "fatal: qq: adapter_exited: gone" if stopped else None,
            }
        )
        rows = [row(now, **p) for p in platforms]
        store.replace_platforms(rows)
        history = [
            {
                "at": now - timedelta(minutes=60 - i),
                "instance_id": "11111111-2222-3333-4444-555555555555",
                "platform": rows[i % len(rows)]["platform"],
                "from_state": "connected",
                "to_state": "reconnecting",
                "from_health": "ok",
                "to_health": "degraded",
                "reason_code": "adapter_exited" if i % 2 else None,
                "reason_message": f"event {i}",
            }
            for i in range(transitions)
        ]
        if history:
            store.write(Batch(transitions=history), "x")
    finally:
        store.close()


def row(
    now: datetime,
    platform: str,
    health: str = "ok",
    declared: str = "connected",
    required: bool = True,
    reason: str | None = None,
) -> dict[str, Any]:
    return {
        "platform": platform,
        "adapter": "qqbot",
        "required": required,
        "declared_state": declared,
        "declared_since": now - timedelta(minutes=30),
        "health": health,
        "health_since": now - timedelta(minutes=5),
        "last_heartbeat_at": now - timedelta(seconds=3),
        "heartbeat_ttl": 30.0,
        "restarts": 1 if reason else 0,
        "reason_code": reason,
        "reason_message": f"{reason} happened" if reason else None,
        "retryable": True if reason else None,
        "instance_id": "11111111-2222-3333-4444-555555555555",
        "updated_at": now,
    }


def status(url: str, *args: str):
    return run_cli(HERMES_WATCHDOG, "status", "--database", url, *args)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state' / 'hermes.db'}"


def test_all_ok_exits_0_with_a_table(store_url):
    seed(store_url, [{"platform": "qq-main"}, {"platform": "tg", "required": False}])
    result = status(store_url)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "OK: 2 of 2 platforms ok"
    assert "gateway 11111111 on gw1 pid 4242 (hermes 0.1.0), up 2h00m" in lines[1]
    assert "pinging systemd" in lines[1]
    header = next(line for line in lines if line.startswith("PLATFORM"))
    assert header.split() == [
        "PLATFORM",
        "ADAPTER",
        "DECLARED",
        "HEALTH",
        "HEARTBEAT/TTL",
        "SINCE",
        "RESTARTS",
        "REASON",
    ]
    assert any(
        re.match(r"qq-main\s+qqbot\s+connected\s+ok\s+\d\.\ds/30s\s+5m0\ds\s+0$", line)
        for line in lines
    ), lines
    assert any(line.startswith("tg (optional)") for line in lines)


def test_a_degraded_platform_exits_1(sqlite_url):
    seed(
        sqlite_url,
        [{"platform": "qq", "health": "degraded", "declared": "reconnecting"}, {"platform": "tg"}],
    )
    result = status(sqlite_url)
    assert result.returncode == 1
    assert result.stdout.startswith("WARNING: degraded: qq (reconnecting)")


def test_a_fatal_optional_platform_exits_1(sqlite_url):
    seed(
        sqlite_url,
        [{"platform": "extra", "health": "fatal", "required": False, "reason": "adapter_crashed"}],
    )
    result = status(sqlite_url)
    assert result.returncode == 1
    assert "optional fatal: extra: adapter_crashed" in result.stdout


def test_a_fatal_required_platform_exits_2_and_names_the_reason(store_url):
    seed(
        store_url,
        [{"platform": "qq", "health": "fatal", "reason": "heartbeat_timeout"}, {"platform": "tg"}],
    )
    result = status(store_url)
    assert result.returncode == 2
    assert result.stdout.startswith("CRITICAL: 1 of 2 platforms fatal (qq: heartbeat_timeout)")
    assert "heartbeat_timeout: heartbeat_timeout happened" in result.stdout


def test_a_gateway_that_stopped_ticking_is_critical_whatever_the_rows_say(sqlite_url):
    seed(sqlite_url, [{"platform": "qq"}], tick_age=120)
    result = status(sqlite_url)
    assert result.returncode == 2
    assert re.match(
        r"CRITICAL: gateway not ticking \(last tick 2m0\ds ago, every 2 s\)", result.stdout
    )
    assert "hung or dead" in result.stdout
    assert "NOT pinging systemd" in result.stdout
    # The threshold is tunable.
    assert status(sqlite_url, "--stale-after", "300").returncode == 0


def test_a_stopped_gateway_is_critical_with_its_exit(sqlite_url):
    seed(
        sqlite_url,
        [{"platform": "qq", "health": "fatal", "reason": "adapter_exited"}],
        stopped=True,
        exit_code=75,
    )
    result = status(sqlite_url)
    assert result.returncode == 2
    assert "CRITICAL: gateway stopped" in result.stdout
    assert "(exit 75: fatal: qq: adapter_exited: gone)" in result.stdout


def test_json_has_a_stable_shape(store_url):
    seed(store_url, [{"platform": "qq", "health": "fatal", "reason": "adapter_exited"}])
    result = status(store_url, "--json")
    assert result.returncode == 2
    doc = json.loads(result.stdout)
    assert set(doc) == {
        "overall",
        "exit_code",
        "summary",
        "checked_at",
        "store",
        "error",
        "instance",
        "platforms",
        "jobs",
        "outbox",
        "inbox",
    }
    assert (doc["overall"], doc["exit_code"], doc["error"]) == ("fatal", 2, None)
    assert set(doc["inbox"]) == {
        "waiting",
        "oldest_waiting_at",
        "dead_recently",
        "cut_off_recently",
        "gaps",
        "lost",
        "platforms",
    }
    assert {
        "id",
        "host",
        "pid",
        "version",
        "started_at",
        "last_tick_at",
        "tick_interval",
        "pinging",
        "ticking",
        "uptime_seconds",
        "last_tick_age_seconds",
        "stopped_at",
        "exit_code",
        "exit_reason",
        "status_text",
        "store_failures",
        "store_last_error",
        "store_last_error_at",
    } <= set(doc["instance"])
    (p,) = doc["platforms"]
    assert {
        "platform",
        "adapter",
        "required",
        "declared_state",
        "declared_since",
        "health",
        "health_since",
        "since_seconds",
        "last_heartbeat_at",
        "heartbeat_age_seconds",
        "heartbeat_ttl",
        "restarts",
        "reason_code",
        "reason_message",
        "retryable",
        "updated_at",
    } <= set(p)
    assert datetime.fromisoformat(p["last_heartbeat_at"]).tzinfo is not None
    assert 2.5 < p["heartbeat_age_seconds"] < 60


def test_no_instance_recorded_is_unknown(sqlite_url):
    store = StateStore(sqlite_url)
    store.migrate()
    store.close()
    result = status(sqlite_url, "--json")
    assert result.returncode == 3
    assert json.loads(result.stdout)["overall"] == "unknown"


def test_a_missing_database_is_unknown_and_not_created(tmp_path):
    path = tmp_path / "nowhere" / "hermes.db"
    result = status(f"sqlite:///{path}")
    assert result.returncode == 3
    assert (
        result.stdout.strip()
        == f"UNKNOWN: no state store at {path} (has the gateway run with this configuration?)"
    )
    assert not path.parent.exists()


def test_a_corrupt_database_is_unknown_and_left_byte_for_byte(tmp_path):
    path = tmp_path / "hermes.db"
    path.write_bytes(b"\x00garbage" * 4096)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    result = status(f"sqlite:///{path}", "--json")
    assert result.returncode == 3
    doc = json.loads(result.stdout)
    assert "file is not a database" in doc["error"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert [p.name for p in tmp_path.iterdir()] == ["hermes.db"]


def test_an_unreachable_postgres_is_unknown_without_leaking_the_password():
    result = status("postgresql+psycopg://hermes:hunter2@127.0.0.1:9/hermes")
    assert result.returncode == 3
    assert result.stdout.startswith("UNKNOWN:")
    assert "hunter2" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "--bogus"],
        ["frobnicate"],
        [],
        ["status", "--config", "a.toml", "--database", "sqlite:///x"],
        ["status", "--stale-after", "soon"],
    ],
)
def test_bad_arguments_exit_3_not_2(argv):
    result = run_cli(HERMES_WATCHDOG, *argv)
    assert result.returncode == 3
    assert "error:" in result.stderr


def test_status_finds_the_store_through_the_gateway_config(tmp_path):
    config = tmp_path / "gw.toml"
    config.write_text('[store]\ndirectory = "st"\n[platforms.qq]\nadapter = "demo"\n')
    seed(f"sqlite:///{tmp_path / 'st' / 'hermes.db'}", [{"platform": "qq"}])
    assert run_cli(HERMES_WATCHDOG, "status", "--config", str(config)).returncode == 0
    assert run_cli(HERMES_WATCHDOG, "status", env={"HERMES_CONFIG": str(config)}).returncode == 0
    broken = tmp_path / "broken.toml"
    broken.write_text("[store\n")
    result = run_cli(HERMES_WATCHDOG, "status", "--config", str(broken))
    assert result.returncode == 3
    assert f"UNKNOWN: {broken}: invalid TOML" in result.stdout
    missing = run_cli(HERMES_WATCHDOG, "status", "--config", str(tmp_path / "none.toml"))
    assert (missing.returncode, missing.stdout.strip()) == (
        3,
        f"UNKNOWN: {tmp_path / 'none.toml'}: file not found",
    )


def test_history_lists_transitions_oldest_first_with_filters(store_url):
    seed(store_url, [{"platform": "qq"}, {"platform": "tg"}], transitions=10)
    result = run_cli(HERMES_WATCHDOG, "history", "--database", store_url, "--limit", "4")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["AT", "PLATFORM", "DECLARED", "HEALTH", "REASON"]
    assert [line.split()[2] for line in lines[1:]] == ["qq", "tg", "qq", "tg"]
    assert "connected -> reconnecting" in lines[1]
    assert "event 9" in lines[-1]
    only_qq = json.loads(
        run_cli(HERMES_WATCHDOG, "history", "qq", "--database", store_url, "--json").stdout
    )
    assert {r["platform"] for r in only_qq} == {"qq"}
    assert len(only_qq) == 5
    recent = json.loads(
        run_cli(
            HERMES_WATCHDOG, "history", "--since", "55.5m", "--database", store_url, "--json"
        ).stdout
    )
    assert [r["reason_message"] for r in recent] == [f"event {i}" for i in range(5, 10)]


def test_history_rejects_an_unknown_platform_and_a_bad_since(sqlite_url):
    seed(sqlite_url, [{"platform": "qq"}])
    unknown = run_cli(HERMES_WATCHDOG, "history", "qq-typo", "--database", sqlite_url)
    assert unknown.returncode == 3
    assert "no platform 'qq-typo' in the store (known: qq)" in unknown.stderr
    since = run_cli(
        HERMES_WATCHDOG, "history", "--since", "yesterday-ish", "--database", sqlite_url
    )
    assert since.returncode == 3
    assert "--since: expected a duration" in since.stderr
    limit = run_cli(HERMES_WATCHDOG, "history", "--limit", "0", "--database", sqlite_url)
    assert limit.returncode == 3


def test_status_after_a_real_gateway_died_names_the_reason(tmp_path):
    config = tmp_path / "gw.toml"
    config.write_text(
        '[store]\ndirectory = "state"\n[watchdog]\ntick_interval = 0.1\n'
        '[platforms.bot]\nadapter = "demo"\ndie_after = 0.3\nrestart_max = 0\n'
    )
    assert run_cli(HERMES, "run", "--config", str(config)).returncode == 75
    result = run_cli(HERMES_WATCHDOG, "status", "--config", str(config))
    assert result.returncode == 2
    assert "(exit 75: fatal: bot: adapter_exited" in result.stdout
    assert any(
        line.startswith("bot") and "fatal" in line and "adapter_exited" in line
        for line in result.stdout.splitlines()
    )


def seed_runs(
    url: str,
    statuses: list[str],
    *,
    failed_messages: int = 0,
    name: str = "deploy",
    kind: str = "route",
) -> None:
    from hermes.jobrunner.ledger import Ledger, Outgoing

    store = StateStore(url)
    try:
        ledger = Ledger(store.engine)
        for status in statuses:
            rid = ledger.start_run(kind=kind, name=name, trigger="message")
            assert rid is not None
            ledger.finish_run(rid, status, error=None if status == "ok" else f"{status}: disk full")
        ledger.enqueue([Outgoing(f"k{i}", "qq", "c2c", "U", "x") for i in range(failed_messages)])
        for row in ledger.claim(["qq"], failed_messages):
            ledger.failed(row.id, "gave up")
    finally:
        store.close()


def test_a_route_failing_repeatedly_shows_as_degraded(sqlite_url):
    seed(sqlite_url, [{"platform": "qq"}])
    seed_runs(sqlite_url, ["ok", "error", "timeout", "error"])
    result = status(sqlite_url)
    assert result.returncode == 1
    assert result.stdout.startswith(
        "WARNING: route deploy failing (3 failures in the last hour, last: error)"
    )
    assert "ROUTE/JOB" in result.stdout
    assert "error: disk full" in result.stdout
    doc = json.loads(status(sqlite_url, "--json").stdout)
    assert doc["jobs"][0]["failures"] == 3


def test_a_route_that_failed_but_recovered_is_ok(sqlite_url):
    seed(sqlite_url, [{"platform": "qq"}])
    seed_runs(sqlite_url, ["error", "error", "error", "ok"])
    assert status(sqlite_url).returncode == 0


def test_failed_outgoing_messages_show_as_degraded(sqlite_url):
    seed(sqlite_url, [{"platform": "qq"}])
    seed_runs(sqlite_url, ["ok"], failed_messages=1)
    result = status(sqlite_url)
    assert result.returncode == 1
    assert "1 outgoing messages failed in the last hour" in result.stdout
    assert "outbox: 0 pending, 0 sending; last hour: 1 failed, 0 expired" in result.stdout


def test_a_message_pending_too_long_shows_as_degraded(sqlite_url):
    from sqlalchemy import update

    from hermes.jobrunner.ledger import Ledger, Outgoing
    from watchdog.schema import outbox

    seed(sqlite_url, [{"platform": "qq"}])
    store = StateStore(sqlite_url)
    try:
        ledger = Ledger(store.engine)
        ledger.enqueue([Outgoing(f"k{i}", "qq", "c2c", "U", "x") for i in range(3)])
        (sending,) = ledger.claim(["qq"], 1)
        now = datetime.now(UTC)
        ages = {sending.id: 30, sending.id + 1: 20, sending.id + 2: 1}  # minutes
        with store.engine.begin() as conn:
            for row_id, minutes in ages.items():
                conn.execute(
                    update(outbox)
                    .where(outbox.c.id == row_id)
                    .values(created_at=now - timedelta(minutes=minutes))
                )
    finally:
        store.close()
    result = status(sqlite_url)
    assert result.returncode == 1
    # The oldest *pending* message counts (20 min), not the one being sent (30 min).
    assert re.search(r"2 outgoing messages pending, the oldest for 20m0\ds", result.stdout)
    assert re.search(r"outbox: 2 pending \(oldest 20m0\ds\), 1 sending;", result.stdout)


# -- a gateway process that is gone


def seed_here(url: str, pid: int, started_at: datetime) -> None:
    """An instance row of a gateway on this host, ticking a moment ago."""
    now = datetime.now(UTC)
    store = StateStore(url)
    try:
        store.migrate()
        store.begin_instance(
            {
                "id": "66666666-2222-3333-4444-555555555555",
                "host": socket.gethostname(),
                "pid": pid,
                "version": "0.1.0",
                "started_at": started_at,
                "last_tick_at": now - timedelta(seconds=0.5),
                "tick_interval": 2.0,
                "pinging": True,
                "status_text": "1/1 platforms ok",
                "store_failures": 0,
            }
        )
        store.replace_platforms([row(now, "qq")])
    finally:
        store.close()


async def test_status_right_after_the_gateway_was_killed_says_it_is_gone(tmp_path):
    config = tmp_path / "gw.toml"
    config.write_text(
        '[store]\ndirectory = "state"\n[watchdog]\ntick_interval = 0.2\n'
        '[platforms.bot]\nadapter = "demo"\n'
    )
    gw = await GatewayProcess(config).start()
    try:
        await gw.wait_line(r"platform=bot health degraded -> ok", timeout=20)
        alive = await asyncio.to_thread(run_cli, HERMES_WATCHDOG, "status", "--config", str(config))
        assert alive.returncode == 0, alive.stdout + alive.stderr
        assert gw.proc is not None
        pid = gw.proc.pid
        gw.signal(signal.SIGKILL)
        assert await gw.wait(10) == -signal.SIGKILL
    finally:
        await gw.kill()
    # Well within the staleness window (and a long one): the pid alone says it.
    args = ("status", "--config", str(config), "--stale-after", "600")
    dead = await asyncio.to_thread(run_cli, HERMES_WATCHDOG, *args)
    assert dead.returncode == 2, dead.stdout + dead.stderr
    assert dead.stdout.startswith(
        f"CRITICAL: gateway pid {pid} on {socket.gethostname()} is gone (no such process); "
        "last tick "
    )
    assert "no stop recorded: killed or crashed" in dead.stdout.splitlines()[0]
    assert "NOT pinging systemd" in dead.stdout
    doc = json.loads((await asyncio.to_thread(run_cli, HERMES_WATCHDOG, *args, "--json")).stdout)
    assert (doc["overall"], doc["exit_code"]) == ("dead", 2)
    assert (doc["instance"]["process_alive"], doc["instance"]["ticking"]) == (False, False)


def test_a_pid_now_held_by_a_younger_process_is_a_dead_gateway(sqlite_url):
    other = subprocess.Popen(["sleep", "60"])
    try:
        # The gateway started an hour ago; whatever holds its pid now started just now.
        seed_here(sqlite_url, other.pid, datetime.now(UTC) - timedelta(hours=1))
        result = status(sqlite_url, "--stale-after", "600")
        json_doc = json.loads(status(sqlite_url, "--json").stdout)
    finally:
        other.kill()
        other.wait()
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout.startswith(
        f"CRITICAL: gateway pid {other.pid} on {socket.gethostname()} is gone "
        f"(pid {other.pid} now belongs to another process, started "
    )
    assert json_doc["overall"] == "dead"


def test_a_live_gateway_pid_on_this_host_keeps_the_staleness_rule(sqlite_url):
    # The process holding the pid started before the row: it is the gateway, alive.
    seed_here(sqlite_url, os.getpid(), datetime.now(UTC))
    ok = status(sqlite_url, "--json")
    assert ok.returncode == 0, ok.stdout
    assert json.loads(ok.stdout)["instance"]["process_alive"] is True
    # Alive but not ticking: hung, as before.
    hung = status(sqlite_url, "--stale-after", "0.1")
    assert hung.returncode == 2
    assert hung.stdout.startswith("CRITICAL: gateway not ticking")


def test_a_gateway_on_another_host_is_judged_by_its_ticks_only(sqlite_url):
    seed(sqlite_url, [{"platform": "qq"}])  # host gw1, pid 4242: nothing to check here
    result = status(sqlite_url, "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout)["instance"]["process_alive"] is None


def test_an_exited_gateway_not_yet_reaped_by_its_parent_is_gone():
    from watchdog.cli import gateway_process

    child = subprocess.Popen(["true"])
    try:
        started = datetime.now(UTC)
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, still a zombie
        assert gateway_process(socket.gethostname(), child.pid, started) == (
            False,
            "exited; a zombie its parent has not reaped",
        )
    finally:
        child.wait()
    assert gateway_process(socket.gethostname(), child.pid, started) == (False, "no such process")
    assert gateway_process("elsewhere", child.pid, started)[0] is None
