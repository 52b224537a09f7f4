"""The router's estimate of how long a request will wait before its model forward starts, and of
the overhead around the model call. Pure (time is an argument) so that tests need no clocks.

Two sources, and the larger wins, so that either one alone keeps the estimate safe:
- the router's own requests in flight (always fresh, but blind to other routers), priced at the
  table latency of their configs times the measured service ratio;
- the replicas' own reports (`ReplicaReport`, carried by each answer), aged by the time since they
  arrived and ignored once older than `stale_after_s`.
A replica that has not reported yet is not counted as capacity: the estimate assumes fewer
replicas, i.e. a longer wait, until it answers once.

Both sources model the device (prefills one after another); what they leave out (decode steps run
between prefills, a knob pair that waits for the running decode batch to drain, a replica's own
queue) is measured instead: each answer says when the replica's first token came, the router knows
what it predicted for it (modelled wait + the config's first token x the slowness guard), and a
tail quantile of those errors over the last few seconds is added to the wait (`correction_ms`,
never negative). On the H100 at b7d541c the model alone let 15 of 48 feasible-flagged requests at
half of capacity wait 100-240 ms more than it said. The error is taken against the modelled wait
alone, never against a corrected one, so the correction cannot feed on itself.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from statistics import median

from serving.estimators import TimedWindow, robust_quantile, upper_quantile
from serving.wire import ReplicaReport

# Answers whose overhead is not counted: a router's first calls to a model replica set up the
# connection (tens of ms once), which is not the overhead later requests pay.
COLD_ANSWERS = 2


@dataclass(frozen=True)
class WaitEstimate:
    wait_ms: float  # expected queueing before the model forward starts (correction_ms included)
    overhead_ms: float  # router + handle hop + proxy, measured (plus the configured proxy share)
    in_flight: int
    replicas: int
    basis: str  # "empty", "router" or "reports": which source set the modelled part of wait_ms
    correction_ms: float = 0.0  # measured: how much later first tokens came than modelled (tail)

    @property
    def modelled_ms(self) -> float:
        """The wait as the device model alone puts it (what a prediction error is taken against)."""
        return self.wait_ms - self.correction_ms

    def to_dict(self) -> dict[str, object]:
        return {
            "wait_ms": self.wait_ms,
            "correction_ms": self.correction_ms,
            "overhead_ms": self.overhead_ms,
            "in_flight": self.in_flight,
            "replicas": self.replicas,
            "basis": self.basis,
        }


# The overhead figure is recomputed at most this often once its window holds more than
# OVERHEAD_SMALL_WINDOW samples (QueueTracker.overhead_ms).
OVERHEAD_REFRESH_S = 0.1
OVERHEAD_SMALL_WINDOW = 32


def _finite_nonneg(x: float | None) -> bool:
    return x is not None and math.isfinite(x) and x >= 0


class QueueTracker:
    def __init__(
        self,
        stale_after_s: float = 2.0,
        replica_ttl_s: float = 30.0,
        proxy_overhead_ms: float = 0.0,
        overhead_quantile: float = 0.9,
        window: int = 256,
        overhead_window_s: float = 30.0,
        cold_answers: int = COLD_ANSWERS,
        error_window_s: float = 10.0,
        error_quantile: float = 0.9,
    ) -> None:
        self.stale_after_s, self.replica_ttl_s = stale_after_s, replica_ttl_s
        self.proxy_overhead_ms, self.overhead_quantile = proxy_overhead_ms, overhead_quantile
        # token -> (config, expected whole call ms (first token + decode), sent at): streams included,
        # for as long as they decode, since the replica is busy with them.
        self._in_flight: dict[int, tuple[str, float | None, float]] = {}
        self._reports: dict[str, tuple[float, ReplicaReport]] = {}  # replica -> (received, report)
        self._ratios: deque[float] = deque(maxlen=window)
        self._service: deque[float] = deque(maxlen=window)
        # The overhead covers the last overhead_window_s only, and is read robustly
        # (serving.estimators.robust_quantile), so that one stall of the host (or a cold start)
        # neither holds every budget for the window nor moves it much while it lasts.
        self._overhead = TimedWindow(overhead_window_s, window)
        self._overhead_at = -math.inf  # when the overhead figure was last computed (the callers' clock)
        self.overhead_window_s = overhead_window_s
        self._answers, self.cold_answers = 0, cold_answers
        # Measured first token / table latency: the table's latency is a first-token time, while a
        # backend call also decodes, so slowness is judged on the first token alone.
        self._first_token_ratios: deque[float] = deque(maxlen=window)
        # Replica first token - what the router predicted for it (ms), the last error_window_s: short,
        # so that the correction follows a load that changes, and read by rank (a wait that grows
        # is no outlier to be robust against).
        self._errors = TimedWindow(error_window_s, window)
        self.error_quantile = error_quantile
        # The figures read on every request, kept until a sample changes them (a sort of a few
        # hundred samples per request was a tenth of a millisecond of the serving overhead).
        self._cache: dict[str, tuple[int, float | None]] = {}
        self._ratio_version = 0

    # -- events --------------------------------------------------------------------------------

    def sent(self, token: int, config: str, first_ms: float | None, now: float = 0.0) -> None:
        """A request went to a replica; `first_ms` is its table's mean first token (its prefill:
        what it holds the device for ahead of others), None where unknown."""
        self._in_flight[token] = (config, first_ms, now)

    def failed(self, token: int) -> None:
        self._in_flight.pop(token, None)

    def done(
        self,
        token: int,
        now: float,
        *,
        expected_ms: float | None,
        service_ms: float | None,
        overhead_ms: float | None,
        report: ReplicaReport | None,
        first_token_ratio: float | None = None,
        first_token_error_ms: float | None = None,
    ) -> None:
        """An answer came back (a stream: its last piece). `overhead_ms` is the serving cost outside
        the replica, the router's first token minus the replica's (never a stream's duration);
        `first_token_ratio`: the replica's first token / table for the backend call (a batch's
        prefills run one after another, so one member's first token / its own table latency would
        read batching as slowness); without one, service / expected stands in.
        `first_token_error_ms`: the replica's first token minus what the router predicted for it
        (`predicted_first_ms`), None where either is unknown."""
        self._in_flight.pop(token, None)
        if first_token_error_ms is not None and math.isfinite(first_token_error_ms):
            self._errors.add(now, first_token_error_ms)
        if _finite_nonneg(service_ms):
            assert service_ms is not None
            self._service.append(service_ms)
            if _finite_nonneg(first_token_ratio):
                assert first_token_ratio is not None
                self._first_token_ratios.append(first_token_ratio)
                self._ratio_version += 1
            elif expected_ms is not None and expected_ms > 0:
                self._first_token_ratios.append(service_ms / expected_ms)
                self._ratio_version += 1
        if overhead_ms is not None and math.isfinite(overhead_ms):
            self._answers += 1
            if self._answers > self.cold_answers:  # the first calls through a new handle connect
                self._overhead.add(now, max(0.0, overhead_ms))
        if report is not None:
            self._reports[report.replica] = (now, report)

    # -- the estimate --------------------------------------------------------------------------

    def _cached(self, key: str, version: int, compute: Callable[[], float | None]) -> float | None:
        hit = self._cache.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        value = compute()
        self._cache[key] = (version, value)
        return value

    def ratio(self) -> float:
        """Measured / table first token (median); 1.0 (the table as is) before any answer."""
        ratios = self._first_token_ratios
        value = self._cached("median", self._ratio_version, lambda: median(ratios) if ratios else None)
        return 1.0 if value is None else value

    def ratio_quantile(self, q: float) -> float:
        """A high quantile of measured first token / table latency (1.0 before any answer); the
        whole call where the model reports no first token."""
        ratio = self._cached(f"q{q!r}", self._ratio_version, lambda: upper_quantile(self._first_token_ratios, q))
        return 1.0 if ratio is None else ratio

    def overhead_ms(self, now: float | None = None) -> float:
        window = self._overhead
        if now is not None:
            window.expire(now)
        hit = self._cache.get("overhead")
        if (hit is not None and now is not None and len(window) > OVERHEAD_SMALL_WINDOW
                and 0 <= now - self._overhead_at < OVERHEAD_REFRESH_S):
            # Every answer adds a sample, so the figure would be recomputed (median and MAD, two
            # sorts of up to 256 samples: ~50 us) on every request; a window of more than a few
            # dozen samples, which half of them must move, keeps its figure for a tenth of a second.
            measured = hit[1]
        else:
            measured = self._cached("overhead", window.version,
                                    lambda: robust_quantile(window.values(), self.overhead_quantile))
            if now is not None:
                self._overhead_at = now
        return (measured or 0.0) + self.proxy_overhead_ms

    def correction_ms(self, now: float) -> float:
        """The tail of recent prediction errors, never below 0 (a model that overestimates is kept:
        it errs on the safe side)."""
        window = self._errors
        window.expire(now)
        q = self.error_quantile
        tail = self._cached("error", window.version, lambda: upper_quantile(window.values(), q))
        return max(0.0, tail or 0.0)

    @staticmethod
    def predicted_first_ms(modelled_wait_ms: float, first_ms: float | None, slowness: float) -> float | None:
        """What the router assumed for a request's first token at the replica: the modelled wait and
        the config's first token x the slowness guard (None for a config of unknown latency)."""
        return None if first_ms is None else modelled_wait_ms + first_ms * slowness

    def replicas(self, now: float) -> int:
        live = [r for r, (at, _) in self._reports.items() if now - at <= self.replica_ttl_s]
        for r in [r for r in self._reports if r not in live]:
            del self._reports[r]  # gone or idle for long: forget, so the dict stays bounded
        return max(1, len(live))

    def _router_wait(self, replicas: int, now: float) -> float:
        """The prefills this router has in flight, one after another in the order sent (an engine
        prefills one request at a time; decodes are shared, since a newcomer joins the running
        batch between two steps), each its table first token x the measured ratio (never below 1):
        when the last of them ends, from now. A request sent long ago has had its prefill."""
        if not self._in_flight:
            return 0.0
        fallback: float | None = None  # for a config of unknown latency: the median service time
        scale = max(1.0, self.ratio())
        free_at = -math.inf
        for _, e, at in sorted(self._in_flight.values(), key=lambda v: v[2]):
            if e is None and fallback is None:
                fallback = median(self._service) if self._service else 0.0
            free_at = max(free_at, at) + (e * scale if e is not None else fallback or 0.0) / 1000
        return max(0.0, (free_at - now) * 1000) / replicas

    def _report_wait(self, now: float) -> float | None:
        fresh = [
            max(0.0, rep.backlog_ms - (now - at) * 1000)
            for at, rep in self._reports.values()
            if now - at <= self.stale_after_s and _finite_nonneg(rep.backlog_ms)
        ]
        return sum(fresh) / len(fresh) if fresh else None

    def estimate(self, now: float) -> WaitEstimate:
        replicas = self.replicas(now)
        router = self._router_wait(replicas, now)
        reports = self._report_wait(now)
        if reports is not None and reports > router:
            wait, basis = reports, "reports"
        else:
            wait, basis = router, ("router" if self._in_flight else "empty")
        correction = self.correction_ms(now)
        return WaitEstimate(wait + correction, self.overhead_ms(now), len(self._in_flight), replicas, basis,
                            correction)
