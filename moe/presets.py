"""Model presets and loading: random-initialised from a preset, or a local checkpoint (no hub)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, OlmoeConfig, OlmoeForCausalLM, PreTrainedModel

from moe.errors import ModelLoadError
from moe.knob_patch import install_knobs
from moe.vision import VisionStage, build_vision_stage

__all__ = ["PRESETS", "LoadedModel", "build_model", "resolve_dtype"]


@dataclass(frozen=True)
class Preset:
    name: str
    lm: dict[str, Any]
    vision: dict[str, Any]
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


# OLMoE-1B-7B-0924, the language model inside MolmoE-1B: 16 blocks, 64 experts, top-8, ~6.9B params.
OLMOE_1B_7B = dict(
    vocab_size=50304,
    hidden_size=2048,
    intermediate_size=1024,
    num_hidden_layers=16,
    num_attention_heads=16,
    num_key_value_heads=16,
    num_experts=64,
    num_experts_per_tok=8,
    max_position_embeddings=4096,
    rope_theta=10000.0,
    norm_topk_prob=False,
    tie_word_embeddings=False,
    pad_token_id=1,
    eos_token_id=50279,
    bos_token_id=None,
)
# CLIP ViT-L/14 at 336 px (MolmoE's vision encoder shape): 24 layers, width 1024, 577 tokens per image.
CLIP_VIT_L_14_336 = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=336,
    patch_size=14,
)

PRESETS: dict[str, Preset] = {
    "olmoe-1b-7b": Preset("olmoe-1b-7b", OLMOE_1B_7B, CLIP_VIT_L_14_336, "OLMoE-1B-7B shape, random weights"),
    # Small in every part (CPU tests): still 16 blocks so the MolmoE block order applies unchanged,
    # 16 experts (top_k up to 16), and the real 336 px / 14 px patch grid so a crop is 144 tokens.
    "tiny": Preset(
        "tiny",
        dict(
            OLMOE_1B_7B,
            vocab_size=320,
            hidden_size=32,
            intermediate_size=16,
            num_attention_heads=2,
            num_key_value_heads=2,
            num_experts=16,
            max_position_embeddings=4096,
            eos_token_id=2,
        ),
        dict(
            CLIP_VIT_L_14_336,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
        ),
        "tiny OLMoE-shaped model for CPU tests",
    ),
}

DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
}


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """bf16 on CUDA (what core_exp ran), fp32 on CPU unless asked otherwise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype={dtype!r} is not valid; expected one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


@dataclass
class LoadedModel:
    """The language model (knobs installed), its vision stage and where they run."""

    lm: PreTrainedModel
    vision: VisionStage
    device: torch.device
    dtype: torch.dtype
    source: str
    experts_implementation: str

    @property
    def config(self) -> Any:
        return self.lm.config

    @property
    def num_blocks(self) -> int:
        return int(self.lm.config.num_hidden_layers)

    @property
    def num_experts(self) -> int:
        c = self.lm.config
        return int(getattr(c, "num_experts", None) or c.num_local_experts)


def _experts_impl(requested: str, device: torch.device) -> str:
    # grouped_mm: one grouped GEMM per projection over all routed (token, expert) pairs, instead of
    # a Python loop launching a GEMM per hit expert ("eager"). It is the fastest transformers offers.
    if requested != "auto":
        return requested
    f = torch.nn.functional
    return "grouped_mm" if hasattr(f, "grouped_mm") or hasattr(torch, "_grouped_mm") else "eager"


def build_model(
    preset: str | None = None,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    vision_checkpoint: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    experts_implementation: str = "auto",
    seed: int = 0,
    knobs: bool = True,
    vision_preset: str | None = None,
) -> LoadedModel:
    """A preset built with random weights directly on `device`, or a local checkpoint.
    `knobs=False` leaves the transformers model unmodified (the overhead benchmark's baseline).
    `vision_preset`: with a checkpoint and no vision checkpoint, take that preset's vision stand-in
    instead of the CLIP ViT-L/14-336-shaped one (e.g. "tiny" for quick CPU tests)."""
    if (preset is None) == (checkpoint is None):
        raise ModelLoadError(
            "give exactly one of preset (e.g. 'olmoe-1b-7b', 'tiny') or checkpoint (a local path)"
        )
    dev = torch.device(device)
    torch_dtype = resolve_dtype(dtype, device)
    impl = _experts_impl(experts_implementation, dev)
    torch.manual_seed(seed)
    if checkpoint is not None:
        lm, vision_cfg, source = _load_checkpoint(checkpoint, dev, torch_dtype, impl)
        if vision_preset is not None:
            if vision_preset not in PRESETS:
                known = ", ".join(PRESETS)
                raise ModelLoadError(f"vision_preset={vision_preset!r} is not known; expected one of {known}")
            vision_cfg = PRESETS[vision_preset].vision
    else:
        if preset not in PRESETS:
            raise ModelLoadError(f"preset={preset!r} is not known; expected one of {', '.join(PRESETS)}")
        p = PRESETS[preset]
        config = OlmoeConfig(**p.lm)
        # Created on the device in its dtype: the 6.9B preset builds in seconds on a GPU instead of
        # minutes of CPU init and a copy.
        with dev, _default_dtype(torch_dtype):
            lm = OlmoeForCausalLM._from_config(  # type: ignore[no-untyped-call]  # unannotated in transformers
                config, experts_implementation=impl, attn_implementation="sdpa"
            )
        vision_cfg, source = p.vision, f"preset:{preset} (random weights)"
    lm.eval().requires_grad_(False)  # type: ignore[no-untyped-call]  # PreTrainedModel.eval is unannotated
    if knobs:
        install_knobs(lm)
    vision = build_vision_stage(
        vision_cfg,
        lm_hidden=int(lm.config.hidden_size),
        device=dev,
        dtype=torch_dtype,
        checkpoint=None if vision_checkpoint is None else str(vision_checkpoint),
    )
    return LoadedModel(lm, vision, dev, torch_dtype, source, impl)


def _load_checkpoint(
    path: str | os.PathLike[str], dev: torch.device, dtype: torch.dtype, impl: str
) -> tuple[PreTrainedModel, dict[str, Any], str]:
    p = os.fspath(path)
    if not os.path.isdir(p) or not os.path.isfile(os.path.join(p, "config.json")):
        raise ModelLoadError(
            f"checkpoint={p!r} is not a local model folder with a config.json; "
            "download it first (no hub access at run time) or use preset='olmoe-1b-7b'"
        )
    config = AutoConfig.from_pretrained(p, local_files_only=True)
    if not any(hasattr(config, a) for a in ("num_experts", "num_local_experts")):
        raise ModelLoadError(f"checkpoint={p!r} is a {config.model_type!r} model, not a MoE causal LM")
    # No device_map: that path needs `accelerate`, an extra dependency for a single-device load.
    lm = AutoModelForCausalLM.from_pretrained(
        p,
        local_files_only=True,
        dtype=dtype,
        experts_implementation=impl,
        attn_implementation="sdpa",
    ).to(dev)  # type: ignore[arg-type]  # functools.wraps on PreTrainedModel.to hides the bound self from mypy
    # The checkpoint holds only the language model: the vision stage is the CLIP-shaped stand-in
    # unless a vision checkpoint is given.
    return lm, CLIP_VIT_L_14_336, f"checkpoint:{p}"


class _default_dtype:
    """Build parameters in the target dtype (torch has no per-call option for module construction)."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def __enter__(self) -> None:
        self.prev = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc: object) -> None:
        torch.set_default_dtype(self.prev)
