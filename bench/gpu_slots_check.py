"""Two decode slots on the GPU, checked quickly: a request of another knob pair starts beside a
running CUDA-graph decode batch instead of waiting for it to end, both get the tokens they get
alone, and what the second slot costs (capture time, graph and KV memory, decode step time while
both run).

    python -m bench.gpu_slots_check --out DIR [--preset olmoe-1b-7b] [--device cuda]

The torch backend's sessions (moe.engine.DecodeBatch), graph engine:
1. With `decode_slots` 1 and 2: capture the two pairs; the capture report of each.
2. Reference: A (pair 4/12, 256 tokens) alone and B (pair 8/16, 16 tokens) alone, on the 2-slot
   engine.
3. Two slots: A starts; after 8 steps B opens the second slot (its first token timed from its
   join); the device steps both in turn to the end. A's and B's tokens must equal (2).
4. One slot: B must wait for A's batch to drain (its session cannot join); its first token after
   A's whole call, timed the same way.
5. Whether the GPU itself repeats: A and B alone a second time (`alone_repeatable`). Where a text
   differs, the index of its first differing character is recorded (`first_difference`). With
   `--deterministic` the run uses torch's deterministic algorithms (the MoE's combine of experts
   adds with atomics otherwise, in an order that changes from run to run; with random weights the
   greedy choice between near-equal logits then flips).
Writes DIR/gpu_slots_check.json and prints it; exit status 1 if a token differs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from controller.knobs import Knobs
from serving.replica.backends.base import ModelOutput, ModelRequest
from serving.replica.backends.torch_backend import TorchBackend

A_KNOBS, B_KNOBS = Knobs("low", 4, 12), Knobs("medium", 8, 16)


def _backend(preset: str, device: str, slots: int) -> tuple[TorchBackend, dict[str, Any]]:
    t0 = time.perf_counter()
    backend = TorchBackend.from_options({"preset": preset, "device": device, "engine": "graph",
                                         "decode_slots": slots, "max_new_tokens": 512})
    report = backend.prepare([A_KNOBS, B_KNOBS])
    return backend, {**report, "build_and_prepare_s": round(time.perf_counter() - t0, 1)}


def _first_difference(x: str, y: str) -> int | None:
    """The index of the first character where two texts differ (None: equal)."""
    if x == y:
        return None
    return next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))


def _side_by_side(backend: TorchBackend, a: ModelRequest, b: ModelRequest) -> dict[str, Any]:
    """A runs 8 steps alone, then B opens the second slot; both are stepped in turn to the end."""
    sa = backend.open_session(A_KNOBS)
    sb = backend.open_session(B_KNOBS)
    done_a: dict[int, ModelOutput] = {}
    done_b: dict[int, ModelOutput] = {}
    alone_steps: list[float] = []
    both_steps: list[float] = []
    try:
        (row_a,) = sa.join(A_KNOBS, [a], [None]) or [None]
        for _ in range(8):
            t = time.perf_counter()
            sa.step()
            alone_steps.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        rows_b = sb.join(B_KNOBS, [b], [None])
        b_first_ms = (time.perf_counter() - t) * 1000
        if rows_b is None:
            raise RuntimeError("the second slot refused B")
        while sa.active or sb.active:
            t = time.perf_counter()
            sa.step()
            sb.step()
            if sa.active and sb.active:
                both_steps.append((time.perf_counter() - t) * 1000)
            done_a.update(sa.finished())
            done_b.update(sb.finished())
    finally:
        sa.close()
        sb.close()
    return {"a": done_a[row_a], "b": done_b[rows_b[0]], "b_first_token_ms_from_join": round(b_first_ms, 2),
            "a_step_ms_alone_p50": round(statistics.median(alone_steps), 3),
            "round_of_both_steps_ms_p50": round(statistics.median(both_steps), 3) if both_steps else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="olmoe-1b-7b")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--a_tokens", type=int, default=256)
    ap.add_argument("--deterministic", action="store_true",
                    help="torch's deterministic algorithms (to tell the engine's faults from atomics' order)")
    args = ap.parse_args(argv)
    if not 16 <= args.a_tokens <= 512:
        raise SystemExit(f"gpu_slots_check: error: --a_tokens={args.a_tokens} must be in [16, 512]")
    if args.deterministic:
        # cuBLAS reads this when its handle is made, so before the first GPU matmul.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    card = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    out: dict[str, Any] = {"card": card, "preset": args.preset, "a": A_KNOBS.key, "b": B_KNOBS.key,
                           "deterministic": args.deterministic}
    a = ModelRequest("tell me a very long story about the sea", args.a_tokens)
    b = ModelRequest("what is shown?", 16)

    one, out["capture_1_slot"] = _backend(args.preset, args.device, 1)
    t = time.perf_counter()
    one.generate_batch(A_KNOBS, [a])
    (b_after,) = one.generate_batch(B_KNOBS, [b])
    out["one_slot_b_first_token_ms_after_a_whole_call"] = round(
        (time.perf_counter() - t) * 1000 - b_after.timings_ms["decode"], 2)
    session, other = one.open_session(A_KNOBS), one.open_session(B_KNOBS)
    try:
        session.join(A_KNOBS, [a], [None])
        out["one_slot_refuses_a_second_pair"] = other.join(B_KNOBS, [b], [None]) is None
    finally:
        other.close()
        session.close()
    del one
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()

    two, out["capture_2_slots"] = _backend(args.preset, args.device, 2)
    (alone_a,) = two.generate_batch(A_KNOBS, [a])
    (alone_b,) = two.generate_batch(B_KNOBS, [b])
    side = _side_by_side(two, a, b)
    (again_a,) = two.generate_batch(A_KNOBS, [a])
    (again_b,) = two.generate_batch(B_KNOBS, [b])
    out.update({
        "tokens_equal_alone": side["a"].text == alone_a.text and side["b"].text == alone_b.text,
        "alone_repeatable": again_a.text == alone_a.text and again_b.text == alone_b.text,
        "first_difference": {
            "a_side_by_side": _first_difference(side["a"].text, alone_a.text),
            "b_side_by_side": _first_difference(side["b"].text, alone_b.text),
            "a_alone_again": _first_difference(again_a.text, alone_a.text),
            "b_alone_again": _first_difference(again_b.text, alone_b.text),
            "a_chars": len(alone_a.text), "b_chars": len(alone_b.text),
        },
        "a_tokens": side["a"].output_tokens, "b_tokens": side["b"].output_tokens,
        "b_alone_first_token_ms": round(alone_b.timings_ms["vision"] + alone_b.timings_ms["prefill"], 2),
        **{k: v for k, v in side.items() if k not in ("a", "b")},
    })
    print(json.dumps(out, indent=1))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_slots_check.json").write_text(json.dumps(out, indent=1))
    return 0 if out["tokens_equal_alone"] and out["one_slot_refuses_a_second_pair"] else 1


if __name__ == "__main__":
    sys.exit(main())
