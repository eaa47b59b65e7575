"""Interpreter settings for a long-running gateway process, applied once it has started.

The cyclic garbage collector is the one that matters. Start-up leaves tens of thousands of
long-lived container objects behind (imported modules, the configuration, SQLAlchemy's
tables, pydantic's models), and every full collection walked all of them again. A burst of
inbound events then set collections off all the time: each event is a few containers that
live until their inbox commit, so with the default threshold (700 net new containers) the
youngest generation was collected every few dozen events, and promoted events into the
older ones, whose collections walked everything. In ``bench/throughput.py``'s durable
receive that was about a quarter of the event loop's time.

:func:`settle` collects once, freezes what start-up built (``gc.freeze``: moved to a
generation the collector no longer walks), and raises the youngest generation's threshold,
so that a burst's short-lived objects are mostly freed by reference counting before the
collector looks at them. Memory is freed as before (reference counting frees nearly
everything; cycles are still collected, in larger steps); only objects alive at start-up
stay out of the collector's sight. Most live as long as the process; what start-up built
and later let go of (a replaced adapter, a database connection the pool dropped) is collected
by :func:`release` when the gateway stops, so that its finalizers still run: a SQLite
connection left unclosed would leave the store's ``-wal`` and ``-shm`` files behind.
"""

from __future__ import annotations

import gc

GC_YOUNG_THRESHOLD = 10_000
"""Net new container objects after which the youngest generation is collected (default 700)."""


def settle() -> None:
    """Tune the collector for serving, once start-up has built what the process keeps."""
    gc.collect()
    gc.freeze()
    young, older, oldest = gc.get_threshold()
    if young:  # 0: collection is off, and stays so
        gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), older, oldest)


def release() -> None:
    """At stop: give what :func:`settle` froze back to the collector, and collect it (closing
    what only a finalizer closes)."""
    gc.unfreeze()
    gc.collect()
