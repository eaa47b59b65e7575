"""The Telegram adapter against the Bot API simulator, through the whole gateway.

Every fault the issue lists reaches the watchdog with its reason code, retryable or not,
and the gateway exits 75 or 78 in the time its configuration implies. The token never
appears in a log line or in the store, whatever went wrong.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from hermes.adapters.base import LocalInbound
from hermes.adapters.telegram import TelegramAdapter, TelegramSettings
from hermes.errors import TelegramMessageRejected
from hermes.inbox.schema import inbound_cursors, inbox
from hermes.messages import OutboundMessage
from hermes.simulators.telegram import TelegramSimulator
from tests.integration.test_inbox import table
from tests.support.configs import write_config
from tests.support.inprocess import gateway, stored_for
from tests.support.proc import GatewayProcess
from tests.support.timing import t
from watchdog.heartbeat import HeartbeatBoard, PlatformPolicy
from watchdog.schema import outbox, platform_state, platform_transitions

TICK = 0.1
FAST = {
    "token": "env:TG_TOKEN",
    "poll_timeout": 1,
    "request_timeout": 0.5,
    "reconnect_backoff": 0.05,
    "reconnect_backoff_max": 0.1,
}


@pytest.fixture
def logs() -> Any:
    """Every log line while the test runs, with its bound context (``platform=tg``)."""
    lines: list[str] = []
    sink = logger.add(
        lambda m: lines.append(str(m)), format="{level} {extra} {message}", level="DEBUG"
    )
    yield lines
    logger.remove(sink)


def platform(sim: TelegramSimulator, **extra: Any) -> dict[str, Any]:
    return {"adapter": "telegram", **sim.adapter_settings(**FAST), **extra}


def config_for(
    directory: Path,
    sim: TelegramSimulator,
    *,
    routes: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> Path:
    return write_config(
        directory,
        {"tg": platform(sim, **extra)},
        tick=TICK,
        routes=routes if routes is not None else [{"name": "echo", "handler": "echo"}],
        extra="[outbox]\nretry_backoff = 0.05\nretry_backoff_max = 0.2\n",
    )


def polled(sim: TelegramSimulator, n: int = 1) -> bool:
    return sum(p.outcome.endswith("updates") for p in sim.polls) >= n


def assert_token_nowhere(sim: TelegramSimulator, config: Path, *texts: str) -> None:
    """Not in the given log text, not in any row of the store."""
    secret = sim.token.split(":", 1)[1]
    for text in texts:
        assert secret not in text
    for t_ in (platform_state, platform_transitions, outbox, inbox, inbound_cursors):
        for row in table(config, t_):
            assert secret not in repr(row), (t_.name, row)


# -- messages


async def test_messages_of_every_chat_kind_are_answered_as_replies(tmp_path, tg):
    config = config_for(tmp_path, tg)
    async with gateway(config) as (gw, task):
        await tg.wait_until(lambda: polled(tg), t(5), "a poll")
        ids = [
            tg.message(kind, f"hi {kind}") for kind in ("private", "group", "supergroup", "channel")
        ]
        await tg.wait_until(lambda: not tg.reply_census(ids).unanswered, t(5), "four replies")
        assert gw.board["tg"].last_beat is not None
    assert task.result() == 0
    census = tg.reply_census(ids)
    assert census.exactly_once
    answered = [m for m in tg.sent if m.status == 200]
    assert sorted(m.text for m in answered) == sorted(
        f"hi {k}" for k in ("private", "group", "supergroup", "channel")
    )
    # Each message's offset was sent only after its inbox row was committed, and the stored
    # cursor is the next offset.
    (cursor,) = table(config, inbound_cursors)
    stored = cursor["cursor"]
    assert (json.loads(stored) if isinstance(stored, str) else stored) == {
        "offset": tg.next_update_id
    }
    _, (row,), _ = stored_for(config)
    assert (row["declared_state"], row["adapter"]) == ("stopped", "telegram")


async def test_a_command_addressed_to_this_bot_matches_its_route_and_others_do_not(tmp_path, tg):
    routes = [
        {
            "name": "ping",
            "prefix": "/ping",
            "handler": "python",
            "function": "tests.handlers_for_tests:shout",
        },
        {"name": "rest", "handler": "ignore"},
    ]
    config = config_for(tmp_path, tg, routes=routes)
    async with gateway(config) as (_gw, task):
        await tg.wait_until(lambda: polled(tg), t(5), "a poll")
        mine = tg.message("group", "/ping@Hermes_Sim_Bot now")
        plain = tg.message("private", "/ping")
        other = tg.message("group", "/ping@other_bot")
        await tg.wait_until(lambda: tg.replies[mine] and tg.replies[plain], t(5), "two pongs")
    assert task.result() == 0
    assert tg.replies[other] == 0
    rows = {(int(r["chat_id"]), int(r["message_id"])): r for r in table(config, inbox)}
    assert rows[mine]["text"] == "/ping now"  # the bot's name is taken off
    assert rows[other]["text"] == "/ping@other_bot"
    assert [m.text for m in tg.sent if m.reply_to == mine[1] and m.chat_id == mine[0]] == [
        "/PING NOW"
    ]


# -- faults while polling: each reaches the watchdog with its reason code


def assert_platform_never_failed(config: Path) -> None:
    _, (row,), history = stored_for(config)
    assert row["reason_code"] is None, row
    assert [h for h in history if h["to_health"] in ("failing", "fatal")] == []


def fatal_row(config: Path) -> dict[str, Any]:
    _, (row,), _ = stored_for(config)
    return row


async def test_a_token_revoked_while_running_is_fatal_not_retryable_and_exits_78(tmp_path, tg):
    config = config_for(tmp_path, tg, restart_max=3)
    proc = await GatewayProcess(config, {"TG_TOKEN": tg.token}).start()
    try:
        await tg.wait_until(lambda: polled(tg), t(15), "a poll")
        tg.revoke()
        revoked = time.monotonic()
        assert await proc.wait(t(10)) == 78, proc.output
        elapsed = time.monotonic() - revoked
    finally:
        await proc.kill()
    # The poll under way ends (1 s), the next call is refused, the next tick judges it.
    assert elapsed < 1 + 0.5 + TICK + 2.0, elapsed
    row = fatal_row(config)
    assert (row["health"], row["reason_code"], row["retryable"]) == (
        "fatal",
        "tg_invalid_token",
        False,
    )
    assert row["restarts"] == 0  # not retryable: no restart
    assert "401 Unauthorized" in row["reason_message"]
    assert_token_nowhere(tg, config, proc.output)


async def test_a_malformed_token_is_refused_at_start_with_404_and_exits_78(
    tmp_path, tg, monkeypatch
):
    monkeypatch.setenv("TG_TOKEN", "not-a-token")
    config = config_for(tmp_path, tg)
    async with gateway(config) as (_gw, task):
        assert await asyncio.wait_for(task, t(10)) == 78
    row = fatal_row(config)
    assert (row["reason_code"], row["retryable"]) == ("tg_invalid_token", False)
    assert "getMe: 404 Not Found" in row["reason_message"]


async def test_another_poller_on_the_token_is_retried_then_fatal_naming_two_instances(
    tmp_path, tg, logs
):
    config = config_for(tmp_path, tg, conflict_max=3, restart_max=2)
    async with gateway(config) as (_gw, task):
        await tg.wait_until(lambda: polled(tg), t(5), "a poll")
        tg.compete()
        assert await asyncio.wait_for(task, t(10)) == 78
    row = fatal_row(config)
    assert (row["reason_code"], row["retryable"], row["restarts"]) == ("tg_conflict", False, 0)
    assert "3 getUpdates conflicts" in row["reason_message"]
    assert "two gateway instances" in row["reason_message"]
    text = "\n".join(logs)
    assert text.count("terminated by other getUpdates request") >= 2  # retried first
    assert "'platform': 'tg'" in text
    assert_token_nowhere(tg, config, text)


async def test_a_webhook_stops_polling_for_good_unless_delete_webhook(tmp_path, tg):
    tg.set_webhook("https://example.invalid/hook")
    config = config_for(tmp_path, tg)
    async with gateway(config) as (_gw, task):
        assert await asyncio.wait_for(task, t(10)) == 78
    row = fatal_row(config)
    assert (row["reason_code"], row["retryable"]) == ("tg_webhook_active", False)
    assert "delete_webhook = true" in row["reason_message"]
    assert tg.calls["deletewebhook"] == 0

    (tmp_path / "second").mkdir()
    config = config_for(tmp_path / "second", tg, delete_webhook=True)
    async with gateway(config) as (_gw, task):
        ids = [tg.message("private", "after the webhook")]
        await tg.wait_until(lambda: not tg.reply_census(ids).unanswered, t(5), "a reply")
    assert task.result() == 0
    assert tg.calls["deletewebhook"] == 1
    assert tg.webhook_url == ""


async def test_429_on_getupdates_waits_retry_after_while_reconnecting(tmp_path, tg):
    config = config_for(tmp_path, tg)
    async with gateway(config) as (_gw, task):
        await tg.wait_until(lambda: polled(tg), t(5), "a poll")
        tg.fail_next("getUpdates", status=429, retry_after=1)
        before = len(tg.polls)
        await tg.wait_until(
            lambda: any(p.outcome == "fault 429" for p in tg.polls), t(5), "the 429"
        )
        ids = [tg.message("group", "after the 429")]
        await tg.wait_until(lambda: not tg.reply_census(ids).unanswered, t(5), "a reply")
    assert task.result() == 0
    polls = tg.polls[before:]
    limited = next(i for i, p in enumerate(polls) if p.outcome == "fault 429")
    assert polls[limited + 1].at - polls[limited].at >= 1.0  # parameters.retry_after honoured
    _, _, history = stored_for(config)
    declared = [h["to_state"] for h in history if h["from_state"] != h["to_state"]]
    assert declared == ["connected", "reconnecting", "connected", "stopped"]


@pytest.mark.parametrize("fault", ["502", "hang", "stall"])
async def test_a_platform_that_fails_or_never_answers_is_retried_then_unreachable_exit_75(
    tmp_path, tg, fault, logs
):
    # 502: one failure is retried, the second in a row gives up. A call that never answers
    # is cut off by the read timeout and gives up at once here (reconnect_max_failures 0).
    # Retryable, but no restart is left: exit 75.
    failures = 1 if fault == "502" else 0
    config = config_for(
        tmp_path, tg, reconnect_max_failures=failures, poll_read_timeout=3.2, restart_max=0
    )
    tg.repeat_hold = 0  # the poll under way ends after its 1 s, not the server's 3 s hold
    async with gateway(config) as (_gw, task):
        await tg.wait_until(lambda: polled(tg), t(5), "a poll")
        began = time.monotonic()
        if fault == "502":
            tg.fail_next("getUpdates", 2, status=502)
        elif fault == "hang":
            tg.hang_polls = True  # the request is read, and never answered
        else:
            tg.stall = True  # the connection is open, and the request is never read
        assert await asyncio.wait_for(task, t(15)) == 75
        elapsed = time.monotonic() - began
    row = fatal_row(config)
    assert (row["reason_code"], row["retryable"]) == ("tg_unreachable", True)
    assert ("2 calls" if failures else "1 call") + " in a row failed" in row["reason_message"]
    if fault == "502":
        assert "502 Bad Gateway" in row["reason_message"]
        assert elapsed < 1 + 2 * 0.1 + 1.0, elapsed  # the poll under way, two short backoffs
    else:
        assert "no answer within the time limit" in row["reason_message"]
        # The poll under way (at most 1 s), then one call cut off after 3.2 s, one tick.
        assert 3.2 <= elapsed < 1 + 3.2 + 1.0, elapsed
    assert_token_nowhere(tg, config, "\n".join(logs))


async def test_a_single_502_is_ridden_out_and_messages_keep_flowing(tmp_path, tg):
    config = config_for(tmp_path, tg)
    async with gateway(config) as (_gw, task):
        await tg.wait_until(lambda: polled(tg), t(5), "a poll")
        tg.fail_next("getUpdates", status=502)
        ids = [tg.message("private", "after a 502")]
        await tg.wait_until(lambda: not tg.reply_census(ids).unanswered, t(5), "a reply")
    assert task.result() == 0
    assert_platform_never_failed(config)


async def test_a_hung_poll_is_caught_by_the_ttl_even_when_the_client_never_times_out(tmp_path, tg):
    # TTL = poll read timeout (3.2 s) + request timeout (0.5 s), derived by the adapter.
    config = config_for(
        tmp_path,
        tg,
        adapter="tests.telegram_variants:NoReadTimeoutTelegram",
        poll_read_timeout=3.2,
        restart_max=0,
    )
    tg.repeat_hold = 0
    async with gateway(config) as (gw, task):
        await tg.wait_until(lambda: polled(tg), t(5), "a poll")
        tg.hang_polls = True
        assert await asyncio.wait_for(task, t(15)) == 75
    record = gw.board["tg"]
    assert record.reason is not None and record.reason.code == "heartbeat_timeout"
    assert record.ttl == 3.7
    assert record.last_beat is not None
    assert 3.7 < record.health_since - record.last_beat <= 3.7 + TICK + 0.1


# -- sending


async def test_sending_follows_the_platform_blocked_missing_migrated_limited_and_long(tmp_path, tg):
    config = config_for(tmp_path, tg)
    async with gateway(config) as (gw, task):
        await tg.wait_until(lambda: polled(tg), t(5), "a poll")
        adapter = gw.adapter("tg")
        assert adapter is not None
        group = tg.chat("group")
        _, mid = tg.message("group", "hello")
        await tg.wait_until(lambda: tg.replies[(group.id, mid)], t(5), "the echo")

        # A user who blocked the bot, a chat that does not exist: that message fails for
        # good (the outbox marks it failed at once), the platform is not touched.
        tg.block(500_000_001)
        with pytest.raises(TelegramMessageRejected, match="403 Forbidden: bot was blocked"):
            await adapter.send(OutboundMessage("private", "500000001", "hi"))
        with pytest.raises(TelegramMessageRejected, match="400 Bad Request: chat not found"):
            await adapter.send(OutboundMessage("private", "42", "hi"))

        # A group upgraded to a supergroup: followed, and remembered.
        new_id = tg.migrate(group.id)
        result = await adapter.send(
            OutboundMessage("group", str(group.id), "moved", reply_to=str(mid))
        )
        assert result["id"]
        await adapter.send(OutboundMessage("group", str(group.id), "again"))
        to_new = [m for m in tg.sent if m.chat_id == new_id and m.status == 200]
        assert [(m.text, m.reply_to) for m in to_new] == [("moved", mid), ("again", None)]
        assert sum(m.chat_id == group.id and m.status == 400 for m in tg.sent) == 1

        # 429: retry_after is waited for, then it goes.
        tg.fail_next("sendMessage", status=429, retry_after=1)
        began = time.monotonic()
        await adapter.send(OutboundMessage("group", str(new_id), "after a 429"))
        assert time.monotonic() - began >= 1.0
        assert tg.sent[-1].text == "after a 429" and tg.sent[-1].status == 200

        # Over 4,096 characters: several messages, the first one the reply, none refused.
        text = "\n".join(f"line {i:05d} " + "x" * 80 for i in range(120))  # about 11,000
        before = len(tg.sent)
        await adapter.send(OutboundMessage("group", str(new_id), text, reply_to=str(mid)))
        parts = tg.sent[before:]
        assert [m.status for m in parts] == [200, 200, 200]
        assert "\n".join(m.text for m in parts) == text
        assert [m.reply_to for m in parts] == [mid, None, None]
    assert task.result() == 0
    assert_platform_never_failed(config)


async def test_a_reply_to_a_user_who_blocked_the_bot_fails_that_message_only(tmp_path, tg):
    config = config_for(tmp_path, tg)
    async with gateway(config) as (_gw, task):
        await tg.wait_until(lambda: polled(tg), t(5), "a poll")
        tg.block(500_000_007)
        blocked = tg.message("private", "from a blocker", user_id=500_000_007)
        fine = tg.message("private", "from a friend", user_id=500_000_008)
        await tg.wait_until(lambda: tg.replies[fine], t(5), "the friend's echo")
        await tg.wait_until(
            lambda: any(m.chat_id == blocked[0] for m in tg.sent), t(5), "the refused reply"
        )
    assert task.result() == 0
    assert_platform_never_failed(config)
    rows = {int(r["chat_id"]): r for r in table(config, outbox)}
    assert rows[blocked[0]]["status"] == "failed"
    assert "bot was blocked by the user" in rows[blocked[0]]["last_error"]
    assert rows[blocked[0]]["attempts"] == 1  # refused for good: not retried
    assert rows[fine[0]]["status"] == "delivered"


# -- a slow store: the platform is probed, nothing unstored is confirmed


class SlowInbound(LocalInbound):
    """Takes events, and reports them stored only once the test says so."""

    def __init__(self, adapter: Any) -> None:
        super().__init__(adapter)
        self.release = asyncio.Event()

    async def committed(self) -> None:
        await self.release.wait()
        await super().committed()


async def test_while_the_commit_waits_the_platform_is_probed_and_nothing_is_confirmed(tg):
    board = HeartbeatBoard()
    record = board.register("tg", "telegram", required=True, policy=PlatformPolicy())
    board.begin_attempt(record, restart=False)
    settings = TelegramSettings.model_validate(
        tg.adapter_settings(**FAST),
        context={"environ": {"TG_TOKEN": tg.token}, "base_dir": Path.cwd()},
    )
    adapter = TelegramAdapter("tg", settings, board.handle(record))
    inbound = SlowInbound(adapter)
    adapter.inbound = inbound
    task = asyncio.get_running_loop().create_task(adapter.run(), name="test:tg-adapter")
    try:
        inbound.release.set()
        await tg.wait_until(lambda: polled(tg), t(5), "a poll")
        inbound.release.clear()  # the store stalls from here
        tg.message("private", "while the store is slow")
        update_id = tg.next_update_id - 1
        await tg.wait_until(lambda: tg.delivered[update_id] >= 1, t(5), "the update delivered")
        beat = record.last_beat
        # A probe (timeout 0, the offset already sent) proves the platform alive...
        await tg.wait_until(lambda: tg.delivered[update_id] >= 2, t(5), "a probe")
        assert record.last_beat is not None and beat is not None and record.last_beat > beat
        # ... and confirm nothing: the update is still held, no poll passed it.
        assert [u for u, _, _ in tg.queue] == [update_id]
        assert all(p.offset <= update_id for p in tg.polls)
        inbound.release.set()
        await tg.wait_until(
            lambda: any(p.offset == update_id + 1 for p in tg.polls), t(5), "the confirming poll"
        )
        assert [m.text for m in inbound.queue] == [] and inbound.cursor() == (
            {"offset": update_id + 1},
            None,
        )
    finally:
        await adapter.close()
        await asyncio.wait_for(task, t(5))
    assert record.declared.value == "stopped"


async def test_a_restarted_adapter_continues_from_the_offset_its_predecessor_took(tmp_path, tg):
    config = config_for(tmp_path, tg, reconnect_max_failures=1, restart_max=2, restart_backoff=0.1)
    async with gateway(config) as (gw, task):
        await tg.wait_until(lambda: polled(tg), t(5), "a poll")
        before = [tg.message("group", f"before {i}") for i in range(3)]
        await tg.wait_until(lambda: not tg.reply_census(before).unanswered, t(5), "answers")
        tg.fail_next("getUpdates", 2, status=502)  # tg_unreachable: restarted by the watchdog
        await tg.wait_until(lambda: tg.calls["getme"] >= 2, t(10), "a new instance")
        after = [tg.message("group", f"after {i}") for i in range(3)]
        await tg.wait_until(lambda: not tg.reply_census(after).unanswered, t(5), "answers")
        assert gw.board["tg"].restarts == 1
    assert task.result() == 0
    assert tg.reply_census(before + after).exactly_once
    # The new instance's first poll continued where the old one stopped: nothing again.
    assert all(n == 1 for n in tg.delivered.values())
    _, _, history = stored_for(config)
    failing = [
        h["reason_code"]
        for h in history
        if h["to_health"] == "failing" and h["from_health"] != h["to_health"]
    ]
    assert failing == ["tg_unreachable"]


async def test_an_update_without_an_update_id_is_not_polled_in_a_hot_loop(tmp_path, tg):
    config = config_for(tmp_path, tg, reconnect_max_failures=2, restart_max=0)
    async with gateway(config) as (_gw, task):
        await tg.wait_until(lambda: polled(tg), t(5), "a poll")
        polls = len(tg.polls)
        tg.raw_update(b'{"message": {"text": "no id"}}')
        assert await asyncio.wait_for(task, t(10)) == 75
    row = fatal_row(config)
    assert row["reason_code"] == "tg_unreachable"
    assert "without an update_id" in row["reason_message"]
    assert len(tg.polls) - polls <= 4  # backed off between them, not a hot loop
