"""Budget buckets for the attainment metric: a fixed set of tag values, whatever budgets clients
send (a client-chosen number must never become an unbounded set of metric series)."""

from __future__ import annotations

BUCKET_EDGES_MS = (25, 50, 100, 200, 400, 800, 1600)
BUCKETS = tuple(f"le_{e}ms" for e in BUCKET_EDGES_MS) + (f"gt_{BUCKET_EDGES_MS[-1]}ms",)


def budget_bucket(budget_ms: float) -> str:
    for edge, name in zip(BUCKET_EDGES_MS, BUCKETS, strict=False):
        if budget_ms <= edge:
            return name
    return BUCKETS[-1]
