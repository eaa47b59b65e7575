"""``hermes simulate qqbot`` as an operator runs it."""

from __future__ import annotations

import asyncio
import json
import signal

import httpx
import pytest
import websockets

from tests.support.proc import HERMES, child_env, run_cli
from tests.support.timing import t


async def test_the_simulator_cli_serves_the_documented_endpoints_until_sigterm(tmp_path):
    ready = tmp_path / "sim.json"
    proc = await asyncio.create_subprocess_exec(
        HERMES, "simulate", "qqbot", "--heartbeat-interval", "5s", "--ready-file", str(ready),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=child_env(),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        banner = b""
        while b"handler = " not in banner:
            line = await asyncio.wait_for(proc.stdout.readline(), t(15))
            assert line, f"the simulator exited before its banner was complete: {banner!r}"
            banner += line
        info = json.loads(ready.read_text())
        assert f'api_base = "{info["api_base"]}"' in banner.decode()
        async with httpx.AsyncClient() as http:
            token = (
                await http.post(
                    info["token_url"],
                    json={"appId": info["app_id"], "clientSecret": info["client_secret"]},
                )
            ).json()
            assert set(token) == {"access_token", "expires_in"}
            assert isinstance(token["expires_in"], str)
            gateway = await http.get(
                info["api_base"] + "/gateway",
                headers={"Authorization": f"QQBot {token['access_token']}"},
            )
            assert gateway.json() == {"url": info["gateway_url"]}
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), t(10)) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_bad_simulator_arguments_are_explained():
    result = run_cli(HERMES, "simulate", "qqbot", "--message-every", "often")
    assert result.returncode == 2
    assert "--message-every: expected a duration" in result.stderr


async def test_the_simulator_cli_plays_a_zombie_gateway_with_the_platforms_hello(tmp_path):
    ready = tmp_path / "sim.json"
    proc = await asyncio.create_subprocess_exec(
        HERMES, "simulate", "qqbot", "--zombie", "--ready-file", str(ready),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=child_env(),
    )  # fmt: skip
    stdout = proc.stdout
    assert stdout is not None
    output = b""

    async def line_with(text: bytes) -> None:
        nonlocal output
        while text not in output:
            line = await asyncio.wait_for(stdout.readline(), t(15))
            assert line, f"the simulator exited: {output!r}"
            output += line

    try:
        await line_with(b"handler = ")
        info = json.loads(ready.read_text())
        async with httpx.AsyncClient() as http:
            credentials = {"appId": info["app_id"], "clientSecret": info["client_secret"]}
            token = (await http.post(info["token_url"], json=credentials)).json()["access_token"]
        async with websockets.connect(info["gateway_url"]) as ws:
            hello = json.loads(await ws.recv())
            assert hello == {"op": 10, "d": {"heartbeat_interval": 41250}}  # as the platform
            identify = {"token": f"QQBot {token}", "intents": 1 << 30, "shard": [0, 1]}
            await ws.send(json.dumps({"op": 2, "d": identify}))
            ready_event = json.loads(await ws.recv())
            assert (ready_event["op"], ready_event["t"]) == (0, "READY")  # the session is accepted
            await ws.send(json.dumps({"op": 1, "d": ready_event["s"]}))
            with pytest.raises(TimeoutError):  # ... and never acknowledged
                await asyncio.wait_for(ws.recv(), 1.0)
        await line_with(b"(zombie: no ACK, no event)")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), t(10)) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
