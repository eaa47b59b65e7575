"""The gateway process: store, scheduler, watchdog job and supervised adapters on one event loop.

Start-up order: check timing against systemd's watchdog (exit 78 before touching
anything), open and migrate the store (extending systemd's start timeout while
that runs long), record this instance, start the store writer, the scheduler and
the watchdog job, start the adapters, send ``READY=1``.

Stop: SIGTERM/SIGINT (exit 0) or an escalation (exit 75, or 78 when a restart
cannot help) send ``STOPPING=1``, stop the pings, close the adapters within
their time limit, flush the final state, record how the instance ended and send
``STATUS=stopped (exit N): cause`` last, which systemd keeps next to the exit
status. An escalation's stop that hangs is ended by systemd on the gateway's
request (``WATCHDOG=trigger``, see :mod:`watchdog.backstop`).
SIGHUP reloads the configuration (``RELOADING=1`` ... ``READY=1``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from loguru import logger

import hermes
from hermes.adapters.base import Adapter
from hermes.config import GatewayConfig, PlatformConfig, load_config
from hermes.inbox.intake import Intake, PlatformInbound
from hermes.inbox.store import InboxStore
from hermes.jobrunner.groupcommit import GroupCommit
from hermes.jobrunner.handlers import build_routes
from hermes.jobrunner.ledger import DB_ERRORS, Ledger, Write
from hermes.jobrunner.outbox import Outbox
from hermes.jobrunner.runs import JobRunner
from hermes.jobrunner.schedule import JobScheduler
from hermes.runtime import release, settle
from watchdog.backstop import STOP_BACKSTOP_GRACE, StopBackstop
from watchdog.clock import Clock, SystemClock
from watchdog.engine import EXIT_ESCALATE, EXIT_NOT_RETRYABLE, Escalation, WatchdogEngine
from watchdog.exceptions import ConfigError, StoreError, WatchdogTimingError
from watchdog.heartbeat import HeartbeatBoard, PlatformHandle
from watchdog.job import WatchdogJob
from watchdog.notify import Notifier
from watchdog.states import DeclaredState, Health
from watchdog.store import StateStore
from watchdog.supervisor import PlatformSpec, Supervised, Supervisor
from watchdog.tasks import TaskRegistry, cancel_and_wait, describe_exception
from watchdog.threads import DaemonWorker, in_thread
from watchdog.writer import StoreWriter

EXIT_OK = 0
EXIT_UNEXPECTED = 1


def platform_spec(pc: PlatformConfig, intake: Intake | None = None) -> PlatformSpec:
    def factory(handle: PlatformHandle) -> Supervised:
        adapter = pc.adapter_class(pc.name, pc.settings, handle)
        if intake is not None:
            adapter.inbound = PlatformInbound(intake, pc.name)
        return adapter

    return PlatformSpec(
        name=pc.name,
        kind=pc.adapter_class.kind or pc.adapter,
        required=pc.supervision.required,
        policy=pc.supervision.policy(),
        factory=factory,
    )


class Gateway:
    """One run of the gateway; :meth:`run` returns the process exit code."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        notifier: Notifier | None = None,
        clock: Clock | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.environ = os.environ if environ is None else environ
        self.notifier = notifier if notifier is not None else Notifier.from_environ(unset=True)
        self.clock: Clock = clock or SystemClock()
        self.instance_id = str(uuid.uuid4())
        self.tasks = TaskRegistry()
        self.board = HeartbeatBoard(self.clock.monotonic)
        self.engine = WatchdogEngine(self.board)
        self.supervisor = Supervisor(
            self.board, self.engine, self.tasks, close_timeout=config.watchdog.close_timeout
        )
        self.store: StateStore | None = None
        self.writer: StoreWriter | None = None
        self.job: WatchdogJob | None = None
        self.scheduler: AsyncIOScheduler | None = None
        self.db: DaemonWorker | None = None
        self.ledger: Ledger | None = None
        self.outbox: Outbox | None = None
        self.runner: JobRunner | None = None
        self.intake: Intake | None = None
        self.jobs: JobScheduler | None = None
        self.exit_code = EXIT_OK
        self.exit_reason = ""
        self.ready = asyncio.Event()
        """Set once READY=1 was sent (for tests and embedding)."""
        self._stop: asyncio.Event | None = None
        self._reloading: asyncio.Task[Any] | None = None
        self._signals: list[int] = []
        self.backstop: StopBackstop | None = None
        """Armed when an escalation's stop begins (see :meth:`_arm_backstop`)."""
        self.backstop_until_exit = False
        """Keep the backstop armed after :meth:`run` returns, until the process exits
        (:func:`run_gateway`); embedded, the stop is over when :meth:`run` returns."""
        self.settle_when_ready = False
        """Tune the interpreter for serving once ready (:func:`hermes.runtime.settle`): done
        by :func:`run_gateway`, which owns the process; embedded, the host's is left alone."""

    # -- public

    async def run(self) -> int:
        self._stop = asyncio.Event()
        try:
            self.notifier.check_tick_interval(self.config.watchdog.tick_interval)
            # Only builds the engine: a bad URL or a missing driver is configuration (78);
            # a database that does not answer is found later and may pass (75).
            self.store = StateStore(self.config.database_url)
        except (WatchdogTimingError, StoreError) as exc:
            logger.error("{}", exc)
            return EXIT_NOT_RETRYABLE
        self._install_signals()
        try:
            try:
                await self._start()
            except StoreError as exc:
                logger.error("state store unavailable at start: {}", exc)
                self.request_stop(EXIT_ESCALATE, f"state store unavailable at start: {exc}")
            else:
                self.notifier.ready()
                self.ready.set()
                if self.settle_when_ready:
                    settle()
                logger.info(
                    "gateway ready: {} platforms, tick every {:g} s, store {}, systemd {}",
                    len(self.config.platforms),
                    self.config.watchdog.tick_interval,
                    self.store.name if self.store else "-",
                    _systemd_summary(self.notifier),
                )
            await self._stop.wait()
            return await self._shutdown()
        finally:
            self._remove_signals()
            if self.backstop is not None and not self.backstop_until_exit:
                self.backstop.disarm()
            self.notifier.close()

    def request_stop(self, code: int, reason: str) -> None:
        """Begin a graceful stop with this exit code; the first request wins."""
        assert self._stop is not None
        if self._stop.is_set():
            logger.info("already stopping ({}); ignoring: {}", self.exit_reason, reason)
            return
        self.exit_code, self.exit_reason = code, reason
        self._stop.set()

    # -- start

    async def _start(self) -> None:
        cfg = self.config
        assert self.store is not None
        async with self.notifier.extending_timeout("opening the state store"):
            before, after = await in_thread(self.store.migrate, name="hermes-migrate")
            if before != after:
                logger.info(
                    "state store {} migrated from {} to schema {}",
                    self.store.name,
                    before or "empty",
                    after,
                )
            else:
                logger.info("state store {} at schema {}", self.store.name, after)
            closed = await in_thread(
                self.store.begin_instance, self._instance_row(), name="hermes-store-open"
            )
        for old in closed:
            logger.warning(
                "previous gateway instance {} (pid {}) ended without a clean stop",
                old["id"][:8],
                old["pid"],
            )
        self.writer = StoreWriter(
            self.store, self.instance_id, slow_after=max(5.0, 2 * cfg.watchdog.tick_interval)
        )
        self.job = WatchdogJob(
            self.engine,
            self.supervisor,
            self.notifier,
            self.writer,
            clock=self.clock,
            tick_interval=cfg.watchdog.tick_interval,
            heartbeat_persist_interval=cfg.store.heartbeat_persist_interval,
            on_escalate=self._on_escalate,
        )
        await self._start_runner()
        for pc in cfg.platforms.values():
            self.supervisor.add(platform_spec(pc, self.intake))
        now = self.clock.monotonic()
        wall = self.clock.wall()
        rows = [self.job.row(r, wall, now) for r in self.board]
        for r in self.board:
            r.dirty = False
        removed = await in_thread(self.store.replace_platforms, rows, name="hermes-store-open")
        for name in removed:
            logger.bind(platform=name).info("platform no longer configured; removed from the store")
            self.job.record_removed(name)
        self.writer.start()
        self.scheduler = AsyncIOScheduler()
        self.scheduler.start()
        self.job.install(self.scheduler)
        await self._start_jobs()

    async def _start_runner(self) -> None:
        """The ledger, the outbox and the job runner; runs and rows a crash left behind."""
        cfg = self.config
        assert self.store is not None
        self.db = DaemonWorker("hermes-db")
        self.ledger = Ledger(self.store.engine, self.instance_id)
        routes = build_routes(cfg.routes)
        retry = [r.name for r in routes if r.settings.on_crash == "retry"]
        interrupted = await self.db.call(self.ledger.close_interrupted, retry)
        recovered = await self.db.call(self.ledger.recover_sending)
        if interrupted or recovered:
            logger.warning(
                "previous process left {} runs unfinished (now cancelled) and {} messages mid-send (will be sent again)",
                interrupted,
                recovered,
            )
        writes: GroupCommit[Write, Any] = GroupCommit(
            self.db,
            self.ledger.write,
            batch=cfg.runner.commit_batch,
            flush_after=cfg.runner.commit_after,
            name="ledger",
        )
        self.outbox = Outbox(self.ledger, self.db, self, cfg.outbox, self.tasks, writes)
        self.runner = JobRunner(
            self.ledger,
            self.db,
            self.outbox,
            self,
            self.tasks,
            settings=cfg.runner,
            outbox_settings=cfg.outbox,
            routes=routes,
            jobs=cfg.jobs,
            environ=self.environ,
        )
        inbox = InboxStore(self.store.engine, self.instance_id)
        self.runner.inbox = inbox
        saved = await self.db.call(inbox.cursors)
        self.intake = Intake(
            inbox, cfg.inbox, on_stored=self.runner.on_stored, saved=saved, board=self.board
        )
        self._essential(writes.run(), "ledger:commit")
        self._essential(self.intake.run(), "inbox:commit")
        self._essential(self.runner.poll_backlog(cfg.inbox.backlog_poll), "inbox:backlog")
        self._essential(self.outbox.run(), "outbox:delivery")
        self._essential(self.runner.poll_requests(), "jobs:requests")
        self._essential(self._housekeeping(), "housekeeping")

    async def _start_jobs(self) -> None:
        assert self.store is not None and self.runner is not None
        runner = self.runner
        self.jobs = JobScheduler(
            self.store.engine, asyncio.get_running_loop(), runner.run_scheduled
        )
        await in_thread(self.jobs.start, self.config.jobs, name="hermes-jobs-start")

    def _essential(self, coro: Any, name: str) -> None:
        """A task the gateway cannot work without: if it ends, the gateway escalates."""

        def ended(task: asyncio.Task[Any]) -> None:
            if self._stop is None or self._stop.is_set():
                return
            exc = None if task.cancelled() else task.exception()
            why = (
                "cancelled" if task.cancelled() else describe_exception(exc) if exc else "returned"
            )
            self.request_stop(EXIT_ESCALATE, f"internal task {name} ended unexpectedly ({why})")

        self.tasks.spawn(coro, name=name, on_done=ended, expected_to_end=False)

    async def _housekeeping(self) -> None:
        """Pick up job-store changes made by ``hermes jobs``; prune old runs and messages."""
        db, ledger = self.db, self.ledger
        assert db is not None and ledger is not None  # started with the runner, after both
        loop = asyncio.get_running_loop()
        next_prune = loop.time()
        while True:
            await asyncio.sleep(self.config.runner.request_poll)
            if self.jobs is not None:
                self.jobs.wakeup()
            if loop.time() >= next_prune:
                next_prune = loop.time() + 3600
                try:
                    runs, rows = await db.call(
                        ledger.prune,
                        timedelta(seconds=self.config.runner.retention),
                        timedelta(seconds=self.config.outbox.retention),
                    )
                    inbound = 0
                    if self.runner is not None and self.runner.inbox is not None:
                        inbound = await db.call(
                            self.runner.inbox.prune,
                            timedelta(seconds=self.config.inbox.retention),
                        )
                except DB_ERRORS as exc:
                    logger.warning("pruning old runs postponed: {}", describe_exception(exc))
                    next_prune = loop.time() + 60
                    continue
                if runs or rows or inbound:
                    logger.info(
                        "pruned {} old runs, {} settled outbox messages and {} inbox rows",
                        runs,
                        rows,
                        inbound,
                    )

    # -- what the outbox and the runner need (hermes.jobrunner.outbox.Platforms)

    def deliverable(self) -> list[str]:
        """Platforms that are connected now: their outbox messages may go out."""
        return [
            r.name
            for r in self.board
            if r.declared is DeclaredState.CONNECTED
            and r.health is not Health.FATAL
            and r.restart_at is None
        ]

    def adapter(self, platform: str) -> Adapter | None:
        instance = self.supervisor.instance(platform)
        return instance if isinstance(instance, Adapter) else None

    def _instance_row(self) -> dict[str, Any]:
        return {
            "id": self.instance_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": hermes.__version__,
            "started_at": self.clock.wall(),
            "last_tick_at": None,
            "tick_interval": self.config.watchdog.tick_interval,
            "pinging": False,
            "status_text": "starting",
            "store_failures": 0,
        }

    # -- escalation

    def _on_escalate(self, esc: Escalation) -> None:
        self.request_stop(esc.exit_code, esc.describe())

    # -- stop

    async def _shutdown(self) -> int:
        code, reason = self.exit_code, self.exit_reason
        budget = self.config.gateway.shutdown_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        self.notifier.stopping(f"stopping (exit {code}): {reason}")
        logger.info("stopping (exit {}): {}", code, reason)
        self._arm_backstop(code, reason, budget)
        if self._reloading is not None:
            self._reloading.cancel()
        if self.job is not None:
            self.job.uninstall()
        if self.jobs is not None:
            self.jobs.stop()
        if self.runner is not None:
            await self.runner.cancel_all(grace=min(2.0, budget * 0.2))
        if self.outbox is not None:
            # Replies produced just before the stop: one bounded last try while adapters are up.
            try:
                await asyncio.wait_for(self.outbox.deliver_once(), min(2.0, budget * 0.1))
            except (TimeoutError, Exception) as exc:
                logger.warning("last outbox pass at stop incomplete: {}", describe_exception(exc))
        try:
            await asyncio.wait_for(self.supervisor.stop_all(), max(0.1, budget * 0.6))
        except TimeoutError:
            logger.error("adapters did not all stop within {:.1f} s", budget * 0.6)
        if self.intake is not None:
            # Events received but not yet stored: one bounded last commit. What it cannot
            # store stays with the platform (the stored cursor is before it).
            try:
                await asyncio.wait_for(self.intake.flush(), max(0.1, min(2.0, budget * 0.1)))
            except TimeoutError:
                logger.warning("inbox: last commit at stop did not finish; the platform replays")
            self.intake.close()
        if self.job is not None and self.writer is not None:
            self.writer.submit(self.job.final_batch(code, reason))
            left = max(0.5, deadline - loop.time())
            if await in_thread(self.writer.stop, left, name="hermes-store-flush"):
                logger.info("final state written to the store")
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        stuck = await self.tasks.cancel_all(grace=max(0.1, min(2.0, deadline - loop.time())))
        if stuck:
            logger.error("tasks still running at exit: {}", ", ".join(stuck))
        if self.db is not None:
            self.db.stop()
        if self.store is not None:
            self.store.close()
        if self.settle_when_ready:
            release()
        # The last notification: systemd keeps this StatusText while the unit waits to restart
        # and after the start limit, next to Result=exit-code and status=75 (systemd 252 has
        # no EXIT_STATUS=; the exit status itself is what it records).
        self.notifier.status(f"stopped (exit {code}): {reason}")
        logger.info("stopped (exit {})", code)
        return code

    def _arm_backstop(self, code: int, reason: str, budget: float) -> None:
        """For a stop that must end in a restart (exit 75): if it hangs, have systemd kill us.

        Not for exit 78 (a watchdog result is restarted whatever the exit status, and a restart
        cannot help) nor for a stop systemd asked for (its own TimeoutStopSec= covers that).
        """
        if code != EXIT_ESCALATE or not self.config.watchdog.trigger_on_escalation:
            return
        self.backstop = StopBackstop(
            self.notifier.address,
            after=budget + STOP_BACKSTOP_GRACE,
            cause=f"escalation (exit {code}): {reason}",
        )
        self.backstop.arm()

    # -- reload

    def _on_hup(self) -> None:
        if self._reloading is not None and not self._reloading.done():
            logger.warning("SIGHUP ignored: a reload is already running")
            return
        self._reloading = self.tasks.spawn(self.reload(), name="reload")

    async def reload(self) -> bool:
        """Re-read the configuration and apply what changed; keep running on any error."""
        self.notifier.reloading()
        try:
            try:
                new = await in_thread(
                    load_config, self.config.path, self.environ, name="hermes-reload"
                )
            except ConfigError as exc:
                for line in exc.problems:
                    logger.error("reload rejected: {}: {}", exc.source, line)
                self.notifier.status(
                    f"reload rejected ({len(exc.problems)} problems); running the previous configuration"
                )
                return False
            await self._apply(new)
            return True
        finally:
            self.notifier.ready()

    async def _apply(self, new: GatewayConfig) -> None:
        old = self.config
        if new.database_url != old.database_url:
            logger.warning("store settings changed; they take effect at the next restart")
        if self.job is not None and new.watchdog.tick_interval != old.watchdog.tick_interval:
            try:
                self.job.reschedule(new.watchdog.tick_interval)
            except WatchdogTimingError as exc:
                logger.error(
                    "reload: {}; keeping tick_interval = {:g} s", exc, old.watchdog.tick_interval
                )
                new = _replace_watchdog(new, old)
        if self.job is not None:
            self.job.heartbeat_persist_interval = new.store.heartbeat_persist_interval
        self.supervisor.close_timeout = new.watchdog.close_timeout
        if new.gateway.log_level != old.gateway.log_level:
            from hermes.logs import setup_logging

            setup_logging(new.gateway.log_level)
        removed = [n for n in old.platforms if n not in new.platforms]
        changed = [
            n
            for n, pc in new.platforms.items()
            if n in old.platforms
            and (pc.raw != old.platforms[n].raw or pc.supervision != old.platforms[n].supervision)
        ]
        added = [n for n in new.platforms if n not in old.platforms]
        for name in removed + changed:
            await self.supervisor.remove(name)
            if name in removed and self.job is not None:
                self.job.record_removed(name)
        for name in changed + added:
            self.supervisor.add(platform_spec(new.platforms[name], self.intake))
        if self.runner is not None:
            self.runner.configure(build_routes(new.routes), new.jobs)
        if self.jobs is not None:
            await in_thread(self.jobs.sync, new.jobs, name="hermes-jobs-sync")
        self.config = new
        logger.info(
            "configuration reloaded: {} added, {} changed, {} removed",
            len(added),
            len(changed),
            len(removed),
        )

    # -- signals

    def _install_signals(self) -> None:
        self._add_signal(signal.SIGTERM, lambda: self.request_stop(EXIT_OK, "SIGTERM"))
        self._add_signal(signal.SIGINT, lambda: self.request_stop(EXIT_OK, "SIGINT"))
        self._add_signal(signal.SIGHUP, self._on_hup)

    def _add_signal(self, signum: int, handler: Any) -> None:
        try:
            asyncio.get_running_loop().add_signal_handler(signum, handler)
        except (NotImplementedError, RuntimeError, ValueError):
            return  # not the main thread (embedded in tests): signals are the embedder's business
        self._signals.append(signum)

    def _remove_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in self._signals:
            loop.remove_signal_handler(signum)
        self._signals.clear()


