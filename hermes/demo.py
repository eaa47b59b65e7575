"""``make demo``: a gateway on the QQ simulator; a crash mid-burst, then the platform goes silent.

Two processes, as an operator would run them: ``hermes simulate qqbot`` (the local
stand-in for the QQ open platform) and ``hermes run`` with a ``qqbot`` platform pointed
at it, on an embedded SQLite store. As soon as the bot is READY the simulator sends a
burst of group messages and SIGKILLs the gateway in the middle of it; the demo starts the
gateway again (as systemd's ``Restart=`` would), it resumes from its stored cursor, the
simulator replays what the dead process never stored, and the simulator's own census
shows every message answered exactly once. Then a group message every second, echoed;
then the simulator goes silent: the connection stays open
but nothing flows, and new connections never get a Hello. The adapter notices the
missing heartbeat ACKs, reconnects into silence until its reconnect budget is spent,
the watchdog restarts it once, then marks it fatal in SQL, stops the systemd pings
and exits 75. A datagram socket stands in for systemd's NOTIFY_SOCKET.

Afterwards: what an operator sees (status CLI, history, the SQL rows).
Everything stays on 127.0.0.1; files under ``.demo/``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

SPEED = float(os.environ.get("HERMES_DEMO_SPEED", "1"))
"""Time scale: 0.25 tells the same story four times faster (the test suite uses it)."""
BIN = Path(sys.executable).parent


def s(seconds: float) -> str:
    return f"{seconds * SPEED:.3f}"


CONFIG = """\
# Written by `make demo`.
[gateway]
log_level = "INFO"
shutdown_timeout = "5s"

[store]
directory = "state"                    # .demo/state/hermes.db

[watchdog]
tick_interval = {tick}

[platforms.qq-demo]
adapter = "qqbot"
app_id = "{app_id}"
client_secret = "env:QQ_SIM_SECRET"    # secrets are references, never inline
api_base = "{api_base}"
token_url = "{token_url}"
intents = ["GROUP_AND_C2C_EVENT"]
hello_timeout = {hello}
reconnect_backoff = {backoff}
reconnect_backoff_max = {backoff_max}
reconnect_max_failures = 3             # then the adapter reports qq_reconnect_exhausted
stable_after = "30s"
restart_max = 1                        # the watchdog restarts it once, then: fatal
restart_backoff = {backoff}

[[routes]]                             # every message: the reply is its own text
handler = "echo"
on_crash = "retry"                     # echoing twice is harmless: a run a kill cut off runs again
"""

_print_lock = threading.Lock()


def say(text: str = "") -> None:
    with _print_lock:
        print(text, flush=True)


def banner(text: str) -> None:
    say()
    say(f"== {text} " + "=" * max(0, 74 - len(text)))


def listen(sock: socket.socket, stop: threading.Event, healthy: threading.Event) -> None:
    """Print what "systemd" receives; pings are counted, not each printed. ``healthy`` is set
    once the gateway reports every platform ok."""
    pings = 0
    sock.settimeout(0.1)
    while not stop.is_set():
        try:
            data = sock.recv(65536).decode("utf-8", "replace")
        except TimeoutError:
            continue
        except OSError:
            return
        if data == "WATCHDOG=1":
            pings += 1
            if pings in (1, 2) or pings % 10 == 0:
                say(f"   systemd  <- WATCHDOG=1   (ping #{pings})")
            continue
        if data.startswith("STATUS=1/1 platforms ok"):
            healthy.set()
        say(f"   systemd  <- {data.replace(chr(10), ' ')}")


BURST, KILL_AFTER = 1000, 300
CENSUS = threading.Event()
"""Set when the simulator has reported its census of the burst's replies."""


def pump(stream: IO[str], prefix: str) -> None:
    for line in stream:
        say(f"{prefix}{line.rstrip()}")
        if "burst: census" in line:
            CENSUS.set()


