"""Serve's request router for MoEModel, budget-aware: the thin side-effect half of
serving.replica.placement (this module reads Serve's replicas and the pending call, remembers what
it sent, and hands Serve the ranking).

Configured on the deployment (serving.app) with `RequestRouterConfig(request_router_class=...)`;
Serve polls each replica's `record_routing_stats` every `request_routing_stats_period_s` and puts
the dict on `RunningReplica.routing_stats`. Serve then tries the ranks in order, checking each
replica's queue length against max_ongoing_requests, so a full replica is passed over by Serve
itself. Nothing here may raise into Serve's routing loop: any failure falls back to Serve's own
choice (power of two choices on queue length).

A `ReplicaQuery` (serving.ingress.replica_chooser, through `choose_replica(..., _reserve=False)`) is a
choice without a call: Serve takes the first replica of the first rank and never reports the call
routed or completed, so the choice itself is remembered as sent there; like every call sent, it
counts on top of that replica's reports until one made after it.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from ray.serve.request_router import FIFOMixin, PendingRequest, ReplicaID, RequestRouter, RunningReplica

from serving.replica.placement import CallView, InFlight, Placement, place
from serving.wire import ReplicaQuery

log = logging.getLogger("ray.serve")

# A call this router never saw completed (e.g. the replica died) stops counting after this long.
INFLIGHT_FORGET_S = 60.0
MAX_INFLIGHT_PER_REPLICA = 4096


class BudgetAwareRequestRouter(FIFOMixin, RequestRouter):
    """Ranks replicas by serving.replica.placement.place; Serve's power of two choices where no
    replica has a fresh report or the request is not a ModelCall."""

    def initialize_state(self, **kwargs: Any) -> None:
        """`stale_after_s`: reports older than this are ignored (a few stats periods)."""
        self.stale_after_s = float(kwargs.get("stale_after_s", 3.0))
        self._sent: dict[ReplicaID, deque[tuple[str, InFlight]]] = {}
        self._where: dict[str, ReplicaID] = {}  # request id -> the replica its in-flight entry is on
        self.decisions: dict[str, int] = {}

    def _state(self) -> None:
        if not hasattr(self, "_sent"):  # Serve calls initialize_state, but not before every hook
            self.initialize_state()

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        self._state()
        if pending_request is not None:
            # Every pass ranks all replicas: when all are full, Serve should back off before the
            # next pass instead of spinning (its locality mixin sets this; this router has none).
            pending_request.routing_context.should_backoff = True
        if not candidate_replicas:
            return []
        try:
            placement = self._place(candidate_replicas, pending_request, time.time())
        except Exception:  # noqa: BLE001 - a routing bug must not lose the request
            log.exception("BudgetAwareRequestRouter: placement failed; routing as Serve does")
            placement = Placement((), "stale")
        self.decisions[placement.reason] = self.decisions.get(placement.reason, 0) + 1
        if not placement.ranked:
            ranks = [_power_of_two(candidate_replicas)]
        else:
            by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
            ranks = [[by_id[i]] for i in placement.ranked if i in by_id]
        if ranks and pending_request is not None:
            # Counted on the first choice at once: Serve runs several routing tasks, and each awaits
            # its replica's queue length after this returns, so calls counted only once routed
            # were all ranked against the same reports (a burst of six went to one replica). The
            # entry moves if Serve routes the call elsewhere (on_request_routed).
            self._remember(ranks[0][0].replica_id, pending_request)
        return ranks

    def _place(self, replicas: list[RunningReplica], pending: PendingRequest | None, now: float) -> Placement:
        call = _call_of(pending)
        reports = {r.replica_id.unique_id: r.routing_stats for r in replicas}
        for r in replicas:  # calls sent before a replica's report are in it: they never count again
            sent, at = self._sent.get(r.replica_id), _report_time(r.routing_stats)
            while sent and at is not None and sent[0][1].sent_at < at:
                self._where.pop(sent.popleft()[0], None)
        inflight = {r.replica_id.unique_id: [f for _, f in self._sent.get(r.replica_id, ())] for r in replicas}
        return place(reports, call, now, self.stale_after_s, inflight)

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        """Where the call went: its entry moves there if Serve passed over the first choice (full)."""
        self._state()
        if not _is_query(pending_request):  # a query stays where it was chosen
            self._remember(replica_id, pending_request)

    def _remember(self, replica_id: ReplicaID, pending_request: PendingRequest) -> None:
        """Count the call on `replica_id`, once: a call chosen again (a retry, or routed to another
        replica than its first choice) leaves its earlier entry."""
        try:
            call = _call_of(pending_request)
            if call is None:
                return
            rid = pending_request.metadata.internal_request_id
            if self._where.get(rid) == replica_id:
                return
            self._forget(rid)
            now = time.time()
            sent = self._sent.setdefault(replica_id, deque(maxlen=MAX_INFLIGHT_PER_REPLICA))
            while sent and now - sent[0][1].sent_at > INFLIGHT_FORGET_S:
                self._where.pop(sent.popleft()[0], None)
            if len(sent) == sent.maxlen:
                self._where.pop(sent[0][0], None)  # the deque drops its oldest on append
            sent.append((rid, InFlight(call.knobs, call.expected_ms or 0.0, now)))
            self._where[rid] = replica_id
        except Exception:  # noqa: BLE001 - bookkeeping only
            log.exception("BudgetAwareRequestRouter: remembering a sent call failed")

    def _forget(self, rid: str) -> None:
        where = self._where.pop(rid, None)
        sent = self._sent.get(where) if where is not None else None
        if sent:
            for item in sent:
                if item[0] == rid:
                    sent.remove(item)
                    break

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self._state()
        self._forget(internal_request_id)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        """A replica that left (died, scaled down) takes its in-flight bookkeeping with it."""
        super().update_replicas(replicas)
        self._state()
        alive = {r.replica_id for r in replicas}
        for rid in [r for r in self._sent if r not in alive]:
            for request_id, _ in self._sent.pop(rid):
                self._where.pop(request_id, None)


def _call_of(pending: PendingRequest | None) -> CallView | None:
    """The ModelCall of a generate/generate_stream request (its first argument); None otherwise."""
    if pending is None or not pending.args:
        return None
    return CallView.of(pending.args[0])


def _is_query(pending: PendingRequest) -> bool:
    return bool(pending.args) and isinstance(pending.args[0], ReplicaQuery)


def _report_time(raw: object) -> float | None:
    """When a report was made (its `at`), if it has a usable one."""
    at = raw.get("at") if isinstance(raw, Mapping) else None
    return float(at) if isinstance(at, (int, float)) and not isinstance(at, bool) and math.isfinite(at) else None


def _power_of_two(candidates: list[RunningReplica]) -> list[RunningReplica]:
    """Serve's default: two random replicas, one rank; Serve takes the shorter queue of the two."""
    if len(candidates) <= 2:
        return random.sample(candidates, len(candidates))
    return random.sample(candidates, 2)
