"""Logging: loguru, one line per event, bound context (``platform=...``) as ``key=value``.

Under systemd (``$JOURNAL_STREAM`` names our stderr) lines carry an ``<N>`` syslog
priority prefix instead of a timestamp, so journald files them at the right level.
Tracebacks never include local variables (``diagnose=False``): they may hold secrets.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

from loguru import logger

_PRIORITY = {
    "TRACE": 7,
    "DEBUG": 7,
    "INFO": 6,
    "SUCCESS": 5,
    "WARNING": 4,
    "ERROR": 3,
    "CRITICAL": 2,
}


def _context(record: Any) -> None:
    extra = record["extra"]
    pairs = " ".join(f"{k}={v}" for k, v in extra.items() if not k.startswith("_"))
    extra["_kv"] = pairs + " " if pairs else ""
    extra["_prio"] = _PRIORITY.get(record["level"].name, 6)


def under_journal(stream: TextIO) -> bool:
    """True when ``stream`` is the journal stream systemd connected us to."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return bool(value) and (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        return False


class _Intercept(logging.Handler):
    """Send the stdlib logging of libraries (APScheduler, SQLAlchemy, alembic) to loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).bind(lib=record.name).log(
            level, record.getMessage()
        )


def setup_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    logger.remove()
    logger.configure(patcher=_context)
    if under_journal(stream):
        fmt = "<{extra[_prio]}>{level: <8} {extra[_kv]}{message}"
    else:
        fmt = "{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <8} {extra[_kv]}{message}"
    logger.add(stream, format=fmt, level=level, colorize=False, backtrace=False, diagnose=False)
    logging.basicConfig(handlers=[_Intercept()], level=logging.INFO, force=True)
    for noisy in ("apscheduler", "sqlalchemy", "alembic", "websockets", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
