"""``make bench``: every benchmark, one table each, then BENCHMARKS.md and results/latest.json.

.venv/bin/python bench/run_all.py [--quick] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import importlib
import time
import traceback

from common import REPO, Section, machine, save

MODULES = [
    "watchdog_cost",
    "detection",
    "throughput",
    "http_clients",
    "telegram_receive",
    "telegram_detection",
    "startup",
    "status_scale",
    "memory",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    parser.add_argument("--only", nargs="*", choices=MODULES, help="run only these")
    args = parser.parse_args()
    m = machine()
    print(
        f"# hermes-gateway benchmarks - {m['cores']} cores, Python {m['python']}, {m['machine']}, {m['date']}\n"
    )
    sections: list[Section] = []
    started = time.monotonic()
    for name in args.only or MODULES:
        t0 = time.monotonic()
        try:
            section = importlib.import_module(name).run(quick=args.quick)
        except Exception:
            section = Section(f"{name}: FAILED", ["error"])
            section.add(traceback.format_exc().splitlines()[-1])
            traceback.print_exc()
        section.notes.append(f"took {time.monotonic() - t0:.0f} s")
        sections.append(section)
        print(section.markdown(), "\n", flush=True)
    path = save(sections)
    write_markdown(sections, m)
    print(f"results: {path}; BENCHMARKS.md updated; total {time.monotonic() - started:.0f} s")


def write_markdown(sections: list[Section], m: dict[str, object]) -> None:
    intro = (REPO / "bench" / "INTRO.md").read_text()
    body = "\n\n".join(s.markdown() for s in sections)
    header = f"Latest run: {m['date']}, {m['cores']} cores, Python {m['python']}, {m['machine']}, {m['system']}."
    (REPO / "BENCHMARKS.md").write_text(f"{intro.rstrip()}\n\n{header}\n\n{body}\n")


if __name__ == "__main__":
    main()
