"""Queue-aware budgets, strict policy and live recalibration on a real local Serve: the simulated
model runs one request at a time (a real queue), sleeping the table's latency with jitter, and a
configurable slowdown stands in for drift."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ray import serve

from bench.attainment_load import closed_loop
from controller.store import TableStore
from lookupctl import main as lookupctl
from serving.app import build_app_from_config
from serving.config import ServingConfig
from tests.support.serve import run_routed
from tests.support.tables import synthetic_table

pytestmark = pytest.mark.serve
BUDGET = "X-Latency-Budget-Ms"
POLICY = "X-Budget-Policy"


def _table() -> Any:
    # 41-89 ms first token, 0.75-1 ms per decoded token
    return synthetic_table(latency_scale=0.5, decode_ms_per_token=2.0)


def _config(store: str, *, queue_aware: bool, slowdown: float = 1.0, auto: bool = False) -> ServingConfig:
    return ServingConfig.model_validate(
        {
            "budget": {"default_budget_ms": 200, "max_budget_ms": 60_000, "queue_aware": queue_aware},
            "controller": {
                "store": store,
                "poll_interval_s": 0.25,
                "feedback": {
                    "window_s": 120,
                    "min_samples": 30,
                    "flush_interval_s": 0.2,
                    "auto": {"enabled": auto, "drift_share": 0.15, "drift_for_s": 0.5, "cooldown_s": 0},
                },
            },
            "model": {
                "backend_options": {"latency_source": "table", "latency_scale": 1.0, "jitter_sigma": 0.05,
                                    "decode": "per_token", "slowdown": slowdown, "seed": 1},
                # One request per backend call, one call at a time: requests queue at the replica.
                "batch": {"max_batch_size": 1, "batch_wait_timeout_s": 0},
            },
        }
    )


def _deploy(name: str, config: ServingConfig) -> None:
    run_routed(build_app_from_config(config), name=name, route_prefix=f"/{name}")


@pytest.fixture(scope="module")
def apps(serve_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    store = str(tmp_path_factory.mktemp("store"))
    table = TableStore(store).publish(_table())
    _deploy("qstatic", _config(store, queue_aware=False))
    _deploy("qaware", _config(store, queue_aware=True))
    yield {"base": f"http://127.0.0.1:{serve_port}", "store": store, "table": table}
    serve.delete("qstatic")
    serve.delete("qaware")


def _misses(base: str, budgets: list[float]) -> tuple[int, list[Any]]:
    results = asyncio.run(closed_loop(base, budgets, concurrency=3, requests=60))
    assert all(r.status == 200 for r in results), [r.status for r in results if r.status != 200]
    return sum(not r.met() for r in results), results


def test_queue_aware_resolve_cuts_misses(apps: dict[str, Any]) -> None:
    budgets = [200.0, 300.0]
    static, _ = _misses(f"{apps['base']}/qstatic", budgets)
    aware, results = _misses(f"{apps['base']}/qaware", budgets)
    assert aware < static, (aware, static)
    # The answers say what was assumed: a queue wait the router expected, and the budget left.
    assert any((r.queue_wait_ms or 0) > 0 for r in results)


def test_response_reports_queue_and_remaining_budget(apps: dict[str, Any]) -> None:
    with httpx.Client(base_url=f"{apps['base']}/qaware", timeout=30) as c:
        r = c.post("/v1/generate", json={"prompt": "hi", "max_new_tokens": 3}, headers={BUDGET: "150"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["budget_ms"] == 150 and body["budget_policy"] == "best-effort"
    assert body["remaining_budget_ms"] == pytest.approx(150 - body["queue_wait_ms"] - body["overhead_ms"])
    assert "queue;dur=" in r.headers["Server-Timing"]
    assert body["output"]["queue_wait_ms"] >= 0 and body["output"]["replica_load"]["replica"]


def test_strict_policy_refuses_with_retry_after_when_the_queue_is_long(apps: dict[str, Any]) -> None:
    base = f"{apps['base']}/qaware"
    stop = threading.Event()

    def flood() -> None:  # slowest config, 8 at a time: ~0.7 s of queue ahead of anyone
        async def run() -> None:
            while not stop.is_set():
                await closed_loop(base, [50_000.0], concurrency=8, requests=16)
        asyncio.run(run())

    t = threading.Thread(target=flood, daemon=True)
    t.start()
    refused = []
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            time.sleep(0.5)  # let the flood build a queue (setup, not a timing assertion)
            for _ in range(20):
                # 400 ms: more than the fastest config plus any overhead a busy host measures (so not a
                # 422), less than the flood's queue (so a 429 when the queue is the reason).
                r = c.post("/v1/generate", json={"prompt": "hi"}, headers={BUDGET: "400", POLICY: "strict"})
                assert r.status_code in (200, 429), r.text
                if r.status_code == 429:
                    refused.append(r)
                    break
    finally:
        stop.set()
        t.join(timeout=60)
    assert refused, "no strict request was refused under a long queue"
    r = refused[0]
    assert int(r.headers["Retry-After"]) >= 1
    body = r.json()
    assert body["error"]["field"] == BUDGET and body["error"]["type"] == "budget_unmeetable_now"
    assert body["estimate"]["wait_ms"] > 0 and body["estimate"]["retry_after_s"] == int(r.headers["Retry-After"])
    assert "output" not in body  # nothing was computed


def test_strict_policy_edge_cases_and_bad_policy(apps: dict[str, Any]) -> None:
    with httpx.Client(base_url=f"{apps['base']}/qaware", timeout=30) as c:
        ok = c.post("/v1/generate", json={"prompt": "hi"}, headers={BUDGET: "5000", POLICY: "strict"})
        assert ok.status_code == 200 and ok.json()["budget_policy"] == "strict"
        never = c.post("/v1/generate", json={"prompt": "hi"}, headers={BUDGET: "5", POLICY: "Strict"})
        assert never.status_code == 422 and "Retry-After" not in never.headers
        assert "at least" in never.json()["error"]["accepted"]
        for bad in (b"fast", b"strict, best-effort", "\u00e9".encode("latin-1")):
            r = c.post("/v1/generate", json={"prompt": "hi"}, headers={BUDGET: b"100", POLICY: bad})
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert err["field"] == POLICY and "best-effort, strict" in err["accepted"]
        stats = c.get("/v1/stats").json()
    assert stats["router"]["queue"]["refused"]["422"] >= 1
    assert stats["router"]["bad_requests_by_reason"].get(POLICY, 0) >= 3


def test_serve_headers_that_are_not_utf8_are_a_400_naming_them(apps: dict[str, Any]) -> None:
    """Ray's direct ingress decodes x-request-id and the multiplexed model id as strict UTF-8 before
    our doors run, and answered 500 to other bytes (serving.fast_path.refuse_undecodable_serve_headers)."""
    with httpx.Client(base_url=f"{apps['base']}/qaware", timeout=30) as c:
        for name, field in (("x-request-id", "x-request-id"), ("X-Request-Id", "x-request-id"),
                            ("serve_multiplexed_model_id", "serve_multiplexed_model_id")):
            for bad in (b"\xff\xfe\x80", "\u00e9".encode("latin-1")):
                r = c.post("/v1/generate", json={"prompt": "hi"}, headers={BUDGET: b"100", name: bad})
                assert r.status_code == 400, (name, bad, r.status_code, r.text)
                err = r.json()["error"]
                assert err["field"] == field and "UTF-8" in err["accepted"], err
        utf8_id = "caf\u00e9-1".encode()
        ok = c.post("/v1/generate", json={"prompt": "hi"}, headers={BUDGET: "100", "x-request-id": utf8_id})
        assert ok.status_code == 200, ok.text  # UTF-8 beyond ASCII is a request id like any other
        stats = c.get("/v1/stats")
        assert stats.status_code == 200  # the replica still serves
        # counted with the doors' own 400s, by the header's name (4 refusals of each request id
        # spelling, 2 of the model id), on the one replica of this app
        bad = stats.json()["router"]["bad_requests_by_reason"]
        assert bad.get("x-request-id") == 4 and bad.get("serve_multiplexed_model_id") == 2, bad


def test_drift_publishes_recalibrated_table_and_rollback_holds(
    serve_port: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store_dir = str(tmp_path / "store")
    store = TableStore(store_dir)
    first = store.publish(_table())
    _deploy("qdrift", _config(store_dir, queue_aware=False, slowdown=1.3, auto=True))
    base = f"http://127.0.0.1:{serve_port}/qdrift"
    try:
        sent = 0
        while store.latest_id() == first.version_id:
            assert sent < 600, "no automatic publish after 600 requests"
            asyncio.run(closed_loop(base, [45.0, 60.0], concurrency=1, requests=20))
            sent += 20
        new = store.load("latest")
        rec = new.source["live_recalibration"]
        assert rec["trigger"] == "automatic" and rec["from_version"] == first.version_id
        assert rec["recalibrated"], rec
        old = {c.knobs.key: c for c in first.configs()}
        for c in new.configs():
            if c.knobs.key in rec["recalibrated"]:
                assert c.latency_ms == pytest.approx(old[c.knobs.key].latency_ms * 1.3, rel=0.05), c.knobs.key
                assert rec["samples_per_config"][c.knobs.key] >= 30
                assert c.accuracy == old[c.knobs.key].accuracy
            else:
                assert c.latency_ms == old[c.knobs.key].latency_ms  # too few live samples: profiled
        with httpx.Client(base_url=base, timeout=30) as c:
            stats = c.get("/v1/stats").json()
            live = stats["controller"]["live"]
            key = rec["recalibrated"][0]
            assert live["configs"][key]["first_token"]["count"] >= 30
            assert new.version_id in live["auto"]["publishes"]
            # the operator rolls back: served again, and not undone by the automatic mode
            assert lookupctl(["rollback", "--store", store_dir, "--to", first.version_id]) == 0
            deadline = time.monotonic() + 30
            while c.get("/v1/table").json()["table_version"] != first.version_id:
                assert time.monotonic() < deadline, "rollback not served"
                time.sleep(0.1)
            asyncio.run(closed_loop(base, [45.0, 60.0], concurrency=1, requests=40))
            assert store.latest_id() == first.version_id
            assert len(store.version_ids()) == 2
        # the same live data through the CLI (dry run: nothing published)
        capsys.readouterr()
        assert lookupctl(["recalibrate", "--store", store_dir, "--min-samples", "30", "--dry-run", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["published"] is None and out["recalibrated"]
    finally:
        serve.delete("qdrift")


def test_total_budget_covers_decode_of_the_requested_tokens(serve_port: int, tmp_path: Path) -> None:
    from controller.decode_budget import resolve_total

    store = str(tmp_path / "store")
    table = TableStore(store).publish(_table())
    config = _config(store, queue_aware=False)
    config = config.model_copy(update={"budget": config.budget.model_copy(update={"covers": "total"})})
    _deploy("qtotal", config)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{serve_port}/qtotal", timeout=30) as c:
            for tokens in (1, 40):
                r = c.post("/v1/generate", json={"prompt": "hi", "max_new_tokens": tokens}, headers={BUDGET: "150"})
                assert r.status_code == 200, r.text
                body = r.json()
                d, decode = resolve_total(table, 150.0, tokens)
                assert body["budget_covers"] == "total" and body["knobs"] == d.knobs.as_dict()
                assert body["expected_decode_ms"] == pytest.approx(decode)
                assert body["expected_latency_ms"] == pytest.approx(d.expected_latency_ms)
    finally:
        serve.delete("qtotal")


def test_attainment_load_generator_runs_against_any_base_url(apps: dict[str, Any],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from bench.bench_attainment import main as bench_main

    assert bench_main(["--url", f"{apps['base']}/qaware", "--concurrency", "1,2", "--budgets", "5000",
                       "--requests", "6"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:2] == ["clients", "attain"] and len(lines) == 3
    assert lines[1].split()[1] == "100.0%"  # 5 s budgets: all met
    for bad, what in ((["--url", "ftp://x"], "--url"), (["--url", "http://x", "--concurrency", "a,b"], "--concurrency"),
                      (["--url", "http://x", "--budgets", "nan"], "--budgets")):
        with pytest.raises(SystemExit, match=what):
            bench_main(bad)
