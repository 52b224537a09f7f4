"""The Router's /healthz, unknown datasets and API-key details on a real local Serve (issue 19
items 1, 14, 9): not "ok" while the fallback knobs answer for lack of a table (the answers keep
coming), ok once a table is served; an unknown dataset is a 400 naming the known ones, in local and
remote resolve mode; only the exact health path is open, and the bearer scheme is case-insensitive."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from ray import serve

from controller.store import TableStore
from serving.app import build_app_from_config
from serving.config import ServingConfig
from tests.support.serve import run_routed
from tests.support.tables import synthetic_table
from tests.support.waiting import until

pytestmark = pytest.mark.serve
API_KEY = "h" * 32
NESTED = b"[" * 200_000 + b"]" * 200_000  # the trigger: an array nested 200,000 deep


def _kill(app: str, deployment: str) -> None:
    for a in ray.util.list_named_actors(all_namespaces=True):
        if a["name"].startswith("SERVE_REPLICA::") and f"{app}#{deployment}#" in a["name"]:
            ray.kill(ray.get_actor(a["name"], namespace="serve"), no_restart=True)


def _deploy(name: str, store: Path, mode: str, keys: Path | None = None) -> None:
    config: dict[str, Any] = {
        "controller": {"store": str(store), "poll_interval_s": 0.3, "resolve_mode": mode},
        "model": {"backend_options": {"latency_scale": 0}},
    }
    if keys is not None:
        config["auth"] = {"api_keys_file": str(keys)}
    run_routed(build_app_from_config(ServingConfig.model_validate(config)), name=name, route_prefix=f"/{name}")


@pytest.fixture(scope="module")
def apps(serve_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("health")
    (tmp / "keys").write_text(API_KEY + "\n")
    bare, remote = tmp / "store", tmp / "remote_store"
    first = TableStore(str(bare)).publish(synthetic_table())
    TableStore(str(remote)).publish(synthetic_table())
    _deploy("health", bare, "local", tmp / "keys")
    _deploy("healthr", remote, "remote")
    base = f"http://127.0.0.1:{serve_port}"
    with httpx.Client(base_url=base, timeout=30) as c:
        yield {"c": c, "bare": bare, "first": first, "auth": {"Authorization": f"Bearer {API_KEY}"}}
    serve.delete("health")
    serve.delete("healthr")


def _get(c: httpx.Client, path: str) -> httpx.Response | None:
    """None while the killed ingress replica takes its kept-alive connections with it (topology
    model_ingress); the next try goes to its replacement."""
    try:
        return c.get(path)
    except httpx.TransportError:
        return None


def test_health_is_not_ok_while_fallback_knobs_answer_then_ok(apps: dict[str, Any]) -> None:
    """The issue's sequence: the only version turns into a hostile file, the controller restarts
    and finds no valid table, a router restarted meanwhile has none either."""
    c, auth, first = apps["c"], apps["auth"], apps["first"]
    assert c.get("/health/healthz").json()["table_version"] == first.version_id
    (apps["bare"] / "versions" / f"{first.version_id}.json").write_bytes(NESTED)
    _kill("health", "LookupController")
    _kill("health", "MoEModel")  # the ingress, with its table copy (topology model_ingress)
    health = until(lambda: (r := _get(c, "/health/healthz")) is not None and r.status_code == 503 and r,
                   "router without a table")
    body = health.json()
    assert body["status"] == "no_table" and body["table_version"] is None and body["reason"]
    assert str(apps["bare"]) not in health.text  # open route: no store paths
    answered = [c.get("/health/v1/knobs", params={"budget_ms": 120}, headers=auth) for _ in range(20)]
    assert all(r.status_code == 200 and r.headers["X-Fallback"] == "true" for r in answered)
    assert c.get("/health/healthz").status_code == 503  # still no table: still not ok
    table = TableStore(str(apps["bare"])).publish(synthetic_table())
    ok = until(lambda: (r := c.get("/health/healthz")).status_code == 200 and r, "healthz ok once a table loads")
    assert ok.json() == {"status": "ok", "resolve_mode": "local", "table_version": table.version_id}
    r = c.get("/health/v1/knobs", params={"budget_ms": 120}, headers=auth)
    assert r.status_code == 200 and r.json()["fallback"] is False


def test_remote_mode_health_follows_the_controller(apps: dict[str, Any]) -> None:
    r = until(lambda: (r := apps["c"].get("/healthr/healthz")).status_code == 200 and r, "remote ok")
    assert r.json()["status"] == "ok" and r.json()["resolve_mode"] == "remote" and r.json()["table_version"]


@pytest.mark.parametrize("app", ["health", "healthr"])
def test_unknown_dataset_is_a_400_naming_the_known_ones(apps: dict[str, Any], app: str) -> None:
    c, auth = apps["c"], apps["auth"]
    until(lambda: c.get(f"/{app}/healthz").status_code == 200, f"{app} serves a table")
    for r in (
        c.post(f"/{app}/v1/generate", json={"prompt": "x"}, headers={"X-Dataset": "coco", **auth}),
        c.get(f"/{app}/v1/knobs", params={"budget_ms": 120, "dataset": "coco"}, headers=auth),
    ):
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["field"] == "dataset" and err["value"] == "coco" and "textvqa, vqav2" in err["accepted"]
    known = c.get(f"/{app}/v1/knobs", params={"budget_ms": 120, "dataset": "TextVQA"}, headers=auth)
    assert known.status_code == 200 and known.json()["scope"] == "textvqa"


def test_only_the_exact_health_path_is_open_and_bearer_is_case_insensitive(apps: dict[str, Any]) -> None:
    c = apps["c"]
    assert c.get("/health/healthz").status_code in (200, 503)  # open: no key needed
    for path in ("/health/v1/stats/healthz", "/health/x/healthz", "/health/v1/healthz"):
        r = c.get(path)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer", path
    for scheme in ("Bearer", "bearer", "BEARER"):
        assert c.get("/health/v1/stats", headers={"Authorization": f"{scheme} {API_KEY}"}).status_code == 200
