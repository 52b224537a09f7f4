"""The generation engine on a GPU: eager vs graph in one run, every config of a 27-config table.

    python -m bench.gpu_engine --out OUT_DIR [--preset olmoe-1b-7b] [--quick]

Measures, per config (tier x top_k x blocks): decode step at batch 1 (p50, p99), vision+prefill
(p50, p99), for the eager path and the captured graphs, interleaved so that host drift hits both;
checks that both paths give the same greedy tokens and logits within a bf16 tolerance; reports
capture seconds and graph memory, decode steps per batch bucket, and explicit capture against
torch.compile for one prefill shape. Writes engine.json (the layout docs/h100/engine.json keeps).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

TIERS = ("low", "medium", "high")
TOP_KS = (4, 6, 8)
BLOCKS = (12, 14, 16)
LOGIT_ATOL = 0.0625  # 2^-4: one bf16 step at |logit| in [8, 16); graph and eager may pick other GEMM algorithms


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="olmoe-1b-7b")
    ap.add_argument("--quick", action="store_true", help="fewer repeats (a rehearsal)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--reps", type=int, default=8, help="interleaved rounds per (config, path)")
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args(argv)
    import torch

    from controller.knobs import Knobs
    from moe.engine import EngineOptions, GenerationEngine
    from moe.presets import build_model
    from moe.profiler import crops_for
    from moe.prompts import synthetic_samples
    from moe.runner import MoERunner, PromptInput

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"gpu": torch.cuda.get_device_name() if args.device == "cuda" else "cpu"}
    result["torch"], result["preset"] = torch.__version__, args.preset
    import transformers

    result["transformers"] = transformers.__version__
    model = build_model(args.preset, device=args.device)
    runner = MoERunner(model)
    configs = [Knobs(t, k, b) for t in TIERS for k in TOP_KS for b in BLOCKS]
    eager = GenerationEngine(runner, EngineOptions(mode="eager"))
    graph = GenerationEngine(runner, EngineOptions(mode="graph"))
    t0 = time.perf_counter()
    report = graph.prepare(configs)
    result["capture"] = report.to_dict() | {"wall_seconds": time.perf_counter() - t0}
    eager.prepare(configs)
    print("capture:", result["capture"], flush=True)

    samples = synthetic_samples(8)
    reps = 3 if args.quick else args.reps
    new_tokens = 16 if args.quick else args.new_tokens

    def request(knobs: Knobs, s: Any) -> PromptInput:
        return PromptInput(s.prompt, crops_for(s, knobs.tier), image_seed=s.sample_id)

    # Equivalence: same greedy tokens, logits within LOGIT_ATOL, every config.
    equal: list[dict[str, Any]] = []
    for k in configs:
        x = request(k, samples[0])
        (a,) = eager.generate(k, [x], max_new_tokens=new_tokens, keep_logits=True)
        (g,) = graph.generate(k, [x], max_new_tokens=new_tokens, keep_logits=True)
        diff = max(float((la - lg).abs().max()) for la, lg in zip(a.logits or [], g.logits or [], strict=False))
        (r,) = runner.generate(k, [x], max_new_tokens=new_tokens)
        equal.append(
            {"config": k.key, "same_tokens": a.token_ids == g.token_ids, "max_abs_logit_diff": diff,
             "tokens": len(g.token_ids), "same_tokens_as_dynamic_cache_runner": r.token_ids == g.token_ids}
        )
    result["equivalence"] = {"logit_atol": LOGIT_ATOL, "configs": equal,
                             "all_equal": all(e["same_tokens"] and e["max_abs_logit_diff"] <= LOGIT_ATOL
                                              for e in equal)}
    print("equivalence all equal:", result["equivalence"]["all_equal"], flush=True)

    # Latency, interleaved: every round runs each (config, engine) once in a random order.
    times: dict[tuple[str, str], dict[str, list[float]]] = {
        (k.key, m): {"step": [], "vp": [], "total": []} for k in configs for m in ("eager", "graph")
    }
    rng = random.Random(0)
    for rnd in range(reps):
        order = [(k, m) for k in configs for m in ("eager", "graph")]
        rng.shuffle(order)
        for k, m in order:
            eng = eager if m == "eager" else graph
            x = request(k, samples[rnd % len(samples)])
            (res,) = eng.generate(k, [x], max_new_tokens=new_tokens)
            t = times[(k.key, m)]
            t["step"] += res.decode_per_step_ms
            t["vp"].append(res.timings_ms["vision"] + res.timings_ms["prefill"])
            t["total"].append(res.timings_ms["total"])
    rows = []
    for k in configs:
        row: dict[str, Any] = {"tier": k.tier, "top_k": k.top_k, "num_active_blocks": k.num_active_blocks}
        for m in ("eager", "graph"):
            t = times[(k.key, m)]
            row[m] = {
                "decode_step_ms_p50": statistics.median(t["step"]),
                "decode_step_ms_p99": pct(t["step"], 99),
                "vision_prefill_ms_p50": statistics.median(t["vp"]),
                "vision_prefill_ms_p99": pct(t["vp"], 99),
                "total_ms_p50": statistics.median(t["total"]),
                "new_tokens": new_tokens,
            }
        rows.append(row)
        print(k.key, {m: {a: round(v, 2) for a, v in row[m].items()} for m in ("eager", "graph")}, flush=True)
    result["configs"] = rows

    # Decode step per batch bucket (graph), full and fastest pair.
    buckets: dict[str, dict[str, float]] = {}
    for k in (Knobs("low", 8, 16), Knobs("low", 4, 12)):
        for b in graph.options.decode_buckets:
            xs = [request(k, samples[i % len(samples)]) for i in range(b)]
            steps: list[float] = []
            for _ in range(max(2, reps // 4)):
                for res in graph.generate(k, xs, max_new_tokens=new_tokens)[:1]:
                    steps += res.decode_per_step_ms
            buckets[f"{k.key}/batch{b}"] = {"p50": statistics.median(steps), "p99": pct(steps, 99)}
    result["decode_batch_buckets"] = buckets
    print("buckets:", buckets, flush=True)

    (out / "engine.json").write_text(json.dumps(result, indent=1))  # kept if compile below fails hard
    if graph.use_graphs:
        result["compile_vs_capture"] = compare_compile(graph, Knobs("medium", 8, 16), reps)
        print("compile vs capture:", result["compile_vs_capture"], flush=True)
    result["memory"] = {
        "allocated_gib": torch.cuda.memory_allocated() / 2**30 if args.device == "cuda" else 0,
        "reserved_gib": torch.cuda.memory_reserved() / 2**30 if args.device == "cuda" else 0,
    }
    (out / "engine.json").write_text(json.dumps(result, indent=1))
    return 0


def compare_compile(engine: Any, knobs: Any, reps: int) -> dict[str, Any]:
    """One prefill shape (1,024 tokens): its captured graph against torch.compile of the same step."""
    import torch

    from moe.engine import pair_of
    from moe.knob_patch import knob_context

    P = 1024
    fk = engine.runner.forward_knobs(knobs)
    key = ("prefill", pair_of(knobs), P)
    res: dict[str, Any] = {"shape": f"prefill {P} tokens", "config": knobs.key}

    def timed(fn: Any) -> list[float]:
        ts = []
        for _ in range(max(10, reps)):
            torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            ts.append((time.perf_counter() - t) * 1e3)
        return ts

    with torch.inference_mode(), knob_context(fk):
        engine.pad_start.fill_(0)
        g = engine._graphs[key]
        cap = timed(g.replay)
        res["capture_ms_p50"], res["capture_ms_p99"] = statistics.median(cap), pct(cap, 99)
        try:
            started = time.perf_counter()
            compiled = torch.compile(lambda: engine._prefill_step(P), mode="default")
            compiled()
            torch.cuda.synchronize()
            res["compile_seconds"] = time.perf_counter() - started
            ts = timed(compiled)
            res["compile_ms_p50"], res["compile_ms_p99"] = statistics.median(ts), pct(ts, 99)
        except Exception as e:  # noqa: BLE001 - the comparison reports what happened
            res["compile_error"] = f"{type(e).__name__}: {str(e)[:300]}"
    return res


if __name__ == "__main__":
    sys.exit(main())
