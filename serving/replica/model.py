"""`MoEModel`: runs the backend with knobs given as arguments, batching equal-knob requests."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ray import serve

from controller.errors import KnobError
from controller.knobs import Knobs
from serving.config import ModelSettings
from serving.errors import ServingConfigError
from serving.replica.backends.base import Backend, ModelRequest
from serving.replica.backends.registry import create_backend
from serving.replica.backends.simulated import SimulatedBackend
from serving.replica.deadline_gate import DeadlineGate
from serving.replica.dispatch import BlockingGuard, Choice, Waiting, call_ms, choose
from serving.replica.engine_prep import EnginePreparer
from serving.replica.replica_queue import ReplicaQueue
from serving.wire import DispatchPlan, PlanError

log = logging.getLogger("ray.serve")


def check_configs(backend: Backend, knobs: list[Knobs], what: str) -> None:
    """Every config the router could send must run; fail the deployment naming the first bad one."""
    for k in knobs:
        try:
            backend.validate_knobs(k)
        except KnobError as e:
            raise ServingConfigError(
                f"{what} config {k.key} is not valid for the {backend.name!r} backend: {e}; "
                "publish a table built for this model, or change the backend options"
            ) from e


def first_token_ms(backend: Backend, timings: dict[str, float], service_ms: float) -> float:
    """The part of a backend call that the table's latency describes. A backend may say (the
    simulated one's table latency can be the whole call); else vision + prefill when reported."""
    own = getattr(backend, "first_token_ms", None)
    if own is not None:
        return float(own(timings, service_ms))
    if "vision" in timings and "prefill" in timings:
        return float(timings["vision"] + timings["prefill"])
    return service_ms


# The batcher's sizes come from the config (set in __init__); the decorator needs a value first.
_BATCH = ModelSettings().batch


@dataclass
class Pending:
    """One request in the batcher: its queue token, the table's decode rate for its knobs, and,
    with late binding, its dispatch plan and deadline (monotonic seconds)."""

    token: int
    decode_ms_per_token: float | None
    tokens: int = 0  # max_new_tokens: its call decodes them before the next call starts
    plan: DispatchPlan | None = None
    deadline: float = float("inf")
    choice: Choice | None = None

    def fastest(self) -> tuple[float, float] | None:
        """(budgeted latency, expected whole call) of the fastest option; None without a plan."""
        if self.plan is None:
            return None
        return self.plan.fastest_ms, call_ms(self.plan.options[0], self.tokens)


