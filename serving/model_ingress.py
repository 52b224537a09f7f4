"""The model replica as the HTTP ingress (`topology: model_ingress`): one hop from HAProxy to the model.

One deployment, named MoEModel, holds a MoEModel replica and the Router's doors (serving.ingress.router):
the budget header, the replica's own copy of the table (long-polled from the LookupController, as
the Router does), admission, the OpenAI API and streams, API keys, /v1/stats. The doors call the
replica's own methods in-process through `InProcessModel`, which has a DeploymentHandle's shape, so
the one request path (serving.ingress.pipeline) is the same in both topologies. What this removes is
a Serve hop per request (HTTP ingress -> Router -> gRPC -> MoEModel): 6-8 ms on a 2-core CPU box,
bench/bench_overhead_paths.py.
"""

# No `from __future__ import annotations`: FastAPI reads the doors' `Request` annotations through
# Serve's class-based view, which does not resolve string annotations.
import asyncio
import inspect
from collections.abc import AsyncGenerator, Callable
from typing import Any

from ray import serve

from serving.ingress.router import RouterDoors, api
from serving.replica.model import MoEModel

_Replica: Any = MoEModel.func_or_class  # type: ignore[attr-defined]  # a Deployment at run time; mypy sees the class


class InProcessModel:
    """A replica's own methods in a DeploymentHandle's shape: `.generate.remote(call)` is awaitable
    and cancellable, `.options(stream=True).generate_stream.remote(call)` an async iterator with
    `cancel()`. No copy, no serialisation: the doors and the model share the replica's event loop."""

    def __init__(self, replica: Any, stream: bool = False) -> None:
        self._replica, self._stream = replica, stream

    def options(self, *, stream: bool = False) -> "InProcessModel":
        return InProcessModel(self._replica, stream)

    def __getattr__(self, name: str) -> "_Method":
        if name.startswith("_"):
            raise AttributeError(name)
        return _Method(getattr(self._replica, name), self._stream)


class _Method:
    def __init__(self, fn: Callable[..., Any], stream: bool) -> None:
        self.fn, self.stream = fn, stream

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        if self.stream:
            return _LocalStream(self.fn(*args, **kwargs))
        return _LocalResponse(self.fn(*args, **kwargs))


class _LocalResponse:
    """An awaitable answer. A coroutine runs in the task that awaits it, not as a task of its own (a
    step of the event loop less on every request), and is cancelled with that task (a timeout, a
    client that left) as a handle's call is; `cancel()` before the await means it never runs."""

    def __init__(self, value: Any) -> None:
        self._value = value
        self._awaited = False

    def __await__(self) -> Any:
        self._awaited = True
        if inspect.isawaitable(self._value):
            return self._value.__await__()
        return _ready(self._value).__await__()

    def cancel(self) -> None:
        if not self._awaited and inspect.iscoroutine(self._value):
            self._value.close()


async def _ready(value: Any) -> Any:
    return value


class _LocalStream:
    """The replica's async generator; `cancel()` closes it as Serve closes a cancelled stream, so
    the replica's own cleanup (the member stops at its next step) runs."""

    def __init__(self, gen: AsyncGenerator[Any, None]) -> None:
        self._gen = gen
        self._closing: asyncio.Task[None] | None = None

    def __aiter__(self) -> "_LocalStream":
        return self

    async def __anext__(self) -> Any:
        return await self._gen.__anext__()

    def cancel(self) -> None:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())

    async def _close(self) -> None:
        try:
            await self._gen.aclose()
        except RuntimeError:  # still running in a cancelled reader: its own cancellation ends it
            pass


class ModelIngressReplica(RouterDoors, _Replica):  # type: ignore[misc]  # Serve's class is untyped
    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self,
        settings: dict[str, Any],
        fallback_knobs: dict[str, Any],
        store: str | None,
        poll_interval_s: float,
        controller: Any,
        config: dict[str, Any],
    ) -> None:
        # The model first (a torch backend captures its graphs here), then the doors, whose table
        # copy the controller sends once the model's supported ranges are known.
        _Replica.__init__(self, settings, fallback_knobs, store, poll_interval_s)
        await RouterDoors.__init__(self, controller, InProcessModel(self), config)


ModelIngress = serve.deployment(name="MoEModel", max_ongoing_requests=256)(serve.ingress(api)(ModelIngressReplica))
