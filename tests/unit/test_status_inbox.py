"""What ``hermes-watchdog status`` concludes from the inbox, with ``now`` passed in (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from watchdog.cli import DEGRADED, OK, assess, report_text

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def instance() -> dict[str, Any]:
    return {
        "id": "11111111-2222-3333-4444-555555555555",
        "host": "gw1",
        "pid": 4242,
        "version": "0.1.0",
        "started_at": NOW - timedelta(hours=2),
        "last_tick_at": NOW - timedelta(seconds=1),
        "tick_interval": 2.0,
        "pinging": True,
        "stopped_at": None,
    }


PLATFORM = {
    "platform": "qq",
    "adapter": "qqbot",
    "required": True,
    "declared_state": "connected",
    "health": "ok",
    "health_since": NOW - timedelta(hours=1),
    "last_heartbeat_at": NOW - timedelta(seconds=3),
    "heartbeat_ttl": 100.0,
    "restarts": 0,
}


def inbox(**kw: Any) -> dict[str, Any]:
    return {
        "waiting": 0,
        "oldest_waiting_at": None,
        "dead_recently": 0,
        "cut_off_recently": 0,
        "gaps": 0,
        "lost": 0,
        "platforms": [],
        **kw,
    }


def gap(minutes_ago: float) -> dict[str, Any]:
    return {
        "platform": "qq",
        "gaps": 1,
        "gap_events": 0,
        "last_gap": "the platform refused to resume session s after seq 9",
        "last_gap_at": NOW - timedelta(minutes=minutes_ago),
        "lost": 0,
        "last_lost": None,
    }


def judge(box: dict[str, Any]) -> Any:
    return assess(instance(), [PLATFORM], NOW, inbox=box)


def test_a_quiet_inbox_leaves_the_verdict_ok():
    assert judge(inbox()).exit_code == OK


def test_an_inbound_gap_in_the_last_hour_is_degraded_and_named():
    report = judge(inbox(gaps=1, platforms=[gap(10)]))
    assert report.exit_code == DEGRADED
    assert "qq: inbound gap" in report.summary
    assert "refused to resume session s" in report.summary
    text = report_text(report)
    assert "on record: 1 gaps, 0 lost" in text
    assert "qq: last gap" in text


def test_an_old_gap_stays_on_record_but_no_longer_degrades():
    report = judge(inbox(gaps=1, platforms=[gap(61)]))
    assert report.exit_code == OK
    assert "on record: 1 gaps" in report_text(report)


def test_a_message_waiting_for_its_run_too_long_is_degraded():
    report = judge(inbox(waiting=7, oldest_waiting_at=NOW - timedelta(minutes=6)))
    assert report.exit_code == DEGRADED
    assert "7 inbound messages waiting for a run" in report.summary
    assert judge(inbox(waiting=7, oldest_waiting_at=NOW - timedelta(minutes=4))).exit_code == OK


def test_messages_a_stop_or_crash_cut_off_are_shown_without_changing_the_verdict():
    quiet = report_text(judge(inbox()))
    assert "cut off" not in quiet
    report = judge(inbox(cut_off_recently=3))
    assert report.exit_code == OK
    assert (
        "last hour: 0 dead, 3 cut off (run cancelled by a stop or crash, not run again); "
        "on record: 0 gaps, 0 lost" in report_text(report)
    )
