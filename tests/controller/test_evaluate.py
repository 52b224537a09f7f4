"""Held-out evaluation on a hand-written fixture: every expected number is computed by hand below."""

from __future__ import annotations

import math

import numpy as np
import pytest

from controller.errors import BudgetError, ControllerError, EvaluationError
from controller.evaluate import (
    EvaluationResult,
    Split,
    Strategy,
    budget_range,
    evaluate,
    evaluate_split,
    parse_strategies,
    split_by_mask,
    split_samples,
)
from controller.evaluate.report import text_lines, to_json
from controller.knobs import TIERS, Knobs
from controller.params import BuildParams
from controller.samples import SampleColumns

A, B, C = Knobs("low", 4, 12), Knobs("medium", 8, 16), Knobs("high", 8, 16)  # C is the full config
# (knobs, question) -> (accuracy, prefill latency). Questions 0-3 are the build set, 4-5 the test set.
FIXTURE: dict[Knobs, list[tuple[float, float]]] = {
    # build: mean latency 50, p95 50, accuracy 0.5 | test: mean 55, p95 68.5, accuracy 0.5
    A: [(0, 50), (1, 50), (0, 50), (1, 50), (1, 40), (0, 70)],
    # build: mean 100, p95 100 + 0.85 * 30 = 125.5, accuracy 0.75 | test: mean 110, p95 128, accuracy 1.0
    B: [(1, 80), (1, 90), (0, 100), (1, 130), (1, 90), (1, 130)],
    # build: 150 everywhere, accuracy 1.0 | test: mean 150, p95 159, accuracy 1.0
    C: [(1, 150), (1, 150), (1, 150), (1, 150), (1, 140), (1, 160)],
}
BUDGETS = (30.0, 60.0, 100.0, 120.0, 160.0)
PARAMS = BuildParams(tolerance=0.0)


def columns(fixture: dict[Knobs, list[tuple[float, float]]], *, datasets: tuple[str, ...] = ("vqa",),
            from_metadata: bool = True) -> SampleColumns:
    names = ("dataset", "tier", "top_k", "num_active_blocks", "accuracy", "latency_prefill", "latency_total",
             "sample_key")
    cols: dict[str, list[float]] = {k: [] for k in names}
    for d in range(len(datasets)):
        for knobs, rows in fixture.items():
            for q, (acc, lat) in enumerate(rows):
                for name, v in (("dataset", d), ("tier", TIERS.index(knobs.tier)), ("top_k", knobs.top_k),
                                ("num_active_blocks", knobs.num_active_blocks), ("accuracy", acc),
                                ("latency_prefill", lat), ("latency_total", lat + 100), ("sample_key", q)):
                    cols[name].append(v)
    arrays = {k: np.asarray(v) for k, v in cols.items()}
    arrays["key_from_metadata"] = np.full(len(cols["accuracy"]), from_metadata)
    return SampleColumns(datasets, arrays)


def hand_split(samples: SampleColumns) -> Split:
    return split_by_mask(samples, samples["sample_key"] >= 4)


def run(strategies: tuple[Strategy, ...]) -> EvaluationResult:
    samples = columns(FIXTURE)
    return evaluate_split(hand_split(samples), strategies, budgets=BUDGETS)


MEAN = Strategy("mean", PARAMS)
P95 = Strategy("p95", PARAMS.model_copy(update={"latency_quantile": 0.95}))


