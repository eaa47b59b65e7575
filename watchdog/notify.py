"""systemd notifications (``sd_notify``) on top of the ``sdnotify`` package, with its defects fixed.

``sdnotify.SystemdNotifier`` connects once at construction, swallows every error
unless ``debug=True``, encodes text as latin-1 (a Chinese ``STATUS=`` raises and the
whole datagram is lost) and ignores ``WATCHDOG_USEC``. :class:`Notifier` keeps its
``notify()`` but:

* owns the address (path or abstract ``@name``) and reconnects after an error;
* runs the connection with ``debug=True`` and counts failures instead of hiding them;
* sends UTF-8 (the text is passed through latin-1 unchanged, byte for byte);
* never blocks the event loop (non-blocking socket);
* sends ``WATCHDOG=1`` in a datagram of its own, so a bad status line cannot cost a ping;
* follows ``sd_watchdog_enabled()``: pings only when ``WATCHDOG_USEC`` is set and
  ``WATCHDOG_PID``, if set, is this process.

Without ``NOTIFY_SOCKET`` every method is a cheap no-op.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Mapping, MutableMapping
from contextlib import asynccontextmanager

import sdnotify
from loguru import logger

from watchdog.exceptions import WatchdogTimingError

STATUS_MAX_BYTES = 1024


class _Connection(sdnotify.SystemdNotifier):  # type: ignore[misc]
    """sdnotify's notifier with the address given, errors raised and the socket non-blocking."""

    def __init__(self, address: str) -> None:
        self.debug = True
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            sock.connect("\0" + address[1:] if address.startswith("@") else address)
        except BaseException:
            sock.close()
            raise
        self.socket = sock

    def send_utf8(self, text: str) -> None:
        # sdnotify encodes with latin-1; decoding our UTF-8 bytes as latin-1 first makes
        # that encoding the identity, so the datagram carries exactly the UTF-8 bytes.
        self.notify(text.encode("utf-8").decode("latin-1"))

    def close(self) -> None:
        self.socket.close()


def watchdog_timeout(environ: Mapping[str, str], pid: int) -> float | None:
    """The watchdog timeout in seconds, by the rules of ``sd_watchdog_enabled(3)``; ``None`` if off."""
    raw = environ.get("WATCHDOG_USEC")
    if not raw:
        return None
    try:
        usec = int(raw)
        if usec <= 0:
            raise ValueError
    except ValueError:
        logger.warning("ignoring invalid WATCHDOG_USEC={!r}", raw)
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner:
        try:
            if int(owner) != pid:
                return None
        except ValueError:
            logger.warning("ignoring WATCHDOG_USEC: invalid WATCHDOG_PID={!r}", owner)
            return None
    return usec / 1_000_000


def clean_status(text: str) -> str:
    """One line (a newline would start a new assignment) of at most STATUS_MAX_BYTES of UTF-8."""
    line = " ".join(text.split())
    data = line.encode("utf-8")
    if len(data) <= STATUS_MAX_BYTES:
        return line
    return data[: STATUS_MAX_BYTES - 3].decode("utf-8", "ignore") + "..."


class Notifier:
    """Talks to the service manager; see the module docstring for what it guarantees."""

    def __init__(self, address: str | None, *, watchdog_timeout: float | None = None) -> None:
        if address and not address.startswith(("/", "@")):
            logger.warning(
                "NOTIFY_SOCKET={!r} is not a path or @abstract name; notifications off", address
            )
            address = None
        self.address = address or None
        """Socket address, ``None`` when not run by a service manager."""
        self.watchdog_timeout = watchdog_timeout if self.address else None
        """Seconds before systemd gives up on us without a ping; ``None`` when pings are off."""
        self.sent = 0
        self.failures = 0
        """Datagrams that could not be sent."""
        self.last_error: str | None = None
        self._conn: _Connection | None = None

    @classmethod
    def from_environ(
        cls,
        environ: MutableMapping[str, str] | None = None,
        *,
        pid: int | None = None,
        unset: bool = False,
    ) -> Notifier:
        """Read ``NOTIFY_SOCKET``/``WATCHDOG_USEC``/``WATCHDOG_PID``; ``unset`` removes them so
        that child processes do not inherit them (``sd_notify``'s ``unset_environment``)."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET")
        timeout = watchdog_timeout(env, os.getpid() if pid is None else pid)
        if unset:
            for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                env.pop(key, None)
        return cls(address, watchdog_timeout=timeout)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def pinging_enabled(self) -> bool:
        return self.watchdog_timeout is not None

    def check_tick_interval(self, interval: float) -> None:
        """Refuse a watchdog tick slower than half of systemd's watchdog timeout."""
        timeout = self.watchdog_timeout
        if timeout is not None and interval > timeout / 2:
            raise WatchdogTimingError(
                f"watchdog.tick_interval = {interval:g} s is more than half of systemd's "
                f"WatchdogSec={timeout:g} s; lower the tick interval or raise WatchdogSec="
            )

    # -- sending

    def send(self, *assignments: str) -> bool:
        """Send the assignments as one datagram; False (and counted) if it could not be sent."""
        if self.address is None:
            return False
        text = "\n".join(assignments)
        try:
            if self._conn is None:
                self._conn = _Connection(self.address)
            self._conn.send_utf8(text)
        except OSError as exc:
            self._drop()
            self.failures += 1
            if self.last_error is None:
                logger.warning("systemd notification failed: {}", exc)
            self.last_error = f"{type(exc).__name__}: {exc}"
            return False
        if self.last_error is not None:
            logger.info("systemd notifications work again after {} failures", self.failures)
            self.last_error = None
        self.sent += 1
        return True

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def ready(self, status: str | None = None) -> None:
        self.send("READY=1")
        if status is not None:
            self.status(status)

    def status(self, text: str) -> bool:
        return self.send("STATUS=" + clean_status(text))

    def ping(self) -> bool:
        """``WATCHDOG=1``, alone in its datagram; a no-op unless the watchdog is enabled."""
        return self.pinging_enabled and self.send("WATCHDOG=1")

    def trigger(self) -> bool:
        """Ask systemd to act as if the watchdog timed out (restart per ``Restart=``)."""
        return self.send("WATCHDOG=trigger")

    def stopping(self, status: str | None = None) -> None:
        self.send("STOPPING=1")
        if status is not None:
            self.status(status)

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def extend_timeout(self, seconds: float) -> bool:
        return self.send(f"EXTEND_TIMEOUT_USEC={max(1, round(seconds * 1_000_000))}")

    def close(self) -> None:
        self._drop()

    @asynccontextmanager
    async def extending_timeout(self, what: str, every: float = 5.0) -> AsyncIterator[None]:
        """While the body runs longer than ``every`` seconds, keep extending systemd's start or
        stop timeout by ``3 * every``, so slow migrations do not get the unit killed."""
        if not self.enabled:
            yield
            return

        async def extend() -> None:
            while True:
                await asyncio.sleep(every)
                logger.info(
                    "{} still running; extending systemd's timeout by {:g} s", what, every * 3
                )
                self.extend_timeout(every * 3)

        task = asyncio.get_running_loop().create_task(extend(), name=f"notify:extend:{what}")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.wait({task})
            if not task.cancelled() and (exc := task.exception()) is not None:
                logger.opt(exception=exc).error("extending systemd's timeout failed")
