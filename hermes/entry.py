"""Console-script entry points, guarded against the ``watchdog`` import-name clash.

The supervision package is imported as ``watchdog``, a name also used by the
unrelated file-events library on PyPI. If that one is what ``import watchdog``
finds, the scripts stop with a message saying so, instead of an obscure
ImportError or AttributeError deep inside.
"""

from __future__ import annotations

import sys

EX_CONFIG = 78
NAGIOS_UNKNOWN = 3


def watchdog_clash() -> str | None:
    """A message if ``import watchdog`` is not hermes-gateway's package, else None."""
    try:
        import watchdog
    except ImportError as exc:
        return (
            f"cannot import hermes-gateway's 'watchdog' package ({exc}); reinstall hermes-gateway"
        )
    if getattr(watchdog, "__hermes_watchdog__", False) is True:
        return None
    where = (
        getattr(watchdog, "__file__", None) or ", ".join(getattr(watchdog, "__path__", [])) or "?"
    )
    return (
        f"'import watchdog' found {where}, which is not hermes-gateway's supervision package "
        "(most likely the unrelated file-events library 'watchdog' from PyPI, which uses the "
        "same import name). Install hermes-gateway in a virtual environment of its own, or "
        "remove the other package from this one (pip uninstall watchdog; then reinstall "
        "hermes-gateway, since both wrote into the same directory)."
    )


def hermes_main() -> None:
    clash = watchdog_clash()
    if clash:
        print(f"hermes: {clash}", file=sys.stderr)
        sys.exit(EX_CONFIG)
    from hermes.cli import main

    sys.exit(main())


def watchdog_main() -> None:
    clash = watchdog_clash()
    if clash:
        print(f"UNKNOWN: hermes-watchdog: {clash}", file=sys.stderr)
        sys.exit(NAGIOS_UNKNOWN)
    from watchdog.cli import main

    sys.exit(main())
