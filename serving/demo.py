"""`make demo`: the whole request path on a CPU with the simulated model, then a live table switch.

    python -m serving.demo [--port 8000]

Builds a table from the bundled SYNTHETIC sample results, publishes it to a temporary store, starts
Ray Serve on 127.0.0.1, sends requests with several budgets (one below every config, one bad
header), publishes a second table (p90 latencies instead of means) and shows the version switch.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # as serving.app has it, without importing ray yet
RESULTS = PROJECT_ROOT / "sample_results" / "core_exp_synthetic"
CONFIG = PROJECT_ROOT / "configs" / "serving_local.yaml"
HEADER = "X-Latency-Budget-Ms"
# What the README's next steps run in this venv (`make demo` installs the serve and plot extras).
NEXT_STEPS = """
next (from the project root; README "CLI" and "Serving"):
  .venv/bin/lookupctl serve [--port 8080]     keep the app up on 127.0.0.1; Ctrl-C stops it
  .venv/bin/lookupctl build --results_dir sample_results/core_exp_synthetic --output_file table.json
  .venv/bin/lookupctl inspect --table table.json --plot frontier.png
  lookupctl profile needs the torch extra: make test installs it (README, "Which extra")"""


def _row(label: str, r: object) -> str:
    import httpx

    assert isinstance(r, httpx.Response)
    if r.status_code != 200:
        return f"{label:>10}  -> {r.status_code} {r.json()['error']['message']}"
    b = r.json()
    k = b["knobs"]
    feasible = {True: "feasible", False: "INFEASIBLE"}.get(b["feasible"], "FALLBACK")
    t, backend_ms = b["timings_ms"], b["output"]["timings_ms"]["total"]
    # A fallback answer (controller not ready yet) has no table figures: print what is there.
    expect = "   n/a" if b.get("expected_latency_ms") is None else f"{b['expected_latency_ms']:6.1f}"
    acc = "  n/a" if b.get("expected_accuracy") is None else f"{b['expected_accuracy']:.3f}"
    return (
        f"{label:>10}  -> {k['tier']:<6} top_k={k['top_k']} blocks={k['num_active_blocks']:<2}  "
        f"expect {expect} ms  acc {acc}  {feasible:<10}  "
        f"model {t['model']:5.1f} ms (backend {backend_ms:5.1f})  controller {t['controller'] * 1000:3.0f} us  "
        f"table {(b.get('table_version') or 'none')[-8:]}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0, help="HTTP port (default: a free one)")
    args = parser.parse_args()

    # Token authentication, chosen explicitly: Ray 2.60 turns it on for a new local cluster anyway
    # and warns at start when the mode is left unset. Ray reads the mode when it is imported, so
    # this must come first; a mode set by the caller wins.
    if "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")

    import httpx

    from controller import BuildParams, build_table_from_results
    from controller.store import TableStore
    from serving.app import build_app_from_config
    from serving.config import load_config
    from serving.local import free_port, import_ray_quietly, local_serve, run_routed

    import_ray_quietly()
    store_dir = Path(tempfile.mkdtemp(prefix="lookup-demo-store-"))
    store = TableStore(str(store_dir))
    print(f"building a table from {RESULTS.relative_to(PROJECT_ROOT)} (SYNTHETIC data) ...")
    first = store.publish(build_table_from_results(RESULTS, progress=False).table)
    print(f"published {first.version_id} to {store_dir}")

    config = load_config(CONFIG)
    config = config.model_copy(
        update={"controller": config.controller.model_copy(update={"store": str(store_dir), "poll_interval_s": 0.5})}
    )
    model = config.model.backend_options
    port = args.port or free_port()
    with local_serve(port, num_cpus=4, quiet=True):
        started = time.perf_counter()
        run_routed(build_app_from_config(config), http_port=port, name="moe", route_prefix="/")
        print(f"Serve app up on http://127.0.0.1:{port} in {time.perf_counter() - started:.1f} s")
        if model.get("latency_source") == "table":
            print(
                f"the simulated model runs at {model.get('latency_scale', 1.0)}x of the table's expected latency "
                f"(jitter sigma {model.get('jitter_sigma', 0.05)}): model times follow the chosen configs\n"
            )
        else:
            print(f"the simulated model uses its cost model, latency_scale {model.get('latency_scale', 1.0)}\n")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            print(f"POST /v1/generate with {HEADER}:")
            for budget in ("400", "250", "180", "150", "130", "5"):
                r = c.post("/v1/generate", json={"prompt": "What is in the image?"}, headers={HEADER: budget})
                print(_row(f"{budget} ms", r))
            r = c.post("/v1/generate", json={"prompt": "hi"})
            print(_row("(none)", r) + "   <- default budget")
            print(_row("'fast'", c.post("/v1/generate", json={"prompt": "hi"}, headers={HEADER: "fast"})))

            print("\npublishing a second table: p90 latencies instead of means ...")
            params = BuildParams(latency_quantile=0.9)
            second = store.publish(build_table_from_results(RESULTS, params, progress=False).table)
            t0 = time.perf_counter()
            while c.get("/v1/table").json()["table_version"] != second.version_id:
                if time.perf_counter() - t0 > 30:
                    print("the new version did not arrive within 30 s")
                    return 1
                time.sleep(0.05)
            print(f"router serves {second.version_id} after {time.perf_counter() - t0:.2f} s")
            for budget in ("250", "180", "150"):
                r = c.post("/v1/generate", json={"prompt": "What is in the image?"}, headers={HEADER: budget})
                print(_row(f"{budget} ms", r))
            info = c.get("/v1/table").json()["controller"]
            print(f"\ncontroller: version {info['table_version']}, loaded {info['loaded_at']}")
            print(f"            from {info['loaded_from']}; last rejection: {info['last_rejection']}")
            stats = c.get("/v1/stats").json()
            router, ctl = stats["router"], stats["controller"]
            lat = router["resolve_latency_us"]
            print(
                f"stats:      {router['requests_total']} requests, {router['infeasible']} infeasible, "
                f"{router['fallback']} fallback, bad {router['bad_requests_by_reason']}; "
                f"resolve p50 {lat['p50']:.0f} us p99 {lat['p99']:.0f} us; "
                f"reloads accepted {ctl['reloads_accepted']} rejected {ctl['reloads_rejected']}"
            )
        print("\nshutting down Serve and Ray ...")
    shutil.rmtree(store_dir, ignore_errors=True)
    print("done")
    print(NEXT_STEPS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
