"""The Bot API simulator keeps the server's rules (tdlib/telegram-bot-api, Client.cpp)."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import httpx
import pytest

from hermes.simulators.telegram import (
    CONFLICT_POLLER,
    CONFLICT_WEBHOOK,
    TelegramSimulator,
)
from tests.support.proc import HERMES, child_env, run_cli
from tests.support.timing import t


async def call(http: httpx.AsyncClient, sim: TelegramSimulator, method: str, **params: Any) -> Any:
    response = await http.post(f"{sim.api_base}/bot{sim.token}/{method}", json=params)
    return response.json()


def ids(answer: dict[str, Any]) -> list[int]:
    return [u["update_id"] for u in answer["result"]]


async def test_updates_are_kept_until_a_later_offset_confirms_them():
    async with TelegramSimulator(repeat_hold=0) as sim, httpx.AsyncClient() as http:
        for i in range(5):
            sim.message("private", f"m{i}")
        first = ids(await call(http, sim, "getUpdates", limit=2))
        assert len(first) == 2
        assert ids(await call(http, sim, "getUpdates", limit=2)) == first  # not confirmed
        rest = ids(await call(http, sim, "getUpdates", offset=first[-1] + 1))
        assert len(rest) == 3 and len(sim.queue) == 3  # the first two are forgotten
        assert ids(await call(http, sim, "getUpdates", offset=-1)) == rest[-1:]
        assert len(sim.queue) == 1
        assert ids(await call(http, sim, "getUpdates", limit=0)) == rest[-1:]  # clamped to 1


async def test_a_repeated_poll_is_held_three_seconds_and_limited_like_the_server_does():
    clock = [100.0]
    async with TelegramSimulator(clock=lambda: clock[0]) as sim, httpx.AsyncClient() as http:
        sim.message("private", "a")
        sim.message("private", "b")
        assert len(ids(await call(http, sim, "getUpdates", offset=0))) == 2
        clock[0] += 0.1  # the same offset within 0.5 s: one update at most
        assert len(ids(await call(http, sim, "getUpdates", offset=0, timeout=0))) == 1
        assert sim.polls[-1].timeout == 3  # and at least a 3 s timeout within 3 s


async def test_a_second_waiting_poll_ends_the_first_with_409_and_a_webhook_blocks_polling():
    async with TelegramSimulator(conflict_pacing=0.0) as sim, httpx.AsyncClient() as http:
        older = asyncio.ensure_future(call(http, sim, "getUpdates", timeout=5))
        await sim.wait_until(lambda: sim._waiter is not None, 2, "a waiting poll")
        newer = asyncio.ensure_future(call(http, sim, "getUpdates", timeout=1, offset=1))
        answer = await older
        assert (answer["ok"], answer["error_code"], answer["description"]) == (
            False,
            409,
            CONFLICT_POLLER,
        )
        assert (await newer)["result"] == []
        assert (await call(http, sim, "setWebhook", url="https://example.invalid/h"))["result"]
        answer = await call(http, sim, "getUpdates")
        assert (answer["error_code"], answer["description"]) == (409, CONFLICT_WEBHOOK)
        assert (await call(http, sim, "getWebhookInfo"))["result"][
            "url"
        ] == "https://example.invalid/h"
        assert (await call(http, sim, "deleteWebhook"))["description"] == "Webhook was deleted"
        assert (await call(http, sim, "getUpdates"))["ok"]


async def test_allowed_updates_apply_to_updates_created_after_the_call():
    async with TelegramSimulator(repeat_hold=0) as sim, httpx.AsyncClient() as http:
        sim.update("edited_message", {"message_id": 1})
        await call(http, sim, "getUpdates", allowed_updates=["message"])
        sim.update("edited_message", {"message_id": 2})  # not created: filtered
        sim.message("group", "kept")
        kinds = [
            next(k for k in u if k != "update_id")
            for u in (await call(http, sim, "getUpdates"))["result"]
        ]
        assert kinds == ["edited_message", "message"]
        assert sim.filtered == 1


@pytest.mark.parametrize("how", ["json", "form", "multipart", "query"])
async def test_parameters_arrive_however_client_libraries_send_them(how):
    async with TelegramSimulator() as sim, httpx.AsyncClient() as http:
        chat, mid = sim.message("group", "hi")
        url = f"{sim.api_base}/bot{sim.token}/sendMessage"
        params = {
            "chat_id": str(chat),
            "text": "re",
            "reply_parameters": f'{{"message_id": {mid}}}',
        }
        if how == "json":
            r = await http.post(
                url, json={**params, "chat_id": chat, "reply_parameters": {"message_id": mid}}
            )
        elif how == "form":
            r = await http.post(url, data=params)
        elif how == "multipart":
            r = await http.post(url, files={k: (None, v) for k, v in params.items()})
        else:
            r = await http.get(url, params=params)
        assert r.json()["ok"], r.json()
        assert sim.replies[(chat, mid)] == 1


async def test_tokens_and_methods_are_refused_as_the_public_api_does():
    async with TelegramSimulator() as sim, httpx.AsyncClient() as http:
        assert (await http.post(f"{sim.api_base}/botnonsense/getMe")).status_code == 404
        other = await http.post(f"{sim.api_base}/bot1:other/getMe")
        assert (other.status_code, other.json()["description"]) == (401, "Unauthorized")
        assert (await call(http, sim, "noSuchMethod"))[
            "description"
        ] == "Not Found: method not found"
        chat, _ = sim.message("private", "x")
        too_long = await call(http, sim, "sendMessage", chat_id=chat, text="x" * 4097)
        assert too_long["description"] == "Bad Request: message is too long"
        assert (await call(http, sim, "sendMessage", chat_id=chat, text="x" * 4096))["ok"]
        sim.revoke()
        assert (await call(http, sim, "getMe"))["error_code"] == 401


async def test_hermes_simulate_telegram_serves_the_bot_api_until_sigterm(tmp_path):
    ready = tmp_path / "sim.json"
    proc = await asyncio.create_subprocess_exec(
        HERMES, "simulate", "telegram", "--message-every", "0.1s", "--messages", "1",
        "--ready-file", str(ready),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=child_env(),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        banner = b""
        while b"api_base = " not in banner:
            line = await asyncio.wait_for(proc.stdout.readline(), t(15))
            assert line, f"the simulator exited before its banner was complete: {banner!r}"
            banner += line
        info = json.loads(ready.read_text())
        assert f'api_base = "{info["api_base"]}"' in banner.decode()
        async with httpx.AsyncClient() as http:
            base = f"{info['api_base']}/bot{info['token']}/"
            me = (await http.get(base + "getMe")).json()
            assert me["result"]["username"] == info["username"]
            updates = (await http.post(base + "getUpdates", json={"timeout": 5}, timeout=10)).json()
            assert updates["result"][0]["message"]["text"] == "message 1"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), t(10)) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_bad_telegram_simulator_arguments_are_explained():
    result = run_cli(HERMES, "simulate", "telegram", "--kill-after", "5")
    assert result.returncode == 2
    assert "--kill-after 5 is beyond --burst 0" in result.stderr
