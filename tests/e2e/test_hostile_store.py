"""A hostile store on a real local Serve: tables the model cannot run, FIFOs, bad LATEST pointers, a
vanished store. Each case is rejected and counted, serving continues with 0 failed requests, and
killed replicas come back. Tests run in file order: the last one removes the store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from ray import serve

from controller import Table
from controller.errors import KnobError
from controller.knobs import TIERS
from controller.store import LATEST, TableStore
from serving.app import build_app_from_config
from serving.config import ServingConfig
from serving.errors import ModelCallError
from serving.ingress.model_call import describe_failure
from serving.wire import ModelCall
from tests.support.load import LoadLoop
from tests.support.serve import run_routed
from tests.support.tables import synthetic_table
from tests.support.waiting import until

pytestmark = pytest.mark.serve
APP = "hostile"
POLL_S = 0.3
ROOT = Path(__file__).resolve().parents[2]
BUDGETS = (60.0, 120.0, 400.0)


class App:
    def __init__(self, base: str, store: Path, first: Table) -> None:
        self.base, self.store_dir, self.first = base, store, first
        self.store = TableStore(str(store))
        self.http = httpx.Client(base_url=base, timeout=30)
        self.controller = serve.get_deployment_handle("LookupController", app_name=APP)
        self.model = serve.get_deployment_handle("MoEModel", app_name=APP)

    def controller_status(self) -> dict[str, Any]:
        return dict(self.controller.status.remote().result(timeout_s=30))

    def stats(self) -> dict[str, Any]:
        return dict(self.http.get("/v1/stats").json())

    def generate(self, budget: float = 120.0) -> httpx.Response:
        return self.http.post("/v1/generate", json={"prompt": "hi"}, headers={"X-Latency-Budget-Ms": str(budget)})




def _replicas(deployment: str) -> list[str]:
    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_REPLICA::") and f"{APP}#{deployment}#" in a["name"]
    )


def _kill(deployment: str) -> str:
    victim = _replicas(deployment)[0]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    return victim


def _no_failures(load: LoadLoop) -> None:
    assert load.samples, "the load loop sent nothing"
    failed = [s for s in load.samples if s.status != 200]
    assert not failed, f"{len(failed)} of {len(load.samples)} failed, first: {failed[0]}"


@pytest.fixture(scope="module")
def app(serve_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    store = tmp_path_factory.mktemp("hostile_store")
    first = TableStore(str(store)).publish(synthetic_table())
    config = ServingConfig.model_validate(
        {
            # The Router in front: while the only model replica restarts, clients get labelled 503s
            # from it (with topology model_ingress the replica is the ingress and its restart drops
            # its connections; docs/architecture.md, "Serving path").
            "topology": "router",
            "controller": {"store": str(store), "poll_interval_s": POLL_S},
            "model": {"backend_options": {"latency_scale": 0.02}, "assign_timeout_s": 1.0, "timeout_s": 30},
        }
    )
    run_routed(build_app_from_config(config), name=APP, route_prefix=f"/{APP}")
    a = App(f"http://127.0.0.1:{serve_port}/{APP}", store, first)
    yield a
    a.http.close()
    serve.delete(APP)


def test_table_with_configs_the_model_cannot_run_is_rejected(app: App) -> None:
    # Checksum-valid (published through the store), but 17 active blocks on a 16-block model.
    bad = app.store.publish(synthetic_table(grid=(TIERS, (4, 8), (12, 17))))
    with LoadLoop(f"{app.base}/v1/generate", BUDGETS, concurrency=4) as load:
        status = until(
            lambda: (
                (s := app.controller_status())["last_rejection"]
                and s["last_rejection"]["version_id"] == bad.version_id
                and s
            ),
            "controller rejects the unsupported table",
        )
        assert "num_active_blocks=17" in status["last_rejection"]["reason"]
        assert status["table_version"] == app.first.version_id
        # While it is LATEST, a killed model replica comes back (it does not read the store).
        victim = _kill("MoEModel")
        until(lambda: victim not in _replicas("MoEModel") and _replicas("MoEModel"), "model replica replaced")
        until(lambda: app.generate().status_code == 200, "served again after the model restart")
    ok = [s for s in load.samples if s.status == 200]
    assert ok and all(s.table_version == app.first.version_id for s in ok)
    # During the restart only labelled 503s (no replica took the request in time), never a 500.
    others = [s for s in load.samples if s.status != 200]
    assert all(s.status == 503 for s in others), others[:3]
    stats = app.stats()
    assert stats["controller"]["reloads_rejected"] >= 1
    assert set(stats["router"]["model_errors"]) <= set(ModelCallError.KINDS)
    print(
        f"hostile store: unsupported config rejected and counted; {len(ok)} x 200, {len(others)} x 503 during restart"
    )


def test_replica_errors_arrive_typed_and_readable(app: App) -> None:
    with pytest.raises(Exception) as info:
        call = ModelCall({"tier": "low", "top_k": 65, "num_active_blocks": 12}, "x")  # type: ignore[arg-type]
        app.model.generate.remote(call).result(timeout_s=30)
    assert isinstance(info.value, KnobError), type(info.value)  # not UnserializableException
    assert "top_k=65" in str(info.value)
    failure = describe_failure(info.value)
    assert failure.kind == "unsupported_config" and "top_k=65" in failure.message


def test_fifo_version_file_is_rejected_and_reload_goes_on(app: App) -> None:
    fifo_id = "29990101T000000000000Z-fifo0000"
    os.mkfifo(app.store_dir / "versions" / f"{fifo_id}.json")
    (app.store_dir / LATEST).write_text(fifo_id + "\n")
    before = app.controller_status()["reloads_rejected"]
    until(lambda: app.controller_status()["reloads_rejected"] > before, "FIFO version rejected")
    status = app.controller_status()
    assert status["last_rejection"]["version_id"] == fifo_id
    assert "not a regular file" in status["last_rejection"]["reason"]
    # `lookupctl versions` answers (it used to block on the FIFO) and lists it as invalid.
    out = subprocess.run(
        # --check: versions parses only on demand (issue 19 item 7)
        [sys.executable, "-m", "lookupctl", "versions", "--store", str(app.store_dir), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,  # the checkout's own packages, whatever the installed copy is doing meanwhile
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    assert fifo_id in out.stdout and "INVALID" in out.stdout
    # A later good publish is served.
    good = app.store.publish(synthetic_table(latency_scale=0.8))
    until(lambda: app.http.get("/v1/table").json()["table_version"] == good.version_id, "good publish served")
    print("hostile store: FIFO version rejected and counted; lookupctl versions answered; next publish served")


@pytest.mark.parametrize(
    "pointer",
    [b"../../../etc/passwd", b"20990101T000000000000Z\x00-nul", bytes(range(256)), b"versions/x", b"a" * 5000],
    ids=["traversal", "nul", "binary", "slash", "long"],
)
def test_bad_latest_is_a_counted_rejection_and_serving_is_untouched(app: App, pointer: bytes) -> None:
    serving = app.http.get("/v1/table").json()["table_version"]
    before = app.stats()["controller"]["reloads_rejected"]
    with LoadLoop(f"{app.base}/v1/generate", BUDGETS, concurrency=4) as load:
        (app.store_dir / LATEST).write_bytes(pointer)
        until(lambda: app.stats()["controller"]["reloads_rejected"] > before, "bad LATEST counted")
        stats = app.stats()
        assert stats["controller"]["last_rejection"]["version_id"] == "LATEST"
        assert stats["table_version"] == serving
    _no_failures(load)
    print(f"hostile store: LATEST={pointer[:20]!r} rejected and counted; {len(load.samples)} requests, 0 failed")


def test_restarted_controller_with_bad_latest_serves_the_newest_valid_version(app: App) -> None:
    (app.store_dir / LATEST).write_bytes(b"../../../etc/passwd")
    serving = app.http.get("/v1/table").json()["table_version"]
    victim = _kill("LookupController")
    until(lambda: victim not in _replicas("LookupController") and _replicas("LookupController"), "replaced")
    until(
        lambda: serve.status().applications[APP].deployments["LookupController"].status == "HEALTHY",
        "controller healthy",
    )
    status = until(lambda: (s := app.controller_status())["table_version"] and s, "new controller has a table")
    assert status["table_version"] == serving  # the unsupported and FIFO versions are skipped
    assert status["last_rejection"]["version_id"] == "LATEST"
    assert app.generate().status_code == 200


def test_model_restarts_while_the_store_is_gone(app: App) -> None:
    shutil.rmtree(app.store_dir)
    with LoadLoop(f"{app.base}/v1/generate", BUDGETS, concurrency=4) as load:
        victim = _kill("MoEModel")
        until(lambda: victim not in _replicas("MoEModel") and _replicas("MoEModel"), "model replica replaced")
        until(lambda: app.generate().status_code == 200, "served again with the store gone")
    codes = {s.status for s in load.samples}
    assert codes <= {200, 503}, codes  # 0 (client gave up) or 504 would mean a request hung
    assert app.controller_status()["last_error"]  # the missing store is visible
