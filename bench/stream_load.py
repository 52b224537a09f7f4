"""Open-loop load of streamed and non-streamed requests, measured as the client sees them.

Arrival times are drawn up front (Poisson) and each request is fired at its time on its own task,
whatever the earlier ones did. A streamed request goes through the official `openai` client
(`/v1/completions`, stream=True) and its first token is the first chunk with text; a non-streamed
one is a POST /v1/generate whose first token is the client's total time minus what the replica
spent after its first token (its answer's replica_ms - replica_first_token_ms: the decode and any
pause of it while later batch members prefilled; the decode time alone where those are absent). A
non-streamed client never sees its first token, and without the pauses the figure charged a
request's first token with other requests' prefills that came after it. Either met its budget
when it answered 200 and that first token is within it.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

BUDGET_HEADER = "X-Latency-Budget-Ms"
FEASIBLE_HEADER = "X-Budget-Feasible"
MODEL = "moe-budget"
PROMPT = "What is in the image?"
STREAM, GENERATE = "stream", "generate"


@dataclass(frozen=True)
class Row:
    """One request as the client saw it."""

    kind: str  # STREAM or GENERATE
    budget_ms: float
    status: int  # 0: the request itself failed (connection error, client timeout, error event)
    at_s: float  # scheduled arrival, from the window's start
    lateness_ms: float  # how late the client fired it (the client's own scheduling delay)
    first_token_ms: float | None
    total_ms: float
    feasible: bool | None  # the X-Budget-Feasible response header
    feasible_body: bool | None  # the same flag in the JSON answer or the first chunk's `budget` object
    expected_accuracy: float | None
    config: str | None
    router_ms: float | None = None  # /v1/generate: the router's own total (the rest is proxy + client)
    decode_ms: float | None = None  # /v1/generate: the decode time the model reported
    # (a stream: router_ms is the router's own first token, Server-Timing's total at the first piece)
    chunks: int = 0  # streams: chunks received
    remaining_budget_ms: float | None = None  # what the router resolved for (budget - expected wait - overhead)
    error: str | None = None
    # /v1/generate, where a miss came from: the replica's arrival to first token, its queue wait,
    # and the time its late binding saw left (dispatch.left_ms) and whether the choice fit it.
    replica_first_ms: float | None = None
    replica_wait_ms: float | None = None
    left_ms: float | None = None
    fits: bool | None = None

    @property
    def met(self) -> bool:
        return self.status == 200 and self.first_token_ms is not None and self.first_token_ms <= self.budget_ms


def _flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    return {"true": True, "false": False}.get(str(value).strip().lower()) if value is not None else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _config(knobs: Any) -> str | None:
    if not isinstance(knobs, dict):
        return None
    return f"{knobs.get('tier')}_{knobs.get('top_k')}_{knobs.get('num_active_blocks')}"


async def generate(client: Any, base_url: str, budget: float, max_new_tokens: int, at_s: float,
                   lateness_ms: float) -> Row:
    """POST /v1/generate; the decode time is read defensively (absent or odd: counted as 0)."""
    started = time.perf_counter()
    try:
        r = await client.post(f"{base_url}/v1/generate", json={"prompt": PROMPT, "max_new_tokens": max_new_tokens},
                              headers={BUDGET_HEADER: f"{budget:g}"})
        total = (time.perf_counter() - started) * 1000
        data = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    except Exception as e:  # noqa: BLE001 - a failed request is a row, not a crash
        return Row(GENERATE, budget, 0, at_s, lateness_ms, None, (time.perf_counter() - started) * 1000, None,
                   None, None, None, error=f"{type(e).__name__}: {e}"[:200])
    data = data if isinstance(data, dict) else {}
    out = data.get("output") if isinstance(data.get("output"), dict) else {}
    timings = out.get("timings_ms") if isinstance(out.get("timings_ms"), dict) else {}
    decode = _number(timings.get("decode")) or 0.0
    replica_ms, replica_first = _number(out.get("replica_ms")), _number(out.get("replica_first_token_ms"))
    after_first = replica_ms - replica_first if replica_ms and replica_first and replica_ms >= replica_first else decode
    router = data.get("timings_ms") if isinstance(data.get("timings_ms"), dict) else {}
    dispatch = out.get("dispatch") if isinstance(out.get("dispatch"), dict) else {}
    first = total - after_first if r.status_code == 200 else None
    return Row(GENERATE, budget, r.status_code, at_s, lateness_ms, first,
               total, _flag(r.headers.get(FEASIBLE_HEADER)), _flag(data.get("feasible")),
               _number(data.get("expected_accuracy")), _config(data.get("knobs")), _number(router.get("total")),
               decode, remaining_budget_ms=_number(data.get("remaining_budget_ms")),
               error=None if r.status_code == 200 else str(data.get("error"))[:200],
               replica_first_ms=_number(out.get("replica_first_token_ms")),
               replica_wait_ms=_number(out.get("queue_wait_ms")),
               left_ms=_number(dispatch.get("left_ms")), fits=_flag(dispatch.get("fits")))


async def stream(client: Any, budget: float, max_tokens: int, at_s: float, lateness_ms: float) -> Row:
    """A streamed /v1/completions through the openai client: headers from the raw response, the
    first chunk's `budget` extra object, and the time of the first chunk with text."""
    import openai

    started = time.perf_counter()
    first, chunks, extra, status, feasible, err, router = None, 0, None, 0, None, None, None
    try:
        raw = await client.completions.with_raw_response.create(
            model=MODEL, prompt=PROMPT, max_tokens=max_tokens, stream=True,
            extra_headers={BUDGET_HEADER: f"{budget:g}"})
        status, feasible = raw.status_code, _flag(raw.headers.get(FEASIBLE_HEADER))
        router = server_timing(raw.headers.get("Server-Timing"), "total")
        async for chunk in raw.parse():
            chunks += 1
            if extra is None:
                extra = (chunk.model_extra or {}).get("budget")
            if first is None and any(c.text for c in chunk.choices):
                first = (time.perf_counter() - started) * 1000
    except openai.APIStatusError as e:
        status, err = e.status_code, str(e)[:200]
    except Exception as e:  # noqa: BLE001 - an error event or a dropped connection: a failed row
        status, err = 0, f"{type(e).__name__}: {e}"[:200]
    extra = extra if isinstance(extra, dict) else {}
    return Row(STREAM, budget, status, at_s, lateness_ms, first, (time.perf_counter() - started) * 1000, feasible,
               _flag(extra.get("feasible")), _number(extra.get("expected_accuracy")), _config(extra.get("knobs")),
               router_ms=router, chunks=chunks, remaining_budget_ms=_number(extra.get("remaining_budget_ms")),
               error=err)


