"""Budget policy: what is left of a request's budget after the expected queue wait and overhead,
and whether a `strict` request is refused. Pure functions returning decisions; the router acts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from controller.budget import Budget
from serving.errors import BadInput
from serving.ingress.queue_estimate import WaitEstimate

Policy = Literal["best-effort", "strict"]
POLICIES: tuple[Policy, ...] = ("best-effort", "strict")
Covers = Literal["first_token", "total"]
# The table rejects budgets <= 0; a budget already spent in the queue resolves as this tiny one,
# which no config meets, so the answer is the fastest config flagged infeasible.
SPENT_BUDGET_MS = 1e-3
MAX_RETRY_AFTER_S = 3600


def remaining_budget_ms(budget_ms: float, estimate: WaitEstimate) -> float:
    """The budget the knobs must fit: what the client gave minus expected wait and overhead."""
    return budget_ms - estimate.wait_ms - estimate.overhead_ms


def resolvable(remaining_ms: float) -> float:
    return remaining_ms if remaining_ms > SPENT_BUDGET_MS else SPENT_BUDGET_MS


@dataclass(frozen=True)
class Refusal:
    """A strict request that no config can meet: 429 when the queue is the reason (Retry-After says
    when it should have drained enough), 422 when even an empty queue would not do (retrying won't help)."""

    status: int
    retry_after_s: int | None
    problem: str
    accepted: str
    fastest_ms: float

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else {}


def refuse_strict(
    budget_ms: float, tolerance: float, estimate: WaitEstimate, fastest_ms: float
) -> Refusal:
    """Called only when no config fits the remaining budget. `fastest_ms` is the fastest config's
    expected latency (for the budget's coverage: first token, or the whole request)."""
    allowed = Budget(budget_ms, tolerance).threshold_ms
    room = allowed - estimate.overhead_ms - fastest_ms  # the wait this budget could absorb
    if room < 0:
        return Refusal(
            422,
            None,
            f"is below the fastest config ({fastest_ms:.1f} ms) plus overhead ({estimate.overhead_ms:.1f} ms) "
            "even with no queue",
            f"a budget of at least {math.ceil(fastest_ms + estimate.overhead_ms)} ms, or X-Budget-Policy: best-effort",
            fastest_ms,
        )
    excess_s = (estimate.wait_ms - room) / 1000
    retry = min(MAX_RETRY_AFTER_S, max(1, math.ceil(excess_s)))
    return Refusal(
        429,
        retry,
        f"cannot be met now: expected queue wait {estimate.wait_ms:.1f} ms + overhead "
        f"{estimate.overhead_ms:.1f} ms + fastest config {fastest_ms:.1f} ms",
        f"retry after {retry} s, a larger budget, or X-Budget-Policy: best-effort",
        fastest_ms,
    )


def parse_policy(raw: str | None, field: str, default: Policy) -> Policy:
    """The X-Budget-Policy header: absent or empty -> the configured default; else one of POLICIES."""
    if raw is None or raw.strip() == "":
        return default
    text = raw.strip().lower()
    for p in POLICIES:
        if text == p:
            return p
    raise BadInput(field, raw[:100], "is not a budget policy", f"send one of {', '.join(POLICIES)}")
