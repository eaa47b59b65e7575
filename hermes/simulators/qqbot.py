"""A local stand-in for the QQ open platform on 127.0.0.1: token endpoint, REST API, gateway.

It speaks the documented protocol (see the QQ Bot docs: access tokens, ``/gateway``,
opcodes, close codes, message endpoints), records everything the bot sends, validates
what the real platform validates (``Authorization: QQBot {token}``, intents, ``msg_id``
and ``msg_seq`` de-duplication, the passive-reply window) and can be told to misbehave
in every way the adapter must survive. Tests, ``make demo``, benchmarks and
``hermes simulate qqbot`` all use it; nothing leaves the machine.

Two listeners: HTTP (token and REST, on h11) and WebSocket (the gateway, on websockets).

Hostile modes, each a way a gateway can misbehave:

- ``zombie`` (constructor argument, attribute, or :meth:`QQSimulator.go_zombie`): the
  gateway accepts Identify and Resume and answers READY/RESUMED, then never ACKs a
  heartbeat and sends no event (events are kept for a later resume). ``hermes simulate
  qqbot --zombie`` / ``--zombie-after``.
- ``silent_new_connections`` / :meth:`QQSimulator.go_silent`: no Hello, or nothing at all
  on an open connection (half-open).
- ``withhold_acks``: heartbeats unanswered, events still flowing.
- :meth:`QQSimulator.send_op`: any opcode on demand: 7 (reconnect), 9 (invalid session),
  1 (heartbeat request), or one no client knows (99).
- :meth:`QQSimulator.dispatch` with any ``t``: an event type no client knows, in sequence.
- Message text with a lone surrogate goes out as the legal JSON escape ``\\ud800``.
- :meth:`QQSimulator.close` with any close code, :meth:`QQSimulator.drop`,
  :meth:`QQSimulator.refuse_connections`, :meth:`QQSimulator.fail_next` for HTTP endpoints.
- :meth:`QQSimulator.burst` sends thousands of messages as fast as the connection takes
  them, and :meth:`QQSimulator.after_sent` runs a hook (e.g. SIGKILL the bot) after the
  k-th event of a burst: a crash mid-burst, on cue. ``--burst``, ``--kill-pid``,
  ``--kill-after``.

Resume, as the platform documents it and no kinder
(https://bot.q.qq.com/wiki/develop/api-v2/dev-prepare/interface-framework/event-emit.html,
"恢复登录态 Session"): "断开之后短时间内重连会补发中间遗漏的事件" -- a bot that reconnects
within a short time and sends Resume (op 6) with its session id and the last ``s`` it
handled gets every event after that seq, and "所有事件补发完成之后" (once all of them are
sent) "会下发一个 Resumed Event": the missed events first, in order, then RESUMED. So here:

- A session's events are held for replay while a connection is attached, and for
  ``resume_window`` seconds after its last connection closed, however it closed (a TCP
  reset from a killed process included), except that a bot closing with 1000 or 1001
  ends its session (``client_close_ends_session``; the rule of the Discord gateway the QQ
  gateway is modelled on, and the reason the adapter never closes that way to resume).
  The platform publishes no number for "a short time"; the default, 300 s, is a guess
  that covers a crash and a systemd restart (seconds) and a 30 s database outage. A
  gateway must not rely on it: it must handle the refusal below.
- At most ``replay_limit`` events (default 100,000) are held per session; beyond that the
  oldest are dropped, and a Resume from a seq before the oldest one still held is
  refused, because the platform cannot replay what it no longer holds and will not skip it.
- Refusals, from the WebSocket error-code table
  (https://bot.q.qq.com/wiki/develop/api-v2/dev-prepare/error-trace/websocket.html):
  an unknown, ended or expired session id is closed with 4006 ("无效的 session id",
  "无法继续 resume", "请 identify": invalid session id, cannot resume, identify); a seq
  outside what the session holds with 4007 ("seq 错误": wrong seq); a Resume whose fields
  are missing or of the wrong type gets op 9 Invalid Session with ``d`` false (opcode
  table: on Identify or Resume "如果参数有错" -- if a parameter is wrong --
  "服务端会返回该消息"). ``refuse_resume_with="op9"`` answers every refusal with op 9 (``d`` false)
  instead, leaving the connection open: a gateway must handle both.
- Every Resume is recorded in :attr:`QQSimulator.resumes` (outcome, events replayed, and
  for a refusal the seq range the bot will never get), so tests count losses on the
  platform's side, not from the gateway's own tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import h11
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from hermes.simulators.base import Observed, read_request, sigkill

CN = timezone(timedelta(hours=8), "CST")

# Passive-reply windows from the docs: C2C 60 min, group / channel / DM 5 min.
REPLY_WINDOWS = {"c2c": 3600.0, "group": 300.0, "channel": 300.0, "dm": 300.0}
ROUTES = {"users": "c2c", "groups": "group", "channels": "channel", "dms": "dm"}
EVENTS = {
    "c2c": "C2C_MESSAGE_CREATE",
    "group": "GROUP_AT_MESSAGE_CREATE",
    "channel": "AT_MESSAGE_CREATE",
    "dm": "DIRECT_MESSAGE_CREATE",
}
BOT_USER = {"id": "6158788878435714165", "username": "hermes-sim-bot"}
DEFAULT_RESUME_WINDOW = 300.0
"""Seconds a session stays resumable after its last connection closed (see the module
docstring: the platform publishes no number)."""
DEFAULT_REPLAY_LIMIT = 100_000
"""Events held for replay per session."""
RESUME_REFUSALS = ("close", "op9")


@dataclass
class Fault:
    """A scripted answer for one HTTP request: a status with a body, or a dropped connection."""

    status: int = 500
    body: Any = None
    delay: float = 0.0
    drop: bool = False

    def answer(self) -> Any:
        return self.body or {"code": self.status, "message": "scripted failure"}


@dataclass
class SentMessage:
    """A message the bot sent through the REST API, as received."""

    kind: str
    target: str
    body: dict[str, Any]
    headers: dict[str, str]
    status: int
    at: float


@dataclass
class ClientFrame:
    at: float
    op: int
    d: Any


@dataclass
class SimConnection:
    """One bot connection to the simulated gateway."""

    number: int
    ws: ServerConnection
    frames: list[ClientFrame] = field(default_factory=list)
    ready: bool = False
    silent: bool = False
    """Half-open: the server neither sends nor answers anything any more."""
    withhold_acks: bool = False
    zombie: bool = False
    """Handshakes are answered; heartbeats are never ACKed and no event is sent."""
    close_code: int | None = None
    """The code the bot closed with; None until closed (or if it closed without a frame)."""
    closed: bool = False
    session: ServerSession | None = None
    """The session this connection identified or resumed."""


@dataclass
class ServerSession:
    """The platform's side of a session: its seq counter and the events held for Resume."""

    session_id: str
    limit: int = DEFAULT_REPLAY_LIMIT
    seq: int = 0
    """The last ``s`` the platform gave out in this session (events, READY, RESUMED)."""
    buffer: deque[tuple[int, str]] = field(default_factory=deque)
    """(seq, frame) of the events held for replay, in the order they were dispatched."""
    held: int = 0
    """Events ever held: a position in the stream that survives evictions."""
    dropped_through: int = 0
    """Highest seq dropped by the replay limit: a Resume from before it cannot be served."""
    detached_at: float | None = None
    """When the last connection attached to it closed (None while one is attached)."""
    ended: bool = False
    """The bot closed with 1000/1001: the session cannot be resumed."""

    def hold(self, seq: int, frame: str) -> None:
        if len(self.buffer) >= self.limit:
            self.dropped_through = max(self.dropped_through, self.buffer.popleft()[0])
        self.buffer.append((seq, frame))
        self.held += 1

    def events_after(self, seq: int) -> int:
        return sum(1 for s, _ in self.buffer if s > seq)

    def expired(self, now: float, window: float) -> bool:
        return self.detached_at is not None and now - self.detached_at > window


