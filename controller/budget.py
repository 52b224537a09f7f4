"""A latency budget and the rule that owns it: a latency fits when latency <= budget * (1 + tolerance)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


def threshold(budget_ms: float, tolerance: float) -> float:
    """The largest latency that fits `budget_ms` with `tolerance`. A plain function beside Budget
    for the per-request path, where building a Budget would cost more than the resolve around it."""
    return budget_ms * (1 + tolerance)


def thresholds(budgets_ms: npt.NDArray[np.float64], tolerance: float) -> npt.NDArray[np.float64]:
    """`threshold` for an array of budgets: the same float64 products, one numpy multiplication."""
    return budgets_ms * (1 + tolerance)


@dataclass(frozen=True, slots=True)
class Budget:
    """A latency budget in milliseconds and the fraction it may be overrun by. Not validated here:
    values from outside go through controller.validate first, and a budget already spent (ms <= 0,
    e.g. what is left of a deadline) is a valid value that no positive latency fits."""

    ms: float
    tolerance: float = 0.0

    @property
    def threshold_ms(self) -> float:
        return threshold(self.ms, self.tolerance)

    def fits(self, latency_ms: float) -> bool:
        return latency_ms <= threshold(self.ms, self.tolerance)
