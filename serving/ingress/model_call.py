"""One call from the router to a model replica, with failures turned into typed, readable errors.

A request waits at most `assign_timeout_s` for a replica to take it (a restarting replica must not
hold clients for the whole model timeout), then at most `timeout_s` for the answer. What reaches
the client names the kind of failure and, for our own errors, the value; Ray internals (actor ids,
pids, node addresses) go to the log only.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable
from typing import Any, TypeVar

from controller.errors import ControllerError
from controller.store import short
from moe.errors import InputTooLongError
from serving.errors import ModelCallError

log = logging.getLogger("ray.serve")

T = TypeVar("T")


async def within(awaitable: Awaitable[T], timeout_s: float) -> T:
    """`awaitable`, or TimeoutError after `timeout_s`. On Python 3.11 `asyncio.wait_for` runs its
    awaitable as a task of its own (a step of the event loop more per call, on every request);
    `asyncio.timeout` cancels in place, as 3.12's `wait_for` does."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(timeout_s):
            return await awaitable
    return await asyncio.wait_for(awaitable, timeout_s)


async def _assigned(response: Any) -> None:
    # DeveloperAPI of Ray 2.60 (pinned): resolves when a replica has accepted the request.
    await response._fetch_future_result_async()


async def call_model(response: Any, assign_timeout_s: float, timeout_s: float) -> Any:
    """Await a model DeploymentResponse; ModelCallError on any failure."""
    try:
        if hasattr(response, "_fetch_future_result_async"):
            try:
                await within(_assigned(response), assign_timeout_s)
            except asyncio.TimeoutError:
                response.cancel()
                raise ModelCallError(
                    503,
                    "model_unavailable",
                    f"no model replica took the request within {assign_timeout_s:g} s "
                    "(replicas restarting or all busy); retry shortly",
                ) from None
        return await within(response, timeout_s)
    except ModelCallError:
        raise
    except asyncio.TimeoutError:
        response.cancel()
        raise ModelCallError(504, "model_timeout", f"the model did not answer within {timeout_s:g} s") from None
    except Exception as e:  # a replica failure is ours, not the client's: typed 503, never a bare 500
        raise describe_failure(e) from None


def describe_failure(e: BaseException) -> ModelCallError:
    """Ray wraps a replica's exception (RayTaskError, with the original as `cause`); actor deaths
    come as RayActorError and its kin. Only our own errors' messages reach the client."""
    cause = getattr(e, "cause", None) or e
    log.warning("model call failed: %r", e)
    if isinstance(cause, InputTooLongError):
        # More tokens than the engine's largest shape: the client's to fix, and never an OOM.
        return ModelCallError(413, "input_too_long", short(str(cause), 300).strip("'\""))
    if isinstance(cause, ControllerError):
        # e.g. a KnobError: a config this model cannot run (the controller should have refused it).
        return ModelCallError(503, "unsupported_config", short(str(cause), 300).strip("'\""))
    name = type(cause).__name__
    if any(word in name for word in ("Actor", "Unavailable", "Died", "Cancelled")):
        return ModelCallError(503, "model_unavailable", "the model replica went away during the request; retry")
    return ModelCallError(503, "model_error", f"the model replica failed ({name}); see the server log")
