"""Shared pieces of the benchmarks: statistics, tables, results, the machine they ran on.

Every benchmark module has ``run(quick: bool) -> Section``; ``run_all.py`` runs them, prints
each table, writes ``bench/results/latest.json`` and regenerates ``BENCHMARKS.md``.
Nothing here is a test: targets are reported as met or MISSED, never asserted.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"


@dataclass
class Section:
    """One benchmark's table."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    """Raw numbers, for the JSON."""

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])

    def markdown(self) -> str:
        lines = [
            f"### {self.title}",
            "",
            "| " + " | ".join(self.columns) + " |",
            "|" + "---|" * len(self.columns),
        ]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        if self.notes:
            lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p95(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def verdict(value: float, limit: float) -> str:
    return "met" if value <= limit else "**MISSED**"


def fresh_pg_schema() -> tuple[str, Callable[[], None]]:
    """A new schema in the test PostgreSQL (HERMES_TEST_POSTGRES_URL): its URL and a dropper."""
    from tests.support.pg import create_schema

    return create_schema("hermes_bench")


def save(sections: list[Section], path: Path | None = None) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = path or RESULTS / "latest.json"
    out.write_text(
        json.dumps(
            {"machine": machine(), "sections": [asdict(s) for s in sections]}, indent=2, default=str
        )
    )
    return out
