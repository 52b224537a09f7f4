"""Ray metrics of queue-aware budgets and live latency, created lazily inside replicas. Tag values
come from fixed sets only: config keys of the served table, policy names, HTTP statuses. The
admission metrics are updated on the request path, so they are buffered
(serving.telemetry.metric_buffer)."""

from __future__ import annotations

from functools import cache

from ray.serve import metrics

from serving.telemetry.metric_buffer import metric_buffer


class LiveMetrics:
    def __init__(self) -> None:
        self.p95 = metrics.Gauge(
            "lookup_live_latency_p95_ms",
            description="Live p95 latency per config (table metric) over the feedback window.",
            tag_keys=("config",),
        )
        self.samples = metrics.Gauge(
            "lookup_live_samples", description="Live samples per config in the feedback window.", tag_keys=("config",)
        )
        self.drift = metrics.Gauge(
            "lookup_live_drift_p95_ratio",
            description="Live p95 / table p95 - 1 per config with enough samples.",
            tag_keys=("config",),
        )
        self.auto_publishes = metrics.Counter(
            "lookup_auto_recalibrations_total", description="Tables published by automatic recalibration."
        )


class AdmissionMetrics:
    def __init__(self) -> None:
        b = metric_buffer()
        self.refused = b.counter(metrics.Counter(
            "lookup_budget_refused_total",
            description="Strict requests refused (429: queue, 422: budget below every config).",
            tag_keys=("status",),
        ))
        self.wait_ms = b.histogram(metrics.Histogram(
            "lookup_expected_queue_wait_ms",
            description="Queue wait the router expected when resolving, milliseconds.",
            boundaries=[1, 5, 10, 25, 50, 100, 250, 500, 1000, 5000],
        ))


@cache
def live_metrics() -> LiveMetrics:
    return LiveMetrics()


@cache
def admission_metrics() -> AdmissionMetrics:
    return AdmissionMetrics()
