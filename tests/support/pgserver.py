"""A PostgreSQL server of the test's own, to stop and start again (a database outage).

The shared test server (``tests/support/pg.py``) must never go down under other tests, so
a test that needs an outage runs its own: ``initdb`` into a fresh directory, trust
authentication, on a free port of 127.0.0.1 and a socket directory of its own. Run as
root, every PostgreSQL binary runs as the ``postgres`` user (the server refuses root),
and the directory is handed to that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.support.timing import t

SERVER_USER = "postgres"


def find_bindir() -> Path | None:
    """The newest PostgreSQL installation with both ``initdb`` and ``pg_ctl``, if any."""

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if all(os.access(Path(bindir, exe), os.X_OK) for exe in ("initdb", "pg_ctl")):
            return Path(bindir)
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    return None


def missing_reason() -> str | None:
    """Why a server of our own cannot run here (None: it can)."""
    if find_bindir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or PATH"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root, and there is no {SERVER_USER!r} user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root, and runuser (to run PostgreSQL as postgres) is missing"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServerError(RuntimeError):
    """A PostgreSQL command of the test server failed; the message holds its output."""


class PgServer:
    """One throw-away cluster. ``start()``, ``stop()``, ``start()`` again (same port),
    ``destroy()`` at the end (stops it if running, removes the directory)."""

    def __init__(self) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise PgServerError("no PostgreSQL binaries")
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="hermes-pgserver-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.running = False
        self.ever_started = False
        self.sockets.mkdir()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            user = pwd.getpwnam(SERVER_USER)
            for path in (self.root, self.sockets):
                os.chown(path, user.pw_uid, user.pw_gid)

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the ``postgres`` database on this server."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str, timeout: float = 60) -> str:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if self._as_root:
            cmd = ["runuser", "-u", SERVER_USER, "--", *cmd]
        try:
            done = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=t(timeout),
                check=False,
                cwd=self.root,
            )
        except subprocess.TimeoutExpired as exc:
            raise PgServerError(f"{argv[0]} did not finish within {exc.timeout:g} s") from exc
        if done.returncode != 0:
            raise PgServerError(
                f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
                f"\n--- server log ---\n{self.server_log()}"
            )
        return done.stdout

    def server_log(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]
        except OSError:
            return "(none)"

    def init(self) -> None:
        # --no-sync and fsync=off: a throw-away cluster, no durability needed, much faster.
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        )

    def start(self) -> None:
        """Start (or start again, on the same port) and wait until it takes connections.
        The first start takes another free port if the one chosen was taken meanwhile."""
        if self.ever_started:
            self._start()
            return
        for attempt in range(3):
            try:
                self._start()
                break
            except PgServerError:
                if attempt == 2 or "already in use" not in self.server_log():
                    raise
                self.port = free_port()
        self.ever_started = True

    def _start(self) -> None:
        options = (
            f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c max_connections=50"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop now: ``fast`` ends every session (the clients see their connections
        dropped), ``immediate`` is a crash without a shutdown checkpoint."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
        self.running = False

    def destroy(self) -> None:
        """Stop it if it runs, and remove everything it wrote; never raises for a server
        already gone."""
        try:
            if self.running or (self.data / "postmaster.pid").exists():
                self.stop("immediate")
        except PgServerError:
            pass
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
