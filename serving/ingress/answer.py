"""`Answer`: one decision as the router serves it. The table's `Decision` (None when no table is
behind the answer: the fallback config), a fallback flag, and what the budget path added (queue
wait, overhead, policy, coverage, the rungs late binding may choose from). One shape from resolve to
response: the Decision's own fields are read through it, never copied, and `to_dict` is the only
place it becomes JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controller.budget import Budget
from controller.decision import Decision
from controller.knobs import Knobs
from controller.ladder import Rung


@dataclass(frozen=True)
class Answer:
    decision: Decision | None
    budget_ms: float
    tolerance: float | None
    fallback: bool = False
    # Without a decision (fallback or fixed mode): the configured knobs and their latency, if known.
    fallback_knobs: Knobs | None = None
    fallback_latency_ms: float | None = None
    # Queue-aware resolve (serving.ingress.budget_plan): the budget the knobs were resolved for, and why.
    remaining_budget_ms: float | None = None
    queue_wait_ms: float | None = None
    # The measured part of queue_wait_ms (serving.ingress.queue_estimate: how much later first
    # tokens came than the device model said, lately); queue_wait_ms minus it is the modelled wait.
    queue_wait_correction_ms: float | None = None
    overhead_ms: float | None = None
    policy: str | None = None
    covers: str = "first_token"
    # With covers: total, the decode time expected for the request's max_new_tokens (the decision's
    # latency is then the whole request's).
    expected_decode_ms: float | None = None
    # The scope's ladder (controller.ladder) for this request's coverage: what late binding may
    # choose from at the replica. Empty for answers without a local table.
    rungs: tuple[Rung, ...] = ()
    # "router": the knobs this router resolved; "replica": chosen again by the model replica when
    # the request left its queue (late binding), from the rungs the router sent.
    bound_at: str = "router"

    @classmethod
    def without_table(cls, knobs: Knobs, latency_ms: float | None, budget_ms: float,
                      tolerance: float | None) -> Answer:
        """The fallback config's answer (resolve_mode fixed clears the flag: its config is no fallback)."""
        return cls(None, budget_ms, tolerance, True, fallback_knobs=knobs, fallback_latency_ms=latency_ms)

    # -- the decision, read through ---------------------------------------------------------------

    @property
    def knobs(self) -> Knobs:
        if self.decision is not None:
            return self.decision.knobs
        assert self.fallback_knobs is not None, "an answer without a decision carries its knobs"
        return self.fallback_knobs

    @property
    def expected_accuracy(self) -> float | None:
        return self.decision.expected_accuracy if self.decision is not None else None

    @property
    def expected_latency_ms(self) -> float | None:
        """The budget-comparable latency: first token, or the whole request with covers: total."""
        return self.decision.expected_latency_ms if self.decision is not None else self.fallback_latency_ms

    @property
    def feasible(self) -> bool | None:
        if self.decision is not None:
            return self.decision.feasible
        latency = self.fallback_latency_ms
        return None if latency is None else Budget(self.budget_ms, self.tolerance or 0.0).fits(latency)

    @property
    def scope(self) -> str | None:
        return self.decision.scope if self.decision is not None else None

    @property
    def table_version(self) -> str | None:
        return self.decision.table_version if self.decision is not None else None

    @property
    def first_token_ms(self) -> float | None:
        """The config's first-token latency (the table's figure; a tail quantile in p99 tables)."""
        return self.decision.stats.latency_ms if self.decision is not None else self.fallback_latency_ms

    @property
    def decode_ms_per_token(self) -> float | None:
        return self.decision.stats.decode_ms_per_token if self.decision is not None else None

    @property
    def service_ms(self) -> float | None:
        """The config's mean first-token latency: what the model is expected to take on average
        (the queue estimate prices work with it)."""
        return self.decision.stats.service_ms if self.decision is not None else self.fallback_latency_ms

    def model_budget_ms(self) -> float | None:
        """What the model replica may spend: the budget left after the overhead the router expects
        outside the replica (its deadline)."""
        if self.budget_ms is None:
            return None
        return max(0.0, float(self.budget_ms) - float(self.overhead_ms or 0.0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "knobs": self.knobs.as_dict(),
            "expected_accuracy": self.expected_accuracy,
            "expected_latency_ms": self.expected_latency_ms,
            "feasible": self.feasible,
            "scope": self.scope,
            "table_version": self.table_version,
            "budget_ms": self.budget_ms,
            "tolerance": self.decision.tolerance if self.decision is not None else self.tolerance,
            "fallback": self.fallback,
            "remaining_budget_ms": self.remaining_budget_ms,
            "queue_wait_ms": self.queue_wait_ms,
            "queue_wait_correction_ms": self.queue_wait_correction_ms,
            "overhead_ms": self.overhead_ms,
            "budget_policy": self.policy,
            "budget_covers": self.covers,
            "expected_decode_ms": self.expected_decode_ms,
            "knobs_bound_at": self.bound_at,
        }
