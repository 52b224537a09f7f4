"""The fit rule, latency <= budget * (1 + tolerance), as Budget owns it, and every resolve that uses it."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller import Budget
from controller.budget import threshold, thresholds
from controller.decode_budget import resolve_total
from tests.controller.tables import stats, table_of

MS = st.floats(0.001, 1e6, allow_nan=False, allow_infinity=False)
TOL = st.one_of(st.just(0.0), st.just(0.05), st.floats(0.0, 1.0))


def test_without_tolerance_the_budget_is_the_threshold() -> None:
    b = Budget(100.0)
    assert b.tolerance == 0.0
    assert b.threshold_ms == 100.0
    assert b.fits(99.9)
    assert b.fits(100.0)  # a tie fits
    assert not b.fits(math.nextafter(100.0, math.inf))
    assert not b.fits(100.0000001)


def test_tolerance_stretches_the_threshold() -> None:
    b = Budget(200.0, 0.05)
    assert b.threshold_ms == pytest.approx(210.0)
    assert b.fits(209.0)
    assert b.fits(b.threshold_ms)
    assert not b.fits(math.nextafter(b.threshold_ms, math.inf))
    assert not b.fits(211.0)
    assert Budget(200.0, 1.0).threshold_ms == 400.0


def test_a_spent_budget_fits_no_positive_latency() -> None:
    assert not Budget(0.0, 0.5).fits(0.001)
    assert not Budget(-5.0, 0.05).fits(0.001)


def test_budget_is_a_frozen_value() -> None:
    b = Budget(180.0, 0.05)
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.ms = 1.0  # type: ignore[misc]
    assert b == Budget(180.0, 0.05) and hash(b) == hash(Budget(180.0, 0.05))
    assert b != Budget(180.0, 0.1)
    assert not hasattr(b, "__dict__")


@settings(max_examples=300, deadline=None)
@given(ms=MS, tol=TOL, latency=MS)
def test_fits_is_the_rule(ms: float, tol: float, latency: float) -> None:
    b = Budget(ms, tol)
    assert b.threshold_ms == threshold(ms, tol) == ms * (1 + tol)
    assert b.fits(latency) is (latency <= ms * (1 + tol))
    assert b.fits(b.threshold_ms)
    assert not b.fits(math.nextafter(b.threshold_ms, math.inf))


@settings(max_examples=200, deadline=None)
@given(budgets=st.lists(MS, min_size=0, max_size=200), tol=TOL)
def test_vector_form_equals_scalar_form(budgets: list[float], tol: float) -> None:
    got = thresholds(np.asarray(budgets, dtype=np.float64), tol)
    assert got.dtype == np.float64
    # Exactly equal, not approximately: the same float64 product either way.
    assert got.tolist() == [Budget(b, tol).threshold_ms for b in budgets]


def test_vector_form_on_many_values() -> None:
    rng = np.random.default_rng(0)
    budgets = rng.uniform(1e-3, 1e4, 100_000)
    for tol in (0.0, 0.05, 0.1, 1 / 3, 1.0, *rng.uniform(0, 1, 20).tolist()):
        assert np.array_equal(thresholds(budgets, tol), np.array([threshold(b, tol) for b in budgets.tolist()]))


# Budgets whose threshold lands on, or one rounding step around, a config's latency: the ties.
@settings(max_examples=400, deadline=None)
@given(latency=st.floats(1.0, 1e4), tol=TOL, nudge=st.sampled_from([-1, 0, 1]))
def test_every_resolve_agrees_with_fits_at_the_tie(latency: float, tol: float, nudge: int) -> None:
    budget = latency / (1 + tol)
    for _ in range(abs(nudge)):
        budget = math.nextafter(budget, math.inf * nudge)
    slow = stats("high", 8, 16, 0.9, latency)
    fast = stats("low", 1, 10, 0.1, latency / 4)
    table = table_of([slow, fast])
    fits = Budget(budget, tol).fits(latency)
    # Table.resolve inlines the rule for speed; this holds the copy to Budget.
    assert (table.resolve(budget, tolerance=tol).knobs == slow.knobs) is fits
    assert (table.resolve_many([budget], tolerance=tol)[0].knobs == slow.knobs) is fits
    arr = table.resolve_array(np.array([budget]), tolerance=tol)
    assert (table.scope().frontier.entries[int(arr.entry_index[0])].knobs == slow.knobs) is fits
    assert (resolve_total(table, budget, 0, tolerance=tol)[0].knobs == slow.knobs) is fits
