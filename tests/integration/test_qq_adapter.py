"""The QQ Bot adapter against the simulator, over real sockets on 127.0.0.1.

Each test asserts what the adapter did: frames sent, HTTP calls made, states declared,
reason codes reported. Timers are short (a 0.2 s heartbeat interval) but real.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from hermes.adapters.qqbot import QQBotAdapter, QQBotSettings
from hermes.errors import AlreadyDelivered, QQRateLimited, SendError
from hermes.messages import InboundMessage, OutboundMessage
from hermes.simulators.qqbot import QQSimulator
from tests.support.timing import t
from watchdog.heartbeat import HeartbeatBoard, PlatformHandle, PlatformPolicy, PlatformRecord
from watchdog.states import DeclaredState

FAST = {
    "reconnect_backoff": 0.05,
    "reconnect_backoff_max": 0.2,
    "hello_timeout": 1.0,
    "ready_timeout": 1.0,
    "stable_after": 3.0,
    "reconnect_max_failures": 4,
    "rate_limit_delay": 0.3,
    "request_timeout": 2.0,
}


class WatchedHandle(PlatformHandle):
    """A real handle that also lets a test await the adapter's next beat."""

    __slots__ = ("beaten",)

    def __init__(self, board: HeartbeatBoard, record: PlatformRecord) -> None:
        super().__init__(board, record)
        self.beaten = asyncio.Event()

    def beat(self) -> None:
        super().beat()
        self.beaten.set()


class Bot:
    """One adapter instance on a real heartbeat board, with its inbound messages captured."""

    def __init__(
        self, sim: QQSimulator, *, secret: str | None = None, echo: bool = False, **settings: Any
    ) -> None:
        self.sim = sim
        self.board = HeartbeatBoard()
        self.record: PlatformRecord = self.board.register(
            "qq", "qqbot", required=True, policy=PlatformPolicy()
        )
        self.board.begin_attempt(self.record, restart=False)
        self.handle = WatchedHandle(self.board, self.record)
        values = sim.adapter_settings(client_secret="env:QQ_SECRET", **{**FAST, **settings})
        parsed = QQBotSettings.model_validate(
            values,
            context={"environ": {"QQ_SECRET": secret or sim.client_secret}, "base_dir": Path.cwd()},
        )
        self.adapter = QQBotAdapter("qq", parsed, self.handle)
        self.inbound: list[InboundMessage] = []
        self._got = asyncio.Event()
        self.adapter.on_message = self._echo if echo else self._capture
        self.task: asyncio.Task[None] | None = None

    async def _echo(self, message: InboundMessage) -> None:
        reply = OutboundMessage(
            message.chat_kind, message.chat_id, message.text, reply_to=message.message_id
        )
        await self.adapter.send(reply)

    async def _capture(self, message: InboundMessage) -> None:
        self.inbound.append(message)
        self._got.set()

    def start(self) -> Bot:
        self.task = asyncio.get_running_loop().create_task(
            self.adapter.run(), name="test:qq-adapter"
        )
        return self

    async def stop(self) -> None:
        assert self.task is not None
        if not self.task.done():
            await self.adapter.close()
        await asyncio.wait_for(self.task, t(10))

    async def ended(self, timeout: float = 10) -> None:
        assert self.task is not None
        await asyncio.wait_for(asyncio.shield(self.task), t(timeout))

    async def wait_inbound(self, count: int, timeout: float = 5) -> list[InboundMessage]:
        async def enough() -> None:
            while len(self.inbound) < count:
                self._got.clear()
                await self._got.wait()

        await asyncio.wait_for(enough(), t(timeout))
        return self.inbound

    def declared(self) -> list[str]:
        return [c.new.value for c in self.board.drain_changes()]

    async def proven(self, conn: Any, timeout: float = 5) -> None:
        """Wait until an ACK of one of ``conn``'s heartbeats has been counted as a beat."""

        def seen() -> bool:
            beats = [f.at for f in conn.frames if f.op == 1]
            return bool(beats) and (self.record.last_beat or 0) >= beats[0]

        async def waiting() -> None:
            while True:
                self.handle.beaten.clear()
                if seen():
                    return
                await self.handle.beaten.wait()

        await asyncio.wait_for(waiting(), t(timeout))


@pytest.fixture
async def bot(sim: QQSimulator) -> AsyncIterator[Bot]:
    b = Bot(sim).start()
    try:
        yield b
    finally:
        await b.stop()


