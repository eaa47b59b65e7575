"""Configuration: every bad input is named by file and key; secrets are references, never values."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from hermes.adapters.demo import DemoSettings
from hermes.config import load_config
from watchdog.exceptions import ConfigError
from watchdog.secrets import Secret, SecretError, resolve
from watchdog.settings import SecretValue, store_url_from_config

GOOD = """
[platforms.bot]
adapter = "demo"
"""


def write(tmp_path: Path, text: str, name: str = "gw.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ or {})
    assert info.value.source == str(path)
    assert str(path) in str(info.value)
    return info.value.problems


def test_a_minimal_config_gets_documented_defaults(tmp_path):
    cfg = load_config(write(tmp_path, GOOD), {})
    bot = cfg.platforms["bot"]
    assert bot.supervision.required is True
    assert bot.supervision.heartbeat_ttl == 30
    assert bot.supervision.restart_max == 5
    assert cfg.watchdog.tick_interval == 2
    assert cfg.database_url == "sqlite:////var/lib/hermes/hermes.db"


def test_state_directory_comes_from_config_then_systemd_then_default(tmp_path):
    path = write(tmp_path, GOOD)
    assert (
        load_config(path, {"STATE_DIRECTORY": "/srv/a:/srv/b"}).database_url
        == "sqlite:////srv/a/hermes.db"
    )
    path = write(tmp_path, '[store]\ndirectory = "state"\n' + GOOD)
    assert (
        load_config(path, {"STATE_DIRECTORY": "/srv/a"}).database_url
        == f"sqlite:///{tmp_path}/state/hermes.db"
    )


def test_durations_accept_units(tmp_path):
    path = write(
        tmp_path,
        '[watchdog]\ntick_interval = "500ms"\n[platforms.bot]\nadapter = "demo"\nheartbeat_ttl = "2min"\n',
    )
    cfg = load_config(path, {})
    assert cfg.watchdog.tick_interval == 0.5
    assert cfg.platforms["bot"].supervision.heartbeat_ttl == 120


def test_platform_defaults_apply_and_platform_keys_override(tmp_path):
    path = write(
        tmp_path,
        """
        [platform_defaults]
        heartbeat_ttl = 45
        restart_max = 2
        [platforms.a]
        adapter = "demo"
        [platforms.b]
        adapter = "demo"
        restart_max = 9
        """,
    )
    cfg = load_config(path, {})
    assert cfg.platforms["a"].supervision.heartbeat_ttl == 45
    assert cfg.platforms["a"].supervision.restart_max == 2
    assert cfg.platforms["b"].supervision.restart_max == 9


def test_every_problem_is_reported_at_once_with_its_key(tmp_path):
    path = write(
        tmp_path,
        """
        colour = "blue"
        [watchdog]
        tick_interval = -1
        tick_intervall = 3
        [platforms.bot]
        adapter = "demo"
        heartbeat_ttl = "soon"
        die_after = "x"
        typo_key = 1
        [platforms.other]
        adapter = "telepathy"
        [platforms.nokind]
        required = true
        """,
    )
    lines = problems_of(path)
    text = "\n".join(lines)
    assert "colour: unknown top-level key" in text
    assert "watchdog.tick_interval: Input should be greater than 0 (got -1)" in text
    assert "watchdog.tick_intervall: unknown key" in text
    assert "platforms.bot.heartbeat_ttl: expected a duration" in text
    assert "platforms.bot.die_after: expected a duration" in text
    assert "platforms.bot.typo_key: unknown key" in text
    assert "platforms.other.adapter: unknown adapter 'telepathy'" in text
    assert "platforms.nokind.adapter: required key is missing" in text


def test_adapter_settings_errors_are_located_under_the_platform(tmp_path):
    path = write(tmp_path, '[platforms.bot]\nadapter = "demo"\nevent_interval = 0\nbogus = 1\n')
    lines = problems_of(path)
    assert any(
        line.startswith("platforms.bot.event_interval: Input should be greater than 0")
        for line in lines
    )
    assert any(line.startswith("platforms.bot.bogus: unknown key") for line in lines)


def test_backoff_order_is_checked(tmp_path):
    path = write(
        tmp_path,
        '[platforms.bot]\nadapter = "demo"\nrestart_backoff = 90\nrestart_backoff_max = 60\n',
    )
    (line,) = problems_of(path)
    assert "restart_backoff (90 s) exceeds restart_backoff_max (60 s)" in line


def test_no_platforms_is_an_error(tmp_path):
    assert problems_of(write(tmp_path, "[watchdog]\n")) == [
        "platforms: no platform configured; add a [platforms.NAME] table"
    ]


@pytest.mark.parametrize("name", ["-leading-dash", "has space", "x" * 65, "中文"])
def test_bad_platform_names_are_refused(tmp_path, name):
    path = write(tmp_path, f'[platforms."{name}"]\nadapter = "demo"\n')
    (line,) = problems_of(path)
    assert "platform names are" in line


def test_toml_syntax_errors_name_the_line(tmp_path):
    path = write(tmp_path, '[platforms.bot]\nadapter = "demo\n')
    (line,) = problems_of(path)
    assert line.startswith("invalid TOML:")
    assert "line 2" in line


def test_a_missing_file_is_a_config_error(tmp_path):
    assert problems_of(tmp_path / "nope.toml") == ["file not found"]


def test_adapter_by_import_path_must_be_an_adapter(tmp_path):
    lines = problems_of(write(tmp_path, '[platforms.bot]\nadapter = "pathlib:Path"\n'))
    assert lines == ["platforms.bot.adapter: 'pathlib:Path' is not an Adapter subclass"]
    lines = problems_of(write(tmp_path, '[platforms.bot]\nadapter = "no_such_module_x:A"\n'))
    assert lines[0].startswith(
        "platforms.bot.adapter: cannot import adapter module 'no_such_module_x'"
    )


# -- the store URL


def test_a_store_url_with_an_inline_password_is_refused(tmp_path):
    path = write(
        tmp_path, '[store]\nurl = "postgresql+psycopg://hermes:hunter2@db/hermes"\n' + GOOD
    )
    (line,) = problems_of(path)
    assert line.startswith("store.url: contains a password")
    assert "hunter2" not in line


@pytest.mark.parametrize("url", ["mysql://db/hermes", "mssql+pyodbc://db/x", "not a url"])
def test_a_store_url_must_name_sqlite_or_postgresql(tmp_path, url):
    (line,) = problems_of(write(tmp_path, f'[store]\nurl = "{url}"\n' + GOOD))
    assert line.startswith("store.url: ")
    assert "unsupported database" in line or "not a database URL" in line


def test_a_store_url_can_be_a_secret_reference(tmp_path):
    path = write(tmp_path, '[store]\nurl = "env:HERMES_DB"\n' + GOOD)
    url = "postgresql+psycopg://hermes:hunter2@db/hermes"
    cfg = load_config(path, {"HERMES_DB": url})
    assert cfg.database_url == url
    assert "hunter2" not in repr(cfg)
    assert store_url_from_config(path, {"HERMES_DB": url}) == url


def test_a_missing_secret_names_the_reference_not_a_value(tmp_path):
    path = write(tmp_path, '[store]\nurl = "env:HERMES_DB"\n' + GOOD)
    assert problems_of(path) == ["store.url: environment variable HERMES_DB is not set"]


# -- secrets


def test_secret_references_resolve_from_env_file_and_credentials(tmp_path):
    (tmp_path / "token").write_text("s3cret-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "qq").write_text("s3cret-cred")
    env = {"TOKEN": "s3cret-env", "CREDENTIALS_DIRECTORY": str(creds)}
    assert resolve("env:TOKEN", base_dir=tmp_path, environ=env).reveal() == "s3cret-env"
    assert resolve("file:token", base_dir=tmp_path, environ=env).reveal() == "s3cret-file"
    assert resolve("credential:qq", base_dir=tmp_path, environ=env).reveal() == "s3cret-cred"


@pytest.mark.parametrize(
    ("ref", "env", "message"),
    [
        ("hunter2", {}, "must be a secret reference"),
        ("env:", {}, "reference without a name"),
        ("env:NOPE", {}, "environment variable NOPE is not set"),
        ("env:EMPTY", {"EMPTY": ""}, "env:EMPTY is empty"),
        ("file:missing", {}, "does not exist"),
        ("credential:qq", {}, "needs $CREDENTIALS_DIRECTORY"),
        ("credential:../etc", {"CREDENTIALS_DIRECTORY": "/x"}, "must not contain '/'"),
    ],
)
def test_bad_secret_references_are_explained(tmp_path, ref, env, message):
    with pytest.raises(SecretError) as info:
        resolve(ref, base_dir=tmp_path, environ=env)
    assert message in str(info.value)


def test_a_secret_never_shows_its_value():
    secret = Secret("env:TOKEN", "s3cret")
    assert "s3cret" not in repr(secret)
    assert "s3cret" not in str(secret)
    assert "s3cret" not in f"{secret} {[secret]} {secret!r}"


def test_secret_fields_in_adapter_settings_resolve_with_the_config_context(tmp_path):
    class WithToken(DemoSettings):
        token: SecretValue

    settings = WithToken.model_validate(
        {"token": "env:T"}, context={"base_dir": tmp_path, "environ": {"T": "v"}}
    )
    assert settings.token.reveal() == "v"
    assert "v'" not in repr(settings)
    with pytest.raises(ValueError, match="secrets are never written inline"):
        WithToken.model_validate(
            {"token": "plaintext"}, context={"base_dir": tmp_path, "environ": {}}
        )


def test_qqbot_settings_are_validated_under_the_platform(tmp_path):
    path = write(
        tmp_path,
        """
        [platforms.qq]
        adapter = "qqbot"
        client_secret = "hunter2"
        api_base = "ftp://example"
        intents = ["GROUP_AND_C2C_EVENT", "EVERYTHING"]
        """,
    )
    text = "\n".join(problems_of(path, {}))
    assert "platforms.qq.app_id: required key is missing" in text
    assert "platforms.qq.client_secret: must be a secret reference" in text
    assert "hunter2" not in text
    assert "platforms.qq.api_base: expected an http:// or https:// URL" in text
    assert "platforms.qq.intents: unknown intent 'EVERYTHING'" in text


def test_a_qqbot_platform_pointed_at_a_simulator_loads(tmp_path):
    path = write(
        tmp_path,
        """
        [platforms.qq]
        adapter = "qqbot"
        app_id = "102000001"
        client_secret = "env:QQ_SECRET"
        api_base = "http://127.0.0.1:8081"
        token_url = "http://127.0.0.1:8081/app/getAppAccessToken"
        """,
    )
    cfg = load_config(path, {"QQ_SECRET": "s3cret"})
    settings = cfg.platforms["qq"].settings
    assert settings.client_secret.reveal() == "s3cret"  # type: ignore[attr-defined]
    assert "s3cret" not in repr(settings)


# -- huge values are clipped in every message that echoes them

HUGE = 5 * 1024 * 1024


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        # a value echoed by the reporter ("got ...")
        (
            '[platforms.bot]\nadapter = "demo"\nheartbeat_ttl = "{huge}"\n',
            "platforms.bot.heartbeat_ttl",
        ),
        # a value echoed by an adapter's own validator (no blanks)
        (
            '[platforms.bot]\nadapter = "qqbot"\napp_id = "1"\nclient_secret = "env:S"\n'
            'api_base = "{huge}"\n',
            "platforms.bot.api_base",
        ),
        # a value with blanks, echoed by a validator deep inside
        (
            '[platforms.bot]\nadapter = "demo"\n[[jobs]]\nname = "j"\ncron = "{spaced}"\n'
            'action = "send"\ntext = "x"\ntargets = ["bot:group:G"]\n',
            "jobs[1]",
        ),
        # a key
        ('{huge} = 1\n[platforms.bot]\nadapter = "demo"\n', "unknown top-level key"),
        ('[platforms.bot]\nadapter = "demo"\n{huge} = 1\n', "unknown key"),
        # a platform name, also echoed in the list of configured platforms
        (
            '[platforms.{huge}]\nadapter = "demo"\n[[routes]]\nplatform = "x"\nhandler = "echo"\n',
            "platforms.",
        ),
    ],
    ids=[
        "got-value",
        "validator-value",
        "validator-spaced-value",
        "top-level-key",
        "platform-key",
        "platform-name",
    ],
)
def test_a_5mb_value_makes_a_short_error_naming_the_key_and_file(tmp_path, toml, key):
    path = write(
        tmp_path,
        toml.replace("{huge}", "x" * HUGE).replace("{spaced}", "1 " * (HUGE // 2)),
    )
    problems = problems_of(path, {"S": "secret"})
    message = str(ConfigError(str(path), problems))
    assert len(message) < 3000, message[:3000]
    assert any(key in p for p in problems), problems
    assert str(path) in message
    assert "characters)" in message  # says how long the clipped value was


def test_cli_arguments_echoed_in_errors_are_clipped(capsys):
    from hermes.cli import main as hermes_main
    from watchdog.cli import main as watchdog_main

    huge = "7" * HUGE + "s"
    for argv, main, code in (
        (["status", "--stale-after", huge], watchdog_main, 3),
        (["history", "--since", huge, "--database", "sqlite:////nonexistent"], watchdog_main, 3),
        (["status", "--bogus", huge], watchdog_main, 3),
        (["simulate", "qqbot", "--heartbeat-interval", "x" + huge], hermes_main, 2),
        (["frobnicate-" + huge], hermes_main, 2),
    ):
        exits: list[object] = []
        try:
            exits.append(main(argv))
        except SystemExit as exc:  # argparse's own errors
            exits.append(exc.code)
        assert exits == [code], argv[:2]
        err = capsys.readouterr().err
        assert 0 < len(err) < 2000, (argv[:2], err[:2000])
        assert "characters)" in err, (argv[:2], err)


def test_a_duration_too_long_to_be_finite_is_rejected(tmp_path):
    path = write(tmp_path, f'[platforms.bot]\nadapter = "demo"\nheartbeat_ttl = "{"9" * 400}s"\n')
    (problem,) = problems_of(path)
    assert problem.startswith("platforms.bot.heartbeat_ttl: Input should be a finite number")
