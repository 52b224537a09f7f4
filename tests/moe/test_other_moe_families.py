"""The same knob mechanics on Mixtral- and Qwen2-MoE-style checkpoints, loaded from a local folder
(tiny random models saved in tmp_path: real transformers classes, no hub)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, MixtralConfig, Qwen2MoeConfig

from controller.knobs import Knobs
from moe.knob_patch import _SUBCLASSES, ForwardKnobs, knob_context
from moe.presets import LoadedModel, build_model
from moe.runner import MoERunner, PromptInput

SMALL = {"vocab_size": 128, "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
         "num_key_value_heads": 2, "num_experts_per_tok": 2}
CONFIGS = {
    "mixtral": lambda: MixtralConfig(intermediate_size=64, num_local_experts=6, **SMALL),
    "qwen2_moe": lambda: Qwen2MoeConfig(intermediate_size=64, moe_intermediate_size=32,
                                        shared_expert_intermediate_size=32, num_experts=6, **SMALL),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp(request.param)
    AutoModelForCausalLM.from_config(CONFIGS[request.param]()).save_pretrained(folder)
    return build_model(checkpoint=str(folder), device="cpu", vision_preset="tiny")


def _routers(m: LoadedModel) -> list[torch.nn.Module]:
    patched = set(_SUBCLASSES.values())
    return [mod for mod in m.lm.modules() if type(mod) in patched and "_knob_default_top_k" in mod.__dict__]


def test_loaded_from_local_folder(model: LoadedModel) -> None:
    assert model.num_blocks == 4 and model.num_experts == 6
    # Every module that reads top_k follows the knob (Mixtral: the router and the MoE block).
    assert len(_routers(model)) >= 4


def test_router_selects_exactly_k(model: LoadedModel) -> None:
    picked: list[int] = []

    def grab(_m: torch.nn.Module, _i: object, out: object) -> None:
        outs = out if isinstance(out, tuple) else (out,)
        idx = [t for t in outs if isinstance(t, torch.Tensor) and not t.is_floating_point()]
        if idx:  # the module that returns expert indices is the router
            picked.append(idx[0].shape[-1])

    hooks = [r.register_forward_hook(grab) for r in _routers(model)]
    try:
        x = torch.randn(1, 5, int(model.config.hidden_size))
        for k in (1, 3, 6):
            picked.clear()
            with torch.inference_mode(), knob_context(ForwardKnobs(top_k=k)):
                model.lm(inputs_embeds=x)
            assert picked == [k] * 4
    finally:
        for h in hooks:
            h.remove()


def test_blocks_and_no_leak(model: LoadedModel) -> None:
    runner = MoERunner(model, block_order="first_n")
    ran: list[int] = []
    layers = model.lm.model.layers
    hooks = [
        layer.self_attn.register_forward_hook(lambda m, i, o, n=n: ran.append(n)) for n, layer in enumerate(layers)
    ]
    try:
        first = runner.generate(Knobs("low", 2, 4), [PromptInput("hello", 1)], max_new_tokens=3)[0].token_ids
        ran.clear()
        runner.generate(Knobs("low", 1, 2), [PromptInput("hello", 1)], max_new_tokens=1)
        assert sorted(set(ran)) == [0, 1]  # first_n keeps the first two blocks
        again = runner.generate(Knobs("low", 2, 4), [PromptInput("hello", 1)], max_new_tokens=3)[0].token_ids
        assert again == first
    finally:
        for h in hooks:
            h.remove()
