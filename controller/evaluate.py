"""Judge a lookup table on held-out samples: SLO attainment, accuracy at budget, regret against an oracle.

Definitions (every number is computed on the test set, per scope: "global" pools all datasets, a
dataset scope holds that dataset's samples only):

- Split: by sample identity (dataset, `sample_key`), so one question's runs under every config fall on
  the same side. Per dataset, `round(test_fraction * distinct questions)` of them (at least 1, at most
  all but 1) go to the test set, drawn with `numpy.random.default_rng(seed)`. Datasets whose records
  carry no question id in `metadata` (key_from_metadata False) are split by record position instead,
  which assumes every config ran the same questions in the same order; the result names them.
- The table is built from the build set only; the chosen config is `Table.resolve(budget)`.
- Accuracy of a config: the mean accuracy over the test samples of that config in scope (whatever
  the aggregation of the table: the mean is what a served request stream gets on average).
- Violation rate: the share of those samples whose latency (the table's metric, prefill by default)
  exceeds the budget, with no tolerance. Attainment = 1 - violation rate.
- Effective accuracy: the mean of accuracy * (latency <= budget): a late answer counts as wrong.
- Oracle: the same rule applied to test-set statistics: among the table's configs that have test
  samples in scope, feasible = test latency statistic (same aggregation and quantile as the strategy)
  <= budget * (1 + tolerance); pick the highest test mean accuracy; none feasible: the fastest.
- Regret = oracle accuracy - chosen accuracy. It is >= 0 whenever the chosen config is feasible on the
  test statistic too (the oracle maximises over a set that contains it). It can be negative when the
  chosen config breaks the budget on the test set (the build set made it look fast enough): it then
  buys accuracy the oracle was not allowed to buy, and pays for it in violations.
- A budget below every config: the chosen config is the fastest one (flagged infeasible) and its
  violations count as measured. Every budget below the fastest config is an error.
- Baselines, which ignore the budget: the full config (high, 8, 16) and the fastest config of the
  table (by the strategy's latency statistic).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from controller.aggregate import aggregate_group, config_codes, knobs_from_code
from controller.build import build_table, valid_samples
from controller.errors import EvaluationError
from controller.frontier import choose_by_scan
from controller.knobs import Knobs
from controller.params import BuildParams, make_build_params
from controller.samples import SampleColumns
from controller.stats import ConfigStats
from controller.table import GLOBAL_SCOPE, Table
from controller.validate import validate_budgets

FULL_CONFIG = Knobs("high", 8, 16)
FloatArray = npt.NDArray[np.float64]


# --- split ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Split:
    build: SampleColumns
    test: SampleColumns
    test_fraction: float | None
    seed: int | None
    build_questions: int
    test_questions: int
    position_datasets: tuple[str, ...]  # split by record position: no question ids


def _identity(samples: SampleColumns) -> npt.NDArray[np.void]:
    pairs = np.empty(len(samples), dtype=[("d", np.int64), ("k", np.uint64)])
    pairs["d"], pairs["k"] = samples["dataset"], samples["sample_key"]
    return pairs


def split_by_mask(samples: SampleColumns, test: npt.NDArray[np.bool_], *,
                  test_fraction: float | None = None, seed: int | None = None) -> Split:
    """A split from a per-sample test mask; raises when a side is empty or one question is on both."""
    ident = _identity(samples)
    test_ids, build_ids = np.unique(ident[test]), np.unique(ident[~test])
    if len(np.intersect1d(test_ids, build_ids)):
        raise EvaluationError("a sample identity falls on both sides of the split")
    for side, n in (("test", len(test_ids)), ("build", len(build_ids))):
        if n == 0:
            raise EvaluationError(
                f"the {side} set is empty ({len(np.unique(ident))} distinct samples, "
                f"test_fraction={test_fraction}); each side needs at least one sample: load more samples")
    no_qid = ~samples["key_from_metadata"].astype(bool)
    pos = tuple(sorted({samples.datasets[i] for i in np.unique(samples["dataset"][no_qid])}))
    return Split(samples.select(~test), samples.select(test), test_fraction, seed,
                 len(build_ids), len(test_ids), pos)


def split_samples(samples: SampleColumns, test_fraction: float, seed: int) -> Split:
    if not (isinstance(test_fraction, (int, float)) and 0.0 < float(test_fraction) < 1.0):
        raise EvaluationError(f"test_fraction={test_fraction!r} is not valid; expected a number in (0, 1), "
                              "e.g. 0.3")
    if len(samples) == 0:
        raise EvaluationError("no samples to split")
    rng = np.random.default_rng(seed)
    ds, keys = samples["dataset"], samples["sample_key"]
    test = np.zeros(len(samples), dtype=bool)
    for d in range(len(samples.datasets)):
        rows = ds == d
        unique = np.unique(keys[rows])  # sorted: the draw depends only on the seed and the identities
        n = len(unique)
        if n == 0:
            continue
        n_test = min(max(round(test_fraction * n), 1), n - 1)
        chosen = unique[rng.permutation(n)[:n_test]]
        test[rows] = np.isin(keys[rows], chosen)
    return split_by_mask(samples, test, test_fraction=float(test_fraction), seed=seed)


# --- strategies and budgets -------------------------------------------------------------------------
@dataclass(frozen=True)
class Strategy:
    """How the table compares latency with budgets: the aggregate ("mean", "median") or a quantile."""

    name: str
    params: BuildParams


_QUANTILE_RE = re.compile(r"^p(\d{1,2}(\.\d+)?)$")


def strategy_name(params: BuildParams) -> str:
    q = params.latency_quantile
    return f"p{q * 100:g}" if q is not None else params.aggregation_method


def parse_strategies(spec: str, base: BuildParams) -> tuple[Strategy, ...]:
    """`"mean,p90,p95"` -> strategies sharing `base` except for the latency statistic."""
    names = [s.strip().lower() for s in spec.split(",") if s.strip()]
    if not names:
        raise EvaluationError(f"compare={spec!r} names no strategy; expected e.g. mean,p90,p95")
    out: list[Strategy] = []
    for name in names:
        values = base.model_dump()
        m = _QUANTILE_RE.match(name)
        if name in ("mean", "median", "max_accuracy"):
            values.update(aggregation_method=name, latency_quantile=None)
        elif m and 0 < float(m.group(1)) < 100:
            values.update(latency_quantile=float(m.group(1)) / 100)
        else:
            raise EvaluationError(f"compare strategy {name!r} is not valid; expected mean, median, "
                                  "max_accuracy or a latency percentile pNN such as p90, p95, p99")
        if any(s.name == name for s in out):
            raise EvaluationError(f"compare strategy {name!r} is listed twice")
        out.append(Strategy(name, make_build_params(**values)))
    return tuple(out)


def budget_range(start: float, stop: float, step: float) -> tuple[float, ...]:
    """start, start + step, ... up to stop inclusive."""
    if not all(math.isfinite(v) for v in (start, stop, step)) or start <= 0 or step <= 0 or stop < start:
        raise EvaluationError(f"budget_range {start:g} {stop:g} {step:g} is not valid; expected "
                              "START STOP STEP with 0 < START <= STOP and STEP > 0, e.g. 80 400 10")
    n = int(math.floor((stop - start) / step + 1e-9)) + 1
    if n > 10_000:
        raise EvaluationError(f"budget_range gives {n} budgets; use a larger step (at most 10000)")
    return tuple(round(start + i * step, 9) for i in range(n))


def default_budgets(table: Table) -> tuple[float, ...]:
    """10 ms steps from the fastest config (rounded down) to the slowest (rounded up)."""
    lat = [c.latency_ms for c in table.configs()]
    return budget_range(max(10.0, math.floor(min(lat) / 10) * 10), math.ceil(max(lat) / 10) * 10, 10.0)


# --- results ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConfigOutcome:
    """One config on the test samples of one scope at one budget (NaN metrics: no test samples)."""

    knobs: Knobs
    num_test_samples: int
    accuracy: float
    latency_ms: float  # test latency statistic (the strategy's aggregation/quantile)
    violation_rate: float
    effective_accuracy: float


@dataclass(frozen=True)
class BudgetRow:
    budget_ms: float
    chosen: ConfigOutcome
    chosen_feasible: bool  # by the table (build set)
    oracle: ConfigOutcome
    oracle_feasible: bool  # by the test statistic
    regret: float
    full: ConfigOutcome | None  # None: the scope has no test sample of the full config
    fastest: ConfigOutcome


@dataclass(frozen=True)
class Averages:
    """Plain means over the budgets (NaN entries skipped)."""

    accuracy: float
    violation_rate: float
    effective_accuracy: float
    oracle_accuracy: float
    regret: float
    full_accuracy: float
    full_violation_rate: float
    full_effective_accuracy: float
    fastest_accuracy: float
    fastest_violation_rate: float
    fastest_effective_accuracy: float

    @property
    def attainment(self) -> float:
        return 1.0 - self.violation_rate


@dataclass(frozen=True)
class ScopeEvaluation:
    scope: str
    num_test_samples: int
    rows: tuple[BudgetRow, ...]
    averages: Averages


@dataclass(frozen=True)
class StrategyResult:
    strategy: Strategy
    table: Table
    scopes: tuple[ScopeEvaluation, ...]

    def scope(self, name: str = GLOBAL_SCOPE) -> ScopeEvaluation:
        return next(s for s in self.scopes if s.scope == name)


@dataclass(frozen=True)
class EvaluationResult:
    split: Split
    budgets: tuple[float, ...]
    strategies: tuple[StrategyResult, ...]
    notes: tuple[str, ...]

    def strategy(self, name: str) -> StrategyResult:
        return next(s for s in self.strategies if s.strategy.name == name)


# --- evaluation ---------------------------------------------------------------------------------------
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
