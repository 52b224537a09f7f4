"""Driver for test_two_nodes.py, run in its own interpreter (the test process already belongs to the
shared single-node Ray): python -m tests.e2e.two_node_driver ADDRESS STORE HTTP_PORT WORKER_PID

Deploys the app over a head and a worker node (one controller and one model replica on each, the
router on the head), checks that a publish is served by both nodes, then kills the worker node's
replicas under load and checks for labelled 503s at most, then recovery. Exit status 0: all held.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

APP = "twonode"


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(proc.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _worker_replica_pids(worker_pid: int) -> list[int]:
    """Replica processes of this app under the worker node's `ray start` (its raylet's workers)."""
    pids = []
    for pid in _descendants(worker_pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if f"ServeReplica:{APP}:".encode() in cmd:
            pids.append(pid)
    return pids


def _until(pred: Any, what: str, limit_s: float = 120.0) -> Any:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"not reached within {limit_s} s: {what}")


def main(address: str, store_dir: str, http_port: int, worker_pid: int) -> int:
    import httpx
    import ray
    from ray import serve

    from controller.store import TableStore
    from serving.app import build_app_from_config
    from serving.config import ServingConfig
    from serving.errors import ModelCallError
    from serving.local import import_ray_quietly
    from tests.support.load import LoadLoop
    from tests.support.tables import synthetic_table

    import_ray_quietly()
    ray.init(address=address, log_to_driver=False)
    _until(lambda: len([n for n in ray.nodes() if n["Alive"]]) == 2, "the worker node joined", 90)
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": http_port})
    store = TableStore(store_dir)
    first = store.publish(synthetic_table())
    config = ServingConfig.model_validate(
        {
            "controller": {"store": store_dir, "poll_interval_s": 0.5},
            "model": {"backend_options": {"latency_scale": 0.02}, "assign_timeout_s": 2.0},
        }
    )
    # One controller and one model replica per node (each node has one slot of each), router on the head.
    placement = {
        "LookupController": {"resources": {"ctl_slot": 1}},
        "MoEModel": {"num_cpus": 0.5, "resources": {"model_slot": 1}},
        "Router": {"resources": {"head_slot": 0.01}},
    }
    app = build_app_from_config(config, {"LookupController": 2, "MoEModel": 2}, placement)
    serve.run(app, name=APP, route_prefix=f"/{APP}")
    base = f"http://127.0.0.1:{http_port}/{APP}"
    controller = serve.get_deployment_handle("LookupController", app_name=APP)
    http = httpx.Client(base_url=base, timeout=30)

    def versions() -> dict[str, str]:
        seen = {}
        for r in [controller.status.remote() for _ in range(12)]:
            s = r.result(timeout_s=30)
            seen[s["replica_id"]] = s["table_version"]
        return seen

    assert http.post("/v1/generate", json={"prompt": "hi"}).json()["table_version"] == first.version_id
    # A publish is served by both nodes: both controller replicas, and answers from both model replicas.
    with LoadLoop(f"{base}/v1/generate", (60.0, 120.0, 400.0), concurrency=4) as load:
        second = store.publish(synthetic_table(latency_scale=0.7))
        _until(lambda: len(v := versions()) == 2 and set(v.values()) == {second.version_id}, "both nodes serve it")
        models: set[str] = set()

        def both_models() -> bool:
            r = http.post("/v1/generate", json={"prompt": f"p{time.monotonic()}"})
            body = r.json()
            if r.status_code == 200 and body["table_version"] == second.version_id:
                models.add(body["output"]["batch_id"].split(":")[0])
            return len(models) == 2

        _until(both_models, "answers from both model replicas with the new version")
    failed = [s for s in load.samples if s.status != 200]
    assert not failed, failed[:3]
    print(f"publish served by both nodes: controllers {sorted(versions())}, models {sorted(models)}")

    # Kill the worker node's replicas under load: labelled 503s at most, then recovery.
    victims = _worker_replica_pids(worker_pid)
    assert len(victims) == 2, victims  # its controller and its model replica
    with LoadLoop(f"{base}/v1/generate", (60.0, 120.0, 400.0), concurrency=4) as load:
        time.sleep(1.0)
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        probes: list[tuple[int, str | None]] = []

        def probe_until_restarted() -> bool:
            try:
                r = http.post("/v1/generate", json={"prompt": "probe"})
                probes.append((r.status_code, r.headers.get("X-Error-Type")))
            except httpx.HTTPError:  # its request was in flight on the killed replica (below)
                probes.append((0, None))
            return len(_worker_replica_pids(worker_pid)) == 2

        _until(probe_until_restarted, "worker replicas restarted")
        # The model replicas are the HTTP ingress (topology model_ingress): requests in flight on the
        # killed one lose their connection (0) or get HAProxy's 502/503; every other failure is one
        # of ours, labelled. A handful at most: HAProxy stops sending to a dead server at once.
        dropped = {0, 502, 503}
        unlabelled = [p for p in probes if p[0] not in (200, *dropped) and p[1] not in ModelCallError.KINDS]
        assert not unlabelled, unlabelled[:3]
        _until(
            lambda: (
                serve.status().applications[APP].status == "RUNNING"
                and all(d.status == "HEALTHY" for d in serve.status().applications[APP].deployments.values())
            ),
            "app healthy again",
        )
        _until(lambda: len(v := versions()) == 2 and set(v.values()) == {second.version_id}, "new controller serves")
        time.sleep(1.0)
    statuses = [s.status for s in load.samples]
    bad = [s for s in load.samples if s.status not in (200, 503)]
    # At most the requests in flight on the killed replica when it died (4 clients) plus a few a
    # kept-alive connection to it carried before HAProxy marked it down.
    assert len(bad) + sum(p[0] in (0, 502) for p in probes) <= 12, bad[:3]
    after = load.samples[-20:]
    assert after and all(s.status == 200 for s in after), after
    print(f"worker replicas killed under load: {len(statuses)} requests, {statuses.count(503)} x 503, "
          f"{len(bad)} dropped with the replica, then recovery")
    serve.delete(APP)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
