"""The OpenAI-compatible routes' request path: the same budget resolution, admission and model
call as /v1/generate, answered in the OpenAI shapes (serving.ingress.openai_api), streamed as server-sent
events when asked. Kept out of router.py so that the ingress class stays a list of routes."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from serving.errors import BadInput
from serving.ingress import openai_api
from serving.ingress.admission import Refused
from serving.ingress.body import parse_json, read_body
from serving.ingress.budget_plan import parse_policy
from serving.ingress.inputs import parse_budget, parse_dataset, parse_tolerance, single
from serving.ingress.pipeline import Failed, Inputs, Pipeline, Served, Stream, headers_of, knob_headers

BODY_BUDGET = "latency_budget_ms"


def _budget(router: Any, request: Request, req: openai_api.OpenAIRequest) -> float:
    """The header, or the body's latency_budget_ms (the SDK's extra_body); both is ambiguous."""
    h = router.config.headers
    header = single(request.headers.getlist(h.budget), h.budget)
    if req.budget_ms is None:
        return parse_budget(header, h.budget, router.config.budget)
    if header is not None:
        raise BadInput(BODY_BUDGET, req.budget_ms, f"is given with the {h.budget} header", "send one of them")
    if isinstance(req.budget_ms, bool) or not isinstance(req.budget_ms, (int, float)):
        raise BadInput(BODY_BUDGET, req.budget_ms, "is not a number", "send milliseconds, e.g. 180")
    return parse_budget(repr(float(req.budget_ms)), BODY_BUDGET, router.config.budget)


def _error(failed: Failed) -> JSONResponse:
    e = failed.error
    extra = {"budget": openai_api.budget_extra(failed.answer.to_dict())}
    body = openai_api.error_body(e.message, e.kind, None, e.kind) | extra
    return JSONResponse(body, status_code=e.status, headers=knob_headers(failed.answer) | {"X-Error-Type": e.kind})


def _refused(r: Refused, budget_header: str) -> JSONResponse:
    body = openai_api.error_body(r.error["message"], "budget_error", budget_header, r.error.get("type"))
    return JSONResponse(body | {"budget": openai_api.budget_extra(r.answer.to_dict())}, status_code=r.status,
                        headers=knob_headers(r.answer) | r.headers)


async def handle(router: Any, request: Request, kind: str) -> Response:
    """The OpenAI door: its inputs parsed, then the one request path (serving.ingress.pipeline),
    rendered in the OpenAI shapes, streamed when asked."""
    started = time.perf_counter()
    cfg, h = router.config, router.config.headers
    data = parse_json(await read_body(request, cfg.limits.max_body_bytes))
    req = openai_api.parse(data, kind, cfg.limits, cfg.model.max_new_tokens_limit)
    budget = _budget(router, request, req)
    tolerance = parse_tolerance(single(request.headers.getlist(h.tolerance), h.tolerance), h.tolerance)
    dataset = parse_dataset(single(request.headers.getlist(h.dataset), h.dataset), h.dataset)
    policy = parse_policy(single(request.headers.getlist(h.policy), h.policy), h.policy, cfg.budget.default_policy)
    inputs = Inputs(budget, tolerance, dataset, policy, req.prompt, req.max_new_tokens, req.image_b64)
    pipeline: Pipeline = router.pipeline
    admitted = await pipeline.admit(inputs, started)
    if isinstance(admitted, Refused):
        return _refused(admitted, h.budget)
    rid = openai_api.new_id(kind)
    if req.stream:
        opened = await pipeline.stream(admitted)
        if isinstance(opened, Failed):
            return _error(opened)
        return StreamingResponse(_events(req, opened, rid), media_type="text/event-stream",
                                 headers=headers_of(opened) | {"Cache-Control": "no-cache", "X-Request-Id": rid})
    outcome = await pipeline.run(admitted)
    if isinstance(outcome, Failed):
        return _error(outcome)
    return JSONResponse(openai_api.completion(req, outcome.result.to_dict(), outcome.answer.to_dict(), rid),
                        headers=headers_of(outcome))


async def _events(req: openai_api.OpenAIRequest, stream: Stream, rid: str) -> AsyncIterator[str]:
    """Server-sent events: the first token's chunk (with the budget extra: the knobs that ran), a
    chunk per piece of new text, the finish, usage when asked, then `data: [DONE]`. A client that
    leaves closes this generator, which closes the stream: the replica stops at its next step."""
    yield openai_api.chunk(req, rid, stream.first_text, None, stream.answer.to_dict(), first=True)
    stream.sent_first()  # resumed once the server has taken that chunk (Starlette sends, then asks for more)
    rest = stream.rest()
    try:
        async for item in rest:
            if isinstance(item, str):
                yield openai_api.chunk(req, rid, item, None, None)
            elif isinstance(item, Served):
                out = item.result.to_dict()
                yield openai_api.chunk(req, rid, "", openai_api.finish_reason(item.result.finish_reason), None,
                                       timings=openai_api.timings_extra(out, item.first_token_ms))
                if req.include_usage:
                    yield openai_api.usage_chunk(req, rid, out)
                yield "data: [DONE]\n\n"
            else:  # Failed mid-stream: an error event, then the end
                e = item.error
                yield f"data: {json.dumps(openai_api.error_body(e.message, e.kind, None, e.kind))}\n\n"
                yield "data: [DONE]\n\n"
    finally:
        await rest.aclose()
