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
