"""Serve metrics of the router and the controller. Ray's metric objects need a running worker:
serving.telemetry.recorder creates them inside replicas and is the one place that updates them.
The router's are updated on every request, so they are buffered (serving.telemetry.metric_buffer)."""

from __future__ import annotations

from ray.serve import metrics

from serving.telemetry.metric_buffer import MetricBuffer, metric_buffer


class RouterMetrics:
    def __init__(self, buffer: MetricBuffer | None = None) -> None:
        b = buffer or metric_buffer()
        self.requests = b.counter(metrics.Counter(
            "lookup_requests_total",
            description="Generate requests answered, by chosen config and feasibility.",
            tag_keys=("config", "feasible", "fallback"),  # type: ignore[arg-type]  # Ray annotates tag_keys as a 1-tuple
        ))
        self.infeasible = b.counter(metrics.Counter(
            "lookup_infeasible_total", description="Requests whose budget no config meets."
        ))
        self.fallback = b.counter(metrics.Counter(
            "lookup_fallback_total",
            description="Requests served with the fallback config (controller slow or absent).",
        ))
        self.bad_requests = b.counter(metrics.Counter(
            "lookup_bad_requests_total", description="Requests refused with 4xx.", tag_keys=("reason",)
        ))
        self.attainment = b.counter(metrics.Counter(
            "lookup_budget_attainment_total",
            description="Served requests by whether their measured latency met the budget "
            "(first token or total, per budget.covers), by budget bucket.",
            tag_keys=("covers", "budget_bucket", "met"),  # type: ignore[arg-type]  # Ray annotates tag_keys as a 1-tuple
        ))
        self.resolve_ms = b.histogram(metrics.Histogram(
            "lookup_resolve_latency_ms",
            description="Time to turn a budget into knobs, milliseconds.",
            boundaries=[0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 50, 250, 1000],
        ))


class ControllerMetrics:
    def __init__(self) -> None:
        self.reloads = metrics.Counter(
            "lookup_table_reloads_total",
            description="Table versions seen by a controller replica, by outcome.",
            tag_keys=("outcome",),
        )
        self.version = metrics.Gauge(
            "lookup_table_version_info",
            description="1 for the table version a replica serves (the version is a tag).",
            tag_keys=("version",),
        )
        self.batch_size = metrics.Histogram(
            "lookup_resolve_batch_size",
            description="Budgets resolved per vectorised call.",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128],
        )
