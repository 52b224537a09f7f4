"""Knob-pair affinity on a real local Serve (`model.pair_switch_min_gain`): while the device runs a
decode batch of one (top_k, num_active_blocks) pair, late binding keeps that pair when another
pair's option would add little accuracy, since the engine runs one decode batch at a time and a
switch holds the running pair's newcomers for a drain and a whole call."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def app(serve_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    store = tmp_path_factory.mktemp("pair_store")
    TableStore(str(store)).publish(synthetic_table())
    config = ServingConfig.model_validate(
        {"budget": {"default_budget_ms": 300, "queue_aware": True},
         "controller": {"store": str(store)},
         "model": {"backend_options": {"latency_source": "table", "jitter_sigma": 0.0, "decode": "per_token"},
                   "pair_switch_min_gain": 0.03}}
    )
    run_routed(build_app_from_config(config), name="pairs", route_prefix="/pairs")
    yield {"model": serve.get_deployment_handle("MoEModel", "pairs"),
           "stats": f"http://127.0.0.1:{serve_port}/pairs/v1/stats"}
    serve.delete("pairs")


def _plan(high_8_14_accuracy: float) -> DispatchPlan:
    rows = [(Knobs("low", 4, 12), 14.0, 0.41), (Knobs("medium", 8, 16), 35.0, 0.703),
            (Knobs("high", 8, 14), 50.7, high_8_14_accuracy)]
    return DispatchPlan(tuple(PlanOption(k, ms, ms, 0.5, acc) for k, ms, acc in rows), 0.0)


def _beside_a_running_batch(model: Any, plan: DispatchPlan) -> tuple[Knobs, dict[str, int]]:
    """Run a request with `plan` and 2 s of budget while a (8, 16) stream decodes (~600 ms of steps
    left: high_8_14 fits after that drain); what ran, and the replica's dispatch counts."""
    stream = model.options(stream=True).generate_stream.remote(
        ModelCall(Knobs("medium", 8, 16), "long", max_new_tokens=150, expected_ms=5.0, decode_ms_per_token=4.0))
    try:
        first = next(iter(stream))  # its first token: the batch is running
        assert first.text
        result = model.generate.remote(ModelCall(Knobs("high", 8, 14), "tight", max_new_tokens=4, expected_ms=50.7,
                                                 decode_ms_per_token=0.5, budget_ms=2000.0, plan=plan)).result()
    finally:
        stream.cancel()
    return result.knobs, model.dispatch_stats.remote().result()


def test_a_small_gain_does_not_switch_the_running_pair(app: dict[str, Any]) -> None:
    model = app["model"]
    # high_8_14 (0.728) fits after the drain; medium_8_16 (0.703) of the running pair is 0.025 less.
    before = model.dispatch_stats.remote().result()["kept_pair"]
    ran, counts = _beside_a_running_batch(model, _plan(0.728))
    assert ran == Knobs("medium", 8, 16)
    assert counts["kept_pair"] == before + 1
    # /v1/stats shows the replica's late-binding counts too
    stats = httpx.get(app["stats"], timeout=10).json()
    assert stats["model"]["dispatch"]["kept_pair"] == before + 1
    assert stats["model"]["dispatch"]["pair_switch_min_gain"] == 0.03


def test_a_large_gain_switches_it(app: dict[str, Any]) -> None:
    model = app["model"]
    before = model.dispatch_stats.remote().result()["kept_pair"]
    ran, counts = _beside_a_running_batch(model, _plan(0.80))  # 0.097 more than medium_8_16
    assert ran == Knobs("high", 8, 14)
    assert counts["kept_pair"] == before
