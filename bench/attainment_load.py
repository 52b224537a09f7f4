"""Load against any router base URL, and the share of requests that met their budget.

Closed loop (`closed_loop`: N clients, each sends its next request when the previous one answers)
or open loop (`open_loop`: Poisson arrivals at a set rate, the way offered load is defined).
A request met its budget when it answered 200 and its served latency, measured by this client,
is within the budget; for first-token budgets the decode time the model reported is taken off
(`covers="first_token"`), for whole-request budgets nothing is.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Result:
    budget_ms: float
    status: int  # 0: the request itself failed (connection error, client timeout)
    latency_ms: float
    decode_ms: float
    expected_accuracy: float | None
    config: str | None
    queue_wait_ms: float | None
    started: float
    router_ms: float | None = None  # the router's own total (timings_ms.total): the rest is proxy + client
    # Where a miss came from: the replica's measured queue wait and service, the overhead budgeted.
    actual_wait_ms: float | None = None
    service_ms: float | None = None
    overhead_ms: float | None = None
    feasible: bool | None = None  # the router's promise: some config fitted the (remaining) budget
    dispatch: dict[str, Any] | None = None  # the replica's late binding: option, fits, ms left, guarded

    def met(self, covers: str = "first_token") -> bool:
        served = self.latency_ms - (self.decode_ms if covers == "first_token" else 0.0)
        return self.status == 200 and served <= self.budget_ms


async def _one(client: Any, url: str, budget: float, headers: dict[str, str], body: dict[str, Any]) -> Result:
    started = time.perf_counter()
    try:
        r = await client.post(url, json=body, headers={"X-Latency-Budget-Ms": f"{budget:g}", **headers})
        latency = (time.perf_counter() - started) * 1000
        data = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    except Exception:
        return Result(budget, 0, (time.perf_counter() - started) * 1000, 0.0, None, None, None, started)
    out = data.get("output") or {}
    decode = (out.get("timings_ms") or {}).get("decode") or 0.0
    knobs = data.get("knobs") or {}
    config = f"{knobs.get('tier')}_{knobs.get('top_k')}_{knobs.get('num_active_blocks')}" if knobs else None
    router = (data.get("timings_ms") or {}).get("total")
    return Result(budget, r.status_code, latency, float(decode), data.get("expected_accuracy"), config,
                  data.get("queue_wait_ms"), started, router, out.get("queue_wait_ms"), out.get("service_ms"),
                  data.get("overhead_ms"), data.get("feasible"),
                  out.get("dispatch") if isinstance(out.get("dispatch"), dict) else None)


def _endpoint(base_url: str) -> str:
    return base_url.rstrip("/") + "/v1/generate"


async def closed_loop(base_url: str, budgets: Sequence[float], concurrency: int, requests: int,
                      headers: dict[str, str] | None = None, max_new_tokens: int = 1,
                      timeout_s: float = 60.0) -> list[Result]:
    """`concurrency` clients share `requests` requests; budgets are taken in turn."""
    import httpx

    url, hdrs = _endpoint(base_url), dict(headers or {})
    body = {"prompt": "What is in the image?", "max_new_tokens": max_new_tokens}
    results: list[Result] = []
    counter = iter(range(requests))

    async def client_loop(c: Any) -> None:
        for i in counter:
            results.append(await _one(c, url, budgets[i % len(budgets)], hdrs, body))

    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as c:
        await asyncio.gather(*(client_loop(c) for _ in range(concurrency)))
    return results


async def open_loop(base_url: str, budgets: Sequence[float], rate_rps: float, requests: int,
                    headers: dict[str, str] | None = None, max_new_tokens: int = 1, seed: int = 0,
                    timeout_s: float = 60.0) -> list[Result]:
    """Poisson arrivals at `rate_rps` (seeded), whatever the server does: offered load."""
    import httpx

    if not (math.isfinite(rate_rps) and rate_rps > 0):
        raise ValueError(f"rate_rps={rate_rps!r} is not valid; expected requests per second > 0")
    url, hdrs = _endpoint(base_url), dict(headers or {})
    body = {"prompt": "What is in the image?", "max_new_tokens": max_new_tokens}
    rng = random.Random(seed)
    tasks = []
    limits = httpx.Limits(max_connections=512)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as c:
        t0 = time.perf_counter()
        at = 0.0
        for i in range(requests):
            at += rng.expovariate(rate_rps)
            delay = t0 + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(c, url, budgets[i % len(budgets)], hdrs, body)))
        return list(await asyncio.gather(*tasks))


def summarize(results: Sequence[Result], covers: str = "first_token") -> dict[str, Any]:
    """Attainment, mean expected accuracy of the answered requests, latency and throughput."""
    ok = [r for r in results if r.status == 200]
    lat = sorted(r.latency_ms for r in ok)
    span = (max(r.started + r.latency_ms / 1000 for r in results) - min(r.started for r in results)) if results else 0
    acc = [r.expected_accuracy for r in ok if r.expected_accuracy is not None]
    waits = [r.queue_wait_ms for r in ok if r.queue_wait_ms is not None]
    missed = [r for r in ok if not r.met(covers)]
    promised = [r for r in ok if r.feasible]
    late_wait = [r for r in missed if r.actual_wait_ms is not None and r.queue_wait_ms is not None
                 and r.actual_wait_ms > r.queue_wait_ms]
    late_rest = [r for r in missed if r.overhead_ms is not None and r.router_ms is not None and r.service_ms is not None
                 and r.actual_wait_ms is not None
                 and r.latency_ms - r.service_ms - r.actual_wait_ms > r.overhead_ms]
    return {
        "requests": len(results),
        "ok": len(ok),
        "attainment": sum(r.met(covers) for r in results) / len(results) if results else math.nan,
        "mean_expected_accuracy": statistics.fmean(acc) if acc else math.nan,
        "p50_ms": lat[len(lat) // 2] if lat else math.nan,
        "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else math.nan,
        "throughput_rps": len(ok) / span if span > 0 else math.nan,
        "mean_expected_wait_ms": statistics.fmean(waits) if waits else math.nan,
        # Of the answered misses: how many waited longer than expected at the replica, and how many
        # spent more than the budgeted overhead outside the replica's queue and service.
        # The router's own promise: share of answers it flagged feasible, and how many of those met
        # their budget (an estimate that holds keeps this near 1 even when the load makes budgets
        # impossible: those requests are flagged infeasible, or refused under `strict`).
        "feasible_share": len(promised) / len(ok) if ok else math.nan,
        "attainment_when_feasible": sum(r.met(covers) for r in promised) / len(promised) if promised else math.nan,
        "misses": len(missed),
        "misses_wait_over_estimate": len(late_wait),
        "misses_overhead_over_budgeted": len(late_rest),
        "miss_detail": [_miss(r, covers) for r in missed],
    }


def _miss(r: Result, covers: str) -> str:
    """One missed request in a line: budget, served, how it was spent, and what was promised."""
    served = r.latency_ms - (r.decode_ms if covers == "first_token" else 0.0)
    wait, service = r.actual_wait_ms or 0.0, r.service_ms or 0.0
    d = r.dispatch or {}
    return (f"budget {r.budget_ms:g} served {served:.0f} (wait {wait:.0f} expected {r.queue_wait_ms or 0:.0f}, "
            f"call {service:.0f}, rest {r.latency_ms - service - wait:.0f}), {r.config}, "
            f"{'feasible' if r.feasible else 'infeasible'}, option {d.get('option')} fits {d.get('fits')} "
            f"guarded {d.get('guarded')}")
