"""The job runner end to end: routes, handlers, jobs and the outbox, through the QQ simulator.

The gateway runs in-process (and as a subprocess where it must be killed), the platform
is the simulator on 127.0.0.1, the store a real SQLite file.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from hermes.adapters.qqbot import adapter as qq_adapter
from hermes.config import load_config
from hermes.gateway import Gateway
from hermes.jobrunner.ledger import Ledger
from hermes.simulators.qqbot import Fault, QQSimulator
from tests.support.configs import qq_platform, write_config
from tests.support.inprocess import gateway
from tests.support.notify import NotifyListener
from tests.support.proc import HERMES, GatewayProcess, run_cli
from tests.support.timing import t
from watchdog.store import StateStore

TICK = 0.1


qq = qq_platform


@asynccontextmanager
async def serving(config: Path, notify: NotifyListener | None) -> AsyncIterator[Gateway]:
    """The gateway READY for the block, and exiting 0 once it is done."""
    async with gateway(config, notify) as (gw, task):
        assert not task.done(), "the gateway did not start"
        yield gw
    assert task.result() == 0


def ledger_for(config: Path) -> tuple[Ledger, StateStore]:
    store = StateStore(load_config(config).database_url)
    return Ledger(store.engine), store


def runs(config: Path) -> list[dict[str, Any]]:
    ledger, store = ledger_for(config)
    try:
        return ledger.runs(limit=1000)
    finally:
        store.close()


def outbox(config: Path) -> list[dict[str, Any]]:
    ledger, store = ledger_for(config)
    try:
        return ledger.outbox_rows()
    finally:
        store.close()


def reply_text(sim: QQSimulator, message_id: str) -> str:
    (reply,) = sim.replies_to(message_id)
    return str(reply.body["content"])


# -- handlers


async def test_each_handler_kind_replies_through_the_platform_and_records_its_run(
    tmp_path, sim, notify_path
):
    script = tmp_path / "cmd.py"
    script.write_text(
        "import json, os, sys\n"
        "msg = json.load(sys.stdin)\n"
        "leak = 'QQ_SECRET' in os.environ\n"
        "print(f\"cmd got {msg['args']!r} from {os.environ['HERMES_AUTHOR_ID']} in {os.environ['HERMES_CHAT_KIND']}; secret leaked: {leak}\")\n"
    )
    routes: list[dict[str, Any]] = [
        {
            "name": "cmd",
            "prefix": "/cmd",
            "handler": "command",
            "command": [sys.executable, str(script)],
        },
        {
            "name": "shout",
            "prefix": "/shout",
            "handler": "python",
            "function": "tests.handlers_for_tests:shout",
        },
        {
            "name": "rev",
            "prefix": "/rev",
            "handler": "python",
            "function": "tests.handlers_for_tests:reverse",
        },
        {"name": "quiet", "chat_kind": "channel", "handler": "ignore"},
        {"name": "echo", "handler": "echo"},
    ]
    config = write_config(tmp_path, {"qq": qq(sim)}, tick=TICK, routes=routes)
    async with serving(config, notify_path):
        await sim.wait_ready(t(5))
        ids = {
            "cmd": await sim.send_message("group", "/cmd deploy staging", author="U7", chat="G1"),
            "shout": await sim.send_message("c2c", "/shout hello", author="U7"),
            "rev": await sim.send_message("c2c", "/rev abc", author="U7"),
            "echo": await sim.send_message("c2c", "/rev2 is not /rev", author="U7"),
            "quiet": await sim.send_message("channel", "nothing to say", author="U7"),
        }
        await sim.wait_until(
            lambda: all(sim.replies_to(ids[k]) for k in ("cmd", "shout", "rev", "echo")),
            t(10),
            "four replies",
        )
    assert (
        reply_text(sim, ids["cmd"])
        == "cmd got 'deploy staging' from U7 in group; secret leaked: False"
    )
    assert reply_text(sim, ids["shout"]) == "/SHOUT HELLO"
    assert reply_text(sim, ids["rev"]) == "cba ver/"
    assert reply_text(sim, ids["echo"]) == "/rev2 is not /rev"
    assert sim.replies_to(ids["quiet"]) == []
    by_route = {r["name"]: r for r in runs(config)}
    assert {k: (v["status"], v["trigger"], v["message_id"]) for k, v in by_route.items()} == {
        "cmd": ("ok", "message", ids["cmd"]),
        "shout": ("ok", "message", ids["shout"]),
        "rev": ("ok", "message", ids["rev"]),
        "echo": ("ok", "message", ids["echo"]),
        "quiet": ("ok", "message", ids["quiet"]),
    }
    assert all(row["status"] == "delivered" for row in outbox(config))


async def test_failing_handlers_are_recorded_and_send_nothing(tmp_path, sim, notify_path):
    routes: list[dict[str, Any]] = [
        {
            "name": "bad-cmd",
            "prefix": "/bad",
            "handler": "command",
            "command": [
                sys.executable,
                "-c",
                "import sys; print('partial'); sys.stderr.write('disk full'); sys.exit(3)",
            ],
        },
        {
            "name": "bad-type",
            "prefix": "/type",
            "handler": "python",
            "function": "tests.handlers_for_tests:wrong_type",
        },
        {
            "name": "missing",
            "prefix": "/missing",
            "handler": "command",
            "command": ["/nonexistent/tool"],
        },
    ]
    config = write_config(tmp_path, {"qq": qq(sim)}, tick=TICK, routes=routes)
    async with serving(config, notify_path) as gw:
        await sim.wait_ready(t(5))
        for text in ("/bad", "/type", "/missing"):
            await sim.send_message("c2c", text)
        runner = gw.runner
        assert runner is not None
        await notify_path.until(lambda: runner.completed >= 3, t(10), "three runs")
    by_route = {r["name"]: r for r in runs(config)}
    assert by_route["bad-cmd"]["status"] == "error"
    assert "failed (exit status 3): disk full" in by_route["bad-cmd"]["error"]
    assert by_route["bad-cmd"]["output"] == "partial"
    assert "returned int, expected str or None" in by_route["bad-type"]["error"]
    assert "cannot start '/nonexistent/tool'" in by_route["missing"]["error"]
    assert sim.sent == []


async def test_a_hanging_handler_times_out_while_pings_and_other_platforms_go_on(
    tmp_path, sim, notify_path, monkeypatch
):
    pidfile = tmp_path / "pid"
    async with QQSimulator(heartbeat_interval=0.2) as other:
        monkeypatch.setenv("QQ_OTHER_SECRET", other.client_secret)
        routes: list[dict[str, Any]] = [
            {
                "name": "hang",
                "platform": "qq-a",
                "prefix": "/hang",
                "handler": "python",
                "function": "tests.handlers_for_tests:hang",
                "timeout": 1.0,
            },
            {
                "name": "sleep",
                "platform": "qq-a",
                "prefix": "/sleep",
                "handler": "command",
                "command": ["sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"],
                "timeout": 1.0,
            },
            {"name": "echo", "platform": "qq-b", "handler": "echo"},
        ]
        platforms = {"qq-a": qq(sim), "qq-b": {**qq(other), "client_secret": "env:QQ_OTHER_SECRET"}}
        config = write_config(tmp_path, platforms, tick=TICK, routes=routes)
        async with serving(config, notify_path) as gw:
            await sim.wait_ready(t(5))
            await other.wait_ready(t(5))
            await sim.send_message("c2c", "/hang")
            await sim.send_message("c2c", "/sleep")
            hung_at = asyncio.get_running_loop().time()
            # The other platform keeps flowing while both handlers hang ...
            ids = [await other.send_message("c2c", f"still here {i}") for i in range(3)]
            await other.wait_until(
                lambda: all(other.replies_to(i) for i in ids), t(0.9), "echoes during the hang"
            )
            # ... and the watchdog keeps pinging.
            await notify_path.wait_for(
                lambda d: d.fields.get("WATCHDOG") == "1" and d.at > hung_at,
                t(0.5),
                "a ping during the hang",
            )
            runner = gw.runner
            assert runner is not None
            await notify_path.until(lambda: runner.completed >= 5, t(10), "the hanging runs to end")
        by_route = {r["name"]: r for r in runs(config) if r["name"] != "echo"}
    assert {k: v["status"] for k, v in by_route.items()} == {"hang": "timeout", "sleep": "timeout"}
    assert "time limit of 1 s reached" in by_route["hang"]["error"]
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the command's process group was killed


async def test_route_concurrency_is_limited(tmp_path, sim, notify_path):
    routes: list[dict[str, Any]] = [
        {
            "name": "one-at-a-time",
            "handler": "python",
            "function": "tests.handlers_for_tests:blocking_sleep",
            "concurrency": 1,
        }
    ]
    config = write_config(tmp_path, {"qq": qq(sim)}, tick=TICK, routes=routes)
    async with serving(config, notify_path):
        await sim.wait_ready(t(5))
        ids = [await sim.send_message("c2c", f"m{i}") for i in range(3)]
        await sim.wait_until(lambda: all(sim.replies_to(i) for i in ids), t(10), "three replies")
    spans = sorted((r["started_at"], r["finished_at"]) for r in runs(config))
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end  # never two at once


# -- the outbox


async def test_replies_for_a_platform_that_is_down_wait_and_go_out_when_it_is_back(
    tmp_path, sim, notify_path
):
    routes: list[dict[str, Any]] = [
        {"name": "slow", "handler": "python", "function": "tests.handlers_for_tests:slow"}
    ]
    config = write_config(tmp_path, {"qq": qq(sim)}, tick=TICK, routes=routes)
    async with serving(config, notify_path) as gw:
        await sim.wait_ready(t(5))
        mid = await sim.send_message("c2c", "are you there?")
        await sim.refuse_connections()  # the platform goes down while the handler works
        record = gw.board["qq"]
        await notify_path.until(
            lambda: any(r["status"] == "pending" for r in outbox(config)), t(5), "the reply queued"
        )
        assert record.declared.value == "reconnecting"
        assert sim.replies_to(mid) == []
        await sim.accept_connections()
        await sim.wait_until(lambda: sim.replies_to(mid), t(10), "the reply after reconnecting")
    assert reply_text(sim, mid) == "slow reply to are you there?"
    (row,) = outbox(config)
    assert row["status"] == "delivered"


async def test_replies_past_the_platforms_reply_window_expire(
    tmp_path, sim, notify_path, monkeypatch
):
    monkeypatch.setitem(
        qq_adapter.REPLY_WINDOWS,
        "c2c",
        1.0,
    )
    routes: list[dict[str, Any]] = [
        {"name": "slow", "handler": "python", "function": "tests.handlers_for_tests:slow"}
    ]
    config = write_config(tmp_path, {"qq": qq(sim)}, tick=TICK, routes=routes)
    async with serving(config, notify_path):
        await sim.wait_ready(t(5))
        mid = await sim.send_message("c2c", "too late")
        await sim.refuse_connections()
        await notify_path.until(
            lambda: any(r["status"] == "expired" for r in outbox(config)),
            t(10),
            "the reply expired",
        )
        await sim.accept_connections()
        await sim.wait_ready(t(5), count=2)
    (row,) = outbox(config)
    assert (row["status"], row["last_error"]) == ("expired", "past the platform's reply window")
    assert sim.replies_to(mid) == []


async def test_a_burst_of_replies_survives_sigkill_and_none_is_shown_twice(tmp_path, sim):
    routes: list[dict[str, Any]] = [
        {"name": "answer", "handler": "python", "function": "tests.handlers_for_tests:answer"}
    ]
    config = write_config(tmp_path, {"qq": qq(sim)}, tick=TICK, routes=routes)
    env = {"QQ_SECRET": sim.client_secret}
    sim.delays["message"] = 0.05  # replies take a moment: some are in flight when the kill comes
    first = await GatewayProcess(config, env).start()
    try:
        await sim.wait_ready(t(15))
        ids = [await sim.send_message("c2c", f"burst {i}") for i in range(30)]
        await sim.wait_until(
            lambda: sum(bool(sim.replies_to(i)) for i in ids) >= 5, t(15), "some replies"
        )
        first.signal(signal.SIGKILL)
        assert await first.wait(t(10)) == -signal.SIGKILL
    finally:
        await first.kill()
    queued = outbox(config)
    assert queued, "replies were in the outbox at the kill"
    second = await GatewayProcess(config, env).start()
    try:

        async def all_settled() -> None:
            # Another process writes these rows: there is nothing to await but the rows.
            while any(r["status"] in ("pending", "sending") for r in outbox(config)):  # noqa: ASYNC110
                await asyncio.sleep(0.1)

        await asyncio.wait_for(all_settled(), t(30))
        second.signal(signal.SIGTERM)
        assert await second.wait(t(15)) == 0
    finally:
        await second.kill()
    rows = outbox(config)
    assert {r["status"] for r in rows} == {"delivered"}
    accepted: dict[str, int] = {}
    for m in sim.sent:
        if m.status == 200:
            accepted[m.body["msg_id"]] = accepted.get(m.body["msg_id"], 0) + 1
    assert all(n == 1 for n in accepted.values()), accepted
    assert {r["reply_to"] for r in rows} <= set(accepted)


# -- scheduled jobs


async def test_a_scheduled_job_fires_on_time_and_sends_to_its_targets(tmp_path, sim, notify_path):
    jobs = [
        {
            "name": "tick",
            "interval": 0.5,
            "action": "send",
            "text": "scheduled hello",
            "targets": ["qq:c2c:U1", "qq:group:G9"],
        }
    ]
    config = write_config(tmp_path, {"qq": qq(sim)}, tick=TICK, jobs=jobs)
    async with serving(config, notify_path):
        await sim.wait_ready(t(5))
        await sim.wait_until(lambda: len(sim.sent) >= 6, t(10), "three runs to two targets")
    job_runs = [r for r in runs(config) if r["name"] == "tick" and r["status"] == "ok"]
    assert len(job_runs) >= 3
    for r in job_runs:
        assert r["trigger"] == "schedule"
        assert 0 <= (r["started_at"] - r["scheduled_for"]).total_seconds() < 0.5
    targets = {(m.kind, m.target) for m in sim.sent}
    assert targets == {("c2c", "U1"), ("group", "G9")}
    assert all(m.body == {"content": "scheduled hello", "msg_type": 0} for m in sim.sent)


@pytest.mark.parametrize("coalesce", [False, True])
async def test_jobs_survive_a_restart_without_double_firing_and_misses_follow_the_policy(
    tmp_path, notify_path, coalesce
):
    job = {
        "name": "beat",
        "interval": 0.5,
        "action": "python",
        "function": "tests.handlers_for_tests:report",
        "targets": ["demo:c2c:nobody"],
        "misfire_grace_time": 0.2,
        "coalesce": coalesce,
    }
    config = write_config(tmp_path, {"demo": {"adapter": "demo"}}, tick=TICK, jobs=[job])
    async with serving(config, notify_path):
        await notify_path.until(
            lambda: len([r for r in runs(config) if r["status"] == "ok"]) >= 3, t(10), "three runs"
        )
    stopped = max(r["scheduled_for"] for r in runs(config))
    await asyncio.sleep(1.6)  # the gateway is down while slots go by: time itself is the input
    async with serving(config, notify_path):
        restarted = now = datetime.now(UTC)
        await notify_path.until(
            lambda: any(r["status"] == "ok" and r["scheduled_for"] > now for r in runs(config)),
            t(10),
            "a run after the restart",
        )
    all_runs = runs(config)
    slots = [r["scheduled_for"] for r in all_runs]
    assert len(slots) == len(set(slots))  # no slot ran twice
    down = [r for r in all_runs if stopped < r["scheduled_for"] <= restarted]
    missed = [r for r in down if r["status"] == "missed"]
    if coalesce:
        assert len(down) == 1  # the whole stretch became one run, missed or (just in grace) late
    else:
        assert len(missed) >= 2  # every slot that passed while down is recorded
        assert all("misfire grace 0.2 s" in r["error"] for r in missed)
    assert all(
        r["output"] == "report from beat (schedule)" for r in all_runs if r["status"] == "ok"
    )


def job_config(directory: Path, jobs: list[dict[str, Any]]) -> Path:
    """A demo platform and ``jobs``; requests from ``hermes jobs run`` picked up within 0.1 s."""
    return write_config(
        directory,
        {"demo": {"adapter": "demo"}},
        tick=TICK,
        jobs=jobs,
        extra="[runner]\nrequest_poll = 0.1\n",
    )


async def jobs_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_cli, HERMES, "jobs", "--config", str(config), *args)


async def test_a_command_job_gets_its_run_as_json_and_environment_and_nothing_else(
    tmp_path, notify_path, monkeypatch
):
    monkeypatch.setenv("QQ_SECRET", "must-not-leak")
    script = tmp_path / "job.py"
    script.write_text(
        "import json, os, sys\n"
        "doc = json.load(sys.stdin)\n"
        "env = {k: os.environ.get(k) for k in ('HERMES_JOB', 'HERMES_TRIGGER', 'HERMES_RUN_ID', 'REGION', 'QQ_SECRET')}\n"
        "print(json.dumps({'doc': doc, 'env': env}))\n"
    )
    jobs = [
        {
            "name": "nightly.report",
            "cron": "0 3 * * *",
            "action": "command",
            "command": [sys.executable, str(script)],
            "env": {"REGION": "eu"},
            "targets": ["demo:c2c:nobody"],
        }
    ]
    config = job_config(tmp_path, jobs)
    async with serving(config, notify_path):
        run = await jobs_cli(config, "run", "nightly.report", "--wait", "--timeout", "10")
    assert run.returncode == 0, run.stdout + run.stderr
    (row,) = runs(config)
    got = json.loads(row["output"])
    assert got["doc"] == {
        "job": "nightly.report",
        "run_id": row["id"],
        "trigger": "manual",
        "scheduled_for": None,
    }
    assert got["env"] == {
        "HERMES_JOB": "nightly.report",
        "HERMES_TRIGGER": "manual",
        "HERMES_RUN_ID": row["id"],
        "REGION": "eu",
        "QQ_SECRET": None,
    }


async def test_jobs_cli_runs_pauses_and_resumes_against_a_running_gateway(tmp_path, notify_path):
    jobs = [
        {
            "name": "daily",
            "cron": "0 9 * * *",
            "action": "python",
            "function": "tests.handlers_for_tests:report",
            "targets": ["demo:c2c:nobody"],
        }
    ]
    config = job_config(tmp_path, jobs)
    async with serving(config, notify_path):
        run = await jobs_cli(config, "run", "daily", "--wait", "--timeout", "10")
        assert run.returncode == 0, run.stdout + run.stderr
        assert "report from daily (manual)" in run.stdout
        paused = await jobs_cli(config, "pause", "daily")
        assert paused.returncode == 0, paused.stderr
        listed = await jobs_cli(config, "list")
        assert "paused" in listed.stdout
        resumed = await jobs_cli(config, "resume", "daily")
        assert resumed.returncode == 0
        listed = await jobs_cli(config, "list")
        assert "paused" not in listed.stdout
        assert "09:00:00" in listed.stdout
        history = await jobs_cli(config, "history", "daily")
        assert "manual" in history.stdout
        unknown = await jobs_cli(config, "run", "nightly")
        assert unknown.returncode == 2
        assert "no job named 'nightly'" in unknown.stderr


# -- configuration


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            '[[routes]]\nhandler = "telepathy"\n',
            "routes[1].handler: Input should be 'echo', 'command', 'python' or 'ignore'",
        ),
        ('[[routes]]\nhandler = "command"\n', 'routes[1]: handler "command" needs command'),
        (
            '[[routes]]\nhandler = "python"\nfunction = "nowhere.module:fn"\n',
            "cannot import 'nowhere.module'",
        ),
        (
            '[[routes]]\nplatform = "tg"\nhandler = "echo"\n',
            "routes[1].platform: unknown platform 'tg'",
        ),
        (
            '[[jobs]]\nname = "j"\ncron = "61 * * * *"\naction = "send"\ntext = "x"\ntargets = ["demo:c2c:u"]\n',
            "jobs[1]: bad cron expression '61 * * * *'",
        ),
        (
            '[[jobs]]\nname = "j"\ninterval = 5\naction = "send"\ntext = "x"\ntargets = ["tg:c2c:u"]\n',
            "jobs[1].targets: unknown platform 'tg'",
        ),
        (
            '[[jobs]]\nname = "j"\ninterval = 5\ncron = "* * * * *"\naction = "send"\ntext = "x"\ntargets = ["demo:c2c:u"]\n',
            "give exactly one of cron, interval or date (got cron, interval)",
        ),
        (
            '[[jobs]]\nname = "j"\ninterval = 5\naction = "send"\ntext = "x"\ntargets = ["nonsense"]\n',
            "is not 'platform:chat-kind:id'",
        ),
    ],
)
def test_bad_routes_and_jobs_are_rejected_at_start_with_exit_78(tmp_path, extra, message):
    config = write_config(tmp_path, {"demo": {"adapter": "demo"}}, extra=extra)
    result = run_cli(HERMES, "run", "--config", str(config))
    assert result.returncode == 78
    assert message in result.stderr, result.stderr
    assert not (tmp_path / "state").exists()


async def test_reload_adds_changes_and_removes_jobs_in_the_job_store(tmp_path, notify_path):
    def job(name: str, **kw: Any) -> dict[str, Any]:
        return {"name": name, "action": "send", "text": "x", "targets": ["demo:c2c:u"], **kw}

    config = write_config(
        tmp_path,
        {"demo": {"adapter": "demo"}},
        tick=TICK,
        jobs=[
            job("keep", cron="0 9 * * *"),
            job("change", cron="0 10 * * *"),
            job("drop", cron="0 11 * * *"),
        ],
    )
    async with serving(config, notify_path) as gw:
        jobs = gw.jobs
        assert jobs is not None
        before = {j.id: j.next_run_time for j in jobs.scheduler.get_jobs()}
        write_config(
            tmp_path,
            {"demo": {"adapter": "demo"}},
            tick=TICK,
            jobs=[
                job("keep", cron="0 9 * * *"),
                job("change", cron="30 10 * * *"),
                job("new", interval=3600),
            ],
        )
        assert await gw.reload()
        after = {j.id: j.next_run_time for j in jobs.scheduler.get_jobs()}
    assert set(after) == {"keep", "change", "new"}
    assert after["keep"] == before["keep"]
    assert (after["change"].hour, after["change"].minute) == (10, 30)


# -- order within a chat, through failures


class PerChatFailures(QQSimulator):
    """The simulator, with the message endpoint failing for chosen chats only (a chat that
    is rate limited, code 22009, while the others are not)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.failing: dict[str, Fault] = {}
        """Chat id -> the answer every message to it gets, while it is here."""

    def _message(
        self, path: str, headers: dict[str, str], raw: bytes, fault: Fault | None
    ) -> tuple[int, Any, bool]:
        target = path.strip("/").split("/")[-2]
        return super()._message(path, headers, raw, fault or self.failing.get(target))


