"""One time unit for the tests, scaled by $HERMES_TEST_TIME_FACTOR on slow machines."""

from __future__ import annotations

import os

TIME_FACTOR = float(os.environ.get("HERMES_TEST_TIME_FACTOR", "1"))


def t(seconds: float) -> float:
    """A timeout of ``seconds`` on this machine."""
    return seconds * TIME_FACTOR
