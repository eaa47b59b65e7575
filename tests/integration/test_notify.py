"""The systemd notifier against a real NOTIFY_SOCKET (path and abstract forms)."""

from __future__ import annotations

import socket
import time

import pytest

from tests.support.timing import t
from watchdog.backstop import StopBackstop
from watchdog.exceptions import WatchdogTimingError
from watchdog.notify import STATUS_MAX_BYTES, Notifier, watchdog_timeout


async def test_ready_and_status_arrive_as_separate_datagrams(notify):
    n = Notifier(notify.address, watchdog_timeout=10)
    n.ready("starting")
    await notify.wait_for(lambda d: "STATUS" in d.fields, t(2), "STATUS")
    assert [d.raw for d in notify.datagrams] == [b"READY=1", b"STATUS=starting"]


async def test_a_utf8_status_arrives_intact(notify):
    text = "平台 qq-main 心跳超时 (令牌无效) ✓"
    Notifier(notify.address).status(text)
    d = await notify.wait_for(lambda d: True, t(2), "a datagram")
    assert d.raw == ("STATUS=" + text).encode("utf-8")


async def test_a_status_line_cannot_smuggle_other_assignments(notify):
    n = Notifier(notify.address, watchdog_timeout=10)
    n.status("ok\nWATCHDOG=trigger\r\nREADY=1")
    d = await notify.wait_for(lambda d: True, t(2), "a datagram")
    assert d.raw == b"STATUS=ok WATCHDOG=trigger READY=1"
    assert set(d.fields) == {"STATUS"}


async def test_a_long_status_is_clipped_on_a_character_boundary(notify):
    Notifier(notify.address).status("状" * 2000)
    d = await notify.wait_for(lambda d: True, t(2), "a datagram")
    value = d.raw.removeprefix(b"STATUS=")
    assert len(value) <= STATUS_MAX_BYTES
    assert value.decode("utf-8").endswith("...")


async def test_pings_are_alone_in_their_datagram_and_only_sent_when_the_watchdog_is_on(notify):
    Notifier(notify.address, watchdog_timeout=None).ping()
    on = Notifier(notify.address, watchdog_timeout=4)
    assert on.ping()
    d = await notify.wait_for(lambda d: True, t(2), "a ping")
    assert d.raw == b"WATCHDOG=1"
    assert len(notify.datagrams) == 1


async def test_trigger_stopping_reloading_and_extend_timeout(notify):
    n = Notifier(notify.address, watchdog_timeout=4)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.trigger()
    n.stopping("bye")
    n.extend_timeout(1.5)
    await notify.wait_for(lambda d: "EXTEND_TIMEOUT_USEC" in d.fields, t(2), "EXTEND_TIMEOUT_USEC")
    reload, trigger, stopping, status, extend = (d.fields for d in notify.datagrams)
    assert reload["RELOADING"] == "1"
    assert before <= int(reload["MONOTONIC_USEC"]) <= after
    assert trigger == {"WATCHDOG": "trigger"}
    assert stopping == {"STOPPING": "1"}
    assert status == {"STATUS": "bye"}
    assert extend == {"EXTEND_TIMEOUT_USEC": "1500000"}


async def test_extending_timeout_only_while_the_work_runs_long(notify):
    n = Notifier(notify.address)
    async with n.extending_timeout("migrations", every=0.05):
        pass
    notify.drain()  # anything sent is in the socket now, read or not
    assert notify.datagrams == []
    async with n.extending_timeout("migrations", every=0.05):
        # The work "runs long": it is still going when the first extension is due.
        d = await notify.wait_for(lambda d: "EXTEND_TIMEOUT_USEC" in d.fields, t(5), "an extension")
    assert d.fields["EXTEND_TIMEOUT_USEC"] == "150000"


def test_the_notifier_reconnects_after_the_socket_comes_back(tmp_path):
    path = str(tmp_path / "notify.sock")
    first = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    first.bind(path)
    n = Notifier(path, watchdog_timeout=10)
    assert n.ping()
    first.close()  # systemd went away; daemon-reexec creates a new socket at the same path
    (tmp_path / "notify.sock").unlink()
    assert n.ping() is False
    assert (n.failures, n.last_error is not None) == (1, True)
    second = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    second.bind(path)
    try:
        assert n.ping() is True
        assert second.recv(100) == b"WATCHDOG=1"
        assert n.last_error is None
    finally:
        second.close()


