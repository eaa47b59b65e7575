"""The gateway on the test's event loop: real adapters tasks, real SQL, real NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.support.configs import write_config
from tests.support.inprocess import gateway, stored, stored_for
from tests.support.tcpproxy import TcpProxy
from tests.support.timing import t

FAILURES: dict[str, tuple[dict[str, Any], str, int]] = {
    "exited": ({"runs": [["connect", "behave 0.2", "return"]]}, "adapter_exited", 75),
    "crashed": ({"runs": [["connect", "behave 0.2", "raise kaboom"]]}, "adapter_crashed", 75),
    "heartbeat": (
        {"runs": [["connect", "behave 0.2", "silent"]], "heartbeat_ttl": 0.4},
        "heartbeat_timeout",
        75,
    ),
    "reconnect": (
        {"runs": [["connect", "reconnecting"]], "reconnect_timeout": 0.4},
        "reconnect_stalled",
        75,
    ),
    "start": ({"runs": [["hang"]], "start_timeout": 0.4}, "start_timeout", 75),
    "stopped": ({"runs": [["connect", "stopped"]]}, "adapter_stopped", 75),
    "init": ({"fail_init": True}, "adapter_init_failed", 75),
    "fatal-retryable": (
        {"runs": [["connect", "fatal qq_gateway_gone retryable gone"]]},
        "qq_gateway_gone",
        75,
    ),
    "fatal-final": ({"runs": [["connect", "fatal qq_banned final 机器人被封禁"]]}, "qq_banned", 78),
}


@pytest.mark.parametrize("mode", FAILURES)
async def test_each_failure_is_recorded_in_sql_and_escalates(tmp_path, notify_path, mode):
    settings, code, exit_code = FAILURES[mode]
    config = write_config(tmp_path, {"bot": {"restart_max": 0, **settings}, "fine": {}})
    async with gateway(config, notify_path) as (_gw, task):
        assert await asyncio.wait_for(task, t(15)) == exit_code
    instance, platforms, history = stored_for(config)
    assert instance is not None
    assert instance["exit_code"] == exit_code
    assert instance["stopped_at"] is not None
    assert code in instance["exit_reason"]
    bot = next(p for p in platforms if p["platform"] == "bot")
    assert (bot["health"], bot["reason_code"]) == ("fatal", code)
    assert bot["retryable"] is (exit_code == 75)
    fine = next(p for p in platforms if p["platform"] == "fine")
    assert (fine["health"], fine["declared_state"]) == ("ok", "stopped")
    assert any(
        h["platform"] == "bot" and h["to_health"] == "fatal" and h["reason_code"] == code
        for h in history
    )
    if mode == "crashed":
        assert "RuntimeError: kaboom" in bot["reason_message"]
    if mode == "fatal-final":
        assert bot["reason_message"] == "机器人被封禁"


async def test_a_silent_return_is_restarted_in_process_and_recovers(tmp_path, notify_path):
    config = write_config(
        tmp_path,
        {
            "bot": {
                "runs": [["connect", "behave 0.2", "return"], ["connect", "behave"]],
                "restart_backoff": 0.1,
            }
        },
    )
    async with gateway(config, notify_path) as (gw, task):
        record = gw.board["bot"]
        await notify_path.until(
            lambda: record.restarts == 1 and record.health.value == "ok", t(10), "restarted and ok"
        )
        gw.request_stop(0, "test")
        assert await asyncio.wait_for(task, t(10)) == 0
    instance, (bot,), history = stored_for(config)
    assert instance is not None
    assert (instance["exit_code"], instance["exit_reason"]) == (0, "test")
    assert (bot["health"], bot["restarts"], bot["declared_state"]) == ("ok", 1, "stopped")
    codes = [h["reason_code"] for h in history if h["to_health"] == "failing" != h["from_health"]]
    assert codes == ["adapter_exited"]


async def test_an_optional_platform_going_fatal_does_not_stop_the_gateway(tmp_path, notify_path):
    config = write_config(
        tmp_path,
        {
            "extra": {"required": False, "restart_max": 0, "runs": [["connect", "return"]]},
            "main": {},
        },
    )
    async with gateway(config, notify_path) as (gw, task):
        await notify_path.until(
            lambda: gw.board["extra"].health.value == "fatal", t(10), "extra fatal"
        )
        await notify_path.wait_for(
            lambda d: d.fields.get("WATCHDOG") == "1", t(5), "a ping after", new=True
        )
        assert not task.done()
    _, platforms, _ = stored_for(config)
    assert {p["platform"]: p["health"] for p in platforms} == {"extra": "fatal", "main": "ok"}


async def test_reload_adds_changes_and_removes_platforms(tmp_path, notify_path):
    config = write_config(tmp_path, {"a": {}, "b": {}})
    async with gateway(config, notify_path) as (gw, _task):
        write_config(tmp_path, {"b": {"heartbeat_ttl": 12}, "c": {}})
        assert await gw.reload()
        assert sorted(r.name for r in gw.board) == ["b", "c"]
        assert gw.board["b"].policy.heartbeat_ttl == 12
        reloading = notify_path.with_field("RELOADING", "1")
        assert len(reloading) == 1
        assert "MONOTONIC_USEC" in reloading[0].fields
        await notify_path.wait_for(
            lambda d: d.fields.get("READY") == "1" and d.at > reloading[0].at,
            t(5),
            "READY after reload",
        )
        # a broken file is rejected and the running configuration stays
        config.write_text("[platforms.b]\nadapter = 12\n")
        assert await gw.reload() is False
        assert sorted(r.name for r in gw.board) == ["b", "c"]
        await notify_path.wait_for(
            lambda d: "reload rejected" in d.fields.get("STATUS", ""), t(5), "reload status"
        )
        write_config(tmp_path, {"b": {"heartbeat_ttl": 12}, "c": {}})
    _, platforms, history = stored_for(config)
    assert sorted(p["platform"] for p in platforms) == ["b", "c"]
    assert any(h["platform"] == "a" and h["reason_code"] == "platform_removed" for h in history)


async def test_platforms_removed_from_the_config_leave_the_store_at_the_next_start(tmp_path):
    config = write_config(tmp_path, {"a": {}, "b": {}})
    async with gateway(config) as (_gw, _task):
        pass
    write_config(tmp_path, {"b": {}})
    async with gateway(config) as (_gw, _task):
        pass
    _, platforms, history = stored_for(config)
    assert [p["platform"] for p in platforms] == ["b"]
    assert [h["platform"] for h in history if h["reason_code"] == "platform_removed"] == ["a"]


@pytest.fixture
async def proxied_pg(pg_url) -> AsyncIterator[tuple[TcpProxy, str]]:
    """The test PostgreSQL behind a TCP proxy that can stall or cut the connection."""
    url = make_url(pg_url)
    proxy = await TcpProxy(url.host or "127.0.0.1", url.port or 5432).start()
    try:
        yield (
            proxy,
            url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
        )
    finally:
        await proxy.close()


def status_without_store_problem(after: float):
    return lambda d: d.at > after and "STATUS" in d.fields and "store" not in d.fields["STATUS"]


async def test_a_stuck_database_never_delays_a_ping_and_shows_in_status(
    tmp_path, notify_path, pg_url, proxied_pg
):
    proxy, proxied = proxied_pg
    config = write_config(tmp_path, {"bot": {}}, tick=0.1, store={"url": proxied})
    async with gateway(config, notify_path):
        await notify_path.wait_for(lambda d: d.fields.get("WATCHDOG") == "1", t(5), "first ping")
        proxy.pause()  # every byte to and from PostgreSQL is now held
        paused_at = asyncio.get_running_loop().time()
        await notify_path.wait_for(
            lambda d: "store slow" in d.fields.get("STATUS", ""), t(10), "store slow in STATUS"
        )
        window = [d for d in notify_path.pings() if d.at >= paused_at]
        gaps = [b.at - a.at for a, b in itertools.pairwise(window)]
        assert len(window) >= 5
        assert max(gaps) < t(0.5), gaps
        proxy.resume()
        resumed = asyncio.get_running_loop().time()
        await notify_path.wait_for(status_without_store_problem(resumed), t(15), "store ok again")
    instance, platforms, _ = stored(pg_url)
    assert instance is not None
    assert instance["exit_code"] == 0
    assert platforms[0]["declared_state"] == "stopped"


async def test_a_dead_database_is_reported_not_escalated_and_catches_up(
    tmp_path, notify_path, pg_url, proxied_pg
):
    proxy, proxied = proxied_pg
    script = {"runs": [["connect", "behave 0.5", "reconnecting"]], "reconnect_timeout": 60}
    config = write_config(tmp_path, {"bot": script}, store={"url": proxied})
    async with gateway(config, notify_path) as (gw, task):
        await notify_path.wait_for(lambda d: d.fields.get("WATCHDOG") == "1", t(5), "first ping")
        port = proxy.port
        await proxy.cut()  # connections reset, new ones refused
        cut_at = asyncio.get_running_loop().time()
        await notify_path.wait_for(
            lambda d: "store failing" in d.fields.get("STATUS", ""), t(15), "store failing"
        )
        # A transition while the database is unreachable ...
        await notify_path.until(
            lambda: gw.board["bot"].declared.value == "reconnecting", t(10), "reconnecting"
        )
        assert any(d.at > cut_at for d in notify_path.pings())
        assert not task.done()
        proxy.port = port
        await proxy.start()
        back = asyncio.get_running_loop().time()
        await notify_path.wait_for(status_without_store_problem(back), t(30), "store ok again")
    instance, _, history = stored(pg_url)
    # ... is not lost.
    assert any(h["to_state"] == "reconnecting" for h in history)
    assert instance is not None
    assert instance["store_failures"] >= 1


async def test_a_platform_replaced_by_reload_during_its_restart_backoff_runs_once(
    tmp_path, notify_path
):
    dying = {"runs": [["connect", "return"]], "restart_backoff": 1.0}
    config = write_config(tmp_path, {"bot": dying})
    async with gateway(config, notify_path) as (gw, _task):
        old = gw.board["bot"]
        await notify_path.until(lambda: old.restart_at is not None, t(10), "restart pending")
        write_config(tmp_path, {"bot": {"runs": [["connect", "behave"]], "heartbeat_ttl": 20}})
        assert await gw.reload()
        loop = asyncio.get_running_loop()
        past_backoff = loop.time() + 1.5
        await notify_path.until(lambda: loop.time() > past_backoff, t(10), "old backoff over")
        running = [
            t.get_name() for t in gw.tasks.pending() if t.get_name().startswith("platform:bot#")
        ]
        assert len(running) == 1, running
        assert gw.board["bot"] is not old
        assert gw.board["bot"].health.value == "ok"


async def test_a_broken_watchdog_tick_stops_the_pings(tmp_path, notify_path, monkeypatch):
    config = write_config(tmp_path, {"bot": {}})
    async with gateway(config, notify_path) as (gw, _task):
        await notify_path.wait_for(lambda d: d.fields.get("WATCHDOG") == "1", t(5), "a ping")

        def broken(now: float) -> None:
            raise RuntimeError("bug in the watchdog")

        monkeypatch.setattr(gw.engine, "evaluate", broken)
        quiet_from = len(notify_path.pings())
        # Ten ticks' worth of silence.
        with pytest.raises(AssertionError, match="no a ping after the bug"):
            await notify_path.wait_for(
                lambda d: d.fields.get("WATCHDOG") == "1", t(1.0), "a ping after the bug", new=True
            )
        assert len(notify_path.pings()) == quiet_from


@pytest.mark.parametrize("trigger_on_escalation", [True, False])
async def test_an_escalation_that_stops_in_time_never_triggers_systemd(
    tmp_path, notify_path, trigger_on_escalation
):
    config = write_config(
        tmp_path,
        {"bot": {"restart_max": 0, "runs": [["connect", "behave 0.2", "return"]]}},
        watchdog={"trigger_on_escalation": trigger_on_escalation},
    )
    async with gateway(config, notify_path) as (gw, task):
        assert await asyncio.wait_for(task, t(15)) == 75
    if trigger_on_escalation:
        # Armed for the stop, disarmed when it ended (embedded: when run() returned).
        assert gw.backstop is not None and not gw.backstop.armed
        assert gw.backstop.join(t(5)) and not gw.backstop.fired.is_set()
    else:
        assert gw.backstop is None
    notify_path.drain()
    assert not notify_path.with_field("WATCHDOG", "trigger")
    assert (
        notify_path.datagrams[-1]
        .fields["STATUS"]
        .startswith("stopped (exit 75): fatal: bot: adapter_exited")
    )
