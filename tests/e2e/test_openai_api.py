"""The OpenAI-compatible routes on a real local Serve, driven by the official `openai` package (sync,
async, streaming) and by raw HTTP where the SDK hides what is checked (SSE framing, disconnects)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from ray import serve

from controller.store import TableStore
from serving.app import build_app_from_config
from serving.config import ServingConfig
from serving.telemetry.attainment import BUCKETS
from tests.support.serve import run_routed
from tests.support.tables import synthetic_table

pytestmark = pytest.mark.serve
APP = "oai"
MODEL = "moe-budget"
BUDGET = "X-Latency-Budget-Ms"
IMAGE = "data:image/png;base64," + base64.b64encode(b"\x89PNG fake image bytes").decode()


@pytest.fixture(scope="module")
def base(serve_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = tmp_path_factory.mktemp("oai_store")
    TableStore(str(store)).publish(synthetic_table())
    config = ServingConfig.model_validate(
        {"controller": {"store": str(store), "poll_interval_s": 0.5},
         "model": {"backend_options": {"latency_scale": 0.2}, "max_new_tokens_limit": 1000}}
    )
    run_routed(build_app_from_config(config), name=APP, route_prefix=f"/{APP}")
    yield f"http://127.0.0.1:{serve_port}/{APP}"
    serve.delete(APP)


@pytest.fixture(scope="module")
def client(base: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


def knobs_for(base: str, budget: float) -> dict[str, Any]:
    return dict(httpx.get(f"{base}/v1/knobs", params={"budget_ms": budget}).json()["knobs"])


def test_chat_completion_with_header_budget_and_an_image(client: openai.OpenAI, base: str) -> None:
    messages: Any = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "what is shown?"},
                                     {"type": "image_url", "image_url": {"url": IMAGE}}]},
    ]
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, max_tokens=5, extra_headers={BUDGET: "120"}
    )
    r = raw.parse()
    assert r.object == "chat.completion" and r.model == MODEL and len(r.choices) == 1
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + 5
    extra = (r.model_extra or {})["budget"]
    assert extra["knobs"] == knobs_for(base, 120) and extra["budget_ms"] == 120
    assert raw.headers["x-knob-tier"] == extra["knobs"]["tier"]
    assert raw.headers["x-table-version"] == extra["table_version"]


def test_body_budget_and_completions_and_models(client: openai.OpenAI, base: str) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_completion_tokens=3,
        extra_body={"latency_budget_ms": 60_000},
    )
    assert (r.model_extra or {})["budget"]["knobs"] == knobs_for(base, 60_000)
    c = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4,
                                  extra_headers={BUDGET: "300"})
    assert c.object == "text_completion" and c.choices[0].text and c.usage and c.usage.completion_tokens == 4
    assert [m.id for m in client.models.list()] == [MODEL]


def test_async_client(base: str) -> None:
    async def run() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0) as c:
            rs = await asyncio.gather(*(
                c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"q{i}"}],
                                          max_tokens=2, extra_headers={BUDGET: str(b)})
                for i, b in enumerate((60, 200, 5000))
            ))
            return [str((r.model_extra or {})["budget"]["knobs"]) for r in rs]

    got = asyncio.run(run())
    assert got == [str(knobs_for(base, b)) for b in (60, 200, 5000)]


def test_streaming_sends_tokens_as_decoded_and_ends_with_usage(client: openai.OpenAI) -> None:
    kwargs: Any = {"model": MODEL, "messages": [{"role": "user", "content": "stream please"}], "max_tokens": 6,
                   "extra_headers": {BUDGET: "150"}}
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert (chunks[0].model_extra or {})["budget"]["budget_ms"] == 150
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2  # more than one piece
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    # the replica's side of the stream, which its headers (sent at the first token) cannot carry
    t = (finals[0].model_extra or {})["timings"]
    assert set(t) == {"queue_wait_ms", "replica_first_token_ms", "replica_ms", "first_token_ms", "decode_ms",
                      "router_first_token_ms"}, t
    assert all(isinstance(v, float) and v >= 0 for v in t.values()), t
    assert t["queue_wait_ms"] <= t["replica_first_token_ms"] <= t["replica_ms"], t
    assert "timings" not in (chunks[0].model_extra or {})  # the finish chunk's only


def test_a_streams_router_first_token_is_its_first_chunk_handed_to_the_server(base: str) -> None:
    """The router counts a stream's first token when its first chunk has been sent, not when the
    replica's first piece reached the door (the Server-Timing header's total, sent before it), so
    the overhead it learns includes the response's start and that send; the client, whose clock
    starts earlier and ends later, sees it no sooner."""
    body = {"model": MODEL, "prompt": "x", "max_tokens": 4, "stream": True}
    for _ in range(5):
        started = time.perf_counter()
        with httpx.stream("POST", f"{base}/v1/completions", json=body, headers={BUDGET: "500"}, timeout=30) as r:
            assert r.status_code == 200, r.read()
            events, client_first_ms = [], None
            for line in r.iter_lines():
                if line:
                    client_first_ms = client_first_ms or (time.perf_counter() - started) * 1000
                    events.append(line)
        piece_ms = float(r.headers["server-timing"].split("total;dur=")[1].split(",")[0])
        final = [json.loads(e[6:]) for e in events[:-1] if json.loads(e[6:])["choices"][0]["finish_reason"]]
        t = final[0]["timings"]
        assert piece_ms <= t["router_first_token_ms"] <= client_first_ms, (piece_ms, t, client_first_ms)
        assert t["replica_first_token_ms"] <= t["router_first_token_ms"], t


def test_sse_framing_and_done(base: str) -> None:
    body = {"model": MODEL, "prompt": "x", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{base}/v1/completions", json=body, headers={BUDGET: "100"}, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    first = json.loads(events[0][6:])
    assert first["object"] == "text_completion" and first["choices"][0]["finish_reason"] is None


def test_client_disconnect_stops_the_generation(base: str) -> None:
    model = serve.get_deployment_handle("MoEModel", app_name=APP)
    before = model.stream_stats.remote().result(timeout_s=30)
    # 900 tokens at this scale decode for several seconds; the client reads one event and leaves.
    body = {"model": MODEL, "messages": [{"role": "user", "content": "long"}], "max_tokens": 900, "stream": True}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, headers={BUDGET: "60000"}, timeout=30) as r:
        assert next(line for line in r.iter_lines() if line).startswith("data: ")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = model.stream_stats.remote().result(timeout_s=30)
        if now["cancelled"] > before["cancelled"]:
            break
        time.sleep(0.2)
    assert now["cancelled"] == before["cancelled"] + 1, now


@pytest.mark.parametrize(
    ("kwargs", "status", "param", "words"),
    [
        ({"temperature": 0.7}, 400, "temperature", "greedily"),
        ({"n": 2}, 400, "n", "one choice"),
        ({"extra_body": {"tools": [], "logprobs": True}}, 400, None, "logprobs, tools"),
        ({"model": "gpt-4o"}, 404, "model", "not a model served here"),
        ({"max_tokens": 0}, 400, "max_tokens", "positive integer"),
        ({"max_tokens": 5000}, 400, "max_tokens", "limit"),
        ({"extra_headers": {BUDGET: "NaN"}}, 400, BUDGET, "NaN"),
        ({"extra_headers": {BUDGET: "100"}, "extra_body": {"latency_budget_ms": 100}}, 400, "latency_budget_ms",
         "one of them"),
        ({"extra_body": {"latency_budget_ms": "fast"}}, 400, "latency_budget_ms", "not a number"),
        ({"extra_body": {"latency_budget_ms": -5}}, 400, "latency_budget_ms", ""),
        ({"messages": [{"role": "user", "content": [{"type": "image_url",
                                                     "image_url": {"url": "http://x/y.png"}}]}]},
         400, "messages", "data URL"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages", "cannot read"),
        ({"messages": []}, 400, "messages", "non-empty"),
        ({"extra_headers": {BUDGET: "1", "X-Budget-Policy": "strict"}}, 422, BUDGET, "below the fastest config"),
    ],
)
def test_bad_requests_get_the_openai_error_shape(
    client: openai.OpenAI, kwargs: dict[str, Any], status: int, param: str | None, words: str
) -> None:
    args: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    args.update(kwargs)
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(**args)
    assert e.value.status_code == status
    err = e.value.body if isinstance(e.value.body, dict) else {}
    assert set(err) >= {"message", "type", "param", "code"}, err
    assert err["param"] == param and words in err["message"]


def test_hostile_bodies_are_4xx(base: str) -> None:
    for raw in (b'{"model": "moe-budget", "messages": NaN}', b"\xff\xfe", b"[" * 5000,
                b'{"model": "moe-budget", "messages": [{"role": "user", "content": "\\ud800"}]}'):
        r = httpx.post(f"{base}/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "moe_budget_dashboard.json"


def dashboard_metrics() -> set[str]:
    """Every metric name a panel of the Grafana dashboard queries."""
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    return {m for e in exprs for m in re.findall(r"\b(ray_lookup_[a-z_]+)\b", e)}


@pytest.fixture(scope="module")
def fallback_base(serve_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A router whose controller never answers in time: every request takes the fallback config."""
    store = tmp_path_factory.mktemp("oai_fallback_store")
    TableStore(str(store)).publish(synthetic_table())
    config = ServingConfig.model_validate(
        {"controller": {"store": str(store), "resolve_mode": "remote", "timeout_s": 0.000001},
         "model": {"backend_options": {"latency_scale": 0.05}}}
    )
    run_routed(build_app_from_config(config), name="oaifb", route_prefix="/oaifb")
    yield f"http://127.0.0.1:{serve_port}/oaifb"
    serve.delete("oaifb")


