"""The ``watchdog`` import-name clash with the PyPI file-events library is reported clearly."""

from __future__ import annotations

from pathlib import Path

from tests.support.proc import HERMES, HERMES_WATCHDOG, run_cli


def shadow(tmp_path: Path) -> dict[str, str]:
    """A stand-in for PyPI's watchdog (its layout: events, observers), first on sys.path."""
    pkg = tmp_path / "shadow" / "watchdog"
    (pkg / "observers").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""File system events library (stand-in)."""\n')
    (pkg / "events.py").write_text("class FileSystemEvent: ...\n")
    (pkg / "observers" / "__init__.py").write_text("class Observer: ...\n")
    return {"PYTHONPATH": str(tmp_path / "shadow")}


def test_hermes_refuses_with_a_clear_message_and_exit_78(tmp_path):
    result = run_cli(HERMES, "run", "--config", "x.toml", env=shadow(tmp_path))
    assert result.returncode == 78
    assert "hermes: 'import watchdog' found" in result.stderr
    assert str(tmp_path / "shadow" / "watchdog" / "__init__.py") in result.stderr
    assert "file-events library 'watchdog' from PyPI" in result.stderr
    assert "Traceback" not in result.stderr


def test_hermes_watchdog_refuses_with_unknown_3(tmp_path):
    result = run_cli(HERMES_WATCHDOG, "status", env=shadow(tmp_path))
    assert result.returncode == 3
    assert result.stderr.startswith("UNKNOWN: hermes-watchdog: 'import watchdog' found")
    assert "Traceback" not in result.stderr


def test_without_a_clash_the_scripts_run(tmp_path):
    assert run_cli(HERMES, "--version").stdout.startswith("hermes-gateway ")
