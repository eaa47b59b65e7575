"""The QQ Bot adapter: a thin driver around the pure protocol in :mod:`.protocol`.

One loop: get a token and the gateway URL, connect, run the connection until it
ends, ask :func:`~.protocol.plan_after_close` (and friends) what that means, wait
as :class:`~.protocol.Reconnector` says, go again. Every way out of the loop either
declares ``stopped`` (after :meth:`close`) or reports a fatal error; the watchdog
catches whatever slips through anyway.

Beats come from heartbeat ACKs and dispatched events only (proof of life), never from
READY/RESUMED. The heartbeat TTL follows the server's Hello interval. The first heartbeat
goes right after READY/RESUMED, the next ones every interval from a task owned by the
connection; an ACK missing at the next heartbeat marks the connection a zombie: it is
closed with a non-1000 code and resumed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, Field, field_validator
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from hermes.adapters.base import Adapter, AdapterSettings, LocalInbound
from hermes.adapters.batching import BatchingConnection, Message
from hermes.adapters.qqbot import events
from hermes.adapters.qqbot.api import QQApi
from hermes.adapters.qqbot.auth import TokenManager
from hermes.adapters.qqbot.httpclient import HttpClient
from hermes.adapters.qqbot.intents import DEFAULT_INTENTS, Intents, parse_intents
from hermes.adapters.qqbot.protocol import (
    ZOMBIE_CLOSE_CODE,
    Acked,
    Action,
    Backoff,
    Connection,
    Dispatch,
    Hello,
    Next,
    Plan,
    Ready,
    Reconnector,
    ReconnectRequested,
    Send,
    Session,
    SessionInvalid,
    Unknown,
    Wait,
    plan_after_backpressure,
    plan_after_close,
    plan_after_invalid_session,
    plan_after_protocol_error,
    plan_after_reconnect_request,
    plan_after_zombie,
)
from hermes.errors import (
    QQApiError,
    QQAuthError,
    QQMalformedFrame,
    QQProtocolError,
    QQTokenUnavailable,
    SendError,
)
from hermes.messages import OutboundMessage, RecentIds
from watchdog.heartbeat import PlatformHandle
from watchdog.settings import Duration, SecretValue
from watchdog.states import DeclaredState
from watchdog.tasks import TaskRegistry, describe_exception

PRODUCTION_API = "https://api.sgroup.qq.com"
REPLY_WINDOWS = {"c2c": 3600.0, "group": 300.0, "channel": 300.0, "dm": 300.0}
"""Passive-reply windows from the platform's documentation (seconds)."""
PRODUCTION_TOKEN_URL = "https://bots.qq.com/app/getAppAccessToken"
IDENTIFYING = "identifying_since"
"""Key of the cursor stored before an Identify, until READY names the new session."""
UNKNOWN_KINDS_MAX = 64
READ_SLICE = 256
"""Frames handled in one go at most: between slices the inbox's committer gets its turn."""
PACE_SHARE = 0.1
"""The longest the inbox may hold the next read back (see Inbound.pace), in heartbeat
intervals: the ACK of a heartbeat may be in that read."""
"""Distinct unknown opcodes and event types counted (and logged) one by one; the rest together."""


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(_http_url)]


