"""The QQ Bot gateway protocol core, without sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hermes.adapters.qqbot.api import RATE_LIMIT_CODES, MsgSeq, message_body
from hermes.adapters.qqbot.auth import parse_token_response
from hermes.adapters.qqbot.events import KNOWN_EVENTS, MESSAGE_EVENTS, parse_message
from hermes.adapters.qqbot.intents import Intents, parse_intents
from hermes.adapters.qqbot.protocol import (
    Acked,
    Backoff,
    Connection,
    Dispatch,
    Hello,
    Next,
    Plan,
    Ready,
    Reconnector,
    ReconnectRequested,
    Send,
    Session,
    SessionInvalid,
    Unknown,
    Wait,
    decode,
    plan_after_backpressure,
    plan_after_close,
    plan_after_invalid_session,
    plan_after_protocol_error,
    plan_after_reconnect_request,
    plan_after_zombie,
)
from hermes.errors import QQAuthError, QQMalformedFrame, QQProtocolError, QQTokenUnavailable
from hermes.messages import OutboundMessage


def frame(op: int, d: object = None, s: int | None = None, t: str | None = None) -> str:
    return json.dumps({"op": op, "d": d, "s": s, "t": t})


def sent(actions: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(a.text) for a in actions if isinstance(a, Send)]


def connected(session: Session | None = None, **kw) -> Connection:
    conn = Connection(
        session or Session(), token="TOKEN", intents=Intents.GROUP_AND_C2C_EVENT, **kw
    )
    conn.receive(frame(10, {"heartbeat_interval": 45000}))
    return conn


# -- frames


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{not json", "frame is not JSON"),
        ("[1, 2]", "not a JSON object: list"),
        ('{"d": {}}', "no integer 'op'"),
        ('{"op": "0"}', "no integer 'op'"),
        ('{"op": 0, "s": "7", "t": "X"}', "'s' is not an integer"),
        ('{"op": 0, "s": 7, "t": 5}', "'t' is not a string"),
        (b"\xff\xfe", "frame is not JSON"),
        ('{"op": NaN}', "frame is not JSON"),  # the standard library would take it: not JSON
        ('{"op": 1}'.encode("utf-16"), "frame is not JSON"),  # ... and this: JSON is UTF-8
        ('{"op": 0, "d": ' + "[" * 100_000 + "]" * 100_000 + "}", "frame is not JSON"),
    ],
)
def test_malformed_frames_are_named(raw, message):
    with pytest.raises(QQMalformedFrame, match=message):
        decode(raw)


def test_an_escaped_lone_surrogate_is_legal_json_and_becomes_u_fffd():
    # orjson refuses "\ud800" without its low half; JSON allows it, and a user can send it.
    raw = (
        r'{"op": 0, "s": 3, "t": "C2C_MESSAGE_CREATE", "d": {"content": "a\ud800b", "k\udfff": 1}}'
    )
    f = decode(raw)
    assert f.d == {"content": "a\ufffdb", "k\ufffd": 1}
    assert f.d["content"].encode("utf-8") == b"a\xef\xbf\xbdb"  # downstream UTF-8 cannot fail
    # A real pair is one character, kept as it is.
    assert decode(r'{"op": 0, "d": "\ud83d\ude00 \ud800"}').d == "\U0001f600 \ufffd"
    session = Session()
    (event,) = connected(session).receive(raw)
    assert event == Dispatch("C2C_MESSAGE_CREATE", {"content": "a\ufffdb", "k\ufffd": 1}, 3, None)
    assert session.seq == 3


def test_an_unknown_opcode_is_ignored_and_is_no_proof_of_life():
    conn = connected()
    assert conn.receive(frame(99, {"new": "feature"})) == [Unknown(99)]
    assert conn.receive(frame(2)) == [Unknown(2)]  # ours to send: odd, but harmless
    # The connection goes on: the event behind it is delivered.
    assert conn.receive(frame(0, {"id": "m"}, s=4, t="C2C_MESSAGE_CREATE")) == [
        Dispatch("C2C_MESSAGE_CREATE", {"id": "m"}, 4, None)
    ]


def test_a_protocol_error_resumes_and_keeps_the_session():
    plan = plan_after_protocol_error()
    assert (plan.next, plan.clear_session, plan.requested) == (Next.RESUME, False, False)


def test_unknown_event_types_are_told_from_documented_ones():
    assert set(MESSAGE_EVENTS) <= KNOWN_EVENTS
    assert {"READY", "RESUMED", "GUILD_CREATE", "GROUP_ADD_ROBOT", "FRIEND_ADD"} <= KNOWN_EVENTS
    assert "SOME_FUTURE_EVENT" not in KNOWN_EVENTS


# -- handshake


def test_hello_starts_an_identify_with_token_intents_and_shard():
    conn = Connection(
        Session(),
        token="TOKEN",
        intents=Intents.GROUP_AND_C2C_EVENT | Intents.DIRECT_MESSAGE,
        shard=(1, 4),
    )
    actions = conn.receive(frame(10, {"heartbeat_interval": 41250}))
    assert actions[0] == Hello(41.25)
    assert sent(actions) == [
        {
            "op": 2,
            "d": {
                "token": "QQBot TOKEN",
                "intents": (1 << 25) | (1 << 12),
                "shard": [1, 4],
                "properties": {"$os": "linux", "$browser": "hermes", "$device": "hermes"},
            },
        }
    ]
    assert conn.heartbeat_interval == 41.25


def test_hello_resumes_a_known_session_with_its_last_seq():
    session = Session()
    session.session_id, session.seq = "sess-1", 1337
    conn = Connection(session, token="TOKEN", intents=1)
    assert sent(conn.receive(frame(10, {"heartbeat_interval": 45000}))) == [
        {"op": 6, "d": {"token": "QQBot TOKEN", "session_id": "sess-1", "seq": 1337}}
    ]
    assert conn.resuming


def test_a_cleared_session_is_identified_afresh_and_forgets_its_seq():
    session = Session()
    session.session_id, session.seq = "sess-1", 5
    session.clear()
    conn = Connection(session, token="T", intents=1)
    assert sent(conn.receive(frame(10, {"heartbeat_interval": 1000})))[0]["op"] == 2
    assert sent([conn.heartbeat()]) == [{"op": 1, "d": None}]


@pytest.mark.parametrize(
    "d",
    [
        None,
        {},
        {"heartbeat_interval": 0},
        {"heartbeat_interval": "45000"},
        {"heartbeat_interval": True},
    ],
)
def test_hello_needs_a_positive_interval(d):
    with pytest.raises(QQProtocolError, match="heartbeat_interval"):
        Connection(Session(), token="T", intents=1).receive(frame(10, d))


def test_a_second_hello_is_a_protocol_error():
    with pytest.raises(QQProtocolError, match="second Hello"):
        connected().receive(frame(10, {"heartbeat_interval": 45000}))


def test_ready_records_the_session_and_its_seq():
    session = Session()
    conn = connected(session)
    actions = conn.receive(
        frame(
            0, {"version": 1, "session_id": "abc", "user": {"id": "1", "bot": True}}, s=1, t="READY"
        )
    )
    assert actions[0] == Ready(False, {"id": "1", "bot": True})
    assert (session.session_id, session.seq) == ("abc", 1)


def test_ready_without_a_session_id_is_a_protocol_error():
    with pytest.raises(QQProtocolError, match="READY without a session_id"):
        connected().receive(frame(0, {"version": 1}, s=1, t="READY"))


def test_resumed_has_an_empty_string_as_d():
    conn = connected()
    assert conn.receive(frame(0, "", s=2002, t="RESUMED"))[0] == Ready(True, {})


@pytest.mark.parametrize(
    ("t", "d"), [("READY", {"session_id": "abc"}), ("RESUMED", "")], ids=["ready", "resumed"]
)
def test_the_handshake_is_no_proof_of_life_and_sends_the_first_heartbeat_at_once(t, d):
    # Proof of life is an ACK or an event. The first heartbeat goes with the handshake (as
    # the official SDK sends it), so that its ACK proves the connection within one round
    # trip rather than one Hello interval (41 s on the platform) later.
    session = Session()
    session.seq = 7
    conn = connected(session)
    actions = conn.receive(frame(0, d, s=8, t=t))
    assert [type(a) for a in actions] == [Ready, Send]
    assert sent(actions) == [{"op": 1, "d": 8}]
    assert conn.awaiting_ack
    assert conn.receive(frame(11)) == [Acked()]


def test_no_second_heartbeat_with_the_handshake_while_one_awaits_its_ack():
    conn = connected()
    assert conn.heartbeat() is not None
    assert conn.receive(frame(0, {"session_id": "abc"}, s=1, t="READY")) == [Ready(False, {})]
    assert not conn.zombie


# -- dispatches and seq


def test_seq_never_moves_backwards_but_late_events_are_still_delivered():
    session = Session()
    conn = connected(session)
    conn.receive(frame(0, {"id": "a"}, s=5, t="C2C_MESSAGE_CREATE"))
    late = conn.receive(frame(0, {"id": "b"}, s=3, t="C2C_MESSAGE_CREATE"))
    assert late == [Dispatch("C2C_MESSAGE_CREATE", {"id": "b"}, 3, None)]
    assert session.seq == 5


# -- heartbeats


def test_a_heartbeat_carries_the_last_seq_and_needs_an_ack_before_the_next():
    session = Session()
    conn = connected(session)
    first = conn.heartbeat()
    assert first is not None
    assert json.loads(first.text) == {"op": 1, "d": None}
    conn.receive(frame(0, {}, s=9, t="SOME_EVENT"))
    assert conn.receive(frame(11)) == [Acked()]
    second = conn.heartbeat()
    assert second is not None
    assert json.loads(second.text) == {"op": 1, "d": 9}
    # No ACK for the second: the connection is a zombie at the third.
    assert conn.heartbeat() is None
    assert conn.zombie


def test_a_server_heartbeat_request_is_answered_at_once():
    session = Session()
    session.seq = 77
    conn = connected(session)
    assert sent(conn.receive(frame(1))) == [{"op": 1, "d": 77}]


def test_reconnect_and_invalid_session_requests():
    conn = connected()
    assert conn.receive(frame(7)) == [ReconnectRequested()]
    assert connected().receive(frame(9, True)) == [SessionInvalid(True)]
    assert connected().receive(frame(9, False)) == [SessionInvalid(False)]
    assert connected().receive(frame(9)) == [SessionInvalid(False)]


# -- what to do after a connection ends


@pytest.mark.parametrize(
    ("code", "next_", "wait", "clear", "refresh"),
    [
        (4009, Next.RESUME, Wait.NONE, False, False),
        (4008, Next.RESUME, Wait.RATE_LIMITED, False, False),
        (4006, Next.IDENTIFY, Wait.BACKOFF, True, False),
        (4007, Next.IDENTIFY, Wait.BACKOFF, True, False),
        (4900, Next.IDENTIFY, Wait.BACKOFF, True, False),
        (4905, Next.IDENTIFY, Wait.BACKOFF, True, False),
        (4913, Next.IDENTIFY, Wait.BACKOFF, True, False),
        (4004, Next.RESUME, Wait.BACKOFF, False, True),  # the token failed, not the session
        (None, Next.RESUME, Wait.BACKOFF, False, False),
        (1000, Next.RESUME, Wait.BACKOFF, False, False),
        (1006, Next.RESUME, Wait.BACKOFF, False, False),
        (4999, Next.RESUME, Wait.BACKOFF, False, False),
        (4003, Next.RESUME, Wait.BACKOFF, False, False),
    ],
)
def test_close_codes_that_allow_another_connection(code, next_, wait, clear, refresh):
    plan = plan_after_close(code)
    assert (plan.next, plan.wait, plan.clear_session, plan.refresh_token) == (
        next_,
        wait,
        clear,
        refresh,
    )


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (4001, "qq_invalid_opcode"),
        (4002, "qq_invalid_payload"),
        (4010, "qq_invalid_shard"),
        (4011, "qq_too_many_guilds"),
        (4012, "qq_invalid_version"),
        (4013, "qq_invalid_intent"),
        (4014, "qq_intent_not_permitted"),
        (4914, "qq_offline_sandbox_only"),
        (4915, "qq_banned"),
    ],
)
def test_close_codes_that_end_the_platform(code, reason):
    plan = plan_after_close(code)
    assert (plan.next, plan.code) == (Next.GIVE_UP, reason)
    assert str(code) in plan.message


def test_invalid_session_resumes_only_when_the_server_says_so():
    assert plan_after_invalid_session(True).next is Next.RESUME
    identify = plan_after_invalid_session(False)
    assert (identify.next, identify.clear_session) == (Next.IDENTIFY, True)


def test_only_op_7_and_op_9_are_reconnects_the_server_asked_for():
    assert plan_after_reconnect_request().requested
    assert plan_after_invalid_session(True).requested
    assert plan_after_invalid_session(False).requested
    assert not plan_after_zombie().requested
    assert not any(plan_after_close(code).requested for code in (None, 1000, 4009, 4006))


# -- reconnect timing


def test_backoff_grows_caps_and_jitters_downwards():
    draws = iter([0.0, 0.0, 0.0, 0.0, 1.0])
    b = Backoff(1, 5, jitter=0.5, rng=lambda: next(draws))
    assert [b.next() for _ in range(5)] == [1, 2, 4, 5, 2.5]
    b.reset()
    assert b.steps == 0


def reconnector(**kw) -> Reconnector:
    return Reconnector(
        Backoff(1, 8, jitter=0),
        max_failures=kw.get("max_failures", 3),
        stable_after=60,
        rate_limit_delay=5,
    )


def test_a_stable_connection_resets_the_backoff():
    r = reconnector()
    backoff = Plan(Next.RESUME)
    assert [r.after(backoff, None) for _ in range(3)] == [1, 2, 4]
    assert r.after(backoff, 120.0) == 1
    assert r.failures == 0


def test_a_quick_disconnect_storm_keeps_growing_the_backoff_and_is_exhausted():
    r = reconnector(max_failures=3)
    backoff = Plan(Next.RESUME)
    # Connections that reach READY and prove life, but drop within seconds, are failures.
    assert [r.after(backoff, 2.0) for _ in range(3)] == [1, 2, 4]
    assert r.after(backoff, 2.0) is None


def test_zombie_connections_are_failures_however_long_they_last():
    # The adapter passes no proof (None) for a connection that never had an ACK or an event,
    # be it up for minutes: a zombie server cannot reset the count by keeping them open.
    r = reconnector(max_failures=2)
    assert [r.after(plan_after_zombie(), None) for _ in range(2)] == [0.0, 1]
    assert r.after(plan_after_zombie(), None) is None


def test_reconnects_the_server_asked_for_are_no_failures_once_life_was_proven():
    r = reconnector(max_failures=2)
    op7 = plan_after_reconnect_request()
    # Four op 7s, each after the connection had proven life for 4 s (a platform deployment):
    # at once the first time, then backing off, and never exhausted.
    assert [r.after(op7, 4.0) for _ in range(4)] == [0.0, 1, 2, 4]
    assert r.failures == 0
    assert r.after(Plan(Next.RESUME), 120.0) == 1  # a stable connection resets the backoff
    # If the reconnect asked for then fails, that failure counts as usual.
    r.after(op7, 4.0)
    assert r.after(Plan(Next.RESUME), None) == 2
    assert r.failures == 1


def test_an_invalid_session_before_proof_counts_only_if_the_next_connection_proves_nothing():
    r = reconnector(max_failures=3)
    # op 9 answering our Resume (no proof on that connection), then an Identify that works:
    assert r.after(plan_after_invalid_session(False), None) == 1
    assert r.failures == 0
    assert r.after(plan_after_reconnect_request(), 3.0) == 2  # op 7 after that one's proof
    assert r.failures == 0
    # A server that asks again and again without ever proving life runs out the count,
    # one connection late.
    op7 = plan_after_reconnect_request()
    assert [r.after(op7, None) is None for _ in range(4)] == [False] * 4
    assert r.failures == 3
    assert r.after(op7, None) is None


def test_reconnects_the_gateway_asks_for_are_never_failures_nor_backed_off():
    # After a database outage the platform replays more events than the inbox takes at
    # once: round after round ends with the inbox full, each before RESUMED (no proof after
    # it). The adapter waits for room first; then it resumes at once, every time.
    r = reconnector(max_failures=2)
    full = plan_after_backpressure()
    assert [r.after(full, None) for _ in range(20)] == [0.0] * 20
    assert r.failures == 0
    # The count and the backoff of real failures are untouched by them.
    assert r.after(Plan(Next.RESUME), None) == 1
    assert r.after(full, None) == 0.0
    assert r.after(Plan(Next.RESUME), None) == 2
    assert r.failures == 2


def test_a_requested_reconnect_is_immediate_once_then_backs_off():
    r = reconnector()
    now = Plan(Next.RESUME, Wait.NONE)
    assert r.after(now, 0.5) == 0.0
    assert r.after(now, 0.5) == 1
    assert reconnector().after(now, 300.0) == 0.0


def test_rate_limited_waits_at_least_the_rate_limit_delay():
    assert reconnector().after(Plan(Next.RESUME, Wait.RATE_LIMITED), None) == 5


# -- intents, tokens, messages


def test_intents_by_name():
    assert parse_intents(["group_and_c2c_event", "PUBLIC_GUILD_MESSAGES"]) == (1 << 25) | (1 << 30)
    with pytest.raises(ValueError, match="unknown intent 'GUILD_CHATS'"):
        parse_intents(["GUILD_CHATS"])


@pytest.mark.parametrize("expires_in", ["7200", 7200, "7199.5"])
def test_token_expiry_comes_as_a_string_or_a_number(expires_in):
    token, seconds = parse_token_response(200, {"access_token": "T", "expires_in": expires_in})
    assert (token, int(seconds)) == ("T", 7199 if expires_in == "7199.5" else 7200)


@pytest.mark.parametrize(
    ("status", "body", "error", "text"),
    [
        (
            200,
            {"code": 100016, "message": "invalid appid or secret"},
            QQAuthError,
            "code 100016: invalid appid or secret",
        ),
        (401, {"message": "denied"}, QQAuthError, "refused the credentials"),
        (502, None, QQTokenUnavailable, "HTTP 502"),
        (200, "<html>", QQTokenUnavailable, "without a JSON object"),
        (200, {"access_token": "T", "expires_in": "soon"}, QQTokenUnavailable, "expires_in='soon'"),
        (200, {"access_token": "T", "expires_in": 0}, QQTokenUnavailable, "expires_in=0"),
        (200, {}, QQTokenUnavailable, "without an access_token"),
    ],
)
def test_token_endpoint_errors_are_classified(status, body, error, text):
    with pytest.raises(error, match=text):
        parse_token_response(status, body)


def test_msg_seq_increases_per_replied_message_in_bounded_memory():
    seq = MsgSeq(capacity=2)
    assert [seq.next("a"), seq.next("a"), seq.next("b"), seq.next("a")] == [1, 2, 1, 3]
    seq.next("c")
    assert seq.next("b") == 1  # forgotten: the oldest entry made room


def test_request_bodies_per_endpoint_family():
    assert message_body(OutboundMessage("group", "g", "hi", reply_to="m1"), 2) == {
        "content": "hi",
        "msg_type": 0,
        "msg_id": "m1",
        "msg_seq": 2,
    }
    assert message_body(OutboundMessage("c2c", "u", "hi"), None) == {"content": "hi", "msg_type": 0}
    assert message_body(OutboundMessage("channel", "c", "hi", reply_to="m1"), None) == {
        "content": "hi",
        "msg_id": "m1",
    }


def test_quotas_and_permissions_are_not_retried_as_rate_limits():
    assert {22009, 20028, 504123} <= RATE_LIMIT_CODES
    assert not {304045, 304046, 304049, 40054005} & RATE_LIMIT_CODES


# -- inbound events (payloads as documented)


def test_a_group_at_message_from_the_documentation():
    d: dict[str, Any] = {
        "author": {"member_openid": "E4F4AEA33253A2797FB897C50B81D7ED"},
        "content": " 123",
        "group_openid": "C9F778FE6ADF9D1D1DBE395BF744A33A",
        "id": "ROBOT1.0_eBIyWnxpmSu6uLQ7u7fU0eGloKGYg4eEa737vRyKnMCgyZjKi7JLYkQ9B0VapbiY",
        "timestamp": "2023-11-06T13:37:18+08:00",
    }
    m = parse_message("qq", "GROUP_AT_MESSAGE_CREATE", d, "GROUP_AT_MESSAGE_CREATE:xyz")
    assert (m.chat_kind, m.chat_id, m.author_id, m.text) == (
        "group",
        d["group_openid"],
        d["author"]["member_openid"],
        "123",
    )
    assert m.timestamp is not None
    assert m.timestamp.isoformat() == "2023-11-06T13:37:18+08:00"
    assert m.extra == {"event_id": "GROUP_AT_MESSAGE_CREATE:xyz"}


def test_c2c_channel_and_dm_messages():
    c2c = parse_message(
        "qq",
        "C2C_MESSAGE_CREATE",
        {
            "id": "m",
            "content": "/1",
            "timestamp": "2025-01-02T19:00:38+08:00",
            "author": {"id": "U", "user_openid": "U"},
        },
    )
    assert (c2c.chat_kind, c2c.chat_id, c2c.author_id) == ("c2c", "U", "U")
    at = {
        "author": {"id": "1234", "username": "abc", "bot": False},
        "channel_id": "100010",
        "content": "<@!6158788878435714165> hi",
        "guild_id": "18700000000001",
        "id": "0812345677890abcdef",
        "timestamp": "2021-05-20T15:14:58+08:00",
        "seq": 101,
        "seq_in_channel": "101",
    }
    channel = parse_message("qq", "AT_MESSAGE_CREATE", at)
    assert (channel.chat_kind, channel.chat_id, channel.author_name, channel.extra["guild_id"]) == (
        "channel",
        "100010",
        "abc",
        "18700000000001",
    )
    dm = parse_message(
        "qq", "DIRECT_MESSAGE_CREATE", {**at, "direct_message": True, "src_guild_id": "1870"}
    )
    assert (dm.chat_kind, dm.chat_id, dm.extra["channel_id"]) == ("dm", "18700000000001", "100010")


@pytest.mark.parametrize(
    ("event", "d", "message"),
    [
        ("C2C_MESSAGE_CREATE", [], "'d' is not an object"),
        ("C2C_MESSAGE_CREATE", {"id": "m"}, "missing 'author'"),
        ("C2C_MESSAGE_CREATE", {"id": "m", "author": {}}, "missing or empty 'user_openid'"),
        (
            "GROUP_AT_MESSAGE_CREATE",
            {"id": "m", "author": {"member_openid": "a"}},
            "missing or empty 'group_openid'",
        ),
        (
            "AT_MESSAGE_CREATE",
            {"id": "m", "author": {"id": "a"}, "guild_id": "g"},
            "missing or empty 'channel_id'",
        ),
        (
            "DIRECT_MESSAGE_CREATE",
            {"author": {"id": "a"}, "guild_id": "g"},
            "missing or empty 'id'",
        ),
    ],
)
def test_malformed_message_events_name_what_is_missing(event, d, message):
    with pytest.raises(ValueError, match=message):
        parse_message("qq", event, d)
