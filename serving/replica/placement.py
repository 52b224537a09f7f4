"""Which model replica a call should go to: pure (reports, the call and the time are arguments), so
the Serve request router (serving.replica.budget_router) and the tests share one rule.

The rule, for a call with a table latency and a budget: its first token on replica r comes after
r's backlog plus its own table latency times r's measured first-token ratio (never below 1: the
table's tail figures stay the floor). Replicas where that fits the budget come first; among them a
replica already running or queueing the call's knobs first (knob affinity: equal knobs join one
decode batch), then least expected wait (spreading). Replicas with no fresh report come next (they
may be new and empty), then those that cannot fit, least late first. No fresh report at all:
an empty ranking, and the caller falls back to Serve's power of two choices on queue length.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

STATS_VERSION = 1  # bumped when the stats dict changes shape; other versions are ignored
MAX_KNOB_KEYS = 64  # a report naming more knob pairs than this is cut (a table has a few dozen)


@dataclass(frozen=True)
class ReplicaView:
    """One replica's routing stats as read from its report: when it was made (wall-clock s, as Serve
    polls across processes), its backlog in first-token ms, its ongoing calls, its measured first
    token / table latency (None before any call) and the knob pairs it runs or has queued."""

    at: float
    backlog_ms: float
    ongoing: int
    first_token_ratio: float | None
    knobs: frozenset[str]

    def to_stats(self) -> dict[str, Any]:
        """The dict a replica returns from record_routing_stats (Serve carries plain data)."""
        return {"v": STATS_VERSION, "at": self.at, "backlog_ms": self.backlog_ms, "ongoing": self.ongoing,
                "first_token_ratio": self.first_token_ratio, "knobs": sorted(self.knobs)}


def _finite(x: object, lo: float = 0.0) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    f = float(x)
    return f if math.isfinite(f) and f >= lo else None


def parse_stats(raw: object) -> ReplicaView | None:
    """A replica's routing stats, or None when they are missing or malformed (never raises: a bad
    report must cost that replica its preference, not the request its route)."""
    if not isinstance(raw, Mapping) or raw.get("v") != STATS_VERSION:
        return None
    at, backlog = _finite(raw.get("at")), _finite(raw.get("backlog_ms"))
    ongoing = raw.get("ongoing")
    if at is None or backlog is None or isinstance(ongoing, bool) or not isinstance(ongoing, int) or ongoing < 0:
        return None
    ratio_raw = raw.get("first_token_ratio")
    ratio = _finite(ratio_raw)
    if ratio_raw is not None and (ratio is None or ratio == 0):
        return None  # a NaN, negative or zero ratio: the report cannot be trusted
    knobs = raw.get("knobs", [])
    if not isinstance(knobs, (list, tuple)):
        return None
    keys = frozenset(k for k in knobs[:MAX_KNOB_KEYS] if isinstance(k, str))
    return ReplicaView(at, backlog, ongoing, ratio, keys)


@dataclass(frozen=True)
class CallView:
    """What placement needs of a call (serving.wire.ModelCall): its knob pair, table first-token
    latency and budget left (ms); None where unknown."""

    knobs: str | None
    expected_ms: float | None
    budget_ms: float | None

    @classmethod
    def of(cls, call: object) -> CallView | None:
        """Read a ModelCall-shaped object (or a mapping of the same fields); None when it is neither,
        e.g. a call to another method of the deployment (no arguments)."""
        get = call.get if isinstance(call, Mapping) else (lambda name, default=None: getattr(call, name, default))
        knobs = get("knobs")
        key = knobs if isinstance(knobs, str) else getattr(knobs, "key", None)
        if not isinstance(key, str):
            return None
        expected, budget = _finite(get("expected_ms")), _finite(get("budget_ms"))
        return cls(key, expected if expected else None, budget)


@dataclass(frozen=True)
class InFlight:
    """A call this router sent to a replica and has not seen completed: counted on top of a report
    made before it was sent (reports are polled, calls are not)."""

    knobs: str | None
    expected_ms: float
    sent_at: float


Reason = Literal["fits_affinity", "fits", "unknown", "late", "no_budget", "stale"]


@dataclass(frozen=True)
class Placement:
    """The ranking (best first) and why the first one is first. `ranked` empty: no fresh report,
    route as Serve does. `first_token_ms` is the expected first token on each ranked replica (None
    where it had no fresh report)."""

    ranked: tuple[str, ...]
    reason: Reason
    first_token_ms: tuple[float | None, ...] = ()


@dataclass(frozen=True)
class _Scored:
    replica: str
    first_ms: float
    wait_ms: float
    affinity: bool


def place(
    reports: Mapping[str, object],
    call: CallView | None,
    now: float,
    stale_after_s: float,
    inflight: Mapping[str, Iterable[InFlight]] | None = None,
) -> Placement:
    """Rank the replicas in `reports` (replica id -> raw routing stats, None where it has none) for
    `call` at wall-clock `now`. Reports older than `stale_after_s` (or that far in the future: a
    clock jump) count as none."""
    inflight = inflight or {}
    scored: list[_Scored] = []
    unknown: list[str] = []
    expected = call.expected_ms if call is not None else None
    for rid, raw in reports.items():
        view = parse_stats(raw)
        if view is None or abs(now - view.at) > stale_after_s:
            unknown.append(rid)
            continue
        scale = max(1.0, view.first_token_ratio or 1.0)
        # Calls sent since the report: their first tokens come before this one's (an engine
        # prefills one request at a time); those sent before it are in its backlog already.
        since = [f for f in inflight.get(rid, ()) if f.sent_at >= view.at]
        wait = _wait_now(view, since, scale, now)
        first = wait + (expected or 0.0) * scale
        knobs = view.knobs | {f.knobs for f in since if f.knobs is not None}
        scored.append(_Scored(rid, first, wait, call is not None and call.knobs in knobs))
    if not scored:
        return Placement((), "stale")
    by_wait = sorted(scored, key=lambda s: (s.first_ms, s.wait_ms, s.replica))
    budget = call.budget_ms if call is not None else None
    if budget is None or expected is None:
        # No budget to keep: affinity only while it costs at most one call's time over the best.
        slack = by_wait[0].first_ms + (expected or 0.0)
        near = [s for s in by_wait if s.affinity and s.first_ms <= slack]
        rest = [s for s in by_wait if s not in near]
        return _ranked(near + rest, unknown, "no_budget")
    fits = [s for s in by_wait if s.first_ms <= budget]
    late = [s for s in by_wait if s.first_ms > budget]
    same = [s for s in fits if s.affinity]
    others = [s for s in fits if not s.affinity]
    reason: Reason = "fits_affinity" if same else "fits" if fits else "unknown" if unknown else "late"
    # Unknown replicas before late ones: a replica with no report yet (just started) may be empty,
    # while a late one is known not to make it.
    return _ranked(same + others, unknown, reason, late)


def _wait_now(view: ReplicaView, since: Sequence[InFlight], scale: float, now: float) -> float:
    """The first-token work a call arriving now waits for on this replica: the report's backlog,
    drained one ms per ms while the report aged (the engine works through it meanwhile), with each
    call sent since joining it when it was sent. A report a few stats periods old otherwise names
    work that is long done, and a call that is finished still counts until the next report."""
    t, work = view.at, view.backlog_ms
    for f in sorted(since, key=lambda f: f.sent_at):
        work = max(0.0, work - max(0.0, f.sent_at - t) * 1000) + f.expected_ms * scale
        t = max(t, f.sent_at)
    return max(0.0, work - max(0.0, now - t) * 1000)


def _ranked(first: Sequence[_Scored], unknown: Sequence[str], reason: Reason,
            last: Sequence[_Scored] = ()) -> Placement:
    ids = tuple(s.replica for s in first) + tuple(sorted(unknown)) + tuple(s.replica for s in last)
    ms = tuple(s.first_ms for s in first) + (None,) * len(unknown) + tuple(s.first_ms for s in last)
    return Placement(ids, reason, ms)
