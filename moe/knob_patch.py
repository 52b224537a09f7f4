"""Per-forward knobs for a transformers MoE causal LM: router top_k and block skipping.

The knobs of a forward live in a ContextVar, not in the modules: each thread (and asyncio task)
sees only the value it set, so concurrent passes with different knobs cannot leak into each other
and no lock is needed. `install_knobs` changes the model once, at load time: the router classes
read `top_k` from the context (falling back to the configured value), and each decoder block
returns its input unchanged when the context says it is skipped. With no knobs set the model
computes exactly what the unmodified one does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ForwardKnobs:
    """What one forward pass uses: experts per token (None: the model's own) and blocks to skip."""

    top_k: int | None = None
    skip_blocks: frozenset[int] = frozenset()


_CURRENT: ContextVar[ForwardKnobs | None] = ContextVar("moe_forward_knobs", default=None)
_SUBCLASSES: dict[tuple[type[torch.nn.Module], str], type[torch.nn.Module]] = {}


@contextlib.contextmanager
def knob_context(knobs: ForwardKnobs) -> Iterator[ForwardKnobs]:
    """Every forward run inside this block (in this thread/task) uses `knobs`."""
    token = _CURRENT.set(knobs)
    try:
        yield knobs
    finally:
        _CURRENT.reset(token)


def _top_k_get(self: Any) -> int:
    knobs = _CURRENT.get()
    if knobs is not None and knobs.top_k is not None:
        return knobs.top_k
    return int(self.__dict__["_knob_default_top_k"])


def _top_k_set(self: Any, value: int) -> None:
    self.__dict__["_knob_default_top_k"] = value


def _routed_subclass(cls: type[torch.nn.Module]) -> type[torch.nn.Module]:
    # A data descriptor on the class wins over the instance attribute, so the model's own router
    # code (`torch.topk(probs, self.top_k)`) runs unchanged and reads the per-forward value.
    key = (cls, "router")
    if key not in _SUBCLASSES:
        _SUBCLASSES[key] = type(f"Knob{cls.__name__}", (cls,), {"top_k": property(_top_k_get, _top_k_set)})
    return _SUBCLASSES[key]


def _skippable_subclass(cls: type[torch.nn.Module]) -> type[torch.nn.Module]:
    key = (cls, "block")
    if key not in _SUBCLASSES:

        def forward(self: Any, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            knobs = _CURRENT.get()
            if knobs is not None and self._knob_block_index in knobs.skip_blocks:
                return hidden_states  # identity: attention, MoE and the KV-cache write are not run
            return cls.forward(self, hidden_states, *args, **kwargs)

        _SUBCLASSES[key] = type(f"Knob{cls.__name__}", (cls,), {"forward": forward})
    return _SUBCLASSES[key]


def decoder_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise TypeError(f"{type(model).__name__} has no .model.layers: not a supported decoder-only LM")
    return layers


def install_knobs(model: torch.nn.Module) -> int:
    """Make `model` follow knob_context; returns the number of routers patched. Idempotent."""
    routers = 0
    for i, block in enumerate(decoder_blocks(model)):
        if type(block) not in _SUBCLASSES.values():
            block.__class__ = _skippable_subclass(type(block))
        # Plain attributes set through __dict__, as Module.__setattr__ would for an int (its stub
        # accepts only tensors and modules).
        block.__dict__["_knob_block_index"] = i
        for module in block.modules():
            if type(module) in _SUBCLASSES.values() and "_knob_default_top_k" in module.__dict__:
                routers += 1
                continue
            value = module.__dict__.get("top_k")
            if isinstance(value, int) and not isinstance(value, bool):
                del module.__dict__["top_k"]
                module.__class__ = _routed_subclass(type(module))
                _top_k_set(module, value)  # what the property's setter does
                routers += 1
    if routers == 0:
        raise TypeError(f"{type(model).__name__}: found no MoE router with a top_k attribute to patch")
    return routers
