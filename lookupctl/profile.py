"""`lookupctl profile`: sweep a knob grid on a real PyTorch MoE and write core_exp results."""

from __future__ import annotations

import argparse
from typing import Any

from controller.errors import ControllerError
from controller.knobs import TIERS
from controller.optional import require
from lookupctl import add_flag


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "profile",
        help="measure latency per knob config on a PyTorch MoE and write core_exp files",
        description="Sweep tiers x top_k x blocks, one core_exp file per config; configs already "
        "in --out are skipped (resume). Needs the 'torch' extra.",
    )
    add_flag(parser, "backend", choices=["torch"], default="torch")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help="random-weight model: olmoe-1b-7b or tiny")
    source.add_argument("--checkpoint", help="local transformers MoE checkpoint folder")
    add_flag(parser, "vision_checkpoint", default=None, help="local CLIP vision checkpoint (else a stand-in)")
    add_flag(parser, "dataset", required=True, help="dataset name, e.g. text_vqa (folder text-vqa)")
    add_flag(parser, "tiers", nargs="+", choices=TIERS, default=list(TIERS))
    add_flag(parser, "top_k", nargs="+", type=int, default=[4, 6, 8])
    add_flag(parser, "blocks", nargs="+", type=int, default=[12, 14, 16])
    add_flag(parser, "samples", type=int, default=20, help="samples per config")
    add_flag(parser, "prompts", default=None, help="JSONL of samples (prompt, answers, ...); else synthetic")
    add_flag(
        parser, "eval_hook", default=None, help="'module:function' scoring (pred_text, sample) -> [0, 1]"
    )
    add_flag(parser, "out", required=True, help="results_dir to write into")
    add_flag(parser, "device", default=None, help="cuda if available, else cpu")
    add_flag(parser, "dtype", default="auto")
    add_flag(
        parser,
        "experts_implementation",
        default="auto",
        choices=["auto", "grouped_mm", "batched_mm", "eager"],
    )
    add_flag(parser, "block_order", default="molmoe", help="molmoe, first_n, or comma-separated drop order")
    add_flag(parser, "max_new_tokens", type=int, default=8)
    add_flag(parser, "warmup", type=int, default=2, help="untimed passes before each config")
    add_flag(parser, "prefill_only", action="store_true", help="stop after the first token")
    add_flag(parser, "seed", type=int, default=0)
    add_flag(parser, "engine", choices=["graph", "eager"], default="graph",
             help="the serving engine's mode: graph (CUDA graphs on a GPU; the same steps eagerly on a CPU) "
             "or eager (the comparison baseline)")
    add_flag(parser, "max_prompt_tokens", type=int, default=2560, help="largest prefill bucket (engine)")
    add_flag(parser, "no_progress", action="store_true")
    add_flag(parser, "sequential", action="store_true",
             help="time config after config (default: interleaved rounds, every config once per sample)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    torch = require("torch", "torch")
    require("transformers", "torch")
    from moe.profiler import Grid, profile_grid
    from moe.prompts import load_hook, read_samples_jsonl, synthetic_samples

    hook = load_hook(args.eval_hook) if args.eval_hook else None
    samples = (
        read_samples_jsonl(args.prompts, args.samples) if args.prompts else synthetic_samples(args.samples)
    )
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    order: Any = args.block_order
    if order not in ("molmoe", "first_n"):
        order = [int(b) for b in order.split(",") if b.strip()]
    # The serving replica's own backend and engine, so that the table's latency is what a served
    # request sees (the same capture, buckets, padding and warm-up).
    from serving.replica.backends.torch_backend import TorchBackend

    source_opt = {"preset": args.preset} if args.preset else {"checkpoint": args.checkpoint}
    try:
        backend = TorchBackend(
            **source_opt,
            vision_checkpoint=args.vision_checkpoint,
            device=device,
            dtype=args.dtype,
            experts_implementation=args.experts_implementation,
            block_order=order,
            seed=args.seed,
            warmup=False,  # profile_grid warms every shape itself (--warmup)
            engine=args.engine,
            max_prompt_tokens=args.max_prompt_tokens,
            max_new_tokens=max(args.max_new_tokens, 1),
        )
    except ControllerError:
        raise
    except ValueError as e:  # an option the backend refuses (pydantic): one line, exit 2 like the rest
        raise ControllerError(f"profile options: {' '.join(str(e).split())[:300]}") from None
    model = backend.runner.model
    grid = Grid(tuple(args.tiers), tuple(args.top_k), tuple(args.blocks))
    capture = backend.prepare(grid.configs())
    if capture["disabled"]:
        raise ControllerError(f"configs the engine cannot run: {capture['disabled']}")
    # The engine offers the runner's surface (generate, validate, active_blocks, model); profile_grid is
    # typed on MoERunner, which moe/ does not check strictly.
    engine: Any = backend.engine
    report = profile_grid(
        engine,
        dataset=args.dataset,
        grid=grid,
        samples=samples,
        out_dir=args.out,
        max_new_tokens=args.max_new_tokens,
        warmup=args.warmup,
        prefill_only=args.prefill_only,
        hook=hook,
        hook_name=args.eval_hook,
        progress=not args.no_progress,
        interleave=not args.sequential,
    )
    print(
        f"profiled {len(report.written)} configs, skipped {len(report.skipped)} already written; "
        f"{model.source} on {device} ({model.experts_implementation} experts, {capture['mode']} engine, "
        f"{capture['graphs']} graphs in {capture['capture_seconds']} s) -> {args.out}"
    )
    return 0
