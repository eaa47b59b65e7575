"""Boot a real systemd 252 in a private PID + mount namespace for integration tests.

Why: the gateway's liveness story rests on systemd behaviour (``Type=notify``, ``WatchdogSec=``,
``Restart=``, ``StatusText``).  Mocks of that behaviour prove nothing, and the machines the
tests run on do not have systemd as PID 1.  As root, though, ``unshare --pid --fork --mount``
gives a namespace in which ``/lib/systemd/systemd`` can be PID 1 and manage a unit for real.

The safety rule -- never boot ``default.target`` / ``multi-user.target``
-----------------------------------------------------------------------
Only *mounts* are private in the namespace; the filesystems themselves are the host's.  The
default target pulls in ``systemd-tmpfiles-setup.service``, which empties ``/tmp`` -- the real
``/tmp`` of the whole machine.  So this harness boots a target of its own,
``sandbox.target`` (``DefaultDependencies=no``, ``AllowIsolate=yes``, ``Wants=`` only the
units under test), and mounts fresh tmpfs over ``/tmp``, ``/var/tmp`` and ``/run`` first, so
anything systemd or a unit writes there vanishes with the namespace.  Nothing here ever talks
to the host's service manager; if the sandbox cannot be booted the test is skipped instead
(see :func:`sandbox_unavailable_reason`).

The preservation trick
----------------------
The tmpfs mounts hide whatever the host keeps under ``/tmp``, ``/var/tmp`` and ``/run``.  That
breaks a clean CI clone at ``/tmp/cleancheck``: its venv's scripts carry absolute shebangs
(``#!/tmp/cleancheck/.venv/bin/python``), so the venv must stay reachable at the *same* path
inside the namespace.  The boot script therefore, before mounting the tmpfs, bind-mounts every
preserved path that lives under one of those three directories into a holding place outside
them (a private tmpfs mounted over ``/mnt`` inside the namespace only), mounts the tmpfs,
recreates each path on the new tmpfs, binds it back from the holding place and unmounts the
holding place again (so ``/mnt`` looks as before).  Paths elsewhere are visible anyway.

Further safeguards
------------------
- The units under test go to ``/run/systemd/system.control``, which outranks
  ``/etc/systemd/system``; ``/run/systemd/system`` ranks below it, so a same-named unit installed
  on the host would silently replace the one under test.
- ``default.target``, ``multi-user.target``, ``sysinit.target`` (and friends) and the
  ``systemd-tmpfiles-*`` units are masked in the namespace, so no ``Wants=``/``Requires=`` of a
  unit under test can start the host's enabled services or tmpfiles on the shared filesystems.
- There is no cgroup namespace, so each sandbox starts systemd in a fresh cgroup of its own
  (see :func:`_own_cgroup_dirs`) and removes it on close.

Teardown is ``kill -9`` of the namespace's PID 1 (the process that became systemd): when a PID
namespace's init dies the kernel kills every process in it.  Killing ``unshare`` alone would
leave systemd running, so the harness tracks systemd's PID and bounds every wait.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from tests.support.timing import TIME_FACTOR
from tests.support.timing import t as _scaled  # every timeout here, and those callers pass in

__all__ = [
    "SYSTEMD_BINARY",
    "TIME_FACTOR",
    "SystemdSandbox",
    "sandbox_unavailable_reason",
]

#: The systemd binary booted as the namespace's PID 1.
SYSTEMD_BINARY = Path("/lib/systemd/systemd")

#: Directories the boot script covers with a private tmpfs (systemd and units write there).
_COVERED_ROOTS = (Path("/tmp"), Path("/var/tmp"), Path("/run"))

#: Where the boot script parks preserved paths while it mounts the tmpfs: a private tmpfs mounted
#: over /mnt *inside the namespace* for a moment, so nothing is created on the host's filesystems
#: and it works even when workdir itself is under /tmp (a CI clone at /tmp/cleancheck).
_HOLD = Path("/mnt")

#: The target the namespace's systemd boots instead of default.target (see module docstring).
_TARGET = "sandbox.target"

#: Where the units under test go: the runtime "control" directory, which outranks
#: /etc/systemd/system.  (/run/systemd/system ranks *below* /etc, so a unit of the same name
#: installed on the host would silently replace the one under test.)
_UNIT_DIR = Path("/run/systemd/system.control")

#: Masked in the namespace (symlinks to /dev/null in _UNIT_DIR), so that no dependency of a unit
#: under test can pull in the host's boot: sysinit.target wants systemd-tmpfiles-setup.service,
#: which would rewrite /var and the like on the shared filesystems, and multi-user.target wants
#: every service enabled on the host (databases, ...).  Masked dependencies are skipped, so even a
#: unit with DefaultDependencies=yes or Wants=multi-user.target starts alone.
_MASKED = (
    "default.target",
    "multi-user.target",
    "graphical.target",
    "basic.target",
    "sysinit.target",
    "local-fs.target",
    "network-online.target",
    "systemd-tmpfiles-setup.service",
    "systemd-tmpfiles-setup-dev.service",
    "systemd-tmpfiles-clean.service",
    "systemd-tmpfiles-clean.timer",
)

#: Tools the harness runs; all from util-linux.
_TOOLS = ("unshare", "nsenter", "setsid")

#: Answers of ``systemctl is-system-running`` that prove the manager is up and listening.
_MANAGER_UP = frozenset(
    {"initializing", "starting", "running", "degraded", "maintenance", "stopping"}
)

_POLL_INTERVAL = 0.1


def sandbox_unavailable_reason() -> str | None:
    """Say why a systemd sandbox cannot be booted here, or ``None`` if it can.

    Tests ``pytest.skip()`` with the reason; there is deliberately no fallback, because every
    fallback would involve the host's own service manager.
    """
    if os.geteuid() != 0:
        return "booting systemd in a private PID/mount namespace needs root"
    for tool in _TOOLS:
        if shutil.which(tool) is None:
            return f"`{tool}` (util-linux) is not installed"
    if not os.access(SYSTEMD_BINARY, os.X_OK):
        return f"{SYSTEMD_BINARY} is missing (systemd is not installed)"
    return None


def _is_under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _covered_root(path: Path) -> Path | None:
    """The tmpfs-covered root ``path`` lives under, if any."""
    for root in _COVERED_ROOTS:
        if _is_under(path, root):
            return root
    return None


def _tail(path: Path, max_lines: int = 40, max_chars: int = 4000) -> str:
    """The end of a log file, for failure messages; never raises."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    text = data[-max_chars:].decode("utf-8", errors="replace")
    lines = text.splitlines()[-max_lines:]
    return "\n".join(lines) if lines else "<empty>"


