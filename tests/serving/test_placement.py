"""serving.replica.placement: the budget-aware ranking of model replicas, on plain data."""

from __future__ import annotations

import math
from typing import Any

import pytest

from controller.knobs import Knobs
from serving.replica.placement import STATS_VERSION, CallView, InFlight, ReplicaView, parse_stats, place
from serving.wire import ModelCall

NOW = 1_000.0
STALE = 2.0


def stats(backlog: float = 0.0, ratio: float | None = 1.0, knobs: tuple[str, ...] = (), at: float = NOW,
          ongoing: int = 0) -> dict[str, Any]:
    return ReplicaView(at, backlog, ongoing, ratio, frozenset(knobs)).to_stats()


def call(expected: float | None = 50.0, budget: float | None = 100.0, knobs: str = "low_4_12") -> CallView:
    return CallView(knobs, expected, budget)


def test_tight_budget_goes_where_the_first_token_fits() -> None:
    # The slow replica (ratio 2) is idle but 2 x 50 > 90; the others fit, least wait first.
    p = place({"slow": stats(ratio=2.0), "a": stats(backlog=30), "b": stats(backlog=10)}, call(budget=90), NOW, STALE)
    assert p.ranked == ("b", "a", "slow") and p.reason == "fits"
    assert p.first_token_ms == (60.0, 80.0, 100.0)


def test_knob_affinity_wins_only_while_it_fits() -> None:
    reports = {"busy_same": stats(backlog=30, knobs=("low_4_12",)), "idle": stats()}
    assert place(reports, call(budget=100), NOW, STALE).ranked[0] == "busy_same"
    assert place(reports, call(budget=100), NOW, STALE).reason == "fits_affinity"
    # 30 + 50 > 70: joining the batch would cost the budget, so the idle replica.
    p = place(reports, call(budget=70), NOW, STALE)
    assert p.ranked == ("idle", "busy_same") and p.reason == "fits"


def test_no_budget_spreads_with_affinity_within_one_call() -> None:
    reports = {"same": stats(backlog=40, knobs=("low_4_12",)), "idle": stats(), "far": stats(backlog=500,
                                                                                              knobs=("low_4_12",))}
    p = place(reports, call(budget=None), NOW, STALE)
    assert p.ranked == ("same", "idle", "far") and p.reason == "no_budget"


def test_nothing_fits_unknown_before_late() -> None:
    reports = {"late": stats(backlog=500), "new": None}
    p = place(reports, call(budget=100), NOW, STALE)
    assert p.ranked == ("new", "late") and p.reason == "unknown"
    assert place({"late": stats(backlog=500)}, call(budget=100), NOW, STALE).reason == "late"


def test_stale_reports_fall_back_to_serve() -> None:
    old = {"a": stats(at=NOW - 10), "b": stats(at=NOW - 3)}
    p = place(old, call(), NOW, STALE)
    assert p.ranked == () and p.reason == "stale"
    # a report from the future (a clock jump) is no better than an old one
    assert place({"a": stats(at=NOW + 60)}, call(), NOW, STALE).ranked == ()
    # one fresh replica is ranked first, the stale one after it
    assert place({"a": stats(at=NOW - 10), "b": stats(at=NOW - 1)}, call(), NOW, STALE).ranked == ("b", "a")


def test_calls_sent_since_the_report_count_and_carry_their_knobs() -> None:
    reports = {"a": stats(at=NOW - 0.1), "b": stats(backlog=20, at=NOW - 0.01)}
    # the 2nd was sent before the report: it is in the report's backlog already
    sent = {"a": [InFlight("high_8_16", 40.0, NOW - 0.01), InFlight("x", 999.0, NOW - 1.5)]}
    p = place(reports, call(budget=1000, knobs="mid"), NOW, STALE, sent)
    # b: 20 ms of backlog drained 10 ms since its report; a: 40 ms sent 10 ms ago
    assert p.ranked == ("b", "a") and p.first_token_ms == pytest.approx((60.0, 80.0))
    # the knobs sent since the report make affinity before the replica reports them
    assert place(reports, call(budget=1000, knobs="high_8_16"), NOW, STALE, sent).ranked[0] == "a"