@dataclass
class ResumeAttempt:
    """One Resume (op 6) as the platform saw it."""

    at: float
    connection: int
    session_id: Any
    seq: Any
    outcome: str
    """``resumed``, or why not: ``unknown_session``, ``expired``, ``ended`` (4006),
    ``seq_out_of_range`` (4007), ``malformed`` (op 9), ``auth`` (4004)."""
    replayed: int = 0
    """Events sent before RESUMED."""
    missed: tuple[int, int] | None = None
    """For a refused Resume of a known session: the seqs after ``seq`` the bot will never
    get from it (first, last), when there are any."""
    missed_events: int = 0
    """Events among ``missed`` the platform still held (not counting READY/RESUMED)."""


@dataclass
class BurstReport:
    """What one :meth:`QQSimulator.burst` did."""

    ids: list[str]
    first_seq: int
    last_seq: int
    written: int
    """Events written to a live connection (the rest were only held for replay)."""


@dataclass(frozen=True)
class ReplyCensus:
    """Accepted replies per message, for "every message answered exactly once"."""

    messages: int
    unanswered: list[str]
    """Message ids with no accepted reply, in the order asked."""
    repeated: dict[str, int]
    """Message ids with more than one accepted reply, and how many."""

    @property
    def exactly_once(self) -> bool:
        return not self.unanswered and not self.repeated


