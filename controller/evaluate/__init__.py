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

from controller.evaluate.results import (
    Averages,
    BudgetRow,
    ConfigOutcome,
    EvaluationResult,
    ScopeEvaluation,
    StrategyResult,
)
from controller.evaluate.run import FULL_CONFIG, evaluate, evaluate_split
from controller.evaluate.split import Split, split_by_mask, split_samples
from controller.evaluate.strategies import Strategy, budget_range, default_budgets, parse_strategies, strategy_name

__all__ = [
    "FULL_CONFIG",
    "Averages",
    "BudgetRow",
    "ConfigOutcome",
    "EvaluationResult",
    "ScopeEvaluation",
    "Split",
    "Strategy",
    "StrategyResult",
    "budget_range",
    "default_budgets",
    "evaluate",
    "evaluate_split",
    "parse_strategies",
    "split_by_mask",
    "split_samples",
    "strategy_name",
]
