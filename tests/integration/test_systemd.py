"""The gateway under a real systemd (sandboxed), run by the unit file from deploy/
(adapted to this machine as tests.support.gateway_unit explains)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway_unit import UNIT, sandbox, sandbox_workdir, unit_config, unit_for
from tests.support.proc import HERMES_WATCHDOG, run_cli
from tests.support.sandbox import sandbox_unavailable_reason

pytestmark = pytest.mark.systemd
PROPS = (
    "NRestarts",
    "Result",
    "ActiveState",
    "SubState",
    "ExecMainCode",
    "ExecMainStatus",
    "StatusText",
)


@pytest.fixture
def workdir() -> Iterator[Path]:
    reason = sandbox_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with sandbox_workdir("gw") as path:
        yield path


def test_a_silently_dying_adapter_gets_the_unit_restarted_and_the_reason_stays_in_sql(workdir):
    config = unit_config(
        workdir,
        {"bot": {"adapter": "demo", "die_after": 1.0, "event_interval": 0.2, "restart_max": 0}},
        tick=0.25,
        log_level="INFO",
    )
    unit = unit_for(workdir, config, watchdog_sec="3s", start_limit_burst=3)
    log = workdir / "gateway.log"
    with sandbox(workdir, unit) as sb:
        seen = sb.wait_for(
            UNIT,
            lambda p: int(p.get("NRestarts") or 0) >= 1,
            PROPS,
            timeout=60,
            what="systemd restarted the gateway",
            logs=[log],
        )
        # Each instance escalates in turn; the start limit finally stops the loop.
        final = sb.wait_for(
            UNIT,
            lambda p: p.get("ActiveState") == "failed",
            PROPS,
            timeout=90,
            what="the start limit stopped the restart loop",
            logs=[log],
        )
    assert int(seen["NRestarts"]) >= 1
    assert final["Result"] in ("start-limit-hit", "watchdog"), final
    # WATCHDOG=trigger made systemd send SIGABRT; the gateway finished its graceful stop
    # and exited 75 instead of dumping core.
    assert (final["ExecMainCode"], final["ExecMainStatus"]) == ("1", "75"), final
    text = log.read_text()
    assert "escalating to systemd (exit 75): fatal: bot: adapter_exited" in text
    assert "SIGABRT from systemd answering our WATCHDOG=trigger" in text

    database = f"sqlite:///{workdir / 'state' / 'hermes.db'}"
    status = run_cli(HERMES_WATCHDOG, "status", "--database", database)
    assert status.returncode == 2, status.stdout + status.stderr
    assert "adapter_exited" in status.stdout
    history = run_cli(HERMES_WATCHDOG, "history", "bot", "--database", database, "--json")
    assert history.returncode == 0
    assert '"reason_code": "adapter_exited"' in history.stdout
    instances = run_cli(HERMES_WATCHDOG, "status", "--database", database, "--json")
    assert '"exit_code": 75' in instances.stdout


def test_a_frozen_event_loop_is_killed_by_systemd_with_every_stack_dumped(workdir):
    config = unit_config(
        workdir,
        {"bot": {"runs": [["connect", "behave 0.5", "block 30"]]}},
        tick=0.25,
        log_level="INFO",
    )
    unit = unit_for(workdir, config, watchdog_sec="2s", start_limit_burst=5)
    log = workdir / "gateway.log"
    with sandbox(workdir, unit) as sb:
        sb.wait_for(
            UNIT,
            lambda p: int(p.get("NRestarts") or 0) >= 1,
            PROPS,
            timeout=60,
            what="systemd's watchdog killed and restarted the frozen gateway",
            logs=[log],
        )
    text = log.read_text()
    # faulthandler's dump from SIGABRT shows where the loop was stuck.
    assert "Fatal Python error: Aborted" in text
    assert "tests/scripted.py" in text
    assert "in run" in text
