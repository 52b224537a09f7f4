"""Typed app builder: `serve run serving.app:build_app config_path=...` or a Serve config file."""

import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator
from ray.serve import Application

from controller.store import REMOTE_SCHEMES, TableStore
from serving.config import ModelSettings, ServingConfig, load_config
from serving.ingress.replica_chooser import ReplicaChooser
from serving.ingress.router import Router
from serving.lookup.lookup_controller import LookupController
from serving.model_ingress import ModelIngress
from serving.replica.model import MoEModel

PROJECT_ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("ray.serve")


class AppArgs(BaseModel):
    """Exactly one of config_path / config. `store` overrides the config's store location;
    `bootstrap_results_dir` builds and publishes a first table when the store is empty (CPU demos)."""

    model_config = ConfigDict(extra="forbid")

    config_path: str | None = None
    config: ServingConfig | None = None
    store: str | None = None
    bootstrap_results_dir: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "AppArgs":
        if (self.config_path is None) == (self.config is None):
            raise ValueError("give exactly one of config_path (a YAML under configs/) or config (inline)")
        return self


def _project_path(p: str) -> Path:
    """Relative paths are tried from the working directory, then from the project root, so that a
    Serve config file works wherever `serve run` is started."""
    path = Path(p).expanduser()
    if path.is_absolute() or path.exists():
        return path.resolve()
    return PROJECT_ROOT / path


def config_from_args(args: AppArgs) -> ServingConfig:
    """The serving config the app runs: read (or inline), with `store` overridden and local store
    paths made absolute."""
    config = args.config if args.config is not None else load_config(_project_path(str(args.config_path)))
    store = args.store or config.controller.store
    if not store.startswith(REMOTE_SCHEMES):
        store = str(_project_path(store))
    controller = config.controller.model_copy(update={"store": store})
    return config.model_copy(update={"controller": controller})


def bootstrap_store(store: str, results_dir: str) -> str | None:
    """Publish a table built from `results_dir` if the store has none yet; returns its id."""
    if TableStore(store).latest_id() is not None:
        return None
    from controller import build_table_from_results

    table = build_table_from_results(str(_project_path(results_dir)), progress=False).table
    published = TableStore(store).publish(table)
    log.info("bootstrapped empty store %s with %s from %s", store, published.version_id, results_dir)
    return published.version_id


def build_app_from_config(
    config: ServingConfig,
    replicas: dict[str, int] | None = None,
    actor_options: dict[str, dict[str, Any]] | None = None,
) -> Application:
    """`replicas` ({"LookupController": 2, ...}) and `actor_options` ({"MoEModel": {"resources":
    {...}}}, merged into the deployment's ray_actor_options: placement on given nodes) are for tests
    and benchmarks; deploy files set them per deployment name instead."""
    n = replicas or {}
    opts = actor_options or {}

    def place(name: str, deployment: Any) -> Any:
        extra = opts.get(name)
        if not extra:
            return deployment
        return deployment.options(ray_actor_options={**(deployment.ray_actor_options or {}), **extra})

    c = config.controller
    if config.topology == "model_ingress":
        return _model_ingress_app(config, n, place)
    # The store too: a replica prepares (captures) the configs of the table being served.
    model = place("MoEModel", MoEModel).options(**model_options(config.model, n.get("MoEModel", 1))).bind(
        config.model.model_dump(), config.fallback.knobs.model_dump(), c.store, c.poll_interval_s
    )
    # user_config too, so that a deploy file can move the store or pin a version without a redeploy.
    # The model handle lets the controller refuse tables with configs the model cannot run.
    controller = place("LookupController", LookupController).options(
        user_config=c.user_config(), num_replicas=n.get("LookupController", 1)
    ).bind(
        c.user_config(), model
    )
    router = place("Router", Router).options(num_replicas=n.get("Router", 1))
    app: Application
    if c.resolve_mode == "fixed":  # the overhead baseline: no controller deployment at all
        app = router.bind(None, model, config.model_dump())
    else:
        app = router.bind(controller, model, config.model_dump())
    return app


