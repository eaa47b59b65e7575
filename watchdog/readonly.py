"""Reading an SQLite state store without creating or changing anything beside it.

Shared by :class:`watchdog.store.StateStore` (read-only) and :mod:`watchdog.reader`; it
imports nothing heavy, since the status CLI starts with it.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

from watchdog.exceptions import StoreError

_SQLITE_MAGIC = b"SQLite format 3\x00"


def sidecars(path: Path) -> tuple[int, int]:
    """Sizes of the -wal and -shm files beside ``path``; -1 for one that does not exist."""

    def size(suffix: str) -> int:
        try:
            return os.stat(f"{path}{suffix}").st_size
        except FileNotFoundError:
            return -1

    return size("-wal"), size("-shm")


def read_only_uri(path: Path) -> tuple[str, tuple[int, int] | None]:
    """An SQLite URI that reads ``path`` faithfully and creates nothing beside it; for an
    ``immutable`` one (read without locks) also the sidecar files it was chosen on.

    ``mode=ro`` alone is not enough: on a WAL database SQLite creates the -wal and -shm files
    if they are missing (or, in a directory it cannot write, fails with "attempt to write a
    readonly database"). Both exist while any connection has the database open, and SQLite
    deletes both when the last one closes cleanly; a crash leaves both. So:

    - both present: a gateway has it open, or died: ``mode=ro``, through SQLite's locks and
      WAL index (nothing is created, both exist);
    - a -wal holding data without its -shm (copied or cleaned up by hand): no way to read the
      data without creating the -shm; refused;
    - otherwise no connection has the database open and no WAL holds data: a WAL database is
      read ``immutable`` (no locks, no sidecar files). If a gateway opens it meanwhile,
      :meth:`StateStore.read_consistently` notices and reads again through the locks;
    - a rollback-journal database (not WAL) creates nothing under ``mode=ro``, which also
      respects a hot journal that ``immutable`` would ignore.
    """
    wal, shm = quiet = sidecars(path)
    uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"  # a "?" or "#" in the path is data
    if wal >= 0 and shm >= 0:
        return uri, None
    if wal > 0:
        raise StoreError(
            f"{path}-wal holds transactions but {path.name}-shm is missing: reading them would "
            f"create {path.name}-shm. Start the gateway once (it folds the WAL into the "
            f"database), or run sqlite3 {path} 'PRAGMA wal_checkpoint' as a user who may write there"
        )
    try:
        with path.open("rb") as f:
            header = f.read(100)
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc
    wal_mode = header.startswith(_SQLITE_MAGIC) and len(header) == 100 and 2 in header[18:20]
    if wal_mode or wal >= 0 or shm >= 0:
        return f"{uri}&immutable=1", quiet
    return uri, None
