"""``hermes run`` as a subprocess talking to a real NOTIFY_SOCKET, as it does under systemd."""

from __future__ import annotations

import itertools
import signal
import statistics

from tests.support.configs import write_config
from tests.support.proc import HERMES, GatewayProcess, run_cli
from tests.support.timing import t

TICK = 0.1


async def start(tmp_path, notify, platforms, *, watchdog_sec: float = 5, **kw) -> GatewayProcess:
    config = write_config(tmp_path, platforms, tick=kw.pop("tick", TICK), **kw)
    return await GatewayProcess(config, notify.env(watchdog_sec)).start()


async def test_ready_then_pings_at_the_tick_cadence_then_stopping_on_sigterm(tmp_path, notify):
    gw = await start(tmp_path, notify, {"bot": {}})
    try:
        ready = await notify.wait_for(lambda d: d.fields.get("READY") == "1", t(15), "READY=1")
        await notify.until(
            lambda: len([p for p in notify.pings() if p.at > ready.at]) >= 20, t(10), "20 pings"
        )
        pings = [p.at for p in notify.pings()]
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert 0.5 * TICK <= statistics.median(gaps) <= 2 * TICK, gaps
        assert max(gaps) < t(5 * TICK), gaps
        gw.signal(signal.SIGTERM)
        assert await gw.wait(t(10)) == 0
    finally:
        await gw.kill()
    notify.drain()
    stopping = notify.with_field("STOPPING", "1")
    assert len(stopping) == 1
    assert not [p for p in notify.pings() if p.at > stopping[0].at]
    after = [d.fields for d in notify.datagrams if d.at >= stopping[0].at]
    # The cause when the stop begins, and as the very last notification.
    assert after[1:] == [
        {"STATUS": "stopping (exit 0): SIGTERM"},
        {"STATUS": "stopped (exit 0): SIGTERM"},
    ]


async def test_an_escalation_stops_the_pings_and_exits_75_with_the_cause_as_the_last_status(
    tmp_path, notify
):
    gw = await start(
        tmp_path, notify, {"bot": {"restart_max": 0, "runs": [["connect", "behave 0.5", "return"]]}}
    )
    try:
        assert await gw.wait(t(15)) == 75
    finally:
        await gw.kill()
    notify.drain()
    escalated = next(
        d for d in notify.datagrams if d.fields.get("STATUS", "").startswith("ESCALATING (exit 75)")
    )
    assert "bot: adapter_exited" in escalated.fields["STATUS"]
    # No WATCHDOG=trigger: systemd would record Result=watchdog instead of exit status 75.
    assert not notify.with_field("WATCHDOG", "trigger")
    stopping = notify.with_field("STOPPING", "1")
    assert len(stopping) == 1 and stopping[0].at >= escalated.at
    # The last word, which systemd keeps as StatusText next to the exit status.
    last = notify.datagrams[-1].fields
    assert list(last) == ["STATUS"], last
    assert last["STATUS"].startswith("stopped (exit 75): fatal: bot: adapter_exited: "), last
    assert "the stop did not finish" not in gw.output
    returned = gw.markers("bot", "return")[0]
    pings = [p.at for p in notify.pings()]
    assert pings, "the gateway pinged while healthy"
    # The last ping is from the tick before the fault was seen; none after the verdict.
    assert max(pings) < escalated.at
    assert max(pings) < returned + t(TICK) + 0.05
    assert escalated.at - returned <= t(TICK) + 0.1


async def test_an_escalation_whose_stop_hangs_asks_systemd_to_kill_it_once_over_budget(
    tmp_path, notify_path
):
    notify = notify_path
    gw = await start(
        tmp_path,
        notify,
        {
            "bot": {"restart_max": 0, "runs": [["connect", "behave 0.5", "return"]]},
            "stuck": {"close_blocks": 30},
        },
        gateway={"shutdown_timeout": 0.5},
    )
    try:
        trigger = await notify.wait_for(
            lambda d: d.fields.get("WATCHDOG") == "trigger", t(20), "WATCHDOG=trigger"
        )
        # Logged after the trigger went out (the hung thread might hold the log's lock).
        await gw.wait_line(r"the stop did not finish within 3\.5 s; sent WATCHDOG=trigger", 5)
        # Only systemd's answer (SIGABRT, then SIGKILL) ends this process: it is still blocked.
        assert gw.proc is not None and gw.proc.returncode is None
    finally:
        await gw.kill()
    notify.drain()
    stopping = notify.with_field("STOPPING", "1")[0]
    assert gw.markers("stuck", "close-block-start")
    # Budget 0.5 s + 3 s of grace, counted from the start of the stop.
    assert 3.5 <= trigger.at - stopping.at <= 3.5 + t(1.5), trigger.at - stopping.at
    before = notify.datagrams[notify.datagrams.index(trigger) - 1].fields
    assert before["STATUS"].startswith(
        "stop hung for 3.5 s, WATCHDOG=trigger sent; escalation (exit 75): fatal: bot: adapter_exited"
    ), before


