"""Queue-wait estimate, budget policy and the automatic-recalibration rule: pure functions, time
given as an argument (no clocks, no Ray)."""

from __future__ import annotations

import pytest

from serving.config import AutoRecalibrateSettings
from serving.errors import BadInput
from serving.ingress.budget_plan import parse_policy, refuse_strict, remaining_budget_ms, resolvable
from serving.ingress.queue_estimate import QueueTracker, WaitEstimate
from serving.lookup.live_feedback import AutoState, should_publish
from serving.replica.replica_queue import ReplicaQueue
from serving.wire import ReplicaReport


def test_empty_router_expects_no_wait() -> None:
    e = QueueTracker().estimate(now=0.0)
    assert e.wait_ms == 0 and e.basis == "empty" and e.replicas == 1


def test_in_flight_prefills_run_one_after_another_scaled_by_the_measured_ratio() -> None:
    """Decodes are shared (a newcomer joins the running batch between two steps), prefills are not:
    the wait is the prefills in flight, one after another, each its first token x the ratio."""
    t = QueueTracker(cold_answers=0)
    for i in range(5):
        t.sent(i, "low_4_12", 100.0, 0.0)
    t.sent(9, "high_8_16", 200.0, 0.0)
    assert t.estimate(0.0).wait_ms == pytest.approx(5 * 100 + 200)
    assert t.estimate(0.3).wait_ms == pytest.approx(700 - 300)  # 300 ms of prefills are behind us
    # answers show the model runs at twice the table's first token; faster than the table never counts
    t.done(0, 0.0, expected_ms=100.0, service_ms=200.0, overhead_ms=2.0, report=None, first_token_ratio=2.0)
    assert t.ratio() == 2.0
    assert t.estimate(0.0).wait_ms == pytest.approx((4 * 100 + 200) * 2)
    assert t.overhead_ms() == pytest.approx(2.0)


def test_a_long_stream_counts_only_until_its_first_token() -> None:
    """A 512-token stream decodes for a second, but a newcomer joins its batch between two steps:
    once its prefill is over it holds nobody up, and it leaves the count when it ends."""
    t = QueueTracker(cold_answers=0)
    t.sent(1, "low_4_12", 50.0, 10.0)
    assert t.estimate(10.0).wait_ms == pytest.approx(50.0)
    assert t.estimate(10.03).wait_ms == pytest.approx(20.0)
    assert t.estimate(10.5).wait_ms == 0.0 and t.estimate(10.5).in_flight == 1
    t.done(1, 11.0, expected_ms=50.0, service_ms=1000.0, overhead_ms=2.0, report=None, first_token_ratio=1.0)
    assert t.estimate(11.0).in_flight == 0


def test_stale_reports_are_ignored_and_new_replicas_do_not_count_as_capacity() -> None:
    t = QueueTracker(stale_after_s=2.0)
    t.sent(1, "low_4_12", 100.0, 10.0)
    t.sent(2, "low_4_12", 100.0, 10.0)
    assert t.estimate(10.0).wait_ms == pytest.approx(200)  # one replica assumed until others report
    report = ReplicaReport("r1", waiting=10, running=1, backlog_ms=1000.0, service_ratio=1.0)
    t.done(3, 10.0, expected_ms=None, service_ms=None, overhead_ms=None, report=report)
    e = t.estimate(10.5)
    assert e.basis == "reports" and e.wait_ms == pytest.approx(500.0)  # aged by the 0.5 s since
    assert t.estimate(13.0).basis == "router"  # older than stale_after_s: only the router's count
    t.done(4, 13.0, expected_ms=None, service_ms=None, overhead_ms=None,
           report=ReplicaReport("r2", 0, 0, 0.0, None))
    # Two replicas now, and both prefills are long over.
    assert t.estimate(13.0).replicas == 2 and t.estimate(13.0).wait_ms == 0.0


def test_failed_requests_leave_the_queue() -> None:
    t = QueueTracker()
    t.sent(1, "low_4_12", 100.0)
    t.failed(1)
    assert t.estimate(0.0).wait_ms == 0