def _dispatch_view(choice: Choice | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    return {"option": choice.index, "fits": choice.fits, "left_ms": choice.left_ms, "guarded": choice.guarded}


def _replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica (direct unit use)
        return "local"


@serve.deployment(name="MoEModel", max_ongoing_requests=64)
class MoEModel:
    def __init__(
        self,
        settings: dict[str, Any],
        fallback_knobs: dict[str, Any],
        store: str | None = None,
        poll_interval_s: float = 2.0,
    ) -> None:
        self.settings = ModelSettings.model_validate(settings)
        self.backend = create_backend(self.settings.backend, self.settings.backend_options)
        # Backends with an engine (torch) prepare the served table's configs before taking traffic
        # (CUDA graphs are captured here), then again off the request path after each publish.
        self.preparer: EnginePreparer | None = None
        if hasattr(self.backend, "prepare"):
            self.preparer = EnginePreparer(
                self.backend.prepare, store, [Knobs.from_mapping(fallback_knobs)], poll_interval_s
            )
            report = self.preparer.prepare_current()
            log.info("MoEModel engine ready: %s", report)
            self.preparer.start()
        # No store read here: a replica must be able to (re)start while the store is unreadable or
        # holds a bad version. Tables are checked against supported_ranges() by the controller
        # before any router sees them; each request's knobs are checked again in generate().
        check_configs(self.backend, [Knobs.from_mapping(fallback_knobs)], "fallback")
        self._batched.set_max_batch_size(self.settings.batch.max_batch_size)
        self._batched.set_batch_wait_timeout_s(self.settings.batch.batch_wait_timeout_s)
        # Only the simulated backend can follow the table's latencies; others never get them.
        self._pass_expected = isinstance(self.backend, SimulatedBackend)
        self._batch_ids = itertools.count(1)
        self._replica = _replica_id()
        # The replica's own queue: waits per request, and the report each answer carries back.
        self.queue = ReplicaQueue(self._replica, self.settings.batch.max_batch_size)
        # Deadline order: as many requests in the batcher as one batch holds, the rest wait in
        # earliest-deadline order (serving.replica.deadline_gate).
        self.gate = (
            DeadlineGate(self.settings.batch.max_batch_size) if self.settings.scheduling == "deadline" else None
        )
        self.guard = (
            BlockingGuard(self.settings.blocking_miss_budget)
            if self.gate is not None and self.settings.blocking_miss_budget is not None
            else None
        )
        self.dispatch_counts = {"planned": 0, "rebound": 0, "late": 0, "bad_plans": 0, "guarded": 0}
        self._tokens = itertools.count(1)
        self._streams: set[asyncio.Task[None]] = set()  # running stream tasks (kept referenced)
        self.stream_counts = {"started": 0, "finished": 0, "cancelled": 0}

    async def generate(
        self,
        knobs: Knobs | dict[str, Any],
        request: dict[str, Any],
        expected_latency_ms: float | None = None,
        decode_ms_per_token: float | None = None,
        budget_ms: float | None = None,
        plan: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """`expected_latency_ms` is the table's latency for these knobs (None: unknown, e.g. fallback);
        `decode_ms_per_token` the table's decode rate for them (None: the table has none);
        `budget_ms` what is left of the request's budget for this replica (its deadline);
        `plan` the request's dispatch plan (serving.replica.dispatch): the knobs are chosen again from it
        when the request's backend call starts."""
        k, req = self._checked(knobs, request)
        now = time.monotonic()
        token = next(self._tokens)
        pending = Pending(token, decode_ms_per_token, req.max_new_tokens)
        if budget_ms is not None and math.isfinite(budget_ms):
            pending.deadline = now + max(0.0, budget_ms) / 1000
            pending.plan = self._plan(plan, req, k.tier) if plan is not None else None
        if pending.plan is not None and self.guard is not None and budget_ms is not None:
            self.guard.arrived(now, budget_ms - pending.plan.options[0].service_ms, self.queue.busy())
        self.queue.arrived(token, k.key, expected_latency_ms, now)
        try:
            if self.gate is None:
                out = await self._batched(k, req, expected_latency_ms, pending)
            else:
                deadline = pending.deadline if math.isfinite(pending.deadline) else now + 3600.0
                async with self.gate.admitted(deadline, pending.fastest()):
                    out = await self._batched(k, req, expected_latency_ms, pending)
            # This replica's own time for the request (arrival to answer): the router's time for
            # the call minus this is the handle's transport, both ways.
            out["replica_ms"] = (time.monotonic() - now) * 1000
            return out
        finally:
            self.queue.dropped(token)  # no-op once its backend call started

    def _plan(self, raw: dict[str, Any], req: ModelRequest, checked_tier: str) -> DispatchPlan | None:
        """The request's plan, keeping only options this backend runs for this request; None (the
        router's knobs stand) when the plan is malformed or nothing in it can run."""
        try:
            plan = DispatchPlan.from_wire(raw)
        except PlanError as e:
            self.dispatch_counts["bad_plans"] += 1
            log.warning("MoEModel: ignoring a dispatch plan: %s", e)
            return None
        check_request = getattr(self.backend, "check_request", None)
        # A request's size limit depends on its tier alone, and _checked passed the router's tier.
        tier_fits: dict[str, bool] = {checked_tier: True}
        kept = []
        for o in plan.options:
            try:
                self.backend.validate_knobs(o.knobs)
            except KnobError:
                continue  # an option this backend cannot run is just skipped
            if check_request is not None and o.knobs.tier not in tier_fits:
                try:
                    check_request(o.knobs, req)
                    tier_fits[o.knobs.tier] = True
                except Exception:  # noqa: BLE001 - e.g. too long for this tier: skip its options
                    tier_fits[o.knobs.tier] = False
            if tier_fits.get(o.knobs.tier, True):
                kept.append(o)
        if not kept:
            return None
        self.dispatch_counts["planned"] += 1
        return DispatchPlan(tuple(kept), plan.tolerance)

    def _bind(self, knobs: list[Knobs], expected: list[float | None], meta: list[Pending]) -> list[int]:
        """Late binding at the start of a backend call: each planned request gets the best option
        for the time it has left (serving.replica.dispatch.choose), earliest deadline first, counting the
        calls this batch runs before it and leaving room for the members after it and the requests
        waiting at the deadline gate. Returns the members in the order their calls should run."""
        now = time.monotonic()
        order = sorted(range(len(meta)), key=lambda i: meta[i].deadline)
        if not any(m.plan is not None for m in meta):
            return order
        # Options are compared in first-token time: the replica's measured first token / table, when
        # it runs slower than its table (never faster: the table's tail figures stay the floor).
        ratio = self.queue.first_token_ratio()
        scale = max(1.0, ratio) if ratio is not None else 1.0

        def waiting(deadline: float, fastest: tuple[float, float] | None) -> Waiting | None:
            if fastest is None or not math.isfinite(deadline):
                return None
            return Waiting((deadline - now) * 1000, fastest[0] * scale, fastest[1] * scale)

        gated = [w for d, f in (self.gate.behind() if self.gate is not None else []) if (w := waiting(d, f))]
        members = {i: waiting(meta[i].deadline, meta[i].fastest()) for i in order}
        guard = self.guard
        too_long = None if guard is None else (lambda ms: guard.too_long(ms, now))
        ahead_ms, groups = 0.0, set()
        for pos, i in enumerate(order):
            m = meta[i]
            if m.plan is not None:
                later = [w for j in order[pos + 1:] if (w := members[j]) is not None] + gated
                m.choice = choose(m.plan, (m.deadline - now) * 1000 - ahead_ms, tokens=m.tokens, scale=scale,
                                  behind=[w.shifted(ahead_ms) for w in later], too_long=too_long)
                o = m.plan.options[m.choice.index]
                if o.knobs != knobs[i]:
                    self.dispatch_counts["rebound"] += 1
                self.dispatch_counts["late"] += not m.choice.fits
                self.dispatch_counts["guarded"] += m.choice.guarded
                knobs[i], expected[i], m.decode_ms_per_token = o.knobs, o.service_ms, o.decode_ms_per_token
            if knobs[i] not in groups:  # a call of its own (first token + decode): later members wait
                groups.add(knobs[i])
                ahead_ms += ((expected[i] or 0.0) + (m.decode_ms_per_token or 0.0) * m.tokens) * scale
        return order

    def _checked(self, knobs: Knobs | dict[str, Any], request: dict[str, Any]) -> tuple[Knobs, ModelRequest]:
        """Refuse one request, not the batch it would join: a config this backend cannot run (a
        table published after start may hold one), or too many tokens for the engine (413). The
        router sends Knobs as they are; a mapping (a direct handle call) is validated into Knobs."""
        k = knobs if isinstance(knobs, Knobs) else Knobs.from_mapping(knobs)
        self.backend.validate_knobs(k)
        req = ModelRequest(**request)
        check_request = getattr(self.backend, "check_request", None)
        if check_request is not None:
            check_request(k, req)
        return k, req

    async def generate_stream(
        self,
        knobs: Knobs | dict[str, Any],
        request: dict[str, Any],
        expected_latency_ms: float | None = None,
        decode_ms_per_token: float | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Yields {"text": decoded so far} after the prefill and after each decode step, then
        {"output": the same dict generate returns}. Runs alone, not in a Serve batch (a batch's
        first token waits for every member's prefill). When the caller goes away (Serve cancels
        this generator) the backend is told to stop at its next step."""
        k, req = self._checked(knobs, request)
        stream = getattr(self.backend, "generate_stream", None)
        if stream is None:  # a backend that cannot stream: one piece, at the end
            out = await self.generate(knobs, request, expected_latency_ms, decode_ms_per_token)
            yield {"text": out["text"]}
            yield {"output": out}
            return
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def on_text(text: str) -> bool:
            loop.call_soon_threadsafe(pieces.put_nowait, ("text", text))
            return not stop.is_set()

        args: tuple[Any, ...] = (k, req, on_text)
        if self._pass_expected:
            args += (expected_latency_ms, decode_ms_per_token)
        started = time.monotonic()

        async def run() -> None:
            try:
                o = await asyncio.to_thread(stream, *args)
                # Counted here: after a client left, nobody reads the queue any more.
                self.stream_counts["cancelled" if o.finish_reason == "cancelled" else "finished"] += 1
                pieces.put_nowait(("done", o))
            except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
                pieces.put_nowait(("error", e))

        task = asyncio.create_task(run())
        self.stream_counts["started"] += 1
        self._streams.add(task)  # referenced until done, also after the consumer left
        task.add_done_callback(self._streams.discard)
        try:
            while True:
                kind, value = await pieces.get()
                if kind == "text":
                    yield {"text": value}
                elif kind == "error":
                    raise value
                else:
                    service_ms = (time.monotonic() - started) * 1000
                    o = value
                    yield {"output": {
                        "text": o.text, "output_tokens": o.output_tokens, "prompt_tokens": o.prompt_tokens,
                        "finish_reason": o.finish_reason, "timings_ms": o.timings_ms, "batch_size": 1,
                        "batch_knobs": k.as_dict(), "service_ms": service_ms, "queue_wait_ms": 0.0,
                        "first_token_ms": first_token_ms(self.backend, o.timings_ms, service_ms),
                    }}
                    return
        finally:
            # The client left (or we are done): the backend stops at its next step, and `task`
            # ends with the backend call on its own.
            stop.set()

    @serve.batch(max_batch_size=_BATCH.max_batch_size, batch_wait_timeout_s=_BATCH.batch_wait_timeout_s)
    async def _batched(
        self,
        knobs: list[Knobs],
        requests: list[ModelRequest],
        expected: list[float | None],
        meta: list[Pending],
    ) -> list[dict[str, Any]]:
        knobs, expected = list(knobs), list(expected)
        groups: dict[Knobs, list[int]] = {}
        for i in self._bind(knobs, expected, meta):  # one call per knob set, earliest deadline first
            groups.setdefault(knobs[i], []).append(i)
        out: list[dict[str, Any]] = [{} for _ in requests]
        for k, idx in groups.items():
            group = next(self._batch_ids)
            batch_id = f"{self._replica}:{group}"
            args: tuple[Any, ...] = (k, [requests[i] for i in idx])
            if self._pass_expected:
                args += ([expected[i] for i in idx], [meta[i].decode_ms_per_token for i in idx])
            started = time.monotonic()
            waits = self.queue.started(group, [meta[i].token for i in idx], started)
            # Backends are synchronous (a GPU forward pass); keep the replica's event loop free.
            try:
                outputs = await asyncio.to_thread(self.backend.generate_batch, *args)
            finally:
                ended = time.monotonic()
                service_ms = (ended - started) * 1000
                if self.guard is not None:
                    self.guard.ran(started, ended)
                known = [expected[i] for i in idx if expected[i] is not None]
                self.queue.finished(group, max(known) if known else None, service_ms)
            report = self.queue.report(time.monotonic()).to_dict()
            crops_for = getattr(self.backend, "crops_for", None)
            # One first-token ratio per call: its first token / the sum of its members' table
            # latencies (an engine prefills a batch's members one after another).
            firsts = [first_token_ms(self.backend, o.timings_ms, service_ms) for o in outputs]
            ratio = max(firsts) / sum(known) if known and sum(known) > 0 else None
            if ratio is not None:
                self.queue.first_token(max(firsts), sum(known))
            for j, (i, o) in enumerate(zip(idx, outputs, strict=True)):
                out[i] = {
                    "text": o.text,
                    "output_tokens": o.output_tokens,
                    "prompt_tokens": o.prompt_tokens,
                    "finish_reason": o.finish_reason,
                    "timings_ms": o.timings_ms,
                    # The backend call this request ran in: its size, id and knobs (one knob set
                    # per call), and how many requests the Serve batch that held it collected.
                    "batch_size": len(idx),
                    "batch_id": batch_id,
                    "batch_knobs": k.as_dict(),
                    "serve_batch_size": len(requests),
                    # Live feedback and queue reports (serving.feedback, serving.ingress.queue_estimate).
                    "queue_wait_ms": waits[j],
                    "service_ms": service_ms,
                    "first_token_ms": firsts[j],
                    "first_token_ratio": ratio,
                    "crops": crops_for(k, requests[i]) if crops_for is not None else None,
                    "replica_load": report,
                    # Late binding: which option of the request's plan ran, and whether it fitted.
                    "dispatch": _dispatch_view(meta[i].choice),
                }
        return out

    def dispatch_stats(self) -> dict[str, Any]:
        """Requests with a plan, those whose knobs changed at dispatch, those no option fitted,
        and calls the blocking guard made shorter."""
        return {**self.dispatch_counts, "blocking_miss_budget": self.settings.blocking_miss_budget}

    def supported_ranges(self) -> dict[str, Any]:
        """Published to the controller, which refuses tables with configs outside these ranges."""
        return self.backend.supported_ranges().to_dict()

    def stream_stats(self) -> dict[str, int]:
        """Streams started, finished, and stopped early because their client went away."""
        return dict(self.stream_counts)

    def engine_stats(self) -> dict[str, Any]:
        """Capture seconds, graph memory, disabled configs (torch backend); {} for others."""
        stats = getattr(self.backend, "stats", None)
        if stats is None:
            return {}
        out = dict(stats())
        if self.preparer is not None:
            out["prep"] = self.preparer.status()
        return {"replica_id": self._replica, **out}

    def backend_name(self) -> str:
        return self.backend.name
