"""The backstop for an escalation whose graceful stop hangs: ``WATCHDOG=trigger``.

An escalation ends the process with exit 75 after a graceful stop, so that systemd
shows the cause (``Result=exit-code``, ``status=75`` and the last ``STATUS=`` line)
and restarts the unit. A stop can hang, though: an adapter's ``close()`` blocking
the event loop, a thread that never returns. Then, ``STOP_BACKSTOP_GRACE`` seconds
after the stop's own budget (``gateway.shutdown_timeout``), a daemon thread of this
module asks systemd to act as if the watchdog had timed out: systemd sends
``WatchdogSignal=`` (SIGABRT: faulthandler writes every thread's stack, showing
where the stop hung), the unit's result is ``watchdog`` and ``Restart=`` restarts it.

A thread, because a hung stop may be a frozen event loop. Its own socket, because
the loop thread may be using (or closing) the gateway's notifier at that moment.
Without the backstop, systemd's ``TimeoutStopSec=`` (armed by ``STOPPING=1``) still
ends a hung stop, later and without the stacks: SIGKILL, ``Result=timeout``.
"""

from __future__ import annotations

import threading

from loguru import logger

from watchdog.notify import Notifier

STOP_BACKSTOP_GRACE = 3.0
"""Seconds a stop may overrun ``shutdown_timeout`` before it counts as hung: the stop's last
waits have minimums (about 1.6 s in all), and closing the event loop follows it."""


class StopBackstop:
    """Sends ``WATCHDOG=trigger`` once ``after`` seconds have passed since :meth:`arm`, unless
    :meth:`disarm` was called first (or the process ended: the thread is a daemon)."""

    def __init__(self, address: str | None, *, after: float, cause: str) -> None:
        self.address = address
        """The NOTIFY_SOCKET address; None: not run by systemd, nothing to ask."""
        self.after = after
        self.cause = cause
        """What the stop is for (``escalation (exit 75): ...``), repeated in the last STATUS=."""
        self.fired = threading.Event()
        """Set once the trigger was sent (for tests)."""
        self._disarmed = threading.Event()
        self._thread: threading.Thread | None = None

    def arm(self) -> None:
        if self.address is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="hermes-stop-backstop", daemon=True)
        self._thread.start()

    def disarm(self) -> None:
        self._disarmed.set()

    @property
    def armed(self) -> bool:
        return self._thread is not None and not self._disarmed.is_set() and not self.fired.is_set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end (fired or disarmed); True if it has (or never started)."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def _run(self) -> None:
        if self._disarmed.wait(self.after):
            return
        self.fire()

    def fire(self) -> None:
        notifier = Notifier(self.address)
        try:
            # The status first: systemd logs "Watchdog request (last status: ...)" with it,
            # and `systemctl status` keeps showing it while the unit restarts.
            notifier.status(f"stop hung for {self.after:g} s, WATCHDOG=trigger sent; {self.cause}")
            notifier.trigger()
        finally:
            notifier.close()
        self.fired.set()
        # Logged only after the trigger went out: the hung thread may hold the log's lock.
        logger.critical(
            "the stop did not finish within {:g} s; sent WATCHDOG=trigger so that systemd"
            " kills (SIGABRT: every stack in the log) and restarts the gateway; {}",
            self.after,
            self.cause,
        )