class QQSimulator(Observed):
    """See the module docstring. Use as ``async with QQSimulator(...) as sim:``."""

    def __init__(
        self,
        *,
        app_id: str = "102000001",
        client_secret: str = "simulator-secret",
        heartbeat_interval: float = 41.25,
        token_ttl: float = 7200.0,
        allowed_intents: int = (1 << 31) - 1,
        host: str = "127.0.0.1",
        http_port: int = 0,
        ws_port: int = 0,
        reply_windows: dict[str, float] | None = None,
        clock: Callable[[], float] = time.monotonic,
        zombie: bool = False,
        resume_window: float = DEFAULT_RESUME_WINDOW,
        replay_limit: int = DEFAULT_REPLAY_LIMIT,
        refuse_resume_with: str = "close",
        client_close_ends_session: bool = True,
    ) -> None:
        super().__init__()
        if not resume_window >= 0:
            raise ValueError(
                f"QQSimulator: resume_window must be >= 0 seconds, got {resume_window!r}"
            )
        if isinstance(replay_limit, bool) or not isinstance(replay_limit, int) or replay_limit < 1:
            raise ValueError(
                f"QQSimulator: replay_limit must be a whole number >= 1, got {replay_limit!r}"
            )
        if refuse_resume_with not in RESUME_REFUSALS:
            raise ValueError(
                f"QQSimulator: refuse_resume_with must be one of {', '.join(RESUME_REFUSALS)},"
                f" got {refuse_resume_with!r}"
            )
        self.app_id = app_id
        self.client_secret = client_secret
        self.heartbeat_interval = heartbeat_interval
        self.token_ttl = token_ttl
        self.allowed_intents = allowed_intents
        self.host = host
        self.http_port = http_port
        self.ws_port = ws_port
        self.reply_windows = dict(REPLY_WINDOWS, **(reply_windows or {}))
        self.clock = clock
        # What the bot did.
        self.token_requests: list[dict[str, Any]] = []
        self.api_requests: list[tuple[str, str]] = []
        self.sent: list[SentMessage] = []
        self.connections: list[SimConnection] = []
        # Platform state.
        self.tokens: dict[str, float] = {}
        self.session: ServerSession | None = None
        """The newest session: new events go to it."""
        self.sessions: dict[str, ServerSession] = {}
        """Every session ever started, by id (older ones stay resumable within the window)."""
        self.resume_window = resume_window
        self.replay_limit = replay_limit
        self.refuse_resume_with = refuse_resume_with
        """``close`` (4006/4007, as documented) or ``op9`` (op 9, d false, connection left open)."""
        self.client_close_ends_session = client_close_ends_session
        self.resumes: list[ResumeAttempt] = []
        self.bursts: list[BurstReport] = []
        self._burst_ids: set[str] = set()
        """Messages of bursts: their replies are counted (``reply_census``), not narrated."""
        self.replies: dict[str, int] = {}
        """Accepted (HTTP 200) replies per ``msg_id``."""
        self.messages: dict[str, tuple[str, float]] = {}
        """Message ids dispatched to the bot: kind and when (for msg_id and the reply window)."""
        self.used_seqs: set[tuple[str, int]] = set()
        # Scripted behaviour.
        self.faults: dict[str, deque[Fault]] = {
            "token": deque(),
            "gateway": deque(),
            "message": deque(),
        }
        self.delays: dict[str, float] = {"token": 0.0, "gateway": 0.0, "message": 0.0}
        self.reject_tokens = False
        """Close every Identify/Resume with 4004, as for a revoked token."""
        self.reject_rest_tokens = False
        """Answer every REST call with 401, whatever the token."""
        self.silent_new_connections = False
        """Accept connections but never send Hello: a gateway that hangs."""
        self.withhold_acks = False
        self.zombie = zombie
        """New connections are zombies: READY/RESUMED, then no heartbeat ACK and no event."""
        self.handshake_delay = 0.0
        """Seconds the WebSocket opening handshake takes (a slow gateway)."""
        self.handshakes = 0
        self._after_sent: list[tuple[int, Callable[[], object]]] = []
        self._http: asyncio.Server | None = None
        self._ws_server: Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    # -- lifecycle

    async def __aenter__(self) -> QQSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._http = await asyncio.start_server(self._http_client, self.host, self.http_port)
        self.http_port = self._http.sockets[0].getsockname()[1]
        await self.accept_connections()

    async def stop(self) -> None:
        await self.refuse_connections()
        if self._http is not None:
            self._http.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._http.wait_closed()
            self._http = None

    async def refuse_connections(self) -> None:
        """Close the gateway's listener (connections are refused) and drop every connection."""
        if self._ws_server is not None:
            self._ws_server.close()
            await self._ws_server.wait_closed()
            self._ws_server = None

    async def accept_connections(self) -> None:
        """(Re)open the gateway's listener on the same port."""
        if self._ws_server is None:
            self._ws_server = await serve(
                self._gateway_client,
                self.host,
                self.ws_port,
                process_request=self._handshake,
                compression=None,
                max_size=2**22,
                ping_interval=None,
            )
            self.ws_port = self._ws_server.sockets[0].getsockname()[1]

    @property
    def api_base(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def token_url(self) -> str:
        return f"{self.api_base}/app/getAppAccessToken"

    @property
    def gateway_url(self) -> str:
        return f"ws://{self.host}:{self.ws_port}/websocket"

    def adapter_settings(self, **overrides: Any) -> dict[str, Any]:
        """Settings for a ``qqbot`` platform pointed at this simulator (the secret as a value)."""
        return {
            "app_id": self.app_id,
            "api_base": self.api_base,
            "token_url": self.token_url,
            **overrides,
        }

    # -- waiting for the bot

    @property
    def current(self) -> SimConnection | None:
        """The newest connection that is still open."""
        for conn in reversed(self.connections):
            if not conn.closed:
                return conn
        return None

    async def wait_ready(self, timeout: float = 5.0, count: int = 1) -> SimConnection:
        """Wait until ``count`` connections have reached READY/RESUMED; return the newest."""
        await self.wait_until(
            lambda: sum(c.ready for c in self.connections) >= count,
            timeout,
            f"{count} ready connections",
        )
        return [c for c in self.connections if c.ready][-1]

    # -- the gateway (server side)

    async def _handshake(self, ws: ServerConnection, request: Any) -> None:
        self.handshakes += 1
        await self._notify()
        if self.handshake_delay:
            await asyncio.sleep(self.handshake_delay)

    async def _gateway_client(self, ws: ServerConnection) -> None:
        conn = SimConnection(
            len(self.connections) + 1, ws, withhold_acks=self.withhold_acks, zombie=self.zombie
        )
        self.connections.append(conn)
        await self._notify(
            f"connection #{conn.number} opened"
            + (" (silent: no Hello)" if self.silent_new_connections else "")
            + (" (zombie: no ACK, no event)" if conn.zombie else "")
        )
        try:
            if self.silent_new_connections:
                conn.silent = True
                await ws.wait_closed()
                return
            await ws.send(
                json.dumps(
                    {"op": 10, "d": {"heartbeat_interval": int(self.heartbeat_interval * 1000)}}
                )
            )
            async for raw in ws:
                if conn.silent:
                    continue
                await self._client_frame(conn, raw)
        except ConnectionClosed:
            pass
        finally:
            conn.closed = True
            rcvd = ws.protocol.close_rcvd
            conn.close_code = rcvd.code if rcvd is not None else None
            how = (
                f"the bot closed it with {conn.close_code}"
                if rcvd is not None
                else "no close frame from the bot"
            )
            ended = self._detach(conn, bot_closed=bool(ws.protocol.close_rcvd_then_sent))
            if ended:
                how += "; that ends its session"
            await self._notify(f"connection #{conn.number} closed ({how})")

    def _detach(self, conn: SimConnection, *, bot_closed: bool) -> bool:
        """The connection is gone: its session's resume window starts once no other
        connection holds it. Returns whether the bot ended the session by closing it."""
        session = conn.session
        if session is None:
            return False
        ended = (
            bot_closed
            and self.client_close_ends_session
            and conn.close_code in (1000, 1001)
            and not session.ended
        )
        session.ended = session.ended or ended
        if not any(c.session is session and not c.closed for c in self.connections):
            session.detached_at = self.clock()
        return ended

    async def _client_frame(self, conn: SimConnection, raw: str | bytes) -> None:
        try:
            frame = json.loads(raw)
            op = frame["op"]
        except (ValueError, KeyError, TypeError):
            await conn.ws.close(4002, "invalid payload")
            return
        d = frame.get("d")
        conn.frames.append(ClientFrame(self.clock(), op, d))
        await self._notify()
        if op == 1:
            if not (conn.withhold_acks or conn.zombie):
                await conn.ws.send('{"op":11}')
        elif op == 2:
            await self._identify(conn, d)
        elif op == 6:
            await self._resume(conn, d)
        else:
            await conn.ws.close(4001, "invalid opcode")

    def _token_ok(self, auth: Any, *, gateway: bool = False) -> bool:
        rejected = self.reject_tokens if gateway else self.reject_rest_tokens
        if rejected or not isinstance(auth, str) or not auth.startswith("QQBot "):
            return False
        expires = self.tokens.get(auth[6:])
        return expires is not None and expires > self.clock()

    async def _identify(self, conn: SimConnection, d: Any) -> None:
        if not isinstance(d, dict) or not self._token_ok(d.get("token"), gateway=True):
            await conn.ws.close(4004, "authentication failed")
            return
        intents = d.get("intents")
        if not isinstance(intents, int) or intents <= 0:
            await conn.ws.close(4013, "invalid intent")
            return
        if intents & ~self.allowed_intents:
            await conn.ws.close(4014, "intent not permitted")
            return
        shard = d.get("shard", [0, 1])
        if not (isinstance(shard, list) and len(shard) == 2 and 0 <= shard[0] < shard[1]):
            await conn.ws.close(4010, "invalid shard")
            return
        self.session = ServerSession(str(uuid.uuid4()), limit=self.replay_limit)
        self.sessions[self.session.session_id] = self.session
        conn.session = self.session
        self.session.seq += 1
        ready = {
            "op": 0,
            "s": self.session.seq,
            "t": "READY",
            "d": {
                "version": 1,
                "session_id": self.session.session_id,
                "user": dict(BOT_USER, bot=True),
                "shard": shard,
            },
        }
        await conn.ws.send(json.dumps(ready))
        conn.ready = True
        await self._notify(
            f"connection #{conn.number}: Identify -> READY (session {self.session.session_id[:8]})"
        )

    async def _resume(self, conn: SimConnection, d: Any) -> None:
        if not isinstance(d, dict) or not self._token_ok(d.get("token"), gateway=True):
            self.resumes.append(ResumeAttempt(self.clock(), conn.number, None, None, "auth"))
            await conn.ws.close(4004, "authentication failed")
            return
        sid, seq = d.get("session_id"), d.get("seq")
        attempt = ResumeAttempt(self.clock(), conn.number, sid, seq, "resumed")
        self.resumes.append(attempt)
        if not isinstance(sid, str) or isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            # Opcode table: op 9, on Identify or Resume "如果参数有错" (a parameter is wrong).
            attempt.outcome = "malformed"
            await self._refuse(conn, attempt, None, "op9", "malformed Resume")
            return
        session = self.sessions.get(sid)
        # Error-code table: 4006 "无效的 session id" (invalid session id, cannot resume,
        # identify); 4007 "seq 错误" (wrong seq). Both: resume no, identify yes.
        if session is None:
            attempt.outcome = "unknown_session"
            await self._refuse(conn, attempt, None, 4006, "invalid session id, identify")
            return
        now = self.clock()
        if session.ended or session.expired(now, self.resume_window):
            attempt.outcome = "ended" if session.ended else "expired"
            await self._refuse(conn, attempt, session, 4006, "invalid session id, identify")
            return
        if seq > session.seq or seq < session.dropped_through:
            # From the future, or from before the oldest event still held: replaying from
            # there would skip events, so the platform refuses instead.
            attempt.outcome = "seq_out_of_range"
            await self._refuse(conn, attempt, session, 4007, "invalid seq")
            return
        conn.session = session
        session.detached_at = None
        if conn.zombie:
            # Nothing replayed, and a RESUMED that does not move the bot's seq past what it
            # missed: a later, healthy resume still gets every event.
            conn.ready = True
            await conn.ws.send(json.dumps({"op": 0, "s": seq, "t": "RESUMED", "d": ""}))
        else:
            replayed = await self._replay(conn, session, seq)
            if replayed is None:
                attempt.outcome = "seq_out_of_range"
                await conn.ws.close(4007, "invalid seq")
                return
            attempt.replayed = replayed
            session.seq += 1
            # Ready before the RESUMED frame is written (send() writes it before it can
            # yield): an event dispatched from now on follows RESUMED on this connection.
            conn.ready = True
            await conn.ws.send(json.dumps({"op": 0, "s": session.seq, "t": "RESUMED", "d": ""}))
        await self._notify(
            f"connection #{conn.number}: Resume from seq {seq} -> replayed"
            f" {attempt.replayed} events, RESUMED"
        )

    async def _replay(self, conn: SimConnection, session: ServerSession, seq: int) -> int | None:
        """Send every held event after ``seq``, including those dispatched meanwhile (the
        connection is not ready yet, so :meth:`dispatch` only holds them). None if the
        replay limit dropped some of them before they could be sent."""
        frames = [frame for s, frame in session.buffer if s > seq]
        sent = 0
        while True:
            mark = session.held
            for frame in frames:
                await conn.ws.send(frame)
            sent += len(frames)
            new = session.held - mark
            if new == 0:
                return sent
            if new > len(session.buffer):
                return None
            frames = [frame for _, frame in list(session.buffer)[-new:]]

    async def _refuse(
        self,
        conn: SimConnection,
        attempt: ResumeAttempt,
        session: ServerSession | None,
        code: int | str,
        reason: str,
    ) -> None:
        seq = attempt.seq
        if session is not None and isinstance(seq, int) and session.seq > seq:
            attempt.missed = (seq + 1, session.seq)
            attempt.missed_events = session.events_after(seq)
        how = "op 9" if code == "op9" or self.refuse_resume_with == "op9" else f"close {code}"
        sid = attempt.session_id
        what = f"session {sid[:8]}" if isinstance(sid, str) else "a session"
        await self._notify(
            f"connection #{conn.number}: Resume of {what} from seq {seq} refused"
            f" ({attempt.outcome.replace('_', ' ')}) -> {how}"
            + (
                f"; seqs {attempt.missed[0]}..{attempt.missed[1]} ({attempt.missed_events}"
                " events) will not be replayed"
                if attempt.missed
                else ""
            )
        )
        if how == "op 9":
            # The connection stays open: closing it is the bot's move.
            await conn.ws.send('{"op":9,"d":false}')
        else:
            assert isinstance(code, int)
            await conn.ws.close(code, reason)

    # -- scripting the gateway

    async def dispatch(
        self, t: str, d: Any, *, event_id: str | None = None, seq: int | None = None
    ) -> int:
        """Send an event in the current session (held for replay in any case).

        ``seq`` forces a sequence number (duplicates, out of order); by default the next one.
        """
        seq, _ = await self._dispatch(t, d, event_id, seq)
        return seq

    async def _dispatch(
        self, t: str, d: Any, event_id: str | None, seq: int | None
    ) -> tuple[int, bool]:
        """The seq, and whether the event was written to a live connection."""
        session = self.session
        if session is None:
            raise RuntimeError("no session: the bot has not identified")
        if seq is None:
            session.seq += 1
            seq = session.seq
        session.seq = max(session.seq, seq)
        payload = {"op": 0, "s": seq, "t": t, "id": event_id or f"{t}:{uuid.uuid4().hex}", "d": d}
        text = json.dumps(payload, ensure_ascii=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: only its JSON escape can go on the wire
            text = json.dumps(payload)
        session.hold(seq, text)
        conn = self.current
        if (
            conn is None
            or conn.session is not session
            or not conn.ready
            or conn.silent
            or conn.zombie
        ):
            return seq, False
        try:
            await conn.ws.send(text)
        except ConnectionClosed:
            return seq, False
        return seq, True

    # -- bursts

    def after_sent(self, k: int, callback: Callable[[], object]) -> None:
        """Call ``callback`` (a function, or a coroutine function) once the next
        :meth:`burst` has dispatched its ``k``-th event, before the next one: e.g. SIGKILL
        the bot mid-burst. The burst goes on after it returns."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"after_sent: k must be a whole number >= 1, got {k!r}")
        self._after_sent.append((k, callback))

    async def burst(
        self,
        n: int,
        *,
        kind: str = "group",
        chats: Iterable[str] | None = None,
        text: str = "burst",
        author: str = "user-1",
    ) -> list[str]:
        """Dispatch ``n`` message events of ``kind`` as fast as the connection takes them
        (held for replay, and only held when no connection is up), to ``chats`` in turn;
        returns their message ids in order. Hooks armed by :meth:`after_sent` fire here."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"burst: n must be a whole number >= 0, got {n!r}")
        if kind not in EVENTS:
            raise ValueError(f"burst: kind must be one of {', '.join(EVENTS)}, got {kind!r}")
        targets = list(chats) if chats is not None else ["chat-1"]
        if not targets:
            raise ValueError("burst: chats must name at least one chat")
        if self.session is None:
            raise RuntimeError("no session: the bot has not identified")
        hooks = sorted(self._after_sent, key=lambda hook: hook[0])
        if hooks and hooks[-1][0] > n:
            raise ValueError(f"burst: a hook waits for event {hooks[-1][0]} of a burst of {n}")
        self._after_sent.clear()
        event = EVENTS[kind]
        ids: list[str] = []
        written = 0
        first_seq = last_seq = self.session.seq
        for i in range(1, n + 1):
            d = self.message_payload(
                kind, f"{text} #{i}", author=author, chat=targets[(i - 1) % len(targets)]
            )
            self.messages[d["id"]] = (kind, self.clock())
            self._burst_ids.add(d["id"])
            last_seq, on_wire = await self._dispatch(event, d, None, None)
            if i == 1:
                first_seq = last_seq
            written += on_wire
            ids.append(d["id"])
            while hooks and hooks[0][0] == i:
                result = hooks.pop(0)[1]()
                if inspect.isawaitable(result):
                    await result
            if i % 256 == 0:
                # Let the HTTP side (the bot's replies) and the connections' readers run.
                await asyncio.sleep(0)
        self.bursts.append(BurstReport(ids, first_seq, last_seq, written))
        await self._notify()
        return ids

    def message_payload(
        self,
        kind: str,
        text: str,
        *,
        message_id: str | None = None,
        author: str = "user-1",
        chat: str = "chat-1",
    ) -> dict[str, Any]:
        """A realistic ``d`` for a message event of ``kind`` (c2c, group, channel, dm)."""
        mid = message_id or f"ROBOT1.0_{secrets.token_urlsafe(24)}"
        now = datetime.now(CN).isoformat(timespec="seconds")
        if kind == "c2c":
            return {
                "id": mid,
                "content": text,
                "timestamp": now,
                "author": {"id": author, "user_openid": author, "union_openid": author},
            }
        if kind == "group":
            return {
                "id": mid,
                "content": " " + text,
                "timestamp": now,
                "group_openid": chat,
                "author": {"id": author, "member_openid": author, "union_openid": author},
            }
        guild = {
            "id": author,
            "username": f"name-{author}",
            "bot": False,
            "avatar": "http://thirdqq.qlogo.cn/0",
        }
        d = {
            "id": mid,
            "content": text,
            "timestamp": now,
            "channel_id": chat if kind == "channel" else "dm-channel",
            "guild_id": chat if kind == "dm" else "guild-1",
            "author": guild,
            "member": {"joined_at": now, "roles": ["1"]},
            "seq": 1,
            "seq_in_channel": "1",
        }
        if kind == "dm":
            d.update(direct_message=True, src_guild_id="guild-src")
        return d

    async def send_message(self, kind: str, text: str, **kw: Any) -> str:
        """Dispatch a message event; returns its message id (valid for replies)."""
        d = self.message_payload(kind, text, **kw)
        self.messages[d["id"]] = (kind, self.clock())
        await self.dispatch(EVENTS[kind], d)
        return str(d["id"])

    async def send_op(self, op: int, d: Any = None) -> None:
        """Send a bare opcode on the current connection (1 heartbeat request, 7 reconnect,
        9 invalid session with ``d`` true if resumable, or one no client knows, such as 99)."""
        conn = self._require_current()
        await conn.ws.send(json.dumps({"op": op, "d": d}))

    async def close(self, code: int, reason: str = "") -> None:
        """Close the current connection with a close frame."""
        await self._require_current().ws.close(code, reason)

    def drop(self) -> None:
        """Abort the current connection's TCP connection: no close frame."""
        self._require_current().ws.transport.abort()

    def go_silent(self) -> None:
        """Make the current connection half-open: the socket stays up, nothing flows."""
        conn = self._require_current()
        conn.silent = True

    def go_zombie(self) -> None:
        """Turn zombie: the current connection (if any) and every new one stop ACKing
        heartbeats and sending events, while handshakes are still answered."""
        self.zombie = True
        if self.current is not None:
            self.current.zombie = True

    def _require_current(self) -> SimConnection:
        conn = self.current
        if conn is None:
            raise RuntimeError("no open connection")
        return conn

    def fail_next(
        self,
        endpoint: str,
        count: int = 1,
        *,
        status: int = 500,
        body: Any = None,
        delay: float = 0.0,
        drop: bool = False,
    ) -> None:
        """Make the next ``count`` requests to ``endpoint`` (token, gateway, message) fail."""
        for _ in range(count):
            self.faults[endpoint].append(Fault(status, body, delay, drop))

    def rate_limit(self, count: int = 1, *, http_429: bool = True) -> None:
        """The next ``count`` message sends are rate limited: HTTP 429, or the platform's code 22009."""
        body = {
            "message": "msg limit exceed",
            "code": 22009,
            "err_code": 22009,
            "trace_id": uuid.uuid4().hex,
        }
        self.fail_next("message", count, status=429 if http_429 else 400, body=body)

    # -- the HTTP side

    async def _http_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await read_request(conn, reader)
                if request is None:
                    return
                status, payload, keep = await self._route(request, body)
                if status < 0:  # scripted: drop the connection
                    return
                data = json.dumps(payload, ensure_ascii=False).encode()
                headers = [
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(data))),
                    ("X-Tps-trace-ID", uuid.uuid4().hex),
                ]
                writer.write(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
                writer.write(conn.send(h11.Data(data=data)) or b"")
                writer.write(conn.send(h11.EndOfMessage()) or b"")
                await writer.drain()
                if not keep or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.RemoteProtocolError, asyncio.IncompleteReadError):
            return
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _route(self, request: h11.Request, raw: bytes) -> tuple[int, Any, bool]:
        method = request.method.decode()
        path = request.target.decode().split("?")[0]
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        self.api_requests.append((method, path))
        if method == "POST" and path == "/app/getAppAccessToken":
            endpoint = "token"
        elif method == "GET" and path in ("/gateway", "/gateway/bot", "/users/@me"):
            endpoint = "gateway"
        elif method == "POST" and path.endswith("/messages"):
            endpoint = "message"
        else:
            return 404, {"code": 404, "message": f"no route {method} {path}"}, True
        if self.delays[endpoint]:
            await asyncio.sleep(self.delays[endpoint])
        fault = self.faults[endpoint].popleft() if self.faults[endpoint] else None
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.drop:
                return -1, None, False
        if fault is not None and endpoint != "message":
            return fault.status, fault.answer(), True
        if endpoint == "token":
            return self._token(headers, raw)
        if not self._token_ok(headers.get("authorization")):
            return (
                401,
                {
                    "message": "Token错误",
                    "code": 11243,
                    "err_code": 40012002,
                    "trace_id": uuid.uuid4().hex,
                },
                True,
            )
        if endpoint == "gateway":
            if path == "/gateway":
                return 200, {"url": self.gateway_url}, True
            if path == "/users/@me":  # the official SDK asks at login
                return (
                    200,
                    {
                        "id": BOT_USER["id"],
                        "username": BOT_USER["username"],
                        "avatar": "",
                        "bot": True,
                    },
                    True,
                )
            limit = {
                "total": 1500,
                "remaining": 1500,
                "reset_after": 86_400_000,
                "max_concurrency": 1,
            }
            return 200, {"url": self.gateway_url, "shards": 1, "session_start_limit": limit}, True
        recorded = len(self.sent)
        answer = self._message(path, headers, raw, fault)
        event = None
        if len(self.sent) > recorded and self.sent[-1].body.get("msg_id") not in self._burst_ids:
            sent = self.sent[-1]
            event = f"message to {sent.kind} {sent.target}: {sent.body.get('content')!r} -> HTTP {sent.status}"
        await self._notify(event)
        return answer

    def _token(self, headers: dict[str, str], raw: bytes) -> tuple[int, Any, bool]:
        try:
            body = (
                json.loads(raw)
                if headers.get("content-type", "").startswith("application/json")
                else None
            )
        except ValueError:
            body = None
        self.token_requests.append(body if isinstance(body, dict) else {})
        if not isinstance(body, dict):
            return 200, {"code": 100007, "message": "appid invalid"}, True
        if body.get("appId") != self.app_id or body.get("clientSecret") != self.client_secret:
            return 200, {"code": 100016, "message": "invalid appid or secret"}, True
        now = self.clock()
        # The platform hands out a new token only in the last 60 s of the current one.
        for token, expires in self.tokens.items():
            if expires - now > 60:
                return 200, {"access_token": token, "expires_in": str(int(expires - now))}, True
        token = secrets.token_urlsafe(32)
        self.tokens[token] = now + self.token_ttl
        return 200, {"access_token": token, "expires_in": str(int(self.token_ttl))}, True

    def _message(
        self, path: str, headers: dict[str, str], raw: bytes, fault: Fault | None
    ) -> tuple[int, Any, bool]:
        parts = path.strip("/").split("/")
        if parts[0] == "v2" and len(parts) == 4 and parts[1] in ("users", "groups"):
            kind, target = ROUTES[parts[1]], parts[2]
        elif len(parts) == 3 and parts[0] in ("channels", "dms"):
            kind, target = ROUTES[parts[0]], parts[1]
        else:
            return 404, {"code": 404, "message": f"no route {path}"}, True
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if fault is not None:
            status, answer = fault.status, fault.answer()
        else:
            status, answer = self._check_message(kind, body)
        self.sent.append(
            SentMessage(
                kind, target, body if isinstance(body, dict) else {}, headers, status, self.clock()
            )
        )
        if status == 200 and isinstance(body, dict) and isinstance(body.get("msg_id"), str):
            self.replies[body["msg_id"]] = self.replies.get(body["msg_id"], 0) + 1
        return status, answer, True

    def _check_message(self, kind: str, body: Any) -> tuple[int, Any]:
        trace = uuid.uuid4().hex

        def error(code: int, message: str, status: int = 400) -> tuple[int, Any]:
            return status, {"message": message, "code": code, "err_code": code, "trace_id": trace}

        if not isinstance(body, dict):
            return error(40034001, "request body is not a JSON object")
        v2 = kind in ("c2c", "group")
        if v2 and not isinstance(body.get("msg_type"), int):
            return error(40034002, "msg_type is required")
        content = body.get("content")
        if (kind == "group" or not v2) and not (isinstance(content, str) and content):
            return error(40034003, "content is required")
        msg_id = body.get("msg_id")
        if msg_id is not None:
            known = self.messages.get(msg_id)
            if known is None:
                return error(40034004, "msg_id is invalid")
            if self.clock() - known[1] > self.reply_windows[kind]:
                return error(40034005, "回复消息已过期")
            if v2:
                seq = body.get("msg_seq", 1)
                if (msg_id, seq) in self.used_seqs:
                    return error(40054005, "消息被去重，请检查请求msgseq")
                self.used_seqs.add((msg_id, seq))
        sent_id = f"SIM_{uuid.uuid4().hex}"
        now = datetime.now(UTC).astimezone(CN).isoformat(timespec="seconds")
        if v2:
            return 200, {"id": sent_id, "timestamp": now}
        return 200, {
            "id": sent_id,
            "content": content,
            "timestamp": now,
            "author": {"id": BOT_USER["id"], "bot": True},
        }

    # -- inspection helpers

    def replies_to(self, message_id: str) -> list[SentMessage]:
        return [m for m in self.sent if m.body.get("msg_id") == message_id and m.status == 200]

    def reply_count(self, message_id: str) -> int:
        """Replies the platform accepted (HTTP 200) for ``message_id``."""
        return self.replies.get(message_id, 0)

    def reply_census(self, message_ids: Iterable[str]) -> ReplyCensus:
        """Which of ``message_ids`` got no accepted reply, and which more than one (one
        dictionary lookup each: instant for tens of thousands)."""
        unanswered: list[str] = []
        repeated: dict[str, int] = {}
        count = 0
        for mid in message_ids:
            count += 1
            n = self.replies.get(mid, 0)
            if n == 0:
                unanswered.append(mid)
            elif n > 1:
                repeated[mid] = n
        return ReplyCensus(count, unanswered, repeated)


