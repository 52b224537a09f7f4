"""How the router gets knobs: a local table copy kept current by version, or a remote batched call."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from controller import Table
from controller.datasets import check_dataset
from controller.decode_budget import resolve_total
from controller.errors import UnknownDatasetError
from controller.ladder import Rung, ladder
from serving.config import ControllerSettings, FallbackSettings
from serving.errors import BadInput
from serving.fast_path import keep_undecodable_session_header, refuse_undecodable_serve_headers
from serving.ingress.answer import Answer
from serving.telemetry.recorder import router_recorder

log = logging.getLogger("ray.serve")


def fallback_answer(fallback: FallbackSettings, budget_ms: float, tolerance: float | None) -> Answer:
    return Answer.without_table(fallback.knobs.to_knobs(), fallback.expected_latency_ms, budget_ms, tolerance)


async def await_response(response: Any) -> Any:
    return await response


DATASET_FIELD = "dataset"  # the query parameter of /v1/knobs; headers.dataset on the other routes


def unknown_dataset(e: UnknownDatasetError) -> BadInput:
    """A 400 naming the datasets the served table knows (docs/serving.md, "Inputs")."""
    listed = ", ".join(e.available) or "none: this table has the global scope only"
    return BadInput(
        DATASET_FIELD, e.name, "is not a dataset of the served table",
        f"send one of: {listed}; or no dataset for the global scope (X-Dataset header, dataset query)",
    )


@dataclass(frozen=True)
class Health:
    """What /healthz says: ok only while answers come from a table."""

    ok: bool
    status: str  # "ok", or "no_table" while the fallback knobs answer
    resolve_mode: str
    table_version: str | None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"status": self.status, "resolve_mode": self.resolve_mode, "table_version": self.table_version}
        if not self.ok:
            out |= {"reason": self.reason, "answers": "fallback knobs (X-Fallback: true) until a table loads"}
        return out


class LocalTable:
    """The router's copy of the controller's table. A background task long-polls the controller
    (`LookupController.watch`) and swaps in each new version with one reference assignment."""

    def __init__(self, controller: Any, watch_timeout_s: float = 5.0) -> None:
        self.controller = controller
        self.watch_timeout_s = watch_timeout_s
        self.table: Table | None = None
        self.loaded_at: str | None = None
        self.syncs = 0
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sync_forever())

    async def sync_once(self) -> bool:
        # Version and content: a version re-served without configs the model disabled is news too.
        known = f"{self.table.version_id}:{self.table.sha256}" if self.table else None
        got = await self.controller.watch.remote(known, self.watch_timeout_s)
        if got is None:
            return False
        version, data = got
        # Full validation (schema, sha256) again: the copy must be exactly what the controller holds.
        table = await asyncio.to_thread(Table.from_json_bytes, data, f"controller:{version}")
        self.table = table
        self.loaded_at = datetime.now(timezone.utc).isoformat()
        self.syncs += 1
        return True

    async def _sync_forever(self) -> None:
        while True:
            try:
                await self.sync_once()
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as e:  # controller replica gone or restarting: try again shortly
                self.last_error = f"{type(e).__name__}: {e}"
                await asyncio.sleep(0.2)

    def status(self) -> dict[str, Any]:
        return {
            "table_version": self.table.version_id if self.table else None,
            "loaded_at": self.loaded_at,
            "loaded_from": "LookupController (long-poll)",
            "syncs": self.syncs,
            "last_error": self.last_error,
        }


class LadderCache:
    """Ladders of the current table by (scope, token count): both bounded (the table's scopes, the
    token limit), so a client cannot grow it; emptied when the table changes."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._table: Table | None = None
        self._rungs: dict[tuple[str, int | None], tuple[Rung, ...]] = {}

    def get(self, table: Table, scope: str, max_new_tokens: int | None) -> tuple[Rung, ...]:
        if table is not self._table:
            self._table, self._rungs = table, {}
        key = (scope, max_new_tokens)
        rungs = self._rungs.get(key)
        if rungs is None:
            if len(self._rungs) >= self.size:
                self._rungs.clear()
            rungs = self._rungs[key] = ladder(table, scope, max_new_tokens)
        return rungs


