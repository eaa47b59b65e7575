"""The deployed unit file under the systemd sandbox: for the systemd tests and the benchmarks.

The unit is adapted only where this machine differs from a production host: paths,
no DynamicUser (the sandbox has no user database for it), no StateDirectory= (it would
create /var/lib/hermes on the shared filesystem), short timers so runs are quick.
Every hardening directive stays, except ProtectHome=yes -> read-only: this machine's
Python lives under /root (pyenv), which ProtectHome=yes hides.
"""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.configs import write_config
from tests.support.proc import HERMES, REPO
from tests.support.sandbox import SystemdSandbox

UNIT = "hermes-gateway.service"


@contextmanager
def sandbox_workdir(prefix: str) -> Iterator[Path]:
    """A fresh directory for one sandbox run, removed afterwards.

    Inside the repo rather than the host's /tmp: the sandbox's /tmp is a private tmpfs, and
    the files must be readable from the host afterwards. (When the repo itself is under
    /tmp, as in CI, the sandbox keeps it visible at the same path.)
    """
    path = REPO / ".sandbox" / f"{prefix}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def unit_config(
    workdir: Path,
    platforms: Mapping[str, Mapping[str, Any]],
    *,
    tick: float,
    log_level: str,
    gateway: Mapping[str, Any] | None = None,
) -> Path:
    """A gateway config whose store lives in ``workdir`` (the only path the unit may write)."""
    return write_config(
        workdir,
        platforms,
        tick=tick,
        store={"directory": str(workdir / "state")},
        gateway={"log_level": log_level, **(gateway or {})},
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


def unit_for(
    workdir: Path,
    config: Path,
    *,
    watchdog_sec: str,
    start_limit_burst: int,
    restart_sec: str = "500ms",
) -> str:
    """The deployed unit running ``config``, writing only to ``workdir`` (its log:
    ``workdir/gateway.log``), with a shorter WatchdogSec=, StartLimitBurst= and RestartSec=."""
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
            "RestartSec": restart_sec,
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


def sandbox(workdir: Path, unit: str | Mapping[str, str]) -> SystemdSandbox:
    """A sandbox running the unit text ``unit`` as :data:`UNIT`, or several units at once
    (name -> text; one boot for several checks), all started when it boots."""
    units = {UNIT: unit} if isinstance(unit, str) else dict(unit)
    preserve = [REPO, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()]
    return SystemdSandbox(workdir, units, wants=list(units), preserve=preserve)