def test_mean_strategy_matches_hand_computation() -> None:
    result = run((MEAN,))
    g = result.strategies[0].scope()
    assert g.num_test_samples == 6
    # budget: chosen, table-feasible, accuracy, violation rate, effective accuracy, oracle, regret
    expected = [
        (30, A, False, 0.5, 1.0, 0.0, A, 0.0),  # below every config: fastest, every sample late
        (60, A, True, 0.5, 0.5, 0.5, A, 0.0),  # 70 > 60 is late; the on-time one had accuracy 1
        (100, B, True, 1.0, 0.5, 0.5, A, -0.5),  # B's test mean 110 > 100: the oracle may not take it
        (120, B, True, 1.0, 0.5, 0.5, B, 0.0),
        (160, C, True, 1.0, 0.0, 1.0, B, 0.0),  # oracle tie at 1.0: B is faster (160 is not > 160)
    ]
    for row, (budget, chosen, feasible, acc, viol, eff, oracle, regret) in zip(g.rows, expected, strict=True):
        assert row.budget_ms == budget
        assert (row.chosen.knobs, row.chosen_feasible, row.oracle.knobs) == (chosen, feasible, oracle)
        assert row.chosen.num_test_samples == 2
        assert row.chosen.accuracy == pytest.approx(acc)
        assert row.chosen.violation_rate == pytest.approx(viol)
        assert row.chosen.effective_accuracy == pytest.approx(eff)
        assert row.regret == pytest.approx(regret)
        assert row.fastest.knobs == A and row.full is not None and row.full.knobs == C
    assert [r.oracle_feasible for r in g.rows] == [False, True, True, True, True]
    assert g.rows[2].oracle.latency_ms == pytest.approx(55)  # test mean latency of A
    # baselines: full C late unless the budget is 160; fastest A late at 30 (both) and 60 (one)
    assert [r.full.violation_rate for r in g.rows] == pytest.approx([1, 1, 1, 1, 0])
    assert [r.fastest.violation_rate for r in g.rows] == pytest.approx([1, 0.5, 0, 0, 0])
    a = g.averages
    assert (a.accuracy, a.violation_rate, a.effective_accuracy) == pytest.approx((0.8, 0.5, 0.5))
    assert a.attainment == pytest.approx(0.5)
    assert (a.oracle_accuracy, a.regret) == pytest.approx((0.7, -0.1))
    assert (a.full_accuracy, a.full_violation_rate, a.full_effective_accuracy) == \
        pytest.approx((1.0, 0.8, 0.2))
    assert (a.fastest_accuracy, a.fastest_violation_rate, a.fastest_effective_accuracy) == \
        pytest.approx((0.5, 0.3, 0.4))
    assert any("below every config" in n for n in result.notes)


def test_compare_mean_and_p95() -> None:
    result = run((MEAN, P95))
    p95 = result.strategy("p95").scope()
    # build p95 of B is 125.5: B never fits 100 or 120, so A is chosen there
    assert [r.chosen.knobs for r in p95.rows] == [A, A, A, A, C]
    # oracle on test p95 (A 68.5, B 128, C 159): nothing fits 30 or 60 (A, the fastest), B at 160
    assert [r.oracle.knobs for r in p95.rows] == [A, A, A, A, B]
    assert [r.oracle_feasible for r in p95.rows] == [False, False, True, True, True]
    a = p95.averages
    assert (a.accuracy, a.violation_rate, a.effective_accuracy, a.regret) == pytest.approx((0.6, 0.3, 0.5, 0))
    mean = result.strategy("mean").scope().averages
    assert a.attainment > mean.attainment and a.accuracy < mean.accuracy  # what tail-aware budgets buy
    lines = "\n".join(text_lines(result))
    assert "compare, scope global" in lines and "p95 acc" in lines and "mean acc" in lines


def test_per_dataset_scopes() -> None:
    samples = columns(FIXTURE, datasets=("okvqa", "vqa"))
    result = evaluate_split(hand_split(samples), (MEAN,), budgets=BUDGETS, per_dataset=True)
    scopes = result.strategies[0].scopes
    assert [s.scope for s in scopes] == ["global", "okvqa", "vqa"]
    # both datasets hold the same numbers, so every scope scores the same
    for s in scopes[1:]:
        assert s.num_test_samples == 6
        assert s.averages == scopes[0].averages


def test_split_by_identity_fraction_and_seed() -> None:
    rows = [(1.0, 100.0)] * 10
    samples = columns({A: rows, B: rows, C: rows}, datasets=("a", "b"))
    split = split_samples(samples, 0.3, seed=7)
    assert (split.test_questions, split.build_questions) == (6, 14)  # round(0.3 * 10) = 3 per dataset
    assert (len(split.test), len(split.build)) == (18, 42)  # each question's 3 configs on one side
    test_ids = set(zip(split.test["dataset"].tolist(), split.test["sample_key"].tolist(), strict=True))
    build_ids = set(zip(split.build["dataset"].tolist(), split.build["sample_key"].tolist(), strict=True))
    assert not test_ids & build_ids
    again = split_samples(samples, 0.3, seed=7)
    assert np.array_equal(again.test["sample_key"], split.test["sample_key"])
    others = {tuple(split_samples(samples, 0.3, seed=s).test["sample_key"].tolist()) for s in range(5)}
    assert len(others) > 1
    assert split.position_datasets == ()