def test_replica_queue_backlog_is_the_prefills_ahead() -> None:
    q = ReplicaQueue("r")
    q.arrived(1, "a", 100.0, now=0.0)
    q.arrived(2, "a", 100.0, now=0.0)
    q.arrived(3, "b", 50.0, now=0.1)
    # One prefill after another (decodes are shared), plus what the device reports.
    assert q.report(0.1).backlog_ms == pytest.approx(250.0) and q.report(0.1).waiting == 3
    assert q.report(0.1, device_ms=30.0).backlog_ms == pytest.approx(280.0)
    q.started(1, [1, 2], now=0.2)
    assert q.report(0.25).backlog_ms == pytest.approx(50.0) and q.report(0.25).running == 1
    q.first_token(160.0, 100.0)  # measured 1.6x the table: waiting prefills are scaled, never below 1x
    assert q.ratio() == pytest.approx(1.6) and q.report(0.25).backlog_ms == pytest.approx(80.0)
    q.finished(1, service_ms=80.0)
    assert q.report(0.3).running == 0
    q.dropped(3)
    assert q.report(0.3).waiting == 0 and q.report(0.3).backlog_ms == 0.0


def test_remaining_budget_and_refusals() -> None:
    e = WaitEstimate(wait_ms=300.0, overhead_ms=5.0, in_flight=3, replicas=1, basis="router")
    assert remaining_budget_ms(200.0, e) == -105.0 and resolvable(-105.0) > 0
    r = refuse_strict(200.0, 0.0, e, fastest_ms=80.0)  # room 115 ms for a 300 ms wait
    assert r.status == 429 and r.retry_after_s == 1 and r.headers() == {"Retry-After": "1"}
    long = refuse_strict(200.0, 0.0, WaitEstimate(5000.0, 5.0, 30, 1, "reports"), fastest_ms=80.0)
    assert long.retry_after_s == 5
    never = refuse_strict(50.0, 0.0, e, fastest_ms=80.0)  # even an empty queue would not do
    assert never.status == 422 and never.retry_after_s is None and "at least 85 ms" in never.accepted


@pytest.mark.parametrize("raw,expected", [(None, "best-effort"), ("", "best-effort"), ("strict", "strict"),
                                          (" STRICT ", "strict"), ("best-effort", "best-effort")])
def test_policy_header(raw: str | None, expected: str) -> None:
    assert parse_policy(raw, "X-Budget-Policy", "best-effort") == expected


@pytest.mark.parametrize("raw", ["fast", "strict;q=1", "x" * 5000, "NaN"])
def test_bad_policy_names_header_value_and_accepted(raw: str) -> None:
    with pytest.raises(BadInput) as e:
        parse_policy(raw, "X-Budget-Policy", "best-effort")
    assert e.value.field == "X-Budget-Policy" and str(e.value.value).startswith(raw[:20])
    assert len(str(e.value.value)) <= 200  # a huge value is quoted short
    assert "best-effort, strict" in e.value.accepted


def test_auto_publish_needs_drift_held_for_long_enough_cooldown_and_no_rollback() -> None:
    s = AutoRecalibrateSettings(enabled=True, drift_share=0.15, drift_for_s=10, cooldown_s=100)
    st = AutoState()
    assert not should_publish(st, 0.0, {"a": 0.3}, s, rollback_in_effect=False)  # drift starts
    assert not should_publish(st, 5.0, {"a": 0.3}, s, rollback_in_effect=False)
    assert not should_publish(st, 6.0, {"a": 0.05}, s, rollback_in_effect=False)  # back within: reset
    assert not should_publish(st, 7.0, {"a": -0.3}, s, rollback_in_effect=False)
    assert not should_publish(st, 20.0, {"a": -0.3}, s, rollback_in_effect=True)  # rollback pins
    assert should_publish(st, 20.0, {"a": -0.3}, s, rollback_in_effect=False)
    st.last_publish, st.drift_since = 20.0, None
    should_publish(st, 30.0, {"a": 0.3}, s, rollback_in_effect=False)
    assert not should_publish(st, 50.0, {"a": 0.3}, s, rollback_in_effect=False)  # cooldown
    assert should_publish(st, 121.0, {"a": 0.3}, s, rollback_in_effect=False)
    off = AutoRecalibrateSettings(enabled=False)
    assert not should_publish(AutoState(), 1e9, {"a": 5.0}, off, rollback_in_effect=False)


def test_ratio_quantile_guards_against_a_slower_model() -> None:
    t = QueueTracker()
    assert t.ratio_quantile(0.9) == 1.0  # nothing measured: the table as is
    for i, ratio in enumerate([1.0, 1.3, 1.3, 1.3, 1.3, 1.3, 1.3, 1.3, 1.3, 1.4]):
        t.sent(i, "low_4_12", 100.0)
        t.done(i, 0.0, expected_ms=100.0, service_ms=100.0 * ratio,
               overhead_ms=200.0 - 100.0 * ratio, report=None)
    assert t.ratio_quantile(0.9) == pytest.approx(1.4) and t.ratio() == pytest.approx(1.3)


