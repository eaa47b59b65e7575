"""The gateway under a real systemd (sandboxed), run by the unit file from deploy/.

The unit is adapted only where this machine differs from a production host: paths,
no DynamicUser (the sandbox has no user database for it), no StateDirectory= (it would
create /var/lib/hermes on the shared filesystem), short timers so the test is quick.
Every hardening directive stays, except ProtectHome=yes -> read-only: this machine's
Python lives under /root (pyenv), which ProtectHome=yes hides.
"""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.configs import write_config
from tests.support.proc import HERMES, HERMES_WATCHDOG, REPO, run_cli
from tests.support.sandbox import SystemdSandbox, sandbox_unavailable_reason

pytestmark = pytest.mark.systemd
UNIT = "hermes-gateway.service"
PROPS = (
    "NRestarts",
    "Result",
    "ActiveState",
    "SubState",
    "ExecMainCode",
    "ExecMainStatus",
    "StatusText",
)


def adapt_unit(text: str, set_: dict[str, str | None], add: dict[str, list[str]]) -> str:
    """Replace (or with None remove) ``Key=`` lines, and append lines to sections."""
    out: list[str] = []
    section = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            if section in add:
                out.extend(add.pop(section))
            section = stripped
        key = (
            stripped.split("=", 1)[0] if "=" in stripped and not stripped.startswith("#") else None
        )
        if key in set_:
            value = set_[key]
            if value is not None:
                out.append(f"{key}={value}")
            set_ = {k: v for k, v in set_.items() if k != key} if value is not None else set_
            continue
        out.append(line)
    if section in add:
        out.extend(add.pop(section))
    assert not add, f"sections not found: {list(add)}"
    return "\n".join(out) + "\n"


@pytest.fixture
def workdir() -> Iterator[Path]:
    reason = sandbox_unavailable_reason()
    if reason:
        pytest.skip(reason)
    path = REPO / ".sandbox" / f"gw-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def unit_for(workdir: Path, config: Path, *, watchdog_sec: str, start_limit_burst: int) -> str:
    deployed = (REPO / "deploy" / UNIT).read_text()
    binds = [f"BindReadOnlyPaths={REPO}"] if str(REPO).startswith(("/tmp/", "/var/tmp/")) else []
    return adapt_unit(
        deployed,
        {
            "After": None,
            "Wants": None,
            "StartLimitBurst": str(start_limit_burst),
            "ExecStart": f"{HERMES} run --config {config}",
            "WatchdogSec": watchdog_sec,
            "RestartSec": "500ms",
            "DynamicUser": None,
            "StateDirectory": None,
            "StateDirectoryMode": None,
            "ProtectHome": "read-only",
        },
        {
            "[Unit]": ["DefaultDependencies=no"],
            "[Service]": [
                f"ReadWritePaths={workdir}",
                f"StandardOutput=append:{workdir}/gateway.log",
                "StandardError=inherit",
                f"Environment=PYTHONPATH={REPO}",
                *binds,
            ],
        },
    )


def sandbox(workdir: Path, unit: str) -> SystemdSandbox:
    preserve = [REPO, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()]
    return SystemdSandbox(workdir, {UNIT: unit}, wants=[UNIT], preserve=preserve)


def test_a_silently_dying_adapter_gets_the_unit_restarted_and_the_reason_stays_in_sql(workdir):
    config = write_config(
        workdir,
        {"bot": {"adapter": "demo", "die_after": 1.0, "event_interval": 0.2, "restart_max": 0}},
        tick=0.25,
        store={"directory": str(workdir / "state")},
        gateway={"log_level": "INFO"},
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
    config = write_config(
        workdir,
        {"bot": {"runs": [["connect", "behave 0.5", "block 30"]]}},
        tick=0.25,
        store={"directory": str(workdir / "state")},
        gateway={"log_level": "INFO"},
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
