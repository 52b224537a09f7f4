"""A real PyTorch MoE replica whose work follows the knobs (top_k, active blocks, vision tokens).

Needs the `torch` extra; nothing here imports ray, and importing this package starts nothing.
"""

from __future__ import annotations

__all__ = ["PRESETS", "build_model", "MoERunner", "knob_context", "install_knobs"]


def __getattr__(name: str) -> object:
    # Lazy re-exports: `import moe` stays cheap and torch loads only when a name is used.
    if name in ("PRESETS", "build_model"):
        from moe import presets

        return getattr(presets, name)
    if name in ("knob_context", "install_knobs"):
        from moe import knob_patch

        return getattr(knob_patch, name)
    if name == "MoERunner":
        from moe.runner import MoERunner

        return MoERunner
    raise AttributeError(name)
