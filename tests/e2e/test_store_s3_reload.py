"""A real local Serve watching an s3:// store (moto's server over HTTP): publishes and a rollback are
hot-reloaded by every controller replica and the router under load, with zero failed requests."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from ray import serve

from controller.store import TableStore
from serving.app import build_app_from_config
from serving.config import ServingConfig
from tests.support.load import LoadLoop
from tests.support.reload import ReloadProbe
from tests.support.s3 import S3Server
from tests.support.serve import run_routed
from tests.support.tables import synthetic_table

pytestmark = pytest.mark.serve
POLL_S = 0.5
BUDGETS = (60.0, 95.0, 120.0, 170.0, 400.0)
CONTROLLERS = 2
DEPLOYMENTS = ("Router", "LookupController", "MoEModel")


@pytest.fixture(scope="module")
def app(serve_port: int, s3_server: S3Server) -> Iterator[ReloadProbe]:
    store = s3_server.new_bucket("serve-reload")
    config = ServingConfig.model_validate(
        {
            "controller": {"store": store, "poll_interval_s": POLL_S},
            "model": {"backend_options": {"latency_scale": 0.02}},
        }
    )
    # The endpoint and credentials reach the replicas as a deployment gives them: environment
    # variables that botocore reads (a deploy file's runtime_env.env_vars, or the pods' env).
    env = {name: {"runtime_env": {"env_vars": s3_server.env}} for name in DEPLOYMENTS}
    first = TableStore(store).publish(synthetic_table())
    run_routed(build_app_from_config(config, {"LookupController": CONTROLLERS}, env), name="s3reload",
              route_prefix="/s3reload")
    probe = ReloadProbe(f"http://127.0.0.1:{serve_port}/s3reload", store, "s3reload", CONTROLLERS)
    probe.tables[first.version_id] = first
    yield probe
    probe.http.close()
    serve.delete("s3reload")


def test_publishes_and_a_rollback_are_served_from_s3(app: ReloadProbe) -> None:
    first = next(iter(app.tables.values()))
    app.wait_all_serving(first.version_id, 2 * POLL_S)
    with LoadLoop(f"{app.base}/v1/generate", BUDGETS, concurrency=4) as load:
        time.sleep(0.3)
        for i in range(3):
            published = app.publish(synthetic_table(latency_scale=0.6 if i % 2 == 0 else 1.3))
            app.wait_all_serving(published.version_id, 4 * POLL_S)
        # Back to the first version: a rollback writes its record, so the replicas follow it.
        app.store.rollback(first.version_id)
        app.wait_all_serving(first.version_id, 4 * POLL_S)
        time.sleep(0.3)
    assert load.samples, "the load loop sent nothing"
    failed = [s for s in load.samples if s.status != 200]
    assert not failed, f"{len(failed)} failed requests, first: {failed[0]}"
    for s in load.samples:
        assert s.fallback is False and s.table_version in app.tables, s
        assert s.knobs == app.tables[s.table_version].resolve(s.budget_ms).knobs.as_dict(), s
    assert len({s.table_version for s in load.samples}) >= 4
    print(f"s3 store: {len(load.samples)} requests over 4 versions and a rollback, 0 failed")
