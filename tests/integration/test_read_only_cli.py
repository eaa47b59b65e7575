"""Every command that only reads the state store leaves its directory as it was, byte for byte.

SQLite's ``mode=ro`` alone creates ``hermes.db-wal`` and ``hermes.db-shm`` beside a WAL
database; each case here is a directory listing with checksums, before and after each
read command run as a subprocess.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.proc import HERMES, HERMES_WATCHDOG, run_cli
from watchdog.exceptions import StoreError
from watchdog.store import SCHEMA_HEAD, StateStore

UNKNOWN = 3  # hermes-watchdog
JOBS_FAILED = 2  # hermes jobs: the store cannot be used


def snapshot(directory: Path) -> dict[str, str]:
    """Every file in ``directory``, with its SHA-256."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def real_store(db: Path) -> None:
    """A store written by a real gateway: ``hermes run`` until its platform dies (exit 75).

    Its store was in WAL mode and closed cleanly, so SQLite removed the -wal and -shm files."""
    config = db.parent.parent / "writer.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{db}"\n[watchdog]\ntick_interval = 0.1\n'
        '[platforms.bot]\nadapter = "demo"\ndie_after = 0.3\nrestart_max = 0\n'
    )
    result = run_cli(HERMES, "run", "--config", str(config))
    assert result.returncode == 75, result.stderr[-2000:]


def wal_at_future_schema(db: Path) -> None:
    real_store(db)
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
        conn.commit()
    finally:
        conn.close()


def garbage_after_header(db: Path) -> None:
    real_store(db)
    header = db.read_bytes()[:100]
    assert header[18:20] == b"\x02\x02"  # WAL
    db.write_bytes(header + bytes(range(256)) * 64)


def empty_file(db: Path) -> None:
    db.write_bytes(b"")


def missing_file(db: Path) -> None:
    pass


CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "wal-future-schema": (wal_at_future_schema, "has schema 9999, newer than this hermes"),
    "garbage-after-header": (garbage_after_header, "database disk image is malformed"),
    "empty-file": (empty_file, "is not a hermes state store"),
    "missing-file": (missing_file, "no state store at"),
    "healthy-wal-without-shm": (real_store, ""),
}

COMMANDS: dict[str, tuple[list[str], int]] = {
    # command line (after the program), exit code expected for a healthy store
    "status": (["status", "--json"], 2),  # the gateway stopped (exit 75)
    "history": (["history", "bot"], 0),
    "jobs list": (["jobs", "list"], 0),
    "jobs history": (["jobs", "history"], 0),
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each case's store, made once (a real gateway run each) and shared by the commands."""
    dbs = {}
    for case, (make, _) in CASES.items():
        state = tmp_path_factory.mktemp(case) / "state"
        state.mkdir()
        db = state / "hermes.db"
        make(db)
        config = state.parent / "gateway.toml"
        config.write_text(f'[store]\nurl = "sqlite:///{db}"\n[platforms.bot]\nadapter = "demo"\n')
        dbs[case] = db
    return dbs


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("command", COMMANDS)
def test_a_read_command_creates_and_changes_nothing_beside_the_store(prepared, case, command):
    db = prepared[case]
    config = db.parent.parent / "gateway.toml"
    argv, healthy_exit = COMMANDS[command]
    if case == "healthy-wal-without-shm":
        assert snapshot(db.parent).keys() == {"hermes.db"}, "a clean close leaves no -wal, -shm"
    before = snapshot(db.parent)
    program = HERMES if argv[0] == "jobs" else HERMES_WATCHDOG
    result = run_cli(program, *argv, "--config", str(config))
    after = snapshot(db.parent)
    assert after == before, f"{command} changed {db.parent}: {sorted(before)} -> {sorted(after)}"
    output = result.stdout + result.stderr
    _, message = CASES[case]
    if not message:
        assert result.returncode == healthy_exit, output
        assert "Traceback" not in output
        return
    assert result.returncode == (JOBS_FAILED if program == HERMES else UNKNOWN), output
    assert message in output
    assert "Traceback" not in output


# -- the store's read path, in-process


def test_a_wal_holding_data_without_its_shm_is_refused_not_half_read(tmp_path):
    db = tmp_path / "hermes.db"
    writer = sqlite3.connect(db)
    writer.execute("PRAGMA journal_mode = WAL")
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("CREATE TABLE t (x)")
    writer.commit()
    # What a copy of a live database without its -shm looks like.
    copy = tmp_path / "copy"
    copy.mkdir()
    for suffix in ("", "-wal"):
        (copy / f"hermes.db{suffix}").write_bytes(Path(f"{db}{suffix}").read_bytes())
    writer.close()
    before = snapshot(copy)
    reader = StateStore(f"sqlite:///{copy / 'hermes.db'}", read_only=True)
    try:
        with pytest.raises(
            StoreError, match=r"hermes\.db-wal holds transactions but hermes\.db-shm is missing"
        ):
            reader.check_readable()
    finally:
        reader.close()
    assert snapshot(copy) == before


def test_a_gateway_opening_the_store_during_a_lockless_read_makes_it_read_again(tmp_path):
    url = f"sqlite:///{tmp_path / 'hermes.db'}"
    store = StateStore(url)
    store.migrate()
    store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hermes.db"]

    reader = StateStore(url, read_only=True)
    writer = StateStore(url)
    reads = []

    def read() -> str | None:
        reads.append(reader.revision())
        if len(reads) == 1:
            # A gateway starts meanwhile; its transaction sits in the WAL, which a read
            # without locks (immutable) does not see.
            with writer.engine.begin() as conn:
                conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0001'")
        return reads[-1]

    try:
        assert reader.read_consistently(read) == "0001"
    finally:
        writer.close()
        reader.close()
    assert reads == [SCHEMA_HEAD, "0001"]