def _children(pid: int) -> list[int]:
    """Direct children of ``pid``.

    Uses ``/proc/<pid>/task/<pid>/children`` when the kernel provides it, else scans
    ``/proc/*/stat`` for the parent PID.
    """
    children_file = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(tok) for tok in children_file.read_text().split()]
    except FileNotFoundError:
        pass
    except OSError:
        return []
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Field 4 is the PPID; the command name (field 2) may contain spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry.name))
    return found


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _unescape_mountinfo(field: str) -> str:
    """Undo the octal escapes (``\\040`` for a space) of /proc/self/mountinfo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _own_cgroup_dirs(tag: str) -> list[Path] | None:
    """Per-sandbox cgroup directories for the hierarchies systemd tracks processes with.

    Why: there is no cgroup namespace here, so the sandboxed systemd works in the host's cgroup
    trees, rooted at the cgroup it was started in.  Booted from the caller's cgroup it creates
    ``init.scope`` and ``system.slice/<unit>`` there: shared by every sandbox booted from the
    same cgroup (two concurrent sandboxes running the same unit would watch one cgroup), left
    behind after ``kill -9``, and, when that cgroup is the root of the cgroup-v1 tracking
    hierarchy, systemd finds the same path in *every* v1 controller hierarchy and re-homes its
    processes there, i.e. out of the caller's memory/pids cgroups.  Starting it in a fresh
    cgroup of its own (a path that exists in no controller hierarchy) avoids all three; the
    boot script joins these directories and :meth:`SystemdSandbox.close` removes them.

    Reads /proc/self/mountinfo and /proc/self/cgroup; returns None for layouts it does not
    understand, in which case the sandbox shares the caller's cgroups (the plain recipe).
    """
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
        own = Path("/proc/self/cgroup").read_text()
    except OSError:
        return None
    v2_path: str | None = None
    named_path: str | None = None
    for line in own.splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            v2_path = path
        elif "name=systemd" in controllers.split(","):
            named_path = path
    cgroup_root = Path("/sys/fs/cgroup")
    root_type: str | None = None
    v2_mount: Path | None = None
    named_mount: Path | None = None
    for line in mountinfo.splitlines():
        pre, sep, post = line.partition(" - ")
        fields, tail = pre.split(), post.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        mount_root, mount_point = fields[3], Path(_unescape_mountinfo(fields[4]))
        fstype, super_opts = tail[0], tail[2].split(",")
        if mount_point == cgroup_root:
            root_type = fstype
        if not _is_under(mount_point, cgroup_root) or mount_root != "/":
            continue
        if fstype == "cgroup2":
            v2_mount = mount_point
        elif fstype == "cgroup" and "name=systemd" in super_opts:
            named_mount = mount_point
    name = f"hermes-sandbox-{tag}"
    if root_type == "cgroup2" and v2_mount == cgroup_root and v2_path is not None:
        return [cgroup_root / v2_path.lstrip("/") / name]  # pure cgroup v2
    if root_type == "tmpfs" and named_mount is not None and named_path is not None:
        dirs = [named_mount / named_path.lstrip("/") / name]  # legacy v1 ...
        if v2_mount is not None and v2_path is not None:
            dirs.append(v2_mount / v2_path.lstrip("/") / name)  # ... or hybrid
        return dirs
    return None


def _remove_cgroup_tree(top: Path, timeout: float) -> None:
    """rmdir a cgroup and its children, deepest first; bounded retries while they drain."""
    deadline = time.monotonic() + timeout
    while top.exists():
        for dirpath, _dirnames, _files in os.walk(top, topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)
        if not top.exists() or time.monotonic() >= deadline:
            return
        time.sleep(0.05)


class SystemdSandbox:
    """A real systemd managing ``units`` inside a private PID + mount namespace.

    Use as a context manager, or call :meth:`start` and (always, in a ``finally``)
    :meth:`close`.  All timeouts, including those passed to the methods, are nominal seconds
    multiplied by :data:`TIME_FACTOR`.
    """

    def __init__(
        self,
        workdir: Path,
        units: Mapping[str, str],
        wants: Sequence[str],
        preserve: Sequence[Path] = (),
    ) -> None:
        """Describe a sandbox; nothing is started until :meth:`start`.

        ``workdir`` must exist; the boot script, the unit files and the namespace log go there
        and it stays visible (at the same path) inside the namespace.  ``units`` maps unit file
        names to their text; ``wants`` names the units ``sandbox.target`` pulls in.
        ``preserve`` lists host paths that must stay reachable at the same path although
        ``/tmp``, ``/var/tmp`` and ``/run`` are covered by tmpfs.
        """
        self.workdir = Path(os.path.abspath(workdir))
        if not self.workdir.is_dir():
            raise NotADirectoryError(f"sandbox workdir {self.workdir} is not a directory")
        for name in units:
            if "/" in name or name in {"", ".", ".."}:
                raise ValueError(f"bad unit file name {name!r}")
            if name == _TARGET or name in _MASKED:
                raise ValueError(f"{name} is reserved by the sandbox harness")
        self.units: dict[str, str] = dict(units)
        self.wants: tuple[str, ...] = tuple(wants)
        self.preserve: tuple[Path, ...] = tuple(Path(os.path.abspath(p)) for p in preserve)
        self.log_path = self.workdir / "sandbox.log"
        self.script_path = self.workdir / "sandbox-boot.sh"
        self.unit_source_dir = self.workdir / "sandbox-units"
        self._tag = uuid.uuid4().hex[:12]
        self._cgroups: list[Path] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._pid: int | None = None
        self._started = False
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """Host PID of the namespace's PID 1 (systemd), as recorded by :meth:`start`."""
        if self._pid is None:
            raise RuntimeError("the sandbox has not been started")
        return self._pid

    @property
    def cgroups(self) -> tuple[Path, ...]:
        """This sandbox's own cgroup directories (empty when it shares the caller's)."""
        return tuple(self._cgroups)

    def __enter__(self) -> SystemdSandbox:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Boot systemd in the namespace and wait until its manager answers ``systemctl``.

        On any failure the half-started namespace is torn down before the error propagates.
        """
        if self._started:
            raise RuntimeError("a SystemdSandbox can be started only once")
        self._started = True
        # Safety net for callers that forget close(): no namespace outlives the test run.
        atexit.register(self.close)
        try:
            self._prepare_cgroups()
            self._write_files()
            self._launch()
            self._find_systemd()
            self._wait_manager_up()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Kill the namespace (``kill -9`` of its PID 1) and reap ``unshare``; idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        proc = self._proc
        try:
            if proc is not None:
                # Only signal while unshare is alive: once it has been reaped the namespace is
                # gone and the recorded PID may already belong to someone else.
                if proc.poll() is None:
                    if self._pid is None:
                        self._pid = next(iter(_children(proc.pid)), None)
                    if self._pid is not None:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(self._pid, signal.SIGKILL)
                    else:
                        proc.kill()
                try:
                    proc.wait(timeout=_scaled(10))
                except subprocess.TimeoutExpired:
                    # unshare should exit as soon as its child (PID 1) dies; make sure.
                    proc.kill()
                    proc.wait(timeout=_scaled(10))
        finally:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
            # The cgroups are empty once the kernel has finished reaping the namespace.
            for directory in self._cgroups:
                _remove_cgroup_tree(directory, timeout=_scaled(5))

    # -- talking to the namespace -------------------------------------------------------------

    def nsenter(
        self,
        *argv: str,
        timeout: float,
        env: Mapping[str, str] | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the namespace (its mounts and PIDs), e.g. a CLI reading ``/run``.

        Entering a mount namespace resets the working directory to ``/``. ``env`` replaces
        the environment when given.
        """
        if self._closed or self._pid is None:
            raise RuntimeError("the sandbox is not running")
        return subprocess.run(
            ["nsenter", "-t", str(self._pid), "-m", "-p", *argv],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=_scaled(timeout),
            env=dict(env) if env is not None else None,
            check=check,
        )

    def systemctl(
        self, *args: str, check: bool = False, timeout: float = 10.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``systemctl args`` against the namespace's manager."""
        env = dict(os.environ)
        # A UTF-8 locale so that StatusText and the like come back unmangled.
        env.update(SYSTEMD_PAGER="", SYSTEMD_COLORS="0", LC_ALL="C.UTF-8")
        return self.nsenter("systemctl", *args, timeout=timeout, env=env, check=check)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show unit -p A,B,...`` as a dict (all properties when none are named)."""
        args = ["show", unit]
        if props:
            args += ["-p", ",".join(props)]
        result = self.systemctl(*args, check=True)
        values: dict[str, str] = {}
        for line in result.stdout.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key] = value
        return values

    def wait_for(
        self,
        unit: str,
        predicate: Callable[[dict[str, str]], bool],
        props: Sequence[str],
        timeout: float,
        what: str,
        logs: Sequence[Path] = (),
    ) -> dict[str, str]:
        """Poll ``show(unit, *props)`` until ``predicate`` holds; return those properties.

        Polling is the only way to observe another process's (systemd's) state from here.  On
        timeout an ``AssertionError`` names ``what``, the last values seen and the tails of the
        namespace log and of ``logs`` (e.g. the unit's ``StandardOutput=`` file).
        """
        deadline = time.monotonic() + _scaled(timeout)
        last: dict[str, str] = {}
        last_error = ""
        while True:
            try:
                last = self.show(unit, *props)
                last_error = ""
                if predicate(last):
                    return last
            except (subprocess.SubprocessError, OSError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                break
            time.sleep(_POLL_INTERVAL)
        parts = [
            f"timed out after {_scaled(timeout):.1f}s waiting for {what} ({unit})",
            f"last properties: {last!r}",
        ]
        if last_error:
            parts.append(f"last systemctl error: {last_error}")
        for path in (self.log_path, *logs):
            parts.append(f"--- tail of {path} ---\n{_tail(path)}")
        raise AssertionError("\n".join(parts))

    # -- start() steps ------------------------------------------------------------------------

    def _write_files(self) -> None:
        self.unit_source_dir.mkdir(exist_ok=True)
        for stale in self.unit_source_dir.iterdir():
            stale.unlink()
        for name, text in self.units.items():
            (self.unit_source_dir / name).write_text(text, encoding="utf-8")
        target = (
            "[Unit]\n"
            "Description=hermes test sandbox: only the units under test\n"
            "DefaultDependencies=no\n"
            "AllowIsolate=yes\n"
        )
        if self.wants:
            target += f"Wants={' '.join(self.wants)}\n"
        (self.unit_source_dir / _TARGET).write_text(target, encoding="utf-8")
        self.script_path.write_text(self._boot_script(), encoding="utf-8")

    def _preserved_under_covered_roots(self) -> list[Path]:
        """Paths to carry over the tmpfs mounts; nested ones ride along with their parent."""
        wanted: list[Path] = []
        for path in (self.workdir, *self.preserve):
            for candidate in {path, Path(os.path.realpath(path))}:
                if candidate in _COVERED_ROOTS:
                    raise ValueError(
                        f"cannot preserve {candidate} itself: that is what the"
                        " sandbox's private tmpfs replaces"
                    )
                if _covered_root(candidate) is not None and candidate not in wanted:
                    wanted.append(candidate)
        for path in wanted:
            if not path.exists():
                raise FileNotFoundError(f"preserved path {path} does not exist")
        wanted.sort(key=lambda p: len(p.parts))
        kept: list[Path] = []
        for path in wanted:
            if not any(_is_under(path, parent) for parent in kept):
                kept.append(path)
        return kept

    def _boot_script(self) -> str:
        q = shlex.quote
        hold = _HOLD
        cgroups = self._cgroups
        carried = self._preserved_under_covered_roots()
        lines = [
            "#!/bin/sh",
            "# Written by tests/support/sandbox.py; runs as PID 1 of a private PID+mount namespace.",
            "# It must never boot default.target: see that module's docstring.",
            "set -eu",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "export PATH",
        ]
        if cgroups:
            lines.append("# A cgroup of this sandbox's own, so systemd's cgroups are too.")
            lines += [f"echo $$ > {q(str(d / 'cgroup.procs'))}" for d in cgroups]
        lines.append("mount --make-rprivate /")
        if carried:
            lines += [
                "# Park the preserved paths outside /tmp, /var/tmp and /run before covering those.",
                f"mkdir -p {q(str(hold))}",
                f"mount -t tmpfs -o mode=700 sandbox-hold {q(str(hold))}",
            ]
            for index, path in enumerate(carried):
                slot = q(str(hold / str(index)))
                maker = "mkdir" if path.is_dir() else "touch"
                lines += [f"{maker} {slot}", f"mount --rbind {q(str(path))} {slot}"]
        lines += [
            "mount -t tmpfs -o mode=1777 sandbox-tmp /tmp",
            "mount -t tmpfs -o mode=1777 sandbox-var-tmp /var/tmp",
            "mount -t tmpfs -o mode=755 sandbox-run /run",
        ]
        if carried:
            lines.append("# Put the preserved paths back at their own paths.")
            for index, path in enumerate(carried):
                slot = q(str(hold / str(index)))
                target = q(str(path))
                if path.is_dir():
                    lines.append(f"mkdir -p {target}")
                else:
                    lines += [f"mkdir -p {q(str(path.parent))}", f"touch {target}"]
                lines.append(f"mount --rbind {slot} {target}")
            lines += [
                f"umount -R {q(str(hold))}",
            ]
        lines += [
            "# /run/systemd/system must exist: it is how systemctl knows systemd runs here.",
            f"mkdir -p /run/systemd/system {q(str(_UNIT_DIR))}",
            f"cp {q(str(self.unit_source_dir))}/* {q(str(_UNIT_DIR))}/",
            *(f"ln -s /dev/null {q(str(_UNIT_DIR / name))}" for name in _MASKED),
            f"exec env -i container=other PATH=/usr/sbin:/usr/bin:/sbin:/bin {SYSTEMD_BINARY}"
            f" --system --unit={_TARGET} --log-target=null",
            "",
        ]
        return "\n".join(lines)

    def _prepare_cgroups(self) -> None:
        """Create this sandbox's own cgroups (see :func:`_own_cgroup_dirs`); best effort."""
        wanted = _own_cgroup_dirs(self._tag)
        if wanted is None:
            return
        created: list[Path] = []
        try:
            for directory in wanted:
                directory.mkdir()
                created.append(directory)
        except OSError as exc:
            for directory in created:
                _remove_cgroup_tree(directory, timeout=_scaled(2))
            with self.log_path.open("a", encoding="utf-8") as log:
                log.write(f"sandbox: no private cgroups ({exc}); sharing the caller's\n")
            return
        self._cgroups = created

    def _launch(self) -> None:
        self._log_file = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [
                "setsid",
                "unshare",
                "--pid",
                "--fork",
                "--mount",
                "--mount-proc",
                # Should unshare die before the namespace's PID 1 is known, take PID 1 along.
                "--kill-child",
                "/bin/sh",
                str(self.script_path),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            close_fds=True,
        )

    def _boot_failure(self, message: str) -> RuntimeError:
        return RuntimeError(f"{message}\n--- tail of {self.log_path} ---\n{_tail(self.log_path)}")

    def _find_systemd(self) -> None:
        """Record the PID of unshare's child, then wait until it has exec'd systemd.

        The PID is recorded as soon as the child exists (still the boot shell), so that
        :meth:`close` kills the namespace even if systemd never comes up.
        """
        assert self._proc is not None
        unshare_pid = self._proc.pid
        deadline = time.monotonic() + _scaled(10)
        while True:
            if self._proc.poll() is not None:
                raise self._boot_failure(
                    f"unshare exited with status {self._proc.returncode} during boot"
                )
            if self._pid is None:
                children = _children(unshare_pid)
                if children:
                    self._pid = children[0]
            if self._pid is not None and _comm(self._pid) == "systemd":
                return
            if time.monotonic() >= deadline:
                raise self._boot_failure(
                    f"no systemd appeared under unshare (pid {unshare_pid}); child pid {self._pid}"
                )
            time.sleep(0.02)

    def _wait_manager_up(self) -> None:
        deadline = time.monotonic() + _scaled(15)
        state = ""
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise self._boot_failure(
                    f"the namespace died during boot (unshare status {self._proc.returncode})"
                )
            try:
                result = self.systemctl("is-system-running", timeout=5)
                lines = (result.stdout.strip() or result.stderr.strip()).splitlines()
                state = lines[-1] if lines else ""
                if state in _MANAGER_UP:
                    return
            except subprocess.TimeoutExpired as exc:
                state = f"<timeout: {exc}>"
            if time.monotonic() >= deadline:
                raise self._boot_failure(
                    f"systemd (pid {self._pid}) did not answer `systemctl is-system-running`;"
                    f" last answer: {state!r}"
                )
            time.sleep(_POLL_INTERVAL)
