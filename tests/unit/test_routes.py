"""Route matching and targets, without I/O."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hermes.jobrunner.handlers import RouteSettings, build_routes, match, parse_target
from hermes.messages import InboundMessage


def message(text: str, platform: str = "qq", kind: str = "group") -> InboundMessage:
    return InboundMessage(platform, "m1", kind, "G1", "U1", text, datetime(2026, 1, 1, tzinfo=UTC))


ROUTES = build_routes(
    [
        RouteSettings(name="deploy", prefix="/deploy", handler="echo"),
        RouteSettings(name="tg-only", platform="tg", handler="echo"),
        RouteSettings(name="dms", chat_kind="c2c", handler="echo"),
        RouteSettings(name="default", handler="ignore"),
    ]
)


@pytest.mark.parametrize(
    ("msg", "route"),
    [
        (message("/deploy"), "deploy"),
        (message("/deploy staging now"), "deploy"),
        (message("/deploy\tstaging"), "deploy"),
        (message("/deployment plan"), "default"),  # a prefix is a whole word
        (message("please /deploy"), "default"),
        (message("hi", platform="tg"), "tg-only"),
        (message("/deploy x", platform="tg"), "deploy"),  # first match wins
        (message("hi", kind="c2c"), "dms"),
        (message("hi"), "default"),
    ],
)
def test_the_first_matching_route_wins(msg, route):
    found = match(ROUTES, msg)
    assert found is not None
    assert found.name == route


def test_no_route_no_match():
    assert match(build_routes([RouteSettings(prefix="/x", handler="echo")]), message("y")) is None


def test_arguments_are_the_text_after_the_prefix():
    assert ROUTES[0].args(message("/deploy  staging now ")) == "staging now"
    assert ROUTES[3].args(message("whole text")) == "whole text"


def test_unnamed_routes_are_numbered():
    assert [
        r.name
        for r in build_routes(
            [RouteSettings(handler="echo"), RouteSettings(name="x", handler="echo")]
        )
    ] == ["route-1", "x"]


@pytest.mark.parametrize(
    ("target", "parsed"),
    [
        ("qq-main:group:ABC", ("qq-main", "group", "ABC")),
        ("qq:c2c:id:with:colons", ("qq", "c2c", "id:with:colons")),
    ],
)
def test_targets(target, parsed):
    assert parse_target(target) == parsed


@pytest.mark.parametrize("target", ["qq", "qq:group", ":group:x", "qq:Group:x"])
def test_malformed_targets(target):
    with pytest.raises(ValueError, match="platform:chat-kind:id"):
        parse_target(target)