def server_timing(header: str | None, name: str) -> float | None:
    """`dur` of the entry `name` in a Server-Timing header ("a;dur=1.5, b;dur=2"), None if absent."""
    for entry in (header or "").split(","):
        parts = [p.strip() for p in entry.split(";")]
        if parts[0] == name:
            for p in parts[1:]:
                if p.startswith("dur="):
                    try:
                        return _number(float(p[4:]))
                    except ValueError:
                        return None
    return None


def openai_client(base_url: str, timeout_s: float = 60.0) -> Any:
    from openai import AsyncOpenAI

    # No retries: a failed request must show as one.
    return AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=timeout_s)


def plan(requests: int, rate_rps: float, budgets: Sequence[float], stream_share: float,
         seed: int) -> list[tuple[float, str, float]]:
    """(arrival s, kind, budget) for every request, drawn up front: Poisson arrivals; each kind gets
    every budget equally often (shuffled), so the two halves see the same budget mix."""
    if not (math.isfinite(rate_rps) and rate_rps > 0):
        raise ValueError(f"rate_rps={rate_rps!r} is not valid; expected requests per second > 0")
    rng = random.Random(seed)
    streams = round(requests * stream_share)
    pairs = [(STREAM, budgets[i % len(budgets)]) for i in range(streams)]
    pairs += [(GENERATE, budgets[i % len(budgets)]) for i in range(requests - streams)]
    rng.shuffle(pairs)
    at, out = 0.0, []
    for kind, budget in pairs:
        at += rng.expovariate(rate_rps)
        out.append((at, kind, budget))
    return out


async def open_loop(base_url: str, arrivals: Sequence[tuple[float, str, float]], max_new_tokens: int,
                    timeout_s: float = 60.0) -> list[Row]:
    """Fire each planned request at its time on its own task; wait for all."""
    import httpx

    async with httpx.AsyncClient(timeout=timeout_s, limits=httpx.Limits(max_connections=512)) as http:
        oa = openai_client(base_url, timeout_s)
        try:
            t0 = time.perf_counter()
            tasks = []
            for at, kind, budget in arrivals:
                delay = t0 + at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                late = max(0.0, (time.perf_counter() - t0 - at) * 1000)
                tasks.append(asyncio.create_task(
                    stream(oa, budget, max_new_tokens, at, late) if kind == STREAM
                    else generate(http, base_url, budget, max_new_tokens, at, late)))
            return list(await asyncio.gather(*tasks))
        finally:
            await oa.close()


