"""`ReplicaChooser`: which MoEModel replica takes an HTTP request (topology model_ingress, with
`model.routing.ingress_chooser`), asked by HAProxy before it forwards the request.

This is Serve's ingress request router (`Application._with_ingress_request_router`, an internal hook
of Ray 2.60 that Serve LLM's direct streaming uses). HAProxy's Lua action POSTs /internal/route here
for every POST to the app, with one header of the client's request: the one named by
`RAY_SERVE_SESSION_ID_HEADER_KEY`, which serving.fast_path sets to the budget header. The answer
names a replica; HAProxy forwards the client's request straight to it. GETs (/healthz, /v1/stats)
never come here: HAProxy balances them itself (leastconn).

The chooser resolves the budget on its own table copy as the doors would at an idle replica (knobs
and the table's first-token figure for them), and lets MoEModel's request router rank the replicas with that
(`handle.choose_replica(query, _reserve=False)` runs serving.replica.budget_router in this process,
on the replicas' routing reports). A request never fails here for want of a budget: a missing or
malformed header, or no table yet, still gets a replica (least expected wait among fresh reports,
else Serve's power of two choices). Only when no replica can be named in time does HAProxy answer
503 ("Ingress request router failed").
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import Counter
from typing import Any

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from serving.config import ServingConfig
from serving.errors import BadInput
from serving.ingress.inputs import parse_budget
from serving.ingress.resolver import Resolver
from serving.wire import ReplicaQuery

log = logging.getLogger("ray.serve")

# Serve's name for the header HAProxy forwards to the ingress request router (its default, when unset).
FORWARDED_HEADER_ENV = "RAY_SERVE_SESSION_ID_HEADER_KEY"
SERVE_DEFAULT_FORWARDED = "x-session-id"
# HAProxy waits 5 s for an answer (RAY_SERVE_HAPROXY_INGRESS_REQUEST_ROUTER_TIMEOUT_S) before it
# answers 503 itself; a choice that takes longer (no replica running) ends here first, with a reason.
MAX_CHOOSE_S = 4.0
UNKNOWN = ReplicaQuery(None, None, None)


def budget_of(raw: str | None, config: ServingConfig) -> float | None:
    """The budget (ms) to place a request by: its header as the doors read it (absent: the default),
    less the configured allowance outside the replica; None where the doors would refuse it (they
    answer the 400; any replica can)."""
    try:
        budget = parse_budget(raw, config.headers.budget, config.budget)
    except BadInput:
        return None
    return max(budget - config.budget.proxy_overhead_ms, 0.0)


def forwarded_header() -> str:
    """The header HAProxy forwards here (lower-case), as Serve in this process reads it."""
    return os.environ.get(FORWARDED_HEADER_ENV, SERVE_DEFAULT_FORWARDED).lower()


class ReplicaChooserReplica:
    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self, model: Any, controller: Any, config: dict[str, Any]
    ) -> None:
        self.config = ServingConfig.model_validate(config)
        self.model = model
        c = self.config.controller
        # Always a local copy: a remote resolve would add a second hop to every request's first one.
        settings = c.model_copy(update={"resolve_mode": "local" if controller is not None else "fixed"})
        self.resolver = Resolver(controller, settings, self.config.fallback)
        self.header = self.config.headers.budget.lower()
        self.counts: Counter[str] = Counter()
        if forwarded_header() != self.header:
            log.warning(
                "ReplicaChooser: HAProxy forwards %s=%r, not the budget header %r: every request is placed "
                "by the default budget. Set %s=%s where Ray starts (serving/fast_path.py does).",
                FORWARDED_HEADER_ENV, forwarded_header(), self.header, FORWARDED_HEADER_ENV, self.header)
        await self.resolver.start()

    async def query(self, raw_budget: str | None) -> ReplicaQuery:
        budget = budget_of(raw_budget, self.config)
        if budget is None:
            self.counts["bad_budget"] += 1
            return UNKNOWN
        answer = await self.resolver.answer(max(budget, 1e-3), None, None)
        self.counts["fallback_knobs" if answer.fallback else "resolved"] += 1
        # The figure the doors hold against the budget (the table's tail first token), so that a
        # replica "fits" only where the doors there would still run these knobs.
        return ReplicaQuery(answer.knobs, answer.first_token_ms, budget)

    async def choose(self, query: ReplicaQuery) -> dict[str, Any]:
        """{"host", "port", "replica_id"} of the replica MoEModel's request router ranks first."""
        async with self.model.choose_replica(query, _reserve=False) as selection:
            replica = selection._replica  # Serve LLM's LLMRouter reads the same two fields
            endpoint = replica.backend_http_endpoint
            if endpoint is None:
                raise RuntimeError(f"replica {selection.replica_id} has no HTTP endpoint yet")
            host, port = endpoint
            return {"host": host, "port": port, "replica_id": replica.replica_id.to_full_id_str()}

    async def __call__(self, request: Request) -> Response:
        if request.method != "POST":
            return _json({"status": "ok", "counts": dict(self.counts)})
        try:
            query = await self.query(request.headers.get(self.header))
        except Exception:  # noqa: BLE001 - a resolve bug must not cost the request its replica
            log.exception("ReplicaChooser: resolving the budget failed; placing without it")
            self.counts["resolve_error"] += 1
            query = UNKNOWN
        try:
            picked = await asyncio.wait_for(self.choose(query), MAX_CHOOSE_S)
        except Exception as e:  # noqa: BLE001 - HAProxy answers the client 503 for any non-200
            self.counts["no_replica"] += 1
            log.warning("ReplicaChooser: no replica named (%s: %s)", type(e).__name__, e)
            return _json({"detail": f"no MoEModel replica could be chosen: {type(e).__name__}"}, 503)
        return _json(picked)

    def stats(self) -> dict[str, int]:
        """How requests were placed: resolved budgets, fallback knobs, bad budgets, none named."""
        return dict(self.counts)


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(body), status_code=status, media_type="application/json")


# Serve pins one replica to each node that runs HAProxy (RAY_SERVE_INGRESS_ROUTER_REPLICAS_PER_NODE);
# no CPU reserved, as Serve LLM's router: it must fit beside the proxy on any node.
ReplicaChooser = serve.deployment(
    name="ReplicaChooser", max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0}
)(ReplicaChooserReplica)

