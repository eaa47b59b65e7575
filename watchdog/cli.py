"""``hermes-watchdog``: what the watchdog saw, read from the state store.

``status`` exits like a Nagios plugin: 0 ok, 1 degraded, 2 fatal or gateway not
ticking, 3 unknown (no store, no instance, unreadable store, bad arguments).
It reads the store read-only and works after the gateway died.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

from watchdog.clipping import quote
from watchdog.exceptions import ConfigError, StoreError
from watchdog.states import FAILED_RUNS
from watchdog.table import age, local_time, render

OK, DEGRADED, CRITICAL, UNKNOWN = 0, 1, 2, 3
DEFAULT_CONFIG = "/etc/hermes/gateway.toml"
STALE_TICKS = 3
STALE_FLOOR = 5.0
JOB_FAILURES = 3
STUCK_PENDING = 300.0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        from watchdog.clipping import clip_message

        # argparse exits 2, which a monitoring system would read as CRITICAL.
        self.print_usage(sys.stderr)
        self.exit(UNKNOWN, f"{self.prog}: error: {clip_message(message)}\n")


def _source_options() -> _Parser:
    """``--config``/``--database``/``--json``, accepted before and after the command.

    ``SUPPRESS`` defaults: a subcommand's parser writes its defaults into the namespace
    the main parser already filled, and would reset an option given before the command."""
    common = _Parser(add_help=False)
    group = common.add_mutually_exclusive_group()
    group.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"gateway configuration whose [store] to read (default: $HERMES_CONFIG or {DEFAULT_CONFIG})",
    )
    group.add_argument(
        "--database",
        metavar="URL",
        default=argparse.SUPPRESS,
        help="SQLAlchemy URL of the state store",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _source_options()
    parser = _Parser(
        prog="hermes-watchdog",
        description="Read what the hermes watchdog recorded: platform health and history.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    status = sub.add_parser(
        "status",
        parents=[common],
        help="one row per platform; exit 0 ok, 1 degraded, 2 fatal, 3 unknown",
    )
    status.add_argument(
        "--stale-after",
        metavar="SECONDS",
        type=float,
        help=f"call the gateway not ticking after this long without a tick "
        f"(default: {STALE_TICKS} tick intervals, at least {STALE_FLOOR:g} s)",
    )
    history = sub.add_parser(
        "history", parents=[common], help="state and health transitions, oldest first"
    )
    history.add_argument("platform", nargs="?", help="only this platform")
    history.add_argument(
        "--since", metavar="WHEN", help='e.g. "30m", "2h", "1d" or an ISO date/time'
    )
    history.add_argument(
        "--limit", type=int, default=50, metavar="N", help="newest N rows (default 50)"
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The arguments, with the common options defaulted wherever they were (not) given."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Given on both sides of the command, --config and --database escape the group's check.
    if getattr(args, "config", None) is not None and getattr(args, "database", None) is not None:
        parser.error("argument --database: not allowed with argument --config")
    for name, default in (("config", None), ("database", None), ("json", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    return args


# -- reports


class StatusReport:
    """The verdict and what it was drawn from. A plain class: ``dataclasses`` would cost the
    status command more to import than it takes to read the store."""

    __slots__ = (
        "checked_at",
        "exit_code",
        "inbox",
        "instance",
        "jobs",
        "outbox",
        "overall",
        "platforms",
        "store",
        "summary",
    )

    def __init__(
        self,
        overall: str,
        exit_code: int,
        summary: str,
        checked_at: datetime,
        store: str | None = None,
        instance: dict[str, Any] | None = None,
        platforms: list[dict[str, Any]] | None = None,
        jobs: list[dict[str, Any]] | None = None,
        outbox: dict[str, Any] | None = None,
        inbox: dict[str, Any] | None = None,
    ) -> None:
        self.overall = overall
        self.exit_code = exit_code
        self.summary = summary
        self.checked_at = checked_at
        self.store = store
        self.instance = instance
        self.platforms: list[dict[str, Any]] = [] if platforms is None else platforms
        self.jobs: list[dict[str, Any]] = [] if jobs is None else jobs
        self.outbox = outbox
        self.inbox = inbox

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in _REPORT_FIELDS)
        return f"StatusReport({fields})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StatusReport):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in _REPORT_FIELDS)

    __hash__ = None  # type: ignore[assignment]


_REPORT_FIELDS = (
    "overall",
    "exit_code",
    "summary",
    "checked_at",
    "store",
    "instance",
    "platforms",
    "jobs",
    "outbox",
    "inbox",
)


def _seconds(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else (now - then).total_seconds()


def assess(
    instance: Mapping[str, Any] | None,
    platforms: Sequence[Mapping[str, Any]],
    now: datetime,
    stale_after: float | None = None,
    jobs: Sequence[Mapping[str, Any]] = (),
    outbox: Mapping[str, Any] | None = None,
    process: tuple[bool | None, str] = (None, ""),
    inbox: Mapping[str, Any] | None = None,
) -> StatusReport:
    """Turn stored rows into a verdict; pure, ``now`` is passed in.

    ``process`` is what :func:`gateway_process` found about the instance's process: a
    gateway whose process is gone is dead at once, without waiting for its ticks to go stale.
    Besides the platforms: a route or job whose latest run failed, with at least
    ``JOB_FAILURES`` failures in the last hour, is degraded; so are outgoing messages that
    failed in the last hour or a message pending for longer than ``STUCK_PENDING``; and
    inbound messages: a gap recorded in the last hour, or a stored message waiting for its
    run for longer than ``STUCK_PENDING``."""
    report = _assess_platforms(instance, platforms, now, stale_after, process)
    report.jobs = [dict(j) for j in jobs]
    report.outbox = None if outbox is None else dict(outbox)
    report.inbox = None if inbox is None else dict(inbox)
    if report.overall not in ("ok", "degraded"):
        return report
    problems = [
        f"{j['kind']} {j['name']} failing ({j['failures']} failures in the last hour, last: {j['last_status']})"
        for j in jobs
        if j["last_status"] in FAILED_RUNS and j["failures"] >= JOB_FAILURES
    ]
    if outbox is not None:
        if outbox["failed_recently"]:
            problems.append(
                f"{outbox['failed_recently']} outgoing messages failed in the last hour"
            )
        oldest = _seconds(now, outbox.get("oldest_pending_at"))
        if oldest is not None and oldest > STUCK_PENDING:
            problems.append(
                f"{outbox['pending']} outgoing messages pending, the oldest for {age(oldest)}"
            )
    if inbox is not None:
        for p in inbox["platforms"]:
            gap_age = _seconds(now, p.get("last_gap_at"))
            if gap_age is not None and gap_age <= 3600:
                problems.append(
                    f"{p['platform']}: inbound gap {age(gap_age)} ago ({p['gaps']} on record): "
                    f"{p.get('last_gap') or ''}".rstrip(": ")
                )
        waited = _seconds(now, inbox.get("oldest_waiting_at"))
        if waited is not None and waited > STUCK_PENDING:
            problems.append(
                f"{inbox['waiting']} inbound messages waiting for a run, the oldest for {age(waited)}"
            )
    if not problems:
        return report
    detail = "; ".join(problems)
    if report.overall == "ok":
        report.overall, report.exit_code, report.summary = (
            "degraded",
            DEGRADED,
            f"WARNING: {detail}",
        )
    else:
        report.summary += f"; {detail}"
    return report


def _assess_platforms(
    instance: Mapping[str, Any] | None,
    platforms: Sequence[Mapping[str, Any]],
    now: datetime,
    stale_after: float | None,
    process: tuple[bool | None, str],
) -> StatusReport:
    rows = []
    for p in platforms:
        row = dict(p)
        row["since_seconds"] = _seconds(now, p.get("health_since"))
        row["heartbeat_age_seconds"] = _seconds(now, p.get("last_heartbeat_at"))
        rows.append(row)
    if instance is None:
        return StatusReport(
            "unknown",
            UNKNOWN,
            "UNKNOWN: no gateway instance recorded in the store",
            now,
            platforms=rows,
        )

    inst = dict(instance)
    interval = float(inst["tick_interval"])
    limit = stale_after if stale_after is not None else max(STALE_TICKS * interval, STALE_FLOOR)
    tick_age = _seconds(now, inst.get("last_tick_at"))
    inst["uptime_seconds"] = _seconds(inst.get("stopped_at") or now, inst["started_at"])
    inst["last_tick_age_seconds"] = tick_age
    alive, why = process if inst.get("stopped_at") is None else (None, "")
    inst["process_alive"] = alive
    ticking = (
        inst.get("stopped_at") is None
        and alive is not False
        and tick_age is not None
        and tick_age <= limit
    )
    inst["ticking"] = ticking

    if inst.get("stopped_at") is not None:
        code = inst.get("exit_code")
        why = f"exit {code}" if code is not None else "no exit code"
        reason = inst.get("exit_reason") or ""
        summary = f"CRITICAL: gateway stopped {age(_seconds(now, inst['stopped_at']))} ago ({why}{': ' + reason if reason else ''})"
        return StatusReport("stopped", CRITICAL, summary, now, instance=inst, platforms=rows)
    last = "never" if tick_age is None else f"{age(tick_age)} ago"
    if alive is False:
        summary = (
            f"CRITICAL: gateway pid {inst['pid']} on {inst['host']} is gone ({why}); "
            f"last tick {last}, no stop recorded: killed or crashed"
        )
        return StatusReport("dead", CRITICAL, summary, now, instance=inst, platforms=rows)
    if not ticking:
        summary = (
            f"CRITICAL: gateway not ticking (last tick {last}, every {interval:g} s): "
            "hung or dead, whatever the platform rows claim"
        )
        return StatusReport("not_ticking", CRITICAL, summary, now, instance=inst, platforms=rows)

    fatal_req = [r for r in rows if r["health"] == "fatal" and r["required"]]
    fatal_opt = [r for r in rows if r["health"] == "fatal" and not r["required"]]
    troubled = [r for r in rows if r["health"] in ("degraded", "failing")]

    def names(rs: list[dict[str, Any]]) -> str:
        return ", ".join(
            f"{r['platform']}"
            + (f": {r['reason_code']}" if r.get("reason_code") else f" ({r['declared_state']})")
            for r in rs
        )

    total = len(rows)
    if fatal_req:
        return StatusReport(
            "fatal",
            CRITICAL,
            f"CRITICAL: {len(fatal_req)} of {total} platforms fatal ({names(fatal_req)})",
            now,
            instance=inst,
            platforms=rows,
        )
    if fatal_opt or troubled:
        parts = []
        if fatal_opt:
            parts.append(f"optional fatal: {names(fatal_opt)}")
        if troubled:
            parts.append(f"degraded: {names(troubled)}")
        return StatusReport(
            "degraded", DEGRADED, "WARNING: " + "; ".join(parts), now, instance=inst, platforms=rows
        )
    return StatusReport(
        "ok", OK, f"OK: {total} of {total} platforms ok", now, instance=inst, platforms=rows
    )


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return _iso(value)


def report_json(report: StatusReport, error: str | None = None) -> str:
    doc = {
        "overall": report.overall,
        "exit_code": report.exit_code,
        "summary": report.summary,
        "checked_at": _iso(report.checked_at),
        "store": report.store,
        "error": error,
        "instance": None
        if report.instance is None
        else {k: _iso(v) for k, v in report.instance.items()},
        "platforms": [{k: _iso(v) for k, v in p.items()} for p in report.platforms],
        "jobs": [{k: _iso(v) for k, v in j.items()} for j in report.jobs],
        "outbox": None if report.outbox is None else {k: _iso(v) for k, v in report.outbox.items()},
        "inbox": None if report.inbox is None else _jsonable(report.inbox),
    }
    import json  # only for --json: the text output is the common case

    return json.dumps(doc, indent=2, ensure_ascii=False)


def _cut_off(inbox: Mapping[str, Any]) -> str:
    """Messages whose run a stop or a crash cancelled, not run again (``on_crash = "cancel"``):
    no answer went out. Shown when there are any."""
    n = inbox.get("cut_off_recently", 0)
    return f", {n} cut off (run cancelled by a stop or crash, not run again)" if n else ""


def _waiting(report: StatusReport, count: int, what: str, oldest_at: datetime | None) -> str:
    """``"3 pending (oldest 2min)"``."""
    oldest = _seconds(report.checked_at, oldest_at)
    return f"{count} {what}" + (f" (oldest {age(oldest)})" if oldest is not None else "")


def report_text(report: StatusReport) -> str:
    lines = [report.summary]
    inst = report.instance
    if inst is not None:
        lines.append(
            f"gateway {inst['id'][:8]} on {inst['host']} pid {inst['pid']} (hermes {inst['version']}), "
            f"up {age(inst['uptime_seconds'])}, last tick {age(inst['last_tick_age_seconds'])} ago "
            f"(every {float(inst['tick_interval']):g} s), "
            + ("pinging systemd" if inst["pinging"] and inst["ticking"] else "NOT pinging systemd")
        )
        if inst.get("store_failures"):
            lines.append(
                f"store: {inst['store_failures']} failed writes, last at {local_time(inst.get('store_last_error_at'))}: "
                f"{inst.get('store_last_error')}"
            )
        if inst.get("status_text"):
            lines.append(f"status: {inst['status_text']}")
    if report.store:
        lines.append(f"store: {report.store}")
    if report.platforms:
        headers = [
            "PLATFORM",
            "ADAPTER",
            "DECLARED",
            "HEALTH",
            "HEARTBEAT/TTL",
            "SINCE",
            "RESTARTS",
            "REASON",
        ]
        rows = []
        for p in report.platforms:
            hb_age = p["heartbeat_age_seconds"]
            hb = f"{age(hb_age)}/{float(p['heartbeat_ttl']):g}s"
            reason = ""
            if p.get("reason_code"):
                reason = f"{p['reason_code']}: {p.get('reason_message') or ''}".rstrip(": ")
            rows.append(
                [
                    p["platform"] + ("" if p["required"] else " (optional)"),
                    p["adapter"],
                    p["declared_state"],
                    p["health"],
                    hb,
                    age(p["since_seconds"]),
                    str(p["restarts"]),
                    reason,
                ]
            )
        lines += ["", render(headers, rows)]
    elif inst is not None:
        lines.append("no platforms configured")
    if report.jobs:
        table = [
            [
                j["name"],
                j["kind"],
                f"{j['last_status']} {age(_seconds(report.checked_at, j['last_finished_at']))} ago",
                str(j["runs"]),
                str(j["failures"]),
                (j.get("last_error") or "") if j["last_status"] != "ok" else "",
            ]
            for j in report.jobs
        ]
        lines += [
            "",
            render(
                ["ROUTE/JOB", "KIND", "LAST RUN", "RUNS (1h)", "FAILED (1h)", "LAST ERROR"], table
            ),
        ]
    box = report.outbox
    if box is not None:
        waiting = _waiting(report, box["pending"], "pending", box.get("oldest_pending_at"))
        lines += [
            "",
            f"outbox: {waiting}, {box['sending']} sending; last hour: "
            f"{box['failed_recently']} failed, {box['expired_recently']} expired",
        ]
    inbox = report.inbox
    if inbox is not None:
        waiting = _waiting(
            report, inbox["waiting"], "waiting for a run", inbox.get("oldest_waiting_at")
        )
        lines += [
            "",
            f"inbox: {waiting}; last hour: {inbox['dead_recently']} dead"
            + _cut_off(inbox)
            + f"; on record: {inbox['gaps']} gaps, {inbox['lost']} lost",
        ]
        for p in inbox["platforms"]:
            if p["gaps"]:
                lines.append(
                    f"  {p['platform']}: last gap {local_time(p.get('last_gap_at'))}: {p.get('last_gap')}"
                )
            if p["lost"]:
                lines.append(f"  {p['platform']}: {p['lost']} lost; last: {p.get('last_lost')}")
    return "\n".join(lines)


# -- the gateway's process

PID_START_TOLERANCE = 5.0
"""Seconds by which a process may seem to have started after the instance row's
``started_at`` and still be that gateway: boot time in /proc/stat is whole seconds,
and the wall clock may have been stepped since."""


def gateway_process(
    host: str, pid: int, started_at: datetime, proc: Path = Path("/proc")
) -> tuple[bool | None, str]:
    """Whether the process that wrote an instance row is still running: ``(False, why)``
    when it is gone or its pid now belongs to another process, ``(True, "")`` when it runs,
    ``(None, why)`` when this host cannot tell (another host, no /proc, a hidden process).

    Only a row naming this host (``socket.gethostname()``, as the gateway writes it) is
    checked: on Linux that is the kernel's node name, which ``os.uname()`` gives without
    importing :mod:`socket`. A pid is reused only after its process died, so a process
    holding the pid that started after the gateway did is another one."""
    if host != os.uname().nodename:
        return None, f"on another host ({host})"
    if pid <= 0:
        return None, f"invalid pid {pid}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, "no such process"
    except PermissionError:
        pass  # it exists, under another user
    except OSError as exc:
        return None, f"cannot signal pid {pid}: {exc.strerror or exc}"
    try:
        stat = (proc / str(pid) / "stat").read_text()
        boot = next(
            float(line.split()[1])
            for line in (proc / "stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        # Fields after "(comm)": state is field 3 of proc(5), starttime field 22.
        fields = stat[stat.rindex(")") + 2 :].split()
        state, start_ticks = fields[0], int(fields[19])
    except (OSError, ValueError, IndexError, StopIteration):
        return None, f"cannot read {proc}/{pid}/stat"
    if state in ("Z", "X"):
        return False, "exited; a zombie its parent has not reaped"
    started = datetime.fromtimestamp(boot + start_ticks / os.sysconf("SC_CLK_TCK"), UTC)
    if started > started_at + timedelta(seconds=PID_START_TOLERANCE):
        return False, f"pid {pid} now belongs to another process, started {local_time(started)}"
    return True, ""


# -- commands


def _database(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    if args.database:
        from watchdog import secrets

        if secrets.is_reference(args.database):
            return secrets.resolve(args.database, base_dir=Path.cwd(), environ=environ).reveal()
        return str(args.database)
    from watchdog.storeurl import store_url_quickly

    config = Path(args.config or environ.get("HERMES_CONFIG") or DEFAULT_CONFIG)
    url = store_url_quickly(config, environ)
    if url is not None:
        return url
    # Something to report about [store]: the full validation words it.
    from watchdog.settings import store_url_from_config

    return store_url_from_config(config, environ)


def _open(args: argparse.Namespace, environ: Mapping[str, str]) -> Any:
    """The store, read-only: through its driver alone (:mod:`watchdog.reader`) when the URL
    allows, else through SQLAlchemy."""
    from watchdog.reader import open_reader

    url = _database(args, environ)
    reader = open_reader(url)
    if reader is not None:
        return reader
    from watchdog.store import StateStore

    return StateStore(url, read_only=True)


def cmd_status(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    now = datetime.now(UTC)
    hour_ago = now - timedelta(hours=1)
    store = None

    def read(store: Any) -> tuple[Any, ...]:
        store.check_readable()
        return (
            store.latest_instance(),
            store.platforms(),
            store.jobs_summary(hour_ago),
            store.outbox_summary(hour_ago),
            store.inbox_summary(hour_ago),
        )

    try:
        store = _open(args, environ)
        instance, platforms, jobs, outbox, inbox = store.read_consistently(lambda: read(store))
        process: tuple[bool | None, str] = (None, "")
        if instance is not None and instance.get("stopped_at") is None:
            process = gateway_process(instance["host"], instance["pid"], instance["started_at"])
        report = assess(instance, platforms, now, args.stale_after, jobs, outbox, process, inbox)
        report.store = store.name
    except (StoreError, ConfigError, ValueError) as exc:
        report = StatusReport("unknown", UNKNOWN, f"UNKNOWN: {exc}", now)
        print(report_json(report, str(exc)) if args.json else report.summary)
        return UNKNOWN
    finally:
        if store is not None:
            store.close()
    print(report_json(report) if args.json else report_text(report))
    return report.exit_code


_SINCE = r"(\d+(?:\.\d+)?)\s*(s|m|min|h|d)"
"""Compiled on first use (by :func:`re.fullmatch`): ``status`` never needs it."""


def parse_since(text: str, now: datetime) -> datetime:
    """``"30m"``/``"2h"``/``"1d"`` back from ``now``, or an ISO 8601 time (local if no offset)."""
    match = re.fullmatch(_SINCE, text.strip())
    if match:
        unit = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}[match.group(2)]
        try:
            return now - timedelta(seconds=float(match.group(1)) * unit)
        except OverflowError:
            raise ValueError(f"--since: {quote(text)} reaches back before year 1") from None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f'--since: expected a duration like "30m", "2h", "1d" or an ISO date/time, got {quote(text)}'
        ) from None
    return when.astimezone() if when.tzinfo is None else when


def cmd_history(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    now = datetime.now(UTC)
    if args.limit <= 0:
        print(f"hermes-watchdog: --limit must be positive, got {args.limit}", file=sys.stderr)
        return UNKNOWN
    store = None
    try:
        since = parse_since(args.since, now) if args.since else None
        store = _open(args, environ)

        def read() -> tuple[list[dict[str, Any]], set[str]]:
            store.check_readable()
            rows = store.transitions(args.platform, since, args.limit)
            return rows, {p["platform"] for p in store.platforms()}

        rows, known = store.read_consistently(read)
    except (StoreError, ConfigError, ValueError) as exc:
        print(f"hermes-watchdog: {exc}", file=sys.stderr)
        return UNKNOWN
    finally:
        if store is not None:
            store.close()
    if args.platform and not rows and args.platform not in known:
        listing = ", ".join(sorted(known)) or "none"
        print(
            f"hermes-watchdog: no platform {quote(args.platform)} in the store (known: {listing})",
            file=sys.stderr,
        )
        return UNKNOWN
    if args.json:
        import json

        print(
            json.dumps(
                [{k: _iso(v) for k, v in r.items()} for r in rows], indent=2, ensure_ascii=False
            )
        )
        return OK
    if not rows:
        print(
            "no transitions recorded"
            + (f" for {args.platform}" if args.platform else "")
            + (" in that period" if since else "")
        )
        return OK

    def arrow(a: Any, b: Any) -> str:
        if a == b:
            return a or "-"
        return f"{a or '-'} -> {b or '-'}"

    table = [
        [
            local_time(r["at"]),
            r["platform"],
            arrow(r["from_state"], r["to_state"]),
            arrow(r["from_health"], r["to_health"]),
            f"{r['reason_code']}: {r['reason_message'] or ''}".rstrip(": ")
            if r["reason_code"]
            else "",
        ]
        for r in rows
    ]
    print(render(["AT", "PLATFORM", "DECLARED", "HEALTH", "REASON"], table))
    return OK


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = parse_args(argv)
    env = os.environ if environ is None else environ
    if args.command == "status":
        return cmd_status(args, env)
    return cmd_history(args, env)
