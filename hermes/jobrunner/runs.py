"""The job runner: message handlers and scheduled jobs, in-process, recorded in ``job_runs``.

Every run is a row before it starts and gets its status when it ends: ``ok``, ``error``,
``timeout`` (past its time limit: cancelled, a command's process group killed),
``cancelled`` (shutdown) or ``missed`` (a scheduled run later than its misfire grace).
What a run produces goes into the outbox in the same transaction that ends it.

A run is a task of its own: a slow or hanging handler never blocks the adapter that
received the message, other platforms, the watchdog tick or the pings. Concurrency is
limited per route and overall.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from loguru import logger
from pydantic import Field

from hermes.jobrunner.handlers import (
    HandlerError,
    JobContext,
    Route,
    call_function,
    handle,
    match,
    parse_target,
    resolve_function,
    run_with_document,
)
from hermes.jobrunner.ledger import DB_ERRORS, Ledger, Outage, Outgoing, now_utc
from hermes.jobrunner.outbox import Outbox, OutboxSettings, Platforms
from hermes.jobrunner.schedule import JobSettings
from hermes.messages import InboundMessage
from watchdog.settings import Duration, Section
from watchdog.store import is_row_error
from watchdog.tasks import TaskRegistry, cancel_and_wait, describe_exception
from watchdog.threads import DaemonWorker


class RunnerSettings(Section):
    """The ``[runner]`` table."""

    max_concurrency: Annotated[int, Field(ge=1, le=10_000)] = 32
    """Runs (handlers and jobs) at once, over all routes and jobs."""
    max_waiting: Annotated[int, Field(ge=1)] = 10_000
    """Runs waiting for a slot; beyond that, inbound messages are refused (logged)."""
    request_poll: Duration = 1.0
    """How often ``hermes jobs run`` requests and job-store changes are picked up."""
    retention: Duration = 30 * 86_400.0
    """Finished runs are deleted after this long."""


@dataclass(frozen=True, slots=True)
class Result:
    status: str
    reply: str | None = None
    error: str | None = None
    output: str | None = None


class JobRunner:
    """Runs routes for inbound messages and jobs for the scheduler and ``hermes jobs run``."""

    def __init__(
        self,
        ledger: Ledger,
        db: DaemonWorker,
        outbox: Outbox,
        platforms: Platforms,
        tasks: TaskRegistry,
        *,
        settings: RunnerSettings,
        outbox_settings: OutboxSettings,
        routes: Sequence[Route],
        jobs: Sequence[JobSettings],
        environ: Mapping[str, str],
    ) -> None:
        self.ledger = ledger
        self.db = db
        self.outbox = outbox
        self.platforms = platforms
        self.tasks = tasks
        self.environ = environ
        self.settings = settings
        self.outbox_settings = outbox_settings
        self.routes: list[Route] = list(routes)
        self.jobs: dict[str, JobSettings] = {j.name: j for j in jobs}
        self.slots = asyncio.Semaphore(settings.max_concurrency)
        self.waiting = 0
        self.runs: set[asyncio.Task[Any]] = set()
        self.completed = 0

    def configure(self, routes: Sequence[Route], jobs: Sequence[JobSettings]) -> None:
        """Take a reloaded configuration (running runs finish under the old one)."""
        self.routes = list(routes)
        self.jobs = {j.name: j for j in jobs}

    # -- inbound messages

    async def on_message(self, message: InboundMessage) -> None:
        """The adapters' callback: match a route and start its run; returns at once."""
        route = match(self.routes, message)
        if route is None:
            logger.bind(platform=message.platform).debug(
                "message {}: no route matches", message.message_id
            )
            return
        if self.waiting >= self.settings.max_waiting:
            logger.bind(platform=message.platform).error(
                "runner full ({} runs waiting): message {} for route {} not handled",
                self.waiting,
                message.message_id,
                route.name,
            )
            return
        self._spawn(self._route_run(route, message), f"run:{route.name}:{message.message_id[-12:]}")

    async def _route_run(self, route: Route, message: InboundMessage) -> None:
        async with self._slot(route.limit):
            try:
                run_id = await self.db.call(
                    self.ledger.start_run,
                    kind="route",
                    name=route.name,
                    trigger="message",
                    platform=message.platform,
                    message_id=message.message_id,
                )
            except DB_ERRORS as exc:
                logger.bind(platform=message.platform).error(
                    "message {} not handled: its run cannot be recorded: {}",
                    message.message_id,
                    describe_exception(exc),
                )
                return
            assert run_id is not None
            result = await self._execute_recorded(
                run_id,
                route.name,
                route.settings.timeout,
                lambda: handle(route, message, run_id, self.environ),
            )
            replies = []
            if result.reply:
                replies.append(
                    Outgoing(
                        key=f"run:{run_id}:reply",
                        platform=message.platform,
                        chat_kind=message.chat_kind,
                        chat_id=message.chat_id,
                        text=result.reply,
                        reply_to=message.message_id,
                        expires_at=self._reply_deadline(message),
                    )
                )
            await self._finish(run_id, result, replies)

    def _reply_deadline(self, message: InboundMessage) -> datetime | None:
        adapter = self.platforms.adapter(message.platform)
        window = adapter.reply_window(message.chat_kind) if adapter is not None else None
        if window is None:
            return None
        received = message.timestamp or now_utc()
        return received + timedelta(seconds=window)

    # -- scheduled and requested jobs

    async def run_scheduled(self, name: str, run_times: list[datetime]) -> None:
        """Called (through the scheduler's executor) when a job is due."""
        job = self.jobs.get(name)
        log = logger.bind(job=name)
        if job is None:
            log.error("job {} fired but is no longer configured", name)
            return
        for scheduled in run_times:
            late = (now_utc() - scheduled).total_seconds()
            grace = job.misfire_grace_time
            if grace is not None and late > grace:
                why = f"due {scheduled.isoformat()}, {late:.1f} s late (misfire grace {grace:g} s)"
                if await self.db.call(self.ledger.record_missed, name, scheduled, why):
                    log.warning("job {} missed: {}", name, why)
                continue
            run_id = await self.db.call(
                self.ledger.start_run,
                kind="job",
                name=name,
                trigger="schedule",
                scheduled_for=scheduled,
            )
            if run_id is None:
                log.info(
                    "job {} run due {} already happened (before a restart); not again",
                    name,
                    scheduled.isoformat(),
                )
                continue
            await self._job_run(job, run_id, "schedule", scheduled)

    async def poll_requests(self) -> None:
        """Pick up ``hermes jobs run`` requests until cancelled."""
        outage = Outage("job requests")
        while True:
            try:
                requests = await self.db.call(self.ledger.claim_requests)
            except DB_ERRORS as exc:
                await asyncio.sleep(outage.failed(exc))
                continue
            outage.ok()
            for run_id, name in requests:
                job = self.jobs.get(name)
                if job is None:
                    why = f"no job named {name!r} is configured"
                    await self._finish(run_id, Result("error", error=why), [])
                    continue
                self._spawn(self._job_run(job, run_id, "manual", None), f"run:{name}:manual")
            await asyncio.sleep(self.settings.request_poll)

    async def _job_run(
        self, job: JobSettings, run_id: str, trigger: str, scheduled: datetime | None
    ) -> None:
        async with self._slot(None):
            result = await self._execute_recorded(
                run_id,
                job.name,
                job.timeout,
                lambda: self._job_action(job, run_id, trigger, scheduled),
            )
            messages = []
            if result.reply:
                expires = now_utc() + timedelta(seconds=self.outbox_settings.max_age)
                for target in job.targets:
                    platform, kind, chat = parse_target(target)
                    messages.append(
                        Outgoing(
                            f"run:{run_id}:{target}",
                            platform,
                            kind,
                            chat,
                            result.reply,
                            expires_at=expires,
                        )
                    )
            await self._finish(run_id, result, messages)

    async def _job_action(
        self, job: JobSettings, run_id: str, trigger: str, scheduled: datetime | None
    ) -> str | None:
        if job.action == "send":
            return job.text
        if job.action == "command":
            doc = {
                "job": job.name,
                "run_id": run_id,
                "trigger": trigger,
                "scheduled_for": scheduled.isoformat() if scheduled else None,
            }
            assert job.command is not None
            return await run_with_document(job.command, doc, self.environ, job.env)
        assert job.function is not None
        context = JobContext(job.name, run_id, trigger, scheduled)
        return await call_function(resolve_function(job.function), context)

    # -- shared

    def _spawn(self, coro: Any, name: str) -> None:
        task = self.tasks.spawn(coro, name=name, on_done=self.runs.discard)
        self.runs.add(task)

    def _slot(self, route_limit: asyncio.Semaphore | None) -> _Slots:
        return _Slots(self, route_limit)

    async def _execute_recorded(
        self, run_id: str, name: str, limit: float, action: Callable[[], Awaitable[str | None]]
    ) -> Result:
        """:meth:`_execute`, and if the gateway cancels the run (shutdown), record that."""
        try:
            return await self._execute(name, limit, action)
        except asyncio.CancelledError:
            await self.db.call(
                self.ledger.finish_run,
                run_id,
                "cancelled",
                error="the gateway stopped during the run",
            )
            raise

    async def _execute(
        self, name: str, limit: float, action: Callable[[], Awaitable[str | None]]
    ) -> Result:
        log = logger.bind(run=name)
        try:
            async with asyncio.timeout(limit):
                reply = await action()
        except TimeoutError:
            log.warning("{} timed out after {:g} s", name, limit)
            return Result("timeout", error=f"time limit of {limit:g} s reached; cancelled")
        except HandlerError as exc:
            log.warning("{} failed: {}", name, exc)
            return Result("error", error=str(exc), output=exc.output)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.opt(exception=exc).error("{} raised: {}", name, describe_exception(exc))
            return Result("error", error=describe_exception(exc))
        return Result("ok", reply=reply, output=reply)

    async def _finish(self, run_id: str, result: Result, messages: list[Outgoing]) -> None:
        """Record the end of a run and enqueue what it produced.

        An outage is waited out for as long as it lasts: the run and its messages are held
        here until the store takes them (a stop meanwhile leaves the run to be closed as
        interrupted at the next start). A row the database refuses is no outage: the ledger
        writes the rest and ends the run ``error`` saying what was refused.
        """
        outage = Outage(f"run {run_id[:8]}")
        while True:
            try:
                await self.db.call(
                    self.ledger.finish_run,
                    run_id,
                    result.status,
                    error=result.error,
                    output=result.output,
                    messages=messages,
                )
                break
            except Exception as exc:
                if not isinstance(exc, DB_ERRORS) and not is_row_error(exc):
                    raise
                if is_row_error(exc):  # even the ledger's last resort was refused
                    logger.error(
                        "run {} ended {} but the store refused to record it: {}",
                        run_id,
                        result.status,
                        describe_exception(exc),
                    )
                    return
                await asyncio.sleep(outage.failed(exc))
        outage.ok()
        self.completed += 1
        if messages:
            self.outbox.wake()

    async def cancel_all(self, grace: float) -> None:
        """Shutdown: cancel running runs; each records itself as ``cancelled``."""
        await cancel_and_wait(self.runs, grace)


class _Slots:
    """The overall slot and a route's own, waited for in that order; counts who waits."""

    def __init__(self, runner: JobRunner, route_limit: asyncio.Semaphore | None) -> None:
        self.runner = runner
        self.route_limit = route_limit

    async def __aenter__(self) -> None:
        self.runner.waiting += 1
        try:
            if self.route_limit is not None:
                await self.route_limit.acquire()
            try:
                await self.runner.slots.acquire()
            except BaseException:
                if self.route_limit is not None:
                    self.route_limit.release()
                raise
        finally:
            self.runner.waiting -= 1

    async def __aexit__(self, *exc: object) -> None:
        self.runner.slots.release()
        if self.route_limit is not None:
            self.route_limit.release()
