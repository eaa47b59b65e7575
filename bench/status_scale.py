"""`hermes-watchdog status` and `history` with 1,000 platforms and 1,000,000 transition rows,
on SQLite and PostgreSQL: the command as an operator runs it (a fresh process each time),
and where its time goes (imports against queries).

The commands read through the database driver alone (``watchdog.reader``), as installed:
bytecode compiled first (pip does that at install; with PYTHONDONTWRITEBYTECODE set, as in
the development shell, every run would otherwise compile the package's sources again).

Target: under 150 ms each.
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common import Section, fresh_pg_schema, median, p95, verdict

from tests.support.proc import HERMES_WATCHDOG, child_env
from watchdog.store import StateStore

PLATFORMS = 1_000
TRANSITIONS = 1_000_000
STATES = ("starting", "connected", "reconnecting")
HEALTH = ("ok", "degraded", "failing")


def seed(url: str, transitions: int) -> None:
    store = StateStore(url)
    try:
        store.migrate()
        now = datetime.now(UTC)
        iid = str(uuid.uuid4())
        store.begin_instance(
            {
                "id": iid,
                "host": "bench",
                "pid": 1,
                "version": "bench",
                "started_at": now - timedelta(days=30),
                "last_tick_at": now,
                "tick_interval": 2.0,
                "pinging": True,
                "store_failures": 0,
            }
        )
        rows = [
            {
                "platform": f"qq-{i:04d}",
                "adapter": "qqbot",
                "required": True,
                "declared_state": "connected",
                "declared_since": now,
                "health": "ok",
                "health_since": now,
                "last_heartbeat_at": now,
                "heartbeat_ttl": 112.5,
                "restarts": 0,
                "reason_code": None,
                "reason_message": None,
                "retryable": None,
                "instance_id": iid,
                "updated_at": now,
            }
            for i in range(PLATFORMS)
        ]
        store.replace_platforms(rows)
        rng = random.Random(7)
        start = now - timedelta(days=30)
        step = (timedelta(days=30) / transitions).total_seconds()

        def history() -> Any:
            for n in range(transitions):
                a, b = rng.choice(STATES), rng.choice(STATES)
                yield (
                    start + timedelta(seconds=n * step),
                    iid,
                    f"qq-{rng.randrange(PLATFORMS):04d}",
                    a,
                    b,
                    "ok",
                    rng.choice(HEALTH),
                    None,
                    None,
                )

        columns = "at, instance_id, platform, from_state, to_state, from_health, to_health, reason_code, reason_message"
        raw = store.engine.raw_connection()
        try:
            cur = raw.cursor()
            if store.dialect == "postgresql":
                with cur.copy(f"COPY platform_transitions ({columns}) FROM STDIN") as copy:  # type: ignore[attr-defined]
                    for row in history():
                        copy.write_row(row)
            else:
                fmt = "%Y-%m-%d %H:%M:%S.%f"
                cur.executemany(
                    f"INSERT INTO platform_transitions ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    ((r[0].replace(tzinfo=None).strftime(fmt), *r[1:]) for r in history()),
                )
            raw.commit()
        finally:
            raw.close()
        if store.dialect == "postgresql":
            with store.engine.connect() as conn:
                conn.exec_driver_sql("ANALYZE platform_transitions")
    finally:
        store.close()


def timed(argv: list[str], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, env=child_env(), check=False)
        out.append(time.perf_counter() - start)
    return out


def queries_only(url: str) -> float:
    """The same reads as `status`, in this (already imported) process."""
    from watchdog.reader import open_reader

    now = datetime.now(UTC)
    start = time.perf_counter()
    store: Any = open_reader(url) or StateStore(url, read_only=True)
    store.check_readable()
    store.latest_instance()
    store.platforms()
    store.jobs_summary(now - timedelta(hours=1))
    store.outbox_summary(now - timedelta(hours=1))
    store.transitions(limit=50)
    store.close()
    return time.perf_counter() - start


def import_seconds(driver: str) -> float:
    """Importing what `status` imports: the CLI, the reader and the database driver."""
    probe = (
        "import time; t = time.perf_counter(); "
        f"import hermes.entry, watchdog.cli, watchdog.reader, {driver}; "
        "print(time.perf_counter() - t)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=child_env(), check=True
    )
    return float(out.stdout)


def compile_bytecode() -> None:
    """What pip does at install: the commands then load bytecode instead of compiling sources."""
    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(root / "hermes"), str(root / "watchdog")],
        check=True,
    )


def run(quick: bool = False) -> Section:
    transitions = 100_000 if quick else TRANSITIONS
    repeats = 3 if quick else 7
    s = Section(
        f"Status at scale ({PLATFORMS:,} platforms, {transitions:,} transitions)",
        ["command", "database", "median", "p95", "target"],
    )
    compile_bytecode()
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_url = f"sqlite:///{Path(tmp) / 'hermes.db'}"
        pg_url, drop = fresh_pg_schema()
        try:
            for name, url in (("SQLite", sqlite_url), ("PostgreSQL", pg_url)):
                t0 = time.monotonic()
                seed(url, transitions)
                s.notes.append(f"{name}: seeded in {time.monotonic() - t0:.0f} s.")
                for label, args in (
                    ("status", ["status"]),
                    ("history (newest 50)", ["history"]),
                    ("history of one platform", ["history", "qq-0042"]),
                ):
                    samples = timed([HERMES_WATCHDOG, *args, "--database", url], repeats)
                    s.add(
                        f"hermes-watchdog {label}",
                        name,
                        f"{median(samples) * 1000:.0f} ms",
                        f"{p95(samples) * 1000:.0f} ms",
                        f"< 150 ms: {verdict(p95(samples), 0.15)}",
                    )
                    s.data[f"{name} {label}"] = samples
                q = [queries_only(url) for _ in range(repeats)]
                s.data[f"{name} queries"] = q
                s.notes.append(
                    f"{name}: the queries of `status` take {median(q) * 1000:.0f} ms in a warm process."
                )
        finally:
            drop()
    imports = {d: [import_seconds(d) for _ in range(repeats)] for d in ("sqlite3", "psycopg")}
    python = timed([sys.executable, "-c", "pass"], repeats)
    s.notes.append(
        f"Where the time goes: starting Python takes {median(python) * 1000:.0f} ms; importing the "
        f"CLI's modules with sqlite3 {median(imports['sqlite3']) * 1000:.0f} ms, with psycopg "
        f"{median(imports['psycopg']) * 1000:.0f} ms (psycopg's own import is most of it), "
        "before any query. SQLAlchemy, pydantic and loguru are not imported."
    )
    s.data.update(imports=imports, python=python)
    return s


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv).markdown())
