"""Each knob changes the computation, and nothing leaks between passes."""

from __future__ import annotations

import threading

import torch

from controller.knobs import Knobs
from moe.knob_patch import ForwardKnobs, knob_context
from moe.presets import build_model
from moe.runner import PromptInput


def _routers(model):  # type: ignore[no-untyped-def]
    return [layer.mlp.gate for layer in model.lm.model.layers]


def test_router_selects_exactly_k_experts(tiny_model):  # type: ignore[no-untyped-def]
    seen: list[int] = []
    hooks = [g.register_forward_hook(lambda m, i, o: seen.append(o[2].shape[-1])) for g in _routers(tiny_model)]
    try:
        x = torch.randn(1, 5, tiny_model.config.hidden_size)
        for k in (1, 3, 16):
            seen.clear()
            with torch.inference_mode(), knob_context(ForwardKnobs(top_k=k)):
                tiny_model.lm(inputs_embeds=x)
            assert seen == [k] * 16
    finally:
        for h in hooks:
            h.remove()


def test_skipped_blocks_are_not_run(tiny_model, runner):  # type: ignore[no-untyped-def]
    ran: list[int] = []
    layers = tiny_model.lm.model.layers
    hooks = [
        layer.self_attn.register_forward_hook(lambda m, i, o, n=n: ran.append(n)) for n, layer in enumerate(layers)
    ]
    try:
        runner.generate(Knobs("low", 8, 12), [PromptInput("hi", 1)], max_new_tokens=1)
    finally:
        for h in hooks:
            h.remove()
    assert sorted(set(ran)) == [b for b in range(16) if b not in {2, 4, 10, 13}]


def test_tier_sets_sequence_length(runner):  # type: ignore[no-untyped-def]
    lengths = []
    for tier, crops in (("low", 1), ("medium", 4), ("high", 9)):
        (res,) = runner.generate(Knobs(tier, 8, 16), [PromptInput("abc", crops)], max_new_tokens=1)
        assert res.vision_tokens == (crops + 1) * 144
        lengths.append(res.total_sequence_length)
    assert lengths == [2 * 144 + 3 + 1, 5 * 144 + 3 + 1, 10 * 144 + 3 + 1]


def test_full_config_equals_unmodified_model() -> None:
    plain = build_model("tiny", seed=0, knobs=False)
    knobbed = build_model("tiny", seed=0)
    x = torch.randn(1, 7, plain.config.hidden_size)
    with torch.inference_mode():
        ref = plain.lm(inputs_embeds=x).logits
        with knob_context(ForwardKnobs(top_k=8)):
            got = knobbed.lm(inputs_embeds=x).logits
        bare = knobbed.lm(inputs_embeds=x).logits
        with knob_context(ForwardKnobs(top_k=4, skip_blocks=frozenset({4}))):
            other = knobbed.lm(inputs_embeds=x).logits
    assert torch.equal(ref, got) and torch.equal(ref, bare)
    assert not torch.allclose(ref, other)


def _run(runner, knobs):  # type: ignore[no-untyped-def]
    (res,) = runner.generate(knobs, [PromptInput("what is it?", 2, image_seed=7)], max_new_tokens=4)
    return res.token_ids, _logits(runner, knobs)


def _logits(runner, knobs):  # type: ignore[no-untyped-def]
    x = torch.linspace(-1, 1, 9 * runner.model.config.hidden_size).reshape(1, 9, -1)
    with torch.inference_mode(), knob_context(runner.forward_knobs(knobs)):
        return runner.model.lm(inputs_embeds=x).logits


A, B = Knobs("low", 8, 16), Knobs("low", 2, 12)


def test_no_leak_sequential(runner):  # type: ignore[no-untyped-def]
    first = _run(runner, A)
    b = _run(runner, B)
    again = _run(runner, A)
    assert first[0] == again[0] and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], b[1])


def test_no_leak_between_threads(runner):  # type: ignore[no-untyped-def]
    ref = {k: _logits(runner, k) for k in (A, B)}
    errors: list[str] = []
    barrier = threading.Barrier(2)

    def worker(knobs: Knobs) -> None:
        barrier.wait()
        for _ in range(6):
            if not torch.equal(_logits(runner, knobs), ref[knobs]):
                errors.append(str(knobs))

    threads = [threading.Thread(target=worker, args=(k,)) for k in (A, B)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
