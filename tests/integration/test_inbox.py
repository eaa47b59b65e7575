"""The inbox: every inbound message stored before a route sees it, none dropped, none run twice.

Counted by the simulator (what it sent, what it was answered), not by the gateway's
own tables alone.
"""

from __future__ import annotations

import signal
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from hermes.config import load_config
from hermes.inbox.schema import inbound_cursors, inbox
from hermes.simulators.qqbot import QQSimulator
from tests.support.configs import qq_platform, write_config
from tests.support.inprocess import gateway
from tests.support.proc import HERMES_WATCHDOG, GatewayProcess, run_cli
from tests.support.timing import t
from watchdog.schema import job_runs, platform_transitions
from watchdog.store import StateStore

TICK = 0.1


def qq(sim: QQSimulator, **extra: Any) -> dict[str, Any]:
    # Reconnects the gateway asks for (inbox full) do not count as failures, but a long test
    # of many reconnects should not hit the count by accident either.
    return qq_platform(sim, reconnect_max_failures=50, **extra)


def config_for(
    directory: Path, sim: QQSimulator, *, inbox_table: str = "", route: str = "", **qq_extra: Any
) -> Path:
    return write_config(
        directory,
        {"qq": qq(sim, **qq_extra)},
        tick=TICK,
        routes=[{"name": "echo", "handler": "echo", **({"on_crash": route} if route else {})}],
        extra=inbox_table + "\n[outbox]\nretry_backoff = 0.05\nretry_backoff_max = 0.2\n",
    )


def table(config: Path, t_: Any) -> list[dict[str, Any]]:
    store = StateStore(load_config(config).database_url, read_only=True)
    try:
        with store.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(t_)).mappings()]
    finally:
        store.close()


def age_cursor(config: Path, seconds: float) -> None:
    store = StateStore(load_config(config).database_url)
    try:
        with store.engine.begin() as conn:
            conn.execute(
                update(inbound_cursors).values(
                    updated_at=datetime.now(UTC) - timedelta(seconds=seconds)
                )
            )
    finally:
        store.close()


def accepted_replies(sim: QQSimulator) -> Counter[str]:
    """Replies the platform accepted, per message replied to."""
    return Counter(str(m.body.get("msg_id")) for m in sim.sent if m.status == 200)


def assert_each_exactly_once(config: Path, sim: QQSimulator, ids: list[str]) -> None:
    """One inbox row, one finished run and one reply per message the simulator sent."""
    rows = table(config, inbox)
    by_message = Counter(r["message_id"] for r in rows)
    assert {i: by_message[i] for i in ids if by_message[i] != 1} == {}
    assert {r["status"] for r in rows} == {"handled"}
    ok_runs = Counter(r["message_id"] for r in table(config, job_runs) if r["status"] == "ok")
    assert {i: ok_runs[i] for i in ids if ok_runs[i] != 1} == {}
    replies = accepted_replies(sim)
    assert {i: replies[i] for i in ids if replies[i] != 1} == {}


async def test_a_burst_larger_than_every_queue_is_stored_and_answered_without_a_drop(tmp_path, sim):
    # Far more messages than the inbox may hold unstored (max_pending), than a batch, and
    # than the runner may hold in memory (max_concurrency + max_waiting).
    config = config_for(
        tmp_path,
        sim,
        inbox_table="[inbox]\nbatch = 50\nflush_after = 0.05\nmax_pending = 100\n"
        "[runner]\nmax_concurrency = 8\nmax_waiting = 20\n",
    )
    n = 3000
    async with gateway(config) as (gw, task):
        await sim.wait_ready(t(5))
        ids = await sim.burst(n, kind="group", chats=[f"G{i}" for i in range(40)])
        await sim.wait_until(
            lambda: len(accepted_replies(sim)) >= n, t(60), "every message answered"
        )
        assert gw.intake is not None
        refused = gw.intake.refused
    assert task.result() == 0
    # The inbox was full at times: the adapter left events with the platform, which
    # replayed them after a resume. None was dropped.
    assert refused > 0
    assert_each_exactly_once(config, sim, ids)


async def test_an_event_that_cannot_be_decoded_is_counted_lost_in_sql_and_shown(tmp_path, sim):
    config = config_for(tmp_path, sim)
    async with gateway(config) as (gw, task):
        conn = await sim.wait_ready(t(5))
        await conn.ws.send("{this is not json")
        await sim.dispatch("C2C_MESSAGE_CREATE", {"id": "x", "author": {}})  # no user_openid
        after = await sim.send_message("c2c", "after them")
        await sim.wait_until(lambda: accepted_replies(sim)[after] == 1, t(5), "answered")
        assert gw.intake is not None
        await gw.intake.flush()
    assert task.result() == 0
    ((cursor,),) = [[r for r in table(config, inbound_cursors) if r["platform"] == "qq"]]
    assert cursor["lost"] == 2
    assert "C2C_MESSAGE_CREATE" in cursor["last_lost"]
    status = run_cli(HERMES_WATCHDOG, "status", "--config", str(config))
    assert "on record: 0 gaps, 2 lost" in status.stdout, status.stdout
    assert_each_exactly_once(config, sim, [after])


