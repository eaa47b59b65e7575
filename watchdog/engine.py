"""The watchdog's decisions for one tick, without I/O (sans-I/O core of the watchdog job).

:meth:`WatchdogEngine.evaluate` judges every platform, spends restart budgets,
marks platforms fatal and decides whether systemd may be pinged. It returns a
:class:`TickOutcome` listing what the I/O shell (:mod:`watchdog.job`) must do:
restart or stop adapter instances, store rows and transitions, ping or escalate.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from watchdog import reasons
from watchdog.heartbeat import HeartbeatBoard, PlatformRecord, Reason
from watchdog.restart import RestartBudget
from watchdog.rules import judge
from watchdog.states import DeclaredState, Health

EXIT_ESCALATE = 75
"""Exit status asking systemd for a restart (EX_TEMPFAIL)."""
EXIT_NOT_RETRYABLE = 78
"""Exit status for errors a restart cannot fix (EX_CONFIG); see RestartPreventExitStatus=."""


@dataclass(frozen=True, slots=True)
class Transition:
    """One line of history: a change of declared state or of health."""

    platform: str
    at: float
    """Monotonic time of the change."""
    from_state: DeclaredState | None
    to_state: DeclaredState | None
    from_health: Health | None
    to_health: Health | None
    reason: Reason | None


@dataclass(frozen=True, slots=True)
class RestartOrder:
    """Stop the platform's current instance, wait ``delay`` seconds, start a new one."""

    platform: str
    delay: float


@dataclass(frozen=True, slots=True)
class Escalation:
    """Required platforms are fatal: stop pinging, let systemd restart the unit."""

    platforms: tuple[str, ...]
    reason: Reason
    exit_code: int

    def describe(self) -> str:
        names = ", ".join(self.platforms)
        return f"fatal: {names}: {self.reason.code}: {self.reason.message}"


@dataclass(slots=True)
class TickOutcome:
    now: float
    transitions: list[Transition] = field(default_factory=list)
    restarts: list[RestartOrder] = field(default_factory=list)
    stops: list[str] = field(default_factory=list)
    """Platforms just marked fatal whose instance must be stopped."""
    escalation: Escalation | None = None
    """Set on the tick that first found a required platform fatal."""
    ping: bool = False
    health: Counter[Health] = field(default_factory=Counter)


class WatchdogEngine:
    """Judges the board and applies the restart policy. Owns the restart budgets."""

    def __init__(self, board: HeartbeatBoard) -> None:
        self.board = board
        self._budgets: dict[str, RestartBudget] = {}
        self.escalation: Escalation | None = None

    def budget(self, record: PlatformRecord) -> RestartBudget:
        budget = self._budgets.get(record.name)
        if budget is None or budget.policy is not record.policy.restart:
            budget = self._budgets[record.name] = RestartBudget(record.policy.restart)
        return budget

    def forget(self, name: str) -> None:
        self._budgets.pop(name, None)

    def evaluate(self, now: float) -> TickOutcome:
        out = TickOutcome(now)
        out.transitions.extend(self.drain_declared())
        for record in self.board:
            if record.health is not Health.FATAL and record.restart_at is None:
                self._judge_one(record, now, out)
            out.health[record.health] += 1

        if self.escalation is None:
            fatal = [r for r in self.board if r.required and r.health is Health.FATAL]
            if fatal:
                # A non-retryable cause anywhere wins: restarting the unit cannot fix it.
                final = [r for r in fatal if r.reason is not None and not r.reason.retryable]
                first = (final or fatal)[0]
                reason = first.reason or Reason(reasons.ADAPTER_FATAL, "fatal", False)
                self.escalation = out.escalation = Escalation(
                    tuple(r.name for r in fatal),
                    reason,
                    EXIT_NOT_RETRYABLE if final else EXIT_ESCALATE,
                )
        out.ping = self.escalation is None
        return out

    def _judge_one(self, record: PlatformRecord, now: float, out: TickOutcome) -> None:
        verdict = judge(record, now, record.policy)
        if verdict.health is Health.FAILING:
            reason = verdict.reason
            assert reason is not None
            budget = self.budget(record)
            proven = record.proven
            delay = budget.request(now, proven=proven)
            if delay is None:
                p = record.policy.restart
                why = (
                    f"{budget.unproven} restarts in a row without proof of life"
                    if not proven and budget.unproven >= p.max_restarts
                    else f"{p.max_restarts} restarts in {p.window:g} s"
                )
                spent = Reason(
                    reason.code,
                    f"{reason.message}; restart budget spent ({why})",
                    reason.retryable,
                )
                self._set_health(record, Health.FATAL, spent, now, out)
                self.board.retire(record)
                out.stops.append(record.name)
            else:
                self._set_health(record, Health.FAILING, reason, now, out)
                self.board.retire(record)
                record.restart_at = now + delay
                out.restarts.append(RestartOrder(record.name, delay))
        elif verdict.health is Health.FATAL:
            self._set_health(record, Health.FATAL, verdict.reason, now, out)
            self.board.retire(record)
            out.stops.append(record.name)
        elif verdict.health is Health.OK:
            self._set_health(record, Health.OK, None, now, out)
        else:
            # Degraded while starting/reconnecting: keep the reason of the failure being recovered.
            self._set_health(record, verdict.health, verdict.reason or record.reason, now, out)

    def _set_health(
        self,
        record: PlatformRecord,
        health: Health,
        reason: Reason | None,
        now: float,
        out: TickOutcome,
    ) -> None:
        if health is record.health and reason == record.reason:
            return
        out.transitions.append(
            Transition(
                record.name, now, record.declared, record.declared, record.health, health, reason
            )
        )
        if health is not record.health:
            record.health_since = now
        record.health = health
        record.reason = reason
        record.dirty = True

    def drain_declared(self) -> list[Transition]:
        """History rows for the declarations made since the last call."""
        result = []
        for c in self.board.drain_changes():
            record = self.board.get(c.platform)
            health = record.health if record is not None else None
            result.append(Transition(c.platform, c.at, c.old, c.new, health, health, None))
        return result
