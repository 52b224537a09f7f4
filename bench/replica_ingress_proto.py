"""Design (b) of issue 18 as a measured prototype: the model replica is the HTTP ingress.

The MoEModel replica class, plus the Router's LocalTable (long-polled from the LookupController)
and one door, /v1/generate: budget header -> resolve on the local copy -> the replica's own
`generate` in-process (no handle call, no second hop). Everything the Router does besides
(admission and queue estimate, OpenAI doors, streams, API keys, metrics, /v1/stats) is left out:
their cost per request is tens of microseconds, measured in the router's own Server-Timing.
The overhead benchmark deploys it next to the real app (bench/overhead_paths.py).
"""

# No `from __future__ import annotations`: FastAPI reads the route's `Request` annotation through
# Serve's class-based view, which does not resolve string annotations.
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import Application

from serving.config import ServingConfig
from serving.ingress.resolver import Resolver
from serving.lookup.lookup_controller import LookupController
from serving.replica.model import MoEModel
from serving.wire import ModelCall

proto_api = FastAPI(title="replica-as-ingress prototype")
_Model: Any = MoEModel.func_or_class  # the plain class under the deployment


@serve.deployment(name="ReplicaIngress", max_ongoing_requests=256)
@serve.ingress(proto_api)
class ReplicaIngress(_Model):  # type: ignore[misc]  # a Serve deployment's class, untyped
    async def __init__(self, model_settings: dict[str, Any], fallback: dict[str, Any], controller: Any,  # type: ignore[misc]
                       config: dict[str, Any]) -> None:
        super().__init__(model_settings, fallback)
        c = ServingConfig.model_validate(config)
        self.resolver = Resolver(controller, c.controller, c.fallback)
        await self.resolver.start()

    @proto_api.post("/v1/generate")
    async def v1_generate(self, request: Request) -> JSONResponse:
        budget = float(request.headers.get("x-latency-budget-ms", "1000"))
        body = await request.json()
        answer = await self.resolver.answer(budget, None, None)
        call = ModelCall(knobs=answer.knobs, prompt=str(body["prompt"]), max_new_tokens=int(body["max_new_tokens"]),
                         expected_ms=answer.service_ms, decode_ms_per_token=answer.decode_ms_per_token,
                         budget_ms=answer.model_budget_ms())
        result = await self.generate(call)
        return JSONResponse({"output": result.to_dict(), **answer.to_dict()})


def replica_ingress_app(config: ServingConfig, actor_options: dict[str, Any] | None = None) -> Application:
    c = config.controller
    controller = LookupController.options(user_config=c.user_config()).bind(c.user_config(), None)
    ingress = ReplicaIngress.options(ray_actor_options=actor_options) if actor_options else ReplicaIngress
    return ingress.bind(config.model.model_dump(), config.fallback.knobs.model_dump(), controller,
                               config.model_dump())
