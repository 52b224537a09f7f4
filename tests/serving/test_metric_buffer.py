"""serving.telemetry.metric_buffer: what the request path counts reaches the Ray metric on flush,
summed per tag set (counters) or value by value (histograms), and never grows without bound."""

from __future__ import annotations

import asyncio
from typing import Any

from serving.telemetry.metric_buffer import MAX_PENDING, MetricBuffer


class _Recorded:
    """Stands in for a Ray metric (outside a replica Ray's metrics keep no values to read)."""

    info = {"name": "recorded", "tag_keys": ("a",)}

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, dict[str, str] | None]] = []

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.calls.append(("inc", value, tags))

    def observe(self, value: float) -> None:
        self.calls.append(("observe", value, None))


def test_counts_reach_the_metric_summed_per_tag_set_on_flush() -> None:
    buffer, counted, observed = MetricBuffer(), _Recorded(), _Recorded()
    counter, histogram = buffer.counter(counted), buffer.histogram(observed)
    for tags in ({"a": "x"}, {"a": "y"}, {"a": "x"}, None):
        counter.inc(tags=tags)
    counter.inc(2.0, tags={"a": "y"})
    histogram.observe(0.5)
    histogram.observe(1.5)
    assert counted.calls == [] and observed.calls == []  # nothing on the request path
    buffer.flush()
    assert sorted(counted.calls, key=str) == sorted(
        [("inc", 2.0, {"a": "x"}), ("inc", 3.0, {"a": "y"}), ("inc", 1.0, None)], key=str)
    assert observed.calls == [("observe", 0.5, None), ("observe", 1.5, None)]
    buffer.flush()  # written once
    assert len(counted.calls) == 3 and len(observed.calls) == 2
    assert counter.info == _Recorded.info


def test_without_a_flusher_a_metric_writes_itself_when_full() -> None:
    observed = _Recorded()
    histogram = MetricBuffer().histogram(observed)
    for i in range(MAX_PENDING + 1):
        histogram.observe(float(i))
    assert len(observed.calls) == MAX_PENDING + 1


def test_the_flusher_writes_on_its_timer() -> None:
    async def run() -> list[Any]:
        buffer, counted = MetricBuffer(interval_s=0.01), _Recorded()
        counter = buffer.counter(counted)
        buffer.start()
        buffer.start()  # once per process
        counter.inc()
        await asyncio.sleep(0.1)
        return counted.calls

    assert asyncio.run(run()) == [("inc", 1.0, None)]
