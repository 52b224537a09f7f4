"""One request path for every door: budget, admission, plan, model call, bind, result.

`/v1/generate`, the OpenAI routes and OpenAI streams parse their own inputs into `Inputs`, then
take this one path; what comes back is a value (`Refused`, `Served`, `Failed`, or an opened
`Stream`), which each door renders in its own shape. So every door resolves the same way, queues
and binds late the same way, counts in the same metrics and wait estimate, and returns the same
headers (`Server-Timing` with `queue`, `X-Knob-*`, `X-Table-Version`, `X-Budget-Feasible`).

A stream is a request like the others: the replica queues it, orders it by deadline, binds its
knobs when its batch starts and runs it as a batch member. The router waits for its first piece
before it answers, so the response headers name the knobs that ran and a failure before the first
token is an ordinary HTTP error; its first-token budget is judged on that first piece.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from controller.ladder import Rung
from serving.config import ServingConfig
from serving.errors import ModelCallError
from serving.ingress.admission import QueueAdmission, Refused
from serving.ingress.answer import Answer
from serving.ingress.budget_plan import Policy
from serving.ingress.model_call import call_model, describe_failure
from serving.telemetry.recorder import RouterRecorder
from serving.wire import ModelCall, ModelResult, StreamPiece

# (budget, tolerance, dataset, max_new_tokens or None) -> (answer, controller ms)
Resolve = Callable[[float, float | None, str | None, int | None], Awaitable[tuple[Answer, float]]]


@dataclass(frozen=True)
class Inputs:
    """What a door parsed from its request: the budget and how to read it, and the model input."""

    budget_ms: float
    tolerance: float | None
    dataset: str | None
    policy: Policy
    prompt: str
    max_new_tokens: int
    image_b64: str | None = None


@dataclass(frozen=True)
class Admitted:
    """A request the budget path let through, with its call ready for a model replica."""

    inputs: Inputs
    answer: Answer
    controller_ms: float
    started: float  # perf_counter when the request arrived
    rungs: tuple[Rung, ...]
    call: ModelCall


@dataclass(frozen=True)
class Served:
    """A finished request. `answer` names the knobs that ran (late binding may have changed them);
    `first_token_ms` is the router's time to the first token (a stream's first chunk handed to the
    server, or the whole answer less the model's decode)."""

    answer: Answer
    result: ModelResult
    controller_ms: float
    model_ms: float
    first_token_ms: float
    total_ms: float


@dataclass(frozen=True)
class Failed:
    answer: Answer
    error: ModelCallError


def server_timing(controller_ms: float, model_ms: float, total_ms: float, queue_ms: float | None) -> str:
    """queue: the wait the router expected (and resolved the budget for), not a measured one."""
    queue = "" if queue_ms is None else f", queue;dur={queue_ms:.3f}"
    return f"controller;dur={controller_ms:.3f}, model;dur={model_ms:.3f}, total;dur={total_ms:.3f}{queue}"


def knob_headers(a: Answer) -> dict[str, str]:
    return {
        "X-Knob-Tier": a.knobs.tier,
        "X-Knob-Top-K": str(a.knobs.top_k),
        "X-Knob-Active-Blocks": str(a.knobs.num_active_blocks),
        "X-Table-Version": a.table_version or "none",
        "X-Budget-Feasible": {True: "true", False: "false", None: "unknown"}[a.feasible],
        "X-Fallback": "true" if a.fallback else "false",
    }


def headers_of(outcome: Served | Stream) -> dict[str, str]:
    """The headers every door sends with a result (a stream's at its first token)."""
    if isinstance(outcome, Served):
        model_ms, total_ms = outcome.model_ms, outcome.total_ms
    else:
        model_ms, total_ms = outcome.model_first_ms, outcome.first_token_ms
    timing = server_timing(outcome.controller_ms, model_ms, total_ms, outcome.answer.queue_wait_ms)
    return knob_headers(outcome.answer) | {"Server-Timing": timing}


