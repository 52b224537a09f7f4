"""Continuous batching on the GPU, checked quickly: a request that joins a running CUDA-graph decode
batch mid-way gets the tokens it gets alone, and its first token does not wait for the batch.

    python -m bench.gpu_join_check --out DIR [--preset olmoe-1b-7b]

Graph engine (CUDA graphs per knob pair), the torch backend's sessions (moe.engine.DecodeBatch):
1. B alone (4 tokens), graph and eager engines: the reference tokens.
2. A long request A (256 tokens) starts a batch; after 8 steps B (another tier, same knob pair)
   joins; both run to the end. B's tokens must equal (1); B's first token is timed from its join.
3. A whole call of A, then B (what a replica without joins does): B's first token waits for A.
Writes DIR/gpu_join_check.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from controller.knobs import Knobs
from serving.replica.backends.base import ModelRequest
from serving.replica.backends.torch_backend import TorchBackend

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="olmoe-1b-7b")
    args = ap.parse_args()
    gpu = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu"
    out: dict[str, object] = {"gpu": gpu, "preset": args.preset}
    a_knobs, b_knobs = Knobs("low", 4, 12), Knobs("medium", 4, 12)
    a, b = ModelRequest("tell me a very long story about the sea", 256), ModelRequest("what is shown?", 4)
    t0 = time.perf_counter()
    graph = TorchBackend.from_options({"preset": args.preset, "device": DEVICE, "engine": "graph"})
    graph.prepare([a_knobs, b_knobs])
    out["capture_s"] = round(time.perf_counter() - t0, 1)
    (alone,) = graph.generate_batch(b_knobs, [b])
    session = graph.open_session(a_knobs)
    try:
        (row_a,) = session.join(a_knobs, [a], [None]) or [None]
        for _ in range(8):
            session.step()
        t = time.perf_counter()
        rows = session.join(b_knobs, [b], [None])  # its prefill runs in the join: its first token
        joined_first_ms = (time.perf_counter() - t) * 1000
        done = {}
        while session.active:
            session.step()
            done.update(session.finished())
    finally:
        session.close()
    assert rows is not None
    joined = done[rows[0]]
    t = time.perf_counter()
    graph.generate_batch(a_knobs, [a])
    (after_a,) = graph.generate_batch(b_knobs, [b])
    serial_first_ms = (time.perf_counter() - t) * 1000 - after_a.timings_ms["decode"]
    out.update({
        "joined_tokens_equal_alone": joined.text == alone.text and joined.output_tokens == alone.output_tokens,
        "a_tokens": done[row_a].output_tokens,
        "b_first_token_ms_joined": round(joined_first_ms, 2),
        "b_first_token_ms_after_a_whole_call": round(serial_first_ms, 2),
        "b_alone_first_token_ms": round(alone.timings_ms["vision"] + alone.timings_ms["prefill"], 2),
        "a_decode_ms_per_step": round(done[row_a].timings_ms["decode"] / max(1, done[row_a].output_tokens - 1), 3),
    })
    print(json.dumps(out, indent=1))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_join_check.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
