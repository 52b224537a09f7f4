"""The router's queue-aware budget path in one place: estimate the wait, resolve for what is left,
refuse `strict` requests no config can meet, and feed what the replicas measured back to the
controller. The router calls it at four points; the rules live in budget_plan / queue_estimate."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, replace
from typing import Any

from controller.budget import Budget
from controller.decision import Decision
from controller.ladder import Rung, highest_fitting
from serving.config import ServingConfig
from serving.estimators import TAIL_QUANTILE
from serving.feedback import FeedbackSender, observation
from serving.identity_cache import IdentityCache
from serving.ingress.answer import Answer
from serving.ingress.budget_plan import Policy, refuse_strict, remaining_budget_ms, resolvable
from serving.ingress.queue_estimate import QueueTracker, WaitEstimate
from serving.wire import Dispatched, DispatchPlan, ModelResult

NO_WAIT = WaitEstimate(0.0, 0.0, 0, 1, "off")


@dataclass(frozen=True)
class Refused:
    """A strict request refused before any model work: status 429/422, the error (field, value,
    problem, accepted, message, type), the estimate behind it, and headers (Retry-After)."""

    status: int
    error: dict[str, Any]
    estimate: dict[str, Any]
    answer: Answer
    headers: dict[str, str]


class QueueAdmission:
    def __init__(self, config: ServingConfig, controller: Any) -> None:
        b, fb = config.budget, config.controller.feedback
        self.queue_aware, self.covers = b.queue_aware, b.covers
        self.late_binding = b.queue_aware and b.late_binding
        self.tracker = QueueTracker(
            stale_after_s=b.report_stale_after_s,
            proxy_overhead_ms=b.proxy_overhead_ms,
            overhead_quantile=b.overhead_quantile,
        )
        enabled = fb.enabled and controller is not None
        self.feedback = FeedbackSender(controller, fb.flush_interval_s) if enabled else None
        self._tokens = itertools.count(1)
        self._plans: IdentityCache[DispatchPlan] = IdentityCache()
        self.refused: dict[int, int] = {429: 0, 422: 0}
        self.metrics: Any = None  # set in start(): Ray metrics exist only inside a replica

    def start(self) -> None:
        from serving.telemetry.live_metrics import admission_metrics

        self.metrics = admission_metrics()
        if self.feedback is not None:
            self.feedback.start()

    def estimate(self) -> WaitEstimate:
        return self.tracker.estimate(time.monotonic()) if self.queue_aware else NO_WAIT

    def slowness(self) -> float:
        """Guard for a model running slower than its table (drift, a busy host): the p90 of measured
        service / table latency, never below 1. Dividing the remaining budget by it is the same as
        resolving on a table whose latencies are that much larger; live recalibration fixes the table
        per config, this covers the time until it does."""
        return max(1.0, self.tracker.ratio_quantile(TAIL_QUANTILE)) if self.queue_aware else 1.0

    def resolve_budget(self, budget_ms: float, estimate: WaitEstimate) -> float:
        if self.metrics is not None and self.queue_aware:
            self.metrics.wait_ms.observe(estimate.wait_ms)
        return resolvable(remaining_budget_ms(budget_ms, estimate) / self.slowness())

    def tokens_for(self, max_new_tokens: int) -> int | None:
        """What Resolver.answer takes: a token count only when budgets cover the whole request."""
        return max_new_tokens if self.covers == "total" else None

    def annotate(self, answer: Answer, budget_ms: float, estimate: WaitEstimate, policy: Policy) -> Answer:
        return replace(
            answer,
            budget_ms=budget_ms,
            remaining_budget_ms=remaining_budget_ms(budget_ms, estimate),
            queue_wait_ms=estimate.wait_ms,
            queue_wait_correction_ms=estimate.correction_ms,
            overhead_ms=estimate.overhead_ms,
            policy=policy,
        )

    def refusal(self, answer: Answer, estimate: WaitEstimate, field: str) -> Refused | None:
        """For a strict request: a 429/422 refusal (a value; each door renders it) when no config
        fits, else None (go ahead)."""
        if answer.feasible is not False or answer.expected_latency_ms is None:
            return None
        tol = answer.tolerance or 0.0
        r = refuse_strict(answer.budget_ms, tol, estimate, answer.expected_latency_ms * self.slowness())
        self.refused[r.status] = self.refused.get(r.status, 0) + 1
        if self.metrics is not None:
            self.metrics.refused.inc(tags={"status": str(r.status)})
        error = {
            "field": field,
            "value": answer.budget_ms,
            "problem": r.problem,
            "accepted": r.accepted,
            "message": f"{field}={answer.budget_ms:g} {r.problem}; {r.accepted}",
            "type": "budget_unmeetable_now" if r.status == 429 else "budget_unmeetable",
        }
        estimate_view = {**estimate.to_dict(), "fastest_config_ms": r.fastest_ms, "retry_after_s": r.retry_after_s}
        return Refused(r.status, error, estimate_view, answer, r.headers())

    # -- around the model call ---------------------------------------------------------------------

    def plan(self, answer: Answer) -> tuple[tuple[Rung, ...], DispatchPlan | None]:
        """The rungs a replica may choose from when the request leaves its queue (late binding):
        those the budget would allow with no wait at all, and always the fastest. ((), None): the
        router's knobs stand (late binding off, or no table behind the answer)."""
        if not self.late_binding or not answer.rungs or answer.fallback:
            return (), None
        model_budget = answer.model_budget_ms()
        if model_budget is None:
            return (), None
        budget = Budget(model_budget, answer.tolerance or 0.0)
        n = highest_fitting((r.latency_ms for r in answer.rungs), budget.threshold_ms) + 1
        return answer.rungs[:n], self._plan_for(answer.rungs, n, budget.tolerance)

    def _plan_for(self, ladder: tuple[Rung, ...], n: int, tolerance: float) -> DispatchPlan:
        """The plan of a ladder's first n rungs, one object per (ladder, n, tolerance): the ladders
        are cached per table version (serving.ingress.resolver.LadderCache), so the same object
        goes out for every such request and a replica in this process checks it once
        (serving.wire.CheckedPlans)."""
        plan = self._plans.get(ladder, n, tolerance)
        if plan is None:
            plan = self._plans.put(ladder, n, tolerance, value=DispatchPlan.from_rungs(ladder[:n], tolerance))
        return plan

    def ran(self, answer: Answer, rungs: tuple[Rung, ...], dispatch: Dispatched | None) -> Answer:
        """The answer for the rung the replica ran (its dispatch report; remaining_budget_ms stays
        what the router assumed); the same answer when there was no plan or the report does not
        name one of the rungs sent."""
        if not rungs or dispatch is None or not 0 <= dispatch.option < len(rungs):
            return answer
        r, d = rungs[dispatch.option], answer.decision
        if d is None:
            return answer
        decision = Decision(r.stats.knobs, r.stats.accuracy, r.latency_ms, dispatch.fits, d.scope, d.table_version,
                            d.budget_ms, d.tolerance, r.stats)
        decode = (r.latency_ms - r.stats.latency_ms) if self.covers == "total" else None
        return replace(answer, decision=decision, expected_decode_ms=decode, bound_at="replica")

    def sent(self, answer: Answer) -> int:
        token = next(self._tokens)
        self.tracker.sent(token, answer.knobs.key, answer.service_ms, time.monotonic())
        return token

    def failed(self, token: int) -> None:
        self.tracker.failed(token)

    def done(self, token: int, answer: Answer, result: ModelResult, overhead_ms: float | None) -> None:
        """An answer (a stream: its end) came back; `overhead_ms` is the router's first token minus
        the replica's (what the request spent outside the replica)."""
        self.tracker.done(
            token,
            time.monotonic(),
            expected_ms=answer.service_ms,
            service_ms=result.service_ms,
            overhead_ms=overhead_ms,
            report=result.replica_load,
            first_token_ratio=result.first_token_ratio,
            first_token_error_ms=self._first_token_error_ms(answer, result),
        )
        if self.feedback is not None:
            self.feedback.add(observation(answer.knobs.key, result))

    def _first_token_error_ms(self, answer: Answer, result: ModelResult) -> float | None:
        """The replica's first token minus what this router predicted for it when it admitted the
        request (for the config that ran: late binding may have picked another); None when the
        router predicted nothing (queue-unaware) or the replica reported no first token."""
        if not self.queue_aware or answer.queue_wait_ms is None or result.replica_first_token_ms <= 0:
            return None
        modelled = answer.queue_wait_ms - (answer.queue_wait_correction_ms or 0.0)
        predicted = QueueTracker.predicted_first_ms(modelled, answer.service_ms, self.slowness())
        return None if predicted is None else result.replica_first_token_ms - predicted

    def status(self) -> dict[str, Any]:
        return {
            "queue_aware": self.queue_aware,
            "covers": self.covers,
            "estimate": self.estimate().to_dict(),
            "service_ratio": self.tracker.ratio(),
            "slowness_guard": self.slowness(),
            "refused": {str(k): v for k, v in self.refused.items()},
            "feedback": self.feedback.status() if self.feedback is not None else None,
        }
