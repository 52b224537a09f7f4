"""Ray metric updates counted in plain Python on the request path, written to Ray's metric objects
on a timer.

A Ray metric call (`Counter.inc`, `Histogram.observe`) costs 10-25 us inside a replica, and a
generate request made five of them: about 0.1 ms of each request's serving overhead on a 2-core CPU
(docs/BENCHMARKS.md, issue 18). Serve caches its own request metrics the same way and writes them
every 100 ms (`ReplicaMetricsManager`, RAY_SERVE_METRICS_EXPORT_INTERVAL_MS); Prometheus scrapes
Ray's values every few seconds, so what it sees is the same. A counter's increments are summed per
tag set and written as one `inc`; a histogram's observations are kept and replayed (Ray takes them
one at a time), off the request's path.
"""

from __future__ import annotations

import asyncio
import logging
from functools import cache
from typing import Any

log = logging.getLogger("ray.serve")

FLUSH_INTERVAL_S = 0.1  # Serve's own default for its cached request metrics
# Without a running flusher (a unit test, a process that never started one) a metric writes itself
# once it holds this many updates, so memory stays bounded either way.
MAX_PENDING = 1024

Tags = tuple[tuple[str, str], ...]


class BufferedCounter:
    """A Ray Counter's `inc`, summed per tag set until `flush`."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._counts: dict[Tags, float] = {}

    @property
    def info(self) -> dict[str, Any]:
        return dict(self.metric.info)

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        key: Tags = tuple(tags.items()) if tags else ()
        self._counts[key] = self._counts.get(key, 0.0) + value
        if len(self._counts) > MAX_PENDING:
            self.flush()

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        for key, value in counts.items():
            self.metric.inc(value, tags=dict(key) if key else None)


class BufferedHistogram:
    """A Ray Histogram's `observe` (without tags), kept until `flush`."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._values: list[float] = []

    @property
    def info(self) -> dict[str, Any]:
        return dict(self.metric.info)

    def observe(self, value: float) -> None:
        self._values.append(value)
        if len(self._values) > MAX_PENDING:
            self.flush()

    def flush(self) -> None:
        values, self._values = self._values, []
        for v in values:
            self.metric.observe(v)


class MetricBuffer:
    """The buffered metrics of one process, and the task that writes them every `interval_s`."""

    def __init__(self, interval_s: float = FLUSH_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._metrics: list[BufferedCounter | BufferedHistogram] = []
        self._task: asyncio.Task[None] | None = None

    def counter(self, metric: Any) -> BufferedCounter:
        out = BufferedCounter(metric)
        self._metrics.append(out)
        return out

    def histogram(self, metric: Any) -> BufferedHistogram:
        out = BufferedHistogram(metric)
        self._metrics.append(out)
        return out

    def flush(self) -> None:
        for m in self._metrics:
            m.flush()

    def start(self) -> None:
        """Write the metrics every `interval_s` on the running event loop (once per process: a
        second call while the task runs does nothing)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush_forever())

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.flush()
            except Exception:  # a metric must never stop the flusher (nor reach a request)
                log.exception("writing the buffered metrics failed")


@cache
def metric_buffer() -> MetricBuffer:
    """One per process: a replica is its own process."""
    return MetricBuffer()