def test_a_report_drains_while_it_ages() -> None:
    # 300 ms of backlog reported 0.25 s ago: 50 ms left now; an hour's worth is still there
    reports = {"old": stats(backlog=300, at=NOW - 0.25), "busy": stats(backlog=3_600_000, at=NOW - 0.25)}
    p = place(reports, call(budget=100), NOW, STALE)
    assert p.ranked == ("old", "busy") and p.first_token_ms[0] == pytest.approx(100.0)
    # a clock behind the replica's (a report from 50 ms in the future) drains nothing
    assert place({"a": stats(backlog=80, at=NOW + 0.05)}, call(), NOW, STALE).first_token_ms == (130.0,)


def test_calls_sent_since_drain_from_when_they_were_sent() -> None:
    # idle at NOW - 1; a 100 ms call sent at NOW - 0.5 is done by now, one sent 20 ms ago has 80 left
    reports = {"a": stats(at=NOW - 1), "b": stats(at=NOW - 1)}
    sent = {"a": [InFlight("k", 100.0, NOW - 0.5)], "b": [InFlight("k", 100.0, NOW - 0.02)]}
    p = place(reports, call(budget=1000), NOW, STALE, sent)
    assert p.ranked == ("a", "b") and p.first_token_ms == pytest.approx((50.0, 130.0))
    # two sent at once queue one behind the other, each scaled by the replica's ratio
    slow = {"s": stats(ratio=2.0, at=NOW - 1)}
    both = {"s": [InFlight("k", 30.0, NOW), InFlight("k", 30.0, NOW)]}
    assert place(slow, call(expected=10, budget=1000), NOW, STALE, both).first_token_ms == (140.0,)


@pytest.mark.parametrize(
    "raw",
    [
        None, {}, [], "x", 3, {"v": 99, "at": NOW, "backlog_ms": 0, "ongoing": 0},
        {**stats(), "backlog_ms": math.nan}, {**stats(), "backlog_ms": -1}, {**stats(), "backlog_ms": "5"},
        {**stats(), "at": math.inf}, {**stats(), "ongoing": -1}, {**stats(), "ongoing": True},
        {**stats(), "ongoing": 1.5}, {**stats(), "first_token_ratio": math.nan},
        {**stats(), "first_token_ratio": 0}, {**stats(), "first_token_ratio": -2.0},
        {**stats(), "knobs": "low_4_12"}, {**stats(), "knobs": None},
    ],
)
def test_malformed_stats_never_raise_and_count_as_unknown(raw: object) -> None:
    assert parse_stats(raw) is None
    p = place({"bad": raw, "good": stats()}, call(), NOW, STALE)
    assert p.ranked == ("good", "bad")


def test_stats_round_trip_and_odd_knob_entries() -> None:
    raw = {**stats(ratio=None, knobs=("a",)), "knobs": ["a", 3, None, "b"], "extra": 1}
    v = parse_stats(raw)
    assert v is not None and v.knobs == frozenset({"a", "b"}) and v.first_token_ratio is None
    assert raw["v"] == STATS_VERSION


def test_call_view_reads_model_calls_mappings_and_refuses_others() -> None:
    c = CallView.of(ModelCall(Knobs("low", 4, 12), "hi", expected_ms=42.0, budget_ms=90.0))
    assert c == CallView("low_4_12", 42.0, 90.0)
    assert CallView.of({"knobs": "high_8_16", "expected_ms": math.nan, "budget_ms": -5}) == CallView(
        "high_8_16", None, None)
    assert CallView.of("a prompt") is None and CallView.of(None) is None and CallView.of({"knobs": 3}) is None
    # unknown knobs are just a key: no affinity, no crash
    assert place({"a": stats()}, CallView.of({"knobs": "zzz_99_99"}), NOW, STALE).ranked == ("a",)
