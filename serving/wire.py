"""The typed wire between the router and a model replica, and what a replica publishes.

Ray pickles these dataclasses across the handle call, so the router and the replica share one
definition instead of positional arguments, nested lists and string-keyed dicts. The replica still
checks what it gets (`ModelCall.checked`): a direct handle call can send anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from controller.errors import KnobError
from controller.knobs import TIERS, Knobs
from controller.ladder import Rung
from serving.errors import ServingError
from serving.identity_cache import IdentityCache


@dataclass(frozen=True)
class SupportedRanges:
    """What a backend can run, as plain data: the model deployment publishes it so that the
    controller can refuse a table holding a config the model would fail on (before any request)."""

    top_k: tuple[int, int]
    num_active_blocks: tuple[int, int]
    tiers: tuple[str, ...] = TIERS
    # Configs inside the ranges that the backend still cannot run (e.g. a failed graph capture).
    disabled: tuple[str, ...] = ()  # Knobs.key values

    def check(self, knobs: Knobs) -> None:
        """Raise KnobError naming the knob and the accepted range."""
        if knobs.tier not in self.tiers:
            raise KnobError("tier", knobs.tier, f"one of {', '.join(self.tiers)} (this model)")
        for name, (lo, hi) in (("top_k", self.top_k), ("num_active_blocks", self.num_active_blocks)):
            value = getattr(knobs, name)
            if not lo <= value <= hi:
                raise KnobError(name, value, f"an integer in [{lo}, {hi}] (this model)")
        if knobs.key in self.disabled:
            raise KnobError("knobs", knobs.key, "a config this model has not disabled")

    def check_configs(self, configs: list[Knobs]) -> None:
        """Raise KnobError for the first config outside the ranges, naming that config."""
        for k in configs:
            try:
                self.check(k)
            except KnobError as e:
                raise KnobError("config", k.key, f"configs this model can run: {e}") from e

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SupportedRanges:
        return cls(
            top_k=(int(d["top_k"][0]), int(d["top_k"][1])),
            num_active_blocks=(int(d["num_active_blocks"][0]), int(d["num_active_blocks"][1])),
            tiers=tuple(d["tiers"]),
            disabled=tuple(d.get("disabled", ())),
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "tiers": list(self.tiers),
            "top_k": list(self.top_k),
            "num_active_blocks": list(self.num_active_blocks),
            "disabled": list(self.disabled),
        }


@dataclass(frozen=True)
class ReplicaReport:
    """What a replica tells the router with each answer. `backlog_ms` is its estimate of the work a
    request arriving now would wait for; `service_ratio` is measured / table latency (recent median)."""

    replica: str
    waiting: int
    running: int
    backlog_ms: float
    service_ratio: float | None

    def to_dict(self) -> dict[str, object]:
        return {
            "replica": self.replica,
            "waiting": self.waiting,
            "running": self.running,
            "backlog_ms": self.backlog_ms,
            "service_ratio": self.service_ratio,
        }


MAX_OPTIONS = 256  # a ladder holds at most one rung per config; tables have a few dozen


class PlanError(ServingError, ValueError):
    """A dispatch plan that is not what a router sends (the replica then keeps the router's knobs)."""


@dataclass(frozen=True)
class PlanOption:
    knobs: Knobs
    latency_ms: float  # compared with the time left (the table's latency, + decode for `covers: total`)
    service_ms: float  # expected first-token time (the table's mean): what waiting requests wait for
    decode_ms_per_token: float | None
    accuracy: float | None = None  # the table's expected accuracy (what a knob-pair switch would gain)


@dataclass(frozen=True)
class DispatchPlan:
    options: tuple[PlanOption, ...]  # fastest first, each more accurate than the one before
    tolerance: float

    @property
    def fastest_ms(self) -> float:
        return self.options[0].latency_ms

    @classmethod
    def from_rungs(cls, rungs: Sequence[Rung], tolerance: float) -> DispatchPlan:
        return cls(
            tuple(PlanOption(r.stats.knobs, r.latency_ms, r.service_ms, r.stats.decode_ms_per_token, r.stats.accuracy)
                  for r in rungs),
            tolerance,
        )

    def checked(self) -> DispatchPlan:
        """This plan if it is what a router sends, else PlanError (the replica then keeps the
        router's knobs): 1 to MAX_OPTIONS options of Knobs with finite latencies >= 0, sorted
        fastest first, and a tolerance in [0, 1]."""
        if not isinstance(self.options, tuple) or not 1 <= len(self.options) <= MAX_OPTIONS:
            n = len(self.options) if isinstance(self.options, (tuple, list)) else self.options
            raise PlanError(f"a dispatch plan holds a tuple of 1 to {MAX_OPTIONS} options, not {str(n)[:80]}")
        if not _number(self.tolerance) or not 0 <= self.tolerance <= 1:
            raise PlanError(f"dispatch plan tolerance={self.tolerance!r} is not a number in [0, 1]")
        for o in self.options:
            if not isinstance(o, PlanOption) or not isinstance(o.knobs, Knobs):
                raise PlanError(f"dispatch plan option {str(o)[:80]} is not a PlanOption with Knobs")
            d = o.decode_ms_per_token
            if not (_number(o.latency_ms) and _number(o.service_ms) and (d is None or _number(d))):
                raise PlanError(f"dispatch plan option {str(o)[:80]} has a latency that is not a finite number >= 0")
            if o.accuracy is not None and not (_number(o.accuracy) and o.accuracy <= 1):
                raise PlanError(f"dispatch plan option {str(o)[:80]} has an accuracy that is not a number in [0, 1]")
            try:
                Knobs(o.knobs.tier, o.knobs.top_k, o.knobs.num_active_blocks)  # unpickled: __post_init__ never ran
            except KnobError as e:
                raise PlanError(f"dispatch plan option {o.knobs}: {e}") from e
        if any(b.latency_ms < a.latency_ms for a, b in zip(self.options, self.options[1:])):
            raise PlanError("dispatch plan options are not sorted fastest first")
        return self


class CheckedPlans:
    """The dispatch plans this process has checked, by identity. A router in the same process (the
    model-ingress topology) hands one plan object for every request of a ladder prefix
    (`serving.ingress.admission.QueueAdmission.plan` keeps them), so its check, option by option
    (~50 us in a tight loop, several times that in an idle replica), runs once. A plan that crossed
    a process boundary is a new object each time and is checked each time. Plans and their options
    are frozen, so a plan checked once stays valid."""

    def __init__(self, size: int = 256) -> None:
        self._seen: IdentityCache[bool] = IdentityCache(size)

    def checked(self, plan: DispatchPlan) -> DispatchPlan:
        """`plan.checked()`, once per plan object; PlanError as it raises."""
        if self._seen.get(plan) is None:
            self._seen.put(plan, value=bool(plan.checked()))
        return plan


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0


@dataclass(frozen=True)
class ModelCall:
    """One request as the router sends it to a model replica.

    `expected_ms`: the table's first-token latency for `knobs` (None: unknown, e.g. the fallback);
    `decode_ms_per_token`: the table's decode rate for them (None: the table has none);
    `budget_ms`: what is left of the request's budget for this replica (its deadline; None: none);
    `plan`: the rungs the replica may choose from when the request's backend call starts."""

    knobs: Knobs
    prompt: str
    max_new_tokens: int = 16
    image_b64: str | None = None
    expected_ms: float | None = None
    decode_ms_per_token: float | None = None
    budget_ms: float | None = None
    plan: DispatchPlan | None = None


@dataclass(frozen=True)
class ReplicaQuery:
    """Which replica should take a request, without sending it: what the ingress request router
    (serving.ingress.replica_chooser) asks MoEModel's request router, and HAProxy then forwards the
    request itself. The fields are a ModelCall's as the doors would resolve it at an idle replica:
    the knobs (None: unknown, e.g. a bad budget header), the table's first-token ms for them (the
    tail figure the doors hold against the budget, where a ModelCall carries the mean), the budget."""

    knobs: Knobs | None
    expected_ms: float | None
    budget_ms: float | None


@dataclass(frozen=True)
class Dispatched:
    """Which option of the request's plan ran, and whether it fitted the time left."""

    option: int
    fits: bool
    left_ms: float
    guarded: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"option": self.option, "fits": self.fits, "left_ms": self.left_ms, "guarded": self.guarded}


