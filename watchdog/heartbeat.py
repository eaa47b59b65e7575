"""The heartbeat board: per platform, what the adapter declared and when it last proved progress.

Adapters never see the board. Each adapter instance gets a :class:`PlatformHandle`
bound to one *generation* of its platform's record; when the watchdog gives up on
that instance (restart or fatal) it bumps the generation, and every later call on
the old handle is ignored, so a dying adapter cannot overwrite the evidence.

Everything here runs on the event-loop thread. ``beat()`` is the hot path: one
generation check and one clock read, no locks, no I/O, no allocation.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from watchdog.reasons import check_code
from watchdog.restart import RestartPolicy
from watchdog.states import DeclaredState, Health

MAX_MESSAGE = 500


@dataclass(frozen=True, slots=True)
class PlatformPolicy:
    """Per-platform supervision settings."""

    heartbeat_ttl: float = 30.0
    """Default TTL; an adapter may change its own with ``set_heartbeat_ttl``."""
    start_timeout: float = 60.0
    """Longest time allowed in ``starting``."""
    reconnect_timeout: float = 300.0
    """Longest time allowed in ``reconnecting`` without reaching ``connected``."""
    restart: RestartPolicy = field(default_factory=RestartPolicy)


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a platform has the health it has."""

    code: str
    message: str
    retryable: bool


@dataclass(frozen=True, slots=True)
class TaskExit:
    """How an adapter task ended; ``summary`` is ``"ValueError: boom"`` for a crash."""

    crashed: bool
    summary: str


@dataclass(frozen=True, slots=True)
class DeclaredChange:
    """An adapter's declaration, queued for the history."""

    platform: str
    at: float
    old: DeclaredState
    new: DeclaredState


@dataclass(slots=True, eq=False)
class PlatformRecord:
    """Everything the watchdog knows about one platform. Mutated only on the loop thread."""

    name: str
    kind: str
    required: bool
    policy: PlatformPolicy
    declared: DeclaredState
    declared_since: float
    health: Health
    health_since: float
    ttl: float
    attempt_started: float = 0.0
    """Monotonic time the current generation (adapter instance) was started."""
    last_beat: float | None = None
    """Monotonic time of the last ``beat()``: the last proof of life. Kept across reconnects
    and restarts, because reconnecting or restarting proves nothing."""
    exit: TaskExit | None = None
    """Set when the current generation's task ended."""
    fatal_error: Reason | None = None
    """Set by ``handle.fatal()``."""
    reason: Reason | None = None
    """The reason behind ``health``; kept through a restart until the platform is ok."""
    stop_requested: bool = False
    generation: int = 0
    restarts: int = 0
    restart_at: float | None = None
    """Monotonic time a pending restart is due; ``None`` when none is pending."""
    task: Any = None
    """The asyncio task running the current generation, owned by the supervisor."""
    dirty: bool = True
    """Changed since last handed to the store."""
    persisted_beat: float | None = None
    held: Reason | None = None
    """Set while the gateway itself keeps this platform from reading (backpressure: its
    inbox cannot store more events), with why. The adapter cannot set it: the silence
    meanwhile is the gateway's doing, so the platform is degraded for that reason, never
    judged silent (see :meth:`HeartbeatBoard.hold`)."""
    held_since: float | None = None
    released_at: float | None = None
    """Monotonic time the last hold ended: the adapter's allowance to prove life again
    runs from here, as it would from the start of an attempt."""

    @property
    def alive_at(self) -> float:
        """Where the silence is measured from: the last proof of life, the start of the
        current attempt, or the end of the gateway's last hold, whichever is latest (a fresh
        adapter instance gets one grace period, as does one the gateway let read again;
        a reconnect gets none)."""
        beat = self.last_beat
        start = self.attempt_started
        if self.released_at is not None:
            start = max(start, self.released_at)
        return start if beat is None else max(beat, start)

    @property
    def proven(self) -> bool:
        """Whether the current attempt has shown any proof of life."""
        return self.last_beat is not None and self.last_beat >= self.attempt_started


class PlatformHandle:
    """What an adapter instance may tell the watchdog. Calls from a retired generation are ignored."""

    __slots__ = ("_board", "_generation", "_mono", "_record")

    def __init__(self, board: HeartbeatBoard, record: PlatformRecord) -> None:
        self._board = board
        self._record = record
        self._generation = record.generation
        self._mono = board.clock_monotonic

    @property
    def platform(self) -> str:
        return self._record.name

    @property
    def attempt(self) -> int:
        """0 for the first start of this platform in this process, n after n restarts."""
        return self._record.restarts

    @property
    def current(self) -> bool:
        """False once the watchdog has given up on this adapter instance."""
        return self._record.generation == self._generation

    def beat(self) -> None:
        """Record proof of progress. Call it from the code path that proves the platform alive
        (an ACK received, a poll returned, an event dispatched), never from a timer."""
        record = self._record
        if record.generation == self._generation:
            record.last_beat = self._mono()

    def declare(self, state: DeclaredState) -> None:
        """Declare a lifecycle state. ``fatal`` is declared through :meth:`fatal`."""
        if state is DeclaredState.FATAL:
            raise ValueError("declare fatal through handle.fatal(code, message, retryable)")
        if self.current:
            self._board.set_declared(self._record, DeclaredState(state))

    def fatal(self, code: str, message: str, *, retryable: bool = False) -> None:
        """Report an error the adapter cannot recover from by itself.

        ``retryable=True`` asks for an in-process restart within the budget;
        ``False`` (bad credentials, a ban) makes the platform fatal at once.
        The first report of a generation wins: it is usually the root cause.
        """
        check_code(code)
        record = self._record
        if not self.current or record.fatal_error is not None:
            return
        record.fatal_error = Reason(code, clip_message(message), bool(retryable))
        self._board.set_declared(record, DeclaredState.FATAL)

    def set_heartbeat_ttl(self, seconds: float) -> None:
        """Change this platform's TTL, e.g. to follow a server-announced heartbeat interval."""
        if not seconds > 0:
            raise ValueError(f"heartbeat TTL must be > 0, got {seconds!r}")
        if self.current and self._record.ttl != seconds:
            self._record.ttl = float(seconds)
            self._record.dirty = True


