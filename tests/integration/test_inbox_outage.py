"""A database outage of 30 s while messages flow: every message handled exactly once after it.

The gateway runs on a PostgreSQL server of the test's own (``own_pg``), which is stopped
for :data:`OUTAGE` seconds while the simulator keeps sending. Counted by the simulator
(accepted replies per message it sent) and by the gateway's tables.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from hermes.inbox.intake import INBOX_FULL, InboxSettings, Intake
from hermes.inbox.schema import inbox
from hermes.inbox.store import InboxStore
from hermes.messages import InboundMessage
from hermes.simulators.qqbot import QQSimulator
from tests.integration.test_inbox import qq, table
from tests.support.configs import write_config
from tests.support.inprocess import gateway
from tests.support.notify import NotifyListener
from tests.support.pgserver import PgServer
from tests.support.timing import t
from watchdog.heartbeat import HeartbeatBoard, PlatformPolicy, PlatformRecord, Reason
from watchdog.schema import job_runs, platform_transitions
from watchdog.store import StateStore

OUTAGE = 33.0
"""Seconds the database is down: 30 s or more, as the issue asks; 33 s is the outage it
measured (120 of 129 messages lost then)."""
CATCH_UP = 25.0
"""Once the database is back, every message is answered within this (7 to 10 s here; 41 s when the retries slept up to 30 s)."""
EVERY = 0.1
"""The simulator sends one message this often, before, during and after the outage."""
MAX_PENDING = 100
"""Events waiting for their commit before the adapter stops reading: reached about
MAX_PENDING × EVERY = 10 s into the outage, so the adapter also waits for room
(and the platform holds the rest) for the last 20 s of it."""


def outage_config(directory: Path, sim: QQSimulator, url: str) -> Path:
    return write_config(
        directory,
        # The platform's allowances are far shorter than the outage: a database outage must
        # not make it look dead (reconnect_stalled, heartbeat_timeout) nor restart it.
        {
            "qq": {
                **qq(sim),
                "reconnect_timeout": 5.0,
                "start_timeout": 5.0,
                "reconnect_max_failures": 10,  # the default
            }
        },
        tick=0.1,
        store={"url": url},
        routes=[{"name": "echo", "handler": "echo"}],
        extra=f"[inbox]\nmax_pending = {MAX_PENDING}\n"
        "[outbox]\nretry_backoff = 0.05\nretry_backoff_max = 0.2\n",
    )


async def test_a_33_s_database_outage_while_messages_flow_loses_and_repeats_nothing(
    tmp_path: Path,
    sim: QQSimulator,
    own_pg: PgServer,
    notify_path: NotifyListener,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = outage_config(tmp_path, sim, own_pg.url)
    logged: list[str] = []
    sink = logger.add(lambda m: logged.append(m.record["message"]), level="INFO")
    sent: dict[str, list[str]] = {"before": [], "during": [], "after": []}
    phase = "before"

    async def keep_sending() -> None:
        for i in itertools.count():
            sent[phase].append(await sim.send_message("group", f"#{i}", chat=f"G{i % 20}"))
            await asyncio.sleep(EVERY)  # the pace of the flow, not a wait for something

    loop = asyncio.get_running_loop()
    try:
        async with gateway(config, notify_path) as (gw, task):
            await sim.wait_ready(t(10))
            sender = loop.create_task(keep_sending(), name="test:sender")
            try:
                await sim.wait_until(lambda: len(sim.replies) >= 10, t(10), "messages flowing")
                await asyncio.to_thread(own_pg.stop, "fast")
                phase = "during"
                down_at = loop.time()
                await notify_path.wait_for(
                    lambda d: "store failing" in d.fields.get("STATUS", ""),
                    t(10),
                    "the outage reported in STATUS=",
                    new=True,
                )
                await asyncio.sleep(OUTAGE - (loop.time() - down_at))  # the outage itself
                await asyncio.to_thread(own_pg.start)
                up_at = loop.time()
                phase = "after"
                await asyncio.sleep(1.0)  # a few messages after it, too
            finally:
                sender.cancel()
            ids = [i for part in sent.values() for i in part]
            await sim.wait_until(
                lambda: sim.reply_census(ids).exactly_once or bool(sim.reply_census(ids).repeated),
                t(90),
                "every message answered",
            )
            caught_up = loop.time()
            assert gw.intake is not None
            refused = gw.intake.refused
            escalation = gw.engine.escalation
    finally:
        logger.remove(sink)
    assert task.result() == 0
    assert escalation is None
    assert up_at - down_at >= OUTAGE
    assert caught_up - up_at < t(CATCH_UP)
    assert len(sent["during"]) >= 0.8 * OUTAGE / EVERY

    census = sim.reply_census(ids)
    assert census.exactly_once, (census.unanswered[:5], census.repeated)
    rows = table(config, inbox)
    per_message = Counter(r["message_id"] for r in rows)
    assert {i: per_message[i] for i in ids if per_message[i] != 1} == {}
    assert Counter(r["status"] for r in rows) == {"handled": len(ids)}
    runs = Counter((r["message_id"], r["status"]) for r in table(config, job_runs))
    assert {k: n for k, n in runs.items() if k[1] != "ok" or n != 1} == {}
    assert len(runs) == len(ids)
    # The inbox filled during the outage: the adapter stopped reading and the platform
    # held the rest, replayed after the outage.
    assert refused > 0

    # Reported, not escalated: the pings went on all along ...
    pings = [d.at for d in notify_path.pings() if down_at - 1 <= d.at <= caught_up]
    assert max(b - a for a, b in itertools.pairwise(pings)) < t(1.0)
    # ... and the platform never looked dead, nor was restarted.
    bad = [
        (r["to_health"], r["reason_code"], r["reason_message"])
        for r in table(config, platform_transitions)
        if r["platform"] == "qq" and r["to_health"] in ("failing", "fatal")
    ]
    assert bad == []
    # What it was instead: degraded, because the gateway held it, saying why.
    held = [
        r["reason_message"]
        for r in table(config, platform_transitions)
        if r["platform"] == "qq" and r["reason_code"] == "inbox_full"
    ]
    assert held, "the hold is on record"
    assert "state store, unavailable: OperationalError" in held[0]
    # Reported once, not once a second: APScheduler polls its job store every second, and
    # logged a three-line warning each time, for as long as the database was down.
    assert [r for r in caplog.records if "Error getting due jobs" in r.getMessage()] == []
    assert sum("scheduled jobs: state store unavailable" in m for m in logged) == 1
    assert sum("scheduled jobs: state store works again" in m for m in logged) == 1
    print(f"outage {up_at - down_at:.1f} s, caught up {caught_up - up_at:.1f} s after it")


def message(n: int) -> InboundMessage:
    return InboundMessage(
        platform="qq",
        message_id=f"m{n}",
        chat_kind="group",
        chat_id="G1",
        author_id="u1",
        text=f"hello {n}",
        timestamp=None,
    )


def held(record: PlatformRecord) -> Reason | None:
    return record.held  # read afresh each time (mypy would narrow the attribute)


async def test_a_platform_whose_events_the_inbox_refuses_is_held_until_there_is_room(
    tmp_path: Path,
) -> None:
    state = StateStore(f"sqlite:///{tmp_path / 'hermes.db'}")
    state.migrate()
    board = HeartbeatBoard()
    record = board.register("qq", "qqbot", required=True, policy=PlatformPolicy())
    handed: list[Any] = []
    intake = Intake(
        InboxStore(state.engine, "instance-1"),
        InboxSettings(max_pending=2),
        on_stored=handed.extend,
        board=board,
    )
    try:
        assert intake.offer(message(1), {"seq": 1})
        assert intake.offer(message(2), {"seq": 2})
        assert held(record) is None
        assert not intake.offer(message(3), {"seq": 3})
        # Refused: the adapter stops reading now, and that is the gateway's doing.
        reason = held(record)
        assert reason is not None
        assert reason.code == INBOX_FULL
        assert "2 events wait for the state store, not keeping up" in reason.message
        await intake.flush()
        assert len(handed) == 2
        assert held(record) is None
        assert record.released_at is not None
    finally:
        intake.close()
        state.close()


async def test_room_comes_back_only_once_half_the_inbox_has_drained(tmp_path: Path) -> None:
    """Each reopening costs the platform a replay of everything after the cursor: reopening
    after every batch made a long backlog's traffic grow with its square."""
    state = StateStore(f"sqlite:///{tmp_path / 'hermes.db'}")
    state.migrate()
    board = HeartbeatBoard()
    record = board.register("qq", "qqbot", required=True, policy=PlatformPolicy())
    intake = Intake(
        InboxStore(state.engine, "instance-1"),
        InboxSettings(max_pending=6, batch=2),
        on_stored=lambda rows: None,
        board=board,
    )
    try:
        for n in range(6):
            assert intake.offer(message(n), {"seq": n})
        assert not intake.offer(message(6), {"seq": 6})
        assert held(record) is not None
        await intake.flush(batches=1)  # 4 still wait: more than half
        assert intake.pending == 4
        assert not intake.offer(message(6), {"seq": 6})
        assert held(record) is not None
        await intake.flush(batches=1)  # 2 wait: half has drained
        assert intake.pending == 2
        assert held(record) is None
        assert intake.offer(message(6), {"seq": 6})
    finally:
        intake.close()
        state.close()
