"""The generation engine inside the real app (local Serve over HTTP, tiny torch MoE on the CPU):
the served table's configs are prepared at replica start and after a publish, its report reaches
/v1/stats, too many tokens is a 413 naming the limit, and configs a replica disabled are never
chosen by the router."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ray import serve

from controller import Table
from controller.store import TableStore
from serving.app import build_app_from_config
from serving.config import ServingConfig
from tests.support.serve import run_routed
from tests.support.tables import synthetic_table
from tests.support.waiting import until

pytestmark = pytest.mark.serve
POLL_S = 0.3




class EngineApp:
    def __init__(self, base: str, store: Path, first: Table) -> None:
        self.store, self.first = TableStore(str(store)), first
        self.http = httpx.Client(base_url=base, timeout=60)

    def engine(self) -> dict[str, Any]:
        return dict(self.http.get("/v1/stats").json()["model"])

    def generate(self, prompt: str = "what is shown?", budget: float = 400.0, **body: Any) -> httpx.Response:
        return self.http.post(
            "/v1/generate", json={"prompt": prompt, **body}, headers={"X-Latency-Budget-Ms": str(budget)}
        )


@pytest.fixture(scope="module")
def app(serve_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineApp]:
    store = tmp_path_factory.mktemp("engine_store")
    first = TableStore(str(store)).publish(synthetic_table(grid=(("low", "medium"), (4, 8), (12, 16))))
    options = {"preset": "tiny", "device": "cpu", "max_prompt_tokens": 1536, "max_new_tokens": 16,
               "decode_buckets": [1, 2], "warmup": False}
    config = ServingConfig.model_validate(
        {
            "controller": {"store": str(store), "poll_interval_s": POLL_S},
            "model": {"backend": "torch", "backend_options": options, "max_new_tokens_limit": 64,
                      "assign_timeout_s": 30, "timeout_s": 60},
        }
    )
    run_routed(build_app_from_config(config), name="engine", route_prefix="/engine")
    a = EngineApp(f"http://127.0.0.1:{serve_port}/engine", store, first)
    yield a
    a.http.close()
    serve.delete("engine")


def test_table_configs_are_prepared_at_start_and_reported(app: EngineApp) -> None:
    engine = app.engine()
    assert engine["engine"]["mode"] == "eager"  # CPU: the same steps, no capture
    assert sorted(map(tuple, engine["engine"]["pairs"])) == [(4, 12), (4, 16), (8, 12), (8, 16)]
    assert engine["engine"]["disabled"] == {} and engine["engine"]["kv_cache_mib"] > 0
    assert "capture_seconds" in engine["engine"] and "graph_memory_mib" in engine["engine"]
    assert engine["prep"]["prepared_version"] == app.first.version_id
    r = app.generate(max_new_tokens=3)
    assert r.status_code == 200, r.text
    assert r.json()["output"]["output_tokens"] == 3


def test_too_many_tokens_is_a_413_naming_the_limit(app: EngineApp) -> None:
    r = app.generate(prompt="x" * 1500)
    assert r.status_code == 413, r.text
    err = r.json()["error"]
    assert err["type"] == "input_too_long" and "limit of 1536" in err["message"]
    r = app.generate(max_new_tokens=40)  # under the router's 64, over the engine's 16
    assert r.status_code == 413 and "max_new_tokens=40" in r.json()["error"]["message"]
    assert app.generate(max_new_tokens=2).status_code == 200  # the replica is fine


def test_a_publish_with_new_configs_is_prepared_off_the_request_path(app: EngineApp) -> None:
    new = app.store.publish(synthetic_table(grid=(("low", "medium"), (2, 4), (13, 16))))
    prepared = until(lambda: app.engine()["prep"]["prepared_version"] == new.version_id and app.engine(),
                     "the replica prepares the new version")
    pairs = {tuple(p) for p in prepared["engine"]["pairs"]}
    assert {(2, 13), (2, 16), (4, 13)} <= pairs
    until(lambda: app.generate(budget=10_000).headers.get("x-table-version") == new.version_id,
          "the router serves the new version")
    assert app.generate(budget=10_000, max_new_tokens=2).status_code == 200


def test_a_table_with_a_tier_too_large_for_the_engine_is_refused(app: EngineApp) -> None:
    # max_prompt_tokens 1536 cannot hold a high-tier image (up to 2,304 tokens): refused, counted.
    before = app.http.get("/v1/stats").json()["controller"]["reloads_rejected"]
    bad = app.store.publish(synthetic_table(grid=(("low", "high"), (4,), (12, 16))))
    until(lambda: app.http.get("/v1/stats").json()["controller"]["reloads_rejected"] > before,
          "the controller rejects the version")
    assert app.generate(max_new_tokens=2).headers["x-table-version"] != bad.version_id


@pytest.fixture(scope="module")
def disabled_app(serve_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    store = tmp_path_factory.mktemp("disabled_store")
    TableStore(str(store)).publish(synthetic_table())
    config = ServingConfig.model_validate(
        {
            "controller": {"store": str(store), "poll_interval_s": POLL_S},
            # high_8_16 is the table's most accurate config: every large budget would choose it.
            "model": {"backend_options": {"latency_scale": 0.01, "disabled_configs": ["high_8_16", "high_8_14"]}},
        }
    )
    run_routed(build_app_from_config(config), name="disabled", route_prefix="/disabled")
    with httpx.Client(base_url=f"http://127.0.0.1:{serve_port}/disabled", timeout=30) as c:
        yield c
    serve.delete("disabled")


def test_the_router_never_chooses_a_config_the_model_disabled(disabled_app: httpx.Client) -> None:
    def choices() -> set[str]:
        got = set()
        for budget in (30, 80, 120, 160, 200, 300, 1000, 60_000):
            r = disabled_app.get("/v1/knobs", params={"budget_ms": budget})
            assert r.status_code == 200, r.text
            k = r.json()["knobs"]
            got.add(f"{k['tier']}_{k['top_k']}_{k['num_active_blocks']}")
        return got

    chosen = until(lambda: (c := choices()) and not c & {"high_8_16", "high_8_14"} and c,
                   "the filtered table reaches the router")
    assert "high_8_12" in chosen  # the most accurate config left (ties go to the faster one)
    assert not chosen & {"high_8_16", "high_8_14"}
    for _ in range(10):
        r = disabled_app.post("/v1/generate", json={"prompt": "hi"}, headers={"X-Latency-Budget-Ms": "60000"})
        assert r.status_code == 200, r.text
        knobs = (r.headers["x-knob-tier"], r.headers["x-knob-top-k"], r.headers["x-knob-active-blocks"])
        assert knobs == ("high", "8", "12")
