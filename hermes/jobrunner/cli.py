"""``hermes jobs``: list, run, pause, resume scheduled jobs, and read their history.

The CLI talks to the running gateway only through the database: ``run`` inserts a
``requested`` row in ``job_runs`` that the gateway claims (within ``runner.request_poll``);
``pause``/``resume`` change APScheduler's job store, which the gateway re-reads as often.
Exit codes: 0 done; 1 the run failed (``run --wait``); 2 unknown job, bad arguments, a
missing or unusable state store, or no gateway picked the run up in time; 78 invalid
configuration. ``list`` and ``history`` only read: they create and change nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from hermes.config import GatewayConfig
from hermes.jobrunner.ledger import Ledger
from watchdog.clipping import quote
from watchdog.states import FAILED_RUNS
from watchdog.table import age, local_time, render

RUN_FAILED = 1
USAGE = 2


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``hermes jobs`` and its actions, each with the ``parents``' options (``--config``),
    so that they are accepted before and after the action."""
    jobs: argparse.ArgumentParser = sub.add_parser(
        "jobs", parents=parents, help="scheduled jobs: list, run, pause, resume, history"
    )
    actions = jobs.add_subparsers(dest="jobs_command", required=True)
    actions.add_parser(
        "list",
        parents=parents,
        help="every configured job: schedule, next run, last run, failures",
    )
    run = actions.add_parser(
        "run", parents=parents, help="ask the running gateway to run a job now"
    )
    run.add_argument("name")
    run.add_argument(
        "--wait", action="store_true", help="wait for the run to end and print its result"
    )
    run.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="how long to wait (default 120)",
    )
    for verb in ("pause", "resume"):
        p = actions.add_parser(verb, parents=parents, help=f"{verb} a job's schedule")
        p.add_argument("name")
    history = actions.add_parser(
        "history", parents=parents, help="recent runs (of one job or route)"
    )
    history.add_argument("name", nargs="?")
    history.add_argument("--limit", type=int, default=20, metavar="N")
    return jobs


def main(args: argparse.Namespace, config: GatewayConfig) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from watchdog.exceptions import StoreError
    from watchdog.store import StateStore

    command = args.jobs_command
    if command not in ("list", "history") and args.name not in {j.name for j in config.jobs}:
        known = ", ".join(sorted(j.name for j in config.jobs)) or "none"
        print(
            f"hermes jobs: no job named {quote(args.name)} in {config.path} (configured: {known})",
            file=sys.stderr,
        )
        return USAGE
    if command == "history" and args.limit <= 0:
        print(f"hermes jobs: --limit must be positive, got {args.limit}", file=sys.stderr)
        return USAGE
    try:
        # Read-only first: it creates nothing, and refuses a missing, foreign or newer store,
        # which a run request or a pause must not be written into either.
        reader = StateStore(config.database_url, read_only=True)
        try:

            def read() -> Any:
                reader.check_readable()
                ledger = Ledger(reader.engine)
                if command == "list":
                    return job_rows(config, ledger)
                if command == "history":
                    return ledger.runs(args.name, args.limit)
                return None

            found = reader.read_consistently(read)
        finally:
            reader.close()
        if command == "list":
            return print_jobs(found)
        if command == "history":
            return print_history(found, args.name)
        store = StateStore(config.database_url)
        try:
            if command == "run":
                return run_job(Ledger(store.engine), args.name, args.wait, args.timeout)
            return pause_or_resume(store, args.name, command)
        finally:
            store.close()
    except StoreError as exc:
        print(f"hermes jobs: {exc}", file=sys.stderr)
        return USAGE
    except SQLAlchemyError as exc:
        print(f"hermes jobs: cannot read the state store: {exc}", file=sys.stderr)
        return USAGE


def _next_runs(ledger: Ledger) -> dict[str, float | None]:
    from sqlalchemy import select

    from watchdog.schema import apscheduler_jobs

    with ledger.engine.connect() as conn:
        rows = conn.execute(select(apscheduler_jobs.c.id, apscheduler_jobs.c.next_run_time)).all()
    return {r.id: r.next_run_time for r in rows}


