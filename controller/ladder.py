"""The ladder of a scope: its configs that are worth running, fastest first, each more accurate
than every faster one. A budget picks the highest rung whose latency fits (`Table.resolve` does
exactly that on the first-token ladder, the frontier); the serving layer sends a request's ladder
to the model replica so that the choice can be made again when the request leaves the queue, with
the time it really has left.

With a token count the rungs' latency is the whole request's (first token + decode for that many
tokens, as `controller.decode_budget.resolve_total` counts it), which reorders configs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from controller.decode_budget import MAX_NEW_TOKENS, decode_rates
from controller.errors import TokenCountError
from controller.stats import ConfigStats
from controller.table import Table


@dataclass(frozen=True)
class Rung:
    stats: ConfigStats
    latency_ms: float  # what a budget is compared with: first token, or the whole request

    @property
    def service_ms(self) -> float:
        """The config's mean first token: what requests queued behind this one wait for."""
        return self.stats.service_ms


def ladder(table: Table, dataset: str | None = None, max_new_tokens: int | None = None) -> tuple[Rung, ...]:
    """Rungs by increasing latency and strictly increasing accuracy; at least one (the fastest).
    The highest rung with latency <= budget x (1 + tolerance) is the decision `Table.resolve` (no
    token count) or `resolve_total` (with one) makes for that budget."""
    scope = table.scope(dataset)
    if max_new_tokens is None:
        return tuple(Rung(c, c.latency_ms) for c in scope.frontier.entries)
    if type(max_new_tokens) is not int or not 0 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise TokenCountError(max_new_tokens, MAX_NEW_TOKENS)
    rates = decode_rates(scope.configs)

    def total(c: ConfigStats) -> float:
        rate = rates[c]
        return c.latency_ms + (max_new_tokens * rate if rate is not None else 0.0)

    rungs: list[Rung] = []
    best = float("-inf")
    # Same tie order as resolve_total: faster first, then the knobs' own order.
    for c in sorted(scope.configs, key=lambda c: (total(c), -c.accuracy, c.knobs.sort_key)):
        if c.accuracy > best:
            rungs.append(Rung(c, total(c)))
            best = c.accuracy
    return tuple(rungs)


def highest_fitting(latencies_ms: Iterable[float], threshold_ms: float) -> int:
    """Index of the highest rung (latencies ascending) with latency <= threshold_ms; 0 (the
    fastest) when none fits."""
    best = 0
    for i, latency in enumerate(latencies_ms):
        if latency <= threshold_ms:
            best = i
        else:
            break
    return best