def test_report_with_non_finite_backlog_does_not_poison_the_estimate() -> None:
    t = QueueTracker()
    t.done(1, 0.0, expected_ms=None, service_ms=None, overhead_ms=None,
           report=ReplicaReport("r", 1, 1, float("nan"), None))
    assert t.estimate(0.1).wait_ms == 0


def test_one_overhead_spike_does_not_make_the_window_infeasible() -> None:
    t = QueueTracker(overhead_quantile=0.99, overhead_window_s=30.0, cold_answers=0)
    t.done(0, 0.0, expected_ms=10.0, service_ms=10.0, overhead_ms=2010.0 - 10.0 - 0.0, report=None)  # a stall
    for i in range(1, 50):
        t.done(i, 20.0 + i * 0.1, expected_ms=10.0, service_ms=10.0, overhead_ms=13.0 - 10.0 - 0.0, report=None)
    # One stall does not hold the window: the estimate reads the bulk (median + z x MAD), not the max.
    assert t.estimate(25.0).overhead_ms == pytest.approx(3.0)
    assert t.estimate(31.0).overhead_ms == pytest.approx(3.0)  # past it: only the recent overhead counts


def test_the_first_answers_through_a_new_handle_do_not_count_as_overhead() -> None:
    t = QueueTracker(overhead_quantile=0.99)
    for i, router_ms in enumerate([80.0, 40.0, 13.0, 12.0]):  # two cold calls, then the steady overhead
        t.done(i, 1.0, expected_ms=10.0, service_ms=10.0, overhead_ms=router_ms - 10.0 - 0.0, report=None)
    # Only 3 and 2 ms count: median 2.5 + z(0.99) x 1.4826 x MAD 0.5, nowhere near the cold 30 and 70.
    assert t.estimate(1.0).overhead_ms == pytest.approx(2.5 + 2.3263 * 1.4826 * 0.5, rel=1e-3)


def test_a_batch_first_token_ratio_from_the_replica_wins_over_one_members_first_token() -> None:
    """A batch of 8 prefilled one after another: each member's first token is ~8x its own table
    latency, which is batching, not a slow model; the replica's call-level ratio says 1.0."""
    t = QueueTracker()
    for i in range(20):
        t.done(i, 1.0, expected_ms=10.0, service_ms=100.0, overhead_ms=101.0 - 100.0 - 0.0, report=None,
               first_token_ratio=1.0)
    assert t.ratio_quantile(0.9) == pytest.approx(1.0)
    t2 = QueueTracker()
    for i in range(20):
        t2.done(i, 1.0, expected_ms=10.0, service_ms=100.0, overhead_ms=101.0 - 100.0 - 0.0, report=None)
    assert t2.ratio_quantile(0.9) == pytest.approx(10.0)  # no first-token ratio: the whole call's


def test_figures_read_per_request_follow_every_new_and_expired_sample() -> None:
    """The tracker keeps its per-request figures until a sample changes them: each read must still
    see a sample that just arrived, and forget one that just left the window."""
    t = QueueTracker(overhead_quantile=0.5, overhead_window_s=10.0, cold_answers=0)
    t.done(0, 0.0, expected_ms=10.0, service_ms=10.0, overhead_ms=4.0, report=None)
    assert t.estimate(1.0).overhead_ms == pytest.approx(4.0) and t.ratio() == pytest.approx(1.0)
    t.done(1, 2.0, expected_ms=10.0, service_ms=30.0, overhead_ms=8.0, report=None)
    assert t.estimate(3.0).overhead_ms == pytest.approx(6.0)  # median of 4 and 8: the new one counts
    assert t.ratio() == pytest.approx(2.0) and t.ratio_quantile(0.9) == pytest.approx(3.0)
    assert t.estimate(11.0).overhead_ms == pytest.approx(8.0)  # the sample at 0 s left the window
    assert t.estimate(13.0).overhead_ms == pytest.approx(0.0)  # and then the one at 2 s
    t.done(2, 14.0, expected_ms=10.0, service_ms=10.0, overhead_ms=5.0, report=None)
    assert t.estimate(14.0).overhead_ms == pytest.approx(5.0)


