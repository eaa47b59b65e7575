"""SIGKILL the gateway mid-burst of Telegram updates: lost 0, handled twice 0.

The offset that confirms updates to the platform is sent only after the inbox has
committed them, and the cursor stored with them is the next offset. A process killed at
any moment leaves every update it got either stored (and run after the restart, once)
or still held by the platform, which sends it again to the next process. Counted by the
simulator: every message it sent got an accepted reply. Replies can repeat only for a
message that was being sent when the process died (delivery is at least once; Telegram
has no idempotency key): the restarted gateway says how many those were.
"""

from __future__ import annotations

import os
import random
import re
import signal
from collections import Counter
from pathlib import Path

from hermes.inbox.schema import inbox
from hermes.simulators.telegram import TelegramSimulator
from tests.integration.test_inbox import table
from tests.integration.test_telegram import platform
from tests.support.configs import write_config
from tests.support.proc import GatewayProcess
from tests.support.timing import t
from watchdog.schema import job_runs, platform_transitions

BURST = 1000
"""Updates in the burst: received in ten polls of 100, so the kill lands among commits.
Answering them is what takes the time (a durable reply costs several transactions)."""
SEED_VARIABLE = "HERMES_TEST_KILL_SEED"
MID_SEND = re.compile(r"previous process left (\d+) runs unfinished .* and (\d+) messages mid-send")


async def test_sigkill_mid_burst_loses_no_update_and_handles_none_twice(
    tmp_path: Path, tg: TelegramSimulator
) -> None:
    raw = os.environ.get(SEED_VARIABLE)
    seed = int(raw) if raw else random.SystemRandom().randrange(1 << 32)
    k = random.Random(seed).randint(BURST // 10, BURST * 9 // 10)
    print(f"kill after update {k} of {BURST} (seed {seed}; {SEED_VARIABLE}={seed} repeats it)")
    config = write_config(
        tmp_path,
        {"tg": platform(tg)},
        tick=0.1,
        gateway={"log_level": "INFO"},
        routes=[{"name": "echo", "handler": "echo", "on_crash": "retry"}],
        extra="[outbox]\nretry_backoff = 0.05\nretry_backoff_max = 0.2\n",
    )
    env = {"TG_TOKEN": tg.token}
    first = await GatewayProcess(config, env).start()
    second: GatewayProcess | None = None
    try:
        await tg.wait_until(lambda: tg.calls["getupdates"] >= 1, t(15), "a poll")
        tg.after_delivered(k, lambda: first.signal(signal.SIGKILL))
        ids = tg.burst(BURST, "group", chats=24, text="burst")
        assert await first.wait(t(30)) == -signal.SIGKILL, first.output
        killed_with = len(tg.replies)
        second = await GatewayProcess(config, env).start()
        await tg.wait_until(
            lambda: not tg.reply_census(ids).unanswered, t(60), "every message answered"
        )
        second.signal(signal.SIGTERM)
        assert await second.wait(t(20)) == 0, second.output
    finally:
        await first.kill()
        if second is not None:
            await second.kill()
    mid_send = int(m[2]) if (m := MID_SEND.search(second.output)) else 0
    why = f"seed {seed}: killed after update {k}, {killed_with} replies then, {mid_send} mid-send"
    print(why)

    # Counted by the simulator.
    census = tg.reply_census(ids)
    assert census.messages == len(set(ids)) == BURST
    assert census.unanswered == [], why
    assert sum(n - 1 for n in census.repeated.values()) <= mid_send, why
    redelivered = sum(1 for n in tg.delivered.values() if n > 1)
    assert redelivered > 0, f"{why}: the kill left nothing for the platform to send again"

    # And the gateway's account: one inbox row and one successful run per message.
    sent = {f"{c}:{m}" for c, m in ids}
    rows = [r for r in table(config, inbox) if f"{r['chat_id']}:{r['message_id']}" in sent]
    per = Counter(f"{r['chat_id']}:{r['message_id']}" for r in rows)
    assert len(per) == BURST and set(per.values()) == {1}, why
    assert Counter(r["status"] for r in rows) == {"handled": BURST}, why
    runs = table(config, job_runs)
    ok = {r["id"] for r in runs if r["status"] == "ok"}
    # Exactly one successful run per message: as many as messages, each row's own.
    assert len(ok) == BURST, f"{why}: {Counter(r['status'] for r in runs)}"
    assert {r["run_id"] for r in rows} == ok, why
    gaps = [r for r in table(config, platform_transitions) if r["reason_code"] == "inbound_gap"]
    assert gaps == [], why
