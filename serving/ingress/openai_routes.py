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

from serving.errors import BadInput, ModelCallError
from serving.ingress import openai_api
from serving.ingress.body import parse_json, read_body
from serving.ingress.budget_plan import parse_policy
from serving.ingress.inputs import parse_budget, parse_dataset, parse_tolerance, single
from serving.ingress.model_call import call_model, describe_failure

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


def _error(e: ModelCallError, answer: Any, headers: dict[str, str]) -> JSONResponse:
    body = openai_api.error_body(e.message, e.kind, None, e.kind) | {"budget": openai_api.budget_extra(answer)}
    return JSONResponse(body, status_code=e.status, headers=headers | {"X-Error-Type": e.kind})


async def handle(router: Any, request: Request, kind: str) -> Response:
    started = time.perf_counter()
    cfg, h = router.config, router.config.headers
    data = parse_json(await read_body(request, cfg.limits.max_body_bytes))
    req = openai_api.parse(data, kind, cfg.limits, cfg.model.max_new_tokens_limit)
    budget = _budget(router, request, req)
    tolerance = parse_tolerance(single(request.headers.getlist(h.tolerance), h.tolerance), h.tolerance)
    dataset = parse_dataset(single(request.headers.getlist(h.dataset), h.dataset), h.dataset)
    policy = parse_policy(single(request.headers.getlist(h.policy), h.policy), h.policy, cfg.budget.default_policy)
    adm = router.admission
    estimate = adm.estimate()
    answer, controller_ms = await router._answer(
        adm.resolve_budget(budget, estimate), tolerance, dataset, adm.tokens_for(req.max_new_tokens)
    )
    answer = adm.annotate(answer, budget, estimate, policy)
    headers = router.knob_headers(answer)
    if policy == "strict" and (refused := adm.refusal(answer, estimate, h.budget)) is not None:
        err = json.loads(bytes(refused.body))["error"]
        body = openai_api.error_body(err["message"], "budget_error", h.budget, err.get("type"))
        return JSONResponse(body | {"budget": openai_api.budget_extra(answer.to_dict())},
                            status_code=refused.status_code,
                            headers=headers | {k: v for k, v in refused.headers.items() if k.lower() == "retry-after"})
    payload = {"prompt": req.prompt, "max_new_tokens": req.max_new_tokens, "image_b64": req.image_b64}
    args = (answer.knobs, payload, answer.service_ms, answer.decode_ms_per_token)
    rid = openai_api.new_id(kind)
    if req.stream:
        events = _events(router, req, answer, args, started, rid)
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers=headers | {"Cache-Control": "no-cache", "X-Request-Id": rid})
    model_started = time.perf_counter()
    token = adm.sent(answer)
    rungs, plan = adm.plan(answer)
    try:
        response = router.model.generate.remote(*args, answer.model_budget_ms(), plan)
        output = await call_model(response, cfg.model.assign_timeout_s, cfg.model.timeout_s)
    except ModelCallError as e:
        adm.failed(token)
        router.recorder.model_error(e.kind)
        return _error(e, answer.to_dict(), headers)
    except BaseException:
        adm.failed(token)
        raise
    now = time.perf_counter()
    total_ms, model_ms = (now - started) * 1000, (now - model_started) * 1000
    answer = adm.ran(answer, rungs, output)  # the knobs the replica chose at dispatch
    headers = headers | router.knob_headers(answer)
    adm.done(token, answer, output, total_ms)
    decode_ms = float((output.get("timings_ms") or {}).get("decode", 0.0))
    router.served(answer, budget, first_token_ms=total_ms - decode_ms, total_ms=total_ms)
    timing = f"controller;dur={controller_ms:.3f}, model;dur={model_ms:.3f}, total;dur={total_ms:.3f}"
    return JSONResponse(openai_api.completion(req, output, answer.to_dict(), rid),
                        headers=headers | {"Server-Timing": timing})


async def _events(
    router: Any, req: openai_api.OpenAIRequest, answer: Any, args: tuple[Any, ...], started: float, rid: str
) -> AsyncIterator[str]:
    """Chunks as the model decodes them: the first right after the prefill (time to first token is
    what a first-token budget promises), `data: [DONE]` last. A client that leaves cancels this
    generator, which cancels the model's stream: the replica stops decoding at its next step."""
    adm = router.admission
    token = adm.sent(answer)
    stream = router.model.options(stream=True).generate_stream.remote(*args)
    sent, first_ms, output, finished = "", None, None, False
    try:
        async for piece in stream:
            if "output" in piece:
                output = piece["output"]
                continue
            text = str(piece.get("text", ""))
            delta = text[len(sent):] if text.startswith(sent) else text
            if first_ms is None:
                first_ms = (time.perf_counter() - started) * 1000
                yield openai_api.chunk(req, rid, delta, None, answer.to_dict(), first=True)
            elif delta:
                yield openai_api.chunk(req, rid, delta, None, None)
            sent = text
        out = output or {}
        yield openai_api.chunk(req, rid, "", openai_api.finish_reason(str(out.get("finish_reason"))), None)
        if req.include_usage:
            yield openai_api.usage_chunk(req, rid, out)
        yield "data: [DONE]\n\n"
        finished = True
        total_ms = (time.perf_counter() - started) * 1000
        adm.done(token, answer, out, total_ms)
        router.served(answer, float(answer.budget_ms), first_token_ms=first_ms or total_ms, total_ms=total_ms)
    except Exception as e:  # noqa: BLE001 - an error mid-stream is an event, then the end
        err = e if isinstance(e, ModelCallError) else describe_failure(e)
        router.recorder.model_error(err.kind)
        yield f"data: {json.dumps(openai_api.error_body(err.message, err.kind, None, err.kind))}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        if not finished:
            adm.failed(token)
            stream.cancel()  # the client went away (or the model failed): stop the generation