def test_evaluate_is_deterministic_with_a_seed() -> None:
    rows = [(q % 2, 50.0 + 10 * q) for q in range(12)]
    samples = columns({A: rows, B: [(1, 2 * lat) for _, lat in rows], C: [(1, 3 * lat) for _, lat in rows]})
    first = to_json(evaluate(samples, (MEAN,), test_fraction=0.5, seed=3, budgets=[120, 200]))
    second = to_json(evaluate(samples, (MEAN,), test_fraction=0.5, seed=3, budgets=[120, 200]))
    for r in (first, second):
        for s in r["strategies"]:
            s.pop("table_version")  # stamped with the build time
    assert first == second


def test_position_split_is_a_stated_fallback() -> None:
    samples = columns(FIXTURE, from_metadata=False)
    result = evaluate_split(hand_split(samples), (MEAN,), budgets=BUDGETS)
    assert result.split.position_datasets == ("vqa",)
    assert any("split by record position" in n and "vqa" in n for n in result.notes)
    assert to_json(result)["split"]["position_split_datasets"] == ["vqa"]


@pytest.mark.parametrize("fraction", [0, 1, -0.2, 1.5, float("nan"), "0.3"])
def test_bad_test_fraction(fraction: object) -> None:
    with pytest.raises(EvaluationError, match="test_fraction"):
        split_samples(columns(FIXTURE), fraction, seed=0)  # type: ignore[arg-type]


def test_empty_split() -> None:
    one_question = columns({A: [(1, 50)], B: [(1, 90)]})
    with pytest.raises(EvaluationError, match="set is empty"):
        split_samples(one_question, 0.5, seed=0)
    samples = columns(FIXTURE)
    with pytest.raises(EvaluationError, match="test set is empty"):
        split_by_mask(samples, np.zeros(len(samples), dtype=bool))
    with pytest.raises(EvaluationError, match="no samples"):
        split_samples(samples.select(np.zeros(len(samples), dtype=bool)), 0.3, seed=0)


def test_budgets_below_every_config_and_bad_budgets() -> None:
    split = hand_split(columns(FIXTURE))
    with pytest.raises(EvaluationError, match="below the fastest config's latency .50.0 ms"):
        evaluate_split(split, (MEAN,), budgets=[10, 20])
    with pytest.raises(EvaluationError, match="no budget"):
        evaluate_split(split, (MEAN,), budgets=[])
    with pytest.raises(BudgetError):
        evaluate_split(split, (MEAN,), budgets=[100, -5])


def test_default_budgets_span_the_table() -> None:
    result = evaluate_split(hand_split(columns(FIXTURE)), (MEAN,))
    assert result.budgets == budget_range(50, 150, 10)


def test_budget_range_and_strategy_parsing() -> None:
    assert budget_range(80, 100, 10) == (80, 90, 100)
    assert budget_range(80, 95, 10) == (80, 90)
    for bad in ((0, 10, 1), (100, 80, 10), (80, 100, 0), (80, math.inf, 1)):
        with pytest.raises(EvaluationError, match="budget_range"):
            budget_range(*bad)
    got = parse_strategies("mean, p90,P99.5,median", PARAMS)
    assert [s.name for s in got] == ["mean", "p90", "p99.5", "median"]
    assert [s.params.latency_quantile for s in got] == [None, 0.9, 0.995, None]
    assert got[3].params.aggregation_method == "median" and got[0].params.tolerance == 0.0
    for spec in ("p100", "fast", "p0", "", "mean,mean"):
        with pytest.raises(ControllerError):
            parse_strategies(spec, PARAMS)


def test_json_has_no_nan() -> None:
    import json

    result = run((MEAN, P95))
    text = json.dumps(to_json(result), allow_nan=False)
    data = json.loads(text)
    assert data["budgets_ms"] == list(BUDGETS)
    assert data["strategies"][1]["scopes"][0]["averages"]["attainment"] == pytest.approx(0.7)
