"""``hermes``: run the gateway, check a configuration, run the demonstration.

Exit codes of ``hermes run`` (a public contract, see the README): 0 clean stop;
75 escalation, restart wanted; 78 configuration or non-retryable error, a restart
will not help (``RestartPreventExitStatus=78``); 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from watchdog.engine import EXIT_NOT_RETRYABLE
from watchdog.exceptions import ConfigError

if TYPE_CHECKING:
    from hermes.config import GatewayConfig

EXIT_UNEXPECTED = 1
DEFAULT_CONFIG = "/etc/hermes/gateway.toml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hermes", description="A chat-platform gateway that is never silently dead."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the gateway in the foreground (systemd Type=notify)")
    run.add_argument(
        "--config",
        metavar="FILE",
        help=f"configuration file (default: $HERMES_CONFIG or {DEFAULT_CONFIG})",
    )
    check = sub.add_parser("check", help="validate a configuration file; exit 0 or 78")
    check.add_argument(
        "--config",
        metavar="FILE",
        help=f"configuration file (default: $HERMES_CONFIG or {DEFAULT_CONFIG})",
    )
    return parser


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
    from hermes.runner import Gateway, run_gateway

    try:
        return run_gateway(Gateway(config))
    except Exception:
        logger.exception("gateway failed unexpectedly")
        return EXIT_UNEXPECTED


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        import hermes

        print(f"hermes-gateway {hermes.__version__}")
        return 0
    if args.command == "run":
        return cmd_run(_config_path(args.config))
    if args.command == "check":
        return cmd_check(_config_path(args.config))
    parser.print_help(sys.stderr)
    return 2