def test_a_full_socket_never_blocks_the_caller(tmp_path):
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "full.sock")
    receiver.bind(path)
    receiver.setblocking(False)
    try:
        n = Notifier(path, watchdog_timeout=10)
        # Nobody reads: the queue fills up. A blocking send would hang this test (pytest-timeout).
        results = [n.ping() for _ in range(5000)]
        assert results[0] is True
        assert results[-1] is False
        assert n.failures > 0
        while True:
            try:
                receiver.recv(100)
            except BlockingIOError:
                break
        assert n.ping() is True
    finally:
        receiver.close()


async def test_without_notify_socket_everything_is_a_silent_no_op():
    n = Notifier.from_environ({}, pid=1)
    assert not n.enabled
    assert n.watchdog_timeout is None
    n.ready("x")
    n.status("x")
    assert n.ping() is False
    n.stopping()
    assert n.sent == 0
    assert n.failures == 0
    async with n.extending_timeout("work", every=0.001):
        pass
    n.check_tick_interval(3600)


def test_unset_removes_the_variables_so_children_do_not_inherit_them():
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "7", "KEEP": "1"}
    n = Notifier.from_environ(env, pid=7, unset=True)
    assert env == {"KEEP": "1"}
    assert (n.address, n.watchdog_timeout) == ("/run/x", 10.0)


@pytest.mark.parametrize(
    ("env", "pid", "expected"),
    [
        ({}, 7, None),
        ({"WATCHDOG_USEC": "20000000"}, 7, 20.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "7"}, 7, 20.0),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "8"}, 7, None),
        ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "x"}, 7, None),
        ({"WATCHDOG_USEC": "0"}, 7, None),
        ({"WATCHDOG_USEC": "-5"}, 7, None),
        ({"WATCHDOG_USEC": "soon"}, 7, None),
    ],
)
def test_watchdog_is_enabled_by_the_rules_of_sd_watchdog_enabled(env, pid, expected):
    assert watchdog_timeout(env, pid) == expected


def test_a_tick_longer_than_half_the_watchdog_timeout_is_refused():
    n = Notifier("/run/x", watchdog_timeout=10)
    n.check_tick_interval(5)
    with pytest.raises(
        WatchdogTimingError,
        match=r"tick_interval = 5\.5 s is more than half of systemd's WatchdogSec=10 s",
    ):
        n.check_tick_interval(5.5)


def test_an_unsupported_socket_address_disables_notifications():
    n = Notifier("vsock:2:1234", watchdog_timeout=10)
    assert not n.enabled
    assert n.ping() is False


async def test_the_stop_backstop_sends_the_cause_then_the_trigger_once_its_time_is_up(notify):
    backstop = StopBackstop(notify.address, after=0.2, cause="escalation (exit 75): fatal: bot")
    armed_at = time.monotonic()
    backstop.arm()
    armed = backstop.armed
    trigger = await notify.wait_for(lambda d: "WATCHDOG" in d.fields, t(5), "WATCHDOG=trigger")
    assert backstop.join(t(5)) and backstop.fired.is_set()
    assert (armed, backstop.armed) == (True, False)
    assert trigger.at - armed_at >= 0.2
    assert [d.fields for d in notify.datagrams] == [
        {"STATUS": "stop hung for 0.2 s, WATCHDOG=trigger sent; escalation (exit 75): fatal: bot"},
        {"WATCHDOG": "trigger"},
    ]


async def test_a_disarmed_stop_backstop_ends_without_a_word(notify):
    backstop = StopBackstop(notify.address, after=0.2, cause="escalation (exit 75): x")
    backstop.arm()
    backstop.disarm()
    assert backstop.join(t(5))  # at once: disarming wakes the thread
    notify.drain()
    assert not backstop.fired.is_set() and notify.datagrams == []
    # Without NOTIFY_SOCKET there is nobody to ask: no thread at all.
    idle = StopBackstop(None, after=0.0, cause="x")
    idle.arm()
    assert not idle.armed and idle.join(0)