async def test_an_event_already_in_the_inbox_runs_nothing_again(tmp_path, sim):
    config = config_for(tmp_path, sim)
    async with gateway(config) as (_gw, task):
        await sim.wait_ready(t(5))
        first = await sim.send_message("c2c", "once")
        await sim.wait_until(lambda: accepted_replies(sim)[first] == 1, t(5), "answered")
    assert task.result() == 0
    # A new process, whose adapter has never seen the event: the platform pushes it again.
    async with gateway(config) as (gw, task):
        await sim.wait_ready(t(5), count=2)
        payload = sim.message_payload("c2c", "once", message_id=first)
        await sim.dispatch("C2C_MESSAGE_CREATE", payload, event_id=f"again:{first}")
        sentinel = await sim.send_message("c2c", "after it")
        await sim.wait_until(lambda: accepted_replies(sim)[sentinel] == 1, t(5), "sentinel")
        assert gw.intake is not None
        assert gw.intake.replayed == 1
    assert task.result() == 0
    assert_each_exactly_once(config, sim, [first, sentinel])


async def test_a_killed_gateway_resumes_from_its_stored_cursor_and_loses_nothing(tmp_path, sim):
    config = config_for(tmp_path, sim, route="retry")
    env = {"QQ_SECRET": sim.client_secret}
    first = await GatewayProcess(config, env).start()
    ids: list[str] = []
    try:
        await sim.wait_ready(t(15))
        for i in range(300):
            ids.append(await sim.send_message("group", f"before {i}", chat=f"G{i % 3}"))
        await sim.wait_until(lambda: len(accepted_replies(sim)) >= 20, t(15), "some replies")
        first.signal(signal.SIGKILL)
        assert await first.wait(t(10)) == -signal.SIGKILL
    finally:
        await first.kill()
    # While no gateway runs, the platform keeps the session's events for it.
    ids += [await sim.send_message("group", f"while down {i}", chat="G0") for i in range(100)]
    (cursor,) = table(config, inbound_cursors)
    assert cursor["cursor"] is not None
    second = await GatewayProcess(config, env).start()
    try:
        conn = await sim.wait_ready(t(15), count=2)
        assert conn.frames[0].op == 6, "the new process resumed the stored session"
        await sim.wait_until(
            lambda: all(accepted_replies(sim)[i] >= 1 for i in ids), t(60), "every message"
        )
        second.signal(signal.SIGTERM)
        assert await second.wait(t(15)) == 0
    finally:
        await second.kill()
    assert_each_exactly_once(config, sim, ids)
    assert [
        r for r in table(config, platform_transitions) if r["reason_code"] == "inbound_gap"
    ] == []


@pytest.mark.parametrize("why", ["expired", "refused"])
async def test_a_resume_that_cannot_be_made_is_recorded_as_an_inbound_gap(tmp_path, sim, why):
    config = config_for(tmp_path, sim, resume_window=60.0)
    async with gateway(config) as (_gw, task):
        await sim.wait_ready(t(5))
        first = await sim.send_message("c2c", "stored")
        await sim.wait_until(lambda: accepted_replies(sim)[first] == 1, t(5), "answered")
    assert task.result() == 0
    if why == "expired":
        age_cursor(config, 61.0)  # the stored cursor is older than resume_window
    else:
        assert sim.session is not None
        sim.session.ended = True  # the platform has forgotten the session
    async with gateway(config) as (_gw, task):
        conn = await sim.wait_ready(t(5), count=2)
        later = await sim.send_message("c2c", "after the gap")
        await sim.wait_until(lambda: accepted_replies(sim)[later] == 1, t(5), "answered")
    assert task.result() == 0
    assert conn.frames[0].op == 2  # a new session
    (cursor,) = table(config, inbound_cursors)
    assert cursor["gaps"] == 1
    gaps = [r for r in table(config, platform_transitions) if r["reason_code"] == "inbound_gap"]
    assert len(gaps) == 1
    assert gaps[0]["platform"] == "qq"
    assert ("older than resume_window" if why == "expired" else "refused to resume") in gaps[0][
        "reason_message"
    ]
    # What an operator reads: status counts it, history lists it.
    status = run_cli(HERMES_WATCHDOG, "status", "--config", str(config))
    assert "on record: 1 gaps, 0 lost" in status.stdout, status.stdout
    assert "qq: last gap" in status.stdout
    history = run_cli(HERMES_WATCHDOG, "history", "--config", str(config))
    assert "inbound_gap" in history.stdout, history.stdout