def op_frames(conn: Any, op: int) -> list[Any]:
    return [f.d for f in conn.frames if f.op == op]


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    """The adapters' warning lines (and worse), as logged."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), format="{message}", level="WARNING")
    try:
        yield lines
    finally:
        logger.remove(sink)


# -- the handshake


async def test_identify_with_a_fresh_token_then_ready_then_connected(sim, bot):
    conn = await sim.wait_ready(t(5))
    (identify,) = op_frames(conn, 2)
    token = identify["token"].removeprefix("QQBot ")
    assert token in sim.tokens
    assert identify["intents"] == (1 << 30) | (1 << 12) | (1 << 25)
    assert identify["shard"] == [0, 1]
    assert sim.token_requests == [{"appId": sim.app_id, "clientSecret": sim.client_secret}]
    assert ("GET", "/gateway") in sim.api_requests
    await sim.wait_until(lambda: bot.record.declared is DeclaredState.CONNECTED, t(2), "connected")
    assert bot.declared() == ["connected"]
    assert bot.record.ttl == pytest.approx(0.2 * 2.5)  # follows the Hello interval


async def test_heartbeats_follow_the_hello_interval_and_acks_are_beats(sim, bot):
    conn = await sim.wait_ready(t(5))
    await sim.wait_until(lambda: len(op_frames(conn, 1)) >= 4, t(5), "4 heartbeats")
    beats = [f.at for f in conn.frames if f.op == 1]
    gaps = [b - a for a, b in itertools.pairwise(beats)]
    assert all(0.15 < g < 0.6 for g in gaps), gaps
    assert op_frames(conn, 1)[-1] == sim.session.seq  # d is the last seq
    before = bot.record.last_beat
    assert before is not None
    await sim.wait_until(
        lambda: (bot.record.last_beat or 0) > before, t(5), "a later ACK counted as a beat"
    )


async def test_the_first_heartbeat_goes_with_the_handshake_and_its_ack_is_the_first_beat(sim):
    sim.heartbeat_interval = 5.0  # the next heartbeat is far: only the first can prove life
    bot = Bot(sim).start()
    try:
        conn = await sim.wait_ready(t(5))
        await bot.proven(conn)
        (identify,) = [f for f in conn.frames if f.op == 2]
        first = next(f for f in conn.frames if f.op == 1)
        assert first.at - identify.at < 1.0  # not a Hello interval later
    finally:
        await bot.stop()


async def test_a_zombie_server_completes_handshakes_but_they_are_no_proof_of_life(sim):
    sim.zombie = True  # READY/RESUMED, then no ACK and no event
    bot = Bot(sim).start()
    try:
        await sim.wait_until(
            lambda: len(sim.connections) >= 3 and sim.connections[1].closed,
            t(5),
            "two zombie connections closed by the bot",
        )
        first, second = sim.connections[:2]
        assert (first.ready, first.close_code) == (True, 4000)  # READY, then left as a zombie
        assert op_frames(second, 6)  # and resumed, RESUMED
        assert second.ready
        assert bot.declared()[:2] == ["connected", "reconnecting"]
        assert bot.record.last_beat is None  # neither READY nor RESUMED was taken for a beat
    finally:
        await bot.stop()


async def test_a_gateway_turning_zombie_mid_session_keeps_its_events_for_a_later_resume(sim, bot):
    first = await sim.wait_ready(t(5))
    await bot.proven(first)
    last_beat = bot.record.last_beat
    sim.go_zombie()  # this connection and the next ones: no ACK, no event
    mid = await sim.send_message("c2c", "held back")
    await sim.wait_until(lambda: len(sim.connections) >= 3, t(5), "two zombie reconnects")
    assert first.close_code == 4000 and sim.connections[1].ready
    assert bot.inbound == [] and bot.record.last_beat == last_beat
    sim.zombie = False  # connections from now on are healthy again
    await sim.wait_until(
        lambda: any(c.ready and not c.zombie for c in sim.connections[1:]), t(5), "a healthy one"
    )
    (m,) = await bot.wait_inbound(1)  # replayed by the Resume
    assert m.message_id == mid


async def test_a_server_heartbeat_request_is_answered_at_once(sim, bot):
    conn = await sim.wait_ready(t(5))
    count = len(op_frames(conn, 1))
    await sim.send_op(1)
    await sim.wait_until(
        lambda: len(op_frames(conn, 1)) > count, t(0.15), "a heartbeat well before the interval"
    )


# -- inbound events


@pytest.mark.parametrize("kind", ["c2c", "group", "channel", "dm"])
async def test_each_message_event_becomes_an_inbound_message(sim, bot, kind):
    await sim.wait_ready(t(5))
    mid = await sim.send_message(kind, "你好 hermes", author="U1", chat="C1")
    (m,) = await bot.wait_inbound(1)
    assert (m.message_id, m.chat_kind, m.text, m.author_id, m.platform) == (
        mid,
        kind,
        "你好 hermes",
        "U1",
        "qq",
    )
    assert m.chat_id == ("U1" if kind == "c2c" else "C1")
    assert m.timestamp is not None


async def test_duplicates_are_dropped_and_late_events_delivered(sim, bot):
    await sim.wait_ready(t(5))
    d1 = sim.message_payload("c2c", "one", message_id="m1")
    d2 = sim.message_payload("c2c", "two", message_id="m2")
    s1 = await sim.dispatch("C2C_MESSAGE_CREATE", d1)
    await sim.dispatch("C2C_MESSAGE_CREATE", d1, seq=s1)  # the same event pushed twice
    await sim.dispatch("C2C_MESSAGE_CREATE", {**d1}, seq=s1 + 5)  # same id, new seq
    await sim.dispatch("C2C_MESSAGE_CREATE", d2, seq=s1 + 2)  # arrives after s1 + 5: out of order
    await sim.send_message("c2c", "three", message_id="m3")
    got = await bot.wait_inbound(3)
    assert [m.message_id for m in got] == ["m1", "m2", "m3"]
    assert bot.adapter.duplicates == 2
    assert bot.adapter.session.seq == sim.session.seq


async def test_a_malformed_frame_is_dropped_and_the_session_goes_on(sim, bot):
    conn = await sim.wait_ready(t(5))
    await conn.ws.send("{this is not json")
    await sim.dispatch("C2C_MESSAGE_CREATE", {"id": "x", "author": {}})  # missing user_openid
    await sim.send_message("c2c", "fine")
    (m,) = await bot.wait_inbound(1)
    assert m.text == "fine"
    assert bot.adapter.malformed == 1
    assert len(sim.connections) == 1
    # Both accounted (with a gateway: inbound_cursors.lost), not just logged.
    lost = bot.adapter.inbound.lost
    assert len(lost) == 2 and "a malformed frame" in lost[0] and "C2C_MESSAGE_CREATE" in lost[1]


async def test_unknown_opcodes_and_event_types_are_logged_once_and_ignored(sim, bot, warnings):
    conn = await sim.wait_ready(t(5))
    for i in range(2):
        await sim.send_op(99, {"new": i})
        await sim.dispatch("SOME_FUTURE_EVENT", {"new": i})
    await sim.dispatch("GROUP_ADD_ROBOT", {"group_openid": "G"})  # documented: not logged
    mid = await sim.send_message("c2c", "behind the unknowns")
    (m,) = await bot.wait_inbound(1)
    assert m.message_id == mid
    assert len(sim.connections) == 1 and not conn.closed  # the session was kept
    assert len(op_frames(conn, 2)) == 1
    assert bot.adapter.unknown == {"op 99": 2, "SOME_FUTURE_EVENT": 2}
    ignored = [line for line in warnings if "ignoring an unknown" in line]
    assert len(ignored) == 2, ignored
    assert any("op 99" in line for line in ignored)
    assert any("SOME_FUTURE_EVENT" in line for line in ignored)


async def test_a_protocol_error_ends_the_connection_but_resumes_the_session(sim, bot):
    first = await sim.wait_ready(t(5))
    await sim.dispatch("C2C_MESSAGE_CREATE", sim.message_payload("c2c", "one"))
    await sim.send_op(10, {"heartbeat_interval": 200})  # a second Hello breaks the protocol
    await sim.send_message("c2c", "two")  # kept by the server for the resume
    second = await sim.wait_ready(t(5), count=2)
    assert first.close_code == 4000
    assert [f.op for f in second.frames][:1] == [6]
    assert [m.text for m in await bot.wait_inbound(2)] == ["one", "two"]


async def test_a_lone_surrogate_is_legal_json_and_delivered_as_u_fffd(sim, bot):
    await sim.wait_ready(t(5))
    mid = await sim.send_message("c2c", "bad \ud800 half")
    assert sim.session is not None
    assert "\\ud800" in sim.session.buffer[-1][1]  # on the wire as the JSON escape
    (m,) = await bot.wait_inbound(1)
    assert (m.message_id, m.text) == (mid, "bad \ufffd half")
    assert m.text.encode("utf-8")
    assert bot.adapter.malformed == 0


# -- replies


async def test_echo_replies_with_msg_id_and_increasing_msg_seq(sim):
    bot = Bot(sim, echo=True).start()
    try:
        await sim.wait_ready(t(5))
        mid = await sim.send_message("group", "ping", chat="G1")
        await sim.wait_until(lambda: sim.replies_to(mid), t(5), "the echo")
        await bot.adapter.send(OutboundMessage("group", "G1", "second answer", reply_to=mid))
        first, second = sim.replies_to(mid)
        assert (first.kind, first.target) == ("group", "G1")
        assert first.body == {"content": "ping", "msg_type": 0, "msg_id": mid, "msg_seq": 1}
        assert second.body["msg_seq"] == 2
        assert first.headers["authorization"].removeprefix("QQBot ") in sim.tokens
        assert first.headers["x-union-appid"] == sim.app_id
    finally:
        await bot.stop()


@pytest.mark.parametrize("http_429", [True, False])
async def test_rate_limited_sends_are_retried_with_backoff(sim, bot, http_429):
    await sim.wait_ready(t(5))
    mid = await sim.send_message("c2c", "hi", author="U9")
    sim.rate_limit(2, http_429=http_429)
    await bot.adapter.send(OutboundMessage("c2c", "U9", "answer", reply_to=mid))
    statuses = [m.status for m in sim.sent]
    assert statuses == ([429, 429, 200] if http_429 else [400, 400, 200])
    gaps = [b.at - a.at for a, b in zip(sim.sent, sim.sent[1:], strict=False)]
    assert gaps[0] >= 0.45  # not a tight loop
    assert gaps[1] >= 2 * gaps[0] * 0.9


async def test_persistent_rate_limiting_raises_a_typed_error(sim, bot):
    await sim.wait_ready(t(5))
    sim.rate_limit(10)
    with pytest.raises(QQRateLimited, match="still rate limited after 4 attempts"):
        await bot.adapter.send(OutboundMessage("c2c", "U", "x"))


async def test_a_second_reply_with_the_same_seq_is_refused_by_the_platform(sim, bot):
    await sim.wait_ready(t(5))
    mid = await sim.send_message("c2c", "hi", author="U")
    bot.adapter.api.msg_seq.next(mid)  # pretend an earlier process replied with msg_seq 1 ...
    await bot.adapter.send(OutboundMessage("c2c", "U", "a", reply_to=mid))
    sim.used_seqs.add((mid, 3))  # ... and 3
    from hermes.errors import QQApiError

    with pytest.raises(QQApiError, match="40054005"):
        await bot.adapter.send(OutboundMessage("c2c", "U", "b", reply_to=mid))


# -- connections that end


async def test_a_dropped_connection_is_resumed_and_nothing_is_lost_or_doubled(sim, bot):
    await sim.wait_ready(t(5))
    before = [await sim.send_message("c2c", f"m{i}") for i in range(3)]
    await bot.wait_inbound(3)
    sim.drop()  # no close frame
    during = [await sim.send_message("c2c", f"d{i}") for i in range(4)]  # buffered by the server
    conn = await sim.wait_ready(t(5), count=2)
    (resume,) = op_frames(conn, 6)
    assert resume["session_id"] == sim.session.session_id
    after = [await sim.send_message("c2c", f"a{i}") for i in range(2)]
    got = await bot.wait_inbound(9)
    assert [m.message_id for m in got] == before + during + after
    assert bot.declared() == ["connected", "reconnecting", "connected"]


async def test_withheld_acks_make_a_zombie_that_is_closed_and_resumed(sim, bot):
    first = await sim.wait_ready(t(5))
    first.withhold_acks = True
    conn = await sim.wait_ready(t(5), count=2)
    assert first.close_code == 4000  # not 1000: the session stays resumable
    assert op_frames(conn, 6)


async def test_a_silent_half_open_connection_is_detected_and_resumed(sim, bot):
    await sim.wait_ready(t(5))
    sim.go_silent()
    conn = await sim.wait_ready(t(5), count=2)
    assert op_frames(conn, 6)


async def test_after_a_rest_401_a_fresh_token_resumes_the_session_and_nothing_is_dropped(sim, bot):
    # A 401 from /gateway is the token's fault, not the session's: the adapter fetches a new
    # token and resumes, so the events the server buffered meanwhile are replayed.
    await sim.wait_ready(t(5))
    for i in range(5):
        await sim.send_message("c2c", f"old{i}")
    await bot.wait_inbound(5)
    session_id = sim.session.session_id
    sim.fail_next("gateway", 2, status=401)  # refused, and refused again with a fresh token
    sim.drop()
    missed = await sim.send_message("c2c", "sent while the bot was away")
    fresh = await sim.wait_ready(t(5), count=2)
    (resume,) = op_frames(fresh, 6)
    assert not op_frames(fresh, 2)
    assert resume["session_id"] == session_id
    await bot.wait_inbound(6)
    assert bot.inbound[-1].message_id == missed
    assert len(sim.token_requests) >= 2  # a fresh token after the 401


@pytest.mark.parametrize(("d", "next_op"), [(True, 6), (False, 2)])
async def test_invalid_session_resumes_or_identifies(sim, bot, d, next_op):
    await sim.wait_ready(t(5))
    await sim.send_op(9, d)
    conn = await sim.wait_ready(t(5), count=2)
    assert conn.frames[0].op == next_op


async def test_reconnect_request_resumes_at_once(sim, bot):
    first = await sim.wait_ready(t(5))
    await sim.send_op(7)
    conn = await sim.wait_ready(t(5), count=2)
    assert conn.frames[0].op == 6
    assert first.close_code == 4000


async def test_4009_resumes_at_once_and_4008_waits_the_rate_limit_delay(sim, bot):
    await sim.wait_ready(t(5))
    await sim.close(4009, "connection expired")
    second = await sim.wait_ready(t(5), count=2)
    assert second.frames[0].op == 6
    closed_at = asyncio.get_running_loop().time()
    await sim.close(4008, "too fast")
    third = await sim.wait_ready(t(5), count=3)
    assert third.frames[0].op == 6
    assert third.frames[0].at - closed_at >= 0.3


@pytest.mark.parametrize("code", [4006, 4007, 4900, 4913])
async def test_session_ending_codes_clear_the_session_and_identify(sim, bot, code):
    await sim.wait_ready(t(5))
    old = sim.session.session_id
    await sim.close(code)
    conn = await sim.wait_ready(t(5), count=2)
    assert conn.frames[0].op == 2
    assert sim.session.session_id != old


async def test_4004_refetches_the_token_and_resumes_the_session(sim, bot):
    await sim.wait_ready(t(5))
    session_id = sim.session.session_id
    sim.tokens.clear()  # the platform forgot our token
    await sim.close(4004, "authentication failed")
    missed = await sim.send_message("c2c", "sent while the bot was away")
    conn = await sim.wait_ready(t(5), count=2)
    assert conn.frames[0].op == 6
    assert sim.session.session_id == session_id
    assert len(sim.token_requests) == 2
    await bot.wait_inbound(1)
    assert bot.inbound[-1].message_id == missed


async def test_repeated_4004_with_fresh_tokens_is_a_final_qq_invalid_token(sim, bot):
    await sim.wait_ready(t(5))
    sim.reject_tokens = True
    await sim.close(4004)
    await bot.ended()
    error = bot.record.fatal_error
    assert error is not None
    assert (error.code, error.retryable) == ("qq_invalid_token", False)
    assert len(sim.token_requests) >= 3  # every retry had a freshly fetched token


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (4001, "qq_invalid_opcode"),
        (4013, "qq_invalid_intent"),
        (4014, "qq_intent_not_permitted"),
        (4914, "qq_offline_sandbox_only"),
        (4915, "qq_banned"),
    ],
)
async def test_final_close_codes_end_the_platform_without_retrying(sim, bot, code, reason):
    await sim.wait_ready(t(5))
    await sim.close(code)
    await bot.ended()
    error = bot.record.fatal_error
    assert error is not None
    assert (error.code, error.retryable) == (reason, False)
    assert len(sim.connections) == 1


async def test_intents_the_bot_may_not_use_are_refused_with_4014(sim):
    sim.allowed_intents = 1 << 30
    bot = Bot(sim, intents=["GROUP_AND_C2C_EVENT"]).start()
    try:
        await bot.ended()
        assert bot.record.fatal_error is not None
        assert bot.record.fatal_error.code == "qq_intent_not_permitted"
    finally:
        await bot.stop()


@pytest.mark.parametrize("code", [None, 1000, 4999])
async def test_unknown_endings_resume_with_backoff(sim, bot, code):
    await sim.wait_ready(t(5))
    if code is None:
        sim.drop()
    else:
        await sim.close(code)
    conn = await sim.wait_ready(t(5), count=2)
    assert conn.frames[0].op == 6


# -- the platform's endpoints failing


async def test_failing_and_slow_token_and_gateway_endpoints_are_retried(sim):
    sim.fail_next("token", 2, status=502)
    sim.fail_next("gateway", 1, status=503)
    sim.delays["token"] = 0.2
    bot = Bot(sim).start()
    try:
        await sim.wait_ready(t(10))
        assert len(sim.token_requests) == 1  # failures were answered before the body was recorded
        assert bot.declared()[-1] == "connected"
    finally:
        await bot.stop()


async def test_wrong_credentials_are_a_final_qq_invalid_credentials(sim):
    bot = Bot(sim, secret="the-old-secret").start()
    try:
        await bot.ended()
        error = bot.record.fatal_error
        assert error is not None
        assert (error.code, error.retryable) == ("qq_invalid_credentials", False)
        assert "code 100016" in error.message
        assert not sim.connections
    finally:
        await bot.stop()


async def test_a_gateway_that_never_says_hello_is_left_after_the_time_limit(sim):
    sim.silent_new_connections = True
    bot = Bot(sim, hello_timeout=0.3, ready_timeout=0.3).start()
    try:
        await sim.wait_until(lambda: len(sim.connections) >= 2, t(5), "a second attempt")
        assert sim.connections[0].close_code == 4000
    finally:
        await bot.stop()


# -- giving up, and shutting down


async def test_the_incident_refused_connections_end_in_an_explicit_reconnect_exhausted(sim):
    bot = Bot(sim).start()
    await sim.wait_ready(t(5))
    await sim.refuse_connections()  # closes the open connection too (1001 going away)
    await bot.ended(t(15))
    error = bot.record.fatal_error
    assert error is not None
    assert (error.code, error.retryable) == ("qq_reconnect_exhausted", True)
    assert "5 connections in a row" in error.message
    assert bot.record.declared is DeclaredState.FATAL
    await bot.stop()


async def test_shutdown_keeps_the_session_resumable_and_leaves_no_task_behind(tmp_path):
    async with QQSimulator(heartbeat_interval=0.2) as sim:
        bot = Bot(sim, echo=True).start()
        await sim.wait_ready(t(5))
        mid = await sim.send_message("c2c", "bye")
        await sim.wait_until(lambda: sim.replies_to(mid), t(5), "echo")
        await bot.stop()
        # 1000 would end the session on the platform: a restart could not resume it.
        assert sim.connections[-1].close_code == 4000
        assert sim.session is not None
        assert not sim.session.ended
        assert bot.record.declared is DeclaredState.STOPPED
        assert bot.adapter.tasks.pending() == []
    me = asyncio.current_task()
    assert [task.get_name() for task in asyncio.all_tasks() if task is not me] == []


async def test_simulator_validates_what_the_platform_validates(sim, bot):
    await sim.wait_ready(t(5))
    token = next(iter(sim.tokens))
    import httpx

    async with httpx.AsyncClient(base_url=sim.api_base) as http:
        no_auth = await http.post("/v2/groups/G/messages", json={"content": "x", "msg_type": 0})
        assert (no_auth.status_code, no_auth.json()["code"]) == (401, 11243)
        headers = {"Authorization": f"QQBot {token}"}
        unknown = await http.post(
            "/v2/groups/G/messages",
            json={"content": "x", "msg_type": 0, "msg_id": "nope"},
            headers=headers,
        )
        assert unknown.json()["message"] == "msg_id is invalid"
        no_type = await http.post("/v2/users/U/messages", json={"content": "x"}, headers=headers)
        assert no_type.json()["message"] == "msg_type is required"
        bad_token = await http.post("/app/getAppAccessToken", content=json.dumps({"appId": "1"}))
        assert bad_token.json() == {"code": 100007, "message": "appid invalid"}


async def test_no_request_is_ever_sent_without_a_valid_token(sim, bot):
    await sim.wait_ready(t(5))
    bot.adapter.tokens.invalidate()
    sim.fail_next("token", 20, status=503)
    with pytest.raises(SendError, match="no access token"):
        await bot.adapter.send(OutboundMessage("c2c", "U", "x"))
    assert sim.sent == []


async def test_rest_refusing_fresh_tokens_is_a_final_qq_invalid_token(sim, bot):
    await sim.wait_ready(t(5))
    sim.reject_rest_tokens = True
    sim.drop()
    await bot.ended()
    error = bot.record.fatal_error
    assert error is not None
    assert (error.code, error.retryable) == ("qq_invalid_token", False)


async def test_a_quick_disconnect_storm_is_throttled_then_exhausted(sim):
    bot = Bot(
        sim,
        reconnect_backoff=0.1,
        reconnect_backoff_max=1.0,
        reconnect_max_failures=4,
        stable_after=5.0,
    ).start()
    try:
        for n in range(1, 6):
            await sim.wait_ready(t(10), count=n)
            await sim.close(1000, "bye")  # accepted, READY, then dropped at once
        await bot.ended(t(10))
        error = bot.record.fatal_error
        assert error is not None
        assert error.code == "qq_reconnect_exhausted"
        opened = [c.frames[0].at for c in sim.connections]
        gaps = [b - a for a, b in itertools.pairwise(opened)]
        assert len(sim.connections) == 5
        assert gaps[-1] > gaps[0] * 2  # the backoff grew instead of hammering the server
    finally:
        await bot.stop()


async def test_zombie_connections_are_failures_however_long_they_last(sim):
    # Each zombie connection lasts one heartbeat interval (0.2 s) after READY, longer than
    # stable_after: counted as stable, the loop would never run out.
    sim.zombie = True
    bot = Bot(sim, stable_after=0.1, reconnect_max_failures=2).start()
    try:
        await bot.ended(t(5))
        error = bot.record.fatal_error
        assert error is not None
        assert error.code == "qq_reconnect_exhausted"
        assert "showed no proof of life" in error.message
        assert len(sim.connections) == 3
        assert all(c.ready and c.close_code == 4000 for c in sim.connections)
        assert bot.record.last_beat is None
    finally:
        await bot.stop()


async def test_reconnects_the_server_asks_for_do_not_use_up_the_failure_count(sim):
    bot = Bot(sim, reconnect_max_failures=2).start()
    try:
        for n in range(1, 5):  # four op 7s, as during a deployment of the platform
            conn = await sim.wait_ready(t(5), count=n)
            await bot.proven(conn)
            await sim.send_op(7)
        last = await sim.wait_ready(t(5), count=5)
        assert all(c.frames[0].op == 6 for c in sim.connections[1:])  # each one resumed
        await bot.proven(last)
        mid = await sim.send_message("c2c", "after four reconnects")
        (m,) = await bot.wait_inbound(1)
        assert m.message_id == mid
        assert bot.record.fatal_error is None
        assert bot.adapter.reconnector.failures == 0
    finally:
        await bot.stop()


async def test_close_during_the_opening_handshake_still_stops_promptly(sim):
    sim.handshake_delay = 0.5
    bot = Bot(sim).start()
    try:
        await sim.wait_until(lambda: sim.handshakes >= 1, t(5), "a handshake under way")
        await bot.adapter.close()  # no connection to close yet
        await bot.ended(t(3))
        await sim.wait_until(
            lambda: sim.connections and sim.connections[0].closed, t(3), "the connection closed"
        )
        assert sim.connections[0].close_code == 4000  # resumable by the next process
        assert sim.connections[0].frames == []  # it never identified
        assert bot.record.declared is DeclaredState.STOPPED
    finally:
        await bot.stop()


async def test_a_retried_reply_with_its_fixed_seq_is_recognised_as_already_delivered(sim, bot):
    await sim.wait_ready(t(5))
    mid = await sim.send_message("group", "hi", chat="G")
    reply = OutboundMessage("group", "G", "answer", reply_to=mid, reply_seq=1)
    await bot.adapter.send(reply)
    with pytest.raises(AlreadyDelivered, match=f"already has reply 1 to {mid}"):
        await bot.adapter.send(reply)  # the same reply again, as after a crash
    assert [m.status for m in sim.sent] == [200, 400]