# -- ``hermes simulate qqbot``


@dataclass
class Script:
    """What ``hermes simulate qqbot`` does on its own, for trying a configuration."""

    message_every: float = 0.0
    message_kind: str = "c2c"
    messages: int = 0
    """Stop after this many messages (0: no limit)."""
    silent_after: float = 0.0
    """Go half-open (and keep new connections silent) this long after the first READY."""
    refuse_after: float = 0.0
    """Refuse connections this long after the first READY."""
    zombie_after: float = 0.0
    """Turn zombie (READY/RESUMED, then no ACK, no event) this long after the first READY."""
    burst: int = 0
    """Send this many group messages at once after the first READY."""
    kill_pid: int = 0
    """SIGKILL this process after the ``kill_after``-th event of the burst."""
    kill_pid_file: str = ""
    """... or the process whose pid this file holds, read when the kill is due (a bot
    started after the simulator, as in ``make demo``)."""
    kill_after: int = 0
    census_within: float = 120.0
    """After a burst, wait this long at most for every message of it to be answered, then
    report how many were answered once, never, or more than once."""

    def problems(self) -> list[str]:
        """What is inconsistent, as command-line options."""
        found = []
        victim = "--kill-pid-file" if self.kill_pid_file else "--kill-pid"
        if self.kill_pid and self.kill_pid_file:
            found.append("--kill-pid and --kill-pid-file exclude each other")
        elif (self.kill_pid or self.kill_pid_file or self.kill_after) and not (
            (self.kill_pid or self.kill_pid_file) and self.kill_after
        ):
            found.append(f"{victim} and --kill-after go together")
        if (self.kill_pid or self.kill_pid_file) and not self.burst:
            found.append(f"{victim} needs --burst: the process is killed mid-burst")
        elif self.kill_after > self.burst > 0:
            found.append(
                f"--kill-after {self.kill_after} is beyond the burst of {self.burst} messages"
            )
        return found


