"""The frozen answer to one budget: which knobs, what to expect, and where the answer came from."""

from __future__ import annotations

from typing import Any, NamedTuple

from controller.knobs import Knobs
from controller.stats import ConfigStats


class Decision(NamedTuple):
    # A NamedTuple rather than a frozen dataclass: it is built on every request, and a tuple is
    # several times cheaper to construct while being just as immutable.
    knobs: Knobs
    expected_accuracy: float
    expected_latency_ms: float
    feasible: bool
    scope: str
    table_version: str
    budget_ms: float
    tolerance: float
    stats: ConfigStats

    @property
    def tier(self) -> str:
        return self.knobs.tier

    @property
    def top_k(self) -> int:
        return self.knobs.top_k

    @property
    def num_active_blocks(self) -> int:
        return self.knobs.num_active_blocks

    def to_dict(self) -> dict[str, Any]:
        """The seed's predict() keys first, then what this project adds."""
        s = self.stats
        return {
            "tier": self.knobs.tier,
            "top_k": self.knobs.top_k,
            "num_active_blocks": self.knobs.num_active_blocks,
            "accuracy": self.expected_accuracy,
            "latency": self.expected_latency_ms,
            "num_samples": s.num_samples,
            "accuracy_std": s.accuracy_std,
            "latency_std": s.latency_std,
            "feasible": self.feasible,
            "scope": self.scope,
            "table_version": self.table_version,
            "budget_ms": self.budget_ms,
            "tolerance": self.tolerance,
        }
