"""The vision stage: a CLIP ViT over the global image plus its crops, pooled to 144 tokens each.

What is real and what is a stand-in: with `checkpoint` the ViT weights come from a local CLIP
vision checkpoint; otherwise the ViT is random-initialised in the CLIP ViT-L/14-336 shape (the
`tiny` preset shrinks its width and depth). Pixels are random (no image preprocessing), and the
connector (2x2 average pooling of the 24x24 patch grid + a 2-layer MLP into the LM width) is a
random stand-in for MolmoE's attention-pooling connector. Its cost, not its output, is the point.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from controller.knobs import TOKENS_PER_CROP
from moe.errors import ModelLoadError


class VisionStage(torch.nn.Module):
    def __init__(self, vit: CLIPVisionModel, lm_hidden: int) -> None:
        super().__init__()
        self.vit = vit
        cfg = vit.config
        self.image_size = _square_side(cfg.image_size, "image_size")
        self.grid = self.image_size // _square_side(cfg.patch_size, "patch_size")
        width = int(cfg.hidden_size)
        self.connector = torch.nn.Sequential(
            torch.nn.Linear(width, lm_hidden), torch.nn.GELU(), torch.nn.Linear(lm_hidden, lm_hidden)
        )
        pooled = (self.grid // 2) ** 2
        assert pooled == TOKENS_PER_CROP, f"vision grid {self.grid} gives {pooled} tokens per crop, not 144"

    def pixels(self, num_images: int, *, device: torch.device, dtype: torch.dtype, seed: int) -> torch.Tensor:
        x = torch.empty(num_images, 3, self.image_size, self.image_size, device=device, dtype=dtype)
        return fill_pixels(x, seed)

    @torch.inference_mode()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(images, 3, H, W) -> (images, 144, lm_hidden)."""
        hidden = self.vit(pixel_values=pixel_values).last_hidden_state[:, 1:]  # drop CLS
        n, _, width = hidden.shape
        grid = hidden.reshape(n, self.grid, self.grid, width).permute(0, 3, 1, 2)
        pooled = torch.nn.functional.avg_pool2d(grid, 2).flatten(2).transpose(1, 2)
        out: torch.Tensor = self.connector(pooled)
        return out


def _square_side(value: object, name: str) -> int:
    # CLIPVisionConfig also types these sizes as lists, tuples or None; the stage needs one int.
    if isinstance(value, int):
        return value
    raise ModelLoadError(f"vision config {name}={value!r} is not supported; the vision stage needs a square size "
                         "given as one integer, e.g. 336")


def fill_pixels(out: torch.Tensor, seed: int) -> torch.Tensor:
    """Stand-in pixels drawn on the tensor's own device: a 16-image batch drawn on the host and
    copied over costs tens of milliseconds, more than the vision forward itself on a GPU."""
    g = torch.Generator(device=out.device).manual_seed(seed)
    return out.normal_(generator=g)


def build_vision_stage(
    shape: dict[str, Any],
    *,
    lm_hidden: int,
    device: torch.device,
    dtype: torch.dtype,
    checkpoint: str | None = None,
) -> VisionStage:
    if checkpoint is not None:
        try:
            vit = CLIPVisionModel.from_pretrained(checkpoint, local_files_only=True, dtype=dtype)
        except OSError as e:
            raise ModelLoadError(
                f"vision_checkpoint={checkpoint!r} is not a local CLIP vision model: {e}"
            ) from e
        vit = vit.to(device)  # type: ignore[arg-type]  # functools.wraps on PreTrainedModel.to hides the bound self
    else:
        prev = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with device:
                # attn_implementation is taken by PreTrainedConfig's **kwargs, which its dataclass signature omits.
                vit = CLIPVisionModel(CLIPVisionConfig(**shape, attn_implementation="sdpa"))  # type: ignore[call-arg]
        finally:
            torch.set_default_dtype(prev)
    stage = VisionStage(vit, lm_hidden).to(device=device, dtype=dtype)
    return stage.eval().requires_grad_(False)
