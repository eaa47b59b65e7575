"""Restart intensity (N restarts in T seconds) and exponential backoff, clock passed in."""

from __future__ import annotations

import pytest

from watchdog.restart import RestartBudget, RestartPolicy


def test_backoff_doubles_and_is_capped():
    budget = RestartBudget(
        RestartPolicy(max_restarts=10, window=1000, backoff_initial=1, backoff_max=5)
    )
    assert [budget.request(0.0) for _ in range(5)] == [1, 2, 4, 5, 5]


def test_budget_is_spent_after_n_restarts_inside_the_window():
    budget = RestartBudget(RestartPolicy(max_restarts=3, window=60))
    assert all(budget.request(t) is not None for t in (0, 10, 20))
    assert budget.request(30) is None
    assert budget.used(30) == 3


def test_old_restarts_leave_the_window_and_free_the_budget():
    budget = RestartBudget(RestartPolicy(max_restarts=2, window=60, backoff_initial=1))
    budget.request(0)
    budget.request(10)
    assert budget.request(59) is None
    # The restart at t=0 is older than the window at t=60: one slot is free again,
    # and the backoff follows the restarts still inside the window (one).
    assert budget.request(60) == 2
    assert budget.request(61) is None


def test_zero_restarts_makes_the_first_failure_final():
    assert RestartBudget(RestartPolicy(max_restarts=0)).request(0) is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_restarts": -1},
        {"window": 0},
        {"backoff_initial": 10, "backoff_max": 1},
        {"backoff_factor": 0.5},
    ],
)
def test_nonsense_policies_are_refused(kwargs):
    with pytest.raises(ValueError, match=r"must|need"):
        RestartPolicy(**kwargs)
