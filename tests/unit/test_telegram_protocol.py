"""The Telegram adapter's pure parts: error classification, offsets, updates, commands, text.

No sockets and no sleeps: the clock is an argument.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from hermes.adapters.telegram.adapter import TelegramSettings
from hermes.adapters.telegram.api import BotApi
from hermes.adapters.telegram.protocol import (
    CONFLICT,
    INVALID_TOKEN,
    REQUEST_REFUSED,
    UNREACHABLE,
    WEBHOOK_ACTIVE,
    Backoff,
    Offsets,
    PollPolicy,
    Step,
    command_for,
    parse_update,
    split_text,
)
from hermes.errors import TelegramApiError
from watchdog.secrets import Secret

POLLER = (
    "Conflict: terminated by other getUpdates request; make sure that only one bot instance "
    "is running"
)
WEBHOOK = (
    "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to "
    "delete the webhook first"
)


def err(
    status: int, description: str = "", method: str = "getUpdates", **kw: Any
) -> TelegramApiError:
    return TelegramApiError(
        f"{status} {description}", method=method, status=status, description=description, **kw
    )


def policy(**kw: Any) -> PollPolicy:
    return PollPolicy(Backoff(1.0, 8.0, jitter=0.0), **kw)


# -- classification


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (err(401, "Unauthorized"), INVALID_TOKEN),
        (err(404, "Not Found", method="getMe"), INVALID_TOKEN),
        (err(404, "Not Found", method="getUpdates"), INVALID_TOKEN),
        (err(400, "Bad Request: can't parse allowed updates"), REQUEST_REFUSED),
    ],
)
def test_refusals_of_the_token_or_the_request_give_up_at_once_not_retryable(error, code):
    plan = policy().after(error, now=0.0)
    assert (plan.step, plan.code, plan.retryable) == (Step.GIVE_UP, code, False)


def test_another_poller_is_retried_until_conflict_max_within_the_window():
    p = policy(conflict_max=3, conflict_window=60.0)
    assert p.after(err(409, POLLER), now=0.0).step is Step.RETRY
    assert p.after(err(409, POLLER), now=1.0).step is Step.RETRY
    plan = p.after(err(409, POLLER), now=2.0)
    assert (plan.step, plan.code, plan.retryable) == (Step.GIVE_UP, CONFLICT, False)
    assert "two gateway instances" in plan.message


def test_conflicts_further_apart_than_the_window_are_forgiven_even_after_successes_between():
    p = policy(conflict_max=2, conflict_window=60.0)
    assert p.after(err(409, POLLER), now=0.0).step is Step.RETRY
    p.succeeded()
    assert p.after(err(409, POLLER), now=61.0).step is Step.RETRY
    p.succeeded()  # polls that succeed in between do not hide a second poller
    assert p.after(err(409, POLLER), now=62.0).code == CONFLICT


def test_a_webhook_is_fatal_unless_delete_webhook_which_is_tried_once():
    assert policy().after(err(409, WEBHOOK), 0.0).code == WEBHOOK_ACTIVE
    p = policy(delete_webhook=True)
    assert p.after(err(409, WEBHOOK), 0.0).step is Step.DELETE_WEBHOOK
    again = p.after(err(409, "Conflict: terminated by setWebhook request"), 1.0)
    assert (again.code, again.retryable) == (WEBHOOK_ACTIVE, False)


def test_429_waits_retry_after_and_does_not_count_as_a_failure():
    p = policy(max_failures=0)
    plan = p.after(err(429, "Too Many Requests: retry after 7", retry_after=7.0), 0.0)
    assert (plan.step, plan.delay) == (Step.RETRY, 7.0)
    assert p.failures == 0


def test_server_and_network_errors_back_off_then_give_up_retryable():
    p = policy(max_failures=3)
    delays = [p.after(err(502, "Bad Gateway"), 0.0).delay for _ in range(3)]
    assert delays == [1.0, 2.0, 4.0]
    plan = p.after(err(0, "no answer within the time limit (ReadTimeout)"), 0.0)
    assert (plan.step, plan.code, plan.retryable) == (Step.GIVE_UP, UNREACHABLE, True)
    assert "4 calls in a row failed; last: getUpdates: 0 no answer" in plan.message


def test_a_success_resets_the_failures_and_the_backoff():
    p = policy(max_failures=2)
    p.after(err(500), 0.0)
    p.after(err(500), 0.0)
    p.succeeded()
    assert p.after(err(500), 0.0).delay == 1.0
    assert p.after(err(500), 0.0).step is Step.RETRY


# -- offsets


def test_the_next_offset_covers_what_was_taken_and_only_that():
    o = Offsets()
    assert o.next_offset() is None  # the first poll: from the oldest unconfirmed update
    o.polled(None)
    o.take(10)
    o.take(11)
    assert (o.next_offset(), o.sent, o.unconfirmed()) == (12, None, True)
    o.polled(12)
    assert not o.unconfirmed()
    assert not o.is_new(11) and o.is_new(12)


def test_a_stored_offset_is_where_a_new_instance_starts_and_probes_confirm_nothing():
    o = Offsets(500)
    assert o.next_offset() == 500
    assert not o.is_new(499)
    # Not known to be sent: a probe before the first poll carries no offset, so it cannot
    # confirm what a predecessor took and the inbox has not stored yet.
    assert o.sent is None


# -- updates and commands


def message(kind: str = "group", text: str = "hi", **extra: Any) -> dict[str, Any]:
    chat = {"id": -100 if kind != "private" else 7, "type": kind, "title": "T"}
    m = {"message_id": 5, "chat": chat, "date": 1_700_000_000, "text": text, **extra}
    if kind == "channel":
        return {"update_id": 42, "channel_post": {**m, "sender_chat": chat}}
    return {"update_id": 42, "message": {**m, "from": {"id": 7, "username": "ann"}}}


@pytest.mark.parametrize("kind", ["private", "group", "supergroup", "channel"])
def test_a_message_of_every_chat_kind_becomes_an_inbound_message(kind):
    update_id, m, event_id = parse_update("tg", message(kind), "bot")
    assert m is not None
    assert (update_id, m.chat_kind, m.message_id, m.text) == (42, kind, "5", "hi")
    assert event_id == f"{m.chat_id}:5"
    assert m.extra["update_id"] == "42"
    assert m.author_id == ("-100" if kind == "channel" else "7")
    assert m.event == ("channel_post" if kind == "channel" else "message")
    assert m.timestamp is not None and m.timestamp.year == 2023


def test_other_updates_are_passed_over_and_a_broken_one_named():
    assert parse_update("tg", {"update_id": 1, "edited_message": {}}, None) == (1, None, None)
    assert parse_update("tg", {"update_id": 2, "message": {"chat": "x"}}, None) == (2, None, None)
    with pytest.raises(ValueError, match="update_id"):
        parse_update("tg", {"message": {}}, None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/ping@ThisBot now", "/ping now"),
        ("/ping@thisbot", "/ping"),
        ("/ping@otherbot now", "/ping@otherbot now"),
        ("/ping now", "/ping now"),
        ("hello @thisbot", "hello @thisbot"),
    ],
)
def test_a_command_addressed_to_this_bot_loses_the_bots_name(text, expected):
    assert command_for(text, "thisbot") == expected


def test_long_text_is_split_at_line_breaks_into_pieces_the_platform_accepts():
    text = "\n".join("x" * 99 for _ in range(100))  # 9,999 characters
    parts = split_text(text, 4096)
    assert all(0 < len(p) <= 4096 for p in parts)
    assert "\n".join(parts) == text
    assert split_text("y" * 5000, 4096) == ["y" * 4096, "y" * 904]
    assert split_text("short") == ["short"]


# -- settings


def test_the_poll_read_timeout_must_outlast_the_poll_and_the_servers_hold():
    ok = TelegramSettings.model_validate(
        {"token": "env:T", "poll_timeout": 25}, context={"environ": {"T": "1:a"}, "base_dir": "."}
    )
    assert ok.read_timeout == 35.0
    with pytest.raises(
        ValidationError, match="poll_read_timeout\n  Value error, must be longer than poll_timeout"
    ):
        TelegramSettings.model_validate(
            {"token": "env:T", "poll_timeout": 25, "poll_read_timeout": 25},
            context={"environ": {"T": "1:a"}, "base_dir": "."},
        )
    with pytest.raises(ValidationError, match="the 3 s the server may hold"):
        TelegramSettings.model_validate(
            {"token": "env:T", "poll_timeout": 1, "poll_read_timeout": 2},
            context={"environ": {"T": "1:a"}, "base_dir": "."},
        )


# -- answers, and the token kept out of every error


def api() -> BotApi:
    return BotApi(None, api_base="https://api.telegram.org", token=Secret("env:T", "123:SECRET"))  # type: ignore[arg-type]


def test_error_answers_carry_their_parameters():
    body = b'{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 5","parameters":{"retry_after":5}}'
    with pytest.raises(TelegramApiError) as info:
        api().result("sendMessage", 429, body)
    assert (info.value.status, info.value.retry_after) == (429, 5.0)
    body = b'{"ok":false,"error_code":400,"description":"Bad Request: group chat was upgraded to a supergroup chat","parameters":{"migrate_to_chat_id":-1001}}'
    with pytest.raises(TelegramApiError) as info:
        api().result("sendMessage", 400, body)
    assert info.value.migrate_to_chat_id == -1001
    assert api().result("getMe", 200, b'{"ok":true,"result":{"id":1}}') == {"id": 1}


def test_an_answer_echoing_the_token_is_scrubbed_and_nonsense_is_a_server_error():
    body = b'{"ok":false,"error_code":404,"description":"no route /bot123:SECRET/getMe"}'
    with pytest.raises(TelegramApiError) as info:
        api().result("getMe", 404, body)
    assert "SECRET" not in str(info.value)
    assert "<token>" in str(info.value)
    with pytest.raises(TelegramApiError) as info:
        api().result("getUpdates", 200, b"<html>proxy</html>")
    assert info.value.status == 502
