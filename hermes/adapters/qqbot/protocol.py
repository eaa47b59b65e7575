"""The QQ Bot gateway protocol, without I/O.

Frames in, actions out: :class:`Connection` is the state machine of one WebSocket
connection (Hello, Identify or Resume, READY/RESUMED, dispatches, heartbeats and
their ACKs); :class:`Session` is what survives reconnects (session id, last seq);
:func:`plan_after` decides, for every way a connection can end, whether to resume,
identify again, wait, or give up; :class:`Reconnector` turns that into delays and
notices a reconnect storm. The adapter's driver only moves bytes and sleeps.

Payload envelope: ``{"op": int, "d": any, "s": int, "t": str, "id": str}``.

Proof of life, as the README and the watchdog define it, is a heartbeat ACK (op 11) or a
dispatched event (op 0 other than READY/RESUMED): :class:`Acked` and :class:`Dispatch`.
A completed handshake (:class:`Ready`) is not: a zombie server completes it too.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any

import orjson

from hermes.errors import QQMalformedFrame, QQProtocolError


class Op(IntEnum):
    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    RESUME = 6
    RECONNECT = 7
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11
    HTTP_CALLBACK_ACK = 12


ZOMBIE_CLOSE_CODE = 4000
"""Our close code for a connection whose heartbeats went unacknowledged. Anything but
1000, which would end the session on the server and make a resume impossible."""


# -- frames


@dataclass(frozen=True, slots=True)
class Frame:
    op: int
    d: Any
    s: int | None
    t: str | None
    id: str | None


Payload = str | bytes | bytearray | memoryview
"""One frame's payload: text, or its UTF-8 undecoded (checked as it is parsed)."""


def decode(raw: Payload) -> Frame:
    """Parse one payload; :class:`QQMalformedFrame` says what is wrong with it."""
    return _frame(_load(raw))


