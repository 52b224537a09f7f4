"""Autoscaling that follows attainment: pure (counts, state and time are arguments), so Serve's
policy adapter (serving.replica.autoscaling) and the tests share one rule.

Scale up one replica when the share of calls that could not meet their budget stays above
`up_share` for `up_for_s`; scale down one when it stays below `down_share` (lower: hysteresis) for
`down_for_s`. A share between the two resets both clocks. Too few calls to judge: no change.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from typing import Literal

from serving.config import AttainmentScaling


@dataclass(frozen=True)
class ScalingState:
    """Since when (s) the share has been above up_share / below down_share; None: it is not."""

    over_since: float | None = None
    under_since: float | None = None


@dataclass(frozen=True)
class ScalingDecision:
    replicas: int
    reason: Literal["up", "down", "hold", "too_few_calls"]
    share: float | None
    state: ScalingState


def decide(current: int, calls: float, flagged: float, state: ScalingState, now: float,
           settings: AttainmentScaling) -> ScalingDecision:
    """The replica count for now. `calls`: calls the replicas saw in their windows; `flagged`: those
    that could not meet their budget (NaN or negative counts are taken as no data)."""
    if not (math.isfinite(calls) and math.isfinite(flagged)) or calls < settings.min_calls or flagged < 0:
        # No data is not good news: keep the clocks, but do not move.
        return ScalingDecision(current, "too_few_calls", None, state)
    share = min(1.0, flagged / calls)
    if share > settings.up_share:
        since = state.over_since if state.over_since is not None else now
        if now - since >= settings.up_for_s:
            # One step, then the clock starts again: the new replica needs time to show its effect.
            return ScalingDecision(current + 1, "up", share, ScalingState(over_since=now))
        return ScalingDecision(current, "hold", share, ScalingState(over_since=since))
    if share < settings.down_share and current > 1:
        since = state.under_since if state.under_since is not None else now
        if now - since >= settings.down_for_s:
            return ScalingDecision(current - 1, "down", share, ScalingState(under_since=now))
        return ScalingDecision(current, "hold", share, ScalingState(under_since=since))
    return ScalingDecision(current, "hold", share, replace(state, over_since=None, under_since=None))


class FlagWindow:
    """A replica's recent calls and which of them could not meet their budget, over `window_s`
    (monotonic s as arguments): what it reports to Serve's autoscaler."""

    def __init__(self, window_s: float, max_items: int = 100_000) -> None:
        self.window_s = window_s
        self._items: deque[tuple[float, bool]] = deque(maxlen=max_items)

    def add(self, now: float, flagged: bool) -> None:
        self._items.append((now, flagged))

    def counts(self, now: float) -> tuple[int, int]:
        """(calls, flagged) within the window ending at `now`."""
        while self._items and now - self._items[0][0] > self.window_s:
            self._items.popleft()
        return len(self._items), sum(1 for _, f in self._items if f)


def unmeetable(expected_ms: float | None, budget_ms: float | None, backlog_ms: float, ratio: float | None) -> bool:
    """Whether a call, on arrival, cannot get its first token within its budget here: the router
    flagged it infeasible (its table latency alone is over what is left), or the queue ahead of it
    at this replica's measured speed makes it so. Calls without a budget or table latency: False."""
    if expected_ms is None or budget_ms is None or not math.isfinite(budget_ms):
        return False
    scale = max(1.0, ratio) if ratio is not None and math.isfinite(ratio) else 1.0
    return max(0.0, backlog_ms) + expected_ms * scale > budget_ms
