"""`MoEModel`: runs the backend for `ModelCall`s, batching equal-knob requests; streamed calls are
batch members like the others (one queue, one deadline order, one late binding, one device)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from ray import serve

from controller.errors import KnobError
from controller.knobs import Knobs
from serving.config import ModelSettings
from serving.errors import ServingConfigError
from serving.replica.attainment_scaling import FlagWindow, unmeetable
from serving.replica.backends.base import Backend, ModelOutput, ModelRequest
from serving.replica.backends.registry import create_backend
from serving.replica.deadline_gate import DeadlineGate
from serving.replica.device import Alternative, Device, Rebind
from serving.replica.dispatch import BlockingGuard, Choice, Waiting, call_ms, choose, rebind_while_waiting
from serving.replica.engine_prep import EnginePreparer
from serving.replica.placement import ReplicaView
from serving.replica.replica_queue import ReplicaQueue
from serving.replica.start_error import StartError
from serving.replica.stream_sink import StreamSink
from serving.wire import (
    CheckedPlans,
    Dispatched,
    DispatchPlan,
    ModelCall,
    ModelResult,
    PlanError,
    PlanOption,
    ReplicaReport,
    StreamPiece,
)

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


# The batcher's sizes come from the config (set in __init__); the decorator needs a value first.
_BATCH = ModelSettings().batch


@dataclass
class Pending:
    """One call in the batcher: its queue token, knobs and request, the table's figures for them,
    its arrival (monotonic s), with late binding its dispatch plan and deadline, and a sink when
    it is streamed."""

    token: int
    knobs: Knobs
    request: ModelRequest
    arrived: float
    sink: StreamSink | None = None
    plan: DispatchPlan | None = None
    deadline: float = float("inf")
    choice: Choice | None = None
    scale: float = 1.0  # the measured / table first-token ratio its choice was made with
    # When it was bound (monotonic s), and the schedule's prediction then of how long until the
    # device begins it (ms, uncorrected) and whether that meant waiting for batches to drain.
    bound: float | None = None
    predicted_ms: float = 0.0
    waits: bool = False

    @property
    def expected_ms(self) -> float | None:
        return self.request.expected_ms

    def fastest(self) -> tuple[float, float] | None:
        """(budgeted latency, expected whole call) of the fastest option; None without a plan."""
        if self.plan is None:
            return None
        # What it holds the device for, ahead of others: its prefill (decodes are shared).
        return self.plan.fastest_ms, call_ms(self.plan.options[0], 0)


def _fan_out(futures: list[asyncio.Future[ModelResult]], task: asyncio.Future[list[ModelResult]]) -> None:
    """A group's results (or its failure) to each member's future."""
    for j, f in enumerate(futures):
        if f.done():
            continue
        if task.cancelled():
            f.cancel()
        elif (e := task.exception()) is not None:
            f.set_exception(e)
        else:
            f.set_result(task.result()[j])


def _dispatched(c: Choice | None) -> Dispatched | None:
    return None if c is None else Dispatched(c.index, c.fits, c.left_ms, c.guarded)


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
        if self.settings.gil_switch_interval_ms is not None:
            sys.setswitchinterval(self.settings.gil_switch_interval_ms / 1000)
        self.backend: Backend = create_backend(self.settings.backend, self.settings.backend_options)
        # Backends with an engine (torch) prepare the served table's configs before taking traffic
        # (CUDA graphs are captured here), then again off the request path after each publish.
        self.preparer: EnginePreparer | None = None
        if self.backend.needs_preparation:
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
        batched: Any = self._batched  # serve.batch's annotations lose the method's type
        batched.set_max_batch_size(self.settings.batch.max_batch_size)
        batched.set_batch_wait_timeout_s(self.settings.batch.batch_wait_timeout_s)
        self._batch_ids = itertools.count(1)
        # The device thread that owns the backend: decode batches step by step, newcomers join
        # between steps (serving.replica.device).
        self.device = Device(self.backend, f"device-{self.settings.backend}")
        self._calls: set[asyncio.Future[list[ModelResult]]] = set()
        self._replica = _replica_id()
        # The replica's own queue: waits per request, and the report each answer carries back.
        self.queue = ReplicaQueue(self._replica)
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
        # How much later the device began work than binding predicted (added to the next predictions).
        self.start_error = StartError()
        self._checked_plans = CheckedPlans()
        self.dispatch_counts = {"planned": 0, "rebound": 0, "late": 0, "bad_plans": 0, "guarded": 0,
                                "kept_pair": 0, "rebound_on_device": 0}
        self._tokens = itertools.count(1)
        # Streams: started; finished (all their tokens); cancelled (the client left: the replica
        # stopped at its next step); failed (the backend raised).
        self.stream_counts = {"started": 0, "finished": 0, "cancelled": 0, "failed": 0}
        # For the budget-aware request router and the attainment autoscaler: the knob pairs this
        # replica has queued or running, and its recent calls that could not meet their budget.
        self._knob_calls: dict[str, int] = {}
        scaling = self.settings.autoscaling
        self.flags = FlagWindow(scaling.attainment.window_s if scaling is not None else 30.0)

    # -- the two doors: a whole answer, or a stream of pieces; one path behind them -------------

    async def generate(self, call: ModelCall) -> ModelResult:
        """The whole answer to `call` (serving.wire.ModelCall)."""
        return await self._run(self._pending(call, None))

    async def generate_stream(self, call: ModelCall) -> AsyncIterator[StreamPiece]:
        """The answer to `call` as it is decoded: a piece with new text when there is some (the
        first right after the prefill), then a piece with the result. The call queues, waits in
        deadline order and is bound late like any other, and runs as a member of a batch. When
        the caller goes away (Serve cancels this generator) the request leaves the queue, or, if
        its batch runs, stops at the batch's next step."""
        loop = asyncio.get_running_loop()
        sink = StreamSink(loop, time.monotonic())
        pending = self._pending(call, sink)
        self.stream_counts["started"] += 1
        task = asyncio.ensure_future(self._run(pending))
        task.add_done_callback(sink.wake)
        try:
            while True:
                text = await sink.take(task)
                if text:
                    yield StreamPiece(text=text, at_ms=sink.first_ms() or 0.0, dispatch=_dispatched(pending.choice))
                elif task.done():
                    break
            result = task.result()  # raises what the backend raised
            self.stream_counts["cancelled" if result.finish_reason == "cancelled" else "finished"] += 1
            yield StreamPiece(result=result, at_ms=(time.monotonic() - pending.arrived) * 1000)
        except BaseException as e:
            if isinstance(e, (asyncio.CancelledError, GeneratorExit)):
                self.stream_counts["cancelled"] += 1
            else:
                self.stream_counts["failed"] += 1
            raise
        finally:
            sink.close()  # the backend stops this member at its next step
            if not task.done():
                task.cancel()  # still queued: it leaves the queue (a running batch goes on)

    def _pending(self, call: ModelCall, sink: StreamSink | None) -> Pending:
        if not isinstance(call, ModelCall):
            raise TypeError(f"MoEModel takes a serving.wire.ModelCall, not {type(call).__name__}")
        now = sink.arrived if sink is not None else time.monotonic()
        k, req = self._checked(call)
        pending = Pending(next(self._tokens), k, req, now, sink)
        budget_ms = call.budget_ms
        if budget_ms is not None and math.isfinite(budget_ms):
            pending.deadline = now + max(0.0, budget_ms) / 1000
            pending.plan = self._plan(call.plan, req, k.tier) if call.plan is not None else None
        if pending.plan is not None and self.guard is not None and budget_ms is not None:
            self.guard.arrived(now, budget_ms - pending.plan.options[0].service_ms, self.queue.busy())
        return pending

    async def _run(self, pending: Pending) -> ModelResult:
        key = pending.knobs.key
        budget_ms = (pending.deadline - pending.arrived) * 1000 if math.isfinite(pending.deadline) else None
        self.flags.add(pending.arrived, unmeetable(pending.expected_ms, budget_ms, self._backlog_ms(),
                                                   self.queue.first_token_ratio()))
        self.queue.arrived(pending.token, key, pending.expected_ms, pending.arrived)
        self._knob_calls[key] = self._knob_calls.get(key, 0) + 1
        try:
            if self.gate is None:
                handed = await self._batched(pending)
            else:
                deadline = pending.deadline if math.isfinite(pending.deadline) else pending.arrived + 3600.0
                # The gate orders entry into the batcher; once the batch is handed to the device the
                # slot is free (a long stream must not hold it for its whole decode).
                async with self.gate.admitted(deadline, pending.fastest()):
                    handed = await self._batched(pending)
            result = await asyncio.shield(handed)
            # This replica's own time for the request (arrival to answer): the router's time for
            # the call minus this is the serving overhead (proxy, router, handle, both ways).
            return replace(result, replica_ms=(time.monotonic() - pending.arrived) * 1000)
        finally:
            self.queue.dropped(pending.token)  # no-op once its backend call started
            left = self._knob_calls.pop(key, 1) - 1
            if left > 0:
                self._knob_calls[key] = left

    def _plan(self, plan: DispatchPlan, req: ModelRequest, checked_tier: str) -> DispatchPlan | None:
        """The request's plan, keeping only options this backend runs for this request; None (the
        router's knobs stand) when the plan is malformed or nothing in it can run."""
        try:
            if not isinstance(plan, DispatchPlan):
                raise PlanError(f"a dispatch plan is a serving.wire.DispatchPlan, not {type(plan).__name__}")
            plan = self._checked_plans.checked(plan)
        except PlanError as e:
            self.dispatch_counts["bad_plans"] += 1
            log.warning("MoEModel: ignoring a dispatch plan: %s", e)
            return None
        # A request's size limit depends on its tier alone, and _checked passed the router's tier.
        tier_fits: dict[str, bool] = {checked_tier: True}
        kept = []
        for o in plan.options:
            try:
                self.backend.validate_knobs(o.knobs)
            except KnobError:
                continue  # an option this backend cannot run is just skipped
            if o.knobs.tier not in tier_fits:
                try:
                    self.backend.check_request(o.knobs, req)
                    tier_fits[o.knobs.tier] = True
                except Exception:  # noqa: BLE001 - e.g. too long for this tier: skip its options
                    tier_fits[o.knobs.tier] = False
            if tier_fits[o.knobs.tier]:
                kept.append(o)
        if not kept:
            return None
        self.dispatch_counts["planned"] += 1
        return DispatchPlan(tuple(kept), plan.tolerance)

    def _bind(self, meta: list[Pending]) -> list[int]:
        """Late binding at the start of a backend call: each planned request gets the best option
        for the time it has left (serving.replica.dispatch.choose), earliest deadline first, counting
        the calls this batch runs before it and leaving room for the members after it and the
        requests waiting at the deadline gate. Returns the members in the order their calls should
        run; members' knobs and table figures are rebound in place."""
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
        view = self.device.view()  # one read of the device for every option weighed below
        # An idle device starts every option at once (device_schedule.wait_ms is 0 for each): no
        # schedule per option. The start error depends only on whether a start waits: read once.
        idle = not view.running and not view.queue
        errors: dict[bool, float] = {}

        def start_error(waits: bool) -> float:
            e = errors.get(waits)
            if e is None:
                e = errors[waits] = self.start_error.ms(now, waits)
            return e

        # Pair affinity (model.pair_switch_min_gain): prefer the pairs of the decode batches running
        # now or waiting to run; an idle device leaves every pair free.
        min_gain = self.settings.pair_switch_min_gain
        running = view.busy_pairs if min_gain is not None else frozenset()
        stay = None if not running else (lambda o: o.knobs.pair in running)

        # The device's own queue comes first: prefills handed to it and not begun (and a drain).
        ahead_ms, groups = self.device.backlog_ms(scale), set()
        for pos, i in enumerate(order):
            m = meta[i]
            if m.plan is not None:
                later = [w for j in order[pos + 1:] if (w := members[j]) is not None] + gated
                # tokens=0: a member holds the device ahead of others for its prefill only; its
                # decode steps are shared with whoever joins the batch (serving.replica.device).
                m.scale = scale
                tokens = m.request.max_new_tokens

                waits: dict[Knobs, float] = {}

                def start_ms(o: PlanOption, tokens: int = tokens, waits: dict[Knobs, float] = waits) -> float:
                    # What it would wait for decode batches on the device (serving.replica.device_schedule),
                    # plus the tail of how much later than predicted starts of that kind came.
                    w = waits.get(o.knobs)
                    if w is None:
                        w = waits[o.knobs] = 0.0 if idle else view.wait_ms(o.knobs, o.service_ms * scale, tokens)
                    return w + start_error(w > 0)

                m.choice = choose(m.plan, (m.deadline - now) * 1000 - ahead_ms, tokens=0, scale=scale,
                                  behind=[w.shifted(ahead_ms) for w in later], too_long=too_long,
                                  start_ms=start_ms, stay=stay, switch_min_gain=min_gain or 0.0)
                o = m.plan.options[m.choice.index]
                if o.knobs != m.knobs:
                    self.dispatch_counts["rebound"] += 1
                self.dispatch_counts["late"] += not m.choice.fits
                self.dispatch_counts["guarded"] += m.choice.guarded
                self.dispatch_counts["kept_pair"] += m.choice.kept_pair
                chosen_wait = waits.get(o.knobs, 0.0)
                m.bound, m.waits, m.predicted_ms = now, chosen_wait > 0, ahead_ms + chosen_wait
                m.knobs = o.knobs
                m.request = replace(m.request, expected_ms=o.service_ms, decode_ms_per_token=o.decode_ms_per_token)
            if m.knobs not in groups:  # a call of its own (first token + decode): later members wait
                groups.add(m.knobs)
                ahead_ms += (m.expected_ms or 0.0) * scale
        return order

    def _checked(self, call: ModelCall) -> tuple[Knobs, ModelRequest]:
        """Refuse one request, not the batch it would join: a config this backend cannot run (a
        table published after start may hold one), or too many tokens for the engine (413)."""
        k = call.knobs if isinstance(call.knobs, Knobs) else Knobs.from_mapping(call.knobs)
        self.backend.validate_knobs(k)
        req = ModelRequest(call.prompt, call.max_new_tokens, call.image_b64, call.expected_ms,
                           call.decode_ms_per_token)
        self.backend.check_request(k, req)
        return k, req

    @serve.batch(max_batch_size=_BATCH.max_batch_size, batch_wait_timeout_s=_BATCH.batch_wait_timeout_s)
    async def _batched(self, meta: list[Pending]) -> list[asyncio.Future[ModelResult]]:
        """Bind the batch's members (earliest deadline first), hand each group of equal knobs to the
        device, and return at once: each member then waits for its own call only (a short answer
        never waits for a long stream that came in the same Serve batch), and the batcher is free
        to form the next batch while these decode."""
        loop = asyncio.get_running_loop()
        out: list[asyncio.Future[ModelResult]] = [loop.create_future() for _ in meta]
        groups: dict[Knobs, list[int]] = {}
        for i in self._bind(meta):  # one call per knob set, earliest deadline first
            sink = meta[i].sink
            if sink is not None and sink.closed:  # its client left while it queued
                out[i].set_result(self._never_ran(meta[i]))
            else:
                groups.setdefault(meta[i].knobs, []).append(i)
        rows = self.backend.max_batch_rows
        for k, idx in groups.items():
            for s in range(0, len(idx), rows):
                chunk = idx[s:s + rows]
                task = asyncio.ensure_future(self._call(k, [meta[i] for i in chunk], len(meta)))
                self._calls.add(task)  # referenced until done, also when every caller has left
                task.add_done_callback(self._calls.discard)
                task.add_done_callback(partial(_fan_out, [out[i] for i in chunk]))
        return out

    async def _call(self, k: Knobs, members: list[Pending], serve_batch: int) -> list[ModelResult]:
        """One group of equal knobs on the device (serving.replica.device: it joins a running decode
        batch between two steps when it can)."""
        group = next(self._batch_ids)
        sinks = [m.sink.send if m.sink is not None else None for m in members]
        started = time.monotonic()
        self.queue.started(group, [m.token for m in members], started)
        try:
            work = self.device.work(k, [m.request for m in members], sinks, min(m.deadline for m in members))
            if self.settings.rebind_on_device and len(members) == 1:
                work.rebind = self._rebinder(members[0])
            self.device.hand_in(work)
            outputs, began = await work.future
        finally:
            ended = time.monotonic()
            self.queue.finished(group, (ended - started) * 1000)
        # Its wait: arrival to the device beginning its prefill; its service: from then on.
        waits = [(began - m.arrived) * 1000 for m in members]
        for m in members:
            if m.bound is not None:
                self.start_error.add(ended, m.waits, (began - m.bound) * 1000 - m.predicted_ms)
        service_ms = (ended - began) * 1000
        if self.guard is not None:
            self.guard.ran(began, began + sum(m.expected_ms or 0.0 for m in members) / 1000)
        report = self._report()
        # One first-token ratio per call: its first token / the sum of its members' table
        # latencies (an engine prefills a call's members one after another).
        known = [e for m in members if (e := m.expected_ms) is not None]
        firsts = [self.backend.first_token_ms(o.timings_ms, service_ms) for o in outputs]
        ratio = max(firsts) / sum(known) if known and sum(known) > 0 else None
        if ratio is not None:
            self.queue.first_token(max(firsts), sum(known))
        batch = (f"{self._replica}:{group}", len(members), serve_batch)
        # m.knobs: what ran (the device may have bound a lone member again: _rebinder)
        return [self._result(m, o, m.knobs, waits[j], service_ms, firsts[j], ratio, report, batch=batch)
                for j, (m, o) in enumerate(zip(members, outputs, strict=True))]

    def _rebinder(self, m: Pending) -> Rebind | None:
        """Late binding once more, on the device thread, for a lone member that would wait for a
        running batch of another knob pair to drain (model.rebind_on_device): an option of the
        running pair that fits the time left then, if its own would not fit after the drain
        (serving.replica.dispatch.rebind_while_waiting)."""
        plan, chosen = m.plan, m.choice
        if plan is None or chosen is None:
            return None
        loop, request, deadline, scale = asyncio.get_running_loop(), m.request, m.deadline, m.scale

        def pick(pairs: frozenset[tuple[int, int]], wait_ms: float) -> Alternative | None:
            left_ms = (deadline - time.monotonic()) * 1000
            again = rebind_while_waiting(plan, chosen.index, left_ms, scale=scale, drain_ms=wait_ms, pairs=pairs)
            if again is None:
                return None
            j, fits = again
            o = plan.options[j]
            req = replace(request, expected_ms=o.service_ms, decode_ms_per_token=o.decode_ms_per_token)
            # A late request keeps the flag it was bound with: the promise made then was broken,
            # and the answer must say so.
            choice = Choice(j, fits or chosen.fits, left_ms)

            def tell(joined: bool) -> None:  # on the device thread: the member's state is the loop's
                loop.call_soon_threadsafe(self._rebound, m, choice if joined else chosen, req if joined else request,
                                          1 if joined else -1)

            return o.knobs, [req], tell

        return pick

    def _rebound(self, m: Pending, choice: Choice, request: ModelRequest, count: int) -> None:
        """On the loop: the member runs `choice` (count +1), or back to its first choice (-1: no
        running batch took the other knobs after all)."""
        if m.plan is not None:
            m.knobs, m.request, m.choice = m.plan.options[choice.index].knobs, request, choice
            self.dispatch_counts["rebound_on_device"] += count

    def _result(self, m: Pending, o: ModelOutput, k: Knobs, wait_ms: float, service_ms: float, first_ms: float,
                ratio: float | None, report: Any, batch: tuple[str, int, int]) -> ModelResult:
        c = m.choice
        first = m.sink.first_ms() if m.sink is not None else None
        return ModelResult(
            text=o.text, output_tokens=o.output_tokens, prompt_tokens=o.prompt_tokens,
            finish_reason=o.finish_reason, knobs=k, timings_ms=dict(o.timings_ms),
            batch_id=batch[0], batch_size=batch[1], serve_batch_size=batch[2],
            queue_wait_ms=wait_ms, service_ms=service_ms, first_token_ms=first_ms, first_token_ratio=ratio,
            crops=self.backend.crops_for(k, m.request), replica_load=report,
            dispatch=_dispatched(c),
            # Arrival to first token: the streamed member's first piece, else queue wait + the call's
            # first token (the router's first token minus this is the serving overhead).
            replica_first_token_ms=first if first is not None else wait_ms + first_ms,
            streamed=m.sink is not None,
        )

    def _never_ran(self, m: Pending) -> ModelResult:
        return ModelResult(text="", output_tokens=0, prompt_tokens=0, finish_reason="cancelled", knobs=m.knobs,
                           streamed=True)

    # -- what the replica publishes -------------------------------------------------------------

    def _report(self) -> ReplicaReport:
        """The replica's queue report, with the device's own backlog priced as the queue prices
        its waiting calls (ReplicaQueue.scale)."""
        return self.queue.report(time.monotonic(), self.device.backlog_ms(self.queue.scale()))

    def _backlog_ms(self) -> float:
        return self._report().backlog_ms

    def record_routing_stats(self) -> dict[str, Any]:
        """Polled by Serve every request_routing_stats_period_s for the budget-aware request router
        (serving.replica.placement reads it): backlog, measured first-token ratio, knob pairs."""
        report = self._report()
        ratio = self.queue.first_token_ratio()
        return ReplicaView(time.time(), report.backlog_ms, report.waiting + report.running,
                           ratio if ratio is not None and math.isfinite(ratio) else None,
                           frozenset(self._knob_calls)).to_stats()

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Pushed to Serve's autoscaler (serving.replica.autoscaling): this replica's calls in the
        window, and those that could not meet their budget on arrival."""
        calls, flagged = self.flags.counts(time.monotonic())
        return {"calls": float(calls), "unmeetable": float(flagged)}

    def dispatch_stats(self) -> dict[str, Any]:
        """Requests with a plan, those whose knobs changed at dispatch, those no option fitted,
        and calls the blocking guard made shorter."""
        return {**self.dispatch_counts, "start_error_ms": self.start_error.to_dict(time.monotonic()),
                "blocking_miss_budget": self.settings.blocking_miss_budget,
                "pair_switch_min_gain": self.settings.pair_switch_min_gain}

    def supported_ranges(self) -> dict[str, Any]:
        """Published to the controller, which refuses tables with configs outside these ranges."""
        return self.backend.supported_ranges().to_dict()

    def stream_stats(self) -> dict[str, int]:
        """Streams started, finished, cancelled (the client left) and failed."""
        return dict(self.stream_counts)

    def engine_stats(self) -> dict[str, Any]:
        """This replica's streams, queue and late-binding counts (dispatch_stats), and its engine's
        figures (capture seconds, graph memory, disabled configs: torch backend)."""
        out: dict[str, Any] = {"replica_id": self._replica, "streams": self.stream_stats(),
                               "queue": self._report().to_dict(),
                               "dispatch": self.dispatch_stats(),
                               "device": {"steps": self.device.steps, "joins": self.device.joins},
                               **self.backend.stats()}
        if self.preparer is not None:
            out["prep"] = self.preparer.status()
        return out