async def test_a_non_retryable_fatal_exits_78_without_trigger_and_a_utf8_status(tmp_path, notify):
    gw = await start(
        tmp_path,
        notify,
        {
            "qq-main": {
                "runs": [["connect", "fatal qq_invalid_token final 令牌无效，请检查 AppSecret"]]
            }
        },
    )
    try:
        assert await gw.wait(t(15)) == 78
    finally:
        await gw.kill()
    notify.drain()
    statuses = [d.fields["STATUS"] for d in notify.with_field("STATUS")]
    assert any("qq-main: qq_invalid_token: 令牌无效，请检查 AppSecret" in s for s in statuses), (
        statuses
    )
    assert not notify.with_field("WATCHDOG", "trigger")


async def test_no_ping_while_the_event_loop_is_blocked(tmp_path, notify):
    gw = await start(
        tmp_path, notify, {"bot": {"runs": [["connect", "behave 0.5", "block 1.5", "behave"]]}}
    )
    try:
        await gw.wait_line(r"SCRIPT bot block-end", t(15))
        end = gw.markers("bot", "block-end")[0]
        await notify.until(
            lambda: any(p.at > end + 0.2 for p in notify.pings()), t(5), "pings resume"
        )
        gw.signal(signal.SIGTERM)
        assert await gw.wait(t(10)) == 0
    finally:
        await gw.kill()
    start_ = gw.markers("bot", "block-start")[0]
    pings = [p.at for p in notify.pings()]
    before = [p for p in pings if p <= start_ + 0.05]
    during = [p for p in pings if start_ + 0.05 < p < end]
    after = [p for p in pings if p >= end]
    assert before, "pings before the block"
    assert during == []
    assert after, "pings after the block"
    assert min(after) - max(before) >= 1.4


async def test_sighup_reloads_with_reloading_and_ready(tmp_path, notify):
    gw = await start(tmp_path, notify, {"a": {}})
    try:
        await notify.wait_for(lambda d: d.fields.get("READY") == "1", t(15), "READY=1")
        write_config(tmp_path, {"a": {}, "b": {}}, tick=TICK)
        gw.signal(signal.SIGHUP)
        reloading = await notify.wait_for(
            lambda d: d.fields.get("RELOADING") == "1", t(10), "RELOADING=1"
        )
        assert int(reloading.fields["MONOTONIC_USEC"]) > 0
        await notify.wait_for(
            lambda d: d.fields.get("READY") == "1" and d.at >= reloading.at, t(10), "READY=1 again"
        )
        await gw.wait_line(r"configuration reloaded: 1 added, 0 changed, 0 removed", t(10))
        await gw.wait_line(r"platform=b declared connected", t(10))
        gw.signal(signal.SIGTERM)
        assert await gw.wait(t(10)) == 0
    finally:
        await gw.kill()


async def test_a_tick_slower_than_half_the_watchdog_timeout_is_refused_before_touching_anything(
    tmp_path, notify
):
    gw = await start(tmp_path, notify, {"a": {}}, tick=0.8, watchdog_sec=1)
    try:
        assert await gw.wait(t(15)) == 78
    finally:
        await gw.kill()
    assert "more than half of systemd's WatchdogSec=1 s" in gw.output
    assert not (tmp_path / "state").exists()
    notify.drain()
    assert not notify.with_field("READY")


def test_a_bad_configuration_exits_78_naming_the_key_and_touches_nothing(tmp_path):
    config = write_config(tmp_path, {"a": {"heartbeat_ttl": -3, "runs": "nope"}})
    result = run_cli(HERMES, "run", "--config", str(config))
    assert result.returncode == 78
    assert f"hermes: invalid configuration in {config}:" in result.stderr
    assert "platforms.a.heartbeat_ttl: Input should be greater than 0 (got -3)" in result.stderr
    assert "platforms.a.runs: Input should be a valid list" in result.stderr
    assert not (tmp_path / "state").exists()
    check = run_cli(HERMES, "check", "--config", str(config))
    assert check.returncode == 78
    assert check.stderr == result.stderr


def test_check_summarises_a_good_configuration(tmp_path):
    config = write_config(tmp_path, {"a": {"required": False}})
    result = run_cli(HERMES, "check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "platform a: adapter tests.scripted:ScriptedAdapter (optional)" in result.stdout
    assert not (tmp_path / "state").exists()


async def test_an_adapter_ignoring_close_and_cancel_cannot_stall_the_shutdown(tmp_path, notify):
    gw = await start(
        tmp_path,
        notify,
        {"stubborn": {"runs": [["connect", "ignore-close"]]}},
        gateway={"shutdown_timeout": 3},
    )
    try:
        await notify.wait_for(lambda d: d.fields.get("READY") == "1", t(15), "READY=1")
        await gw.wait_line(r"platform=stubborn declared connected", t(10))
        gw.signal(signal.SIGTERM)
        assert await gw.wait(t(10)) == 0
    finally:
        await gw.kill()
    assert "adapters did not all stop within 1.8 s" in gw.output
    assert "final state written to the store" in gw.output
    assert "stopped (exit 0)" in gw.output
    assert "abandoning tasks that ignore cancellation: platform:stubborn#1" in gw.output


def test_a_database_driver_that_is_not_installed_is_a_configuration_error(tmp_path):
    config = write_config(
        tmp_path, {"a": {}}, store={"url": "postgresql+pg8000://hermes@127.0.0.1/x"}
    )
    result = run_cli(HERMES, "run", "--config", str(config))
    assert result.returncode == 78, result.stderr
    assert "cannot use database postgresql+pg8000://hermes@127.0.0.1/x" in result.stderr
    assert "No module named 'pg8000'" in result.stderr
