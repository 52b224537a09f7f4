"""The deploy files run Serve's fast request path: the KubeRay containers carry its settings."""

from __future__ import annotations

from pathlib import Path

import yaml

from serving.fast_path import FAST_PATH_ENV

ROOT = Path(__file__).resolve().parents[2]
# Set on every container; the drain period is left at Serve's default on a cluster, where HAProxy
# on other nodes needs time to take a stopping replica out.
# The budget header rides as Serve's session header: what HAProxy forwards to the ReplicaChooser.
REQUIRED = {"RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S",
            "RAY_SERVE_SESSION_ID_HEADER_KEY"}


def _containers() -> list[dict[str, object]]:
    spec = yaml.safe_load((ROOT / "deploy/kuberay/rayservice.yaml").read_text())["spec"]["rayClusterConfig"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_every_ray_container_runs_the_fast_path() -> None:
    containers = _containers()
    assert len(containers) >= 2
    for c in containers:
        env = {e["name"]: e["value"] for e in c.get("env", [])}  # type: ignore[attr-defined]
        for name in REQUIRED:
            assert env.get(name) == FAST_PATH_ENV[name], (c["name"], name)


def test_the_local_fast_path_sets_what_the_cluster_sets() -> None:
    assert REQUIRED <= set(FAST_PATH_ENV)
    assert FAST_PATH_ENV["RAY_SERVE_ENABLE_HA_PROXY"] == FAST_PATH_ENV["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert 0 < int(FAST_PATH_ENV["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"]) <= 60


def test_the_forwarded_header_is_the_shipped_budget_header() -> None:
    from serving.config import load_config

    for name in ("serving_local.yaml", "serving_h100.yaml"):
        budget = load_config(ROOT / "configs" / name).headers.budget
        assert FAST_PATH_ENV["RAY_SERVE_SESSION_ID_HEADER_KEY"] == budget.lower(), name


def test_the_serve_headers_decoded_as_utf8_are_found_in_any_spelling() -> None:
    from serving.fast_path import undecodable_serve_header

    assert undecodable_serve_header([(b"x-request-id", "caf\u00e9".encode())]) is None
    assert undecodable_serve_header([(b"X-Request-ID", b"\xff")]) == ("X-Request-ID", b"\xff")
    model_id = "serve-multiplexed-model-id"
    assert undecodable_serve_header([(model_id.encode(), b"\xe9")]) == (model_id, b"\xe9")
    assert undecodable_serve_header([(b"x-latency-budget-ms", b"\xff"), (b"x-other", b"\xff")]) is None
    assert undecodable_serve_header([]) is None


def test_a_refused_header_is_counted_and_a_failing_counter_still_answers_400() -> None:
    """The guard on Ray's direct-ingress entry tells `on_refusal` the field; a counter that raises
    is logged, and the client still gets its 400 (the e2e test covers the counted /v1/stats)."""
    import asyncio
    import json

    from ray.serve._private.replica import Replica

    from serving import fast_path

    counted: list[str] = []
    fast_path.refuse_undecodable_serve_headers(on_refusal=counted.append)
    scope = {"type": "http", "headers": [(b"x-request-id", b"\xff\xfe")]}

    def answer() -> list[dict[str, object]]:
        sent: list[dict[str, object]] = []

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        async def receive() -> dict[str, object]:
            raise AssertionError("the guard answers before reading the body")

        asyncio.run(Replica._direct_ingress_asgi(None, scope, receive, send))
        return sent

    sent = answer()
    assert counted == ["x-request-id"]
    assert sent[0]["status"] == 400 and json.loads(sent[1]["body"])["error"]["field"] == "x-request-id"  # type: ignore[arg-type]

    def broken(field: str) -> None:
        raise RuntimeError("metrics backend down")

    fast_path.refuse_undecodable_serve_headers(on_refusal=broken)
    try:
        assert answer()[0]["status"] == 400
    finally:
        fast_path.refuse_undecodable_serve_headers(on_refusal=counted.append)


def test_every_ray_container_runs_the_image_haproxy_script() -> None:
    """HAProxy without splice on the cluster too: each container's RAY_SERVE_HAPROXY_BINARY_PATH
    is the script the Dockerfile writes (serving.haproxy_binary)."""
    import re

    from serving.haproxy_binary import ENV

    written = re.findall(r"python -m serving\.haproxy_binary (\S+)", (ROOT / "Dockerfile").read_text())
    assert len(written) == 1, written
    for c in _containers():
        env = {e["name"]: e["value"] for e in c.get("env", [])}  # type: ignore[attr-defined]
        assert env.get(ENV) == written[0], c["name"]
