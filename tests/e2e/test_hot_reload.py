"""Hot reload under load on a real local Serve: new versions take over with zero failed requests,
and bad versions are refused while the old one keeps serving."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from ray import serve

from controller.store import LATEST, TableStore
from serving.app import build_app_from_config
from serving.config import ServingConfig
from tests.support.load import LoadLoop
from tests.support.reload import ReloadProbe
from tests.support.serve import run_routed
from tests.support.tables import synthetic_table

pytestmark = pytest.mark.serve
POLL_S = 1.0
BUDGETS = (60.0, 95.0, 120.0, 170.0, 400.0)
CONTROLLERS = 2


@pytest.fixture(scope="module")
def app(serve_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReloadProbe]:
    store = tmp_path_factory.mktemp("store")
    first = TableStore(str(store)).publish(synthetic_table())
    config = ServingConfig.model_validate(
        {
            "controller": {"store": str(store), "poll_interval_s": POLL_S},
            "model": {"backend_options": {"latency_scale": 0.02}},
        }
    )
    run_routed(build_app_from_config(config, {"LookupController": CONTROLLERS}), name="reload", route_prefix="/reload")
    a = ReloadProbe(f"http://127.0.0.1:{serve_port}/reload", str(store), "reload", CONTROLLERS)
    a.tables[first.version_id] = first
    yield a
    a.http.close()
    serve.delete("reload")


def _check_samples(app: ReloadProbe, load: LoadLoop) -> None:
    assert load.samples, "the load loop sent nothing"
    failed = [s for s in load.samples if s.status != 200]
    assert not failed, f"{len(failed)} failed requests, first: {failed[0]}"
    for s in load.samples:
        assert s.fallback is False and s.table_version in app.tables, s
        expected = app.tables[s.table_version].resolve(s.budget_ms).knobs.as_dict()
        assert s.knobs == expected, (s, expected)


def test_ten_publishes_under_load(app: ReloadProbe) -> None:
    published_versions: list[tuple[str, dict[str, dict[str, Any]]]] = []
    with LoadLoop(f"{app.base}/v1/generate", BUDGETS, concurrency=8) as load:
        time.sleep(0.5)
        for i in range(10):
            # Alternate faster and slower tables so that versions pick different knobs for a budget.
            published = app.publish(synthetic_table(latency_scale=0.6 if i % 2 == 0 else 1.3))
            controllers = app.wait_all_serving(published.version_id, 2 * POLL_S)
            published_versions.append((published.version_id, controllers))
        time.sleep(0.3)
    lags = [app.lags(v, ctl, load) for v, ctl in published_versions]
    worst = {part: max(lag[part] for lag in lags) for part in lags[0]}
    print(f"publish -> serving, worst of 10 per replica (s): {worst}; {len(load.samples)} requests")
    assert max(worst.values()) <= 2 * POLL_S, lags
    _check_samples(app, load)
    versions_seen = {s.table_version for s in load.samples}
    assert len(versions_seen) >= 5  # requests really were served by many versions


def _point_latest_at(app: ReloadProbe, version_id: str, data: bytes) -> None:
    """A bad file reaching the store around `lookupctl publish` (a manual copy, a torn upload)."""
    (app.store_dir / "versions" / f"{version_id}.json").write_bytes(data)
    tmp = app.store_dir / ".LATEST.tmp"
    tmp.write_text(version_id + "\n")
    tmp.replace(app.store_dir / LATEST)


def test_corrupt_and_truncated_tables_are_rejected_while_old_keeps_serving(app: ReloadProbe) -> None:
    good = app.publish(synthetic_table(latency_scale=0.9))
    app.wait_all_serving(good.version_id, 2 * POLL_S)
    data = good.to_json_bytes()
    bad = {
        "29990101T000000000001Z-truncated": data[: len(data) // 2],
        "29990101T000000000002Z-corrupt": data.replace(b'"accuracy": 0.', b'"accuracy": 1.', 1),
    }
    with LoadLoop(f"{app.base}/v1/generate", BUDGETS, concurrency=6) as load:
        for vid, payload in bad.items():
            _point_latest_at(app, vid, payload)
            deadline = time.monotonic() + 2 * POLL_S + 5
            while time.monotonic() < deadline:
                statuses = app.controller_versions().values()
                if all((s["last_rejection"] or {}).get("version_id") == vid for s in statuses):
                    break
                time.sleep(0.1)
            for s in app.controller_versions().values():
                assert s["table_version"] == good.version_id
                assert s["last_rejection"]["version_id"] == vid and s["last_rejection"]["reason"]
            table_info = app.http.get("/v1/table").json()
            assert table_info["table_version"] == good.version_id
            assert table_info["controller"]["last_rejection"]["version_id"] == vid
        status = serve.status().applications["reload"]
        assert status.status == "RUNNING"
        assert status.deployments["LookupController"].status == "HEALTHY"
        stats = app.http.get("/v1/stats").json()["controller"]  # whichever replica answers
        assert stats["reloads_rejected"] == len(bad) and stats["table_version"] == good.version_id
        # Recovery: the next good publish is taken.
        newer = app.publish(synthetic_table(latency_scale=1.1))
        app.wait_all_serving(newer.version_id, 2 * POLL_S)
    _check_samples(app, load)
    assert {s.table_version for s in load.samples} <= {good.version_id, newer.version_id}