async def run_burst(sim: QQSimulator, script: Script, say: Callable[[str], None]) -> None:
    """The scripted burst, and the kill in its middle."""
    k = script.kill_after
    if script.kill_pid or script.kill_pid_file:

        def kill() -> None:
            session = sim.session
            seq = session.seq if session is not None else 0
            say(
                f"burst: event {k} sent (seq {seq}); {sigkill(script.kill_pid, script.kill_pid_file)}"
            )

        sim.after_sent(k, kill)
    say(f"burst: sending {script.burst} group messages")
    await sim.burst(script.burst, kind="group")
    report = sim.bursts[-1]
    say(
        f"burst: {len(report.ids)} group messages sent, seqs {report.first_seq}..{report.last_seq}:"
        f" {report.written} written to a connection, {len(report.ids) - report.written}"
        " held for replay only"
    )
    started = asyncio.get_running_loop().time()
    answered = 0

    def all_answered() -> bool:
        nonlocal answered  # replies come mostly in order: one pass over the ids in all
        while answered < len(report.ids) and sim.replies.get(report.ids[answered]):
            answered += 1
        return answered == len(report.ids)

    with contextlib.suppress(AssertionError):
        await sim.wait_until(all_answered, script.census_within, "every burst message answered")
    census = sim.reply_census(report.ids)
    took = asyncio.get_running_loop().time() - started
    say(
        f"burst: census after {took:.1f} s: {census.messages - len(census.unanswered) - len(census.repeated)}"
        f" answered exactly once, {len(census.unanswered)} unanswered,"
        f" {len(census.repeated)} answered more than once"
    )


