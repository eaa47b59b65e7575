"""``hermes``: run the gateway, check a configuration, run the demonstration.

Exit codes of ``hermes run`` (a public contract, see the README): 0 clean stop;
75 escalation, restart wanted; 78 configuration or non-retryable error, a restart
will not help (``RestartPreventExitStatus=78``); 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from watchdog.engine import EXIT_NOT_RETRYABLE
from watchdog.exceptions import ConfigError

if TYPE_CHECKING:
    from hermes.config import GatewayConfig

EXIT_UNEXPECTED = 1
DEFAULT_CONFIG = "/etc/hermes/gateway.toml"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        from watchdog.clipping import clip_message

        # argparse echoes the offending argument; a huge one must not flood the terminal.
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {clip_message(message)}\n")


def _config_option() -> _Parser:
    """``--config``, accepted before and after every command that reads the configuration.

    ``SUPPRESS``: a subcommand's parser writes its defaults into the namespace the main parser
    already filled, and would reset a ``--config`` given before the command."""
    common = _Parser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"configuration file (default: $HERMES_CONFIG or {DEFAULT_CONFIG})",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _config_option()
    parser = _Parser(
        prog="hermes",
        description="A chat-platform gateway that is never silently dead.",
        parents=[common],
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    sub.add_parser(
        "run", parents=[common], help="run the gateway in the foreground (systemd Type=notify)"
    )
    simulate = sub.add_parser(
        "simulate", help="run a local simulator of a platform (no real credentials)"
    )
    platforms = simulate.add_subparsers(dest="platform", required=True)
    qq = platforms.add_parser(
        "qqbot", help="the QQ open platform: token endpoint, REST API, WebSocket gateway"
    )
    qq.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    qq.add_argument(
        "--http-port", type=int, default=0, help="token and REST API port (default: any free)"
    )
    qq.add_argument("--ws-port", type=int, default=0, help="gateway port (default: any free)")
    qq.add_argument("--app-id", default="102000001")
    qq.add_argument(
        "--client-secret", default="simulator-secret", help="the credential the simulator accepts"
    )
    qq.add_argument(
        "--heartbeat-interval",
        type=_duration_arg,
        default=41.25,
        metavar="DURATION",
        help="sent in Hello (default 41.25s, as the platform sends)",
    )
    qq.add_argument(
        "--message-every",
        type=_duration_arg,
        default=0.0,
        metavar="DURATION",
        help="send the bot a message this often",
    )
    qq.add_argument("--message-kind", choices=["c2c", "group", "channel", "dm"], default="c2c")
    qq.add_argument(
        "--messages",
        type=int,
        default=0,
        metavar="N",
        help="stop sending after N messages (default: no limit)",
    )
    qq.add_argument(
        "--silent-after",
        type=_duration_arg,
        default=0.0,
        metavar="DURATION",
        help="then go half-open: nothing flows",
    )
    qq.add_argument(
        "--refuse-after",
        type=_duration_arg,
        default=0.0,
        metavar="DURATION",
        help="then refuse connections",
    )
    qq.add_argument(
        "--zombie",
        action="store_true",
        help="accept Identify and Resume, answer READY/RESUMED, then never ACK a heartbeat "
        "and send no events",
    )
    qq.add_argument(
        "--zombie-after",
        type=_duration_arg,
        default=0.0,
        metavar="DURATION",
        help="turn zombie (as --zombie) this long after the first READY",
    )
    qq.add_argument(
        "--resume-window",
        type=_duration_arg,
        default=None,
        metavar="DURATION",
        help="how long a session stays resumable after its connection drops (default 300s)",
    )
    qq.add_argument(
        "--replay-limit",
        type=_positive_int,
        default=None,
        metavar="N",
        help="events held per session for Resume (default 100000)",
    )
    qq.add_argument(
        "--burst",
        type=_positive_int,
        default=0,
        metavar="N",
        help="send N group messages at once when the bot is READY",
    )
    qq.add_argument(
        "--kill-pid",
        type=_positive_int,
        default=0,
        metavar="PID",
        help="SIGKILL this process mid-burst (with --kill-after)",
    )
    qq.add_argument(
        "--kill-pid-file",
        default="",
        metavar="PATH",
        help="... or the process whose pid this file holds when the kill is due",
    )
    qq.add_argument(
        "--kill-after",
        type=_positive_int,
        default=0,
        metavar="K",
        help="... right after the K-th event of the burst is sent",
    )
    qq.add_argument(
        "--ready-file",
        metavar="PATH",
        help="write the URLs and credentials as JSON here once listening",
    )
    _telegram_parser(platforms)
    from hermes.jobrunner import cli as jobs_cli

    jobs_cli.add_parser(sub, [common])
    sub.add_parser("check", parents=[common], help="validate a configuration file; exit 0 or 78")
    return parser


def _telegram_parser(platforms: Any) -> None:
    tg = platforms.add_parser(
        "telegram", help="the Telegram Bot API: getMe, getUpdates (long polling), sendMessage"
    )
    tg.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    tg.add_argument("--port", type=int, default=0, help="HTTP port (default: any free)")
    tg.add_argument("--token", default=None, help="the bot token the simulator accepts")
    tg.add_argument("--username", default="hermes_sim_bot", help="the bot's username (getMe)")
    tg.add_argument(
        "--message-every",
        type=_duration_arg,
        default=0.0,
        metavar="DURATION",
        help="send the bot a message this often",
    )
    tg.add_argument(
        "--message-kind", choices=["private", "group", "supergroup", "channel"], default="private"
    )
    tg.add_argument(
        "--messages",
        type=int,
        default=0,
        metavar="N",
        help="stop after N messages (default: no limit)",
    )
    tg.add_argument(
        "--burst", type=_positive_int, default=0, metavar="N", help="queue N group messages at once"
    )
    tg.add_argument(
        "--kill-pid",
        type=_positive_int,
        default=0,
        metavar="PID",
        help="SIGKILL this process mid-burst",
    )
    tg.add_argument(
        "--kill-pid-file",
        default="",
        metavar="PATH",
        help="... or the process whose pid this file holds when the kill is due",
    )
    tg.add_argument(
        "--kill-after",
        type=_positive_int,
        default=0,
        metavar="K",
        help="... right after the answer carrying the K-th update of the burst",
    )
    for flag, what in (
        ("--revoke-after", "then revoke the token: every call answers 401"),
        ("--hang-after", "then never answer getUpdates"),
        ("--compete-after", "then poll with the same token as another process would (409s)"),
    ):
        tg.add_argument(flag, type=_duration_arg, default=0.0, metavar="DURATION", help=what)
    tg.add_argument(
        "--conflict-pacing",
        type=_duration_arg,
        default=None,
        metavar="DURATION",
        help="at most one 409 conflict answer this often (default 3s, as the server)",
    )
    tg.add_argument(
        "--ready-file",
        metavar="PATH",
        help="write the API base and token as JSON here once listening",
    )


def _duration_arg(text: str) -> float:
    from watchdog.clipping import quote
    from watchdog.settings import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, got {quote(text)}") from None


def _positive_int(text: str) -> int:
    from watchdog.clipping import quote

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {quote(text)}")
    return value


def cmd_simulate_qqbot(args: argparse.Namespace) -> int:
    import json

    from hermes.simulators.qqbot import (
        DEFAULT_REPLAY_LIMIT,
        DEFAULT_RESUME_WINDOW,
        QQSimulator,
        Script,
        config_snippet,
        run_script,
    )

    def say(line: str) -> None:
        print(f"qq-simulator: {line}", flush=True)

    script = Script(
        args.message_every,
        args.message_kind,
        args.messages,
        args.silent_after,
        args.refuse_after,
        args.zombie_after,
        burst=args.burst,
        kill_pid=args.kill_pid,
        kill_pid_file=args.kill_pid_file,
        kill_after=args.kill_after,
    )
    problems = script.problems()
    if problems:
        for problem in problems:
            print(f"hermes simulate qqbot: error: {problem}", file=sys.stderr)
        return 2
    window = DEFAULT_RESUME_WINDOW if args.resume_window is None else args.resume_window
    limit = DEFAULT_REPLAY_LIMIT if args.replay_limit is None else args.replay_limit

    async def main() -> None:
        sim = QQSimulator(
            app_id=args.app_id,
            client_secret=args.client_secret,
            heartbeat_interval=args.heartbeat_interval,
            host=args.host,
            http_port=args.http_port,
            ws_port=args.ws_port,
            zombie=args.zombie,
            resume_window=window,
            replay_limit=limit,
        )
        sim.observer = say
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        async with sim:
            if args.ready_file:  # first, so that whoever reads the banner finds the file
                info = {
                    "api_base": sim.api_base,
                    "token_url": sim.token_url,
                    "gateway_url": sim.gateway_url,
                    "app_id": sim.app_id,
                    "client_secret": sim.client_secret,
                }
                await asyncio.to_thread(_write_atomically, args.ready_file, json.dumps(info))
            say(f"listening: API {sim.api_base}, gateway {sim.gateway_url}")
            say(
                f"sessions stay resumable for {window:g} s after their connection drops;"
                f" up to {limit} events each are held for Resume"
            )
            print(
                "\n# a platform for your gateway configuration:\n" + config_snippet(sim), flush=True
            )
            driver = loop.create_task(run_script(sim, script, say), name="qq-simulator:script")
            await stop.wait()
            driver.cancel()
            await asyncio.gather(driver, return_exceptions=True)
            say("stopping")

    asyncio.run(main())
    return 0


def cmd_simulate_telegram(args: argparse.Namespace) -> int:
    import json

    from hermes.simulators.telegram import (
        CONFLICT_PACING,
        DEFAULT_TOKEN,
        Script,
        TelegramSimulator,
        config_snippet,
        run_script,
    )

    def say(line: str) -> None:
        print(f"telegram-simulator: {line}", flush=True)

    script = Script(
        args.message_every,
        args.message_kind,
        args.messages,
        burst=args.burst,
        kill_pid=args.kill_pid,
        kill_pid_file=args.kill_pid_file,
        kill_after=args.kill_after,
        revoke_after=args.revoke_after,
        hang_after=args.hang_after,
        compete_after=args.compete_after,
    )
    problems = script.problems()
    if problems:
        for problem in problems:
            print(f"hermes simulate telegram: error: {problem}", file=sys.stderr)
        return 2

    async def main() -> None:
        sim = TelegramSimulator(
            token=args.token or DEFAULT_TOKEN,
            username=args.username,
            host=args.host,
            port=args.port,
            conflict_pacing=CONFLICT_PACING
            if args.conflict_pacing is None
            else args.conflict_pacing,
        )
        sim.observer = say
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        async with sim:
            if args.ready_file:
                info = {"api_base": sim.api_base, "token": sim.token, "username": sim.username}
                await asyncio.to_thread(_write_atomically, args.ready_file, json.dumps(info))
            say(f"listening: Bot API {sim.api_base}/bot<token>/METHOD")
            print(
                "\n# a platform for your gateway configuration:\n" + config_snippet(sim), flush=True
            )
            driver = loop.create_task(
                run_script(sim, script, say), name="telegram-simulator:script"
            )
            await stop.wait()
            driver.cancel()
            await asyncio.gather(driver, return_exceptions=True)
            say("stopping")

    asyncio.run(main())
    return 0


def _write_atomically(path: str, text: str) -> None:
    """Write via a temporary file and a rename, so a reader never sees half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _config_path(value: str | None) -> str:
    return value or os.environ.get("HERMES_CONFIG") or DEFAULT_CONFIG


