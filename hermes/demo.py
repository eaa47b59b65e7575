"""``make demo``: watch the watchdog catch an adapter that dies silently.

Runs ``hermes run`` on an embedded SQLite store with two demonstration platforms:
``demo-bot`` (required) receives events for a few seconds, then its receive loop
just returns, still ``connected``: the incident this project exists for. A
datagram socket stands in for systemd's NOTIFY_SOCKET and shows what systemd
would receive. Afterwards the demo shows what an operator sees: the status CLI,
the history, and the rows in SQL.

Everything stays on this machine: no network, files under ``.demo/``.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

SPEED = float(os.environ.get("HERMES_DEMO_SPEED", "1"))
"""Time scale: 0.2 runs the same story five times faster (used by the test suite)."""
BIN = Path(sys.executable).parent

CONFIG = """\
# Written by `make demo`.
[gateway]
log_level = "INFO"
shutdown_timeout = "5s"

[store]
directory = "state"          # .demo/state/hermes.db

[watchdog]
tick_interval = {tick}

[platforms.demo-bot]
adapter = "demo"
die_after = {die}             # then its receive loop returns silently
restart_max = 2              # two in-process restarts, then fatal
restart_backoff = {backoff}

[platforms.demo-extra]
adapter = "demo"
required = false             # optional: would not escalate even if it died
"""

_print_lock = threading.Lock()


def say(text: str = "") -> None:
    with _print_lock:
        print(text, flush=True)


def banner(text: str) -> None:
    say()
    say(f"== {text} " + "=" * max(0, 70 - len(text)))


def listen(sock: socket.socket, stop: threading.Event) -> None:
    """Print what "systemd" receives; pings are counted, not each printed."""
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
            if pings in (1, 2) or pings % 5 == 0:
                say(f"   systemd <- WATCHDOG=1   (ping #{pings})")
            continue
        say(f"   systemd <- {data.replace(chr(10), ' ')}")


def pump(stream: object, prefix: str) -> None:
    for line in stream:  # type: ignore[attr-defined]
        say(f"{prefix}{line.rstrip()}")


def cli(*args: str, cwd: Path) -> int:
    banner("$ " + " ".join(["hermes-watchdog", *args]))
    result = subprocess.run(
        [str(BIN / "hermes-watchdog"), *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    for line in (result.stdout + result.stderr).rstrip().splitlines():
        say("   " + line)
    say(f"   (exit code {result.returncode})")
    return result.returncode


def main() -> int:
    root = Path.cwd() / ".demo"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir()
    config = root / "gateway.toml"
    config.write_text(
        CONFIG.format(
            tick=round(1.0 * SPEED, 3), die=round(4.0 * SPEED, 3), backoff=round(1.0 * SPEED, 3)
        )
    )
    notify_path = root / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))

    banner("hermes-gateway demo")
    say("demo-bot: receives events, then after a few seconds its receive loop returns")
    say("silently while still 'connected'. The watchdog restarts it twice in-process;")
    say("the third death spends the restart budget: the platform is marked fatal in SQL,")
    say("pings stop and the gateway exits 75 so that systemd would restart the unit.")
    say(f"config: {config}")

    env = dict(
        os.environ,
        NOTIFY_SOCKET=str(notify_path),
        WATCHDOG_USEC=str(int(10_000_000 * max(SPEED, 0.5))),
    )
    stop = threading.Event()
    listener = threading.Thread(target=listen, args=(sock, stop), name="demo-notify", daemon=True)
    listener.start()
    banner("$ hermes run --config .demo/gateway.toml")
    proc = subprocess.Popen(
        [str(BIN / "hermes"), "run", "--config", str(config)],
        cwd=root,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    reader = threading.Thread(
        target=pump, args=(proc.stdout, "   gateway | "), name="demo-output", daemon=True
    )
    reader.start()
    try:
        time.sleep(2.5 * SPEED)  # let both platforms connect, then look from outside
        cli("status", "--config", str(config), cwd=root)
        code = proc.wait(timeout=120 * max(SPEED, 0.25))
    except subprocess.TimeoutExpired:
        proc.kill()
        say("demo: the gateway did not exit in time; killed")
        return 1
    finally:
        reader.join(timeout=5)
        stop.set()
        listener.join(timeout=2)
        sock.close()
    meaning = {
        0: "clean stop",
        75: "escalation: systemd restarts the unit",
        78: "do not restart",
    }.get(code, "?")
    banner(f"gateway exited with {code} ({meaning})")

    cli("status", "--config", str(config), cwd=root)
    cli("history", "--config", str(config), cwd=root)
    banner(
        "$ sqlite3 .demo/state/hermes.db 'SELECT platform, declared_state, health, restarts, reason_code FROM platform_state'"
    )
    db = sqlite3.connect(f"file:{root / 'state' / 'hermes.db'}?mode=ro", uri=True)
    try:
        for row in db.execute(
            "SELECT platform, declared_state, health, restarts, reason_code FROM platform_state ORDER BY platform"
        ):
            say("   " + " | ".join("" if v is None else str(v) for v in row))
    finally:
        db.close()
    say()
    say("The watchdog caught the silent return within one tick each time, restarted it")
    say("within budget, then escalated. Try: hermes-watchdog status --config .demo/gateway.toml")
    return 0 if code == 75 else 1


if __name__ == "__main__":
    sys.exit(main())
