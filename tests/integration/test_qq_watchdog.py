"""The watchdog catches a dead QQ platform even where the adapter itself gets it wrong."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from hermes.adapters.qqbot.auth import TokenManager
from hermes.errors import QQTokenUnavailable
from hermes.simulators.qqbot import QQSimulator
from tests.qq_variants import RETURNED_AT
from tests.support.configs import write_config
from tests.support.inprocess import gateway, stored_for
from tests.support.timing import t
from watchdog.clock import FakeClock
from watchdog.rules import escalation_bound
from watchdog.secrets import Secret
from watchdog.states import Health

TICK = 0.1
QQ_FAST = {
    "client_secret": "env:QQ_SECRET",
    "reconnect_backoff": 0.05,
    "reconnect_backoff_max": 0.1,
    "reconnect_max_failures": 3,
    "hello_timeout": 1.0,
    "ready_timeout": 1.0,
    "stable_after": 5.0,
}


def qq(sim: QQSimulator, adapter: str = "qqbot", **extra: Any) -> dict[str, Any]:
    return {"adapter": adapter, **sim.adapter_settings(**QQ_FAST), **extra}


async def test_the_incident_refused_connections_end_fatal_and_escalate_instead_of_connected(
    tmp_path, sim
):
    config = write_config(tmp_path, {"qq": qq(sim, restart_max=1, restart_backoff=0.1)}, tick=TICK)
    async with gateway(config) as (_gw, task):
        await sim.wait_ready(t(5))
        await sim.refuse_connections()  # closes the open connection too (1001 going away)
        assert await asyncio.wait_for(task, t(30)) == 75
    instance, (row,), history = stored_for(config)
    assert instance is not None
    assert (row["health"], row["reason_code"], row["restarts"]) == (
        "fatal",
        "qq_reconnect_exhausted",
        1,
    )
    assert row["declared_state"] != "connected"
    assert "restart budget spent" in row["reason_message"]
    assert instance["exit_code"] == 75
    failing = [
        h["reason_code"]
        for h in history
        if h["to_health"] in ("failing", "fatal") and h["from_health"] != h["to_health"]
    ]
    assert failing == ["qq_reconnect_exhausted", "qq_reconnect_exhausted"]


async def test_a_loop_that_just_returns_is_caught_within_one_tick(tmp_path, sim):
    config = write_config(
        tmp_path, {"qq": qq(sim, "tests.qq_variants:SilentGiveUpQQ", restart_max=0)}, tick=TICK
    )
    async with gateway(config) as (gw, task):
        await sim.wait_ready(t(5))
        await sim.refuse_connections()
        assert await asyncio.wait_for(task, t(30)) == 75
    record = gw.board["qq"]
    assert record.reason is not None
    assert record.reason.code == "adapter_exited"
    assert "while declared reconnecting" in record.reason.message
    assert 0 <= record.health_since - RETURNED_AT["qq"] <= TICK + 0.05


async def test_a_half_open_socket_is_caught_by_the_ttl_when_the_adapter_cannot_see_it(
    tmp_path, sim
):
    config = write_config(
        tmp_path, {"qq": qq(sim, "tests.qq_variants:NoZombieDetectionQQ", restart_max=0)}, tick=TICK
    )
    async with gateway(config) as (gw, task):
        await sim.wait_ready(t(5))
        # Alive first (READY is no proof: the ACK of a heartbeat is), then half-open.
        await sim.wait_until(lambda: gw.board["qq"].last_beat is not None, t(5), "a beat")
        sim.go_silent()
        assert await asyncio.wait_for(task, t(30)) == 75
    record = gw.board["qq"]
    assert record.reason is not None
    assert record.reason.code == "heartbeat_timeout"
    assert record.last_beat is not None
    ttl = 0.2 * 2.5
    assert ttl < record.health_since - record.last_beat <= ttl + TICK + 0.05
    _, (row,), _ = stored_for(config)
    assert (row["declared_state"], row["health"], row["reason_code"]) == (
        "connected",
        "fatal",
        "heartbeat_timeout",
    )


async def test_messages_flow_through_the_gateway_and_are_echoed(tmp_path, sim):
    config = write_config(tmp_path, {"qq": qq(sim)}, tick=TICK, routes=[{"handler": "echo"}])
    async with gateway(config) as (_gw, task):
        await sim.wait_ready(t(5))
        ids = [
            await sim.send_message(kind, f"hi {kind}") for kind in ("c2c", "group", "channel", "dm")
        ]
        await sim.wait_until(lambda: all(sim.replies_to(i) for i in ids), t(5), "four echoes")
    assert task.result() == 0
    assert sim.connections[-1].close_code == 4000  # the session stays resumable for a restart
    _, (row,), history = stored_for(config)
    assert row["declared_state"] == "stopped"
    assert [h["to_state"] for h in history if h["from_state"] != h["to_state"]] == [
        "connected",
        "stopped",
    ]


# -- tokens, with one fake clock for the simulator and the adapter


async def test_tokens_are_refreshed_in_their_last_minute_and_never_used_expired():
    clock = FakeClock()
    async with (
        QQSimulator(token_ttl=7200, clock=clock.monotonic) as sim,
        httpx.AsyncClient() as http,
    ):
        tokens = TokenManager(
            http,
            token_url=sim.token_url,
            app_id=sim.app_id,
            secret=Secret("env:X", sim.client_secret),
            monotonic=clock.monotonic,
        )
        first = await tokens.get()
        clock.advance(7200 - 100)
        assert await tokens.get() == first  # 100 s left: still fresh, no request
        assert tokens.fetches == 1
        clock.advance(60)  # 40 s left: inside the platform's last minute, a new token exists
        second = await tokens.get()
        assert second != first
        assert tokens.fetches == 2
        assert set(sim.tokens) == {first, second}  # the old one stays valid until it expires
        # Concurrent callers share one refresh.
        tokens.invalidate()
        results = await asyncio.gather(*(tokens.get() for _ in range(10)))
        assert len(set(results)) == 1
        assert tokens.fetches == 3
        # Near expiry with the endpoint failing: the still-valid token is used ...
        clock.advance(7200 - 45)
        sim.fail_next("token", 5, status=503)
        assert await tokens.get() == second
        # ... but never once it has expired.
        clock.advance(60)
        with pytest.raises(QQTokenUnavailable, match="HTTP 503"):
            await tokens.get()


# -- a zombie server: sessions accepted, never acknowledged, nothing sent


ZOMBIE_SUPERVISION: dict[str, Any] = {
    "restart_max": 2,
    "restart_backoff": 0.1,
    "start_timeout": 1.0,
    "reconnect_timeout": 1.0,
    # The adapter's own count must not end it first: the watchdog's rules are under test.
    "reconnect_max_failures": 50,
}


def zombie_bound(gw: Any, name: str) -> float:
    record = gw.board[name]
    return escalation_bound(
        record.policy,
        ttl=record.ttl,
        tick_interval=TICK,
        close_timeout=gw.config.watchdog.close_timeout,
    )


async def test_a_zombie_server_is_never_ok_after_the_ttl_and_escalates_within_the_bound(
    tmp_path, sim
):
    config = write_config(tmp_path, {"qq": qq(sim, **ZOMBIE_SUPERVISION)}, tick=TICK)
    async with gateway(config) as (gw, task):
        record = gw.board["qq"]
        await sim.wait_until(lambda: record.health is Health.OK, t(5), "ok after the first ACK")
        sim.go_zombie()
        assert await asyncio.wait_for(task, t(60)) == 75
    # Many sessions were accepted after the last proof of life; none bought fresh grace.
    assert sum(1 for c in sim.connections if c.zombie) >= 3
    last_beat = record.last_beat
    assert last_beat is not None
    ttl = 0.2 * 2.5
    assert record.reason is not None
    assert record.reason.code == "heartbeat_timeout"
    assert "no proof of life" in record.reason.message
    assert record.health_since - last_beat <= zombie_bound(gw, "qq")
    _, (row,), history = stored_for(config)
    assert row["health"] == "fatal"
    # What SQL says: ok ends at most one TTL and one tick after the last proof of life, and
    # never comes back, however many connections the zombie accepts.
    last_beat_at = row["last_heartbeat_at"]
    health = [h for h in history if h["from_health"] != h["to_health"] and h["to_health"]]
    last_ok = max(i for i, h in enumerate(health) if h["to_health"] == "ok")
    left_ok = health[last_ok + 1]
    assert left_ok["from_health"] == "ok"
    assert (left_ok["at"] - last_beat_at).total_seconds() <= ttl + TICK + 0.05
    assert all(h["to_health"] != "ok" for h in health[last_ok + 1 :])


async def test_a_gateway_started_against_a_zombie_is_never_ok_and_escalates(tmp_path, monkeypatch):
    async with QQSimulator(heartbeat_interval=0.2, zombie=True) as sim:
        monkeypatch.setenv("QQ_SECRET", sim.client_secret)
        config = write_config(tmp_path, {"qq": qq(sim, **ZOMBIE_SUPERVISION)}, tick=TICK)
        started = asyncio.get_running_loop().time()
        async with gateway(config) as (gw, task):
            assert await asyncio.wait_for(task, t(60)) == 75
        elapsed = asyncio.get_running_loop().time() - started
    assert gw.board["qq"].last_beat is None
    assert elapsed <= zombie_bound(gw, "qq") + t(2)
    _, (row,), history = stored_for(config)
    assert (row["health"], row["restarts"]) == ("fatal", 2)
    assert all(h["to_health"] != "ok" for h in history)
    assert "2 restarts in a row without proof of life" in row["reason_message"]
