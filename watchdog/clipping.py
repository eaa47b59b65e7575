"""Input echoed in error messages, clipped: a 5 MB value must not become a 5 MB message.

:func:`quote` is for a value a message names on purpose; :func:`clip_message` is the
backstop applied to whole messages (configuration problems, argument errors), whoever
built them, so that a validator deep inside that echoes its input cannot flood a terminal
or a journal either.
"""

from __future__ import annotations

import re

VALUE_LIMIT = 80
"""Characters of an echoed value that are kept."""
RUN_LIMIT = 256
"""Characters kept of a run without blanks in a message built elsewhere: room for a path."""
MESSAGE_LIMIT = 1000
"""Characters of one message that are kept."""

_LONG_RUN = rf"\S{{{RUN_LIMIT + 1},}}"
"""Compiled on first use (by :func:`re.sub`), which most commands never reach."""


def _cut(text: str, limit: int) -> str:
    return f"{text[:limit]}… ({len(text)} characters)"


def quote(value: object, limit: int = VALUE_LIMIT) -> str:
    """``repr(value)``, or for a long value its first ``limit`` characters with an ellipsis
    and its length: ``'aaaa…' (5242880 characters)``."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(value)
    return f"{text[:limit]!r}… ({len(text)} characters)"


def clip_message(message: str) -> str:
    """``message`` with every run of more than ``RUN_LIMIT`` non-blank characters clipped
    to ``VALUE_LIMIT``, then the whole cut to ``MESSAGE_LIMIT`` characters; the start, which
    names the key, stays."""
    if len(message) <= RUN_LIMIT:
        return message
    clipped = re.sub(_LONG_RUN, lambda m: _cut(m.group(), VALUE_LIMIT), message)
    if len(clipped) <= MESSAGE_LIMIT:
        return clipped
    return f"{clipped[:MESSAGE_LIMIT]}… ({len(message)} characters)"
