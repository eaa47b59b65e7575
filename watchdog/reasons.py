"""Reason codes: the machine-readable cause stored with a verdict.

They appear in ``platform_state.reason_code``, ``platform_transitions.reason_code``,
the status CLI and ``STATUS=``. They are a public contract: never rename one.
Adapters add their own codes, prefixed with their kind (``qq_invalid_token``);
the codes below are the watchdog's own.

======================= =====================================================
code                   meaning
======================= =====================================================
``adapter_exited``     the adapter's task returned although nobody asked it
                       to stop (the silent-death incident)
``adapter_crashed``    the adapter's task raised; the message holds the
                       exception summary
``adapter_stopped``    the adapter declared ``stopped`` although nobody asked
                       it to stop
``heartbeat_timeout``  declared ``connected`` but no heartbeat for longer than
                       its TTL (half-open connection, lost ACKs, frozen task)
``reconnect_stalled``  declared ``reconnecting`` for longer than allowed
``start_timeout``      declared ``starting`` for longer than allowed
``adapter_fatal``      the adapter reported a fatal error without a code
``adapter_init_failed`` the adapter could not be constructed (bad settings, a bug)
``platform_removed``   the platform left the configuration (history only)
======================= =====================================================
"""

from __future__ import annotations

import re
from typing import Final

ADAPTER_EXITED: Final = "adapter_exited"
ADAPTER_CRASHED: Final = "adapter_crashed"
ADAPTER_STOPPED: Final = "adapter_stopped"
HEARTBEAT_TIMEOUT: Final = "heartbeat_timeout"
RECONNECT_STALLED: Final = "reconnect_stalled"
START_TIMEOUT: Final = "start_timeout"
ADAPTER_FATAL: Final = "adapter_fatal"
ADAPTER_INIT_FAILED: Final = "adapter_init_failed"
PLATFORM_REMOVED: Final = "platform_removed"

WATCHDOG_CODES: Final = frozenset(
    {
        ADAPTER_EXITED,
        ADAPTER_CRASHED,
        ADAPTER_STOPPED,
        HEARTBEAT_TIMEOUT,
        RECONNECT_STALLED,
        START_TIMEOUT,
        ADAPTER_FATAL,
        ADAPTER_INIT_FAILED,
        PLATFORM_REMOVED,
    }
)

_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")


def check_code(code: str) -> str:
    """Return ``code`` if it is a valid reason code (``snake_case``, at most 64 chars)."""
    if not _CODE.fullmatch(code):
        raise ValueError(f"reason code must be snake_case ASCII of at most 64 chars, got {code!r}")
    return code