@dataclass
class LongStreams:
    """What the background streams did: streams finished, chunks received, errors."""

    finished: int = 0
    chunks: int = 0
    errors: list[str] = field(default_factory=list)
    first_token_ms: list[float] = field(default_factory=list)
    stream_ms: list[float] = field(default_factory=list)


async def _keep_streaming(client: Any, budget: float, max_tokens: int, record: LongStreams,
                          first: asyncio.Event) -> None:
    """One chat stream after another until cancelled: a stream that ends is restarted at once."""
    while True:
        started = time.perf_counter()
        try:
            s = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Describe the image in detail."}],
                max_tokens=max_tokens, stream=True, extra_headers={BUDGET_HEADER: f"{budget:g}"})
            got = False
            async for chunk in s:
                record.chunks += 1
                if not got and any(c.delta and c.delta.content for c in chunk.choices):
                    got = True
                    record.first_token_ms.append((time.perf_counter() - started) * 1000)
                    first.set()
            record.finished += 1
            record.stream_ms.append((time.perf_counter() - started) * 1000)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - counted; a stream that fails is restarted
            record.errors.append(f"{type(e).__name__}: {e}"[:200])
            await asyncio.sleep(0.05)


async def open_loop_with_streams(base_url: str, arrivals: Sequence[tuple[float, str, float]], max_new_tokens: int,
                                 streams: int, stream_budget: float, stream_tokens: int,
                                 timeout_s: float = 60.0) -> tuple[list[Row], LongStreams]:
    """`open_loop` while `streams` long streams run: started before the window (each has sent a
    token) and restarted whenever one ends, until the window's last answer."""
    record = LongStreams()
    client = openai_client(base_url, timeout_s)
    firsts = [asyncio.Event() for _ in range(streams)]
    tasks = [asyncio.create_task(_keep_streaming(client, stream_budget, stream_tokens, record, f)) for f in firsts]
    try:
        await asyncio.wait_for(asyncio.gather(*(f.wait() for f in firsts)), timeout=30)
        rows = await open_loop(base_url, arrivals, max_new_tokens, timeout_s)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()
    return rows, record


def _quantile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else math.nan


def summarize(rows: Sequence[Row]) -> dict[str, Any]:
    """Feasible share, attainment among the feasible-flagged, mean expected accuracy, latencies."""
    ok = [r for r in rows if r.status == 200]
    promised = [r for r in ok if r.feasible]
    acc = [r.expected_accuracy for r in ok if r.expected_accuracy is not None]
    first = [r.first_token_ms for r in ok if r.first_token_ms is not None]
    outside = [(r.first_token_ms if r.kind == STREAM else r.total_ms) - r.router_ms
               for r in ok if r.router_ms is not None and (r.kind != STREAM or r.first_token_ms is not None)]
    left = [r.remaining_budget_ms for r in ok if r.remaining_budget_ms is not None]
    return {
        "requests": len(rows),
        "ok": len(ok),
        "feasible_share": len(promised) / len(ok) if ok else math.nan,
        "attainment_when_feasible": sum(r.met for r in promised) / len(promised) if promised else math.nan,
        "feasible_missed": sum(not r.met for r in promised),
        "attainment": sum(r.met for r in rows) / len(rows) if rows else math.nan,
        "mean_expected_accuracy": statistics.fmean(acc) if acc else math.nan,
        "configs": dict(Counter(r.config for r in ok)),
        "remaining_budget_p50_ms": _quantile(left, 0.5),  # of the budget, what the router resolved for
        "first_token_p50_ms": _quantile(first, 0.5),
        "first_token_p99_ms": _quantile(first, 0.99),
        "outside_router_p50_ms": _quantile(outside, 0.5),  # proxy + client around the router
        "flag_mismatch": sum(1 for r in ok if r.feasible is not None and r.feasible_body is not None
                             and r.feasible != r.feasible_body),
        "flag_missing": sum(1 for r in ok if r.feasible is None),
        "fire_late_p99_ms": _quantile([r.lateness_ms for r in rows], 0.99),
        "errors": sorted({r.error for r in rows if r.error})[:3],
    }


def as_dicts(rows: Sequence[Row], **tags: Any) -> list[dict[str, Any]]:
    return [{**tags, **asdict(r), "met": r.met} for r in rows]
