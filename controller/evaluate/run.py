"""Run an evaluation: build on the build set, resolve each budget, score on the test set."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from controller.aggregate import aggregate_group, config_codes, knobs_from_code
from controller.build import build_table, valid_samples
from controller.errors import EvaluationError
from controller.evaluate.results import (
    Averages,
    BudgetRow,
    ConfigOutcome,
    EvaluationResult,
    ScopeEvaluation,
    StrategyResult,
)
from controller.evaluate.split import Split, split_samples
from controller.evaluate.strategies import Strategy, default_budgets
from controller.frontier import choose_by_scan
from controller.knobs import Knobs
from controller.params import BuildParams
from controller.samples import SampleColumns
from controller.stats import ConfigStats
from controller.table import GLOBAL_SCOPE, Table
from controller.validate import validate_budgets

FULL_CONFIG = Knobs("high", 8, 16)
FloatArray = npt.NDArray[np.float64]


class _TestConfig:
    __slots__ = ("knobs", "accuracy", "latency", "stats")

    def __init__(self, knobs: Knobs, accuracy: FloatArray, latency: FloatArray, params: BuildParams) -> None:
        self.knobs, self.accuracy, self.latency = knobs, accuracy, latency
        self.stats = aggregate_group(knobs, accuracy, latency, params)

    def outcome(self, budget_ms: float) -> ConfigOutcome:
        on_time = self.latency <= budget_ms
        mean_acc = self.stats.accuracy_mean
        assert mean_acc is not None
        return ConfigOutcome(self.knobs, len(self.accuracy), mean_acc, self.stats.latency_ms,
                             float(np.mean(~on_time)), float(np.mean(self.accuracy * on_time)))

    def oracle_stats(self) -> ConfigStats:
        """The test statistics in the shape the rule reads: mean accuracy, the strategy's latency."""
        s = self.stats
        assert s.accuracy_mean is not None
        return ConfigStats(self.knobs, s.num_samples, s.accuracy_mean, s.latency_ms, s.accuracy_std,
                           s.latency_std)


def _no_samples(knobs: Knobs) -> ConfigOutcome:
    nan = float("nan")
    return ConfigOutcome(knobs, 0, nan, nan, nan, nan)


def _test_configs(test: SampleColumns, latency: FloatArray, rows: npt.NDArray[np.bool_],
                  params: BuildParams) -> dict[Knobs, _TestConfig]:
    codes = config_codes(test["tier"][rows], test["top_k"][rows], test["num_active_blocks"][rows])
    acc, lat = test["accuracy"][rows].astype(np.float64), latency[rows]
    out: dict[Knobs, _TestConfig] = {}
    for code in np.unique(codes):
        sel = codes == code
        knobs = knobs_from_code(int(code))
        out[knobs] = _TestConfig(knobs, acc[sel], lat[sel], params)
    return out


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _averages(rows: Sequence[BudgetRow]) -> Averages:
    def avg(get: object) -> float:
        assert callable(get)
        return _nanmean([float(get(r)) for r in rows])

    nan = float("nan")
    return Averages(
        avg(lambda r: r.chosen.accuracy), avg(lambda r: r.chosen.violation_rate),
        avg(lambda r: r.chosen.effective_accuracy), avg(lambda r: r.oracle.accuracy), avg(lambda r: r.regret),
        avg(lambda r: r.full.accuracy if r.full else nan),
        avg(lambda r: r.full.violation_rate if r.full else nan),
        avg(lambda r: r.full.effective_accuracy if r.full else nan),
        avg(lambda r: r.fastest.accuracy), avg(lambda r: r.fastest.violation_rate),
        avg(lambda r: r.fastest.effective_accuracy),
    )