@dataclass(frozen=True)
class ModelResult:
    """A replica's answer to one `ModelCall`.

    Times are the replica's own (ms): `queue_wait_ms` before its backend call started, `service_ms`
    the whole backend call, `first_token_ms` the backend call's first token (what the table's
    latency describes), `replica_first_token_ms` arrival to first token and `replica_ms` arrival
    to answer (the router's time minus these is the serving overhead)."""

    text: str
    output_tokens: int
    prompt_tokens: int
    finish_reason: str
    knobs: Knobs  # what ran (late binding may have changed the router's knobs)
    timings_ms: dict[str, float] = field(default_factory=dict)
    batch_size: int = 1
    batch_id: str = ""
    serve_batch_size: int = 1
    queue_wait_ms: float = 0.0
    service_ms: float = 0.0
    first_token_ms: float = 0.0
    first_token_ratio: float | None = None
    crops: int | None = None
    replica_load: ReplicaReport | None = None
    dispatch: Dispatched | None = None
    replica_first_token_ms: float = 0.0
    replica_ms: float = 0.0
    streamed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The JSON `output` of /v1/generate (its keys kept from the dict this replaced)."""
        return {
            "text": self.text,
            "output_tokens": self.output_tokens,
            "prompt_tokens": self.prompt_tokens,
            "finish_reason": self.finish_reason,
            "timings_ms": self.timings_ms,
            "batch_size": self.batch_size,
            "batch_id": self.batch_id,
            "batch_knobs": self.knobs.as_dict(),
            "serve_batch_size": self.serve_batch_size,
            "queue_wait_ms": self.queue_wait_ms,
            "service_ms": self.service_ms,
            "first_token_ms": self.first_token_ms,
            "first_token_ratio": self.first_token_ratio,
            "crops": self.crops,
            "replica_load": None if self.replica_load is None else self.replica_load.to_dict(),
            "dispatch": None if self.dispatch is None else self.dispatch.to_dict(),
            "replica_first_token_ms": self.replica_first_token_ms,
            "replica_ms": self.replica_ms,
        }


@dataclass(frozen=True)
class StreamPiece:
    """One piece of a streamed answer: new text only (never the text so far), or the end (`result`,
    whose text is the whole answer)."""

    text: str = ""
    result: ModelResult | None = None
    # Replica time from arrival to this piece (ms): the first one is the replica's first token.
    at_ms: float = 0.0
    # On every text piece: which option of the plan runs (late binding chose it when the batch
    # started), so the router can name the knobs before the result.
    dispatch: Dispatched | None = None
