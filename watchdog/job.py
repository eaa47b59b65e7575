"""The watchdog job: an APScheduler interval job on the gateway's event loop.

Each tick runs the pure engine, has the supervisor carry out restarts and stops,
hands the changes to the store writer, and pings systemd only when no required
platform is fatal. Because the ping is sent from this job, a frozen event loop
or a dead scheduler stops the pings too: systemd is the watchdog of the watchdog.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from loguru import logger

from watchdog import reasons
from watchdog.clock import Clock
from watchdog.engine import Escalation, TickOutcome, Transition, WatchdogEngine
from watchdog.heartbeat import PlatformRecord
from watchdog.notify import Notifier
from watchdog.states import Health
from watchdog.store import Batch
from watchdog.supervisor import Supervisor
from watchdog.writer import StoreWriter

JOB_ID = "hermes.watchdog"
_LEVEL = {
    Health.OK: "INFO",
    Health.DEGRADED: "WARNING",
    Health.FAILING: "ERROR",
    Health.FATAL: "CRITICAL",
}


class WatchdogJob:
    """Glue between the engine (decisions) and the outside world (tasks, SQL, systemd)."""

    def __init__(
        self,
        engine: WatchdogEngine,
        supervisor: Supervisor,
        notifier: Notifier,
        writer: StoreWriter,
        *,
        clock: Clock,
        tick_interval: float,
        heartbeat_persist_interval: float,
        on_escalate: Callable[[Escalation], None],
    ) -> None:
        self.engine = engine
        self.board = engine.board
        self.supervisor = supervisor
        self.notifier = notifier
        self.writer = writer
        self.clock = clock
        self.tick_interval = tick_interval
        self.heartbeat_persist_interval = heartbeat_persist_interval
        self.on_escalate = on_escalate
        self.ticks = 0
        self.pings = 0
        self.last_status: str | None = None
        self._beats_persisted_at = -math.inf
        self._scheduler: Any = None

    # -- scheduling

    def install(self, scheduler: Any) -> None:
        """Add the interval job; refuses a tick slower than half of systemd's watchdog timeout."""
        self.notifier.check_tick_interval(self.tick_interval)
        self._scheduler = scheduler
        scheduler.add_job(
            self.tick,
            "interval",
            seconds=self.tick_interval,
            id=JOB_ID,
            name="watchdog tick",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, math.ceil(self.tick_interval)),
            next_run_time=datetime.now(UTC),
            replace_existing=True,
        )

    def reschedule(self, tick_interval: float) -> None:
        self.notifier.check_tick_interval(tick_interval)
        self.tick_interval = tick_interval
        if self._scheduler is not None:
            self._scheduler.reschedule_job(JOB_ID, trigger="interval", seconds=tick_interval)
        self.writer.submit(Batch(instance={"tick_interval": tick_interval}))

    def uninstall(self) -> None:
        if self._scheduler is not None and self._scheduler.get_job(JOB_ID) is not None:
            self._scheduler.remove_job(JOB_ID)

    # -- the tick

    async def tick(self) -> None:
        """One watchdog pass. Never awaits: nothing in it may wait on I/O."""
        try:
            self._tick()
        except Exception:
            # A broken watchdog must not keep pinging: if it keeps failing, systemd restarts us.
            logger.exception("watchdog tick failed; no ping sent")

    def _tick(self) -> None:
        now = self.clock.monotonic()
        self.writer.restart_if_dead()
        outcome = self.engine.evaluate(now)
        self.supervisor.apply(outcome)
        self._log(outcome)
        if outcome.ping and self.notifier.ping():
            self.pings += 1
        status = self.status_line(outcome)
        self.writer.submit(
            self.batch(now, outcome.transitions, pinging=outcome.ping, status=status)
        )
        if status != self.last_status:
            self.notifier.status(status)
            self.last_status = status
        self.ticks += 1
        if outcome.escalation is not None:
            self._escalate(outcome.escalation)

    def _escalate(self, esc: Escalation) -> None:
        # No WATCHDOG=trigger here: systemd would record Result=watchdog ("failed to send
        # watchdog ping") instead of the cause. The gateway stops gracefully and exits with
        # esc.exit_code, which systemd records; the trigger is only the backstop for a stop
        # that hangs (watchdog.backstop).
        logger.critical("escalating to systemd (exit {}): {}", esc.exit_code, esc.describe())
        self.on_escalate(esc)

    def status_line(self, outcome: TickOutcome) -> str:
        total = len(self.board)
        ok = outcome.health[Health.OK]
        parts = [f"{ok}/{total} platforms ok"]
        troubled = sorted(
            (r for r in self.board if r.health is not Health.OK),
            key=lambda r: (-r.health.rank, r.name),
        )
        for r in troubled[:3]:
            what = f"{r.reason.code}" if r.reason else r.declared.value
            parts.append(f"{r.name} {r.health.value}: {what}")
        if len(troubled) > 3:
            parts.append(f"+{len(troubled) - 3} more")
        store = self.writer.status()
        if store.state != "ok":
            parts.append(store.describe(outcome.now))
        text = "; ".join(parts)
        esc = self.engine.escalation
        if esc is not None:
            text = f"ESCALATING (exit {esc.exit_code}): {esc.describe()} | {text}"
        return text

    def _log(self, outcome: TickOutcome) -> None:
        for t in outcome.transitions:
            log = logger.bind(platform=t.platform)
            if t.from_health is not t.to_health and t.to_health is not None:
                why = f": {t.reason.code}: {t.reason.message}" if t.reason else ""
                log.log(
                    _LEVEL[t.to_health],
                    "health {} -> {}{}",
                    t.from_health.value if t.from_health else "-",
                    t.to_health.value,
                    why,
                )
        for order in outcome.restarts:
            logger.bind(platform=order.platform).info("restart scheduled in {:.1f} s", order.delay)

    # -- persistence

    def _wall(self, wall_now: datetime, mono_now: float, mono: float) -> datetime:
        return wall_now - timedelta(seconds=mono_now - mono)

    def row(self, r: PlatformRecord, wall_now: datetime, mono_now: float) -> dict[str, Any]:
        """The ``platform_state`` row for a record."""
        reason = r.reason
        return {
            "platform": r.name,
            "adapter": r.kind,
            "required": r.required,
            "declared_state": r.declared.value,
            "declared_since": self._wall(wall_now, mono_now, r.declared_since),
            "health": r.health.value,
            "health_since": self._wall(wall_now, mono_now, r.health_since),
            "last_heartbeat_at": None
            if r.last_beat is None
            else self._wall(wall_now, mono_now, r.last_beat),
            "heartbeat_ttl": r.ttl,
            "restarts": r.restarts,
            "reason_code": reason.code if reason else None,
            "reason_message": reason.message if reason else None,
            "retryable": reason.retryable if reason else None,
            "instance_id": self.writer.instance_id,
            "updated_at": wall_now,
        }

    def transition_row(self, t: Transition, wall_now: datetime, mono_now: float) -> dict[str, Any]:
        return {
            "at": self._wall(wall_now, mono_now, t.at),
            "instance_id": self.writer.instance_id,
            "platform": t.platform,
            "from_state": t.from_state.value if t.from_state else None,
            "to_state": t.to_state.value if t.to_state else None,
            "from_health": t.from_health.value if t.from_health else None,
            "to_health": t.to_health.value if t.to_health else None,
            "reason_code": t.reason.code if t.reason else None,
            "reason_message": t.reason.message if t.reason else None,
        }

    def batch(
        self,
        now: float,
        transitions: list[Transition],
        *,
        pinging: bool,
        status: str,
        everything: bool = False,
    ) -> Batch:
        """Rows changed since the last batch; heartbeat-only changes at most every
        ``heartbeat_persist_interval`` (never one write per beat)."""
        wall_now = self.clock.wall()
        beats_due = everything or now - self._beats_persisted_at >= self.heartbeat_persist_interval
        if beats_due:
            self._beats_persisted_at = now
        rows = {}
        for r in self.board:
            if r.dirty or (beats_due and r.last_beat != r.persisted_beat):
                rows[r.name] = self.row(r, wall_now, now)
                r.dirty = False
                r.persisted_beat = r.last_beat
        return Batch(
            rows=rows,
            transitions=[self.transition_row(t, wall_now, now) for t in transitions],
            instance={"last_tick_at": wall_now, "pinging": pinging, "status_text": status},
        )

    def record_removed(self, name: str) -> None:
        """History and state for a platform that left the configuration."""
        now = self.clock.monotonic()
        t = Transition(name, now, None, None, None, None, None)
        row = self.transition_row(t, self.clock.wall(), now)
        row["reason_code"] = reasons.PLATFORM_REMOVED
        row["reason_message"] = "removed from the configuration"
        self.writer.submit(Batch(removed={name}, transitions=[row]))

    def final_batch(self, exit_code: int, reason: str) -> Batch:
        """Everything not yet stored, plus the instance's end, for a clean or escalated stop."""
        now = self.clock.monotonic()
        transitions = self.engine.drain_declared()
        batch = self.batch(now, transitions, pinging=False, status=reason, everything=True)
        batch.instance.update(stopped_at=self.clock.wall(), exit_code=exit_code, exit_reason=reason)
        return batch
