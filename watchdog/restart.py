"""Restart policy: Erlang/OTP-style intensity (N restarts in T seconds) with exponential backoff."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How often a failing platform may be restarted in-process.

    At most ``max_restarts`` restarts within any ``window`` seconds, and at most
    ``max_restarts`` restarts in a row whose attempts showed no proof of life, however
    far apart: the window forgives restarts separated by a working platform, not one
    long outage cut into slow attempts. The n-th restart waits
    ``backoff_initial * backoff_factor**n`` seconds, capped at ``backoff_max``.
    ``max_restarts = 0`` makes the first failure fatal.
    """

    max_restarts: int = 5
    window: float = 300.0
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    backoff_factor: float = 2.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ValueError("max_restarts must be >= 0")
        if self.window <= 0:
            raise ValueError("window must be > 0")
        if self.backoff_initial < 0 or self.backoff_max < self.backoff_initial:
            raise ValueError("need 0 <= backoff_initial <= backoff_max")
        if self.backoff_factor < 1:
            raise ValueError("backoff_factor must be >= 1")


class RestartBudget:
    """The restarts a platform has spent recently; pure, the caller passes ``now``."""

    __slots__ = ("_times", "policy", "unproven")

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self._times: deque[float] = deque()
        self.unproven = 0
        """Restarts in a row after attempts that showed no proof of life."""

    def _forget_old(self, now: float) -> None:
        horizon = now - self.policy.window
        while self._times and self._times[0] <= horizon:
            self._times.popleft()

    def used(self, now: float) -> int:
        """Restarts spent inside the window ending at ``now``."""
        self._forget_old(now)
        return len(self._times)

    def request(self, now: float, *, proven: bool = True) -> float | None:
        """Spend one restart: the delay to wait before it, or ``None`` when the budget is spent.

        ``proven`` says whether the failed attempt showed any proof of life.
        """
        self._forget_old(now)
        p = self.policy
        unproven = 0 if proven else self.unproven + 1
        if len(self._times) >= p.max_restarts or unproven > p.max_restarts:
            return None
        spent = max(len(self._times), unproven - 1)
        delay = min(p.backoff_initial * p.backoff_factor**spent, p.backoff_max)
        self._times.append(now)
        self.unproven = unproven
        return delay