async def run_script(sim: QQSimulator, script: Script, say: Callable[[str], None]) -> None:
    """Drive the simulator per ``script`` until cancelled."""
    await sim.wait_until(lambda: any(c.ready for c in sim.connections), float("inf"), "a bot")
    if script.burst:
        await run_burst(sim, script, say)
    loop = asyncio.get_running_loop()
    started = loop.time()
    sent = 0
    silent = refused = zombie = False
    while True:
        now = loop.time() - started
        if script.zombie_after and not zombie and now >= script.zombie_after:
            zombie = True
            sim.go_zombie()
            say("turning zombie: handshakes answered, heartbeats never ACKed, no events sent")
        if script.silent_after and not silent and now >= script.silent_after:
            silent = True
            sim.silent_new_connections = True
            if sim.current is not None:
                sim.go_silent()
            say(
                "going silent: the connection stays open, nothing flows (new connections get no Hello)"
            )
        if script.refuse_after and not refused and now >= script.refuse_after:
            refused = True
            say("refusing connections")
            await sim.refuse_connections()
        conn = sim.current
        due = script.message_every and (not script.messages or sent < script.messages)
        if due and not silent and not sim.zombie and conn is not None and conn.ready:
            sent += 1
            mid = await sim.send_message(script.message_kind, f"hello #{sent} from the simulator")
            say(f"sent {script.message_kind} message #{sent} ({mid[:24]}...)")
        await asyncio.sleep(script.message_every or 0.5)


