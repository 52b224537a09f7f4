"""Cost of the knob mechanism at the full config (default top_k, all blocks) vs unmodified transformers.

Both models are built from the same preset and seed in this run (identical weights), then timed
alternately: a prefill forward and a single-token decode step with a KV cache. Prints both and the
overhead; exits 1 if the overhead exceeds --max_overhead_pct.

    python -m bench.bench_knob_overhead                          # CPU, tiny preset, seconds
    python -m bench.bench_knob_overhead --device cuda --preset olmoe-1b-7b
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from transformers import DynamicCache

from controller.knobs import Knobs
from moe.knob_patch import knob_context
from moe.presets import build_model
from moe.runner import _CACHE_KW, MoERunner


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _time_ms(fn, dev: torch.device) -> float:  # type: ignore[no-untyped-def]
    _sync(dev)
    t = time.perf_counter()
    fn()
    _sync(dev)
    return (time.perf_counter() - t) * 1e3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seq_len", type=int, default=None, help="prefill tokens (default: medium tier + prompt)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--max_overhead_pct", type=float, default=2.0)
    return p.parse_args(argv)


def measure(a: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    """Median ms per stage for the unmodified and the knob-enabled model, measured alternately."""
    dev = torch.device(a.device)
    repeats = a.repeats or (30 if dev.type == "cuda" else 20)
    seq = a.seq_len or (7 * 144 + 32)  # 6 crops (medium tier) + a 32-token prompt
    plain = build_model(a.preset, device=a.device, seed=0, knobs=False)
    knobbed = build_model(a.preset, device=a.device, seed=0, knobs=True)
    runner = MoERunner(knobbed)
    c = knobbed.config
    full = Knobs("medium", int(c.num_experts_per_tok), knobbed.num_blocks)
    fk = runner.forward_knobs(full)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = (torch.randn(1, seq, int(c.hidden_size), generator=g) * 0.02).to(dev, knobbed.dtype)

    def prefill(lm: torch.nn.Module) -> tuple[torch.Tensor, DynamicCache]:
        cache = DynamicCache(config=c)
        out = lm(inputs_embeds=x, use_cache=True, logits_to_keep=1, **{_CACHE_KW: cache})
        return out.logits, cache

    def decode(lm: torch.nn.Module, cache: DynamicCache) -> None:
        tok = torch.zeros(1, 1, dtype=torch.long, device=dev)
        # The cache grows by one token per repeat, alike for both models (a few dozen on ~1000).
        pos = torch.full((1, 1), cache.get_seq_length(), device=dev)
        lm(input_ids=tok, position_ids=pos, use_cache=True, **{_CACHE_KW: cache})

    times: dict[str, list[float]] = {
        "plain prefill": [],
        "knobs prefill": [],
        "plain decode": [],
        "knobs decode": [],
    }
    with torch.inference_mode():
        ref, cache_p = prefill(plain.lm)
        with knob_context(fk):
            got, cache_k = prefill(knobbed.lm)
        same = torch.equal(ref, got)
        for i in range(repeats + 3):  # 3 warm-up rounds, then alternate so drift hits both alike
            order = [("plain", plain.lm, cache_p), ("knobs", knobbed.lm, cache_k)]
            for name, lm, cache in order if i % 2 == 0 else order[::-1]:
                with knob_context(fk) if name == "knobs" else _null():
                    tp = _time_ms(lambda lm=lm: prefill(lm), dev)
                    td = _time_ms(lambda lm=lm, cache=cache: decode(lm, cache), dev)
                if i >= 3:
                    times[f"{name} prefill"].append(tp)
                    times[f"{name} decode"].append(td)
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "experts": knobbed.experts_implementation, "dtype": str(knobbed.dtype), "seq": seq, "repeats": repeats,
        "same": same,
        "stages": {st: (statistics.median(times[f"plain {st}"]), statistics.median(times[f"knobs {st}"]))
                   for st in ("prefill", "decode")},
        # Paired estimate: each round timed both models back to back, so the median of per-round
        # ratios cancels drift that the ratio of two medians keeps.
        "paired_overhead_pct": {
            st: (statistics.median(k / p for p, k in zip(times[f"plain {st}"], times[f"knobs {st}"])) - 1) * 100
            for st in ("prefill", "decode")
        },
    }


def run(quick: bool = False) -> dict:  # type: ignore[type-arg]
    """bench/report.py's shape: CPU, tiny preset (the GPU numbers are in docs/h100-profile.md)."""
    a = parse_args(["--repeats", "10" if quick else "30"])
    m = measure(a)
    figures = []
    for stage, (base, _knob) in m["stages"].items():
        pct = m["paired_overhead_pct"][stage]
        figures.append({"name": f"knob mechanism overhead, {stage}, full config", "value": round(pct, 2),
                        "unit": "% (paired)", "baseline": round(base, 3),
                        "baseline_name": "unmodified transformers model, ms (same run, alternating)",
                        "goal": f"<= {a.max_overhead_pct:g}%", "passed": pct <= a.max_overhead_pct and m["same"]})
    return {"title": "Torch backend: cost of per-forward knobs (CPU, tiny preset)", "figures": figures,
            "notes": [f"{m['device']}, {m['experts']} experts, {m['dtype']}, prefill {m['seq']} tokens, "
                      f"{m['repeats']} repeats; identical logits: {m['same']}"]}


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    m = measure(a)
    print(
        f"knob overhead, preset={a.preset} on {m['device']}, {m['experts']} experts, "
        f"{m['dtype']}, prefill {m['seq']} tokens, {m['repeats']} repeats; identical logits: {m['same']}"
    )
    worst = 0.0
    for stage, (base, knob) in m["stages"].items():
        pct = m["paired_overhead_pct"][stage]
        worst = max(worst, pct)
        print(f"  {stage:8s} unmodified {base:9.3f} ms   knob-enabled {knob:9.3f} ms   "
              f"overhead {pct:+6.2f}% (median of paired per-round ratios)")
    ok = worst <= a.max_overhead_pct and m["same"]
    print(f"  {'PASS' if ok else 'FAIL'}: overhead <= {a.max_overhead_pct}% and identical outputs")
    return 0 if ok else 1


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    sys.exit(main())
