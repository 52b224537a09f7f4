"""`Router`: the HTTP ingress. Budget header -> knobs -> model replica -> response with knobs."""

import asyncio
import time
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.middleware.errors import ServerErrorMiddleware

from serving.config import ServingConfig
from serving.errors import BadInput
from serving.ingress import openai_api, openai_routes
from serving.ingress.admission import QueueAdmission, Refused
from serving.ingress.answer import Answer
from serving.ingress.auth import HEADER, ActiveKeys, ApiKeys
from serving.ingress.body import generate_body
from serving.ingress.budget_plan import parse_policy
from serving.ingress.direct_routes import DirectRoutes
from serving.ingress.inputs import parse_budget, parse_dataset, parse_tolerance, single
from serving.ingress.pipeline import Failed, Inputs, Pipeline, headers_of, knob_headers, server_timing
from serving.ingress.public_views import controller_status as public_controller
from serving.ingress.public_views import local_table_status
from serving.ingress.resolver import Resolver
from serving.telemetry.metric_buffer import metric_buffer
from serving.telemetry.recorder import router_recorder

api = DirectRoutes(title="MoE latency-budget router")


@api.exception_handler(BadInput)
async def _bad_input(_: Request, e: BadInput) -> JSONResponse:
    # e.field is one of ours (configured header, query or body field name, "body"): a bounded set.
    router_recorder().bad_request(e.field)
    if openai_api.is_openai_path(_.url.path):  # the OpenAI error shape on the OpenAI routes
        return JSONResponse(openai_api.bad_input_body(e), status_code=e.status)
    return JSONResponse(e.to_dict(), status_code=e.status)


class RequireKey:
    """API keys, as plain ASGI middleware. Starlette's `@app.middleware("http")` (BaseHTTPMiddleware)
    runs every request, streams included, through an extra task and memory stream: a cost on each
    request of the hot path, and a stream's client disconnect reaches the route later."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        keys = ActiveKeys.keys
        if keys is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if not ApiKeys.is_open(request.url.path, scope.get("root_path", "")):
            values = request.headers.getlist(HEADER)
            if len(values) != 1 or not keys.allows(values[0]):
                bad = BadInput(HEADER, None, "is missing or not a valid API key", f"send {HEADER}: Bearer <key>", 401)
                response = await _bad_input(request, bad)
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


api.add_middleware(RequireKey)


@api.exception_handler(RequestValidationError)
async def _bad_body(_: Request, e: RequestValidationError) -> JSONResponse:
    # Only for routes whose inputs FastAPI parses; /v1/generate reads its body itself (serving.ingress.body).
    err = e.errors()[0] if e.errors() else {"msg": "invalid", "input": None}
    bad = BadInput("request", err.get("input"), f"is not valid: {err.get('msg')}", "see docs/serving.md")
    return await _bad_input(_, bad)


def refused_response(r: Refused) -> JSONResponse:
    """/v1/generate's shape of a refusal: the error, the estimate behind it and the answer."""
    body = {"error": r.error, "estimate": r.estimate, **r.answer.to_dict()}
    return JSONResponse(body, status_code=r.status, headers=knob_headers(r.answer) | r.headers)


async def _awaited(response: Any) -> Any:
    return await response


