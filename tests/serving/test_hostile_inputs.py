"""Hostile requests over real HTTP: every one gets a 4xx in the documented error shape, is counted
under a reason from a fixed set, and quotes at most a short prefix of what it sent; a Hypothesis
fuzz over headers, query and body finds no 5xx."""

from __future__ import annotations

import json
import random
import string
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ray import serve

from controller.store import TableStore
from serving.app import build_app_from_config
from serving.config import ServingConfig
from tests.support.serve import run_routed
from tests.support.tables import synthetic_table

pytestmark = pytest.mark.serve
APP = "hostile_in"
BUDGET = "X-Latency-Budget-Ms"
LIMITS = {"max_body_bytes": 64 * 1024, "max_prompt_chars": 2000, "max_image_bytes": 3000}
# Every `field` (and metric reason) a bad request may be counted under with this config.
REASONS = {BUDGET, "X-Dataset", "X-Latency-Tolerance", "X-Budget-Policy", "budget_ms", "dataset", "tolerance"} | {
    "body",
    "prompt",
    "image",
    "max_new_tokens",
    "request",
}


@pytest.fixture(scope="module")
def c(serve_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    store = str(tmp_path_factory.mktemp("store"))
    TableStore(store).publish(synthetic_table())
    config = ServingConfig.model_validate(
        {
            "controller": {"store": store},
            "model": {"backend_options": {"latency_scale": 0}, "max_new_tokens_limit": 64},
            "limits": LIMITS,
        }
    )
    run_routed(build_app_from_config(config), name=APP, route_prefix=f"/{APP}")
    with httpx.Client(base_url=f"http://127.0.0.1:{serve_port}/{APP}", timeout=30) as client:
        yield client
    serve.delete(APP)


def _raw(c: httpx.Client, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return c.post("/v1/generate", content=body, headers={"content-type": "application/json", **(headers or {})})


def _error(r: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert set(err) == {"field", "value", "problem", "accepted", "message"}
    assert err["field"] in REASONS
    assert len(r.content) < 2000, len(r.content)  # a short prefix of the value, never all of it
    return dict(err)


def _bad_total(c: httpx.Client) -> int:
    return int(c.get("/v1/stats").json()["router"]["bad_requests_total"])


@pytest.mark.parametrize(
    "body",
    [
        b'{"prompt": "x", "max_new_tokens": NaN}',
        b'{"prompt": "x", "max_new_tokens": Infinity}',
        b'{"prompt": "x", "max_new_tokens": -Infinity}',
        b'{"prompt": "\\ud800"}',
        b'{"prompt": "x", "image": "\\udfff"}',
        b'{"prompt": "x", "\\ud800": 1}',
        b"[" * 5000 + b"]" * 5000,
        b'{"a": ' * 900 + b"1" + b"}" * 900,
        b'{"prompt": "\xff\xfe"}',
        b'{"prompt": "x", "max_new_tokens": ' + b"9" * 5000 + b"}",
        b'{"prompt": "x", "max_new_tokens": true}',
        b'{"prompt": "x", "max_new_tokens": "16"}',
        b'{"prompt": "x", "max_new_tokens": 16.0}',
        b'{"prompt": "x", "max_new_tokens": 1e2}',
        b'{"prompt": "x", "prompt": 5}',
    ],
    ids=[
        "nan",
        "inf",
        "-inf",
        "surrogate-prompt",
        "surrogate-image",
        "surrogate-key",
        "deep",
        "deep-900-parses",
        "invalid-utf8",
        "5000-digits",
        "tokens-true",
        "tokens-str",
        "tokens-float",
        "tokens-exp",
        "dup-key-last-wins-and-is-checked",
    ],
)
def test_hostile_bodies_are_400_in_the_error_shape_and_counted(c: httpx.Client, body: bytes) -> None:
    before = _bad_total(c)
    _error(_raw(c, body, {BUDGET: "100"}))
    assert _bad_total(c) == before + 1


def test_sizes_past_the_limits_are_413_with_a_short_answer(c: httpx.Client) -> None:
    big_body = json.dumps({"prompt": "x" * (LIMITS["max_body_bytes"] + 10)}).encode()
    assert _error(_raw(c, big_body), 413)["field"] == "body"
    assert _error(c.post("/v1/generate", json={"prompt": "p" * 2001}), 413)["field"] == "prompt"
    assert _error(c.post("/v1/generate", json={"prompt": "x", "image": "QUJD" * 1500}), 413)["field"] == "image"
    # Chunked upload without a Content-Length: the read stops at the limit.
    chunks = (b"x" * 8192 for _ in range(20))
    assert _error(c.post("/v1/generate", content=chunks, headers={"content-type": "application/json"}), 413)
    assert c.post("/v1/generate", json={"prompt": "p" * 2000, "image": "QUJD" * 700}).status_code == 200


@pytest.mark.parametrize("raw", ["1_000", "١٢٣", "１２３", "0x10", "1 2"])
def test_budgets_are_plain_ascii_numbers_in_header_and_query(c: httpx.Client, raw: str) -> None:
    _error(c.post("/v1/generate", json={"prompt": "x"}, headers={BUDGET: raw.encode()}))
    _error(c.get("/v1/knobs", params={"budget_ms": raw}))


def test_repeated_header_and_query_parameter_are_refused(c: httpx.Client) -> None:
    r = c.post("/v1/generate", json={"prompt": "x"}, headers=[(BUDGET, "100"), (BUDGET, "900")])
    assert "2 times" in _error(r)["problem"]
    assert _error(c.get("/v1/knobs?budget_ms=100&budget_ms=900"))["field"] == "budget_ms"


def test_unknown_keys_never_become_counter_keys(c: httpx.Client) -> None:
    rng = random.Random(0)
    for _ in range(50):
        key = "".join(rng.choices(string.ascii_letters, k=10_000))
        err = _error(c.post("/v1/generate", json={"prompt": "x", key: 1}))
        assert err["field"] == "body"
    stats = c.get("/v1/stats")
    assert set(stats.json()["router"]["bad_requests_by_reason"]) <= REASONS
    assert len(stats.content) < 10_000


_header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner, max_size=4),
    max_leaves=12,
)
_bodies = st.one_of(
    st.binary(max_size=300),
    st.fixed_dictionaries(
        {}, optional={"prompt": _json_values, "image": _json_values, "max_new_tokens": _json_values}
    ).map(lambda d: json.dumps(d, allow_nan=True).encode()),
    _json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
)
FUZZ = {"tried": 0, "5xx": 0}


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    budget=st.none() | _header_text,
    tolerance=st.none() | _header_text,
    dataset=st.none() | _header_text,
    query=st.dictionaries(st.sampled_from(["budget_ms", "tolerance", "dataset", "x"]), _header_text, max_size=3),
    body=_bodies,
)
def test_fuzz_headers_query_and_body_never_5xx(
    c: httpx.Client, budget: str | None, tolerance: str | None, dataset: str | None, query: dict[str, str], body: bytes
) -> None:
    headers = {"content-type": "application/json"}
    for name, value in ((BUDGET, budget), ("X-Latency-Tolerance", tolerance), ("X-Dataset", dataset)):
        if value is not None:
            headers[name] = value.strip(" \t").encode("latin-1")  # type: ignore[assignment]
    gen = c.post("/v1/generate", content=body, headers=headers)
    knobs = c.get("/v1/knobs", params=query)
    FUZZ["tried"] += 2
    for r in (gen, knobs):
        if r.status_code >= 500:
            FUZZ["5xx"] += 1
        assert r.status_code < 500, (r.status_code, r.text[:300])
        if r.status_code >= 400:
            assert r.json()["error"]["field"] in REASONS


def test_fuzz_report() -> None:
    print(f"fuzz: {FUZZ['tried']} requests tried, {FUZZ['5xx']} x 5xx")
    assert FUZZ["5xx"] == 0
