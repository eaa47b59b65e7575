"""Plain-text tables for terminals and pipes; CJK text counts two columns."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from datetime import datetime


def width(text: str) -> int:
    if text.isascii():
        return len(text)  # every ASCII character is one column (and most cells are ASCII)
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def clip(text: str, limit: int) -> str:
    if width(text) <= limit:
        return text
    out, used = [], 0
    for ch in text:
        w = width(ch)
        if used + w > limit - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


def render(headers: Sequence[str], rows: Sequence[Sequence[str]], *, last_max: int = 80) -> str:
    """Left-aligned columns separated by two spaces; the last column is clipped to ``last_max``."""
    rows = [[*r[:-1], clip(r[-1], last_max)] if r else [] for r in rows]
    header_widths = [width(h) for h in headers]
    cell_widths = [[width(c) for c in row] for row in rows]
    widths = list(header_widths)
    for row_widths in cell_widths:
        for i, w in enumerate(row_widths):
            widths[i] = max(widths[i], w)

    def line(cells: Sequence[str], cell_widths: Sequence[int]) -> str:
        parts = [c + " " * (widths[i] - cell_widths[i]) for i, c in enumerate(cells)]
        return "  ".join(parts).rstrip()

    return "\n".join(
        [
            line(headers, header_widths),
            *(line(r, w) for r, w in zip(rows, cell_widths, strict=True)),
        ]
    )


def local_time(value: datetime | None) -> str:
    """``2026-11-21 09:58:27`` in the machine's time zone; ``-`` for unknown."""
    return "-" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def age(seconds: float | None) -> str:
    """``4s``, ``3m12s``, ``2h05m``, ``3d04h``; ``-`` for unknown."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if seconds < 10:
        return f"{max(0.0, seconds):.1f}s"
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
