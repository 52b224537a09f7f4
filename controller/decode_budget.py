"""Budgets that cover the whole request: first-token latency plus decode time for max_new_tokens.

The frontier is sorted by first-token latency; adding `max_new_tokens x decode ms/token` (a
different rate per config) reorders configs for every token count, so this answer scans the
scope's configs (a few dozen) with the same rule and tie order as `controller.frontier`.
"""

from __future__ import annotations

from controller.budget import Budget
from controller.decision import Decision
from controller.errors import TokenCountError
from controller.stats import ConfigStats
from controller.table import Table
from controller.validate import validate_budget, validate_tolerance

# A request may ask for at most this many tokens here; the serving layer has its own, lower limit.
MAX_NEW_TOKENS = 1_000_000


def decode_rates(configs: tuple[ConfigStats, ...] | list[ConfigStats]) -> dict[ConfigStats, float | None]:
    """Per-token decode ms per config. A config without decode statistics gets the slowest rate
    known in its scope (a safe guess); None only when the scope knows none at all."""
    known = [c.decode_ms_per_token for c in configs if c.decode_ms_per_token is not None]
    worst = max(known) if known else None
    return {c: (c.decode_ms_per_token if c.decode_ms_per_token is not None else worst) for c in configs}


def resolve_total(
    table: Table,
    budget_ms: object,
    max_new_tokens: object,
    *,
    tolerance: object = None,
    dataset: str | None = None,
) -> tuple[Decision, float | None]:
    """(decision, expected decode ms) for a budget that covers first token + decode. The decision's
    expected_latency_ms is the whole request's; its `stats` keep the config's first-token figures.
    Expected decode is None when the table has no decode statistics (then only first token counts)."""
    budget = validate_budget(budget_ms)
    if type(max_new_tokens) is not int or not 0 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise TokenCountError(max_new_tokens, MAX_NEW_TOKENS)
    tol = table.tolerance if tolerance is None else validate_tolerance(tolerance)
    scope = table.scope(dataset)
    rates = decode_rates(scope.configs)
    fit = Budget(budget, tol)

    def total(c: ConfigStats) -> float:
        rate = rates[c]
        return c.latency_ms + (max_new_tokens * rate if rate is not None else 0.0)

    feasible = [c for c in scope.configs if fit.fits(total(c))]
    if feasible:
        best = min(feasible, key=lambda c: (-c.accuracy, total(c), c.knobs.sort_key))
    else:
        best = min(scope.configs, key=lambda c: (total(c), -c.accuracy, c.knobs.sort_key))
    rate = rates[best]
    decode = None if rate is None else max_new_tokens * rate
    d = Decision(best.knobs, best.accuracy, total(best), bool(feasible), scope.name, table.version_id,
                 budget, tol, best)
    return d, decode
