"""Resolving budgets: the decision object, scopes, tolerance overrides and bad values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from controller.errors import BudgetError, ToleranceError
from controller.knobs import Knobs
from tests.controller.tables import grid, stats, table_of


@pytest.fixture()
def table():
    return table_of(grid(), text_vqa=[stats("low", 4, 12, 0.3, 90), stats("high", 8, 16, 0.9, 160)])


def test_decision_carries_everything(table) -> None:
    d = table.resolve(150.0)
    assert d.feasible and d.scope == "global" and d.table_version == table.version_id
    assert d.expected_latency_ms <= 150 * 1.05
    assert d.budget_ms == 150.0 and d.tolerance == 0.05
    assert set(d.to_dict()) >= {
        "tier",
        "top_k",
        "num_active_blocks",
        "accuracy",
        "latency",
        "num_samples",
        "accuracy_std",
        "latency_std",
        "feasible",
        "scope",
        "table_version",
    }
    assert (d.tier, d.top_k, d.num_active_blocks) == (d.knobs.tier, d.knobs.top_k, d.knobs.num_active_blocks)


def test_more_budget_never_less_accuracy(table) -> None:
    accs = [table.resolve(b).expected_accuracy for b in range(100, 260, 5)]
    assert accs == sorted(accs)


def test_infeasible_budget_returns_fastest_flagged(table) -> None:
    d = table.resolve(1.0)
    assert not d.feasible
    assert d.expected_latency_ms == min(c.latency_ms for c in table.configs())


def test_dataset_scope_and_unknown_dataset(table) -> None:
    assert table.resolve(100, dataset="text_vqa").scope == "text_vqa"
    assert table.resolve(100, dataset="text-vqa").knobs == Knobs("low", 4, 12)
    assert table.resolve(170, dataset="text_vqa").knobs == Knobs("high", 8, 16)
    d = table.resolve(170, dataset="no_such_set")
    assert d.scope == "global"
    assert table.scopes == ("global", "text_vqa")


def test_tolerance_override(table) -> None:
    base = table.resolve(130, tolerance=0.0)
    loose = table.resolve(130, tolerance=0.5)
    assert base.expected_latency_ms <= 130
    assert loose.expected_latency_ms > 130 and loose.expected_accuracy > base.expected_accuracy
    assert loose.tolerance == 0.5


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 0, -5, "150", None, True, [1]])
def test_bad_budget_raises_typed_error(table, bad) -> None:
    with pytest.raises(BudgetError) as e:
        table.resolve(bad)
    assert "milliseconds" in str(e.value) and repr(bad)[:3] in str(e.value)


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan, "0.1", True])
def test_bad_tolerance_raises_typed_error(table, bad) -> None:
    with pytest.raises(ToleranceError, match=r"\[0, 1\]"):
        table.resolve(150, tolerance=bad)


def test_batch_rejects_any_bad_budget(table) -> None:
    with pytest.raises(BudgetError, match="NaN"):
        table.resolve_array(np.array([100.0, math.nan]))
    with pytest.raises(BudgetError, match="not positive"):
        table.resolve_many([100.0, -1.0])


def test_numpy_scalars_accepted(table) -> None:
    assert table.resolve(np.float32(150)).knobs == table.resolve(150.0).knobs
    assert table.resolve(np.int64(150)).knobs == table.resolve(150).knobs


def test_all_knobs_and_summary(table) -> None:
    assert len(table.all_knobs()) == 27
    s = table.summary()
    assert s["version_id"] == table.version_id and "global" in s["scopes"]
    assert s["scopes"]["text_vqa"]["frontier"][0]["tier"] == "low"