def job_rows(config: GatewayConfig, ledger: Ledger) -> list[list[str]]:
    """One table row per configured job: schedule, next run, last run, failures in the hour."""
    from sqlalchemy import func, select

    from watchdog.schema import job_runs

    if not config.jobs:
        return []
    stored = _next_runs(ledger)
    now = datetime.now(UTC)
    hour_ago = now - timedelta(hours=1)
    rows = []
    with ledger.engine.connect() as conn:
        for job in config.jobs:
            last = conn.execute(
                select(job_runs.c.status, job_runs.c.finished_at)
                .where(job_runs.c.name == job.name, job_runs.c.finished_at.is_not(None))
                .order_by(job_runs.c.finished_at.desc())
                .limit(1)
            ).first()
            failures = conn.execute(
                select(func.count()).where(
                    job_runs.c.name == job.name,
                    job_runs.c.status.in_(FAILED_RUNS),
                    job_runs.c.finished_at >= hour_ago,
                )
            ).scalar()
            schedule = job.cron or (
                f"every {job.interval:g} s" if job.interval else f"at {job.date}"
            )
            next_ts = stored.get(job.name)
            if job.name not in stored:
                next_run = "(starts with the gateway)"
            elif next_ts is None:
                next_run = "paused"
            else:
                next_run = local_time(datetime.fromtimestamp(next_ts, UTC))
            last_text = (
                f"{last.status} {age((now - last.finished_at).total_seconds())} ago"
                if last
                else "-"
            )
            rows.append(
                [
                    job.name,
                    schedule,
                    next_run,
                    last_text,
                    str(failures or 0),
                    f"{job.action} -> {', '.join(job.targets)}",
                ]
            )
    return rows


def print_jobs(rows: list[list[str]]) -> int:
    if not rows:
        print("no jobs configured")
        return 0
    print(render(["JOB", "SCHEDULE", "NEXT RUN", "LAST RUN", "FAILED (1h)", "ACTION"], rows))
    return 0


def print_history(rows: list[dict[str, Any]], name: str | None) -> int:
    if not rows:
        print("no runs recorded" + (f" for {name}" if name else ""))
        return 0
    table = []
    for r in rows:
        when = r["started_at"] or r["scheduled_for"] or r["requested_at"]
        took = (
            (r["finished_at"] - r["started_at"]).total_seconds()
            if r["finished_at"] and r["started_at"]
            else None
        )
        table.append(
            [
                local_time(when),
                r["name"],
                r["trigger"],
                r["status"],
                "-" if took is None else f"{took:.2f}s",
                (r["error"] or r["output"] or "").replace("\n", " "),
            ]
        )
    print(render(["STARTED", "NAME", "TRIGGER", "STATUS", "TOOK", "ERROR / OUTPUT"], table))
    return 0


def run_job(ledger: Ledger, name: str, wait: bool, timeout: float) -> int:
    run_id = ledger.request_run(name)
    print(f"requested run {run_id} of {name}")
    if not wait:
        return 0
    deadline = time.monotonic() + timeout
    row: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        row = ledger.run(run_id)
        if row is not None and row["status"] not in ("requested", "running"):
            break
        time.sleep(0.2)  # another process does the work; there is nothing to await here
    else:
        state = row["status"] if row else "requested"
        hint = "is the gateway running?" if state == "requested" else "still running"
        print(f"run {run_id}: {state} after {timeout:g} s ({hint})", file=sys.stderr)
        return USAGE
    assert row is not None
    print(f"run {run_id}: {row['status']}")
    if row["output"]:
        print(row["output"])
    if row["error"]:
        print(f"error: {row['error']}")
    return 0 if row["status"] == "ok" else RUN_FAILED


def pause_or_resume(store: Any, name: str, verb: str) -> int:
    from apscheduler.jobstores.base import JobLookupError
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    scheduler = BackgroundScheduler(jobstores={"default": SQLAlchemyJobStore(engine=store.engine)})
    scheduler.start(paused=True)  # only to edit the job store; runs nothing
    try:
        if verb == "pause":
            scheduler.pause_job(name)
        else:
            scheduler.resume_job(name)
    except JobLookupError:
        print(
            f"hermes jobs: {name} is configured but not in the job store yet (start the gateway once)",
            file=sys.stderr,
        )
        return USAGE
    finally:
        scheduler.shutdown(wait=False)
    print(f"{name}: {verb}d (the gateway picks it up within a few seconds)")
    return 0
