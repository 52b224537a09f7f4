"""One recorder per event source: each router or controller event updates the Ray metrics (for
Prometheus) and the in-process counts behind `GET /v1/stats` in one call, so the two cannot drift.
The router's Ray metrics reach Ray within 100 ms (serving.telemetry.metric_buffer), its counts at once."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from serving.telemetry.attainment import budget_bucket
from serving.telemetry.metrics import ControllerMetrics, RouterMetrics
from serving.telemetry.stats import RouterStats

if TYPE_CHECKING:
    from serving.ingress.answer import Answer


def _tag(value: bool | None) -> str:
    return str(value).lower()


class RouterRecorder:
    """A router replica's events. Ray's metric objects need a running worker: build it inside the
    replica (`router_recorder()`), or hand it metrics and stats of your own."""

    def __init__(self, metrics: RouterMetrics, stats: RouterStats) -> None:
        self.metrics, self.stats = metrics, stats

    def bad_request(self, reason: str) -> None:
        """A request refused with 4xx; `reason` is the field at fault (one of a bounded set)."""
        self.metrics.bad_requests.inc(tags={"reason": reason})
        self.stats.bad_request(reason)

    def answered(self, resolve_ms: float, answer: Answer) -> None:
        """One budget turned into knobs (a generate, an OpenAI or a /v1/knobs request)."""
        self.metrics.resolve_ms.observe(resolve_ms)
        self.stats.answered(resolve_ms, answer.feasible, answer.fallback)
        if answer.fallback:
            self.metrics.fallback.inc()
        if answer.feasible is False:
            self.metrics.infeasible.inc()

    def served(self, answer: Answer, budget_ms: float, met: bool, covers: str) -> None:
        """One request answered by the model, and whether it met its budget as the router measured
        it (`covers`: first_token or total)."""
        tags = {"config": answer.knobs.key, "feasible": _tag(answer.feasible), "fallback": _tag(answer.fallback)}
        self.metrics.requests.inc(tags=tags)
        self.stats.served(answer.knobs.key)
        bucket = budget_bucket(budget_ms)
        self.metrics.attainment.inc(tags={"covers": covers, "budget_bucket": bucket, "met": _tag(met)})
        self.stats.attainment(met)

    def model_error(self, kind: str) -> None:
        """The model call failed (`kind`: one of ModelCallError.KINDS). Counted in /v1/stats only."""
        self.stats.model_error(kind)

    def snapshot(self) -> dict[str, Any]:
        """The counts of /v1/stats' `router` section."""
        return self.stats.snapshot()


@cache
def router_recorder() -> RouterRecorder:
    """One per process: a router replica is its own process."""
    return RouterRecorder(RouterMetrics(), RouterStats())


class ControllerRecorder:
    """A controller replica's events. The reload counts of /v1/stats are its table watcher's
    (`TableWatcher.accepted` / `rejected`); `reloads` turns their growth into the metric, so that
    both count the same reloads once."""

    def __init__(self, metrics: ControllerMetrics) -> None:
        self.metrics = metrics
        self._accepted = 0
        self._rejected = 0

    def reloads(self, accepted: int, rejected: int) -> None:
        """The watcher's totals after a check (a replica's watcher counts from 0)."""
        if accepted > self._accepted:
            self.metrics.reloads.inc(accepted - self._accepted, tags={"outcome": "accepted"})
        if rejected > self._rejected:
            self.metrics.reloads.inc(rejected - self._rejected, tags={"outcome": "rejected"})
        self._accepted, self._rejected = accepted, rejected

    def serving(self, old_version: str | None, new_version: str) -> None:
        """The replica swapped in `new_version` (it served `old_version` before, if any)."""
        if old_version is not None:
            self.metrics.version.set(0, tags={"version": old_version})
        self.metrics.version.set(1, tags={"version": new_version})

    def batch(self, size: int) -> None:
        """One vectorised resolve of `size` budgets."""
        self.metrics.batch_size.observe(size)


@cache
def _controller_metrics() -> ControllerMetrics:
    return ControllerMetrics()


def controller_recorder() -> ControllerRecorder:
    """A recorder for one controller replica (the metric objects are shared in the process)."""
    return ControllerRecorder(_controller_metrics())
