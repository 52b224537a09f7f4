"""serving.replica.attainment_scaling (the pure rule) and its Serve adapter, on plain data."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import ValidationError

from serving.config import AttainmentScaling, ModelSettings
from serving.replica.attainment_scaling import FlagWindow, ScalingState, decide, unmeetable
from serving.replica.autoscaling import AttainmentPolicy

S = AttainmentScaling(up_share=0.1, down_share=0.02, up_for_s=5, down_for_s=30, min_calls=10)


def test_scales_up_only_when_the_share_stays_high() -> None:
    d = decide(2, 100, 20, ScalingState(), 0.0, S)
    assert (d.replicas, d.reason, d.state.over_since) == (2, "hold", 0.0)
    d = decide(2, 100, 20, d.state, 4.9, S)
    assert d.replicas == 2
    d = decide(2, 100, 20, d.state, 5.0, S)
    assert (d.replicas, d.reason, d.share) == (3, "up", 0.2)
    # the clock starts again: no second step right away
    assert decide(3, 100, 20, d.state, 6.0, S).replicas == 3


def test_a_dip_resets_the_clock_and_hysteresis_holds() -> None:
    d = decide(2, 100, 20, ScalingState(), 0.0, S)
    d = decide(2, 100, 5, d.state, 3.0, S)  # between down_share and up_share: hold, clocks reset
    assert d.reason == "hold" and d.state == ScalingState()
    assert decide(2, 100, 20, d.state, 6.0, S).replicas == 2  # over again, from t=6


def test_scales_down_after_a_long_good_spell_never_below_one() -> None:
    d = decide(3, 100, 0, ScalingState(), 0.0, S)
    assert d.replicas == 3 and d.state.under_since == 0.0
    d = decide(3, 100, 1, d.state, 30.0, S)
    assert (d.replicas, d.reason) == (2, "down")
    assert decide(1, 100, 0, ScalingState(under_since=0.0), 99.0, S).replicas == 1


@pytest.mark.parametrize("calls,flagged", [(5, 5), (math.nan, 1), (100, math.inf), (100, -1)])
def test_too_few_or_bad_counts_change_nothing(calls: float, flagged: float) -> None:
    state = ScalingState(over_since=1.0)
    d = decide(2, calls, flagged, state, 100.0, S)
    assert (d.replicas, d.reason, d.state) == (2, "too_few_calls", state)


def test_flag_window_and_unmeetable() -> None:
    w = FlagWindow(10.0)
    for t, f in ((0, True), (5, False), (12, True)):
        w.add(t, f)
    assert w.counts(12.0) == (2, 1)
    assert unmeetable(50, 40, 0, None) and not unmeetable(50, 100, 0, None)
    assert unmeetable(50, 100, 0, 2.5) and unmeetable(50, 100, 60, 1.0)
    assert not unmeetable(None, 10, 500, 3.0) and not unmeetable(50, None, 500, 3.0)
    assert not unmeetable(50, 100, 0, math.nan)


def test_settings_are_strict() -> None:
    with pytest.raises(ValidationError, match="down_share"):
        AttainmentScaling(up_share=0.05, down_share=0.05)
    with pytest.raises(ValidationError, match="min_replicas"):
        ModelSettings.model_validate({"autoscaling": {"min_replicas": 3, "max_replicas": 2}})
    with pytest.raises(ValidationError):
        ModelSettings.model_validate({"routing": {"policy": "round_robin"}})
    with pytest.raises(ValidationError):
        ModelSettings.model_validate({"routing": {"stats_period": 1}})


@dataclass
class Ctx:
    """The fields of Serve's AutoscalingContext the adapter reads (a plain stand-in for Serve's own)."""

    aggregated_metrics: Any
    current_time: float | None
    target_num_replicas: int = 2
    current_num_replicas: int = 2
    policy_state: dict[str, Any] = field(default_factory=dict)


def test_serve_adapter_reads_replica_metrics_and_keeps_state() -> None:
    policy = AttainmentPolicy(**S.model_dump())
    metrics = {"calls": {"r1": 50.0, "r2": 50.0}, "unmeetable": {"r1": 20.0, "r2": math.nan}}
    n, state = policy(Ctx(metrics, 0.0))
    assert n == 2 and state["attainment_over_since"] == 0.0
    n, state = policy(Ctx(metrics, 5.0, policy_state=state))
    assert n == 3
    # no metrics yet, or a broken clock: the current count, no exception
    assert policy(Ctx(None, 10.0))[0] == 2
    assert policy(Ctx({"calls": {"r1": "x"}}, 10.0))[0] == 2
    assert policy(Ctx(metrics, None))[0] == 2
