"""The job runner: message handlers and scheduled jobs, in-process, recorded in ``job_runs``.

Every run is a row before it starts and gets its status when it ends: ``ok``, ``error``,
``timeout`` (past its time limit: cancelled, a command's process group killed),
``cancelled`` (shutdown) or ``missed`` (a scheduled run later than its misfire grace).
What a run produces goes into the outbox in the same transaction that ends it.

Run starts and ends are group-committed: one transaction holds the starts (each taking its
inbox row), the ends (each with its outbox rows) and the delivered marks of many runs
(:class:`~hermes.jobrunner.groupcommit.GroupCommit`). A reply its commit could claim goes
straight to its chat's sender, without waiting for the outbox loop.

A run is a task of its own: a slow or hanging handler never blocks the adapter that
received the message, other platforms, the watchdog tick or the pings. Concurrency is
limited per route and overall.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from loguru import logger
from pydantic import Field

from hermes.inbox.store import InboxStore, Stored
from hermes.jobrunner.groupcommit import GroupCommit
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
from hermes.jobrunner.ledger import (
    DB_ERRORS,
    Finished,
    FinishRun,
    Ledger,
    Outage,
    Outgoing,
    StartRun,
    Write,
    now_utc,
)
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
    """Runs waiting for a slot; beyond that, stored messages wait in the inbox (not in
    memory) and are taken in order as slots free up."""
    commit_batch: Annotated[int, Field(ge=1, le=100_000)] = 500
    """Run starts, run ends (with their outbox rows) and delivered marks per group commit
    at most."""
    commit_after: Duration = 0.0
    """How long a group commit that is not full waits for more; 0: as soon as the store's
    writer is free (writes that arrive meanwhile form the next batch)."""
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
        self.writes: GroupCommit[Write, Any] | None = outbox.writes
        """Run starts and ends go through the outbox's group commit, with the delivered
        marks (None: each its own call)."""
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
        self.inbox: InboxStore | None = None
        """Set by the gateway: stored messages come from here (:meth:`on_stored`)."""
        self.backlog = True
        """Stored messages may be waiting without a run (left by a crash, or the runner was
        full): the backlog poll takes them, oldest first, before newer ones go direct."""
        self._deferred = 0
        self._backlog_wake = asyncio.Event()
        self._in_flight: set[int] = set()
        self.stopping = False

    def configure(self, routes: Sequence[Route], jobs: Sequence[JobSettings]) -> None:
        """Take a reloaded configuration (running runs finish under the old one)."""
        self.routes = list(routes)
        self.jobs = {j.name: j for j in jobs}

    # -- inbound messages

    def on_stored(self, rows: list[Stored]) -> None:
        """The inbox's callback after a commit: start a run for each new row a route
        matches. Rows wait in the inbox (the backlog) while older ones do, or while the
        runner is full; rows no route matches are marked ``skipped``."""
        skipped = []
        for row in rows:
            route = match(self.routes, row.message)
            if route is None:
                skipped.append(row.id)
            elif self.backlog or self.stopping or self._full():
                self.backlog = True
                self._deferred += 1
            else:
                self._start(route, row)
        if skipped:
            self._spawn(self._skip(skipped), "inbox:skip")
        if self.backlog:
            self._backlog_wake.set()

    def _full(self) -> bool:
        return len(self.runs) >= self.settings.max_concurrency + self.settings.max_waiting

    def _start(self, route: Route, row: Stored) -> None:
        self._in_flight.add(row.id)
        name = f"run:{route.name}:{row.message.message_id[-12:]}"
        self._spawn(self._route_run(route, row.message, row.id), name)

    async def _skip(self, ids: list[int]) -> None:
        assert self.inbox is not None
        try:
            await self.db.call(self.inbox.skip, ids)
        except DB_ERRORS as exc:  # left received: the next backlog pass skips them again
            logger.warning(
                "inbox: {} rows not marked skipped: {}", len(ids), describe_exception(exc)
            )

    async def poll_backlog(self, every: float) -> None:
        """Take stored messages that have no run yet, oldest first, as slots allow."""
        assert self.inbox is not None
        outage = Outage("inbox backlog")
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._backlog_wake.wait(), every)
            self._backlog_wake.clear()
            if not self.backlog or self.stopping:
                continue
            free = self.settings.max_concurrency + self.settings.max_waiting - len(self.runs)
            if free <= 0:
                continue
            deferred = self._deferred
            try:
                rows = await self.db.call(self.inbox.backlog, free, list(self._in_flight))
            except DB_ERRORS as exc:
                await asyncio.sleep(outage.failed(exc))
                continue
            outage.ok()
            if len(rows) < free and self._deferred == deferred:
                self.backlog = False  # caught up; nothing was deferred while we looked
            skipped = []
            for row in rows:
                route = match(self.routes, row.message)
                if route is None:
                    skipped.append(row.id)
                else:
                    self._start(route, row)
            if skipped:
                await self._skip(skipped)
            if self.backlog:
                self._backlog_wake.set()

    async def _route_run(self, route: Route, message: InboundMessage, inbox_id: int) -> None:
        try:
            async with self._slot(route.limit):
                await self._route_run_in_slot(route, message, inbox_id)
        finally:
            self._in_flight.discard(inbox_id)

    async def _route_run_in_slot(
        self, route: Route, message: InboundMessage, inbox_id: int
    ) -> None:
        if self.stopping:
            return  # still received in the inbox: the next start takes it
        start = StartRun(
            kind="route",
            name=route.name,
            trigger="message",
            platform=message.platform,
            message_id=message.message_id,
            inbox_id=inbox_id,
        )
        try:
            run_id: str | None = await self._write(start)
        except DB_ERRORS as exc:
            # Stored, so not lost: it waits in the inbox for the backlog poll.
            logger.bind(platform=message.platform).warning(
                "message {} waits in the inbox: its run cannot be recorded now: {}",
                message.message_id,
                describe_exception(exc),
            )
            self.backlog = True
            return
        if run_id is None:
            return  # another run has this inbox row
        again = route.settings.on_crash == "retry"
        result = await self._execute_recorded(
            run_id,
            route.name,
            route.settings.timeout,
            lambda: handle(route, message, run_id, self.environ),
            again=again,
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
        task = self.tasks.spawn(coro, name=name, on_done=self._run_done)
        self.runs.add(task)

    def _run_done(self, task: asyncio.Task[Any]) -> None:
        self.runs.discard(task)
        if self.backlog:
            self._backlog_wake.set()

    def _slot(self, route_limit: asyncio.Semaphore | None) -> _Slots:
        return _Slots(self, route_limit)

    async def _execute_recorded(
        self,
        run_id: str,
        name: str,
        limit: float,
        action: Callable[[], Awaitable[str | None]],
        *,
        again: bool = False,
    ) -> Result:
        """:meth:`_execute`, and if the gateway cancels the run (shutdown), record that;
        ``again``: its message goes back to the inbox to be run after the restart."""
        try:
            return await self._execute(name, limit, action)
        except asyncio.CancelledError:
            await self.db.call(
                self.ledger.finish_run,
                run_id,
                "cancelled",
                error="the gateway stopped during the run"
                + ("; its message is run again (on_crash = retry)" if again else ""),
                again=again,
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
            op = FinishRun(
                run_id,
                result.status,
                error=result.error,
                output=result.output,
                messages=messages,
                send_now=frozenset(self.platforms.deliverable()) if messages else frozenset(),
            )
            try:
                done: Finished = await self._write(op)
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
        if done.claimed:
            self.outbox.hand(done.claimed)
        if len(done.claimed) < len(messages):
            self.outbox.wake()  # stored pending: the outbox loop takes them in order

    async def _write(self, op: Write) -> Any:
        """One write of a run, group-committed with its neighbours' when a committer runs."""
        if self.writes is not None:
            return await self.writes.write(op)
        (outcome,) = await self.db.call(self.ledger.write, [op])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def cancel_all(self, grace: float) -> None:
        """Shutdown: cancel running runs; each records itself as ``cancelled``. Stored
        messages not yet started stay in the inbox for the next start."""
        self.stopping = True
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
