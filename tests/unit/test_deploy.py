"""What deploy/ ships stays valid: the example configuration loads, the unit keeps its contract."""

from __future__ import annotations

import configparser
from pathlib import Path

from hermes.config import GatewaySettings, load_config
from watchdog.backstop import STOP_BACKSTOP_GRACE
from watchdog.settings import parse_duration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_the_example_configuration_is_valid_and_documents_every_key():
    cfg = load_config(DEPLOY / "gateway.example.toml", {})
    assert list(cfg.platforms) == ["demo-bot"]
    text = (DEPLOY / "gateway.example.toml").read_text()
    for key in ("tick_interval", "trigger_on_escalation", "close_timeout", "heartbeat_persist_interval",
                "heartbeat_ttl", "start_timeout", "reconnect_timeout", "restart_max", "restart_window",
                "restart_backoff", "restart_backoff_max", "shutdown_timeout", "client_secret"):  # fmt: skip
        assert key in text, key


def test_the_commented_qq_example_is_valid_once_uncommented(tmp_path):
    text = (DEPLOY / "gateway.example.toml").read_text()
    start = text.index("#[platforms.qq-main]")
    block = text[start : text.index("\n\n", start)]
    uncommented = "\n".join(line.removeprefix("#") for line in block.splitlines())
    path = tmp_path / "qq.toml"
    path.write_text(uncommented)
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "qq-client-secret").write_text("s")
    cfg = load_config(path, {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})
    assert cfg.platforms["qq-main"].adapter == "qqbot"


def test_the_commented_telegram_example_is_valid_once_uncommented(tmp_path):
    text = (DEPLOY / "gateway.example.toml").read_text()
    start = text.index("#[platforms.tg-main]")
    block = text[start : text.index("\n\n", start)]
    uncommented = "\n".join(line.removeprefix("#") for line in block.splitlines())
    path = tmp_path / "tg.toml"
    path.write_text(uncommented)
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "telegram-token").write_text("123:abc")
    cfg = load_config(path, {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})
    assert cfg.platforms["tg-main"].adapter == "telegram"


def test_the_unit_keeps_its_contract():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "hermes-gateway.service")
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "78"
    assert service["NotifyAccess"] == "main"
    assert "WatchdogSec" in service
    assert unit["Unit"]["StartLimitBurst"]
    for hardening in (
        "NoNewPrivileges",
        "ProtectSystem",
        "PrivateTmp",
        "ProtectHome",
        "StateDirectory",
    ):
        assert hardening in service, hardening


def test_an_escalations_hung_stop_meets_the_gateways_backstop_before_systemds_stop_timeout():
    """After STOPPING=1 systemd SIGKILLs a stop that outlasts TimeoutStopSec= (Result=timeout);
    the gateway's own backstop (WATCHDOG=trigger: stacks dumped, Result=watchdog) must come first."""
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(DEPLOY / "hermes-gateway.service")
    timeout_stop = parse_duration(unit["Service"]["TimeoutStopSec"])
    example = load_config(DEPLOY / "gateway.example.toml", {}).gateway.shutdown_timeout
    for shutdown_timeout in (GatewaySettings().shutdown_timeout, example):
        assert shutdown_timeout + STOP_BACKSTOP_GRACE < timeout_stop