RATE_LIMITED = Fault(429, {"message": "msg limit exceed", "code": 22009, "err_code": 22009})


def order_config(directory: Path, sim: QQSimulator) -> Path:
    """Echo replies; one send attempt per outbox attempt, quick retries, and an outbox batch
    (3) smaller than the replies queued per chat, so that several batches hold one chat."""
    return write_config(
        directory,
        {"qq": qq(sim, send_attempts=1)},
        tick=TICK,
        routes=[{"name": "echo", "handler": "echo"}],
        extra=(
            "[outbox]\nbatch = 3\nretry_backoff = 0.05\nretry_backoff_max = 0.2\n"
            "max_attempts = 1000\npoll_interval = 0.05\n"
        ),
    )


def delivered_by_chat(sim: QQSimulator) -> dict[str, list[str]]:
    """What each chat was shown, in the order the platform accepted it."""
    chats: dict[str, list[str]] = {}
    for m in sim.sent:
        if m.status == 200:
            chats.setdefault(m.target, []).append(str(m.body["content"]))
    return chats


def enqueued_by_chat(config: Path) -> dict[str, list[str]]:
    chats: dict[str, list[str]] = {}
    for row in outbox(config):  # in id order: the order the replies were enqueued
        chats.setdefault(row["chat_id"], []).append(row["text"])
    return chats