def _load(path: str) -> GatewayConfig | None:
    """The configuration, or None after printing every problem in it to stderr."""
    from hermes.config import load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"hermes: invalid configuration in {exc.source}:", file=sys.stderr)
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
        return None


def cmd_check(path: str) -> int:
    from watchdog.store import display_url

    config = _load(path)
    if config is None:
        return EXIT_NOT_RETRYABLE
    print(f"{path}: ok")
    print(f"  store: {display_url(config.database_url)}")
    print(f"  tick every {config.watchdog.tick_interval:g} s")
    for pc in config.platforms.values():
        need = "required" if pc.supervision.required else "optional"
        print(
            f"  platform {pc.name}: adapter {pc.adapter} ({need}), heartbeat TTL {pc.supervision.heartbeat_ttl:g} s"
        )
    return 0


def cmd_run(path: str) -> int:
    from loguru import logger

    from hermes.logs import setup_logging

    config = _load(path)
    if config is None:
        return EXIT_NOT_RETRYABLE
    setup_logging(config.gateway.log_level)
    # A frozen loop gets SIGABRT from systemd's watchdog: dump every thread's stack first.
    # `systemctl kill -s USR1 hermes-gateway` dumps them on demand.
    faulthandler.enable(all_threads=True)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    from hermes.gateway import Gateway, run_gateway

    try:
        return run_gateway(Gateway(config))
    except Exception:
        logger.exception("gateway failed unexpectedly")
        return EXIT_UNEXPECTED


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config: str | None = getattr(args, "config", None)
    if args.version:
        import hermes

        print(f"hermes-gateway {hermes.__version__}")
        return 0
    if args.command == "run":
        return cmd_run(_config_path(config))
    if args.command == "check":
        return cmd_check(_config_path(config))
    if args.command == "simulate":
        if args.platform == "telegram":
            return cmd_simulate_telegram(args)
        return cmd_simulate_qqbot(args)
    if args.command == "jobs":
        from hermes.jobrunner import cli as jobs_cli

        loaded = _load(_config_path(config))
        if loaded is None:
            return EXIT_NOT_RETRYABLE
        return jobs_cli.main(args, loaded)
    parser.print_help(sys.stderr)
    return 2
