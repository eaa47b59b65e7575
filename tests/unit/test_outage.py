"""The retry delay of the loops that carry messages while the database is down."""

from __future__ import annotations

from hermes.jobrunner.ledger import Outage


def test_an_outage_is_retried_every_2_s_at_most_however_long_it_lasts():
    # The inbox's commits, the backlog, a run's end and the outbox all wait this way: after a
    # 33 s outage they used to sleep up to 30 s more with the store back (the 7th attempt
    # came 31.5 s after the first failure, the 8th 30 s later), the platform held meanwhile.
    outage = Outage("inbox")
    delays = [outage.failed(OSError("refused")) for _ in range(40)]
    assert delays[:3] == [0.5, 1.0, 2.0]
    assert max(delays) == 2.0
    outage.ok()
    assert outage.failures == 0
    assert outage.failed(OSError("refused")) == 0.5