async def test_replies_keep_their_order_within_each_chat_through_500s_and_rate_limits(
    tmp_path, sim, notify_path
):
    config = order_config(tmp_path, sim)
    chats, per_chat = ["G1", "G2", "G3"], 8
    async with serving(config, notify_path):
        await sim.wait_ready(t(5))
        # The message endpoint fails for a while: 500s, then 429 with code 22009.
        sim.fail_next("message", 12, status=500)
        sim.rate_limit(12, http_429=True)
        for i in range(per_chat):
            for chat in chats:
                await sim.send_message("group", f"{chat} #{i}", chat=chat)
        await sim.wait_until(
            lambda: sum(map(len, delivered_by_chat(sim).values())) == len(chats) * per_chat,
            t(20),
            "every reply delivered",
        )
    assert sum(m.status != 200 for m in sim.sent) == 24  # the failures did happen
    enqueued = enqueued_by_chat(config)
    assert delivered_by_chat(sim) == enqueued
    assert all(len(enqueued[chat]) == per_chat for chat in chats)
    assert {r["status"] for r in outbox(config)} == {"delivered"}


async def test_a_chat_waiting_for_a_retry_holds_its_own_replies_and_no_other_chat(
    tmp_path, notify_path, monkeypatch
):
    sim = PerChatFailures(heartbeat_interval=0.2)
    async with sim:
        monkeypatch.setenv("QQ_SECRET", sim.client_secret)
        config = order_config(tmp_path, sim)
        async with serving(config, notify_path):
            await sim.wait_ready(t(5))
            sim.failing["G1"] = RATE_LIMITED
            for i in range(8):
                await sim.send_message("group", f"G1 #{i}", chat="G1")
            await sim.wait_until(
                lambda: sum(m.target == "G1" for m in sim.sent) >= 3,
                t(10),
                "G1's head retried",
            )
            # G1 waits; G2 is not held by it.
            for i in range(8):
                await sim.send_message("group", f"G2 #{i}", chat="G2")
            await sim.wait_until(
                lambda: len(delivered_by_chat(sim).get("G2", [])) == 8, t(10), "G2 delivered"
            )
            assert "G1" not in delivered_by_chat(sim)
            # Nothing behind G1's head was even tried: every attempt so far was the head.
            assert {m.body["content"] for m in sim.sent if m.target == "G1"} == {
                enqueued_by_chat(config)["G1"][0]
            }
            del sim.failing["G1"]
            await sim.wait_until(
                lambda: len(delivered_by_chat(sim).get("G1", [])) == 8, t(10), "G1 delivered"
            )
    assert delivered_by_chat(sim) == enqueued_by_chat(config)


