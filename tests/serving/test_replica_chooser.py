"""serving.ingress.replica_chooser on plain values: the budget it places a request by, when it is
wired into the app, and the query MoEModel's request router reads. Over HTTP on a real Serve:
tests/e2e/test_replica_choice.py."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from controller.knobs import Knobs
from serving.app import BUDGET_ROUTER, build_app_from_config
from serving.config import ServingConfig
from serving.fast_path import FAST_PATH_ENV
from serving.ingress.replica_chooser import FORWARDED_HEADER_ENV, budget_of, forwarded_header
from serving.replica.placement import CallView
from serving.wire import ReplicaQuery


def _config(**routing: Any) -> ServingConfig:
    return ServingConfig.model_validate({
        "budget": {"default_budget_ms": 250, "proxy_overhead_ms": 2},
        "controller": {"store": "/nonexistent/store"},
        "model": {"routing": routing},
    })


@pytest.mark.parametrize(("raw", "expected"), [
    (None, 248.0), ("", 248.0), ("  ", 248.0), ("180", 178.0), (" 180 ", 178.0), ("1", 0.0), ("1e-300", 0.0),
])
def test_the_budget_is_the_doors_less_the_allowance_outside_the_replica(raw: str | None, expected: float) -> None:
    assert budget_of(raw, _config()) == expected


@pytest.mark.parametrize("raw", [
    "NaN", "nan", "inf", "-inf", "Infinity", "1e309", "-1", "0", "abc", "1_000", "0x10", "100, 200",
    "\u00e9\u00e9", "\u0663", "\ufffd", "9" * 5000, "60001",
])
def test_a_budget_the_doors_refuse_places_the_request_without_one(raw: str) -> None:
    assert budget_of(raw, _config()) is None


def test_a_required_budget_that_is_missing_places_without_one() -> None:
    config = ServingConfig.model_validate({"budget": {"require_budget": True}, "controller": {"store": "/x"}})
    assert budget_of(None, config) is None


def test_the_query_is_what_the_request_router_reads() -> None:
    assert CallView.of(ReplicaQuery(Knobs("high", 8, 16), 89.0, 120.0)) == CallView("high_8_16", 89.0, 120.0)
    assert CallView.of(ReplicaQuery(None, None, None)) is None  # placed by expected wait alone


def test_the_chooser_is_wired_only_when_asked() -> None:
    plain = build_app_from_config(_config())
    assert plain._ingress_request_router is None
    # HAProxy picks (Serve refuses a custom request router on its ingress without a chooser)
    assert plain._bound_deployment._deployment_config.request_router_config.is_default_request_router()
    app = build_app_from_config(_config(ingress_chooser=True))
    chooser = app._ingress_request_router
    assert chooser is not None and chooser._bound_deployment.name == "ReplicaChooser"
    assert chooser._bound_deployment.ray_actor_options["num_cpus"] == 0
    router = app._bound_deployment._deployment_config.request_router_config
    assert router.request_router_class == BUDGET_ROUTER


@pytest.mark.parametrize(("update", "got"), [
    ({"topology": "router"}, "got router, budget_aware"),
    ({"model": {"routing": {"ingress_chooser": True, "policy": "default"}}}, "got model_ingress, default"),
])
def test_the_chooser_needs_model_ingress_and_the_budget_aware_policy(update: dict[str, Any], got: str) -> None:
    data: dict[str, Any] = {"controller": {"store": "/x"}, "model": {"routing": {"ingress_chooser": True}}} | update
    with pytest.raises(ValidationError, match=f"ingress_chooser: true needs .*{got}"):
        ServingConfig.model_validate(data)


def test_the_fast_path_forwards_the_budget_header(monkeypatch: pytest.MonkeyPatch) -> None:
    assert FAST_PATH_ENV[FORWARDED_HEADER_ENV] == _config().headers.budget.lower()
    monkeypatch.setenv(FORWARDED_HEADER_ENV, "X-Latency-Budget-Ms")
    assert forwarded_header() == "x-latency-budget-ms"
    monkeypatch.delenv(FORWARDED_HEADER_ENV)
    assert forwarded_header() == "x-session-id"  # Serve's own default
