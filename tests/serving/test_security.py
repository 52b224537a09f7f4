"""Security options on a real local Serve: API keys on the HTTP routes, signed tables, and answers
that keep store paths, the build's source and Ray internals out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray.exceptions
from ray import serve

from controller import Table
from controller.store import TableStore
from controller.table_file import content_sha256
from serving.app import build_app_from_config
from serving.config import ServingConfig
from serving.ingress.model_call import describe_failure
from tests.e2e.test_hostile_store import until
from tests.support.serve import run_routed
from tests.support.tables import synthetic_table

pytestmark = pytest.mark.serve
APP = "sec"
API_KEY = "k" * 32
SIGN_KEY = b"s" * 32


def _big_source_table(tmp: Path) -> Table:
    raw = json.loads(synthetic_table().to_json_bytes())
    raw["source"] = {"results_dir": str(tmp / "secret_results"), "notes": "x" * 2_000_000}
    raw["sha256"] = content_sha256(raw)
    return Table.from_json_bytes(json.dumps(raw).encode())


@pytest.fixture(scope="module")
def sec(serve_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("sec")
    store_dir = tmp / "store_with_a_private_path"
    (tmp / "api_keys").write_text(f"# one per line\n{API_KEY}\n")
    (tmp / "sign_key").write_bytes(SIGN_KEY)
    store = TableStore(str(store_dir))
    first = store.publish(_big_source_table(tmp), sign_key=SIGN_KEY)
    config = ServingConfig.model_validate(
        {
            "controller": {"store": str(store_dir), "poll_interval_s": 0.3, "verify_key_file": str(tmp / "sign_key")},
            "model": {"backend_options": {"latency_scale": 0}},
            "auth": {"api_keys_file": str(tmp / "api_keys")},
        }
    )
    run_routed(build_app_from_config(config), name=APP, route_prefix=f"/{APP}")
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{serve_port}/{APP}", timeout=30) as c:
        yield {"c": c, "auth": auth, "store": store, "dir": store_dir, "tmp": tmp, "first": first}
    serve.delete(APP)


def test_routes_need_an_api_key_but_health_does_not(sec: dict[str, Any]) -> None:
    c, auth = sec["c"], sec["auth"]
    for headers in ({}, {"Authorization": "Bearer wrong-key-wrong-key-wrong"}, {"Authorization": API_KEY}):
        r = c.post("/v1/generate", json={"prompt": "x"}, headers=headers)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        assert r.json()["error"]["field"] == "Authorization" and API_KEY not in r.text
        assert c.get("/v1/table", headers=headers).status_code == 401
    repeated = c.get("/v1/stats", headers=[("Authorization", f"Bearer {API_KEY}")] * 2)
    assert repeated.status_code == 401
    assert c.post("/v1/generate", json={"prompt": "x"}, headers=auth).status_code == 200
    assert c.get("/healthz").status_code == 200


def test_table_endpoint_is_a_bounded_summary_without_paths(sec: dict[str, Any]) -> None:
    r = sec["c"].get("/v1/table", headers=sec["auth"])
    assert r.status_code == 200
    assert len(r.content) < 50_000  # the table's 2 MB source is not echoed
    text = r.text
    assert str(sec["dir"]) not in text and str(sec["tmp"]) not in text and "secret_results" not in text
    ctl = r.json()["controller"]
    assert ctl["table_version"] == sec["first"].version_id
    assert ctl["loaded_from"] == f"{sec['first'].version_id}.json"
    assert ctl["summary"]["source_keys"] == ["notes", "results_dir"]


def test_only_signed_versions_are_served(sec: dict[str, Any]) -> None:
    c, store, auth = sec["c"], sec["store"], sec["auth"]
    unsigned = store.publish(synthetic_table(latency_scale=0.7))
    wrong = store.publish(synthetic_table(latency_scale=0.8), sign_key=b"w" * 32)
    for bad in (unsigned, wrong):
        store.rollback(bad.version_id)
        ctl = until(
            lambda b=bad: (s := c.get("/v1/table", headers=auth).json()["controller"])["last_rejection"]
            and s["last_rejection"]["version_id"] == b.version_id
            and s,
            f"{bad.version_id} rejected",
        )
        assert "sign" in ctl["last_rejection"]["reason"] and ctl["table_version"] == sec["first"].version_id
        assert str(sec["dir"]) not in json.dumps(ctl)
    signed = store.publish(synthetic_table(latency_scale=0.9), sign_key=SIGN_KEY)
    until(lambda: c.get("/v1/table", headers=auth).json()["table_version"] == signed.version_id, "signed served")


def test_model_failures_reach_the_client_without_ray_internals() -> None:
    inner = ray.exceptions.ActorUnavailableError("actor at 10.1.2.3 pid 4242 namespace serve", b"\x07" * 16)
    failure = describe_failure(inner)
    assert failure.status == 503 and failure.kind == "model_unavailable"
    text = json.dumps(failure.to_dict())
    assert "10.1.2.3" not in text and "4242" not in text and "0707" not in text