def config_snippet(sim: QQSimulator, platform: str = "qq-sim") -> str:
    return (
        f"[platforms.{platform}]\n"
        f'adapter = "qqbot"\n'
        f'app_id = "{sim.app_id}"\n'
        f'client_secret = "env:QQ_SIM_SECRET"     # export QQ_SIM_SECRET={sim.client_secret}\n'
        f'api_base = "{sim.api_base}"\n'
        f'token_url = "{sim.token_url}"\n'
        f'handler = "echo"\n'
    )


# -- floods, for benchmarks


def ws_text_frame(payload: bytes) -> bytes:
    """One unmasked server-to-client text frame (RFC 6455)."""
    n = len(payload)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 65536:
        header = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return header + payload


def prepare_flood(
    sim: QQSimulator, kind: str, count: int, text: str = "flood"
) -> tuple[bytes, list[str]]:
    """``count`` message events of ``kind`` as ready-to-write WebSocket frames, in the current
    session (their seqs reserved); returns the bytes and the message ids."""
    session = sim.session
    if session is None:
        raise RuntimeError("no session: the bot has not identified")
    event = EVENTS[kind]
    frames = []
    ids = []
    now = sim.clock()
    for i in range(count):
        d = sim.message_payload(kind, f"{text} {i}", message_id=f"FLOOD_{session.seq + 1}_{i}")
        session.seq += 1
        payload = json.dumps(
            {"op": 0, "s": session.seq, "t": event, "id": f"{event}:{i}", "d": d},
            ensure_ascii=False,
        )
        session.hold(session.seq, payload)  # the platform would replay it on Resume
        frames.append(ws_text_frame(payload.encode("utf-8")))
        sim.messages[d["id"]] = (kind, now)
        ids.append(d["id"])
    return b"".join(frames), ids


def write_raw(sim: QQSimulator, data: bytes) -> None:
    """Write pre-encoded frames to the current connection in one go."""
    conn = sim.current
    if conn is None:
        raise RuntimeError("no open connection")
    conn.ws.transport.write(data)