class Stream:
    """An opened stream: its first piece has come (`first_text`, and `answer` bound to the knobs
    that ran). Iterate `rest()` for the text that follows; its last item is the `Served` (or a
    `Failed` when the model fails mid-stream). If the consumer stops early (the client left), the
    replica is told to stop and the request is counted as gone."""

    def __init__(self, pipeline: Pipeline, adm: Admitted, answer: Answer, token: int, gen: Any,
                 first: StreamPiece, model_started: float) -> None:
        self.pipeline, self.adm, self.answer, self.token, self.gen = pipeline, adm, answer, token, gen
        self.first = first
        self.first_text = first.text
        now = time.perf_counter()
        self.first_token_ms = (now - adm.started) * 1000
        self.model_first_ms = (now - model_started) * 1000
        self.controller_ms = adm.controller_ms
        self._model_started = model_started
        self._ended = first.result is not None
        # When the door handed the first chunk to the server (`sent_first`): what the router counts
        # as the stream's first token, so that the overhead it learns includes the response's
        # start and the first chunk's send, which a stream pays before its client sees a token.
        self.first_sent_ms: float | None = None

    def sent_first(self) -> None:
        """The door has handed the first chunk to the server (called once; later calls keep it)."""
        if self.first_sent_ms is None:
            self.first_sent_ms = (time.perf_counter() - self.adm.started) * 1000

    async def rest(self) -> AsyncGenerator[str | Served | Failed, None]:
        p, timeout = self.pipeline, self.pipeline.config.model.timeout_s
        finished, failed = False, False
        try:
            piece = self.first
            while piece.result is None:
                try:
                    piece = await asyncio.wait_for(anext(self.gen), timeout=timeout)
                except StopAsyncIteration:
                    raise ModelCallError(503, "model_error", "the model's stream ended without a result") from None
                except asyncio.TimeoutError:
                    raise ModelCallError(504, "model_timeout", f"no stream piece within {timeout:g} s") from None
                if piece.text:
                    yield piece.text
            finished = True
            first_ms = self.first_sent_ms if self.first_sent_ms is not None else self.first_token_ms
            yield p._finish(self.adm, self.answer, self.token, piece.result, self._model_started,
                            first_token_ms=first_ms, replica_first_ms=self.first.at_ms)
            p.stream_counts["finished"] += 1
        except Exception as e:  # noqa: BLE001 - a failure mid-stream is a value the door renders
            err = e if isinstance(e, ModelCallError) else describe_failure(e)
            p.stream_counts["failed"] += 1
            failed = True
            yield p._failed(self.answer, err)
        finally:
            if not finished:
                self.gen.cancel()  # the replica stops this member at its next step
                p.admission.failed(self.token)
                if not failed:
                    p.stream_counts["client_gone"] += 1


class _Done:
    """Stands in for the replica's generator when the first piece was already the last."""

    def cancel(self) -> None:
        pass


