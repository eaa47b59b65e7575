"""What the store keeps of text, and which database errors are a row's fault (pure)."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import (
    DataError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
    StatementError,
    TimeoutError,
)

from watchdog.exceptions import StoreError
from watchdog.schema import storable
from watchdog.store import is_row_error


def wrapped(exc: BaseException) -> StoreError:
    """As :class:`~watchdog.store.StateStore` raises it: a StoreError chained to the cause."""
    try:
        raise StoreError("db: failed") from exc
    except StoreError as store_error:
        return store_error


ORIG = Exception("driver says no")


@pytest.mark.parametrize(
    "exc",
    [
        DataError("INSERT", {}, ORIG),
        IntegrityError("INSERT", {}, ORIG),
        StatementError("bind failed", "INSERT", {}, ValueError("naive datetime")),
        UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
        wrapped(DataError("INSERT", {}, ORIG)),
    ],
)
def test_bad_data_is_the_rows_fault(exc):
    assert is_row_error(exc)


@pytest.mark.parametrize(
    "exc",
    [
        OperationalError("INSERT", {}, ORIG),
        InterfaceError("INSERT", {}, ORIG),
        TimeoutError("QueuePool limit reached"),
        ProgrammingError("INSERT", {}, ORIG),
        ConnectionResetError("reset by peer"),
        wrapped(OperationalError("INSERT", {}, ORIG)),
        StoreError("database is locked"),
    ],
)
def test_everything_else_from_the_database_is_an_outage(exc):
    assert not is_row_error(exc)


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("a\x00b", "a\ufffdb"),
        ("\x00\x00", "\ufffd\ufffd"),
        ("lone \ud800 and \udfff", "lone \ufffd and \ufffd"),
        ("😀 emoji, 中文, tab\tand newline\n", "😀 emoji, 中文, tab\tand newline\n"),
        ("", ""),
    ],
)
def test_text_is_stored_with_nul_and_lone_surrogates_as_u_fffd(text, stored):
    assert storable(text) == stored
