"""``hermes simulate qqbot`` as an operator runs it."""

from __future__ import annotations

import asyncio
import json
import signal

import httpx

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
