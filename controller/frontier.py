"""The Pareto frontier of one scope: the only configs that can ever win, sorted by latency.

Tie order (the seed left it to dict order; we define it):
- feasible budget: highest accuracy, then lowest latency, then canonical knob order
  (tier low < medium < high, then smaller top_k, then fewer blocks);
- no feasible config: the fastest one (closest to the budget, as the seed), then highest accuracy,
  then canonical knob order.
Sorting by (latency, -accuracy, knob order) and keeping each config that strictly beats every
faster one yields exactly the winners of that rule, so the last frontier entry whose latency fits the
threshold is the answer, and entry 0 is the infeasible answer.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from controller.budget import Budget
from controller.stats import ConfigStats


def _rank(c: ConfigStats) -> tuple[float, float, tuple[int, int, int]]:
    return (c.latency_ms, -c.accuracy, c.knobs.sort_key)


class Frontier:
    __slots__ = ("entries", "latencies", "latency_array")

    def __init__(self, configs: Sequence[ConfigStats]) -> None:
        assert configs, "a frontier needs at least one config"
        entries: list[ConfigStats] = []
        best = -np.inf
        for c in sorted(configs, key=_rank):
            if c.accuracy > best:
                entries.append(c)
                best = c.accuracy
        self.entries: tuple[ConfigStats, ...] = tuple(entries)
        self.latencies: list[float] = [c.latency_ms for c in entries]
        self.latency_array: npt.NDArray[np.float64] = np.asarray(self.latencies, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.entries)

    def index(self, threshold_ms: float) -> int:
        """Index of the best feasible entry for `latency <= threshold_ms`, or -1 when none fits."""
        return bisect_right(self.latencies, threshold_ms) - 1

    def indices(self, thresholds_ms: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
        return np.searchsorted(self.latency_array, thresholds_ms, side="right") - 1


def choose_by_scan(configs: Sequence[ConfigStats], budget_ms: float, tolerance: float) -> tuple[ConfigStats, bool]:
    """The seed's rule as a linear scan with the tie order above: the reference for tests."""
    budget = Budget(budget_ms, tolerance)
    feasible = [c for c in configs if budget.fits(c.latency_ms)]
    if feasible:
        return min(feasible, key=lambda c: (-c.accuracy, c.latency_ms, c.knobs.sort_key)), True
    return min(configs, key=lambda c: (abs(c.latency_ms - budget_ms), -c.accuracy, c.knobs.sort_key)), False