def run_gateway(gateway: Gateway, grace: float = 0.5) -> int:
    """Run the gateway on a new event loop and return its exit code.

    ``asyncio.run()`` cancels leftover tasks and then waits for them without a limit:
    one adapter task that swallows cancellation would keep the process alive forever,
    deaf and no longer pinging. Here leftovers get ``grace`` seconds, then are abandoned.
    The process exits next, so an escalation's backstop stays armed until it has.
    """
    gateway.backstop_until_exit = True
    gateway.settle_when_ready = True
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(gateway.run())
    finally:
        try:
            stuck = loop.run_until_complete(cancel_and_wait(asyncio.all_tasks(loop), grace))
            if stuck:
                logger.error("abandoning tasks that ignore cancellation: {}", ", ".join(stuck))
            loop.run_until_complete(asyncio.wait_for(loop.shutdown_asyncgens(), grace))
        except Exception:
            logger.exception("error while closing the event loop")
        finally:
            loop.close()


def _replace_watchdog(new: GatewayConfig, old: GatewayConfig) -> GatewayConfig:
    from dataclasses import replace

    return replace(
        new, watchdog=new.watchdog.model_copy(update={"tick_interval": old.watchdog.tick_interval})
    )


def _systemd_summary(notifier: Notifier) -> str:
    if not notifier.enabled:
        return "not notified (no NOTIFY_SOCKET)"
    if notifier.watchdog_timeout is None:
        return "notified, watchdog off"
    return f"notified, WatchdogSec={notifier.watchdog_timeout:g}s"
