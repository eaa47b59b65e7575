"""Self-test of tests/support/sandbox.py against a real systemd, independent of the project.

Why: the gateway's systemd integration tests trust this harness to report what systemd really
does.  These tests prove, with a throwaway unit, that a ``Type=notify`` service's watchdog
timeout is enforced and restarts it, that a UTF-8 ``STATUS=`` reaches ``StatusText`` intact,
and that ``close()`` leaves no process behind.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway_unit import sandbox_workdir
from tests.support.proc import REPO
from tests.support.sandbox import TIME_FACTOR, SystemdSandbox, sandbox_unavailable_reason

pytestmark = pytest.mark.systemd
UNIT = "sandbox-selftest.service"
STATUS_TEXT = "状态正常 (watchdog self-test)"

# Sends READY=1 and a Chinese STATUS=, pings the watchdog a few times, then goes silent so
# that systemd's WatchdogSec= must kill and restart it.  On the watchdog's SIGABRT it leaves a
# line in its log (lasting evidence of who killed it) and lingers briefly before dying of that
# signal, so the "stop-watchdog"/"auto-restart" window with Result=watchdog is wide enough to
# observe.
SERVICE_PY = """\
import os
import signal
import socket
import time

STATUS = {status!r}
LINGER = {linger!r}


def on_abort(signum, frame):
    print("got SIGABRT from the watchdog", flush=True)
    time.sleep(LINGER)
    signal.signal(signal.SIGABRT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGABRT)


signal.signal(signal.SIGABRT, on_abort)


def notify(message: str) -> None:
    address = os.environ["NOTIFY_SOCKET"]
    if address.startswith("@"):
        address = "\\0" + address[1:]  # abstract namespace socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode("utf-8"), address)


print("service started, pid", os.getpid(), flush=True)
notify("READY=1\\nSTATUS=" + STATUS)
for _ in range(4):
    time.sleep(0.5)
    notify("WATCHDOG=1")
print("service stops pinging the watchdog", flush=True)
time.sleep(3600)
"""


def _unit_text(workdir: Path, extra_service_lines: str = "") -> str:
    return f"""\
[Unit]
Description=sandbox harness self-test
DefaultDependencies=no

