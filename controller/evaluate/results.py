"""What an evaluation returns: per config, per budget, per scope, per strategy."""

from __future__ import annotations

from dataclasses import dataclass

from controller.evaluate.split import Split
from controller.evaluate.strategies import Strategy
from controller.knobs import Knobs
from controller.table import GLOBAL_SCOPE, Table


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
