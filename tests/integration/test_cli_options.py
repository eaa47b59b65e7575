"""Options go where operators type them: before or after the (sub)command, for every command.

``main(argv)`` for most; the issue's own case (``hermes jobs list --config F``) and one of
``hermes-watchdog`` also as subprocesses.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hermes.cli import main as hermes_main
from tests.support.proc import HERMES, HERMES_WATCHDOG, run_cli
from watchdog.cli import main as watchdog_main
from watchdog.store import StateStore


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A valid configuration with one job, its store migrated (no gateway ever ran)."""
    path = tmp_path / "gw.toml"
    path.write_text(
        '[store]\ndirectory = "state"\n[platforms.bot]\nadapter = "demo"\n'
        '[[jobs]]\nname = "daily"\ninterval = "1h"\naction = "send"\ntext = "hi"\n'
        'targets = ["bot:group:G"]\n'
    )
    store = StateStore(f"sqlite:///{tmp_path / 'state' / 'hermes.db'}")
    store.migrate()
    store.close()
    return path


def placements(command: list[str], option: list[str]) -> list[list[str]]:
    """``option`` before the command, after it, and (for a subcommand) between the two."""
    out = [option + command, command + option]
    if len(command) == 2:
        out.append(command[:1] + option + command[1:])
    return out


HERMES_COMMANDS = {
    # argv, expected exit, text expected in stdout + stderr (proves the file was read)
    "check": (["check"], 0, "{config}: ok"),
    "jobs list": (["jobs", "list"], 0, "daily"),
    "jobs history": (["jobs", "history"], 0, "no runs recorded"),
    "jobs run": (["jobs", "run", "nightly"], 2, "no job named 'nightly' in {config}"),
    "jobs pause": (["jobs", "pause", "nightly"], 2, "no job named 'nightly' in {config}"),
    "jobs resume": (["jobs", "resume", "nightly"], 2, "no job named 'nightly' in {config}"),
}


@pytest.mark.parametrize("name", HERMES_COMMANDS)
def test_hermes_takes_config_before_and_after_every_command(name, config, capsys):
    argv, code, text = HERMES_COMMANDS[name]
    for args in placements(argv, ["--config", str(config)]):
        assert hermes_main(args) == code, args
        out = capsys.readouterr()
        assert text.format(config=config) in out.out + out.err, args


def test_hermes_run_takes_config_before_and_after(tmp_path, capsys):
    # A rejected file proves which one was read, without starting a gateway.
    bad = tmp_path / "bad.toml"
    bad.write_text('[platforms.bot]\nadapter = "demo"\nbogus = 1\n')
    for args in placements(["run"], ["--config", str(bad)]):
        assert hermes_main(args) == 78, args
        err = capsys.readouterr().err
        assert f"hermes: invalid configuration in {bad}:" in err
        assert "platforms.bot.bogus: unknown key" in err


def test_the_last_config_given_wins(config, tmp_path, capsys):
    other = tmp_path / "missing.toml"
    assert hermes_main(["--config", str(other), "jobs", "list", "--config", str(config)]) == 0
    assert "daily" in capsys.readouterr().out


def test_hermes_jobs_list_config_after_the_action_as_a_subprocess(config):
    result = run_cli(HERMES, "jobs", "list", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "daily" in result.stdout


@pytest.fixture
def database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'wd' / 'hermes.db'}"
    store = StateStore(url)
    store.migrate()
    store.close()
    return url


@pytest.mark.parametrize("command", [["status"], ["history"]])
def test_hermes_watchdog_takes_its_options_before_and_after_the_command(
    command, database, tmp_path, capsys
):
    config = tmp_path / "gw.toml"
    config.write_text(f'[store]\nurl = "{database}"\n')
    # No instance recorded: status says unknown (3), history lists nothing (0); --json shows.
    code = 3 if command == ["status"] else 0
    for source in (["--database", database], ["--config", str(config)]):
        split = [["--json", *command, *source], [*source, *command, "--json"]]
        for args in [*placements(command, [*source, "--json"]), *split]:
            assert watchdog_main(args, environ={}) == code, args
            doc = json.loads(capsys.readouterr().out)
            if command == ["status"]:
                assert doc["overall"] == "unknown"
            else:
                assert doc == []


def test_hermes_watchdog_options_before_the_command_as_a_subprocess(database):
    result = run_cli(HERMES_WATCHDOG, "--json", "--database", database, "history")
    assert (result.returncode, json.loads(result.stdout)) == (0, [])


def test_config_and_database_stay_exclusive_across_the_command(database, capsys):
    for args in (
        ["--config", "a.toml", "status", "--database", database],
        ["--database", database, "history", "--config", "a.toml"],
    ):
        with pytest.raises(SystemExit) as info:
            watchdog_main(args, environ={})
        assert info.value.code == 3
        assert "not allowed with argument" in capsys.readouterr().err


def test_hermes_check_prints_a_short_error_for_a_5mb_value(tmp_path):
    huge = 5 * 1024 * 1024
    path = tmp_path / "gw.toml"
    path.write_text(f'[platforms.bot]\nadapter = "demo"\nstart_timeout = "{"9" * huge}x"\n')
    result = run_cli(HERMES, "check", "--config", str(path))
    assert result.returncode == 78
    assert len(result.stderr) < 1000, result.stderr[:1000]
    assert f"hermes: invalid configuration in {path}:" in result.stderr
    assert "platforms.bot.start_timeout: expected a duration" in result.stderr
    assert f"(got '{'9' * 80}'… ({huge + 1} characters))" in result.stderr
