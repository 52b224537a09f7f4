"""A model replica's view of its own queue: who waits, what runs, how long work takes compared
with the table. Pure (time is an argument), so the model deployment and tests share one rule."""

from __future__ import annotations

import math
from collections import deque
from statistics import median

from serving.estimators import TAIL_QUANTILE, upper_quantile
from serving.wire import ReplicaReport


class ReplicaQueue:
    def __init__(self, replica: str, max_batch_size: int, window: int = 64) -> None:
        self.replica = replica
        self.max_batch_size = max(1, max_batch_size)
        self._waiting: dict[int, tuple[str, float | None, float]] = {}  # token -> (config, expected, arrived)
        self._running: dict[int, tuple[float, float]] = {}  # group id -> (started, expected ms scaled)
        self._ratios: deque[float] = deque(maxlen=window)
        self._service_ms: deque[float] = deque(maxlen=window)
        # First token / table latency per backend call: what a table's first-token latency means here
        # (the whole call also decodes, so its ratio would overstate a first-token budget's needs).
        self._first_token_ratios: deque[float] = deque(maxlen=window)

    def arrived(self, token: int, config: str, expected_ms: float | None, now: float) -> None:
        self._waiting[token] = (config, expected_ms, now)

    def started(self, group: int, tokens: list[int], now: float) -> list[float]:
        """A backend call begins for `tokens`; returns each one's queue wait in ms."""
        waits, expected = [], []
        for t in tokens:
            _, e, arrived = self._waiting.pop(t, ("", None, now))
            waits.append((now - arrived) * 1000)
            expected.append(e)
        self._running[group] = (now, self._scaled(max((e for e in expected if e is not None), default=None)))
        return waits

    def finished(self, group: int, expected_ms: float | None, service_ms: float) -> None:
        self._running.pop(group, None)
        if math.isfinite(service_ms) and service_ms >= 0:
            self._service_ms.append(service_ms)
            if expected_ms is not None and expected_ms > 0:
                self._ratios.append(service_ms / expected_ms)

    def dropped(self, token: int) -> None:
        """A request that never reached a backend call (bad knobs, cancelled)."""
        self._waiting.pop(token, None)

    def first_token(self, first_token_ms: float, expected_ms: float | None) -> None:
        if expected_ms is not None and expected_ms > 0 and math.isfinite(first_token_ms) and first_token_ms >= 0:
            self._first_token_ratios.append(first_token_ms / expected_ms)

    def first_token_ratio(self, quantile: float = TAIL_QUANTILE) -> float | None:
        """Measured first token / table latency, a high quantile of recent calls; None before any.
        Not the median: the table's latencies are tail figures (p95, p99), and a tail that runs
        over them (inputs the profile saw too few of, e.g. the largest crop count) is what makes
        a budget miss. The router's slowness guard reads the same quantile."""
        return upper_quantile(self._first_token_ratios, quantile)

    def busy(self) -> bool:
        """Whether a backend call is running now."""
        return bool(self._running)

    def ratio(self) -> float | None:
        return median(self._ratios) if self._ratios else None

    def _scaled(self, expected_ms: float | None) -> float:
        if expected_ms is None:  # no table latency: what recent calls took
            return median(self._service_ms) if self._service_ms else 0.0
        r = self.ratio()
        return expected_ms * (r if r is not None else 1.0)

    def report(self, now: float) -> ReplicaReport:
        # Waiting requests of one config share a backend call (up to max_batch_size each).
        groups: dict[str, list[float | None]] = {}
        for config, e, _ in self._waiting.values():
            groups.setdefault(config, []).append(e)
        backlog = 0.0
        for members in groups.values():
            calls = math.ceil(len(members) / self.max_batch_size)
            backlog += calls * self._scaled(max((e for e in members if e is not None), default=None))
        for started, scaled in self._running.values():
            backlog += max(0.0, scaled - (now - started) * 1000)
        return ReplicaReport(self.replica, len(self._waiting), len(self._running), backlog, self.ratio())
