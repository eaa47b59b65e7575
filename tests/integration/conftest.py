"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from hermes.simulators.qqbot import QQSimulator
from hermes.simulators.telegram import TelegramSimulator
from tests.support.pgserver import PgServer, missing_reason


@pytest.fixture
async def sim(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[QQSimulator]:
    """A QQ simulator on 127.0.0.1 with a 0.2 s heartbeat; ``QQ_SECRET`` holds its secret,
    for configs that say ``client_secret = "env:QQ_SECRET"``."""
    async with QQSimulator(heartbeat_interval=0.2) as s:
        monkeypatch.setenv("QQ_SECRET", s.client_secret)
        yield s


@pytest.fixture
async def tg(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TelegramSimulator]:
    """A Telegram Bot API simulator whose token is in ``TG_TOKEN``, for configs that say
    ``token = "env:TG_TOKEN"``; 409 conflicts answered at once (the server paces them 3 s)."""
    async with TelegramSimulator(conflict_pacing=0.05) as s:
        monkeypatch.setenv("TG_TOKEN", s.token)
        yield s


@pytest.fixture
def own_pg() -> Iterator[PgServer]:
    """A PostgreSQL server of this test's own, running (``stop()`` and ``start()`` it for an
    outage); always stopped and removed afterwards. Skipped where PostgreSQL's server
    binaries are not installed."""
    why = missing_reason()
    if why is not None:
        pytest.skip(f"no PostgreSQL server of the test's own: {why}")
    server = PgServer()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.destroy()
