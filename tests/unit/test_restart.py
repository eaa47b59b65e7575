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


def test_restarts_without_proof_of_life_in_between_spend_the_budget_however_far_apart():
    """A zombie loop whose attempts last longer than window / max_restarts used to restart
    for ever: each old restart left the window before the next one was counted."""
    budget = RestartBudget(RestartPolicy(max_restarts=3, window=60, backoff_initial=1))
    assert [budget.request(t, proven=False) for t in (0, 100, 200)] == [1, 2, 4]
    assert budget.used(300) == 0  # the window alone would allow this one
    assert budget.request(300, proven=False) is None


def test_one_attempt_with_proof_of_life_forgives_the_unproven_streak():
    budget = RestartBudget(RestartPolicy(max_restarts=2, window=60, backoff_initial=1))
    assert budget.request(0, proven=False) == 1
    assert budget.request(100, proven=False) == 2
    assert budget.request(200, proven=True) == 1  # the platform worked in between
    assert budget.unproven == 0
    assert budget.request(300, proven=False) == 1
    assert budget.request(400, proven=False) == 2
    assert budget.request(500, proven=False) is None