def cli(*args: str, cwd: Path) -> int:
    banner("$ " + " ".join(["hermes-watchdog", *args]))
    result = subprocess.run(
        [str(BIN / "hermes-watchdog"), *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    for line in (result.stdout + result.stderr).rstrip().splitlines():
        say("   " + line)
    say(f"   (exit code {result.returncode})")
    return result.returncode


def start(
    argv: list[str], cwd: Path, env: dict[str, str], prefix: str, pid_file: Path | None = None
) -> tuple[subprocess.Popen[str], threading.Thread]:
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    if pid_file is not None:
        pid_file.write_text(f"{proc.pid}\n")
    reader = threading.Thread(
        target=pump, args=(proc.stdout, prefix), name=f"demo-output-{prefix.strip()}", daemon=True
    )
    reader.start()
    return proc, reader


def wait_file(path: Path, timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: the simulator did not start within {timeout:g} s")
        time.sleep(0.05)
    data: dict[str, str] = json.loads(path.read_text())
    return data


def main() -> int:
    root = Path.cwd() / ".demo"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir()
    banner("hermes-gateway demo: a crash mid-burst, then a platform that goes silent")
    say(f"1. the simulator sends a burst of {BURST} group messages and SIGKILLs the gateway")
    say(f"   after message {KILL_AFTER}; the gateway is started again, resumes its session from")
    say("   the cursor stored with its inbox, and the platform replays what it never stored:")
    say("   the simulator counts every message answered exactly once;")
    say("2. the simulator sends a group message every second; the gateway echoes it;")
    say("3. then the simulator goes silent: the socket stays open, nothing flows;")
    say("4. the adapter sees heartbeat ACKs missing, reconnects into silence, gives up")
    say("   (qq_reconnect_exhausted); the watchdog restarts it once, then marks it fatal,")
    say("   stops the systemd pings and exits 75 so that systemd restarts the unit.")

    ready_file = root / "simulator.json"
    pid_file = root / "gateway.pid"
    env = dict(os.environ)
    sim_argv = [
        str(BIN / "hermes"), "simulate", "qqbot",
        "--heartbeat-interval", s(1.0),
        "--message-every", s(1.0),
        "--message-kind", "group",
        "--burst", str(BURST),
        "--kill-pid-file", str(pid_file),
        "--kill-after", str(KILL_AFTER),
        "--silent-after", s(6.0),
        "--ready-file", str(ready_file),
    ]  # fmt: skip
    banner(
        f"$ hermes simulate qqbot --burst {BURST} --kill-after {KILL_AFTER} --message-every 1s"
        " --silent-after 6s ..."
    )
    sim, sim_reader = start(sim_argv, root, env, "   simulator | ")
    gateway: subprocess.Popen[str] | None = None
    notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stop = threading.Event()
    healthy = threading.Event()
    try:
        info = wait_file(ready_file, 30)
        config = root / "gateway.toml"
        config.write_text(
            CONFIG.format(
                tick=s(1.0),
                app_id=info["app_id"],
                api_base=info["api_base"],
                token_url=info["token_url"],
                hello=s(2.0),
                backoff=s(0.5),
                backoff_max=s(2.0),
            )
        )
        notify_path = root / "notify.sock"
        notify_sock.bind(str(notify_path))
        listener = threading.Thread(
            target=listen, args=(notify_sock, stop, healthy), name="demo-notify", daemon=True
        )
        listener.start()
        gw_env = dict(
            env,
            QQ_SIM_SECRET=info["client_secret"],
            NOTIFY_SOCKET=str(notify_path),
            WATCHDOG_USEC=str(int(10_000_000 * max(SPEED, 0.5))),
        )
        run = [str(BIN / "hermes"), "run", "--config", str(config)]
        banner("$ hermes run --config .demo/gateway.toml")
        gateway, gw_reader = start(run, root, gw_env, "   gateway   | ", pid_file)
        try:
            code = gateway.wait(timeout=60)
        except subprocess.TimeoutExpired:
            say("demo: the simulator did not kill the gateway mid-burst")
            return 1
        gw_reader.join(timeout=5)
        banner(f"gateway died ({code}): started again, as systemd's Restart= would")
        gateway, gw_reader = start(run, root, gw_env, "   gateway   | ", pid_file)
        if not CENSUS.wait(timeout=180):
            say("demo: the simulator reported no census of the burst")
            return 1
        # Look from outside once messages flow: the platform is ok, then a few ticks. (A fixed
        # wait is not enough on a busy machine, now that the status command starts in well
        # under the gateway's own start-up.)
        healthy.wait(timeout=60)
        time.sleep(2 * SPEED)
        cli("status", "--config", str(config), cwd=root)
        try:
            code = gateway.wait(timeout=180 * max(SPEED, 0.25))
        except subprocess.TimeoutExpired:
            gateway.kill()
            say("demo: the gateway did not exit in time; killed")
            return 1
        gw_reader.join(timeout=5)
    finally:
        if gateway is not None and gateway.poll() is None:
            gateway.kill()
        sim.send_signal(signal.SIGTERM)
        try:
            sim.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sim.kill()
        sim_reader.join(timeout=5)
        stop.set()
        notify_sock.close()

    meaning = {
        0: "clean stop",
        75: "escalation: systemd restarts the unit",
        78: "do not restart",
    }.get(code, "?")
    banner(f"gateway exited with {code} ({meaning})")
    cli("status", "--config", str(config), cwd=root)
    cli("history", "--config", str(config), cwd=root)
    query = "SELECT platform, declared_state, health, restarts, reason_code FROM platform_state"
    banner(f"$ sqlite3 .demo/state/hermes.db '{query}'")
    db = sqlite3.connect(f"file:{root / 'state' / 'hermes.db'}?mode=ro", uri=True)
    try:
        for row in db.execute(query):
            say("   " + " | ".join("" if v is None else str(v) for v in row))
    finally:
        db.close()
    say()
    say("Try it yourself: hermes-watchdog status --config .demo/gateway.toml")
    return 0 if code == 75 else 1


if __name__ == "__main__":
    sys.exit(main())
