"""A model replica's view of its own queue: who waits, what runs, how long work takes compared
with the table. Pure (time is an argument), so the model deployment and tests share one rule."""

from __future__ import annotations

import math
from collections import deque
from statistics import median

from serving.estimators import TAIL_QUANTILE, upper_quantile
from serving.wire import ReplicaReport


class ReplicaQueue:
    """The replica's queue in first-token time. The device batches continuously (a newcomer joins
    a running decode batch between two steps: serving.replica.device), so what a request arriving
    now waits for is the prefills ahead of it, not the decodes: the members still waiting here,
    each its table first token x the measured ratio, one after another (an engine prefills one
    request at a time), plus what the device reports (prefills handed to it and not begun, and
    the drain of a batch of another knob pair when one must end first)."""

    def __init__(self, replica: str, window: int = 64) -> None:
        self.replica = replica
        self._waiting: dict[int, tuple[str, float | None, float]] = {}  # token -> (config, first ms, arrived)
        self._running: dict[int, float] = {}  # group id -> started
        self._service_ms: deque[float] = deque(maxlen=window)
        # First token / table latency per backend call: what a table's first-token latency means here.
        self._first_token_ratios: deque[float] = deque(maxlen=window)

    def arrived(self, token: int, config: str, first_ms: float | None, now: float) -> None:
        self._waiting[token] = (config, first_ms, now)

    def started(self, group: int, tokens: list[int], now: float) -> None:
        """A backend call was handed to the device for `tokens`: they wait no more here."""
        for t in tokens:
            self._waiting.pop(t, None)
        self._running[group] = now

    def finished(self, group: int, service_ms: float) -> None:
        self._running.pop(group, None)
        if math.isfinite(service_ms) and service_ms >= 0:
            self._service_ms.append(service_ms)

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
        """The median measured / table first token (None before any call)."""
        return median(self._first_token_ratios) if self._first_token_ratios else None

    def scale(self) -> float:
        """What a table first token is multiplied by to price this replica's work: the median
        measured / table ratio, never below 1 (the table's tail figures stay the floor)."""
        r = self.ratio()
        return max(1.0, r if r is not None else 1.0)

    def _scaled(self, first_ms: float | None) -> float:
        if first_ms is None:  # no table latency: what recent calls took
            return median(self._service_ms) if self._service_ms else 0.0
        return first_ms * self.scale()

    def report(self, now: float, device_ms: float = 0.0) -> ReplicaReport:
        backlog = sum(self._scaled(e) for _, e, _ in self._waiting.values()) + max(0.0, device_ms)
        return ReplicaReport(self.replica, len(self._waiting), len(self._running), backlog, self.ratio())
