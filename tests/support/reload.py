"""Publishing tables to a running app and timing each replica's takeover (hot-reload test and benchmark)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from controller import Table
from tests.support.load import LoadLoop


class ReloadProbe:
    """Publishes tables to a running app's store and reports when each replica took them over,
    from the replicas' own swap stamps and the load loop's response times (used by the hot-reload
    test and the reload benchmark)."""

    def __init__(self, base: str, store: str, app_name: str, controllers: int) -> None:
        import httpx
        from ray import serve

        from controller.store import TableStore

        self.base, self.store_dir, self.store = base, Path(store), TableStore(store)
        self.controllers = controllers
        self.tables: dict[str, Table] = {}
        self.published_at: dict[str, tuple[float, float]] = {}
        self.handle = serve.get_deployment_handle("LookupController", app_name=app_name)
        self.http = httpx.Client(base_url=base, timeout=30)

    def publish(self, table: Table) -> Table:
        published = self.store.publish(table)
        # The publish's completion, on both clocks: wall time for the controllers' swap stamps,
        # perf_counter for the load loop's response times.
        self.published_at[published.version_id] = (time.time(), time.perf_counter())
        self.tables[published.version_id] = published
        return published

    def controller_versions(self) -> dict[str, dict[str, Any]]:
        """Status of every controller replica (calls are spread over replicas at random)."""
        seen: dict[str, dict[str, Any]] = {}
        for _ in range(5):
            for r in [self.handle.status.remote() for _ in range(8)]:
                s = r.result(timeout_s=30)
                seen[s["replica_id"]] = s
            if len(seen) >= self.controllers:
                break
        return seen

    def wait_all_serving(self, version: str, limit_s: float) -> dict[str, dict[str, Any]]:
        """Waits until every controller replica and the router serve `version`; returns the replicas'
        statuses. Only a wait: how long each part took is measured from timestamps, see lags()."""
        started = time.monotonic()
        while time.monotonic() - started < limit_s + 5:
            ctl = self.controller_versions()
            router = self.http.get("/v1/table").json()["table_version"]
            if len(ctl) >= self.controllers and all(s["table_version"] == version for s in ctl.values()):
                if router == version:
                    return ctl
            time.sleep(0.05)
        raise TimeoutError(f"{version} not served everywhere after {limit_s + 5} s")

    def lags(self, version: str, controllers: dict[str, dict[str, Any]], load: LoadLoop) -> dict[str, float]:
        """Seconds from the publish's completion until each controller replica swapped the version in
        (its own clock stamp) and until the router's first response carrying it completed (the load
        loop's clock): no polling delay of the test itself is counted."""
        wall, perf = self.published_at[version]
        lags = {f"controller {rid}": s["serving_since_unix"] - wall for rid, s in controllers.items()}
        carried = [s.started + s.latency_s for s in load.samples if s.table_version == version]
        if not carried:
            raise RuntimeError(f"no response carried {version}")
        lags["router (first response)"] = min(carried) - perf
        return lags