class Resolver:
    def __init__(self, controller: Any, settings: ControllerSettings, fallback: FallbackSettings) -> None:
        # Every replica of ours that takes HTTP (the doors of either topology, the ReplicaChooser)
        # reads budgets through one Resolver: the budget header is Serve's session header on the
        # fast path, which Ray 2.60 would refuse with a 500 for bytes that are not UTF-8, as it would
        # a request id or multiplexed model id that is not UTF-8 (those get a 400 naming them).
        keep_undecodable_session_header()
        refuse_undecodable_serve_headers(on_refusal=router_recorder().bad_request)
        self.controller, self.settings, self.fallback = controller, settings, fallback
        self.local = LocalTable(controller, watch_timeout_s=max(1.0, 4 * settings.poll_interval_s))
        self.ladders = LadderCache()

    async def start(self) -> None:
        if self.settings.resolve_mode != "local":
            return
        try:
            await asyncio.wait_for(self.local.sync_once(), timeout=10.0)
        except Exception as e:  # the router still answers, with the fallback config, until a table arrives
            log.warning("Router: no table from the controller at start (%s); using fallback until then", e)
        self.local.start()

    async def answer(
        self, budget_ms: float, tolerance: float | None, dataset: str | None, max_new_tokens: int | None = None
    ) -> Answer:
        """`max_new_tokens` given: the budget covers the whole request (first token + decode), which
        the config allows only in local mode."""
        if self.settings.resolve_mode == "fixed":
            return replace(fallback_answer(self.fallback, budget_ms, tolerance), fallback=False)
        if self.settings.resolve_mode == "local":
            table = self.local.table
            if table is None:
                return fallback_answer(self.fallback, budget_ms, tolerance)
            try:
                check_dataset(table, dataset)
            except UnknownDatasetError as e:
                raise unknown_dataset(e) from None
            if max_new_tokens is not None:
                d, decode = resolve_total(table, budget_ms, max_new_tokens, tolerance=tolerance, dataset=dataset)
                return Answer(d, d.budget_ms, d.tolerance, covers="total", expected_decode_ms=decode,
                              rungs=self.ladders.get(table, d.scope, max_new_tokens))
            d = table.resolve(budget_ms, tolerance=tolerance, dataset=dataset)
            return Answer(d, d.budget_ms, d.tolerance, rungs=self.ladders.get(table, d.scope, None))
        response = self.controller.resolve.remote(budget_ms, tolerance, dataset)
        try:
            d = await asyncio.wait_for(await_response(response), timeout=self.settings.timeout_s)
        except UnknownDatasetError as e:  # the controller's table does not know it: the client's error
            raise unknown_dataset(e) from None
        except Exception as e:  # timeout, replica died, controller without a table: fall back
            response.cancel()
            log.debug("Router: controller did not answer (%s); fallback", e)
            return fallback_answer(self.fallback, budget_ms, tolerance)
        return Answer(d, d.budget_ms, d.tolerance)  # the controller's Decision, as Table.resolve made it

    async def health(self) -> Health:
        mode = self.settings.resolve_mode
        if mode == "fixed":
            return Health(True, "ok", mode, None)
        if mode == "local":
            table = self.local.table
            if table is not None:
                return Health(True, "ok", mode, table.version_id)
            # /healthz needs no key: the error's kind only, never its text (store paths).
            kind = (self.local.last_error or "").split(":", 1)[0]
            why = "no table from the LookupController yet" + (f" (last sync failed: {kind})" if kind else "")
            return Health(False, "no_table", mode, None, why[:200])
        # remote: every answer is the controller's, so its table is what counts
        response = self.controller.health.remote()
        try:
            got = await asyncio.wait_for(await_response(response), timeout=self.settings.timeout_s * 4)
        except Exception as e:  # noqa: BLE001 - a controller that does not answer is the reason
            response.cancel()
            return Health(False, "no_table", mode, None, f"controller did not answer ({type(e).__name__})")
        version, why = got
        if version is None:
            return Health(False, "no_table", mode, None, str(why)[:200])
        return Health(True, "ok", mode, version)

    async def controller_status(self) -> dict[str, Any]:
        if self.controller is None:
            return {"error": "no controller in resolve_mode=fixed"}
        started = time.perf_counter()
        try:
            status = await asyncio.wait_for(
                await_response(self.controller.status.remote()), self.settings.timeout_s * 4
            )
        except Exception as e:
            return {"error": f"controller did not answer: {type(e).__name__}: {e}"}
        status["answered_in_ms"] = round((time.perf_counter() - started) * 1000, 3)
        return dict(status)