class RouterDoors:
    """The HTTP doors and the budget path in front of a model. `model` is a DeploymentHandle to the
    MoEModel deployment (the Router deployment below), or the replica's own methods in a handle's
    shape when the model replica is the ingress itself (serving.model_ingress)."""

    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self, controller: DeploymentHandle[Any] | None, model: Any, config: dict[str, Any]
    ) -> None:
        self.config = ServingConfig.model_validate(config)
        self.model = model
        self.resolver = Resolver(controller, self.config.controller, self.config.fallback)
        self.recorder = router_recorder()
        keys = self.config.auth.api_keys_file
        ActiveKeys.keys = ApiKeys.from_file(keys) if keys else None
        self.admission = QueueAdmission(self.config, controller)
        metric_buffer().start()  # the request path's Ray metrics are written from here on a timer
        # Every door takes this one path (serving.ingress.pipeline).
        self.pipeline = Pipeline(self.config, self._answer, self.admission, model, self.recorder)
        await self.resolver.start()
        self.admission.start()

    async def _answer(
        self, budget_ms: float, tolerance: float | None, dataset: str | None, max_new_tokens: int | None = None
    ) -> tuple[Answer, float]:
        started = time.perf_counter()
        answer = await self.resolver.answer(budget_ms, tolerance, dataset, max_new_tokens)
        ms = (time.perf_counter() - started) * 1000
        self.recorder.answered(ms, answer)
        return answer, ms

    def _inputs(
        self, getlist: Any, budget_field: str, dataset_field: str, tol_field: str
    ) -> tuple[float, float | None, str | None]:
        def get(name: str) -> str | None:  # a repeated header or query parameter is refused
            return single(getlist(name), name)

        return (
            parse_budget(get(budget_field), budget_field, self.config.budget),
            parse_tolerance(get(tol_field), tol_field),
            parse_dataset(get(dataset_field), dataset_field),
        )

    @api.post("/v1/generate")
    async def generate_http(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        h = self.config.headers
        budget, tolerance, dataset = self._inputs(request.headers.getlist, h.budget, h.dataset, h.tolerance)
        raw_policy = single(request.headers.getlist(h.policy), h.policy)  # repeated: refused, never guessed
        policy = parse_policy(raw_policy, h.policy, self.config.budget.default_policy)
        body = await generate_body(request, self.config.limits, self.config.model.max_new_tokens_limit)
        inputs = Inputs(budget, tolerance, dataset, policy, body.prompt, body.max_new_tokens, body.image)
        admitted = await self.pipeline.admit(inputs, started)
        if isinstance(admitted, Refused):
            return refused_response(admitted)
        outcome = await self.pipeline.run(admitted)
        if isinstance(outcome, Failed):
            return self._model_error(outcome)
        content = {
            "output": outcome.result.to_dict(),
            **outcome.answer.to_dict(),
            "timings_ms": {"controller": outcome.controller_ms, "model": outcome.model_ms, "total": outcome.total_ms},
        }
        return JSONResponse(content, headers=headers_of(outcome))

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        """OpenAI chat completions (serving.ingress.openai_api); the budget as for /v1/generate."""
        return await openai_routes.handle(self, request, "chat")

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await openai_routes.handle(self, request, "completion")

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        return openai_api.models()

    def _model_error(self, failed: Failed) -> JSONResponse:
        e = failed.error
        return JSONResponse(
            {"error": e.to_dict(), **failed.answer.to_dict()},
            status_code=e.status,
            headers=knob_headers(failed.answer) | {"X-Error-Type": e.kind},
        )

    @api.get("/v1/knobs")
    async def knobs(self, request: Request) -> JSONResponse:
        budget, tolerance, dataset = self._inputs(request.query_params.getlist, "budget_ms", "dataset", "tolerance")
        answer, controller_ms = await self._answer(budget, tolerance, dataset)
        return JSONResponse(
            answer.to_dict(),
            headers=knob_headers(answer) | {"Server-Timing": server_timing(controller_ms, 0.0, controller_ms, None)},
        )

    @api.get("/v1/table")
    async def table(self) -> dict[str, Any]:
        controller = await self.resolver.controller_status()
        local = self.resolver.local.status() if self.config.controller.resolve_mode == "local" else None
        in_use = local["table_version"] if local else controller.get("table_version")
        return {
            "resolve_mode": self.config.controller.resolve_mode,
            "table_version": in_use,
            "router": {
                "replica_id": serve.get_replica_context().replica_id.unique_id,
                "local_table": local_table_status(local),
            },
            # Bounded and without paths, the build's source or Ray internals (public_views.py).
            "controller": public_controller(controller),
        }

    @api.get("/v1/stats")
    async def stats_endpoint(self) -> dict[str, Any]:
        """This router replica's counters, and the reload counters of the controller replica that
        answers (the Ray metrics carry the same numbers, for Prometheus)."""
        local = self.resolver.local.status() if self.config.controller.resolve_mode == "local" else None
        controller = await self.resolver.controller_status()
        if "error" in controller:
            controller = public_controller(controller)
        else:
            controller = {
                "replica_id": controller.get("replica_id"),
                "table_version": controller.get("table_version"),
                "reloads_accepted": controller.get("reloads_accepted"),
                "reloads_rejected": controller.get("reloads_rejected"),
                "last_rejection": public_controller(controller)["last_rejection"],  # paths cut
                "last_error": public_controller(controller)["last_error"],
                "live": controller.get("live"),
                "read_failures": controller.get("read_failures"),
            }
        return {
            "resolve_mode": self.config.controller.resolve_mode,
            "table_version": local["table_version"] if local else controller.get("table_version"),
            "router": {
                "replica_id": serve.get_replica_context().replica_id.unique_id,
                **self.recorder.snapshot(),
                "local_table_syncs": local["syncs"] if local else None,
                "queue": self.admission.status(),
                "streams": dict(self.pipeline.stream_counts),
            },
            "controller": controller,
            "model": await self._model_engine_stats(),
        }

    async def _model_engine_stats(self) -> dict[str, Any]:
        """One model replica's engine: capture seconds, graph memory, disabled configs ({} for the
        simulated backend). Bounded: a busy or restarting model must not hold /v1/stats."""
        response = self.model.engine_stats.remote()
        try:
            return await asyncio.wait_for(_awaited(response), timeout=2.0)
        except Exception as e:  # noqa: BLE001 - stats are best effort
            response.cancel()
            return {"error": f"model engine stats unavailable ({type(e).__name__})"}

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """200 "ok" only while answers come from a table; 503 "no_table" (with the reason) while the
        router answers with the fallback knobs for lack of one, which it keeps doing meanwhile."""
        health = await self.resolver.health()
        return JSONResponse(health.to_dict(), status_code=200 if health.ok else 503)


async def _generate_direct(scope: Any, receive: Any, send: Any) -> None:
    """POST /v1/generate without FastAPI's router (serving.ingress.direct_routes): the replica's own
    handler, and BadInput answered as the exception handler above answers it."""
    doors: RouterDoors = serve.get_replica_context().servable_object  # type: ignore[assignment]  # Serve types it Callable
    request = Request(scope, receive)
    try:
        response = await doors.generate_http(request)
    except BadInput as e:
        response = await _bad_input(request, e)
    await response(scope, receive, send)


# The hot path. Outside in, as FastAPI's own stack has it: a 500 for an unexpected error, then the
# API keys, then the handler.
api.direct("POST", "/v1/generate", ServerErrorMiddleware(RequireKey(_generate_direct)))


# The two-hop topology: this deployment is the HTTP ingress and calls MoEModel replicas through a
# handle (serving.app, `serving.topology: router`).
Router = serve.deployment(name="Router", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})(
    serve.ingress(api)(RouterDoors)
)
