"""A controller replica killed under load: no 5xx, answers fall back or go to the survivor, and
Serve replaces the replica. The router resolves remotely here, so the controller is on the path."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import ray
from ray import serve

from controller.store import TableStore
from serving.app import build_app_from_config
from serving.config import ServingConfig
from tests.support.load import LoadLoop
from tests.support.serve import run_routed
from tests.support.tables import synthetic_table

pytestmark = pytest.mark.serve
APP = "failover"


def _controller_actors() -> set[str]:
    return {
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_REPLICA::") and f"{APP}#LookupController#" in a["name"]
    }


@pytest.fixture(scope="module")
def base(serve_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = str(tmp_path_factory.mktemp("store"))
    TableStore(store).publish(synthetic_table())
    config = ServingConfig.model_validate(
        {
            "controller": {"store": store, "poll_interval_s": 1.0, "resolve_mode": "remote", "timeout_s": 0.3},
            "model": {"backend_options": {"latency_scale": 0.02}},
        }
    )
    run_routed(build_app_from_config(config, {"LookupController": 2}), name=APP, route_prefix=f"/{APP}")
    yield f"http://127.0.0.1:{serve_port}/{APP}"
    serve.delete(APP)


def test_killed_controller_replica_under_load(base: str) -> None:
    before = _controller_actors()
    assert len(before) == 2
    victim = sorted(before)[0]
    with LoadLoop(f"{base}/v1/generate", (80.0, 120.0, 400.0), concurrency=8) as load:
        time.sleep(1.0)
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        killed_at = time.perf_counter()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = _controller_actors()
            states = serve.status().applications[APP].deployments["LookupController"].replica_states
            if victim not in now and len(now) == 2 and states.get("RUNNING") == 2:
                break
            time.sleep(0.25)
        else:
            raise AssertionError(f"Serve did not replace {victim}: {_controller_actors()}")
        time.sleep(1.0)
    samples = load.samples
    assert samples
    server_errors = [s for s in samples if s.status >= 500 or s.status == 0]
    assert not server_errors, f"{len(server_errors)} failed, first {server_errors[0]}"
    assert all(s.status == 200 for s in samples)
    after_kill = [s for s in samples if s.started >= killed_at]
    assert after_kill and all(s.fallback is True or s.table_version for s in after_kill)
    fallbacks = sum(1 for s in samples if s.fallback)
    print(f"{len(samples)} requests, {fallbacks} fallback, {len(after_kill)} after the kill")
