"""Closed-loop HTTP load from a background thread, for end-to-end tests and benchmarks."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sample:
    budget_ms: float
    status: int  # 0: the request itself failed (connection error, client timeout)
    knobs: dict[str, Any] | None
    table_version: str | None
    fallback: bool | None
    latency_s: float
    started: float



class LoadLoop:
    """Closed-loop HTTP load from a background thread: `concurrency` clients, each sending the next
    request as soon as the previous one answers. Every outcome is kept in `samples`."""

    def __init__(self, url: str, budgets: Sequence[float], concurrency: int = 8, prompt: str = "hi") -> None:
        self.url, self.budgets, self.concurrency, self.prompt = url, list(budgets), concurrency, prompt
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> LoadLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    async def _client(self, client: Any, worker: int) -> None:
        i = worker
        while not self._stop.is_set():
            budget = self.budgets[i % len(self.budgets)]
            i += self.concurrency
            started = time.perf_counter()
            try:
                r = await client.post(
                    self.url, json={"prompt": self.prompt}, headers={"X-Latency-Budget-Ms": str(budget)}
                )
                body = r.json() if r.status_code == 200 else {}
                sample = Sample(
                    budget,
                    r.status_code,
                    body.get("knobs"),
                    body.get("table_version"),
                    body.get("fallback"),
                    time.perf_counter() - started,
                    started,
                )
            except Exception:
                sample = Sample(budget, 0, None, None, None, time.perf_counter() - started, started)
            self.samples.append(sample)

    async def _main(self) -> None:
        import httpx

        limits = httpx.Limits(max_connections=self.concurrency * 2)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            await asyncio.gather(*(self._client(client, w) for w in range(self.concurrency)))

