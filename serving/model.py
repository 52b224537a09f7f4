"""`MoEModel`: runs the backend with knobs given as arguments, batching equal-knob requests."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from controller.errors import KnobError
from controller.knobs import Knobs
from serving.backends.base import Backend, ModelRequest
from serving.backends.registry import create_backend
from serving.backends.simulated import SimulatedBackend
from serving.config import ModelSettings
from serving.deadline_gate import DeadlineGate
from serving.engine_prep import EnginePreparer
from serving.replica_queue import ReplicaQueue

log = logging.getLogger("ray.serve")


def check_configs(backend: Backend, knobs: list[Knobs], what: str) -> None:
    """Every config the router could send must run; fail the deployment naming the first bad one."""
    for k in knobs:
        try:
            backend.validate_knobs(k)
        except KnobError as e:
            raise ValueError(
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
        # earliest-deadline order (serving.deadline_gate).
        self.gate = (
            DeadlineGate(self.settings.batch.max_batch_size) if self.settings.scheduling == "deadline" else None
        )
        self._tokens = itertools.count(1)
        self._streams: set[asyncio.Task[None]] = set()  # running stream tasks (kept referenced)
        self.stream_counts = {"started": 0, "finished": 0, "cancelled": 0}

    async def generate(
        self,
        knobs: dict[str, Any],
        request: dict[str, Any],
        expected_latency_ms: float | None = None,
        decode_ms_per_token: float | None = None,
        budget_ms: float | None = None,
    ) -> dict[str, Any]:
        """`expected_latency_ms` is the table's latency for these knobs (None: unknown, e.g. fallback);
        `decode_ms_per_token` the table's decode rate for them (None: the table has none);
        `budget_ms` what is left of the request's budget (its deadline, with scheduling: deadline)."""
        k, req = self._checked(knobs, request)
        token = next(self._tokens)
        self.queue.arrived(token, k.key, expected_latency_ms, time.monotonic())
        try:
            if self.gate is None:
                return await self._batched(k, req, expected_latency_ms, (token, decode_ms_per_token))
            deadline = time.monotonic() + (budget_ms if budget_ms is not None else 3600_000.0) / 1000
            async with self.gate.admitted(deadline):
                return await self._batched(k, req, expected_latency_ms, (token, decode_ms_per_token))
        finally:
            self.queue.dropped(token)  # no-op once its backend call started

    def _checked(self, knobs: dict[str, Any], request: dict[str, Any]) -> tuple[Knobs, ModelRequest]:
        """Refuse one request, not the batch it would join: a config this backend cannot run (a
        table published after start may hold one), or too many tokens for the engine (413)."""
        k = Knobs.from_mapping(knobs)
        self.backend.validate_knobs(k)
        req = ModelRequest(**request)
        check_request = getattr(self.backend, "check_request", None)
        if check_request is not None:
            check_request(k, req)
        return k, req

    async def generate_stream(
        self,
        knobs: dict[str, Any],
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

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _batched(
        self,
        knobs: list[Knobs],
        requests: list[ModelRequest],
        expected: list[float | None],
        meta: list[tuple[int, float | None]],
    ) -> list[dict[str, Any]]:
        groups: dict[Knobs, list[int]] = {}
        for i, k in enumerate(knobs):
            groups.setdefault(k, []).append(i)
        out: list[dict[str, Any]] = [{} for _ in requests]
        for k, idx in groups.items():
            group = next(self._batch_ids)
            batch_id = f"{self._replica}:{group}"
            args: tuple[Any, ...] = (k, [requests[i] for i in idx])
            if self._pass_expected:
                args += ([expected[i] for i in idx], [meta[i][1] for i in idx])
            started = time.monotonic()
            waits = self.queue.started(group, [meta[i][0] for i in idx], started)
            # Backends are synchronous (a GPU forward pass); keep the replica's event loop free.
            try:
                outputs = await asyncio.to_thread(self.backend.generate_batch, *args)
            finally:
                service_ms = (time.monotonic() - started) * 1000
                known = [expected[i] for i in idx if expected[i] is not None]
                self.queue.finished(group, max(known) if known else None, service_ms)
            report = self.queue.report(time.monotonic()).to_dict()
            crops_for = getattr(self.backend, "crops_for", None)
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
                    # Live feedback and queue reports (serving.feedback, serving.queue_estimate).
                    "queue_wait_ms": waits[j],
                    "service_ms": service_ms,
                    "first_token_ms": first_token_ms(self.backend, o.timings_ms, service_ms),
                    "crops": crops_for(k, requests[i]) if crops_for is not None else None,
                    "replica_load": report,
                }
        return out

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