class HeartbeatBoard:
    """All platform records of one gateway, keyed by platform name."""

    def __init__(self, clock_monotonic: Callable[[], float] = time.monotonic) -> None:
        self.clock_monotonic = clock_monotonic
        self._records: dict[str, PlatformRecord] = {}
        self._changes: deque[DeclaredChange] = deque()

    # -- membership

    def register(
        self, name: str, kind: str, *, required: bool, policy: PlatformPolicy
    ) -> PlatformRecord:
        if name in self._records:
            raise ValueError(f"platform {name!r} is already registered")
        now = self.clock_monotonic()
        record = PlatformRecord(
            name=name,
            kind=kind,
            required=required,
            policy=policy,
            declared=DeclaredState.STARTING,
            declared_since=now,
            health=Health.DEGRADED,
            health_since=now,
            ttl=policy.heartbeat_ttl,
            attempt_started=now,
        )
        self._records[name] = record
        return record

    def remove(self, name: str) -> PlatformRecord:
        record = self._records.pop(name)
        record.generation += 1
        return record

    def get(self, name: str) -> PlatformRecord | None:
        return self._records.get(name)

    def __getitem__(self, name: str) -> PlatformRecord:
        return self._records[name]

    def __contains__(self, name: object) -> bool:
        return name in self._records

    def __iter__(self) -> Iterator[PlatformRecord]:
        return iter(self._records.values())

    def __len__(self) -> int:
        return len(self._records)

    # -- generations

    def handle(self, record: PlatformRecord) -> PlatformHandle:
        """A handle for the record's current generation."""
        return PlatformHandle(self, record)

    def retire(self, record: PlatformRecord) -> None:
        """Make every handle given out so far inert (the instance is being stopped)."""
        record.generation += 1

    def begin_attempt(self, record: PlatformRecord, *, restart: bool) -> PlatformHandle:
        """Reset the record for a fresh adapter instance and return its handle."""
        record.generation += 1
        record.exit = None
        record.fatal_error = None
        record.stop_requested = False
        record.restart_at = None
        record.attempt_started = self.clock_monotonic()
        record.ttl = record.policy.heartbeat_ttl
        if restart:
            record.restarts += 1
        record.dirty = True
        self.set_declared(record, DeclaredState.STARTING, force=True)
        return PlatformHandle(self, record)

    def note_exit(self, record: PlatformRecord, generation: int, exit: TaskExit) -> bool:
        """Record how a generation's task ended; ignored for retired generations."""
        if record.generation != generation or record.exit is not None:
            return False
        record.exit = exit
        record.dirty = True
        return True

    # -- holds by the gateway (never by an adapter)

    def hold(self, name: str, reason: Reason) -> None:
        """The gateway keeps the platform from reading (its inbox is full: the store is down
        or slow), so the platform's silence is not its adapter's: judged ``degraded`` with
        ``reason`` until :meth:`release`. The platform is still judged on everything else
        (a crash, an exit, a fatal error)."""
        record = self._records.get(name)
        if record is None:
            return
        if record.held is None:
            record.held_since = self.clock_monotonic()
            logger.bind(platform=name).warning("held by the gateway: {}", reason.message)
        record.held = reason
        record.dirty = True

    def release(self, name: str) -> None:
        """End a hold: from now the adapter has its usual allowance to prove life again."""
        record = self._records.get(name)
        if record is None or record.held is None:
            return
        now = self.clock_monotonic()
        since = record.held_since if record.held_since is not None else now
        logger.bind(platform=name).info("released by the gateway after {:.1f} s", now - since)
        record.held = None
        record.held_since = None
        record.released_at = now
        record.dirty = True

    # -- declarations

    def set_declared(
        self, record: PlatformRecord, state: DeclaredState, *, force: bool = False
    ) -> None:
        if state is record.declared and not force:
            return
        now = self.clock_monotonic()
        if state is not record.declared:
            self._changes.append(DeclaredChange(record.name, now, record.declared, state))
            logger.bind(platform=record.name).info(
                "declared {} (was {})", state.value, record.declared.value
            )
        record.declared = state
        record.declared_since = now
        record.dirty = True

    def drain_changes(self) -> list[DeclaredChange]:
        changes = list(self._changes)
        self._changes.clear()
        return changes


def clip_message(message: str) -> str:
    """One line, at most MAX_MESSAGE characters: what fits in a status row."""
    message = " ".join(str(message).split())
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"
