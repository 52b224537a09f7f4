"""serving.telemetry.recorder: one call per event feeds both the /v1/stats counts and the Ray metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller.store import LATEST, TableStore
from serving.config import FallbackSettings
from serving.ingress.resolver import fallback_answer
from serving.lookup.table_watcher import TableWatcher
from serving.telemetry.metrics import ControllerMetrics, RouterMetrics
from serving.telemetry.recorder import ControllerRecorder, RouterRecorder
from serving.telemetry.stats import RouterStats
from tests.support.tables import synthetic_table


class _Counted:
    """Stands in for a Ray Counter (outside a replica Ray's metrics keep no values to read)."""

    def __init__(self) -> None:
        self.by_tags: dict[tuple[tuple[str, str], ...], float] = {}

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        key = tuple(sorted((tags or {}).items()))
        self.by_tags[key] = self.by_tags.get(key, 0.0) + value


def test_router_events_are_counted_once_in_stats() -> None:
    rec = RouterRecorder(RouterMetrics(), RouterStats())
    late = fallback_answer(FallbackSettings(expected_latency_ms=500.0), 100.0, None)  # infeasible
    rec.answered(0.2, late)
    rec.served(late, 100.0, met=False, covers="first_token")
    rec.bad_request("X-Latency-Budget-Ms")
    rec.model_error("timeout")
    snap = rec.snapshot()
    assert snap["requests_by_config"] == {late.knobs.key: 1}
    assert snap["infeasible"] == 1 and snap["fallback"] == 1
    assert snap["budget_met"] == 0 and snap["budget_missed"] == 1
    assert snap["bad_requests_by_reason"] == {"X-Latency-Budget-Ms": 1} and snap["model_errors"] == {"timeout": 1}


def test_controller_reload_metric_follows_the_watchers_counts(tmp_path: Path) -> None:
    metrics = ControllerMetrics()
    metrics.reloads = _Counted()  # type: ignore[assignment]
    rec = ControllerRecorder(metrics)
    store = TableStore(str(tmp_path))
    watcher = TableWatcher(store, clock=lambda: 0.0)
    store.publish(synthetic_table())
    (tmp_path / "versions" / "20990101T000000000001Z-bad.json").write_bytes(b"not json")
    (tmp_path / LATEST).write_text("20990101T000000000001Z-bad\n")
    for _ in range(3):  # a bad LATEST at start: rejected, the newest valid one taken; then unchanged
        watcher.check()
        rec.reloads(watcher.accepted, watcher.rejected)
    status = watcher.status()
    assert (status["reloads_accepted"], status["reloads_rejected"]) == (1, 1)
    got: Any = metrics.reloads
    assert got.by_tags == {(("outcome", "accepted"),): 1.0, (("outcome", "rejected"),): 1.0}
