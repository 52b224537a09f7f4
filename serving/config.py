"""Serving settings (headers, budgets, controller, fallback, model), validated strictly."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controller.knobs import Knobs
from serving.errors import ServingConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HeaderNames(_Strict):
    budget: str = "X-Latency-Budget-Ms"
    dataset: str = "X-Dataset"
    tolerance: str = "X-Latency-Tolerance"
    policy: str = "X-Budget-Policy"


class BudgetSettings(_Strict):
    # None with require_budget=False is refused below: a missing header must lead somewhere.
    default_budget_ms: float | None = Field(default=None, gt=0)
    max_budget_ms: float = Field(default=60_000.0, gt=0)
    require_budget: bool = False
    # "first_token": the budget covers vision + prefill (the table's latency); "total": it also
    # covers decoding the request's max_new_tokens at the table's per-token decode rate.
    covers: Literal["first_token", "total"] = "first_token"
    # Policy when the request has no X-Budget-Policy header (serving.ingress.budget_plan.POLICIES).
    default_policy: Literal["best-effort", "strict"] = "best-effort"
    # Resolve knobs for the budget left after the expected queue wait and measured overhead;
    # false resolves the whole budget against the unloaded table (the behaviour before queues, and
    # the default of this model so that inline configs keep it; both shipped YAMLs turn it on).
    queue_aware: bool = False
    # Reports older than this are ignored; the router's own in-flight count still counts.
    report_stale_after_s: float = Field(default=2.0, gt=0, le=600)
    # Overhead outside the router that it cannot measure (HTTP proxy), added to the measured one.
    proxy_overhead_ms: float = Field(default=1.0, ge=0, le=10_000)
    # Which quantile of the router's recently measured overhead is budgeted (a budget should hold
    # for most requests, and overhead has a long tail on a busy host).
    overhead_quantile: float = Field(default=0.99, ge=0.5, le=1.0)
    # With queue_aware: send each request's ladder (serving.replica.dispatch) so that the model replica
    # chooses its knobs again when the request leaves the queue, for the time really left.
    late_binding: bool = True

    @model_validator(mode="after")
    def _check(self) -> BudgetSettings:
        if self.default_budget_ms is None and not self.require_budget:
            raise ValueError(
                "budget.default_budget_ms is unset and budget.require_budget is false; "
                "set a default (e.g. default_budget_ms: 250) or require_budget: true"
            )
        if self.default_budget_ms is not None and not math.isfinite(self.default_budget_ms):
            raise ValueError(f"budget.default_budget_ms={self.default_budget_ms} must be finite")
        if self.default_budget_ms is not None and self.default_budget_ms > self.max_budget_ms:
            raise ValueError(
                f"budget.default_budget_ms={self.default_budget_ms} exceeds "
                f"budget.max_budget_ms={self.max_budget_ms}; lower the default or raise the maximum"
            )
        return self


class BatchSettings(_Strict):
    max_batch_size: int = Field(default=32, ge=1, le=4096)
    batch_wait_timeout_s: float = Field(default=0.002, ge=0, le=10)


class AutoRecalibrateSettings(_Strict):
    """Publish a recalibrated table when a config's live p95 differs from the table's by more than
    `drift_share` for `drift_for_s` (only configs with at least feedback.min_samples live samples)."""

    enabled: bool = False
    drift_share: float = Field(default=0.15, gt=0, le=10)
    drift_for_s: float = Field(default=30.0, ge=0, le=86_400)
    # At most one automatic publish per cooldown (and none while a rollback is in effect).
    cooldown_s: float = Field(default=300.0, ge=0, le=86_400)


class FeedbackSettings(_Strict):
    """Live latency feedback: per-config quantile sketches kept by the LookupController."""

    enabled: bool = True
    window_s: float = Field(default=300.0, gt=0, le=86_400)
    min_samples: int = Field(default=50, ge=1, le=10_000_000)
    relative_accuracy: float = Field(default=0.01, gt=0, lt=1)
    # How often routers send observations and the controller writes its snapshot to the store.
    flush_interval_s: float = Field(default=1.0, gt=0, le=3600)
    auto: AutoRecalibrateSettings = AutoRecalibrateSettings()


class ControllerSettings(_Strict):
    """The controller settings, in one model: the `controller` section of a serving YAML, and (the
    replica's part of it, `user_config()`) what the `LookupController` deployment gets as
    `user_config`. `resolve_mode` and `timeout_s` are how the router talks to it."""

    store: str = Field(min_length=1)
    version: str = Field(default="latest", min_length=1)
    poll_interval_s: float = Field(default=1.0, gt=0, le=3600)
    batch: BatchSettings = BatchSettings()
    # "local": the router resolves on its own copy of the table, kept current by version from the
    # controller (no remote call per request). "remote": one batched remote resolve per request.
    # "fixed": no controller at all, every request gets the fallback knobs (the overhead baseline).
    resolve_mode: Literal["local", "remote", "fixed"] = "local"
    timeout_s: float = Field(default=0.5, gt=0, le=60)
    feedback: FeedbackSettings = FeedbackSettings()
    # HMAC key file: when set, only versions signed with it (`lookupctl publish --sign-key-file`)
    # are served, so that write access to the store alone cannot change what is served.
    verify_key_file: str | None = None

    def user_config(self) -> dict[str, Any]:
        """The deployment's user_config: the fields the replica uses, the batch settings flat
        (`max_batch_size`, `batch_wait_timeout_s`: the form deploy files write)."""
        return self.model_dump(exclude={"batch", *_ROUTER_FIELDS}) | self.batch.model_dump()

    @classmethod
    def from_user_config(cls, user_config: Mapping[str, Any]) -> ControllerSettings:
        """Reads a user_config (from `user_config()` or a deploy file). The router's fields and a
        nested `batch` are unknown keys there, refused as such."""
        data = dict(user_config)
        unknown = [k for k in data if k == "batch" or k in _ROUTER_FIELDS]
        if unknown:
            raise ValidationError.from_exception_data(
                "LookupController user_config",
                [{"type": "extra_forbidden", "loc": (k,), "input": data[k]} for k in unknown],
            )
        batch = {k: data.pop(k) for k in BatchSettings.model_fields if k in data}
        return cls.model_validate({**data, "batch": batch})


# ControllerSettings fields that only the router reads: not part of the controller's user_config.
_ROUTER_FIELDS = ("resolve_mode", "timeout_s")


class KnobsModel(_Strict):
    tier: Literal["low", "medium", "high"]
    top_k: int = Field(ge=1)
    num_active_blocks: int = Field(ge=1)

    def to_knobs(self) -> Knobs:
        return Knobs(self.tier, self.top_k, self.num_active_blocks)


class FallbackSettings(_Strict):
    """Knobs the router uses when the controller does not answer within controller.timeout_s."""

    knobs: KnobsModel = KnobsModel(tier="low", top_k=4, num_active_blocks=12)
    expected_latency_ms: float | None = Field(default=None, ge=0)


class AttainmentScaling(_Strict):
    """Attainment-following autoscaling of MoEModel (serving.replica.attainment_scaling): Serve's
    `policy_kwargs`. Serve's own min_replicas / max_replicas and delays apply on top."""

    up_share: float = Field(default=0.05, gt=0, lt=1)
    down_share: float = Field(default=0.01, ge=0, lt=1)
    up_for_s: float = Field(default=10.0, ge=0, le=3600)
    down_for_s: float = Field(default=120.0, ge=0, le=86_400)
    # Fewer calls than this in the replicas' windows: no decision (a share of 3 calls is noise).
    min_calls: int = Field(default=20, ge=1, le=1_000_000)
    # How far back each replica counts its calls (record_autoscaling_stats).
    window_s: float = Field(default=30.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _check(self) -> AttainmentScaling:
        if self.down_share >= self.up_share:
            raise ValueError(
                f"model.autoscaling.attainment.down_share={self.down_share} must be below up_share={self.up_share} "
                "(the gap is the hysteresis); e.g. up_share: 0.05, down_share: 0.01"
            )
        return self


class RoutingSettings(_Strict):
    """Which MoEModel replica serves a call. "budget_aware": where its first token meets its budget,
    with knob affinity, least expected wait otherwise (serving.replica.budget_router). "default":
    Serve's own power of two choices on queue length."""

    policy: Literal["budget_aware", "default"] = "budget_aware"
    # How often Serve polls each replica's routing stats; reports older than stale_after_periods of
    # these are ignored (the router then routes as Serve does).
    stats_period_s: float = Field(default=0.5, gt=0, le=60)
    stale_after_periods: float = Field(default=4.0, ge=1, le=100)
    # Topology model_ingress: HAProxy asks a ReplicaChooser deployment which MoEModel replica takes
    # each POST (Serve's ingress request router), which runs this policy with the request's budget
    # (serving.ingress.replica_chooser). It costs a round trip to the chooser per request and pays
    # back only with two replicas or more; off: HAProxy picks (leastconn), no extra hop.
    ingress_chooser: bool = False

    @property
    def stale_after_s(self) -> float:
        return self.stats_period_s * self.stale_after_periods


class AutoscalingSettings(_Strict):
    """Serve autoscaling of MoEModel. Off (None in ModelSettings): a fixed replica count."""

    min_replicas: int = Field(default=1, ge=1, le=1024)
    max_replicas: int = Field(default=8, ge=1, le=1024)
    # "attainment": scale on the share of calls that cannot meet their budget (policy below);
    # "queue": Serve's default policy on ongoing requests per replica.
    policy: Literal["attainment", "queue"] = "attainment"
    target_ongoing_requests: float = Field(default=8.0, gt=0, le=10_000)
    upscale_delay_s: float = Field(default=0.0, ge=0, le=3600)
    downscale_delay_s: float = Field(default=0.0, ge=0, le=86_400)
    # Above Serve's metrics push interval (10 s by default), or Serve warns.
    look_back_period_s: float = Field(default=30.0, gt=10, le=3600)
    attainment: AttainmentScaling = AttainmentScaling()

    @model_validator(mode="after")
    def _check(self) -> AutoscalingSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"model.autoscaling.min_replicas={self.min_replicas} exceeds max_replicas={self.max_replicas}"
            )
        return self


class ModelSettings(_Strict):
    backend: Literal["simulated", "torch"] = "simulated"
    backend_options: dict[str, Any] = Field(default_factory=dict)
    batch: BatchSettings = BatchSettings(max_batch_size=8, batch_wait_timeout_s=0.005)
    max_new_tokens_limit: int = Field(default=512, ge=1)
    timeout_s: float = Field(default=60.0, gt=0)
    # How long a request waits for a model replica to take it. Past it: 503 model_unavailable at
    # once, rather than holding the client for timeout_s while a replica restarts.
    assign_timeout_s: float = Field(default=5.0, gt=0)
    # Order in which a replica's waiting requests enter its batches: "fifo" (arrival, Serve's own)
    # or "deadline" (earliest arrival + budget first: a tight budget overtakes a loose one that
    # has time to spare; serving.replica.deadline_gate).
    scheduling: Literal["fifo", "deadline"] = "fifo"
    # With scheduling: deadline and late binding: the expected deadline misses that one request's
    # backend call may cause among the requests arriving while it runs (serving.replica.dispatch
    # BlockingGuard); a longer config is passed over for a shorter one. None: no such limit.
    blocking_miss_budget: float | None = Field(default=None, gt=0, le=1)
    routing: RoutingSettings = RoutingSettings()
    autoscaling: AutoscalingSettings | None = None
    # The replica process's GIL switch interval (Python's default: 5 ms). With topology
    # model_ingress the HTTP doors run on the replica's event loop beside the engine's device
    # thread, and each time the loop wakes for I/O it waits up to one interval for the GIL while the
    # device thread runs Python. None: leave Python's default (on an H100, 0.5 ms made 8 clients'
    # overhead 59 ms p50 instead of 4: docs/serving.md).
    gil_switch_interval_ms: float | None = Field(default=None, ge=0.05, le=100, strict=True)
    # Late binding keeps the knob pair of a decode batch the device is running (or has work waiting
    # for) when one of that pair's options fits and another pair's best option is at most this much more accurate
    # (serving.replica.dispatch): a switch makes the running pair's newcomers wait for a drain and
    # the other batch's whole call. None: every option competes on accuracy alone.
    pair_switch_min_gain: float | None = Field(default=None, ge=0, le=1, strict=True)
    # A lone request that, once bound, would wait on the device for a running decode batch of
    # another knob pair to drain and then miss, runs an option of the running pair that still fits
    # instead (serving.replica.dispatch.rebind_while_waiting). False: it waits with its knobs.
    rebind_on_device: bool = Field(default=False, strict=True)


class LimitSettings(_Strict):
    """Request size limits; past them a 413 that names the limit (body read stops at the limit)."""

    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_prompt_chars: int = Field(default=100_000, ge=1)
    max_image_bytes: int = Field(default=6 * 1024 * 1024, ge=1)  # decoded, before base64


class AuthSettings(_Strict):
    """Optional API keys for every HTTP route but /healthz (docs/security.md). Off while
    api_keys_file is unset; the file (e.g. a mounted Secret) holds one key per line, and clients send
    `Authorization: Bearer <key>`."""

    api_keys_file: str | None = None


class ServingConfig(_Strict):
    # model_ingress: the model replica is the HTTP ingress and resolves budgets on its own table
    # copy (one hop from HAProxy to the model: serving.model_ingress). router: a Router deployment
    # in front calls MoEModel replicas through a handle, and Serve's request router picks the
    # replica per call (two hops; docs/architecture.md, "Serving path").
    topology: Literal["model_ingress", "router"] = "model_ingress"
    headers: HeaderNames = HeaderNames()
    budget: BudgetSettings = BudgetSettings(default_budget_ms=250.0)
    controller: ControllerSettings
    fallback: FallbackSettings = FallbackSettings()
    model: ModelSettings = ModelSettings()
    limits: LimitSettings = LimitSettings()
    auth: AuthSettings = AuthSettings()

    @model_validator(mode="after")
    def _check(self) -> ServingConfig:
        names = [self.headers.budget, self.headers.dataset, self.headers.tolerance, self.headers.policy]
        if len({n.lower() for n in names}) != len(names):
            raise ValueError(f"headers must be four different names, got {names}")
        r = self.model.routing
        if r.ingress_chooser and (self.topology != "model_ingress" or r.policy != "budget_aware"):
            raise ValueError(
                f"model.routing.ingress_chooser: true needs topology: model_ingress and model.routing.policy: "
                f"budget_aware (got {self.topology}, {r.policy}); with topology: router the Router's handle "
                "calls already go through the policy"
            )
        if self.budget.covers == "total" and self.controller.resolve_mode != "local":
            raise ValueError(
                "budget.covers: total needs controller.resolve_mode: local (whole-request budgets "
                "are resolved on the router's table copy)"
            )
        return self


def load_config(path: str | Path) -> ServingConfig:
    """Read a serving YAML; a bad value raises with the field that holds it."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"serving config {p} not found") from None
    if not isinstance(data, dict):
        raise ServingConfigError(f"serving config {p}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return ServingConfig.model_validate(data)
    except ValueError as e:
        raise ServingConfigError(f"serving config {p}: {e}") from e