def _answered(t: QueueTracker, token: int, now: float, error_ms: float | None) -> None:
    t.done(token, now, expected_ms=None, service_ms=None, overhead_ms=None, report=None,
           first_token_error_ms=error_ms)


def test_what_the_device_model_leaves_out_is_measured_and_added_to_the_wait() -> None:
    """Decode steps between prefills and drains of another knob pair are not in the model: the
    first tokens that came later than predicted add their tail (p90 by rank) to the wait."""
    t = QueueTracker(error_window_s=10.0, error_quantile=0.9)
    t.sent(1, "low_4_12", 100.0, 0.0)
    assert t.estimate(0.0).correction_ms == 0.0 and t.estimate(0.0).wait_ms == pytest.approx(100.0)
    for i in range(20):
        _answered(t, 100 + i, 0.0, 5.0 * (i + 1))  # 5 .. 100 ms late
    e = t.estimate(0.0)
    assert e.correction_ms == pytest.approx(95.0)  # the 19th of 20 (upper_quantile rounds up)
    assert e.wait_ms == pytest.approx(100.0 + 95.0) and e.modelled_ms == pytest.approx(100.0)
    assert e.to_dict()["correction_ms"] == pytest.approx(95.0)
    # the window is short: a load that is gone stops counting
    assert t.estimate(10.5).correction_ms == 0.0


def test_a_model_that_errs_high_is_kept_and_unknown_errors_are_skipped() -> None:
    t = QueueTracker()
    for i in range(5):
        _answered(t, i, 0.0, -40.0)  # first tokens came earlier than predicted: the safe side
    _answered(t, 9, 0.0, None)
    _answered(t, 10, 0.0, float("nan"))
    assert t.estimate(0.0).correction_ms == 0.0


def test_the_correction_does_not_feed_on_itself() -> None:
    """The error is taken against the modelled wait, so a constant 50 ms the model leaves out gives
    a constant 50 ms correction, however many requests are answered with it."""
    t = QueueTracker()
    for i in range(200):
        e = t.estimate(i * 0.01)
        predicted = QueueTracker.predicted_first_ms(e.modelled_ms, 20.0, 1.0)
        assert predicted is not None
        actual = e.modelled_ms + 50.0 + 20.0  # what the replica saw: 50 ms the model does not know of
        _answered(t, i, i * 0.01, actual - predicted)
    assert t.estimate(2.0).correction_ms == pytest.approx(50.0)
    assert QueueTracker.predicted_first_ms(0.0, None, 1.0) is None


def test_a_large_overhead_window_keeps_its_figure_for_a_tenth_of_a_second() -> None:
    """Median and MAD of up to 256 samples on every request cost ~50 us; a window of more than a few
    dozen samples, which half of them must move, is recomputed at most every 0.1 s (the callers'
    clock). A small window follows every sample."""
    from serving.ingress.queue_estimate import OVERHEAD_REFRESH_S, OVERHEAD_SMALL_WINDOW

    def answer(t: QueueTracker, i: int, now: float, overhead: float) -> None:
        t.done(i, now, expected_ms=10.0, service_ms=10.0, overhead_ms=overhead, report=None)

    small = QueueTracker(overhead_quantile=0.5, cold_answers=0)
    answer(small, 0, 1.0, 2.0)
    assert small.overhead_ms(1.0) == pytest.approx(2.0)
    answer(small, 1, 1.0, 4.0)
    assert small.overhead_ms(1.0) == pytest.approx(3.0)  # at once: a small window

    big = QueueTracker(overhead_quantile=0.5, cold_answers=0)
    for i in range(OVERHEAD_SMALL_WINDOW + 8):
        answer(big, i, 1.0, 2.0)
    assert big.overhead_ms(1.0) == pytest.approx(2.0)
    for i in range(100, 200):  # the bulk moves to 5 ms within the refresh interval
        answer(big, i, 1.05, 5.0)
    assert big.overhead_ms(1.05) == pytest.approx(2.0)  # kept
    assert big.overhead_ms(1.0 + OVERHEAD_REFRESH_S + 0.01) == pytest.approx(5.0)  # then recomputed
    assert big.overhead_ms(0.5) == pytest.approx(5.0)  # a clock that went back: recomputed, not stuck
    assert big.overhead_ms() == pytest.approx(5.0)  # no clock given: recomputed on any change
