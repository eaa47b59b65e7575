from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from tests.support.notify import NotifyListener

PG_URL = os.environ.get(
    "HERMES_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh schema in the test PostgreSQL, selected through search_path; dropped afterwards."""
    schema = f"hermes_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except OperationalError as exc:
        admin.dispose()
        pytest.fail(f"PostgreSQL is not reachable at {PG_URL} (`make test` starts it): {exc}")
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'hermes.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(params=["path", "abstract"])
async def notify(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[NotifyListener]:
    listener = NotifyListener(tmp_path, abstract=request.param == "abstract")
    listener.start()
    try:
        yield listener
    finally:
        listener.close()


@pytest.fixture
async def notify_path(tmp_path: Path) -> AsyncIterator[NotifyListener]:
    listener = NotifyListener(tmp_path)
    listener.start()
    try:
        yield listener
    finally:
        listener.close()
