"""Hostile clients and publishers: router memory under random unknown JSON keys, and concurrent
publishes.

    python -m bench.bench_hostile [--quick]

Router RSS (from /proc, same machine) before and after N requests whose bodies carry a random
100 kB key each (before the fix every key became a permanent counter key and metric tag). The
baseline is the RSS before, after a warm-up of the same requests. Concurrent publishes: P processes
x R rounds into one store; lost = publishes whose version LATEST skipped over.
"""

from __future__ import annotations

import json
import random
import string
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.report import cli_main
from tests.support.publisher import PUBLISHER

KEY_CHARS = 100_000


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _router_pid(app: str) -> int:
    """Ray titles a replica's process `ray::ServeReplica:<app>:<deployment>`."""
    title = f"ServeReplica:{app}:Router".encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if title in (proc / "cmdline").read_bytes():
                    return int(proc.name)
            except OSError:
                continue
    raise RuntimeError(f"no process titled {title.decode()}")


def _unknown_keys(url: str, n: int, seed: int) -> int:
    import httpx

    rng = random.Random(seed)
    bad = 0
    with httpx.Client(timeout=60) as c:
        for _ in range(n):
            key = "".join(rng.choices(string.ascii_letters, k=KEY_CHARS))
            r = c.post(url, content=json.dumps({"prompt": "x", key: 1}), headers={"content-type": "application/json"})
            bad += r.status_code == 400
    return bad


def _big_bodies(url: str, clients: int, n: int, size: int) -> set[int]:
    """n bodies of `size` bytes from `clients` threads at once (each over the 8 MiB default limit)."""
    import concurrent.futures

    import httpx

    body = b'{"prompt": "' + b"x" * size + b'"}'

    def send(_: int) -> int:
        with httpx.Client(timeout=120) as c:
            return c.post(url, content=body, headers={"content-type": "application/json"}).status_code

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return set(pool.map(send, range(n)))


def _concurrent_publishes(publishers: int, rounds: int) -> tuple[int, int]:
    from controller.store import TableStore
    from tests.support.tables import synthetic_table

    tmp = Path(tempfile.mkdtemp(prefix="bench-publish-"))
    synthetic_table().save(tmp / "t.json")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PUBLISHER, str(tmp / "store"), str(tmp / "t.json"), str(rounds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(publishers)
    ]
    reports = [json.loads(line) for p in procs for line in p.communicate(timeout=600)[0].splitlines()]
    store = TableStore(str(tmp / "store"))
    ids = store.version_ids()
    lost = sum(r["after"] != r["id"] for r in reports) + (store.latest_id() != ids[-1])
    return len(reports), lost


def run(quick: bool = False) -> dict[str, Any]:
    from ray import serve

    from controller.store import TableStore
    from serving.app import build_app_from_config
    from serving.config import ServingConfig
    from serving.local import free_port, local_serve
    from tests.support.tables import synthetic_table

    n = 300 if quick else 1000
    store_dir = tempfile.mkdtemp(prefix="bench-hostile-")
    TableStore(store_dir).publish(synthetic_table())
    port = free_port()
    with local_serve(port, quiet=True):
        config = ServingConfig.model_validate(
            {"controller": {"store": store_dir}, "model": {"backend_options": {"latency_scale": 0}}}
        )
        serve.run(build_app_from_config(config), name="hostile", route_prefix="/h")
        url = f"http://127.0.0.1:{port}/h/v1/generate"
        pid = _router_pid("hostile")
        _unknown_keys(url, 200, seed=1)  # warm-up: allocator and caches settle first
        before = _rss_mb(pid)
        refused = _unknown_keys(url, n, seed=2)
        after = _rss_mb(pid)
        codes = _big_bodies(url, 8, 16, 50_000_000)
        after_big = _rss_mb(pid)
        serve.delete("hostile")
    published, lost = _concurrent_publishes(4, 10)
    growth = (after - before) / before * 100
    return {
        "title": f"Hostile clients and publishers ({n} requests with a random {KEY_CHARS // 1000} kB key each; "
        "4 publishers x 10)",
        "figures": [
            {
                "name": f"router RSS after {n} random-key requests",
                "value": round(after, 1),
                "unit": "MB",
                "baseline": round(before, 1),
                "baseline_name": "router RSS before them (after 200 warm-up), same run",
                "goal": "within 5% of before",
                "passed": abs(growth) <= 5,
            },
            {
                "name": "requests refused with 400",
                "value": refused,
                "unit": "",
                "baseline": n,
                "baseline_name": "requests sent",
                "goal": "all",
                "passed": refused == n,
            },
            {
                "name": "router RSS after 16 x 50 MB bodies from 8 clients",
                "value": round(after_big, 1),
                "unit": "MB",
                "baseline": round(after, 1),
                "baseline_name": "router RSS before them, same run (2.1 GB before the limits)",
                "goal": "every body refused with 413; RSS < 2 x before",
                "passed": codes == {413} and after_big < 2 * after,
            },
            {
                "name": "concurrent publishes lost",
                "value": lost,
                "unit": "",
                "baseline": published,
                "baseline_name": "publishes by 4 processes",
                "goal": "0 of >= 40",
                "passed": lost == 0 and published >= 40,
            },
        ],
        "notes": [f"RSS change {growth:+.1f}%"],
    }


def main() -> None:
    cli_main(run, __doc__)


if __name__ == "__main__":
    main()
