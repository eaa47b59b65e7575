"""Scheduled jobs: ``[[jobs]]`` on APScheduler, persisted in the state store.

The jobs live in APScheduler's SQLAlchemy job store (table ``apscheduler_jobs``), so next
run times survive restarts. They run on a ``BackgroundScheduler`` (a thread of its own),
not on the event loop: the job store queries the database whenever the scheduler wakes,
and a slow database must never delay the watchdog's pings, which stay alone on the loop.
:class:`LoopExecutor` hands each due run, with its scheduled times, to the gateway's
event loop, where :class:`~hermes.jobrunner.runs.JobRunner` records and runs it.

Configuration jobs are synchronised at start and on reload: added, changed (rescheduled)
or removed; an unchanged job keeps its next run time (and a pause made with
``hermes jobs pause``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from datetime import datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.executors.base import BaseExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from loguru import logger
from pydantic import Field, field_validator, model_validator
from sqlalchemy import Engine

from hermes.jobrunner.handlers import ActionSettings, parse_target
from hermes.jobrunner.ledger import DB_ERRORS, Outage
from watchdog.settings import Duration, NonNegativeDuration

JOB_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"


class JobSettings(ActionSettings):
    """One ``[[jobs]]`` table."""

    name: Annotated[str, Field(pattern=JOB_NAME)]
    cron: str | None = None
    interval: Duration | None = None
    date: datetime | None = None
    timezone: str | None = None
    action: Literal["send", "command", "python"]
    text: str | None = None
    targets: list[str] = Field(default_factory=list)
    misfire_grace_time: NonNegativeDuration | None = 60.0
    """A run later than this is not run but recorded as ``missed``; None: always run late."""
    coalesce: bool = True
    """Several missed runs become one."""
    timeout: Duration = 60.0

    @field_validator("targets")
    @classmethod
    def _targets(cls, targets: list[str]) -> list[str]:
        for t in targets:
            parse_target(t)
        return targets

    @field_validator("timezone")
    @classmethod
    def _zone(cls, zone: str | None) -> str | None:
        if zone is not None:
            try:
                ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    f"unknown time zone {zone!r} (expected e.g. 'Asia/Shanghai')"
                ) from None
        return zone

    @model_validator(mode="after")
    def _consistent(self) -> JobSettings:
        chosen = [k for k in ("cron", "interval", "date") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError(
                f"give exactly one of cron, interval or date (got {', '.join(chosen) or 'none'})"
            )
        if self.cron is not None:
            try:
                CronTrigger.from_crontab(self.cron)
            except ValueError as exc:
                raise ValueError(f"bad cron expression {self.cron!r}: {exc}") from None
        if self.action == "send":
            if not self.text:
                raise ValueError('action "send" needs text = "..."')
        elif self.text is not None:
            raise ValueError('text is only for action = "send"')
        if not self.targets:
            raise ValueError(
                'a job needs targets = ["platform:chat-kind:id", ...] for what it sends'
            )
        self._check_action(self.action if self.action != "send" else "", f'action "{self.action}"')
        return self

    def trigger(self) -> Any:
        zone = ZoneInfo(self.timezone) if self.timezone else None
        if self.cron is not None:
            return CronTrigger.from_crontab(self.cron, timezone=zone)
        if self.interval is not None:
            return IntervalTrigger(seconds=self.interval, timezone=zone)
        assert self.date is not None
        return DateTrigger(run_date=self.date, timezone=zone)

    def fingerprint(self) -> str:
        """Changes when anything that decides the schedule changes."""
        data = self.model_dump(
            mode="json",
            include={"cron", "interval", "date", "timezone", "misfire_grace_time", "coalesce"},
        )
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def scheduled_placeholder(**stored: Any) -> None:
    """The function stored with each job (with its ``fingerprint``). Never called:
    :class:`LoopExecutor` runs jobs."""
    raise RuntimeError("hermes jobs are run by the gateway's LoopExecutor")


Submit = Callable[[str, list[datetime]], Coroutine[Any, Any, None]]
"""Called on the scheduler thread with (job id, scheduled times); returns the coroutine to run."""


class LoopExecutor(BaseExecutor):  # type: ignore[misc]
    """An APScheduler executor that hands runs to an asyncio loop instead of a thread pool.

    The scheduler thread calls :meth:`_do_submit_job`; the coroutine made by ``submit`` runs
    on ``loop``. APScheduler counts the run as finished (``max_instances``) when it is.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, submit: Submit) -> None:
        super().__init__()
        self.loop = loop
        self.submit = submit

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        coro = self.submit(job.id, list(run_times))
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)

        def done(f: Future[Any]) -> None:
            exc = f.exception() if not f.cancelled() else None
            if exc is not None:
                self._run_job_error(job.id, exc, exc.__traceback__)
            else:
                self._run_job_success(job.id, [])

        future.add_done_callback(done)