# -- text no backend can store


async def test_a_message_with_a_nul_byte_gets_its_run_finished_and_its_reply_on_every_backend(
    tmp_path, sim, notify_path, store_url
):
    config = write_config(
        tmp_path,
        {"qq": qq(sim)},
        tick=TICK,
        store={"url": store_url},
        routes=[{"name": "echo", "handler": "echo"}],
    )
    async with serving(config, notify_path):
        await sim.wait_ready(t(5))
        mid = await sim.send_message("group", "a\x00b", chat="G1")
        await sim.wait_until(lambda: sim.replies_to(mid), t(10), "the reply")
    assert reply_text(sim, mid) == "a\ufffdb"  # NUL is stored, and so sent, as U+FFFD
    (run,) = runs(config)
    assert (run["status"], run["output"], run["error"]) == ("ok", "a\ufffdb", None)
    (row,) = outbox(config)
    assert (row["status"], row["text"]) == ("delivered", "a\ufffdb")


async def test_a_message_the_platform_refuses_for_good_fails_at_once_and_frees_its_chat(
    tmp_path, sim, notify_path
):
    config = order_config(tmp_path, sim)
    invalid = {"message": "msg_id is invalid", "code": 40034004, "err_code": 40034004}
    async with serving(config, notify_path):
        await sim.wait_ready(t(5))
        sim.fail_next("message", 1, status=400, body=invalid)
        for i in range(4):
            await sim.send_message("group", f"G1 #{i}", chat="G1")
        await sim.wait_until(
            lambda: len(delivered_by_chat(sim).get("G1", [])) == 3, t(10), "the rest delivered"
        )
    head, *rest = outbox(config)
    # One attempt, not max_attempts (1000 here): a client error is not retried.
    assert (head["status"], head["attempts"]) == ("failed", 1)
    assert "msg_id is invalid" in head["last_error"]
    assert "40034004" in head["last_error"]
    assert [r["status"] for r in rest] == ["delivered"] * 3
    assert sum(m.target == "G1" for m in sim.sent) == 4
