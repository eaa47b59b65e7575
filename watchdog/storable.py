"""What every backend can store of a string; imports nothing heavy (the status CLI uses it)."""

from __future__ import annotations

import re

REPLACEMENT = "\ufffd"
"""What a character no backend can store becomes: U+FFFD, Unicode's own mark for "a character
was here and could not be kept", so the loss shows where it happened."""

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """``text`` as every backend stores it: NUL (PostgreSQL text cannot hold it) and lone
    surrogates (not UTF-8, so neither SQLite nor PostgreSQL can encode them) become U+FFFD."""
    return _UNSTORABLE.sub(REPLACEMENT, text)