class ReportedOutage(Exception):
    """The job store's database failed, and :class:`Outage` has reported it already."""


def _not_reported_again(record: logging.LogRecord) -> bool:
    """Drop APScheduler's own warning for a failure already reported: it polls the job store
    every second (the gateway wakes it to see ``hermes jobs`` changes), and would log a
    three-line warning each time for as long as the database is down."""
    args = record.args if isinstance(record.args, tuple) else ()
    return not any(isinstance(a, ReportedOutage) for a in args)


class _JobStore(SQLAlchemyJobStore):  # type: ignore[misc]
    """The job store, reporting a database outage as the gateway's other loops do: one line
    when it starts, one when it ends."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine=engine)
        self.outage = Outage("scheduled jobs")

    def get_due_jobs(self, now: datetime) -> list[Any]:
        try:
            jobs: list[Any] = super().get_due_jobs(now)
        except DB_ERRORS as exc:
            self.outage.failed(exc)
            raise ReportedOutage(str(exc)) from exc
        self.outage.ok()
        return jobs


class JobScheduler:
    """The persistent scheduler of ``[[jobs]]``; its methods are called from worker threads."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop, submit: Submit) -> None:
        # The same function object each time: addFilter() then adds it once.
        logging.getLogger("apscheduler.scheduler").addFilter(_not_reported_again)
        self.scheduler = BackgroundScheduler(
            jobstores={"default": _JobStore(engine)},
            executors={"default": LoopExecutor(loop, submit)},
            job_defaults={"max_instances": 1},
        )

    def start(self, jobs: Sequence[JobSettings]) -> dict[str, int]:
        self.scheduler.start(paused=True)
        changes = self.sync(jobs)
        self.scheduler.resume()
        return changes

    def sync(self, jobs: Sequence[JobSettings]) -> dict[str, int]:
        """Make the job store hold exactly the configured jobs; counts of what changed."""
        existing = {job.id: job for job in self.scheduler.get_jobs()}
        counts = {"added": 0, "changed": 0, "removed": 0, "kept": 0}
        for js in jobs:
            fp = js.fingerprint()
            old = existing.pop(js.name, None)
            if old is not None and old.kwargs.get("fingerprint") == fp:
                counts["kept"] += 1
                continue
            self.scheduler.add_job(
                scheduled_placeholder,
                js.trigger(),
                id=js.name,
                name=js.name,
                kwargs={"fingerprint": fp},
                misfire_grace_time=_grace(js.misfire_grace_time),
                coalesce=js.coalesce,
                max_instances=1,
                replace_existing=True,
            )
            counts["changed" if old is not None else "added"] += 1
            logger.info(
                "job {} {} ({})",
                js.name,
                "rescheduled" if old is not None else "added",
                js.cron or js.interval or js.date,
            )
        for job_id in existing:
            self.scheduler.remove_job(job_id)
            counts["removed"] += 1
            logger.info("job {} removed (no longer configured)", job_id)
        logger.info(
            "scheduled jobs: {added} added, {changed} changed, {removed} removed, {kept} kept",
            **counts,
        )
        return counts

    def wakeup(self) -> None:
        """Re-read the job store now (``hermes jobs pause/resume`` changed it from outside)."""
        self.scheduler.wakeup()

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)


def _grace(seconds: float | None) -> int | None:
    # APScheduler stores whole seconds; the runner applies the configured value exactly.
    return None if seconds is None else max(1, round(seconds))
