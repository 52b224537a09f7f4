"""Late binding on a real local Serve: the model replica chooses a request's knobs again when the
request leaves its queue, from the rungs the router sent, for the time it really has left."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from ray import serve

from controller.knobs import Knobs
from controller.store import TableStore
from serving.app import build_app_from_config
from serving.config import ServingConfig
from serving.wire import DispatchPlan, ModelCall, PlanOption
from tests.support.serve import run_routed
from tests.support.tables import synthetic_table

pytestmark = pytest.mark.serve
SLOWEST = {"tier": "high", "top_k": 8, "num_active_blocks": 16}  # 177 ms in synthetic_table()
FASTEST = {"tier": "low", "top_k": 4, "num_active_blocks": 12}  # 85 ms


@pytest.fixture(scope="module")
def app(serve_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    store = tmp_path_factory.mktemp("late_store")
    TableStore(str(store)).publish(synthetic_table())
    config = ServingConfig.model_validate(
        {"budget": {"default_budget_ms": 300, "queue_aware": True},
         "controller": {"store": str(store)},
         "model": {"backend_options": {"latency_source": "table", "jitter_sigma": 0.0},
                   "scheduling": "deadline", "blocking_miss_budget": 0.01,
                   "batch": {"max_batch_size": 1, "batch_wait_timeout_s": 0}}}
    )
    run_routed(build_app_from_config(config), name="late", route_prefix="/late")
    yield {"url": f"http://127.0.0.1:{serve_port}/late", "model": serve.get_deployment_handle("MoEModel", "late")}
    serve.delete("late")


def _occupy(model: Any, ms: float) -> Any:
    """A call the router does not know of: the replica is busy for `ms` (its queue, not the router's)."""
    return model.generate.remote(ModelCall(Knobs.from_mapping(SLOWEST), "busy", 1, expected_ms=ms))


def test_a_request_that_waited_is_rebound_to_what_its_time_left_allows(app: dict[str, Any]) -> None:
    with httpx.Client(base_url=app["url"], timeout=60) as c:
        # Unloaded, 600 ms buys the slowest config: the router's choice for this budget.
        assert c.get("/v1/knobs", params={"budget_ms": "600"}).json()["knobs"] == SLOWEST
        busy = _occupy(app["model"], 1500.0)
        time.sleep(0.2)  # the replica is busy (setup, not a timing assertion)
        r = c.post("/v1/generate", json={"prompt": "hi", "max_new_tokens": 1}, headers={"X-Latency-Budget-Ms": "600"})
        busy.result()
    assert r.status_code == 200, r.text
    body = r.json()
    out = body["output"]
    # It waited ~1.3 s for the call ahead of it: no option fits what is left, so the fastest runs.
    assert out["dispatch"]["left_ms"] < 85 and out["dispatch"] == {**out["dispatch"], "option": 0, "fits": False}
    assert out["batch_knobs"] == FASTEST == body["knobs"]
    assert body["knobs_bound_at"] == "replica" and body["feasible"] is False
    # What ran is what the headers say.
    knob_headers = ("X-Knob-Tier", "X-Knob-Top-K", "X-Knob-Active-Blocks")
    assert tuple(r.headers[h] for h in knob_headers) == ("low", "4", "12")
    assert r.headers["X-Budget-Feasible"] == "false"


def test_an_unloaded_request_keeps_the_best_option_of_its_budget(app: dict[str, Any]) -> None:
    with httpx.Client(base_url=app["url"], timeout=60) as c:
        r = c.post("/v1/generate", json={"prompt": "hi", "max_new_tokens": 1}, headers={"X-Latency-Budget-Ms": "600"})
    body = r.json()
    assert r.status_code == 200 and body["knobs"] == SLOWEST and body["output"]["dispatch"]["fits"] is True


def _unpickled_knobs(tier: str) -> Knobs:
    """Knobs as an unpickled object can arrive: __post_init__ never ran."""
    k = object.__new__(Knobs)
    for name, value in (("tier", tier), ("top_k", 4), ("num_active_blocks", 12)):
        object.__setattr__(k, name, value)
    return k


@pytest.mark.parametrize("plan", [
    DispatchPlan("junk", 0.0),  # type: ignore[arg-type]
    DispatchPlan((PlanOption(Knobs("low", 4, 12), float("nan"), 1.0, None),), 0.0),
    DispatchPlan((PlanOption(_unpickled_knobs("nope"), 1.0, 1.0, None),), 0.0),
    "x", 7,
])
def test_a_malformed_plan_is_ignored_and_the_given_knobs_run(app: dict[str, Any], plan: object) -> None:
    before = app["model"].dispatch_stats.remote().result()["bad_plans"]
    call = ModelCall(Knobs.from_mapping(SLOWEST), "x", 1, expected_ms=10.0, budget_ms=1000.0, plan=plan)  # type: ignore[arg-type]
    out = app["model"].generate.remote(call).result()
    assert out.knobs.as_dict() == SLOWEST and out.dispatch is None
    assert app["model"].dispatch_stats.remote().result()["bad_plans"] == before + 1