def test_every_dashboard_metric_is_exported_by_the_running_app(
    client: openai.OpenAI, base: str, fallback_base: str
) -> None:
    import ray
    from prometheus_client.parser import text_string_to_metric_families

    wanted = dashboard_metrics()
    assert {"ray_lookup_budget_attainment_total", "ray_lookup_requests_total", "ray_lookup_infeasible_total",
            "ray_lookup_fallback_total", "ray_lookup_table_version_info", "ray_lookup_table_reloads_total",
            "ray_lookup_resolve_latency_ms_bucket"} <= wanted
    for budget in ("1", "150", "60000"):  # 1 ms: infeasible, answered with the fastest config
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "m"}], max_tokens=2,
                                       extra_headers={BUDGET: budget})
    assert httpx.post(f"{fallback_base}/v1/generate", json={"prompt": "fb"}, timeout=30).headers["x-fallback"] == "true"
    port = ray._private.worker._global_node.metrics_export_port  # the node's Prometheus endpoint
    deadline, missing = time.monotonic() + 90, wanted
    while time.monotonic() < deadline:  # metrics reach the exporter every few seconds
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
        missing = wanted - exported
        if not missing:
            break
        time.sleep(1)
    assert not missing, f"dashboard queries metrics the app does not export: {sorted(missing)}"
    met = [s for f in text_string_to_metric_families(text) for s in f.samples
           if s.name == "ray_lookup_budget_attainment_total"]
    assert {s.labels["met"] for s in met} <= {"true", "false"}
    assert {s.labels["budget_bucket"] for s in met} <= set(BUCKETS)
