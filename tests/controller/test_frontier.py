"""The frontier resolve equals the seed's brute-force rule for every budget, ties included."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.frontier import Frontier, choose_by_scan
from controller.knobs import TIERS
from tests.controller.tables import stats, table_of

# Few distinct values so that ties in latency and accuracy are common.
LATS = st.sampled_from([50.0, 80.0, 100.0, 100.0000001, 120.5, 150.0, 200.0, 333.3])
ACCS = st.sampled_from([0.0, 0.3, 0.5, 0.5000001, 0.6, 0.9, 1.0])


@st.composite
def config_lists(draw: st.DrawFn) -> list:
    knobs = draw(
        st.lists(
            st.tuples(st.sampled_from(TIERS), st.integers(1, 8), st.integers(10, 16)),
            min_size=1,
            max_size=25,
            unique=True,
        )
    )
    return [stats(t, k, n, draw(ACCS), draw(LATS)) for t, k, n in knobs]


budgets = st.one_of(st.floats(1.0, 500.0), st.sampled_from([50.0, 80.0, 100.0, 150.0, 200.0, 95.238095238]))


@settings(max_examples=400, deadline=None)
@given(
    configs=config_lists(), budget=budgets, tol=st.one_of(st.just(0.0), st.just(0.05), st.floats(0.0, 1.0))
)
def test_resolve_equals_brute_force(configs: list, budget: float, tol: float) -> None:
    table = table_of(configs)
    expected, feasible = choose_by_scan(configs, budget, tol)
    got = table.resolve(budget, tolerance=tol)
    assert got.knobs == expected.knobs
    assert got.feasible is feasible
    # And the seed's own rule, whatever its tie order: best feasible accuracy, or the fastest config.
    ok = [c for c in configs if c.latency_ms <= budget * (1 + tol)]
    if ok:
        assert got.expected_accuracy == max(c.accuracy for c in ok)
    else:
        assert got.expected_latency_ms == min(c.latency_ms for c in configs)


@settings(max_examples=100, deadline=None)
@given(configs=config_lists(), budgets_=st.lists(budgets, min_size=1, max_size=50), tol=st.floats(0.0, 1.0))
def test_batch_equals_single(configs: list, budgets_: list, tol: float) -> None:
    table = table_of(configs)
    batch = table.resolve_many(budgets_, tolerance=tol)
    single = [table.resolve(b, tolerance=tol) for b in budgets_]
    assert batch == single
    arr = table.resolve_array(np.array(budgets_), tolerance=tol)
    assert [table.scope().frontier.entries[i].knobs for i in arr.entry_index] == [d.knobs for d in single]
    assert arr.feasible.tolist() == [d.feasible for d in single]


def test_frontier_keeps_only_pareto_configs() -> None:
    a = stats("low", 4, 12, 0.5, 100)
    dominated = stats("low", 6, 12, 0.5, 110)  # slower, not more accurate
    b = stats("medium", 8, 16, 0.7, 150)
    f = Frontier([b, dominated, a])
    assert [c.knobs for c in f.entries] == [a.knobs, b.knobs]


def test_tie_order_is_defined() -> None:
    # Equal accuracy: the faster wins; equal accuracy and latency: canonical knob order wins.
    fast = stats("high", 8, 16, 0.7, 140)
    slow = stats("low", 4, 12, 0.7, 150)
    twin_a = stats("medium", 6, 14, 0.6, 120)
    twin_b = stats("low", 8, 16, 0.6, 120)
    table = table_of([slow, fast, twin_a, twin_b])
    assert table.resolve(200, tolerance=0).knobs == fast.knobs
    assert table.resolve(130, tolerance=0).knobs == twin_b.knobs  # low < medium
    # Infeasible: fastest; among equally fast, most accurate, then canonical order.
    fastest_tie = stats("low", 4, 14, 0.65, 120)
    table = table_of([twin_a, twin_b, fastest_tie, fast])
    decision = table.resolve(10, tolerance=0)
    assert decision.knobs == fastest_tie.knobs and decision.feasible is False


def test_budget_exactly_on_threshold_is_feasible() -> None:
    c = stats("low", 4, 12, 0.5, 105.0)
    table = table_of([c, stats("high", 8, 16, 0.8, 300.0)])
    assert table.resolve(100.0, tolerance=0.05).feasible  # 100 * 1.05 == 105.0
    assert not table.resolve(99.99, tolerance=0.05).feasible
