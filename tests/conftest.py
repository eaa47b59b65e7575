from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from tests.support.notify import NotifyListener
from tests.support.pg import PG_URL, create_schema


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh schema in the test PostgreSQL, selected through search_path; dropped afterwards."""
    try:
        url, drop = create_schema("hermes_test")
    except OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_URL} (`make test` starts it): {exc}")
    try:
        yield url
    finally:
        drop()


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
