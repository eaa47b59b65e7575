"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from hermes.adapters.qqbot.simulator import QQSimulator


@pytest.fixture
async def sim(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[QQSimulator]:
    """A QQ simulator on 127.0.0.1 with a 0.2 s heartbeat; ``QQ_SECRET`` holds its secret,
    for configs that say ``client_secret = "env:QQ_SECRET"``."""
    async with QQSimulator(heartbeat_interval=0.2) as s:
        monkeypatch.setenv("QQ_SECRET", s.client_secret)
        yield s
