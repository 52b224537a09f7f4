"""Hot reload: time from `publish` to every replica serving the new version, and failed requests
while publishing under load.

    python -m bench.bench_reload [--quick]

Two LookupController replicas polling every POLL_S, one router keeping a local copy (long-poll).
Baseline from the same run: loading and validating that table from the store in-process.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

from bench.report import cli_main

POLL_S = 1.0
CONTROLLERS = 2


def run(quick: bool = False) -> dict[str, Any]:

    from controller.store import TableStore
    from serving.app import build_app_from_config
    from serving.config import ServingConfig
    from serving.local import free_port, local_serve, run_routed
    from tests.support.load import LoadLoop
    from tests.support.reload import ReloadProbe
    from tests.support.tables import synthetic_table

    publishes = 6 if quick else 20
    store_dir = tempfile.mkdtemp(prefix="bench-reload-")
    store = TableStore(store_dir)
    store.publish(synthetic_table())
    load_ms = []
    for _ in range(20):
        t = time.perf_counter()
        store.load()
        load_ms.append((time.perf_counter() - t) * 1000)
    port = free_port()
    lags: list[float] = []
    with local_serve(port):
        config = ServingConfig.model_validate(
            {
                "controller": {"store": store_dir, "poll_interval_s": POLL_S},
                "model": {"backend_options": {"latency_scale": 0.02}},
            }
        )
        run_routed(build_app_from_config(config, {"LookupController": CONTROLLERS}), http_port=port, name="reload",
                   route_prefix="/r")
        base = f"http://127.0.0.1:{port}/r"
        probe = ReloadProbe(base, store_dir, "reload", CONTROLLERS)
        with LoadLoop(f"{base}/v1/generate", (60.0, 120.0, 400.0), concurrency=8) as load:
            time.sleep(1.0)
            waits = []
            for i in range(publishes):
                version = probe.publish(synthetic_table(0.6 if i % 2 == 0 else 1.3)).version_id
                waits.append((version, probe.wait_all_serving(version, 30.0)))
                time.sleep(0.2)
            time.sleep(0.3)
        # Every part's lag from its own timestamps: the replicas' swap stamps, the router's first
        # response carrying the version; the benchmark's polling is not counted.
        lags = [max(probe.lags(version, ctl, load).values()) for version, ctl in waits]
        probe.http.close()
        failed = sum(1 for s in load.samples if s.status != 200)
    lags_ms = sorted(x * 1000 for x in lags)
    return {
        "title": f"Hot reload: publish -> every replica serving ({CONTROLLERS} controllers + router, "
        f"poll {POLL_S:g} s, {publishes} publishes under load)",
        "figures": [
            {
                "name": "publish -> all replicas serving, p50",
                "value": round(statistics.median(lags_ms), 1),
                "unit": "ms",
                "baseline": round(statistics.median(load_ms), 3),
                "baseline_name": "ms to load + validate the table in-process, same run",
                "goal": f"<= {2 * POLL_S * 1000:g} ms (2 x poll)",
                "passed": statistics.median(lags_ms) <= 2000 * POLL_S,
            },
            {
                "name": "publish -> all replicas serving, max",
                "value": round(max(lags_ms), 1),
                "unit": "ms",
                "baseline": POLL_S * 1000,
                "baseline_name": "poll interval (ms)",
                "goal": f"<= {2 * POLL_S * 1000:g} ms (2 x poll)",
                "passed": max(lags_ms) <= 2000 * POLL_S,
            },
            {
                "name": "failed requests during the publishes",
                "value": failed,
                "unit": "",
                "baseline": len(load.samples),
                "baseline_name": "requests sent",
                "goal": "0",
                "passed": failed == 0,
            },
        ],
        "notes": ["lag per publish: the slowest part, from the controller replicas' own swap stamps and the "
                  "completion of the router's first response carrying the version"],
    }


def main() -> None:
    cli_main(run, __doc__)


if __name__ == "__main__":
    main()
