"""The QQ simulator's resume model, bursts and scripted kills, against a bare client.

The client here is not the adapter: it is what any process of a bot does on the wire
(token, Hello, Identify or Resume, read frames), so that the platform's side is tested
on its own, and a "crash" is a real TCP reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from hermes.simulators.qqbot import QQSimulator, SimConnection
from tests.support.timing import t


class RawBot:
    """One process of a bot, reduced to the protocol: it knows only what it is given."""

    def __init__(self, ws: websockets.ClientConnection, token: str) -> None:
        self.ws = ws
        self.token = token

    @classmethod
    async def connect(cls, gateway_url: str, token_url: str, app_id: str, secret: str) -> RawBot:
        async with httpx.AsyncClient() as http:
            answer = await http.post(token_url, json={"appId": app_id, "clientSecret": secret})
        token = answer.json()["access_token"]
        ws = await websockets.connect(gateway_url, max_size=2**22)
        bot = cls(ws, token)
        hello = await bot.recv()
        assert hello["op"] == 10, hello
        return bot

    @classmethod
    async def to(cls, sim: QQSimulator) -> RawBot:
        return await cls.connect(sim.gateway_url, sim.token_url, sim.app_id, sim.client_secret)

    async def recv(self) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(self.ws.recv(), t(5)))
        return frame

    async def identify(self) -> dict[str, Any]:
        d = {"token": f"QQBot {self.token}", "intents": 1 << 25, "shard": [0, 1]}
        await self.ws.send(json.dumps({"op": 2, "d": d}))
        ready = await self.recv()
        assert ready["t"] == "READY", ready
        return ready

    async def resume(self, session_id: Any, seq: Any) -> None:
        d = {"token": f"QQBot {self.token}", "session_id": session_id, "seq": seq}
        await self.ws.send(json.dumps({"op": 6, "d": d}))

    async def until_resumed(self) -> list[dict[str, Any]]:
        """Every frame up to and including RESUMED."""
        frames = [await self.recv()]
        while frames[-1].get("t") != "RESUMED":
            frames.append(await self.recv())
        return frames

    async def close_code(self) -> int | None:
        """Read until the server closes; its close code."""
        try:
            while True:
                await asyncio.wait_for(self.ws.recv(), t(5))
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd is not None else None

    def crash(self) -> None:
        """Die like a killed process: a TCP reset, no close frame."""
        sock = self.ws.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.ws.transport.abort()


async def crashed(sim: QQSimulator, bot: RawBot, conn: SimConnection) -> None:
    bot.crash()
    await sim.wait_until(lambda: conn.closed, t(5), "the reset seen by the platform")
    assert conn.close_code is None  # no close frame: a crash, not a goodbye


def events(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if f.get("t") not in ("READY", "RESUMED")]


# -- resume across processes


async def test_a_new_process_resumes_a_killed_ones_session_with_only_its_id_and_seq():
    async with QQSimulator() as sim:
        first = await RawBot.to(sim)
        ready = await first.identify()
        session_id = ready["d"]["session_id"]
        sent = [await sim.send_message("group", f"before {i}") for i in range(5)]
        handled = [await first.recv() for _ in range(3)]  # two more are on the wire, unread
        await crashed(sim, first, sim.connections[0])
        later = await sim.burst(4)  # no connection: held for the resume

        second = await RawBot.to(sim)  # a new process: its own token, nothing shared
        await second.resume(session_id, handled[-1]["s"])
        frames = await second.until_resumed()

    replayed, resumed = frames[:-1], frames[-1]
    assert [f["d"]["id"] for f in replayed] == sent[3:] + later  # exactly the missed, in order
    seqs = [f["s"] for f in replayed]
    assert seqs == list(range(handled[-1]["s"] + 1, handled[-1]["s"] + 1 + len(seqs)))
    assert resumed == {"op": 0, "s": seqs[-1] + 1, "t": "RESUMED", "d": ""}  # events, then RESUMED
    attempt = sim.resumes[-1]
    assert (attempt.outcome, attempt.replayed, attempt.connection) == ("resumed", 6, 2)


async def test_events_dispatched_during_a_replay_arrive_once_and_in_order():
    async with QQSimulator() as sim:
        first = await RawBot.to(sim)
        ready = await first.identify()
        await crashed(sim, first, sim.connections[0])
        # 20 MB: more than the socket buffers hold, so the replay waits for the reader.
        held = [await sim.send_message("group", f"{i} " + "x" * 4000) for i in range(5000)]
        second = await RawBot.to(sim)
        await second.resume(ready["d"]["session_id"], ready["s"])
        conn = sim.connections[-1]
        await sim.wait_until(lambda: any(f.op == 6 for f in conn.frames), t(5), "the Resume")
        late = []
        for i in range(300):
            late.append(await sim.send_message("group", f"during {i}"))
            await asyncio.sleep(0)
        assert not conn.ready  # they did come in while the replay was under way

        frames = await second.until_resumed()
        frames += [await second.recv() for _ in range(len(held) + len(late) + 1 - len(frames))]

    got = events(frames)
    assert [f["d"]["id"] for f in got] == held + late
    assert [f["s"] for f in frames] == sorted({f["s"] for f in frames})  # no seq twice, none back
    assert sum(f.get("t") == "RESUMED" for f in frames) == 1


# -- what the platform refuses, and how


@pytest.mark.parametrize(("after", "resumable"), [(29.0, True), (31.0, False)])
async def test_a_session_is_resumable_for_the_window_after_its_last_connection_closed(
    after, resumable
):
    now = [1000.0]
    async with QQSimulator(resume_window=30, clock=lambda: now[0]) as sim:
        first = await RawBot.to(sim)
        ready = await first.identify()
        sent = [await sim.send_message("c2c", f"m{i}") for i in range(3)]
        handled = await first.recv()
        now[0] += 3600  # connected all along: the window has not started
        await crashed(sim, first, sim.connections[0])
        now[0] += after

        second = await RawBot.to(sim)
        await second.resume(ready["d"]["session_id"], handled["s"])
        if resumable:
            frames = await second.until_resumed()
            assert [f["d"]["id"] for f in events(frames)] == sent[1:]
            return
        # Error-code table: 4006, "invalid session id, cannot resume, identify".
        assert await second.close_code() == 4006
    attempt = sim.resumes[-1]
    assert attempt.outcome == "expired"
    assert attempt.missed == (handled["s"] + 1, handled["s"] + 2)
    assert attempt.missed_events == 2


async def test_unknown_sessions_and_seqs_outside_what_is_held_are_refused_as_documented():
    async with QQSimulator(replay_limit=10) as sim:
        first = await RawBot.to(sim)
        ready = await first.identify()
        session_id, ready_seq = ready["d"]["session_id"], ready["s"]
        await crashed(sim, first, sim.connections[0])
        await sim.burst(25)  # 15 of them no longer held

        async def refused(session: Any, seq: Any) -> int | None:
            bot = await RawBot.to(sim)
            await bot.resume(session, seq)
            return await bot.close_code()

        assert await refused("no-such-session", ready_seq) == 4006
        assert sim.resumes[-1].outcome == "unknown_session"
        assert sim.session is not None
        assert await refused(session_id, sim.session.seq + 1) == 4007  # from the future
        assert await refused(session_id, ready_seq) == 4007  # the platform dropped 15 of them
        attempt = sim.resumes[-1]
        assert (attempt.outcome, attempt.missed) == ("seq_out_of_range", (2, 26))
        # From the oldest event still held, all of them come back.
        bot = await RawBot.to(sim)
        await bot.resume(session_id, ready_seq + 15)
        assert len(events(await bot.until_resumed())) == 10

        # A malformed Resume: op 9, d false, and the connection is left to the bot to close.
        malformed = await RawBot.to(sim)
        await malformed.resume(session_id, "twelve")
        assert await malformed.recv() == {"op": 9, "d": False}
        assert not sim.connections[-1].closed
        assert sim.resumes[-1].outcome == "malformed"


async def test_refusals_can_come_as_op_9_instead_of_a_close_code():
    async with QQSimulator(refuse_resume_with="op9") as sim:
        bot = await RawBot.to(sim)
        await bot.resume("no-such-session", 3)
        assert await bot.recv() == {"op": 9, "d": False}
        assert sim.resumes[-1].outcome == "unknown_session"


@pytest.mark.parametrize(("code", "resumable"), [(1000, False), (1001, False), (4000, True)])
async def test_a_bot_closing_with_1000_or_1001_ends_its_session(code, resumable):
    async with QQSimulator() as sim:
        first = await RawBot.to(sim)
        ready = await first.identify()
        await first.ws.close(code)
        await sim.wait_until(lambda: sim.connections[0].closed, t(5), "the close")
        second = await RawBot.to(sim)
        await second.resume(ready["d"]["session_id"], ready["s"])
        if resumable:
            assert (await second.until_resumed())[-1]["t"] == "RESUMED"
        else:
            assert await second.close_code() == 4006
            assert sim.resumes[-1].outcome == "ended"


def test_bad_resume_settings_are_explained():
    with pytest.raises(ValueError, match="resume_window must be >= 0 seconds, got -1"):
        QQSimulator(resume_window=-1)
    with pytest.raises(ValueError, match="replay_limit must be a whole number >= 1, got 0"):
        QQSimulator(replay_limit=0)
    with pytest.raises(ValueError, match="refuse_resume_with must be one of close, op9"):
        QQSimulator(refuse_resume_with="4006")


# -- bursts and the kill hook


async def test_a_burst_of_20000_with_no_bot_connected_is_replayed_in_full_on_resume():
    async with QQSimulator() as sim:
        first = await RawBot.to(sim)
        ready = await first.identify()
        await crashed(sim, first, sim.connections[0])
        ids = await sim.burst(20_000, chats=["group-a", "group-b"])
        assert len(set(ids)) == 20_000
        assert sim.bursts[-1].written == 0  # held only

        second = await RawBot.to(sim)
        await second.resume(ready["d"]["session_id"], ready["s"])
        frames = await second.until_resumed()

    got = events(frames)
    assert [f["d"]["id"] for f in got] == ids
    assert [f["s"] for f in got] == list(range(ready["s"] + 1, ready["s"] + 20_001))
    assert {f["t"] for f in got} == {"GROUP_AT_MESSAGE_CREATE"}
    assert [f["d"]["group_openid"] for f in got[:3]] == ["group-a", "group-b", "group-a"]
    assert sim.resumes[-1].replayed == 20_000


async def test_the_kill_hook_fires_right_after_the_kth_event_and_the_rest_is_replayed():
    async with QQSimulator() as sim:
        bot = await RawBot.to(sim)
        ready = await bot.identify()
        received: list[dict[str, Any]] = []

        async def read() -> None:
            with contextlib.suppress(ConnectionClosed):  # the crash ends it
                async for raw in bot.ws:
                    received.append(json.loads(raw))

        reader = asyncio.create_task(read())
        fired: list[int] = []

        def kill() -> None:
            assert sim.session is not None
            fired.append(sim.session.seq)
            bot.crash()

        sim.after_sent(300, kill)
        ids = await sim.burst(1000)
        await reader

        assert fired == [ready["s"] + 300]  # once, right after the 300th event
        assert sim.bursts[-1].written >= 300
        last = received[-1]["s"] if received else ready["s"]
        assert last <= ready["s"] + 300  # nothing read after the crash
        second = await RawBot.to(sim)
        await second.resume(ready["d"]["session_id"], last)
        frames = await second.until_resumed()

    assert [f["d"]["id"] for f in received + events(frames)] == ids  # lost 0, twice 0


async def test_an_async_kill_hook_is_awaited_and_hooks_beyond_the_burst_are_refused():
    async with QQSimulator() as sim:
        bot = await RawBot.to(sim)
        await bot.identify()
        seen: list[int] = []

        async def hook() -> None:
            await asyncio.sleep(0)
            seen.append(len(sim.messages))

        sim.after_sent(2, hook)
        await sim.burst(3)
        assert seen == [2]
        sim.after_sent(4, hook)
        with pytest.raises(ValueError, match="a hook waits for event 4 of a burst of 3"):
            await sim.burst(3)
        with pytest.raises(ValueError, match="k must be a whole number >= 1, got 0"):
            sim.after_sent(0, hook)


async def test_the_reply_census_finds_unanswered_and_doubly_answered_messages_among_10000():
    async with QQSimulator() as sim:
        bot = await RawBot.to(sim)
        await bot.identify()
        await crashed(sim, bot, sim.connections[0])  # the token stays valid for the replies
        ids = await sim.burst(10_000, chats=["g"])
        url = f"{sim.api_base}/v2/groups/g/messages"
        headers = {"Authorization": f"QQBot {bot.token}"}
        async with httpx.AsyncClient(headers=headers) as http:

            async def reply(mid: str, seq: int) -> int:
                body = {"content": "ok", "msg_type": 0, "msg_id": mid, "msg_seq": seq}
                return (await http.post(url, json=body)).status_code

            assert await reply(ids[0], 1) == 200
            assert await reply(ids[0], 2) == 200  # a second, distinct reply: accepted
            assert await reply(ids[1], 1) == 200
            assert await reply(ids[1], 1) == 400  # the same msg_seq again: refused, not counted

        census = sim.reply_census(ids)
    assert census.messages == 10_000
    assert census.unanswered == ids[2:]
    assert census.repeated == {ids[0]: 2}
    assert not census.exactly_once
    assert (sim.reply_count(ids[1]), sim.reply_count("unknown")) == (1, 0)