class Pipeline:
    def __init__(self, config: ServingConfig, resolve: Resolve, admission: QueueAdmission, model: Any,
                 recorder: RouterRecorder) -> None:
        self.config, self.resolve, self.admission, self.model = config, resolve, admission, model
        self.recorder = recorder
        # Streams as the router saw them: started, finished, failed (the model), client_gone.
        self.stream_counts = {"started": 0, "finished": 0, "failed": 0, "client_gone": 0}

    async def admit(self, inputs: Inputs, started: float) -> Admitted | Refused:
        """Budget, resolve, admission: a strict request no config can meet now is refused here."""
        adm = self.admission
        estimate = adm.estimate()
        answer, controller_ms = await self.resolve(
            adm.resolve_budget(inputs.budget_ms, estimate), inputs.tolerance, inputs.dataset,
            adm.tokens_for(inputs.max_new_tokens),
        )
        answer = adm.annotate(answer, inputs.budget_ms, estimate, inputs.policy)
        if inputs.policy == "strict" and (refused := adm.refusal(answer, estimate, self.config.headers.budget)):
            return refused  # nothing computed: a clear answer now beats a late one
        rungs, plan = adm.plan(answer)
        call = ModelCall(
            knobs=answer.knobs, prompt=inputs.prompt, max_new_tokens=inputs.max_new_tokens,
            image_b64=inputs.image_b64, expected_ms=answer.service_ms,
            decode_ms_per_token=answer.decode_ms_per_token, budget_ms=answer.model_budget_ms(), plan=plan,
        )
        return Admitted(inputs, answer, controller_ms, started, rungs, call)

    async def run(self, adm: Admitted) -> Served | Failed:
        """The whole answer."""
        m = self.config.model
        token = self.admission.sent(adm.answer)
        model_started = time.perf_counter()
        try:
            result = await call_model(self.model.generate.remote(adm.call), m.assign_timeout_s, m.timeout_s)
        except ModelCallError as e:
            self.admission.failed(token)
            return self._failed(adm.answer, e)
        except BaseException:  # the client went away (cancelled): not in flight any more
            self.admission.failed(token)
            raise
        answer = self.admission.ran(adm.answer, adm.rungs, result.dispatch)
        total_ms = (time.perf_counter() - adm.started) * 1000
        decode_ms = float(result.timings_ms.get("decode", 0.0))
        return self._finish(adm, answer, token, result, model_started,
                            first_token_ms=total_ms - decode_ms, replica_first_ms=None)

    async def stream(self, adm: Admitted) -> Stream | Failed:
        """Open a stream: the call goes to a replica's queue like any other; this returns once its
        first piece (the first token) has come, or with the failure that came instead."""
        m = self.config.model
        token = self.admission.sent(adm.answer)
        self.stream_counts["started"] += 1
        model_started = time.perf_counter()
        gen = self.model.options(stream=True).generate_stream.remote(adm.call)
        try:
            first = await asyncio.wait_for(anext(gen), timeout=m.assign_timeout_s + m.timeout_s)
        except BaseException as e:
            gen.cancel()
            self.admission.failed(token)
            if isinstance(e, asyncio.CancelledError):
                self.stream_counts["client_gone"] += 1
                raise
            if isinstance(e, asyncio.TimeoutError):
                limit = m.assign_timeout_s + m.timeout_s
                err = ModelCallError(504, "model_timeout", f"no first token within {limit:g} s")
            elif isinstance(e, StopAsyncIteration):
                err = ModelCallError(503, "model_error", "the model's stream ended without a result")
            else:
                err = describe_failure(e)
            self.stream_counts["failed"] += 1
            return self._failed(adm.answer, err)
        answer = self.admission.ran(adm.answer, adm.rungs, first.dispatch)
        return Stream(self, adm, answer, token, _Done() if first.result is not None else gen, first, model_started)

    def _finish(self, adm: Admitted, answer: Answer, token: int, result: ModelResult, model_started: float, *,
                first_token_ms: float, replica_first_ms: float | None) -> Served:
        now = time.perf_counter()
        total_ms, model_ms = (now - adm.started) * 1000, (now - model_started) * 1000
        # The serving overhead: what the request spent outside the replica up to its first token (a
        # stream: router's first piece - replica's first piece; whole: router's - replica's whole
        # time). Never a stream's duration.
        overhead: float | None
        if replica_first_ms is not None:
            overhead = first_token_ms - replica_first_ms
        else:
            overhead = total_ms - result.replica_ms if result.replica_ms > 0 else None
        self.admission.done(token, answer, result, overhead)
        self.served(answer, adm.inputs.budget_ms, first_token_ms=first_token_ms, total_ms=total_ms)
        return Served(answer, result, adm.controller_ms, model_ms, first_token_ms, total_ms)

    def _failed(self, answer: Answer, e: ModelCallError) -> Failed:
        self.recorder.model_error(e.kind)
        return Failed(answer, e)

    def served(self, answer: Answer, budget_ms: float, *, first_token_ms: float, total_ms: float) -> None:
        """Count a served request, and whether it met its budget as this router measured it: its
        first token or the whole request, as budget.covers says."""
        covers = self.config.budget.covers
        measured = total_ms if covers == "total" else first_token_ms
        self.recorder.served(answer, budget_ms, measured <= budget_ms, covers)
