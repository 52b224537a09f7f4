"""A signed store on a real local Serve (issue 19 items 2 and 3): a replayed older signed id in
LATEST is refused, counted in /v1/stats, and the current version keeps serving with 0 failed
requests; `lookupctl rollback --sign-key-file` is the way back and is served; a forged live snapshot
run through `lookupctl recalibrate --sign-key-file` publishes nothing and changes no answer."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from ray import serve

from controller.live_files import LIVE_DIR
from controller.live_latency import ConfigLive, Observation, snapshot
from controller.store import LATEST, TableStore
from lookupctl import main
from serving.app import build_app_from_config
from serving.config import ServingConfig
from tests.support.load import LoadLoop
from tests.support.serve import run_routed
from tests.support.tables import synthetic_table
from tests.support.waiting import until

pytestmark = pytest.mark.serve
APP = "signed"
KEY = b"signed-store-key-0123456789abcdef"
BUDGETS = (60.0, 120.0, 400.0)


@pytest.fixture(scope="module")
def app(serve_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("signed")
    key_file = tmp / "sign.key"
    key_file.write_bytes(KEY)
    store_dir = tmp / "store"
    store = TableStore(str(store_dir))
    v1 = store.publish(synthetic_table(), sign_key=KEY).version_id
    v2 = store.publish(synthetic_table(latency_scale=0.5), sign_key=KEY).version_id
    config = ServingConfig.model_validate(
        {
            # No live feedback: the forged snapshot is then the only one in live/, as in the run
            # (the replicas' own signed snapshots: tests/controller/test_live_signing.py).
            "controller": {"store": str(store_dir), "poll_interval_s": 0.3, "verify_key_file": str(key_file),
                           "feedback": {"enabled": False}},
            "model": {"backend_options": {"latency_scale": 0.02}},
        }
    )
    run_routed(build_app_from_config(config), name=APP, route_prefix=f"/{APP}")
    base = f"http://127.0.0.1:{serve_port}/{APP}"
    with httpx.Client(base_url=base, timeout=30) as c:
        until(lambda: c.get("/v1/stats").json()["controller"]["table_version"] == v2, "v2 served")
        yield {"c": c, "base": base, "dir": store_dir, "key_file": key_file, "v1": v1, "v2": v2}
    serve.delete(APP)


def _controller(c: httpx.Client) -> dict[str, Any]:
    return dict(c.get("/v1/stats").json()["controller"])


def test_replayed_older_signed_version_is_refused_and_counted(app: dict[str, Any]) -> None:
    c, store_dir, v1, v2 = app["c"], app["dir"], app["v1"], app["v2"]
    before = _controller(c)["reloads_rejected"]
    with LoadLoop(f"{app['base']}/v1/generate", BUDGETS, concurrency=4) as load:
        (store_dir / LATEST).write_text(v1 + "\n")  # the replay
        ctl = until(
            lambda: (s := _controller(c))["reloads_rejected"] > before and s, "replay rejected and counted"
        )
        time.sleep(1.0)  # a few more polls: refused once, still serving v2
    assert ctl["last_rejection"]["version_id"] == v1 and "only move forward" in ctl["last_rejection"]["reason"]
    now = _controller(c)
    assert now["table_version"] == v2 and now["reloads_rejected"] == before + 1
    assert load.samples and all(s.status == 200 and s.table_version == v2 for s in load.samples)
    print(f"signed store: replay of {v1} refused and counted; {len(load.samples)} requests, 0 failed")
    # The sanctioned way back is served.
    assert main(["rollback", "--store", str(store_dir), "--to", v1, "--sign-key-file", str(app["key_file"])]) == 0
    until(lambda: _controller(c)["table_version"] == v1, "signed rollback served")


def test_a_forged_live_snapshot_is_not_signed_into_a_table(app: dict[str, Any],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    c, store_dir = app["c"], app["dir"]
    knobs_before = c.get("/v1/knobs", params={"budget_ms": 30}).json()
    latest = TableStore(str(store_dir)).latest_id()
    served = TableStore(str(store_dir), verify_key=KEY).load()
    now = time.time()
    # The attack of the issue: every config of the high tier at 1 ms, many samples, fresh, unsigned.
    live = {}
    for cfg in served.configs():
        entry = ConfigLive(0.01)
        for _ in range(200):
            ms = 1.0 if cfg.knobs.tier == "high" else cfg.latency_ms
            entry.add(Observation(cfg.knobs, ms, None, 1, 0.0, None))
        live[cfg.knobs] = entry
    forged = snapshot(live, replica="forged", window_s=60, start_unix=now - 60, end_unix=now,
                      relative_accuracy=0.01)
    (store_dir / LIVE_DIR).mkdir(exist_ok=True)
    (store_dir / LIVE_DIR / "forged.json").write_text(json.dumps(forged))
    code = main(["recalibrate", "--store", str(store_dir), "--sign-key-file", str(app["key_file"])])
    assert code == 2 and "forged.json: not signed" in capsys.readouterr().err
    assert TableStore(str(store_dir)).latest_id() == latest
    time.sleep(1.0)
    assert c.get("/v1/knobs", params={"budget_ms": 30}).json() == knobs_before
