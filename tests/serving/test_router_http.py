"""The router over real HTTP on 127.0.0.1: every header case, bodies, read-only endpoints."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from ray import serve

from controller import Table
from controller.store import TableStore
from serving.app import build_app_from_config
from serving.config import ServingConfig
from tests.support.serve import run_routed
from tests.support.tables import synthetic_table

pytestmark = pytest.mark.serve
BUDGET = "X-Latency-Budget-Ms"


def _deploy(name: str, store: str, **controller: Any) -> None:
    config = ServingConfig.model_validate(
        {
            "budget": {"default_budget_ms": 150, "max_budget_ms": 10_000},
            "controller": {"store": store, "poll_interval_s": 0.5, **controller},
            "fallback": {"knobs": {"tier": "low", "top_k": 4, "num_active_blocks": 12}, "expected_latency_ms": 90},
            "model": {"backend_options": {"latency_scale": 0}, "max_new_tokens_limit": 64},
        }
    )
    run_routed(build_app_from_config(config), name=name, route_prefix=f"/{name}")


@pytest.fixture(scope="module")
def app(
    serve_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[httpx.Client, Table, httpx.Client]]:
    store = str(tmp_path_factory.mktemp("store"))
    table = TableStore(store).publish(synthetic_table())
    _deploy("hdr", store)
    # Same table, remote resolve; the controller never answers in time, so every answer falls back.
    _deploy("slow", store, resolve_mode="remote", timeout_s=1e-6)
    base = f"http://127.0.0.1:{serve_port}"
    with httpx.Client(base_url=f"{base}/hdr", timeout=30) as c, httpx.Client(base_url=f"{base}/slow", timeout=30) as s:
        yield c, table, s
    serve.delete("hdr")
    serve.delete("slow")


def _gen(c: httpx.Client, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
    return c.post("/v1/generate", json={"prompt": "what is on the table?", **body}, headers=headers or {})


def test_budget_header_resolves_like_the_library(app) -> None:
    c, table, _ = app
    for budget in (60.0, 95.0, 120.0, 170.0, 400.0):
        r = _gen(c, {BUDGET: str(budget)})
        assert r.status_code == 200, r.text
        expected = table.resolve(budget)
        body = r.json()
        assert body["knobs"] == expected.knobs.as_dict()
        assert body["expected_latency_ms"] == expected.expected_latency_ms
        assert body["expected_accuracy"] == expected.expected_accuracy
        assert body["feasible"] == expected.feasible and body["fallback"] is False
        assert body["table_version"] == table.version_id and body["scope"] == "global"
        assert r.headers["X-Knob-Tier"] == expected.knobs.tier
        assert r.headers["X-Knob-Top-K"] == str(expected.knobs.top_k)
        assert r.headers["X-Knob-Active-Blocks"] == str(expected.knobs.num_active_blocks)
        assert r.headers["X-Table-Version"] == table.version_id
        assert r.headers["X-Budget-Feasible"] == str(expected.feasible).lower()
        timing = r.headers["Server-Timing"]
        assert timing.startswith("controller;dur=") and "model;dur=" in timing
        assert body["output"]["text"].startswith(f"[simulated {expected.knobs.key}]")


def test_budget_below_every_config_is_infeasible_but_served(app) -> None:
    c, table, _ = app
    r = _gen(c, {BUDGET: "1"})
    assert r.status_code == 200
    assert r.json()["feasible"] is False and r.headers["X-Budget-Feasible"] == "false"
    assert r.json()["knobs"] == table.frontier()[0].knobs.as_dict()  # the fastest config


def test_missing_budget_uses_the_configured_default(app) -> None:
    c, table, _ = app
    r = _gen(c)
    assert r.status_code == 200 and r.json()["budget_ms"] == 150
    assert r.json()["knobs"] == table.resolve(150).knobs.as_dict()


@pytest.mark.parametrize("raw", ["abc", "nan", "NaN", "inf", "-inf", "0", "-3", "10001", "1e400", "0x10"])
def test_bad_budget_header_is_a_400_naming_header_and_value(app, raw: str) -> None:
    c, _, _ = app
    r = _gen(c, {BUDGET: raw})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["field"] == BUDGET and err["value"] == raw and "milliseconds" in err["accepted"]


def test_dataset_and_tolerance_headers(app) -> None:
    c, table, _ = app
    r = _gen(c, {BUDGET: "120", "X-Dataset": "textvqa", "X-Latency-Tolerance": "0.2"})
    assert r.status_code == 200
    expected = table.resolve(120, tolerance=0.2, dataset="textvqa")
    assert r.json()["scope"] == "textvqa" and r.json()["knobs"] == expected.knobs.as_dict()
    assert r.json()["tolerance"] == 0.2
    unknown = _gen(c, {BUDGET: "120", "X-Dataset": "no_such_dataset"})  # a 400, not a global answer
    assert unknown.status_code == 400 and unknown.json()["error"]["field"] == "dataset"
    assert "textvqa, vqav2" in unknown.json()["error"]["accepted"]
    for bad in ("2", "-0.1", "x", "nan"):
        r = _gen(c, {BUDGET: "120", "X-Latency-Tolerance": bad})
        assert r.status_code == 400 and r.json()["error"]["field"] == "X-Latency-Tolerance"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"prompt": ""},
        {"prompt": "x", "max_new_tokens": 0},
        {"prompt": "x", "max_new_tokens": 65},
        {"prompt": "x", "max_new_tokens": "many"},
        {"prompt": "x", "image": "%%%not-base64"},
        {"prompt": "x", "unexpected": 1},
        [1, 2],
    ],
)
def test_bad_bodies_are_400_never_500(app, body: Any) -> None:
    c, _, _ = app
    r = c.post("/v1/generate", json=body, headers={BUDGET: "100"})
    assert r.status_code == 400, r.text
    assert "error" in r.json()


def test_malformed_json_is_400(app) -> None:
    c, _, _ = app
    r = c.post("/v1/generate", content=b"{nope", headers={BUDGET: "100", "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["field"] == "body"


def test_image_request(app) -> None:
    c, _, _ = app
    r = _gen(c, {BUDGET: "200"}, image="aGVsbG8=", max_new_tokens=4)
    assert r.status_code == 200 and r.json()["output"]["output_tokens"] == 4


def test_knobs_endpoint_equals_the_library_for_many_budgets(app) -> None:
    c, table, _ = app
    budgets = np.round(np.linspace(5, 400, 40), 3)
    expected = table.resolve_many(budgets)
    for b, d in zip(budgets.tolist(), expected, strict=True):
        got = c.get("/v1/knobs", params={"budget_ms": b}).json()
        assert got["knobs"] == d.knobs.as_dict() and got["feasible"] == d.feasible, b
    bad = c.get("/v1/knobs", params={"budget_ms": "nan"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "budget_ms"


def test_remote_batched_resolve_equals_the_library(app) -> None:
    _, table, _ = app
    handle = serve.get_deployment_handle("LookupController", app_name="hdr")
    budgets = np.round(np.linspace(5, 400, 64), 3).tolist()
    responses = [handle.resolve.remote(b, None, "vqav2" if i % 2 else None) for i, b in enumerate(budgets)]
    for i, (b, resp) in enumerate(zip(budgets, responses, strict=True)):
        d = table.resolve(b, dataset="vqav2" if i % 2 else None)
        got = resp.result(timeout_s=30)  # the Decision itself (one shape from resolve to the router)
        assert (got.tier, got.top_k, got.num_active_blocks) == (d.tier, d.top_k, d.num_active_blocks)
        assert got.feasible == d.feasible and got.scope == d.scope
        assert got.table_version == table.version_id and got == d


def test_concurrent_requests_with_different_budgets_each_run_their_own_knobs(app) -> None:
    c, table, _ = app
    budgets = ["60", "400"] * 12
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda b: _gen(c, {BUDGET: b}), budgets))
    assert all(r.status_code == 200 for r in responses)
    for b, r in zip(budgets, responses, strict=True):
        assert r.json()["output"]["text"].startswith(f"[simulated {table.resolve(float(b)).knobs.key}]")


def test_table_and_health_endpoints(app) -> None:
    c, table, _ = app
    info = c.get("/v1/table").json()
    assert info["table_version"] == table.version_id
    ctl = info["controller"]
    assert ctl["table_version"] == table.version_id and ctl["loaded_at"] and ctl["loaded_from"].endswith(".json")
    assert ctl["last_rejection"] is None
    assert ctl["summary"]["scopes"]["global"]["frontier"]
    health = c.get("/healthz")
    assert health.status_code == 200 and health.json()["table_version"] == table.version_id


def test_slow_controller_means_fallback_marked_and_counted(app) -> None:
    _, _, slow = app
    r = _gen(slow, {BUDGET: "120"})
    assert r.status_code == 200
    body = r.json()
    assert body["fallback"] is True and r.headers["X-Fallback"] == "true"
    assert body["knobs"] == {"tier": "low", "top_k": 4, "num_active_blocks": 12}
    assert body["feasible"] is True and body["table_version"] is None
    assert r.headers["X-Budget-Feasible"] == "true"


def _stats(c: httpx.Client) -> dict[str, Any]:
    r = c.get("/v1/stats")
    assert r.status_code == 200, r.text
    return r.json()


def test_stats_count_feasible_infeasible_bad_and_fallback(app) -> None:
    c, table, slow = app
    before, slow_before = _stats(c), _stats(slow)
    best, fastest = table.resolve(400).knobs.key, table.frontier()[0].knobs.key
    for _ in range(3):
        assert _gen(c, {BUDGET: "400"}).status_code == 200
    assert _gen(c, {BUDGET: "1"}).json()["feasible"] is False
    assert _gen(c, {BUDGET: "abc"}).status_code == 400 and _gen(c, {BUDGET: "0"}).status_code == 400
    assert _gen(c, {BUDGET: "100"}, max_new_tokens=0).status_code == 400
    assert _gen(slow, {BUDGET: "120"}).json()["fallback"] is True
    assert _gen(slow, {BUDGET: "60"}).json()["fallback"] is True
    after, slow_after = _stats(c), _stats(slow)

    def delta(a: dict[str, Any], b: dict[str, Any], *path: str) -> int:
        for p in path[:-1]:
            a, b = a[p], b[p]
        return int(b.get(path[-1], 0) - a.get(path[-1], 0))

    r0, r1 = before["router"], after["router"]
    assert delta(r0, r1, "requests_by_config", best) == 3
    assert delta(r0, r1, "requests_by_config", fastest) == 1 and delta(r0, r1, "requests_total") == 4
    assert delta(r0, r1, "infeasible") == 1 and delta(r0, r1, "fallback") == 0
    assert delta(r0, r1, "bad_requests_by_reason", BUDGET) == 2
    assert delta(r0, r1, "bad_requests_by_reason", "max_new_tokens") == 1
    assert delta(r0, r1, "bad_requests_total") == 3
    lat = r1["resolve_latency_us"]
    assert lat["window"] >= 4 and 0 < lat["p50"] <= lat["p99"] < 1_000_000
    assert after["table_version"] == table.version_id
    ctl = after["controller"]
    assert ctl["table_version"] == table.version_id
    assert ctl["reloads_accepted"] == 1 and ctl["reloads_rejected"] == 0
    s0, s1 = slow_before["router"], slow_after["router"]
    assert delta(s0, s1, "fallback") == 2 and delta(s0, s1, "requests_by_config", "low_4_12") == 2
    assert delta(s0, s1, "infeasible") == 1  # the fallback expects 90 ms: 120 fits, 60 does not
    assert "error" in slow_after["controller"]  # that controller never answers in time


STRICT = "X-Deadline-Ms"
SCALE = 0.1


@pytest.fixture(scope="module")
def strict(serve_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Table]]:
    """require_budget under a custom header name; a model that sleeps SCALE x the table's latency
    and waits long enough for batches to fill."""
    store = str(tmp_path_factory.mktemp("strict-store"))
    table = TableStore(store).publish(synthetic_table())
    config = ServingConfig.model_validate(
        {
            "headers": {"budget": STRICT},
            "budget": {"require_budget": True, "max_budget_ms": 10_000},
            "controller": {"store": store, "poll_interval_s": 0.5},
            "model": {
                "backend_options": {"latency_source": "table", "latency_scale": SCALE, "jitter_sigma": 0},
                "batch": {"max_batch_size": 8, "batch_wait_timeout_s": 0.05},
            },
        }
    )
    run_routed(build_app_from_config(config), name="strict", route_prefix="/strict")
    with httpx.Client(base_url=f"http://127.0.0.1:{serve_port}/strict", timeout=30) as c:
        yield c, table
    serve.delete("strict")


@pytest.mark.parametrize("headers", [{}, {STRICT: ""}, {BUDGET: "150"}])
def test_required_budget_missing_is_a_400_naming_the_header(strict, headers: dict[str, str]) -> None:
    c, _ = strict
    r = _gen(c, headers)  # the default header name means nothing here: only X-Deadline-Ms counts
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["field"] == STRICT and err["value"] == headers.get(STRICT)
    assert "requires a budget" in err["problem"]
    assert "milliseconds" in err["accepted"] and STRICT in err["accepted"] and STRICT in err["message"]


def test_required_budget_present_is_served_and_knobs_needs_budget_ms(strict) -> None:
    c, table = strict
    r = _gen(c, {STRICT: "150"})
    assert r.status_code == 200 and r.json()["knobs"] == table.resolve(150).knobs.as_dict()
    missing = c.get("/v1/knobs")
    assert missing.status_code == 400 and missing.json()["error"]["field"] == "budget_ms"


def test_model_time_follows_the_table_latency(strict) -> None:
    c, table = strict
    fast, slow = (_gen(c, {STRICT: b}).json() for b in ("1", "400"))
    assert slow["expected_latency_ms"] > fast["expected_latency_ms"]
    for body in (fast, slow):  # jitter 0: the backend sleeps exactly SCALE x the table's latency
        assert body["output"]["timings_ms"]["total"] == pytest.approx(SCALE * body["expected_latency_ms"])
        assert body["timings_ms"]["model"] >= body["output"]["timings_ms"]["total"]
    ratio = slow["output"]["timings_ms"]["total"] / fast["output"]["timings_ms"]["total"]
    assert ratio == pytest.approx(slow["expected_latency_ms"] / fast["expected_latency_ms"])


def test_concurrent_equal_knobs_share_batches_and_batches_never_mix_knobs(strict) -> None:
    c, table = strict
    budgets = ["400", "100"] * 12
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(lambda b: _gen(c, {STRICT: b}), budgets))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    batches: dict[str, list[dict[str, Any]]] = {}
    for b, r in zip(budgets, responses, strict=True):
        body = r.json()
        assert body["knobs"] == table.resolve(float(b)).knobs.as_dict()
        batches.setdefault(body["output"]["batch_id"], []).append(body)
    for members in batches.values():
        sizes = {m["output"]["batch_size"] for m in members}
        assert sizes == {len(members)}, (sizes, len(members))  # every member of the batch is ours
        assert all(m["knobs"] == m["output"]["batch_knobs"] for m in members)  # ran with its own knobs
        assert len({tuple(sorted(m["knobs"].items())) for m in members}) == 1  # one knob set per batch
    assert max(len(m) for m in batches.values()) > 1, {k: len(v) for k, v in batches.items()}
