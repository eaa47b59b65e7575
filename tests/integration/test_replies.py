"""The durable reply path at speed: group commits of runs, replies sent as soon as committed.

Run starts, run ends with their outbox rows, and delivered marks are written in batches
(:class:`~hermes.jobrunner.groupcommit.GroupCommit`); a reply claimed in the transaction
that stores it goes straight to its chat's sender. Counted by the simulator where it can be.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from hermes.config import load_config
from hermes.jobrunner.groupcommit import GroupCommit
from hermes.jobrunner.ledger import (
    FinishRun,
    Ledger,
    MarkDelivered,
    Outgoing,
    StartRun,
)
from hermes.simulators.qqbot import QQSimulator
from tests.support.configs import qq_platform, write_config
from tests.support.inprocess import gateway
from tests.support.timing import t
from watchdog.store import StateStore
from watchdog.threads import DaemonWorker

TICK = 0.1
CHATS = ["G1", "G2", "G3"]


def config_for(directory: Path, sim: QQSimulator, *, outbox: str, runner: str = "") -> Path:
    return write_config(
        directory,
        {"qq": qq_platform(sim)},
        tick=TICK,
        routes=[{"name": "echo", "handler": "echo"}],
        extra=f"[runner]\ncommit_batch = 8\n{runner}\n[outbox]\n{outbox}\n",
    )


def outbox_rows(config: Path) -> list[dict[str, Any]]:
    store = StateStore(load_config(config).database_url)
    try:
        return Ledger(store.engine).outbox_rows()
    finally:
        store.close()


def delivered_by_chat(sim: QQSimulator) -> dict[str, list[str]]:
    chats: dict[str, list[str]] = {}
    for m in sim.sent:
        if m.status == 200:
            chats.setdefault(m.target, []).append(str(m.body["content"]))
    return chats


async def send_to_chats(sim: QQSimulator, per_chat: int) -> list[str]:
    ids = []
    for i in range(per_chat):
        for chat in CHATS:
            ids.append(await sim.send_message("group", f"{chat} #{i}", chat=chat))
    return ids


async def test_a_reply_goes_out_when_its_row_is_committed_not_when_the_outbox_polls(
    tmp_path, sim, notify_path
):
    config = config_for(tmp_path, sim, outbox="poll_interval = 3600")
    per_chat = 40  # 120 replies, 15 times the commit batch
    async with gateway(config, notify_path) as (gw, _):
        assert gw.ledger is not None
        ledger = gw.ledger
        polled: list[int] = []
        claim = ledger.claim

        def counting_claim(platforms: Any, limit: int) -> Any:
            rows = claim(platforms, limit)
            polled.extend(d.id for d in rows)
            return rows

        ledger.claim = counting_claim  # type: ignore[method-assign]
        await sim.wait_ready(t(5))
        ids = await send_to_chats(sim, per_chat)
        await sim.wait_until(
            lambda: sum(map(len, delivered_by_chat(sim).values())) == len(ids),
            t(20),
            "every reply, with the outbox poll an hour away",
        )
    assert polled == []  # none went through the outbox loop
    assert Counter(str(m.body["msg_id"]) for m in sim.sent) == Counter(ids)
    rows = outbox_rows(config)
    by_chat: dict[str, list[str]] = {}
    for row in rows:  # id order: the order the replies were committed
        by_chat.setdefault(row["chat_id"], []).append(row["text"])
    assert delivered_by_chat(sim) == by_chat
    assert {r["status"] for r in rows} == {"delivered"}  # the batched marks were stored
    assert all(r["attempts"] == 1 for r in rows)


async def test_the_outbox_loop_and_the_inline_path_never_send_one_row_twice(
    tmp_path, sim, notify_path
):
    # The loop polls all the time, while group commits claim rows inline.
    config = config_for(tmp_path, sim, outbox="poll_interval = 0.001\nbatch = 2")
    per_chat = 40
    async with gateway(config, notify_path) as (gw, _):
        await sim.wait_ready(t(5))
        ids = await send_to_chats(sim, per_chat)
        await sim.wait_until(lambda: len(sim.sent) >= len(ids), t(20), "a reply to every message")
        assert gw.outbox is not None
        await gw.outbox.deliver_once()
    assert Counter(str(m.body["msg_id"]) for m in sim.sent) == Counter(ids)
    rows = outbox_rows(config)
    assert all(r["attempts"] == 1 for r in rows)
    by_chat: dict[str, list[str]] = {}
    for row in rows:
        by_chat.setdefault(row["chat_id"], []).append(row["text"])
    assert delivered_by_chat(sim) == by_chat


# -- the ledger's group commit, on SQLite and PostgreSQL


@pytest.fixture
def ledger(store_url):
    store = StateStore(store_url)
    store.migrate()
    yield Ledger(store.engine, "instance-1")
    store.close()


def reply(run: str, chat: str, n: int, text: str = "hi") -> Outgoing:
    return Outgoing(f"run:{run}:{n}", "qq", "group", chat, text, reply_to=f"m-{run}")


def test_a_batch_claims_each_chat_in_order_and_never_a_row_the_poll_has(ledger):
    runs = [ledger.start_run(kind="route", name="echo", trigger="message") for _ in range(30)]
    # A row of G1 left pending (its platform was not connected): G1's new rows wait behind
    # it, for the outbox loop; G2's go at once.
    (held,) = ledger.enqueue([reply("old", "G1", 0)])
    ops = [
        FinishRun(
            run, "ok", messages=[reply(run, "G1" if i % 2 else "G2", 0)], send_now=frozenset({"qq"})
        )
        for i, run in enumerate(runs)
    ]
    outcomes = ledger.write(ops)
    claimed = [d for o in outcomes for d in o.claimed]
    assert {d.chat_id for d in claimed} == {"G2"}
    assert [d.id for d in claimed] == sorted(d.id for d in claimed)
    assert all(d.attempts == 1 for d in claimed)
    # The loop takes G1 in order, and nothing the batch claimed.
    polled = ledger.claim(["qq"], 100)
    assert polled[0].id == held
    assert {d.chat_id for d in polled} == {"G1"}
    assert not {d.id for d in polled} & {d.id for d in claimed}
    assert ledger.claim(["qq"], 100) == []
    # A row being sent does not hold the rows committed after it: they join its chat's lane.
    (run,) = ledger.write([StartRun(kind="route", name="echo", trigger="message")])
    (later,) = ledger.write(
        [FinishRun(run, "ok", messages=[reply(run, "G2", 1)], send_now=frozenset({"qq"}))]
    )
    assert [d.chat_id for d in later.claimed] == ["G2"]
    # Marks for every claimed row, in one batch.
    ledger.write([MarkDelivered(d.id, f"p{d.id}") for d in [*claimed, *polled, *later.claimed]])
    assert {r["status"] for r in ledger.outbox_rows()} == {"delivered"}


def test_a_batch_with_a_row_the_database_refuses_fails_only_that_row(pg_url):
    store = StateStore(pg_url)
    store.migrate()
    ledger = Ledger(store.engine, "instance-1")
    try:
        starts = ledger.write(
            [
                StartRun(kind="route", name="echo", trigger="message", message_id=f"m{i}")
                for i in range(600)
            ]
        )
        ops = [
            FinishRun(
                run,
                "ok",
                output="x",
                messages=[reply(run, "G" * 300 if i == 300 else f"G{i % 7}", 0)],
                send_now=frozenset({"qq"}),
            )
            for i, run in enumerate(starts)
        ]
        outcomes = ledger.write(ops)
        assert all(not isinstance(o, BaseException) for o in outcomes)
        rows = ledger.outbox_rows()
        assert len(rows) == 600
        failed = [r for r in rows if r["status"] == "failed"]
        assert [r["chat_id"] for r in failed] == ["G" * 254 + "…"]
        assert {r["status"] for r in rows} - {"failed"} == {"pending"}  # written one by one
        bad = ledger.run(starts[300])
        assert bad is not None and bad["status"] == "error"
        assert all(ledger.run(r)["status"] == "ok" for r in starts if r != starts[300])  # type: ignore[index]
    finally:
        store.close()


# -- the committer


async def test_group_commit_batches_by_size_and_answers_each_item_alone():
    db = DaemonWorker("test-commit")
    batches: list[list[int]] = []

    def commit(items: list[int]) -> list[Any]:
        batches.append(items)
        return [ValueError(f"refused {i}") if i == 13 else i * 2 for i in items]

    writes: GroupCommit[int, int] = GroupCommit(db, commit, batch=10)
    runner = asyncio.create_task(writes.run())
    try:
        futures = [writes.submit(i) for i in range(95)]
        done = await asyncio.gather(*futures, return_exceptions=True)
    finally:
        runner.cancel()
        db.stop()
    assert [len(b) for b in batches] == [10] * 9 + [5]
    assert [d for i, d in enumerate(done) if i != 13] == [i * 2 for i in range(95) if i != 13]
    assert isinstance(done[13], ValueError)
    assert writes.commits == 10


async def test_an_outage_is_every_items_answer_and_the_committer_goes_on():
    from sqlalchemy.exc import OperationalError

    db = DaemonWorker("test-commit")
    down = True

    def commit(items: list[int]) -> list[Any]:
        if down:
            raise OperationalError("SELECT 1", {}, Exception("database is down"))
        return list(items)

    writes: GroupCommit[int, int] = GroupCommit(db, commit, batch=10)
    runner = asyncio.create_task(writes.run())
    try:
        failed = await asyncio.gather(
            *[writes.submit(i) for i in range(25)], return_exceptions=True
        )
        assert all(isinstance(f, OperationalError) for f in failed)
        down = False
        assert await asyncio.gather(*[writes.submit(i) for i in range(25)]) == list(range(25))
    finally:
        runner.cancel()
        db.stop()
