"""Runs adapter instances as supervised tasks and carries out the engine's restarts and stops.

The supervisor knows nothing about platforms: it is given, per platform, a
factory that turns a :class:`~watchdog.heartbeat.PlatformHandle` into something
with ``run()`` and ``close()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from loguru import logger

from watchdog import reasons
from watchdog.engine import TickOutcome, WatchdogEngine
from watchdog.heartbeat import (
    HeartbeatBoard,
    PlatformHandle,
    PlatformPolicy,
    PlatformRecord,
    Reason,
    TaskExit,
)
from watchdog.states import DeclaredState, Health
from watchdog.tasks import TaskRegistry, describe_exception


class Supervised(Protocol):
    """The lifecycle every adapter follows; see ``hermes.adapters.base.Adapter``."""

    async def run(self) -> None:
        """Serve until :meth:`close` is called; return only then."""

    async def close(self) -> None:
        """Ask :meth:`run` to finish; may return before it has."""


Factory = Callable[[PlatformHandle], Supervised]


@dataclass(frozen=True, slots=True)
class PlatformSpec:
    """How to run one platform."""

    name: str
    kind: str
    required: bool
    policy: PlatformPolicy
    factory: Factory


@dataclass(slots=True)
class _Instance:
    generation: int
    adapter: Supervised | None
    task: asyncio.Task[Any] | None


class Supervisor:
    """Starts, restarts and stops adapter instances on the running loop."""

    def __init__(
        self,
        board: HeartbeatBoard,
        engine: WatchdogEngine,
        tasks: TaskRegistry,
        *,
        close_timeout: float = 5.0,
    ) -> None:
        self.board = board
        self.engine = engine
        self.tasks = tasks
        self.close_timeout = close_timeout
        self._specs: dict[str, PlatformSpec] = {}
        self._instances: dict[str, _Instance] = {}
        self._stopping: dict[str, asyncio.Task[Any]] = {}
        self._restarting: dict[str, asyncio.Task[Any]] = {}

    @property
    def specs(self) -> dict[str, PlatformSpec]:
        return dict(self._specs)

    def instance(self, name: str) -> Supervised | None:
        """The platform's current adapter instance, if one is running."""
        inst = self._instances.get(name)
        record = self.board.get(name)
        if inst is None or record is None or inst.generation != record.generation:
            return None
        return inst.adapter

    # -- starting

    def add(self, spec: PlatformSpec) -> PlatformRecord:
        """Register a platform and start its first instance."""
        record = self.board.register(
            spec.name, spec.kind, required=spec.required, policy=spec.policy
        )
        self._specs[spec.name] = spec
        self._launch(record, restart=False)
        return record

    def _launch(self, record: PlatformRecord, *, restart: bool) -> None:
        spec = self._specs[record.name]
        handle = self.board.begin_attempt(record, restart=restart)
        generation = record.generation
        log = logger.bind(platform=record.name)
        try:
            adapter = spec.factory(handle)
        except Exception as exc:
            log.opt(exception=exc).error(
                "adapter could not be constructed: {}", describe_exception(exc)
            )
            record.fatal_error = Reason(reasons.ADAPTER_INIT_FAILED, describe_exception(exc), True)
            self._instances[record.name] = _Instance(generation, None, None)
            return
        task = self.tasks.spawn(
            adapter.run(),
            name=f"platform:{record.name}#{generation}",
            on_done=partial(self._task_done, record, generation),
        )
        record.task = task
        self._instances[record.name] = _Instance(generation, adapter, task)
        log.info("adapter {} started (attempt {})", spec.kind, record.restarts)

    def _task_done(self, record: PlatformRecord, generation: int, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            exit = TaskExit(True, "CancelledError: adapter task was cancelled")
        elif (exc := task.exception()) is not None:
            exit = TaskExit(True, describe_exception(exc))
        else:
            exit = TaskExit(False, "returned")
        if not self.board.note_exit(record, generation, exit) or record.stop_requested:
            return
        log = logger.bind(platform=record.name)
        if record.fatal_error is not None and not exit.crashed:
            log.info("adapter returned after reporting {}", record.fatal_error.code)
        else:
            log.warning(
                "adapter task ended while declared {}: {}", record.declared.value, exit.summary
            )

    # -- carrying out the engine's decisions

    def apply(self, outcome: TickOutcome) -> None:
        for order in outcome.restarts:
            name = order.platform

            def forget(task: asyncio.Task[Any], name: str = name) -> None:
                if self._restarting.get(name) is task:
                    del self._restarting[name]

            self._restarting[name] = self.tasks.spawn(
                self._restart(self.board[name], order.delay), name=f"restart:{name}", on_done=forget
            )
        for name in outcome.stops:
            self._stop_in_background(name)

    async def _restart(self, record: PlatformRecord, delay: float) -> None:
        name = record.name
        log = logger.bind(platform=name)
        reason = record.reason
        log.warning(
            "restart #{} in {:.1f} s after {}",
            record.restarts + 1,
            delay,
            f"{reason.code}: {reason.message}" if reason else "a failure",
        )
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        await self._stop_instance(name)
        await asyncio.sleep(max(0.0, due - loop.time()))
        # The platform may have been stopped, removed or replaced (reload) while we waited.
        if self.board.get(name) is record and record.restart_at is not None:
            self._launch(record, restart=True)

    def _stop_in_background(self, name: str) -> None:
        if name in self._stopping:
            return

        def forget(_task: asyncio.Task[Any]) -> None:
            self._stopping.pop(name, None)

        self._stopping[name] = self.tasks.spawn(
            self._stop_instance(name), name=f"stop:{name}", on_done=forget
        )

    async def _stop_instance(self, name: str) -> None:
        """Close the platform's current instance, then cancel it if it does not finish in time."""
        inst = self._instances.get(name)
        if inst is None:
            return
        log = logger.bind(platform=name)
        if inst.adapter is not None:
            try:
                await asyncio.wait_for(inst.adapter.close(), self.close_timeout)
            except TimeoutError:
                log.warning("adapter close() did not return within {:g} s", self.close_timeout)
            except Exception as exc:
                log.opt(exception=exc).warning(
                    "adapter close() raised: {}", describe_exception(exc)
                )
        task = inst.task
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=self.close_timeout)
            if not task.done():
                log.warning(
                    "adapter did not finish within {:g} s of close(); cancelling",
                    self.close_timeout,
                )
                task.cancel()
                await asyncio.wait({task}, timeout=self.close_timeout)
                if not task.done():
                    log.error("adapter task ignores cancellation; abandoning it")

    # -- stopping

    async def remove(self, name: str) -> None:
        """Stop a platform and forget it (it left the configuration)."""
        record = self.board[name]
        record.stop_requested = True
        pending = self._restarting.pop(name, None)
        if pending is not None:
            pending.cancel()
        await self._stop_instance(name)
        self.board.remove(name)
        self.engine.forget(name)
        self._specs.pop(name, None)
        self._instances.pop(name, None)

    async def stop_all(self) -> None:
        """Graceful shutdown: ask every adapter to close, concurrently, each within the time limit."""
        for record in self.board:
            record.stop_requested = True
            record.restart_at = None
        names = [r.name for r in self.board]
        await asyncio.gather(*(self._stop_instance(n) for n in names))
        for stop in list(self._stopping.values()):
            await asyncio.wait({stop}, timeout=self.close_timeout)
        for record in self.board:
            # A fatal platform keeps what its adapter last declared: that is the evidence.
            if record.health is not Health.FATAL:
                self.board.set_declared(record, DeclaredState.STOPPED)
            self.board.retire(record)