[Service]
Type=notify
NotifyAccess=main
WatchdogSec=2s
Restart=on-failure
RestartSec=0.5s
StandardOutput=append:{workdir}/svc.log
StandardError=inherit
# The watchdog's SIGABRT must not drop a core file on the shared filesystem.
LimitCORE=0
ExecStart={sys.executable} {workdir}/svc.py
{extra_service_lines}"""


# The hardening a production unit is likely to carry; all of it takes effect inside the sandbox
# (the test checks NoNewPrivs and the seccomp filter; by hand: private /dev, read-only /usr and
# /root, writable workdir).  Two deviations from the obvious profile, both about where Python
# lives:
# - ProtectHome=read-only, not yes: `yes` makes /root and /home inaccessible, and a pyenv or
#   user-installed interpreter (the venv's python is a symlink into /root/.pyenv here) then
#   fails to exec with status 203/EXEC.
# - PrivateTmp=yes gives the service an empty /tmp, which hides a clone under /tmp (CI runs from
#   /tmp/cleancheck): such paths are bound back into the service's namespace explicitly.
HARDENING = """\
ProtectSystem=strict
PrivateTmp=yes
ProtectHome=read-only
PrivateDevices=yes
NoNewPrivileges=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
SystemCallFilter=@system-service
ReadWritePaths={workdir}
"""


def _hardening(workdir: Path) -> str:
    lines = HARDENING.format(workdir=workdir)
    prefix = Path(os.path.realpath(sys.prefix))
    for path, directive in ((prefix, "BindReadOnlyPaths"), (workdir, "BindPaths")):
        if any(root == path or root in path.parents for root in (Path("/tmp"), Path("/var/tmp"))):
            lines += f"{directive}={path}\n"
    return lines


def _preserve() -> list[Path]:
    # sys.executable may live in a clean clone under /tmp (e.g. /tmp/cleancheck/.venv), which
    # the sandbox covers with a tmpfs unless it is preserved.
    return [REPO, Path(os.path.realpath(sys.prefix))]


@pytest.fixture
def workdir() -> Iterator[Path]:
    reason = sandbox_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with sandbox_workdir("selftest") as path:
        service = SERVICE_PY.format(status=STATUS_TEXT, linger=0.5 * TIME_FACTOR)
        (path / "svc.py").write_text(service, encoding="utf-8")
        yield path


@pytest.mark.parametrize("hardened", [False, True], ids=["plain", "hardened"])
def test_watchdog_restarts_silent_notify_service_and_status_is_utf8(
    workdir: Path, hardened: bool
) -> None:
    svc_log = workdir / "svc.log"
    unit = _unit_text(workdir, _hardening(workdir) if hardened else "")
    with SystemdSandbox(workdir, {UNIT: unit}, wants=[UNIT], preserve=_preserve()) as sandbox:
        running = sandbox.wait_for(
            UNIT,
            lambda p: p.get("ActiveState") == "active" and p.get("SubState") == "running",
            ["ActiveState", "SubState", "StatusText", "NRestarts", "MainPID"],
            timeout=10,
            what="the notify service to report READY=1",
            logs=[svc_log],
        )
        assert running["StatusText"] == STATUS_TEXT
        assert running["NRestarts"] == "0"
        if hardened:
            # MainPID is a PID of the namespace, so read its status from inside.
            status = sandbox.nsenter(
                "cat", f"/proc/{running['MainPID']}/status", timeout=5, check=True
            ).stdout
            assert "NoNewPrivs:\t1" in status
            assert "Seccomp:\t2" in status  # filter mode: SystemCallFilter= is in force

        killed = sandbox.wait_for(
            UNIT,
            lambda p: p.get("Result") == "watchdog",
            ["Result", "ActiveState", "SubState", "NRestarts"],
            timeout=10,
            what="the watchdog to fire on the silent service (Result=watchdog)",
            logs=[svc_log],
        )
        assert killed["SubState"] in {
            "stop-watchdog",
            "stop-sigterm",
            "stop-sigkill",
            "auto-restart",
        }
        sandbox.wait_for(
            UNIT,
            lambda p: int(p.get("NRestarts") or 0) >= 1 and p.get("SubState") == "running",
            ["NRestarts", "Result", "ActiveState", "SubState"],
            timeout=10,
            what="Restart=on-failure to bring the service back",
            logs=[svc_log],
        )

    log = svc_log.read_text(encoding="utf-8")
    assert log.count("service started") >= 2, log
    assert "stops pinging" in log
    assert "got SIGABRT from the watchdog" in log


def test_close_leaves_no_process_behind(workdir: Path) -> None:
    sandbox = SystemdSandbox(
        workdir, {UNIT: _unit_text(workdir)}, wants=[UNIT], preserve=_preserve()
    )
    sandbox.start()
    try:
        pid = sandbox.pid
        cgroups = sandbox.cgroups
        assert all(path.is_dir() for path in cgroups)
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "systemd"
        props = sandbox.wait_for(
            UNIT,
            lambda p: p.get("ActiveState") == "active",
            ["ActiveState", "MainPID"],
            timeout=10,
            what="the service to start",
            logs=[workdir / "svc.log"],
        )
    finally:
        sandbox.close()
    sandbox.close()  # idempotent
    assert not Path(f"/proc/{pid}").exists(), f"systemd pid {pid} survived close()"
    assert not [path for path in cgroups if path.exists()], "close() left cgroups behind"
    # MainPID is the service's PID inside the namespace; find its host PID by its command line.
    assert props["MainPID"] != "0"
    leftovers = [
        entry.name
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _cmdline_mentions(entry, str(workdir / "svc.py"))
    ]
    assert not leftovers, f"service processes survived close(): {leftovers}"


def _cmdline_mentions(proc_dir: Path, needle: str) -> bool:
    try:
        return needle in (proc_dir / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