def _load(raw: Payload) -> Any:
    try:
        return orjson.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        # orjson is stricter than JSON (RFC 8259): it refuses an escaped lone surrogate
        # ("\ud800"), which is legal JSON and which anyone can type into a message. The
        # standard library parses what JSON allows; only what it refuses too is malformed.
        try:
            text = raw if isinstance(raw, str) else bytes(raw).decode("utf-8")  # UTF-8 only
            obj = json.loads(text, parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise QQMalformedFrame(f"frame is not JSON: {exc}") from None
        return _without_surrogates(obj)


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON, although the standard library accepts them by default.
    raise ValueError(f"{name} is not JSON")


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"
"""What a lone surrogate becomes: U+FFFD, as any UTF-8 decoder does with bytes it cannot
decode. A surrogate pair is one character once parsed, so any surrogate left is lone; left
in, it would make every UTF-8 encoder downstream (database, logs, JSON to handlers) raise."""


def _without_surrogates(obj: Any) -> Any:
    """``obj`` with every lone surrogate, in keys and values, replaced by U+FFFD."""
    if isinstance(obj, str):
        return _LONE_SURROGATE.sub(REPLACEMENT, obj)
    if isinstance(obj, list):
        return [_without_surrogates(v) for v in obj]
    if isinstance(obj, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in obj.items()}
    return obj


def _frame(obj: Any) -> Frame:
    if not isinstance(obj, dict):
        raise QQMalformedFrame(f"frame is not a JSON object: {type(obj).__name__}")
    op = obj.get("op")
    if type(op) is not int:
        raise QQMalformedFrame(f"frame has no integer 'op': {op!r}")
    s = obj.get("s")
    if s is not None and type(s) is not int:
        raise QQMalformedFrame(f"frame 's' is not an integer: {s!r}")
    t = obj.get("t")
    if t is not None and not isinstance(t, str):
        raise QQMalformedFrame(f"frame 't' is not a string: {t!r}")
    fid = obj.get("id")
    return Frame(op, obj.get("d"), s, t, fid if isinstance(fid, str) else None)


def encode(op: Op, d: Any) -> str:
    return json.dumps({"op": int(op), "d": d}, separators=(",", ":"), ensure_ascii=False)


# -- what survives reconnects


class Session:
    """The resume state: session id from READY and the highest ``s`` seen (never decreases)."""

    __slots__ = ("seq", "session_id")

    def __init__(self) -> None:
        self.session_id: str | None = None
        self.seq: int | None = None

    def observe(self, s: int) -> None:
        if self.seq is None or s > self.seq:
            self.seq = s

    def clear(self) -> None:
        self.session_id = None
        self.seq = None

    @property
    def resumable(self) -> bool:
        return self.session_id is not None


# -- one connection


@dataclass(frozen=True, slots=True)
class Send:
    text: str


@dataclass(frozen=True, slots=True)
class Hello:
    interval: float
    """Seconds between heartbeats, from the server."""


@dataclass(frozen=True, slots=True)
class Ready:
    resumed: bool
    user: dict[str, Any]


@dataclass(slots=True)  # not frozen: built once per event, and frozen dataclasses are slow to build
class Dispatch:
    t: str
    d: Any
    s: int | None
    id: str | None


@dataclass(frozen=True, slots=True)
class Acked:
    """A heartbeat ACK arrived: the connection is proven alive."""


@dataclass(frozen=True, slots=True)
class ReconnectRequested:
    """op 7: the server asks us to reconnect and resume."""


@dataclass(frozen=True, slots=True)
class SessionInvalid:
    """op 9; ``resumable`` is its ``d``."""

    resumable: bool


@dataclass(frozen=True, slots=True)
class Unknown:
    """An opcode this client does not handle: ignored, the protocol grows. Not proof of life."""

    op: int


Action = Send | Hello | Ready | Dispatch | Acked | ReconnectRequested | SessionInvalid | Unknown
ACKED = Acked()
PROPERTIES = {"$os": "linux", "$browser": "hermes", "$device": "hermes"}
"""The client description sent with Identify."""


class Connection:
    """One WebSocket connection's protocol state."""

    def __init__(
        self,
        session: Session,
        *,
        token: str,
        intents: int,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        self.session = session
        self.token = token
        self.intents = int(intents)
        self.shard = shard
        self.heartbeat_interval: float | None = None
        """From Hello; set once, so a second Hello is a protocol error."""
        self.resuming = False
        """True once a Resume (not an Identify) was sent on this connection."""
        self.awaiting_ack = False
        self.zombie = False

    def receive(self, raw: Payload) -> list[Action]:
        # The hot path: a dispatched event (nearly every frame), checked as _frame() would,
        # without building a Frame first; anything else is parsed once and goes through it.
        obj = _load(raw)
        if type(obj) is dict and obj.get("op") == 0 and type(obj.get("op")) is int:
            t = obj.get("t")
            s = obj.get("s")
            if type(t) is str and t not in ("READY", "RESUMED") and (s is None or type(s) is int):
                if s is not None:
                    seq = self.session.seq
                    if seq is None or s > seq:
                        self.session.seq = s
                fid = obj.get("id")
                return [Dispatch(t, obj.get("d"), s, fid if type(fid) is str else None)]
        frame = _frame(obj)
        op = frame.op
        if op == Op.DISPATCH:
            return self._dispatch(frame)
        if op == Op.HEARTBEAT_ACK:
            self.awaiting_ack = False
            return [ACKED]
        if op == Op.HELLO:
            return self._hello(frame)
        if op == Op.HEARTBEAT:
            # The server wants a heartbeat now; answer at once, with the last seq.
            return [Send(encode(Op.HEARTBEAT, self.session.seq))]
        if op == Op.RECONNECT:
            return [ReconnectRequested()]
        if op == Op.INVALID_SESSION:
            return [SessionInvalid(frame.d is True)]
        if op == Op.HTTP_CALLBACK_ACK:
            return []
        # Anything else (99, or 2 and 6, which only clients send) is logged once by the
        # driver and ignored: ending the connection would not make the server any wiser.
        return [Unknown(op)]

    def _hello(self, frame: Frame) -> list[Action]:
        if self.heartbeat_interval is not None:
            raise QQProtocolError("second Hello on one connection")
        d = frame.d if isinstance(frame.d, dict) else {}
        interval = d.get("heartbeat_interval")
        if not isinstance(interval, int | float) or isinstance(interval, bool) or interval <= 0:
            raise QQProtocolError(f"Hello without a positive heartbeat_interval: {frame.d!r}")
        self.heartbeat_interval = interval / 1000
        auth = f"QQBot {self.token}"
        session = self.session
        if session.resumable:
            self.resuming = True
            resume = {"token": auth, "session_id": session.session_id, "seq": session.seq or 0}
            return [Hello(self.heartbeat_interval), Send(encode(Op.RESUME, resume))]
        payload = {
            "token": auth,
            "intents": self.intents,
            "shard": list(self.shard),
            "properties": PROPERTIES,
        }
        return [Hello(self.heartbeat_interval), Send(encode(Op.IDENTIFY, payload))]

    def _dispatch(self, frame: Frame) -> list[Action]:
        if frame.s is not None:
            self.session.observe(frame.s)
        t = frame.t
        if t == "READY":
            d = frame.d if isinstance(frame.d, dict) else None
            sid = d.get("session_id") if d else None
            if not isinstance(sid, str) or not sid:
                raise QQProtocolError(f"READY without a session_id: {frame.d!r}")
            self.session.session_id = sid
            user = d.get("user") if d else None
            return self._ready(Ready(False, user if isinstance(user, dict) else {}))
        if t == "RESUMED":
            return self._ready(Ready(True, {}))
        if t is None:
            raise QQProtocolError("dispatch without an event type 't'")
        return [Dispatch(t, frame.d, frame.s, frame.id)]

    def _ready(self, ready: Ready) -> list[Action]:
        # The first heartbeat goes at once, as the official SDK sends it: its ACK is the
        # connection's first proof of life, one round trip after the handshake instead of one
        # Hello interval (about 41 s) later. The driver starts the interval timer from here.
        beat = None if self.awaiting_ack else self.heartbeat()
        return [ready] if beat is None else [ready, beat]

    def heartbeat(self) -> Send | None:
        """The heartbeat to send now, or ``None`` if the last one was never acknowledged:
        the connection is a zombie (half-open, or the server stopped answering)."""
        if self.awaiting_ack:
            self.zombie = True
            return None
        self.awaiting_ack = True
        return Send(encode(Op.HEARTBEAT, self.session.seq))


# -- after a connection ends


class Next(Enum):
    RESUME = "resume"
    """Resume the session if there is one (otherwise the next connection identifies)."""
    IDENTIFY = "identify"
    """Start a new session: the old one (id and seq) is dropped."""
    GIVE_UP = "give_up"


class Wait(Enum):
    NONE = "none"
    """Reconnect at once (the server asked for it)."""
    BACKOFF = "backoff"
    """The usual capped exponential backoff with jitter."""
    RATE_LIMITED = "rate_limited"
    """At least the configured rate-limit delay (4008)."""


@dataclass(frozen=True, slots=True)
class Plan:
    next: Next
    wait: Wait = Wait.BACKOFF
    refresh_token: bool = False
    code: str | None = None
    """Reason code when giving up."""
    message: str = ""
    requested: bool = False
    """The server asked for this reconnect (op 7, op 9): not by itself a failure."""
    by_gateway: bool = False
    """The gateway ended the connection (its inbox was full), not the platform: never a
    failure, and no backoff (the adapter waits for room instead)."""

    @property
    def clear_session(self) -> bool:
        """Identifying starts a new session, so the old one's id and seq must go with it."""
        return self.next is Next.IDENTIFY


FATAL_CLOSE_CODES: dict[int, tuple[str, str]] = {
    4001: ("qq_invalid_opcode", "the gateway rejected an opcode we sent (4001)"),
    4002: ("qq_invalid_payload", "the gateway rejected a payload we sent (4002)"),
    4010: ("qq_invalid_shard", "invalid shard (4010)"),
    4011: (
        "qq_too_many_guilds",
        "too many guilds for one connection; the bot needs sharding (4011)",
    ),
    4012: ("qq_invalid_version", "invalid gateway version (4012)"),
    4013: ("qq_invalid_intent", "invalid intent (4013)"),
    4014: ("qq_intent_not_permitted", "an intent is not permitted for this bot (4014)"),
    4914: (
        "qq_offline_sandbox_only",
        "the bot is offline; only the sandbox environment may connect (4914)",
    ),
    4915: ("qq_banned", "the bot is banned; apply for unbanning before connecting (4915)"),
}


def plan_after_close(code: int | None) -> Plan:
    """What to do after the server closed the connection with ``code`` (None: no close frame)."""
    if code in FATAL_CLOSE_CODES:
        reason, message = FATAL_CLOSE_CODES[code]
        return Plan(Next.GIVE_UP, code=reason, message=message)
    if code == 4009:  # the connection expired: reconnect and resume
        return Plan(Next.RESUME, Wait.NONE)
    if code == 4008:  # we sent too fast
        return Plan(Next.RESUME, Wait.RATE_LIMITED)
    if code in (4006, 4007) or (code is not None and 4900 <= code <= 4913):
        # 4006 invalid session, 4007 invalid seq, 49xx internal errors: start a new session.
        return Plan(Next.IDENTIFY, Wait.BACKOFF)
    if code == 4004:
        # Authentication failed: the token is bad or expired, not the session. Resume with a
        # fresh token, so the events the server holds for the session are not dropped.
        return Plan(Next.RESUME, Wait.BACKOFF, refresh_token=True)
    # No close frame (a dropped connection), 1000/1001 from the server, or a code we do not
    # know: keep the session and try to resume.
    return Plan(Next.RESUME, Wait.BACKOFF)


def plan_after_reconnect_request() -> Plan:
    return Plan(Next.RESUME, Wait.NONE, requested=True)


def plan_after_invalid_session(resumable: bool) -> Plan:
    if resumable:
        return Plan(Next.RESUME, Wait.BACKOFF, requested=True)
    return Plan(Next.IDENTIFY, Wait.BACKOFF, requested=True)


def plan_after_backpressure() -> Plan:
    """The gateway could take no more events: resume once it can (the platform replays what
    was left with it). Asked for by the gateway, not a failure of the connection."""
    return Plan(Next.RESUME, Wait.NONE, by_gateway=True)


def plan_after_zombie() -> Plan:
    return Plan(Next.RESUME, Wait.NONE)


def plan_after_protocol_error() -> Plan:
    """A frame broke the protocol: resume. The session is not to blame for one bad frame,
    and identifying would drop every event the server still holds for it."""
    return Plan(Next.RESUME, Wait.BACKOFF)


# -- reconnect timing


class Backoff:
    """Capped exponential delays with jitter: ``initial * factor**n``, at most ``maximum``,
    each multiplied by a random factor in ``[1 - jitter, 1]`` so a fleet does not reconnect
    in lockstep."""

    def __init__(
        self,
        initial: float = 1.0,
        maximum: float = 60.0,
        factor: float = 2.0,
        jitter: float = 0.3,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.initial, self.maximum, self.factor, self.jitter = initial, maximum, factor, jitter
        self._rng = rng
        self.steps = 0

    def next(self) -> float:
        base = min(self.initial * self.factor**self.steps, self.maximum)
        self.steps += 1
        return base * (1 - self.jitter * self._rng())

    def reset(self) -> None:
        self.steps = 0


class Reconnector:
    """Delays between connections, and when to give up.

    A connection that kept proving life (heartbeat ACKs, events) for ``stable_after``
    seconds after READY/RESUMED resets the backoff and the failure count. Any other ending
    counts as a failure, even after READY: a server that accepts and drops at once (a
    quick-disconnect storm) is throttled by the growing backoff, and a zombie that completes
    the handshake but never proves life fails however long each connection lasts. After
    ``max_failures`` failures in a row the adapter gives up (``qq_reconnect_exhausted``,
    retryable: the watchdog decides what comes next).

    The one exception: a reconnect the server asked for (op 7, op 9; ``plan.requested``),
    routine during the platform's deployments. It is not a failure if the connection it
    ended had proven life, or if the next connection proves life; if neither did, it
    counts, one connection late, so that a server asking forever without proving life
    still runs out the count.

    A connection the gateway ended (``plan.by_gateway``: its inbox was full) is no failure
    at all and is resumed at once: it delivered events (the refused one is one), and the
    adapter waited for room first, which only the store's progress brings. After a long
    database outage the platform's replay can take many such rounds; none may count
    towards ``max_failures`` or grow the backoff.
    """

    def __init__(
        self, backoff: Backoff, *, max_failures: int, stable_after: float, rate_limit_delay: float
    ) -> None:
        self.backoff = backoff
        self.max_failures = max_failures
        self.stable_after = stable_after
        self.rate_limit_delay = rate_limit_delay
        self.failures = 0
        self.unconfirmed = 0
        """Requested reconnects (0 or 1) whose connection proved no life: counted unless
        the next connection does."""
        self.unstable = 0
        """Connections in a row that were not stable, counted or not."""

    def after(self, plan: Plan, proven_for: float | None) -> float | None:
        """The delay before the next connection, or ``None`` to give up.

        ``proven_for``: seconds from READY/RESUMED to the connection's last proof of life;
        ``None`` if it showed none (a failed connection, or a zombie).
        """
        if plan.by_gateway:
            self.unconfirmed = 0  # it delivered an event: life
            return 0.0
        if proven_for is not None:
            self.unconfirmed = 0  # life after a requested reconnect: the request was routine
            if proven_for >= self.stable_after:
                self.failures = 0
                self.unstable = 0
                self.backoff.reset()
                return 0.0 if plan.wait is Wait.NONE else self._wait(plan)
        else:
            self.failures += self.unconfirmed
            self.unconfirmed = 0
        if not plan.requested:
            self.failures += 1
        elif proven_for is None:
            self.unconfirmed = 1
        self.unstable += 1
        if self.failures > self.max_failures:
            return None
        if plan.wait is Wait.NONE and self.unstable == 1:
            return 0.0  # at once the first time; a run of them backs off, as a storm would
        return self._wait(plan)

    def _wait(self, plan: Plan) -> float:
        delay = self.backoff.next()
        if plan.wait is Wait.RATE_LIMITED:
            delay = max(delay, self.rate_limit_delay)
        return delay
