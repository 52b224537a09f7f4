"""Serve's autoscaling policy hook for MoEModel, following attainment: the thin adapter that reads
Serve's AutoscalingContext and hands serving.replica.attainment_scaling.decide its counts.

Each MoEModel replica returns {"calls": n, "unmeetable": m} from `record_autoscaling_stats` (its
calls of the last window, and those that could not meet their budget on arrival); Serve averages
each over `look_back_period_s` per replica and passes them as `ctx.aggregated_metrics`. Requests
the Router refuses with 429 never reach a replica, so they are not in these counts (docs/serving.md,
"Replica choice and autoscaling", says what closing that gap needs).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from serving.config import AttainmentScaling
from serving.replica.attainment_scaling import ScalingState, decide

log = logging.getLogger("ray.serve")

CALLS, UNMEETABLE = "calls", "unmeetable"
_OVER, _UNDER = "attainment_over_since", "attainment_under_since"


def _total(metrics: dict[str, dict[Any, float]] | None, name: str) -> float:
    per_replica = (metrics or {}).get(name) or {}
    values = [float(v) for v in per_replica.values() if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(values) if values else math.nan


def _since(state: dict[str, Any], key: str) -> float | None:
    v = state.get(key)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


class AttainmentPolicy:
    """Serve instantiates this once with `policy_kwargs` (AttainmentScaling's fields) and calls it
    every control-loop tick with the deployment's AutoscalingContext."""

    def __init__(self, **policy_kwargs: Any) -> None:
        self.settings = AttainmentScaling.model_validate(policy_kwargs)
        self.last_reason = ""

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        state_in: dict[str, Any] = dict(ctx.policy_state or {})
        current = int(ctx.target_num_replicas or ctx.current_num_replicas or 1)
        try:
            metrics = ctx.aggregated_metrics
        except Exception:  # noqa: BLE001 - no custom metrics yet: no decision, not a crash
            metrics = None
        now = float(ctx.current_time) if ctx.current_time is not None else math.nan
        if not math.isfinite(now):
            return current, state_in
        state = ScalingState(_since(state_in, _OVER), _since(state_in, _UNDER))
        d = decide(current, _total(metrics, CALLS), _total(metrics, UNMEETABLE), state, now, self.settings)
        if d.reason != self.last_reason or d.reason in ("up", "down"):
            log.info("MoEModel attainment autoscaling: %s at share %s (%d -> %d replicas)",
                     d.reason, d.share, current, d.replicas)
        self.last_reason = d.reason
        return d.replicas, {**state_in, _OVER: d.state.over_since, _UNDER: d.state.under_since}