def _model_ingress_app(config: ServingConfig, n: dict[str, int], place: Any) -> Application:
    """One hop: the MoEModel replicas are the HTTP ingress (serving.model_ingress). The controller
    finds them by name (they hold its handle, so it cannot be bound to theirs)."""
    c = config.controller
    controller = None
    if c.resolve_mode != "fixed":  # fixed: the overhead baseline, no controller deployment at all
        controller = place("LookupController", LookupController).options(
            user_config=c.user_config(), num_replicas=n.get("LookupController", 1)
        ).bind(c.user_config(), None, "MoEModel")
    # Without the chooser no request router of ours: HAProxy picks the ingress replica itself (Serve
    # refuses a custom request router on an ingress deployment behind HAProxy unless an ingress
    # request router asks it).
    chooser = config.model.routing.ingress_chooser
    options = model_options(config.model, n.get("MoEModel", 1), routed=chooser)
    model: Application = place("MoEModel", ModelIngress).options(**options).bind(
        config.model.model_dump(), config.fallback.knobs.model_dump(), c.store, c.poll_interval_s, controller,
        config.model_dump(),
    )
    if not chooser:
        return model
    # HAProxy asks the chooser which replica takes each POST (serving.ingress.replica_chooser); it
    # runs MoEModel's request router (budget-aware) on the replicas' reports.
    return model._with_ingress_request_router(  # internal in Ray 2.60 (docs/architecture.md)
        place("ReplicaChooser", ReplicaChooser).bind(model, controller, config.model_dump())
    )


# Import paths (Serve imports them in its controller and in every handle's router).
BUDGET_ROUTER = "serving.replica.budget_router:BudgetAwareRequestRouter"
ATTAINMENT_POLICY = "serving.replica.autoscaling:AttainmentPolicy"


def model_options(model: ModelSettings, replicas: int, routed: bool = True) -> dict[str, Any]:
    """MoEModel's deployment options: its request router (which replica takes a call; `routed` False:
    none, HAProxy picks) and either a fixed replica count or autoscaling (serving.replica.autoscaling
    for the attainment policy)."""
    from ray.serve.config import AutoscalingConfig, RequestRouterConfig

    r = model.routing
    routing: dict[str, Any] = {"request_routing_stats_period_s": r.stats_period_s}
    if r.policy == "budget_aware":
        routing |= {
            "request_router_class": BUDGET_ROUTER,
            "request_router_kwargs": {"stale_after_s": r.stale_after_s},
            # A replica busy on its device thread still answers within this; past it Serve keeps
            # the last stats (the router then ignores them once stale).
            "request_routing_stats_timeout_s": max(1.0, 2 * r.stats_period_s),
        }
    router = RequestRouterConfig.model_validate(routing)
    router_options: dict[str, Any] = {"request_router_config": router} if routed else {}
    a = model.autoscaling
    if a is None:
        return {"num_replicas": replicas, **router_options}
    scaling: dict[str, Any] = {
        "min_replicas": a.min_replicas, "max_replicas": a.max_replicas,
        "target_ongoing_requests": a.target_ongoing_requests,
        "upscale_delay_s": a.upscale_delay_s, "downscale_delay_s": a.downscale_delay_s,
        "look_back_period_s": a.look_back_period_s,
    }
    if a.policy == "attainment":
        scaling["policy"] = {"policy_function": ATTAINMENT_POLICY, "policy_kwargs": a.attainment.model_dump()}
    return {"autoscaling_config": AutoscalingConfig.model_validate(scaling), **router_options}


# No `from __future__ import annotations` in this module: Serve reads the builder's annotation at
# runtime to turn the `args` mapping of a config file into AppArgs.
def build_app(args: AppArgs) -> Application:
    config = config_from_args(args)
    if args.bootstrap_results_dir:
        bootstrap_store(config.controller.store, args.bootstrap_results_dir)
    return build_app_from_config(config)
