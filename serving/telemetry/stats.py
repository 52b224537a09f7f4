"""Plain in-process counters behind `GET /v1/stats`, updated with the Ray metrics by
serving.telemetry.recorder, so that they can be read (and tested) without a Prometheus scrape."""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from typing import Any


def _percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list; None when empty."""
    if not sorted_values:
        return None
    rank = min(max(1, math.ceil(q * len(sorted_values))), len(sorted_values))
    return sorted_values[rank - 1]


class RouterStats:
    """Counts per router replica since it started. Resolve latency percentiles cover the last
    `window` answers (a recent window, not all time)."""

    def __init__(self, window: int = 1024) -> None:
        self._lock = threading.Lock()
        self.requests_by_config: Counter[str] = Counter()
        self.infeasible = 0
        self.fallback = 0
        self.bad_requests: Counter[str] = Counter()
        self.model_errors: Counter[str] = Counter()  # keys: ModelCallError.KINDS only
        self.budget_met = 0  # served requests whose measured latency met their budget
        self.budget_missed = 0
        self._resolve_us: deque[float] = deque(maxlen=window)

    def answered(self, resolve_ms: float, feasible: bool | None, fallback: bool) -> None:
        """One budget turned into knobs (a generate or a knobs request)."""
        with self._lock:
            self._resolve_us.append(resolve_ms * 1000)
            self.infeasible += feasible is False
            self.fallback += fallback

    def served(self, config_key: str) -> None:
        """One generate request answered by the model with this config."""
        with self._lock:
            self.requests_by_config[config_key] += 1

    def attainment(self, met: bool) -> None:
        with self._lock:
            self.budget_met += met
            self.budget_missed += not met

    def bad_request(self, reason: str) -> None:
        with self._lock:
            self.bad_requests[reason] += 1

    def model_error(self, kind: str) -> None:
        with self._lock:
            self.model_errors[kind] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            latencies = sorted(self._resolve_us)
            by_config = dict(self.requests_by_config)
            bad = dict(self.bad_requests)
            model_errors = dict(self.model_errors)
            infeasible, fallback = self.infeasible, self.fallback
            met, missed = self.budget_met, self.budget_missed
        return {
            "requests_total": sum(by_config.values()),
            "requests_by_config": by_config,
            "infeasible": infeasible,
            "fallback": fallback,
            "bad_requests_total": sum(bad.values()),
            "bad_requests_by_reason": bad,
            "model_errors": model_errors,
            # As this router measured them (first token or whole request, per budget.covers).
            "budget_met": met,
            "budget_missed": missed,
            "attainment": met / (met + missed) if met + missed else None,
            "resolve_latency_us": {
                "p50": _percentile(latencies, 0.50),
                "p99": _percentile(latencies, 0.99),
                "window": len(latencies),
            },
        }
