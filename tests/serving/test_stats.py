"""The router's in-process counters (`GET /v1/stats`) and the Ray metric objects (no Ray needed)."""

from __future__ import annotations

import pytest

from serving.telemetry.metrics import ControllerMetrics, RouterMetrics
from serving.telemetry.stats import RouterStats, _percentile


def test_router_stats_counts_and_percentiles() -> None:
    s = RouterStats(window=100)
    for i in range(1, 201):  # only the last 100 (102..200 us and the 500 below) stay in the window
        s.answered(i / 1000, feasible=i % 4 != 0, fallback=i % 10 == 0)
    s.answered(0.5, feasible=None, fallback=True)  # fallback without a known latency: not infeasible
    for key in ("high_8_16", "high_8_16", "low_4_12"):
        s.served(key)
    s.bad_request("X-Latency-Budget-Ms")
    s.bad_request("X-Latency-Budget-Ms")
    s.bad_request("body")
    snap = s.snapshot()
    assert snap["requests_total"] == 3 and snap["requests_by_config"] == {"high_8_16": 2, "low_4_12": 1}
    assert snap["infeasible"] == 50 and snap["fallback"] == 21
    assert snap["bad_requests_total"] == 3
    assert snap["bad_requests_by_reason"] == {"X-Latency-Budget-Ms": 2, "body": 1}
    lat = snap["resolve_latency_us"]
    assert lat["window"] == 100
    assert lat["p50"] == pytest.approx(151) and lat["p99"] == pytest.approx(200)


def test_percentile_nearest_rank() -> None:
    assert _percentile([], 0.5) is None
    assert _percentile([7.0], 0.99) == 7.0
    values = [float(v) for v in range(1, 101)]
    assert _percentile(values, 0.5) == 50 and _percentile(values, 0.99) == 99 and _percentile(values, 1.0) == 100


def test_ray_metrics_have_the_documented_names_and_tags() -> None:
    r, c = RouterMetrics(), ControllerMetrics()
    got = {m.info["name"]: tuple(m.info["tag_keys"]) for m in vars(r).values()} | {
        m.info["name"]: tuple(m.info["tag_keys"]) for m in vars(c).values()
    }
    assert got == {
        "lookup_requests_total": ("config", "feasible", "fallback"),
        "lookup_budget_attainment_total": ("covers", "budget_bucket", "met"),
        "lookup_infeasible_total": (),
        "lookup_fallback_total": (),
        "lookup_bad_requests_total": ("reason",),
        "lookup_resolve_latency_ms": (),
        "lookup_table_reloads_total": ("outcome",),
        "lookup_table_version_info": ("version",),
        "lookup_resolve_batch_size": (),
    }
