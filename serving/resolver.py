"""How the router gets knobs: a local table copy kept current by version, or a remote batched call."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from controller import Table
from controller.decode_budget import resolve_total
from controller.knobs import Knobs
from controller.ladder import Rung, ladder
from controller.stats import ConfigStats
from serving.config import ControllerSettings, FallbackSettings

log = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class Answer:
    """What the router needs from a decision; `fallback` marks answers made without a table."""

    knobs: Knobs
    expected_accuracy: float | None
    expected_latency_ms: float | None
    feasible: bool | None
    scope: str | None
    table_version: str | None
    budget_ms: float
    tolerance: float | None
    fallback: bool = False
    # Queue-aware resolve (serving.budget_plan): the budget the knobs were resolved for, and why.
    remaining_budget_ms: float | None = None
    queue_wait_ms: float | None = None
    overhead_ms: float | None = None
    policy: str | None = None
    covers: str = "first_token"
    # The config's first-token latency and decode rate (expected_latency_ms is the whole request's
    # when the budget covers it); None where unknown.
    first_token_ms: float | None = None
    decode_ms_per_token: float | None = None
    expected_decode_ms: float | None = None
    # The config's mean first-token latency: what the model is expected to take on average (the
    # queue estimate prices work with it; a quantile table's latency_ms is a tail figure).
    service_ms: float | None = None
    # The scope's ladder (controller.ladder) for this request's coverage: what late binding may
    # choose from at the replica. Empty for answers without a local table.
    rungs: tuple[Rung, ...] = ()
    # "router": the knobs this router resolved; "replica": chosen again by the model replica when
    # the request left its queue (late binding), from the rungs the router sent.
    bound_at: str = "router"

    def model_budget_ms(self) -> float | None:
        """What the model replica may spend: the budget left after the overhead the router expects
        outside the replica (its deadline, when the replica schedules by deadline)."""
        if self.budget_ms is None:
            return None
        return max(0.0, float(self.budget_ms) - float(self.overhead_ms or 0.0))

    @classmethod
    def from_decision_dict(cls, d: dict[str, Any]) -> Answer:
        return cls(
            Knobs(d["tier"], d["top_k"], d["num_active_blocks"]),
            d["accuracy"],
            d["latency"],
            d["feasible"],
            d["scope"],
            d["table_version"],
            d["budget_ms"],
            d["tolerance"],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "knobs": self.knobs.as_dict(),
            "expected_accuracy": self.expected_accuracy,
            "expected_latency_ms": self.expected_latency_ms,
            "feasible": self.feasible,
            "scope": self.scope,
            "table_version": self.table_version,
            "budget_ms": self.budget_ms,
            "tolerance": self.tolerance,
            "fallback": self.fallback,
            "remaining_budget_ms": self.remaining_budget_ms,
            "queue_wait_ms": self.queue_wait_ms,
            "overhead_ms": self.overhead_ms,
            "budget_policy": self.policy,
            "budget_covers": self.covers,
            "expected_decode_ms": self.expected_decode_ms,
            "knobs_bound_at": self.bound_at,
        }


def fallback_answer(fallback: FallbackSettings, budget_ms: float, tolerance: float | None) -> Answer:
    latency = fallback.expected_latency_ms
    feasible = None if latency is None else latency <= budget_ms * (1 + (tolerance or 0.0))
    return Answer(fallback.knobs.to_knobs(), None, latency, feasible, None, None, budget_ms, tolerance, True,
                  first_token_ms=latency, service_ms=latency)


def _mean_first_token(stats: ConfigStats) -> float:
    return stats.latency_mean if stats.latency_mean is not None and stats.latency_mean > 0 else stats.latency_ms


async def await_response(response: Any) -> Any:
    return await response


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
            if max_new_tokens is not None:
                d, decode = resolve_total(table, budget_ms, max_new_tokens, tolerance=tolerance, dataset=dataset)
                return Answer(
                    d.knobs, d.expected_accuracy, d.expected_latency_ms, d.feasible, d.scope, d.table_version,
                    d.budget_ms, d.tolerance, covers="total", first_token_ms=d.stats.latency_ms,
                    decode_ms_per_token=d.stats.decode_ms_per_token, expected_decode_ms=decode,
                    service_ms=_mean_first_token(d.stats), rungs=self.ladders.get(table, d.scope, max_new_tokens),
                )
            d = table.resolve(budget_ms, tolerance=tolerance, dataset=dataset)
            return Answer(
                d.knobs,
                d.expected_accuracy,
                d.expected_latency_ms,
                d.feasible,
                d.scope,
                d.table_version,
                d.budget_ms,
                d.tolerance,
                first_token_ms=d.expected_latency_ms,
                decode_ms_per_token=d.stats.decode_ms_per_token,
                service_ms=_mean_first_token(d.stats),
                rungs=self.ladders.get(table, d.scope, None),
            )
        response = self.controller.resolve.remote(budget_ms, tolerance, dataset)
        try:
            d = await asyncio.wait_for(await_response(response), timeout=self.settings.timeout_s)
        except Exception as e:  # timeout, replica died, controller without a table: fall back
            response.cancel()
            log.debug("Router: controller did not answer (%s); fallback", e)
            return fallback_answer(self.fallback, budget_ms, tolerance)
        answer = Answer.from_decision_dict(d)
        return replace(answer, first_token_ms=answer.expected_latency_ms, service_ms=answer.expected_latency_ms)

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
