"""`LookupController`: serves budget -> knobs from the newest valid table in the store."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from ray import serve

from controller import Table
from controller.datasets import check_dataset
from controller.decision import Decision
from controller.signing import read_key_file
from controller.store import TableStore
from controller.validate import validate_budget, validate_tolerance
from serving.config import BatchSettings, ControllerSettings
from serving.errors import NoTableError
from serving.lookup.live_feedback import LiveFeedback
from serving.lookup.table_watcher import TableWatcher
from serving.telemetry.live_metrics import live_metrics
from serving.telemetry.recorder import controller_recorder
from serving.wire import SupportedRanges

log = logging.getLogger("ray.serve")
RANGES_TIMEOUT_S = 5.0
RANGES_REFRESH_S = 30.0
# @serve.batch needs values at import; every replica sets its own from config (ControllerSettings.batch).
_DEFAULT_BATCH = BatchSettings()


def _sign_key(config: ControllerSettings) -> bytes | None:
    return read_key_file(config.verify_key_file) if config.verify_key_file else None


def _store(config: ControllerSettings) -> TableStore:
    """With verify_key_file, only versions signed with that key load (controller/signing.py)."""
    return TableStore(config.store, verify_key=_sign_key(config))


async def _awaited(response: Any) -> Any:
    return await response


def _replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica (direct unit use)
        return "local"


def served_key(table: Table) -> str:
    return f"{table.version_id}:{table.sha256}"


@serve.deployment(
    name="LookupController",
    max_ongoing_requests=1000,
    ray_actor_options={"num_cpus": 0},
    health_check_period_s=2,
    # Long-polls from routers end on their own within watch_timeout_s; no need to wait long.
    graceful_shutdown_timeout_s=2,
)
class LookupController:
    async def __init__(  # type: ignore[misc]  # Serve awaits it
        self, user_config: dict[str, Any], model: Any = None, model_deployment: str | None = None
    ) -> None:
        # The table is loaded here, not only in reconfigure: a replica is useful from its first request.
        self.config = ControllerSettings.from_user_config(user_config)
        self._set_batch(self.config.batch)
        # The model deployment publishes the knob ranges it can run; a table with a config outside
        # them is rejected like a corrupt one (None: no model to ask, e.g. a bare controller).
        self.model = model
        if model is None and model_deployment is not None:
            # The model replica is the ingress and holds a handle to this controller, so this one
            # cannot be bound to it as well: look it up by name in this app (resolved on first call).
            app = serve.get_replica_context().app_name
            self.model = serve.get_deployment_handle(model_deployment, app_name=app)
        self.ranges: SupportedRanges | None = None
        self._ranges_at = 0.0
        self.replica_id = _replica_id()
        self.recorder = controller_recorder()
        self.watcher = TableWatcher(_store(self.config), self.config.version)
        self.table: Table | None = None
        self._table_bytes = b""
        self._served_since: float | None = None  # wall clock of the last swap (unix seconds)
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()
        # Live latency from the routers' observations (serving.lookup.live_feedback).
        self.live = LiveFeedback(self.config.feedback, self.config.store, self.replica_id, _sign_key(self.config))
        self._live_task = asyncio.get_running_loop().create_task(self._live_forever())
        await self._check_once()
        if self.watcher.table is None:
            log.warning("LookupController: no valid table yet (%s); polling", self._why_no_table())
        self._task = asyncio.get_running_loop().create_task(self._watch_forever())

    # -- configuration and health ----------------------------------------------------------------

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Quick by design: Serve takes the replica out of routing while this runs."""
        new = ControllerSettings.from_user_config(user_config)
        if (new.store, new.version, new.verify_key_file) != (
            self.config.store,
            self.config.version,
            self.config.verify_key_file,
        ):
            self.watcher.retarget(_store(new), new.version)
            self._wake.set()  # the watcher task loads the newly targeted version off the loop
        if new.feedback != self.config.feedback or new.store != self.config.store:
            self.live = LiveFeedback(new.feedback, new.store, self.replica_id, _sign_key(new))  # a new window
        self.config = new
        self._set_batch(new.batch)

    def _set_batch(self, batch: BatchSettings) -> None:
        # serve.batch's annotations lose the method's type; its setters exist at run time.
        batched: Any = self._resolve_batch  # type: ignore[misc]  # serve.batch is annotated for one-list methods
        batched.set_max_batch_size(batch.max_batch_size)
        batched.set_batch_wait_timeout_s(batch.batch_wait_timeout_s)

    def check_health(self) -> None:
        # A rejected new version is not a health problem: the old table keeps serving. Nor is a
        # model still loading: restarting the controller would not make it load faster.
        if self.watcher.table is None and not (self.model is not None and self.ranges is None):
            raise NoTableError(f"LookupController has never loaded a valid table: {self._why_no_table()}")

    async def health(self) -> tuple[str | None, str | None]:
        """(version served, None), or (None, why) without store paths: the router's /healthz in
        remote mode, which needs no key. Cheap: no summary, no table bytes."""
        if self.table is not None:
            return self.table.version_id, None
        rej = self.watcher.last_rejection
        if self.model is not None and self.ranges is None:
            return None, "waiting for the model's supported knob ranges"
        if rej is not None:
            return None, f"no valid table: {self.watcher.rejected} version(s) rejected, last {rej.version_id}"
        return None, "no table in the store yet, or the store cannot be read (see /v1/stats)"

    def _why_no_table(self) -> str:
        rej = self.watcher.last_rejection
        return self.watcher.last_error or (f"{rej.version_id} rejected: {rej.reason}" if rej else "unknown")

    # -- hot reload --------------------------------------------------------------------------------

    async def _refresh_ranges(self) -> bool:
        """True when the model's supported ranges are known (fetched at most every RANGES_REFRESH_S;
        a model redeployed with other options may change them)."""
        if self.model is None:
            return True
        if self.ranges is not None and time.monotonic() - self._ranges_at < RANGES_REFRESH_S:
            return True
        response = self.model.supported_ranges.remote()
        try:
            got = await asyncio.wait_for(_awaited(response), timeout=RANGES_TIMEOUT_S)
            self.ranges, self._ranges_at = SupportedRanges.from_dict(got), time.monotonic()
        except Exception as e:  # model starting or down: keep the ranges known, if any
            response.cancel()
            if self.ranges is None:
                self.watcher.last_error = (
                    f"waiting for the model deployment's supported knob ranges ({type(e).__name__}); "
                    "no table is accepted before they are known"
                )
        return self.ranges is not None

    def _check_supported(self, table: Table) -> None:
        # Ranges and tiers reject a version; configs the model disabled (a failed graph capture)
        # are left out of what is served instead (_servable), unless nothing would be left.
        if self.ranges is not None:
            dataclasses.replace(self.ranges, disabled=()).check_configs(table.all_knobs())
            self._servable(table)

    def _servable(self, table: Table) -> Table:
        """`table` minus the configs the model disabled: the router never chooses them."""
        return table.without_configs(self.ranges.disabled if self.ranges is not None else ())

    async def _check_once(self) -> None:
        if not await self._refresh_ranges():
            return
        outcome, table = await asyncio.to_thread(self.watcher.check, self._check_supported)
        # The watcher counts the versions it accepted and rejected (/v1/stats); the metric follows
        # (a bad LATEST at start, then an earlier valid version taken, is one of each).
        self.recorder.reloads(self.watcher.accepted, self.watcher.rejected)
        if outcome == "accepted" and table is not None:
            table = self._servable(table)
            data = await asyncio.to_thread(table.to_json_bytes)
            self._swap(table, data)
        elif self.table is not None and self.watcher.table is not None and outcome != "rejected":
            # The model's disabled configs may have changed since this version was accepted.
            servable = self._servable(self.watcher.table)
            if servable.sha256 != self.table.sha256:
                data = await asyncio.to_thread(servable.to_json_bytes)
                self._swap(servable, data)
        elif outcome == "rejected" and self.watcher.last_rejection is not None:
            rej = self.watcher.last_rejection
            log.warning("LookupController: rejected table %s: %s", rej.version_id, rej.reason)

    def _swap(self, table: Table, data: bytes) -> None:
        old = self.table
        self._table_bytes = data
        self.table = table  # the one reference assignment readers see
        self._served_since = time.time()
        self.recorder.serving(old.version_id if old is not None else None, table.version_id)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        log.info("LookupController %s: serving table %s", self.replica_id, table.version_id)

    async def _watch_forever(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.config.poll_interval_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._check_once()
            except Exception:  # never let the watcher die; the next poll tries again
                log.exception("LookupController: table check failed")

    # -- answers -----------------------------------------------------------------------------------

    async def resolve(
        self, budget_ms: float, tolerance: float | None = None, dataset: str | None = None
    ) -> Decision:
        """`Table.resolve` on this replica's table, batched with other callers' budgets: the same
        `Decision` (the router's remote mode; `Decision.to_dict()` for JSON)."""
        # Validated one by one so that one bad budget cannot fail a whole batch.
        budget = validate_budget(budget_ms)
        tol = None if tolerance is None else validate_tolerance(tolerance)
        if self.table is not None:  # an unknown dataset is the caller's error (UnknownDatasetError)
            check_dataset(self.table, dataset)
        batched: Any = self._resolve_batch  # type: ignore[misc]  # serve.batch is annotated for one-list methods
        decision: Decision = await batched(budget, tol, dataset)
        return decision

    @serve.batch(  # type: ignore[arg-type]  # serve.batch is annotated for one-list methods
        max_batch_size=_DEFAULT_BATCH.max_batch_size, batch_wait_timeout_s=_DEFAULT_BATCH.batch_wait_timeout_s
    )
    async def _resolve_batch(  # type: ignore[misc]  # (the same annotation gap)
        self, budgets: list[float], tolerances: list[float | None], datasets: list[str | None]
    ) -> list[Decision]:
        table = self.table  # one table for the whole batch: every answer carries its version
        if table is None:
            raise NoTableError(f"no table loaded yet: {self._why_no_table()}")
        self.recorder.batch(len(budgets))
        groups: dict[tuple[float | None, str | None], list[int]] = {}
        for i, key in enumerate(zip(tolerances, datasets, strict=True)):
            groups.setdefault(key, []).append(i)
        out: dict[int, Decision] = {}
        for (tol, dataset), idx in groups.items():
            decisions = table.resolve_many([budgets[i] for i in idx], tolerance=tol, dataset=dataset)
            for i, d in zip(idx, decisions, strict=True):
                out[i] = d
        return [out[i] for i in range(len(budgets))]

    async def watch(self, known_version: str | None, timeout_s: float = 5.0) -> tuple[str, bytes] | None:
        """Long-poll for routers that keep a local copy: returns (version, table bytes) as soon as
        this replica serves a version other than `known_version`, or None after timeout_s."""
        table, data = self.table, self._table_bytes
        # `known_version` is "<version_id>:<sha256>" (or a bare id): the same version re-served
        # without configs the model disabled is new content for the router.
        if table is None or known_version in (table.version_id, served_key(table)):
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=min(timeout_s, 30.0))
            except asyncio.TimeoutError:
                return None
            table, data = self.table, self._table_bytes
        if table is None or known_version in (table.version_id, served_key(table)):
            return None
        return table.version_id, data

    async def status(self) -> dict[str, Any]:
        table = self.table
        return {
            "replica_id": self.replica_id,
            **self.watcher.status(),
            "poll_interval_s": self.config.poll_interval_s,
            # When this replica started answering with table_version (loaded_at is when it was read).
            "serving_since_unix": self._served_since,
            "summary": table.summary() if table else None,
            "live": self.live.status(),
        }

    # -- live latency feedback -------------------------------------------------------------------

    async def record_live(self, observations: Any) -> int:
        """Observations from routers (serving.feedback); invalid ones and configs outside the
        served table are counted and dropped. Returns how many were kept."""
        if not self.config.feedback.enabled:
            return 0
        return self.live.record(observations, self.table)

    async def _live_forever(self) -> None:
        """Every flush interval: write this replica's snapshot to the store, update the metrics,
        and (automatic mode) publish a recalibrated table when drift holds long enough."""
        metrics = live_metrics()
        while True:
            await asyncio.sleep(self.config.feedback.flush_interval_s)
            live = self.live
            if not self.config.feedback.enabled:
                continue
            published, errors = await asyncio.to_thread(live.flush, self.table)
            try:
                if published is not None:
                    metrics.auto_publishes.inc()
                    self._wake.set()  # load it now rather than at the next poll
                for k, v in live.live().items():
                    p95 = (v.total if self.table and self.table.build.latency_metric == "total" else v.first_token)
                    if p95.count:
                        metrics.p95.set(p95.quantile(0.95) or 0.0, tags={"config": k.key})
                    metrics.samples.set(v.count, tags={"config": k.key})
                for key, d in live.last_drift.items():
                    metrics.drift.set(d, tags={"config": key})
            except Exception as e:  # never let the feedback task die; say why in /v1/stats
                errors.append(f"metrics: {type(e).__name__}: {e}")
            if not errors:
                live.last_error = None
            else:
                first = live.last_error is None
                live.last_error = "; ".join(errors)[:300]
                if first:  # once per episode, not every flush
                    log.warning("LookupController: live feedback step failed: %s", live.last_error)