class QQBotSettings(AdapterSettings):
    app_id: str = Field(min_length=1)
    client_secret: SecretValue
    api_base: HttpUrl = PRODUCTION_API
    """REST API base; the sandbox is https://sandbox.api.sgroup.qq.com."""
    token_url: HttpUrl = PRODUCTION_TOKEN_URL
    intents: list[str] = Field(default_factory=lambda: list(DEFAULT_INTENTS))
    shard: tuple[int, int] = (0, 1)
    reconnect_backoff: Duration = 1.0
    reconnect_backoff_max: Duration = 60.0
    reconnect_max_failures: Annotated[int, Field(ge=0)] = 10
    """Connections in a row that fail, show no proof of life, or do not keep proving it for
    ``stable_after``, before giving up. Reconnects the server asked for (op 7, op 9) are not
    failures once a connection proves life (see :class:`~.protocol.Reconnector`)."""
    stable_after: Duration = 60.0
    rate_limit_delay: Duration = 5.0
    """Least wait after close code 4008 (sending too fast)."""
    auth_failures_max: Annotated[int, Field(ge=1)] = 3
    """Close code 4004 this many times in a row, each with a refetched token: qq_invalid_token."""
    hello_timeout: Duration = 10.0
    ready_timeout: Duration = 15.0
    """After Hello, how long READY/RESUMED may take."""
    heartbeat_ttl_factor: Annotated[float, Field(ge=1.5)] = 2.5
    """The watchdog's heartbeat TTL is this many Hello intervals."""
    request_timeout: Duration = 10.0
    send_attempts: Annotated[int, Field(ge=1, le=20)] = 4
    dedupe_window: Annotated[int, Field(ge=100)] = 10_000
    handler_queue: Annotated[int, Field(ge=1)] = 1000
    """Run on its own (not in the gateway): messages waiting for ``on_message``."""
    handler_workers: Annotated[int, Field(ge=1, le=256)] = 4
    """Accepted for old configurations; the inbox hands messages to the job runner."""
    resume_window: Duration = 300.0
    """At start, a stored session younger than this is resumed, so that the platform replays
    what a dead process never stored; an older one is not tried (recorded as a gap)."""

    @field_validator("intents")
    @classmethod
    def _known_intents(cls, names: list[str]) -> list[str]:
        parse_intents(names)
        return names


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one connection ended."""

    plan: Plan
    ready: bool
    """It reached READY/RESUMED: the token and the session were accepted."""
    proven_for: float | None
    """Seconds from READY/RESUMED to its last proof of life (an ACK or an event); None if it
    showed none."""
    detail: str


class QQBotAdapter(Adapter):
    """A QQ Bot session on the WebSocket gateway."""

    kind = "qqbot"
    Settings = QQBotSettings

    def __init__(self, name: str, settings: AdapterSettings, handle: PlatformHandle) -> None:
        super().__init__(name, settings, handle)
        assert isinstance(settings, QQBotSettings)
        self.s: QQBotSettings = settings
        self.intents: Intents = parse_intents(settings.intents)
        self.session = Session()
        self.reconnector = Reconnector(
            Backoff(settings.reconnect_backoff, settings.reconnect_backoff_max),
            max_failures=settings.reconnect_max_failures,
            stable_after=settings.stable_after,
            rate_limit_delay=settings.rate_limit_delay,
        )
        self.recent = RecentIds(settings.dedupe_window)
        self.api: QQApi | None = None
        self.tokens: TokenManager | None = None
        self.inbound = LocalInbound(self, settings.handler_queue)
        self._held = False
        """An event was refused by the inbox (full): reconnect only once it has room."""
        self._new_session_noted = False
        """READY named a new session and it is on its way to the inbox: wait for its commit
        before the next frame."""
        self._identifying = False
        """The inbox holds an identify marker (see :meth:`_mark_identify`) and no READY
        has replaced it with the new session yet."""
        self.zombie_detection = True
        """Tests turn this off to prove the watchdog catches a half-open socket by itself."""
        self.tasks = TaskRegistry()
        self.duplicates = 0
        self.malformed = 0
        self.unknown: dict[str, int] = {}
        """Frames ignored as new to us, by opcode or event type (each logged the first time)."""
        self._ws: BatchingConnection | None = None

    # -- lifecycle

    async def run(self) -> None:
        s = self.s
        async with HttpClient(
            timeout=s.request_timeout, headers={"User-Agent": "hermes-gateway"}
        ) as http:
            self.tokens = TokenManager(
                http, token_url=s.token_url, app_id=s.app_id, secret=s.client_secret
            )
            self.api = QQApi(
                http,
                api_base=s.api_base,
                app_id=s.app_id,
                tokens=self.tokens,
                max_attempts=s.send_attempts,
                platform=self.name,
            )
            try:
                await self._serve()
            finally:
                await self.tasks.cancel_all(grace=2.0)

    async def close(self) -> None:
        await super().close()
        ws = self._ws
        if ws is not None:
            # Not 1000: that ends the session on the platform. 4000 leaves it resumable, so
            # the next process (a restart) gets what arrives meanwhile replayed.
            await ws.close(ZOMBIE_CLOSE_CODE, "shutting down; will resume")

    def give_up(self, code: str, message: str, *, retryable: bool) -> None:
        """Report an error this adapter cannot get past, before returning from :meth:`run`."""
        self.log.error("giving up: {}: {}", code, message)
        self.handle.fatal(code, message, retryable=retryable)

    # -- the loop

    def _resume_stored_session(self) -> None:
        """Resume from the inbox's cursor: the platform replays what a dead process (or the
        previous instance) received but never stored."""
        found = self.inbound.cursor()
        if found is None or self.session.resumable:
            return
        cursor, saved_at = found
        sid, seq = cursor.get("session_id"), cursor.get("seq")
        since = cursor.get(IDENTIFYING)
        if since is not None and saved_at is not None:
            # An earlier process asked for a new session and ended before its id was
            # stored: whatever the platform sent that session cannot be resumed by anyone.
            self.inbound.gap(
                f"a process asked for a new session at {since} and ended before its session "
                "id was stored: events the platform sent that session, if any, will not be "
                "sent again"
            )
            return
        if not isinstance(sid, str) or not (seq is None or isinstance(seq, int)):
            return
        if saved_at is not None:
            age = (datetime.now(UTC) - saved_at).total_seconds()
            if age > self.s.resume_window:
                self.inbound.gap(
                    f"session {sid} stored {age:.0f} s ago is older than resume_window "
                    f"({self.s.resume_window:g} s): events after seq {seq} are not asked for"
                )
                return
        self.session.session_id, self.session.seq = sid, seq
        self.log.info("resuming stored session {} after seq {}", sid, seq)

    async def _mark_identify(self) -> bool:
        """Before an Identify: store that a new session is being asked for, and wait until it
        is stored; True if closing meanwhile.

        The platform names the session only in READY and sends its events right after. A
        process killed before its first commit after READY leaves no trace of the session,
        and nobody can resume it: without this marker, its events would be lost silently.
        With it, the next start finds the marker instead of a session and records the loss
        as an inbound gap. Written once per new session, not once per attempt."""
        if self._identifying or isinstance(self.inbound, LocalInbound):
            return False  # already stored; or run on its own, with nothing stored at all
        self.inbound.note_cursor(
            {"session_id": None, "seq": None, IDENTIFYING: datetime.now(UTC).isoformat()}
        )
        self._identifying = True
        return await self._until(self.inbound.committed())

    def _withdraw_identify(self) -> None:
        """Leaving without a new session (stopped, given up): no session to lose, so the
        marker goes, and the next start records no gap for it."""
        if self._identifying:
            self._identifying = False
            self.inbound.note_cursor({})

    async def _serve(self) -> None:
        self._resume_stored_session()
        try:
            await self._serve_loop()
        finally:
            self._withdraw_identify()

    async def _serve_loop(self) -> None:
        s = self.s
        auth_failures = 0
        while not self.closing():
            if not self.session.resumable and await self._mark_identify():
                break
            outcome = await self._connect_once()
            if self.closing():
                break
            plan = outcome.plan
            if plan.next is Next.GIVE_UP:
                self.give_up(
                    plan.code or "qq_gateway_refused",
                    plan.message or outcome.detail,
                    retryable=False,
                )
                return
            if plan.refresh_token:
                auth_failures += 1
                if auth_failures >= s.auth_failures_max:
                    self.give_up(
                        "qq_invalid_token",
                        f"the platform refused {auth_failures} tokens in a row (4004 or HTTP 401), "
                        "each freshly fetched",
                        retryable=False,
                    )
                    return
                assert self.tokens is not None
                self.tokens.invalidate()
            elif outcome.ready:
                auth_failures = 0
            if plan.clear_session:
                if self.session.resumable:
                    self.inbound.gap(
                        f"the platform refused to resume session {self.session.session_id} "
                        f"after seq {self.session.seq} ({outcome.detail}); events after it "
                        "will not be sent again"
                    )
                self.session.clear()
            delay = self.reconnector.after(plan, outcome.proven_for)
            if delay is None:
                self.give_up(
                    "qq_reconnect_exhausted",
                    f"{self.reconnector.failures} connections in a row failed, showed no proof "
                    f"of life (heartbeat ACK or event), or did not keep proving it for "
                    f"{s.stable_after:g} s; last: {outcome.detail}",
                    retryable=True,
                )
                return
            self.handle.declare(DeclaredState.RECONNECTING)
            if self._held:
                # The inbox was full: what it refused is still with the platform. Connect
                # again (and resume, which replays it) once the inbox takes events again.
                self.log.warning("inbox full: waiting for room before reconnecting")
                if await self._until_room():
                    break
                self._held = False
            self.log.warning(
                "connection ended ({}); {} in {:.1f} s",
                outcome.detail,
                "resuming"
                if plan.next is Next.RESUME and self.session.resumable
                else "identifying",
                delay,
            )
            if await self.pause(delay):
                break
        self.stopped()

    async def _until_room(self) -> bool:
        """Wait for room in the inbox or for :meth:`close`; True if closing."""
        return await self._until(self.inbound.room())

    async def _until(self, event: Awaitable[None]) -> bool:
        """Wait for ``event`` or for :meth:`close`, whichever is first; True if closing."""
        waiting = asyncio.ensure_future(event)
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({waiting, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
            closing.cancel()
        return self.closing()

    async def _connect_once(self) -> Outcome:
        retry = Plan(Next.RESUME, Wait.BACKOFF)  # resumes only if the session still allows it
        assert self.tokens is not None and self.api is not None
        try:
            token = await self.tokens.get()
            url = await self.api.gateway_url()
        except QQAuthError as exc:
            return Outcome(
                Plan(Next.GIVE_UP, code="qq_invalid_credentials", message=str(exc)),
                False,
                None,
                str(exc),
            )
        except QQApiError as exc:
            if exc.status == 401:  # refused although freshly fetched: counts like a 4004
                return Outcome(
                    Plan(Next.RESUME, Wait.BACKOFF, refresh_token=True), False, None, str(exc)
                )
            return Outcome(retry, False, None, str(exc))
        except QQTokenUnavailable as exc:
            return Outcome(retry, False, None, str(exc))
        if self.closing():
            return Outcome(retry, False, None, "closing")
        conn = Connection(self.session, token=token, intents=self.intents, shard=self.s.shard)
        try:
            async with connect(
                url,
                open_timeout=self.s.hello_timeout,
                ping_interval=None,  # the QQ protocol has its own heartbeats
                close_timeout=2,
                max_size=2**22,
                compression=None,
                create_connection=BatchingConnection,
            ) as ws:
                assert isinstance(ws, BatchingConnection)
                self._ws = ws
                try:
                    if self.closing():  # close() came while the handshake was under way
                        await ws.close(ZOMBIE_CLOSE_CODE, "shutting down; will resume")
                        return Outcome(retry, False, None, "closing")
                    return await self._run_connection(ws, conn)
                finally:
                    self._ws = None
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            return Outcome(
                retry, False, None, f"cannot connect to {url}: {describe_exception(exc)}"
            )

    async def _run_connection(self, ws: BatchingConnection, conn: Connection) -> Outcome:
        loop = asyncio.get_running_loop()
        beats: asyncio.Task[Any] | None = None
        hello = False
        ready_at: float | None = None
        proof_at: float | None = None
        end: tuple[Plan, str] | None = None
        try:
            # Hello within hello_timeout, then READY/RESUMED within ready_timeout; then no limit.
            async with asyncio.timeout(self.s.hello_timeout) as handshake:
                while True:
                    # The frames received so far, in one go (at most a slice): one wake-up.
                    batch = await ws.recv_batch(READ_SLICE)
                    end, became_ready, proof = await self._frames(ws, conn, batch)
                    if proof:
                        proof_at = time.monotonic()
                    if not hello and conn.heartbeat_interval is not None:
                        hello = True
                        handshake.reschedule(loop.time() + self.s.ready_timeout)
                    if became_ready:
                        ready_at = time.monotonic()
                        handshake.reschedule(None)
                        if beats is None:  # the first heartbeat went with READY/RESUMED
                            beats = self.tasks.spawn(
                                self._heartbeats(ws, conn), name=f"qq:{self.name}:heartbeat"
                            )
                    if end is not None:
                        break
                    if ready_at is not None and conn.heartbeat_interval is not None:
                        # Read on at the store's pace (a burst); never so long that a
                        # heartbeat's ACK waits unread for an interval.
                        await self.inbound.pace(conn.heartbeat_interval * PACE_SHARE)
        except TimeoutError:
            what = "Hello" if conn.heartbeat_interval is None else "READY/RESUMED"
            end = Plan(Next.RESUME, Wait.BACKOFF), f"no {what} within the time limit"
            await ws.close(ZOMBIE_CLOSE_CODE, "timeout")
        except ConnectionClosed:
            pass
        except QQProtocolError as exc:
            self.log.error("protocol error from the gateway: {}", exc)
            end = plan_after_protocol_error(), f"protocol error: {exc}"
            await ws.close(ZOMBIE_CLOSE_CODE, "protocol error")
        finally:
            if beats is not None:
                beats.cancel()
                await asyncio.wait({beats})
        ready = ready_at is not None
        proven_for = None
        if ready_at is not None and proof_at is not None and proof_at >= ready_at:
            proven_for = proof_at - ready_at
        if end is not None:
            return Outcome(end[0], ready, proven_for, end[1])
        if conn.zombie:
            return Outcome(
                plan_after_zombie(),
                ready,
                proven_for,
                "no heartbeat ACK since the previous heartbeat (zombie)",
            )
        received = ws.protocol.close_rcvd
        code = received.code if received is not None else None
        detail = (
            f"closed by the server with {code} {received.reason!r}"
            if received
            else "connection dropped"
        )
        return Outcome(plan_after_close(code), ready, proven_for, detail)

    async def _frames(
        self, ws: BatchingConnection, conn: Connection, batch: list[Message]
    ) -> tuple[tuple[Plan, str] | None, bool, bool]:
        """Handle the frames of one read, in order: ``((plan, why) if the connection must end,
        whether it became ready, whether any was proof of life)``. The proof is beaten once
        for the read (its frames arrived together)."""
        became_ready = proof = False
        end = None
        for raw in batch:
            seq_before = self.session.seq
            try:
                actions = conn.receive(raw)
            except QQMalformedFrame as exc:
                self.malformed += 1
                self.inbound.lose(f"a malformed frame: {exc}")
                continue
            for action in actions:
                kind = type(action)
                if kind is Dispatch:  # proof of life, as is an ACK (READY/RESUMED is not)
                    proof = True
                    if not self._dispatch(action):  # type: ignore[arg-type]
                        # Not taken: leave it with the platform. The seq stays before it, so
                        # the next Resume replays it; nothing more is read from this connection.
                        self.session.seq = seq_before
                        self._held = True
                        # Dropped, not closed: a closing handshake would wait for a server busy
                        # sending (a replay), and the session stays resumable either way.
                        ws.transport.abort()
                        why = "the gateway's inbox is full: events left with the platform"
                        end = plan_after_backpressure(), why
                        break
                elif kind is Acked:
                    proof = True
                else:
                    end, ready = await self._control(ws, conn, action)
                    became_ready = became_ready or ready
                    if end is not None:
                        break
            if end is not None:
                break
            if self._new_session_noted:
                # Store the new session's id before reading its events: a kill before this
                # commit loses what the platform sends the session (a gap on record, see
                # _mark_identify), and the window is one small commit, not a batch of events.
                self._new_session_noted = False
                if await self._until(self.inbound.committed()):
                    break
        if proof:
            self.handle.beat()
        return end, became_ready, proof

    async def _control(
        self, ws: BatchingConnection, conn: Connection, action: Action
    ) -> tuple[tuple[Plan, str] | None, bool]:
        """Handle an action other than an event or an ACK: ``((plan, why) if the connection
        must end, whether it became ready)``."""
        kind = type(action)
        if kind is Send:
            await ws.send(action.text)  # type: ignore[union-attr]
        elif kind is Hello:
            self.handle.set_heartbeat_ttl(action.interval * self.s.heartbeat_ttl_factor)  # type: ignore[union-attr]
        elif kind is Ready:
            # Declared, but no beat: a zombie server completes the handshake too. Proof
            # comes with the ACK of the heartbeat sent with it (the next action).
            self.handle.declare(DeclaredState.CONNECTED)
            if not action.resumed:  # type: ignore[union-attr]
                # A new session: a later start must not try to resume the old one. It
                # replaces the identify marker, in order with the events that follow.
                self.inbound.note_cursor(self._cursor())
                self._identifying = False
                self._new_session_noted = True
            self.log.info(
                "session {} ({}), heartbeat every {:g} s",
                "resumed" if action.resumed else "ready",  # type: ignore[union-attr]
                self.session.session_id,
                conn.heartbeat_interval or 0,
            )
            return None, True
        elif kind is ReconnectRequested:
            await ws.close(ZOMBIE_CLOSE_CODE, "reconnect requested")
            return (plan_after_reconnect_request(), "the server asked to reconnect (op 7)"), False
        elif kind is SessionInvalid:
            resumable = action.resumable  # type: ignore[union-attr]
            await ws.close(ZOMBIE_CLOSE_CODE, "invalid session")
            why = f"invalid session (op 9, resumable={str(resumable).lower()})"
            return (plan_after_invalid_session(resumable), why), False
        elif kind is Unknown:
            self._ignore(f"op {action.op}", "opcode")  # type: ignore[union-attr]
        return None, False

    def _ignore(self, what: str, kind: str) -> None:
        """Count a frame that is new to us; log it the first time only (a server sending
        one with every event must not flood the log, nor one inventing names fill memory)."""
        key = what[:100]
        if key not in self.unknown and len(self.unknown) >= UNKNOWN_KINDS_MAX:
            key = "(others)"
        seen = self.unknown.get(key, 0)
        self.unknown[key] = seen + 1
        if not seen:
            self.log.warning("ignoring an unknown {} from the gateway: {} (logged once)", kind, key)

    async def _heartbeats(self, ws: BatchingConnection, conn: Connection) -> None:
        """Heartbeats at the Hello interval, owned by one connection (cancelled with it)."""
        assert conn.heartbeat_interval is not None
        try:
            while True:
                await asyncio.sleep(conn.heartbeat_interval)
                beat = conn.heartbeat() if self.zombie_detection else _unchecked(conn)
                if beat is None:
                    self.log.warning(
                        "no heartbeat ACK within {:g} s: zombie connection", conn.heartbeat_interval
                    )
                    await ws.close(ZOMBIE_CLOSE_CODE, "heartbeat not acknowledged")
                    return
                await ws.send(beat.text)
        except ConnectionClosed:
            return  # the receive loop sees the close and decides what comes next

    # -- inbound messages

    def _cursor(self) -> dict[str, Any]:
        return {"session_id": self.session.session_id, "seq": self.session.seq}

    def _dispatch(self, event: Dispatch) -> bool:
        """Hand a message event to the inbox; False if it was refused (inbox full)."""
        if event.t not in events.MESSAGE_EVENTS:
            if event.t not in events.KNOWN_EVENTS:
                self._ignore(event.t, "event type")
            return True
        try:
            message = events.parse_message(self.name, event.t, event.d, event.id)
        except ValueError as exc:
            self.inbound.lose(f"a malformed {event.t} (s={event.s}): {exc}")
            return True
        if self.recent.seen(message.message_id):
            self.duplicates += 1
            return True
        if self.inbound.offer(message, self._cursor()):
            return True
        self.recent.forget(message.message_id)  # it comes again with the replay
        return False

    # -- outbound

    async def send(self, message: OutboundMessage) -> dict[str, Any]:
        """Send a message (a passive reply when ``reply_to`` is set); raises :class:`SendError`,
        :class:`~hermes.errors.AlreadyDelivered` when the platform de-duplicated a retry."""
        if self.api is None:
            raise SendError(f"{self.name}: not running")
        return await self.api.send(message)

    def reply_window(self, chat_kind: str) -> float | None:
        return REPLY_WINDOWS.get(chat_kind)


def _unchecked(conn: Connection) -> Send:
    """A heartbeat regardless of ACKs (zombie detection off)."""
    conn.awaiting_ack = False
    beat = conn.heartbeat()
    assert beat is not None
    return beat
