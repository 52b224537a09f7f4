"""Router side of live latency feedback: turn each model answer into one observation (what the
replica measured) and send them to the LookupController in batches, off the request path."""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from typing import Any

from serving.wire import ModelResult

log = logging.getLogger("ray.serve")
MAX_BUFFERED = 10_000  # beyond this (controller down for long) the oldest observations go
MAX_BATCH = 2_000


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def observation(config_key: str, result: ModelResult) -> dict[str, Any] | None:
    """One observation from a model answer; None when the replica did not report its timings."""
    t = result.timings_ms
    vision, prefill, decode = _num(t.get("vision")), _num(t.get("prefill")), _num(t.get("decode"))
    if vision is None and prefill is None:
        return None
    tokens = result.output_tokens if type(result.output_tokens) is int and result.output_tokens >= 0 else 0
    crops = result.crops
    return {
        "config": config_key,
        "first_token_ms": (vision or 0.0) + (prefill or 0.0),
        "decode_ms_per_token": decode / tokens if decode is not None and tokens > 0 else None,
        "output_tokens": tokens,
        "queue_wait_ms": _num(result.queue_wait_ms),
        "crops": crops if type(crops) is int else None,
    }


class FeedbackSender:
    def __init__(self, controller: Any, flush_interval_s: float, timeout_s: float = 5.0) -> None:
        self.controller, self.flush_interval_s, self.timeout_s = controller, flush_interval_s, timeout_s
        self.buffer: deque[dict[str, Any]] = deque(maxlen=MAX_BUFFERED)
        self.sent = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    def add(self, obs: dict[str, Any] | None) -> None:
        if obs is None:
            return
        if len(self.buffer) == self.buffer.maxlen:
            self.dropped += 1
        self.buffer.append(obs)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._flush_forever())

    async def flush_once(self) -> int:
        batch = [self.buffer.popleft() for _ in range(min(MAX_BATCH, len(self.buffer)))]
        if not batch:
            return 0
        response = self.controller.record_live.remote(batch)
        try:
            await asyncio.wait_for(_awaited(response), timeout=self.timeout_s)
        except Exception as e:  # controller restarting: these observations are lost, not retried
            response.cancel()
            self.dropped += len(batch)
            self.last_error = f"{type(e).__name__}: {e}"[:300]
            return 0
        self.sent += len(batch)
        self.last_error = None
        return len(batch)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            try:
                await self.flush_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the sender die
                log.exception("feedback flush failed")

    def status(self) -> dict[str, Any]:
        return {"buffered": len(self.buffer), "sent": self.sent, "dropped": self.dropped,
                "last_error": self.last_error}


async def _awaited(response: Any) -> Any:
    return await response
