"""``hermes simulate qqbot`` as an operator runs it."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import httpx
import pytest
import websockets

from hermes.cli import main
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


# A bot process reduced to the protocol: reads the simulator's ready-file JSON on stdin,
# identifies, and prints READY and every event, one flushed line each, until killed.
CHILD_BOT = """
import asyncio, json, sys
import httpx, websockets

async def main():
    info = json.loads(sys.stdin.readline())
    async with httpx.AsyncClient() as http:
        credentials = {"appId": info["app_id"], "clientSecret": info["client_secret"]}
        token = (await http.post(info["token_url"], json=credentials)).json()["access_token"]
    async with websockets.connect(info["gateway_url"]) as ws:
        await ws.recv()  # Hello
        identify = {"token": "QQBot " + token, "intents": 1 << 25, "shard": [0, 1]}
        await ws.send(json.dumps({"op": 2, "d": identify}))
        async for raw in ws:
            frame = json.loads(raw)
            if frame.get("t") == "READY":
                print("READY", frame["d"]["session_id"], frame["s"], flush=True)
            elif frame.get("op") == 0:
                print("EVENT", frame["s"], frame["d"]["id"], flush=True)

asyncio.run(main())
"""


async def test_the_simulator_cli_kills_a_bot_mid_burst_and_a_resume_gets_the_rest(tmp_path):
    from tests.integration.test_qq_simulator import RawBot, events

    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD_BOT,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=child_env(),
    )  # fmt: skip
    ready = tmp_path / "sim.json"
    proc = await asyncio.create_subprocess_exec(
        HERMES, "simulate", "qqbot", "--ready-file", str(ready), "--resume-window", "1m",
        "--burst", "200", "--kill-pid", str(child.pid), "--kill-after", "50",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=child_env(),
    )  # fmt: skip
    stdout = proc.stdout
    assert stdout is not None and child.stdin is not None and child.stdout is not None
    output = b""

    async def line_with(text: bytes) -> None:
        nonlocal output
        while text not in output:
            line = await asyncio.wait_for(stdout.readline(), t(15))
            assert line, f"the simulator exited: {output!r}"
            output += line

    try:
        await line_with(b"handler = ")
        assert b"sessions stay resumable for 60 s" in output
        info = json.loads(ready.read_text())
        child.stdin.write((json.dumps(info) + "\n").encode())
        await child.stdin.drain()
        assert await asyncio.wait_for(child.wait(), t(15)) == -signal.SIGKILL
        await line_with(b"held for replay only")
        assert f"burst: event 50 sent (seq 51); killed pid {child.pid} with SIGKILL".encode() in (
            output
        )
        assert b"burst: 200 group messages sent, seqs 2..201" in output

        # What the dead process printed (a line cut by the kill does not count).
        printed = (await child.stdout.read()).decode()
        lines = [line.split() for line in printed.splitlines(keepends=True) if line.endswith("\n")]
        assert lines[0][0] == "READY"
        session_id = lines[0][1]
        handled = [(int(s), mid) for _, s, mid in lines[1:]]
        assert 0 < len(handled) <= 50

        last = handled[-1][0]
        bot = await RawBot.connect(
            info["gateway_url"], info["token_url"], info["app_id"], info["client_secret"]
        )
        await bot.resume(session_id, last)
        replayed = [(f["s"], f["d"]["id"]) for f in events(await bot.until_resumed())]
        together = handled + replayed
        assert [s for s, _ in together] == list(range(2, 202))  # all 200, once each, in order
        assert len({mid for _, mid in together}) == 200
        await line_with(f"Resume from seq {last} -> replayed {200 - len(handled)} events".encode())
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), t(10)) == 0
    finally:
        for p in (proc, child):
            if p.returncode is None:
                p.kill()
                await p.wait()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--kill-pid", "999999999"], "--kill-pid and --kill-after go together"),
        (["--kill-pid", "999999999", "--kill-after", "5"], "--kill-pid needs --burst"),
        (["--burst", "3", "--kill-pid", "1", "--kill-after", "5"], "--kill-after 5 is beyond"),
        (["--kill-pid-file", "gw.pid"], "--kill-pid-file and --kill-after go together"),
        (["--kill-pid-file", "gw.pid", "--kill-after", "5"], "--kill-pid-file needs --burst"),
        (
            ["--burst", "9", "--kill-pid", "1", "--kill-pid-file", "gw.pid", "--kill-after", "5"],
            "--kill-pid and --kill-pid-file exclude each other",
        ),
        (["--burst", "0"], "--burst: expected a whole number >= 1, got '0'"),
        (["--replay-limit", "many"], "--replay-limit: expected a whole number >= 1, got 'many'"),
        (["--resume-window", "soon"], "--resume-window: expected a duration"),
    ],
)
def test_bad_burst_and_resume_arguments_are_explained(argv, message, capsys):
    code: object
    try:
        code = main(["simulate", "qqbot", *argv])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err