def _evaluate_scope(table: Table, scope: str, tests: dict[Knobs, _TestConfig],
                    budgets: Sequence[float]) -> ScopeEvaluation:
    table_scope = table.scope(None if scope == GLOBAL_SCOPE else scope)
    candidates = [tests[c.knobs].oracle_stats() for c in table_scope.configs if c.knobs in tests]
    tol = table.tolerance
    fastest_knobs = table_scope.frontier.entries[0].knobs
    full = tests.get(FULL_CONFIG)

    def outcome(knobs: Knobs, budget: float) -> ConfigOutcome:
        t = tests.get(knobs)
        return t.outcome(budget) if t is not None else _no_samples(knobs)

    rows = []
    for b in budgets:
        decision = table.resolve(b, dataset=None if scope == GLOBAL_SCOPE else scope)
        chosen = outcome(decision.knobs, b)
        best, ok = choose_by_scan(candidates, b, tol)
        oracle = outcome(best.knobs, b)
        rows.append(BudgetRow(b, chosen, decision.feasible, oracle, ok, oracle.accuracy - chosen.accuracy,
                              full.outcome(b) if full is not None else None, outcome(fastest_knobs, b)))
    n = sum(len(t.accuracy) for t in tests.values())
    return ScopeEvaluation(scope, n, tuple(rows), _averages(rows))


def _evaluate_strategy(split: Split, strategy: Strategy, budgets: Sequence[float] | None,
                       per_dataset: bool) -> tuple[StrategyResult, tuple[float, ...]]:
    params = strategy.params
    table = build_table(split.build, params, source={"evaluate": "build split"})
    chosen_budgets = tuple(budgets) if budgets is not None else default_budgets(table)
    test, latency, _ = valid_samples(split.test, params)
    if len(test) == 0:
        raise EvaluationError("the test set has no sample with a usable latency")
    scopes = [(GLOBAL_SCOPE, np.ones(len(test), dtype=bool))]
    if per_dataset:
        for i, name in enumerate(test.datasets):
            rows = test["dataset"] == i
            if rows.any() and name in table.scope_map:
                scopes.append((name, rows))
    results = []
    for name, rows in scopes:
        tests = _test_configs(test, latency, rows, params)
        if not any(c.knobs in tests for c in table.scope(name).configs):
            raise EvaluationError(f"scope {name!r}: no config of the table has a test sample")
        results.append(_evaluate_scope(table, name, tests, chosen_budgets))
    return StrategyResult(strategy, table, tuple(results)), chosen_budgets


def evaluate_split(split: Split, strategies: Sequence[Strategy], *, budgets: Sequence[float] | None = None,
                   per_dataset: bool = False) -> EvaluationResult:
    """Every strategy on one split. budgets None: 10 ms steps over the first strategy's table."""
    if not strategies:
        raise EvaluationError("no strategy to evaluate")
    if budgets is not None:
        if len(budgets) == 0:
            raise EvaluationError("no budget given; pass --budgets 100 150 ... or --budget_range 80 400 10")
        budgets = tuple(sorted(set(validate_budgets(list(budgets)).tolist())))
    results: list[StrategyResult] = []
    for s in strategies:
        result, budgets = _evaluate_strategy(split, s, budgets, per_dataset)
        results.append(result)
    assert budgets is not None
    notes: list[str] = []
    if split.position_datasets:
        notes.append("split by record position (no question id in metadata) for: "
                     + ", ".join(split.position_datasets))
    for r in results:
        g = r.scope()
        late = [row.budget_ms for row in g.rows if not row.chosen_feasible]
        fastest = r.table.frontier()[0].latency_ms
        if len(late) == len(g.rows):
            raise EvaluationError(
                f"every budget ({min(budgets):g}-{max(budgets):g} ms) is below the fastest config's latency "
                f"({fastest:.1f} ms, strategy {r.strategy.name}); "
                f"use budgets of at least {math.ceil(fastest)} ms")
        if late:
            notes.append(f"{r.strategy.name}: {len(late)} budget(s) below every config "
                         f"({min(late):g}-{max(late):g} ms < {fastest:.1f} ms): the fastest config is chosen "
                         "and its violations count")
    return EvaluationResult(split, budgets, tuple(results), tuple(notes))


def evaluate(samples: SampleColumns, strategies: Sequence[Strategy], *, test_fraction: float = 0.3,
             seed: int = 0, budgets: Sequence[float] | None = None,
             per_dataset: bool = False) -> EvaluationResult:
    """Split by sample identity, build each strategy's table on the build set, score it on the test set."""
    split = split_samples(samples, test_fraction, seed)
    return evaluate_split(split, strategies, budgets=budgets, per_dataset=per_dataset)
