"""Knob effects on the real model: per-config vision / prefill / decode latency, configs interleaved.

A sweep that times one config after another mixes knob effects with drift of the host (clock,
contention, first use of a shape). Here every round visits every config once in a fresh random
order, with one fixed input shape per tier, after a warm-up pass over all configs; medians over
rounds then compare configs under the same conditions.

    python -m bench.bench_gpu_grid --device cuda --preset olmoe-1b-7b --rounds 20 --json out.json
    python -m bench.bench_gpu_grid --device cpu --preset tiny --rounds 2        # seconds, for tests
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
from itertools import product
from typing import Any

# Crops per tier for the fixed shapes: the middle of each tier's range (low 1-3, medium 4-8, high 9-15).
TIER_CROPS = {"low": 2, "medium": 6, "high": 12}
PROMPT = "What is written on the sign in the picture? Answer with a single word or short phrase."


def measure(
    preset: str,
    device: str,
    tiers: list[str],
    top_ks: list[int],
    blocks: list[int],
    rounds: int,
    new_tokens: int,
    seed: int = 0,
) -> dict[str, Any]:
    import torch

    from controller.knobs import Knobs
    from moe.presets import build_model
    from moe.runner import MoERunner, PromptInput

    runner = MoERunner(build_model(preset, device=device, seed=seed))
    configs = [Knobs(t, k, n) for t, k, n in product(tiers, top_ks, blocks)]
    inputs = {t: PromptInput(PROMPT, TIER_CROPS[t], image_seed=1) for t in tiers}
    samples: dict[Knobs, list[dict[str, float]]] = {k: [] for k in configs}

    def one(k: Knobs) -> dict[str, float]:
        (res,) = runner.generate(k, [inputs[k.tier]], max_new_tokens=new_tokens)
        t = res.timings_ms
        steps = res.decode_per_step_ms
        return {
            "vision": t["vision"],
            "prefill": t["prefill"],
            "vision_prefill": t["vision"] + t["prefill"],
            "decode_step": statistics.median(steps) if steps else 0.0,
            "total": t["total"],
        }

    for k in configs:  # warm-up: every config and shape once, untimed
        one(k)
    rng = random.Random(seed)
    gc.disable()  # a collection inside a timed pass is host noise, not knob cost
    try:
        for _ in range(rounds):
            order = configs[:]
            rng.shuffle(order)
            for k in order:
                samples[k].append(one(k))
    finally:
        gc.enable()

    def stat(vals: list[float], q: float) -> float:
        s = sorted(vals)
        return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]

    rows = []
    for k in configs:
        row: dict[str, Any] = k.as_dict()
        for m in ("vision", "prefill", "vision_prefill", "decode_step", "total"):
            vals = [s[m] for s in samples[k]]
            row[f"{m}_p50"] = round(statistics.median(vals), 3)
            row[f"{m}_p95"] = round(stat(vals, 0.95), 3)
        rows.append(row)
    env = {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "experts_implementation": runner.model.experts_implementation,
        "dtype": str(runner.model.dtype),
        "preset": preset,
        "rounds": rounds,
        "new_tokens": new_tokens,
        "tier_crops": {t: TIER_CROPS[t] for t in tiers},
    }
    return {"env": env, "rows": rows, "effects": knob_effects(rows)}


def knob_effects(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """For each knob value: the median, over all configs with that value, of latency relative to the
    same config at the knob's largest value (1.0 = no effect)."""
    out: dict[str, Any] = {}
    for knob in ("top_k", "num_active_blocks"):
        top = max(r[knob] for r in rows)
        ref = {(r["tier"], r["top_k"], r["num_active_blocks"]): r for r in rows if r[knob] == top}
        per_value: dict[str, Any] = {}
        for v in sorted({r[knob] for r in rows}):
            ratios: dict[str, list[float]] = {"prefill": [], "vision_prefill": [], "decode_step": []}
            for r in rows:
                if r[knob] != v:
                    continue
                key = (
                    r["tier"],
                    top if knob == "top_k" else r["top_k"],
                    top if knob != "top_k" else r["num_active_blocks"],
                )
                base = ref[key]
                for m in ratios:
                    if base[f"{m}_p50"] > 0:
                        ratios[m].append(r[f"{m}_p50"] / base[f"{m}_p50"])
            per_value[str(v)] = {m: round(statistics.median(x), 3) for m, x in ratios.items() if x}
        out[knob] = per_value
    by_tier: dict[str, Any] = {}
    for t in dict.fromkeys(r["tier"] for r in rows):
        rs = [r for r in rows if r["tier"] == t]
        by_tier[t] = {m: round(statistics.median(r[f"{m}_p50"] for r in rs), 3) for m in ("vision", "prefill")}
    out["tier"] = by_tier
    full = max(rows, key=lambda r: (r["tier"] == "high", r["top_k"], r["num_active_blocks"]))
    fastest = min(rows, key=lambda r: r["vision_prefill_p50"])
    out["fastest_vs_full"] = {
        "full": {k: full[k] for k in ("tier", "top_k", "num_active_blocks")},
        "fastest": {k: fastest[k] for k in ("tier", "top_k", "num_active_blocks")},
        "speedup_vision_prefill": round(full["vision_prefill_p50"] / fastest["vision_prefill_p50"], 2),
    }
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| tier | top_k | blocks | vision p50 | prefill p50 | prefill p95 | vision+prefill p50 "
        "| decode/step p50 | total p50 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['tier']} | {r['top_k']} | {r['num_active_blocks']} | {r['vision_p50']:.1f} | "
            f"{r['prefill_p50']:.1f} | {r['prefill_p95']:.1f} | {r['vision_prefill_p50']:.1f} | "
            f"{r['decode_step_p50']:.1f} | {r['total_p50']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tiers", nargs="+", default=["low", "medium", "high"])
    p.add_argument("--top_k", "--top-k", dest="top_k", nargs="+", type=int, default=[4, 6, 8])
    p.add_argument("--blocks", nargs="+", type=int, default=[12, 14, 16])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--new_tokens", type=int, default=4)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    result = measure(a.preset, a.device, a.tiers, a.top_k, a.blocks, a.rounds, a.new_tokens)
    print(json.dumps(result["env"]))
    print(markdown(result))
    print(json.dumps(result["effects"], indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
