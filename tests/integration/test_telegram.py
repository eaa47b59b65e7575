"""The Telegram adapter against the Bot API simulator, through the whole gateway.

Every fault the issue lists reaches the watchdog with its reason code, retryable or not,
and the gateway exits 75 or 78 in the time its configuration implies. The token never
appears in a log line or in the store, whatever went wrong.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hermes.adapters.telegram.simulator import TelegramSimulator
from hermes.inbox.schema import inbound_cursors, inbox
from tests.integration.test_inbox import table
from tests.support.configs import write_config
from tests.support.inprocess import gateway, stored_for
from tests.support.proc import GatewayProcess
from tests.support.timing import t
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
async def tg(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TelegramSimulator]:
    """A Bot API simulator whose token is in ``TG_TOKEN``; conflicts answered at once."""
    async with TelegramSimulator(conflict_pacing=0.05) as sim:
        monkeypatch.setenv("TG_TOKEN", sim.token)
        yield sim


def platform(sim: TelegramSimulator, **extra: Any) -> dict[str, Any]:
    return {"adapter": "telegram", **sim.adapter_settings(**FAST), **extra}


def config_for(
    directory: Path, sim: TelegramSimulator, *, routes: list[dict[str, Any]] | None = None, **extra: Any
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
        ids = [tg.message(kind, f"hi {kind}") for kind in ("private", "group", "supergroup", "channel")]
        await tg.wait_until(lambda: not tg.reply_census(ids).unanswered, t(5), "four replies")
        assert gw.board["tg"].last_beat is not None
    assert task.result() == 0
    census = tg.reply_census(ids)
    assert census.exactly_once
    answered = [m for m in tg.sent if m.status == 200]
    assert sorted(m.text for m in answered) == sorted(f"hi {k}" for k in ("private", "group", "supergroup", "channel"))
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
        {"name": "ping", "prefix": "/ping", "handler": "python", "function": "tests.handlers_for_tests:shout"},
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
