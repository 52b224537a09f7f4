"""The generation engine on the CPU (its eager mode: the same steps a GPU captures as graphs).

Checked against an independent reference: a full forward of the unmodified sequence (vision
tokens, prompt, generated tokens) without any cache, padding or masks, whose logits at each
position must equal the engine's logits for that step.
"""

from __future__ import annotations

import pytest
import torch

from controller.knobs import Knobs
from moe.engine import DecodeBatch, EngineOptions, GenerationEngine, pair_of
from moe.errors import ConfigDisabledError, InputTooLongError
from moe.knob_patch import knob_context
from moe.runner import MoERunner, PromptInput

OPTIONS = EngineOptions(mode="graph", max_prompt_tokens=1024, prefill_step=256, max_new_tokens=16)


@pytest.fixture(scope="module")
def engine(runner: MoERunner) -> GenerationEngine:
    return GenerationEngine(runner, OPTIONS)


def reference_logits(runner: MoERunner, knobs: Knobs, x: PromptInput, tokens: list[int]) -> torch.Tensor:
    """Logits at the last prompt position and after each generated token, from one cache-free pass."""
    m = runner.model
    with torch.inference_mode(), knob_context(runner.forward_knobs(knobs)):
        parts = []
        if x.num_images:
            pixels = m.vision.pixels(x.num_images, device=m.device, dtype=m.dtype, seed=x.image_seed)
            parts.append(m.vision(pixels).reshape(-1, m.config.hidden_size))
        ids = runner.codec.encode(x.prompt) + tokens[:-1]
        parts.append(m.lm.get_input_embeddings()(torch.tensor(ids)))
        embeds = torch.cat(parts)[None]
        out = m.lm(inputs_embeds=embeds, use_cache=False)
        n_prompt = embeds.shape[1] - (len(tokens) - 1)
        return out.logits[0, n_prompt - 1 :].float()


INPUTS = [
    PromptInput("what is in the image?", 2, image_seed=5),
    PromptInput("a much longer prompt, so that the rows of a batch differ in length", 1, image_seed=7),
    PromptInput("no image", None),
]


@pytest.mark.parametrize("knobs", [Knobs("low", 4, 12), Knobs("medium", 8, 16), Knobs("low", 2, 14)])
def test_logits_equal_a_cache_free_forward(engine: GenerationEngine, runner: MoERunner, knobs: Knobs) -> None:
    results = engine.generate(knobs, INPUTS, max_new_tokens=6, keep_logits=True)
    for x, res in zip(INPUTS, results, strict=True):
        ref = reference_logits(runner, knobs, x, res.token_ids)
        got = torch.stack(res.logits or [])
        assert got.shape == ref.shape
        assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4), (got - ref).abs().max()
        # Greedy: every token is the argmax of the reference logits before it.
        assert res.token_ids == ref.argmax(-1).tolist()


def test_same_answer_alone_and_in_a_batch(engine: GenerationEngine) -> None:
    knobs = Knobs("high", 6, 13)
    batch = engine.generate(knobs, INPUTS, max_new_tokens=5)
    for i, x in enumerate(INPUTS):
        (alone,) = engine.generate(knobs, [x], max_new_tokens=5)
        assert alone.token_ids == batch[i].token_ids


def test_same_tokens_as_the_dynamic_cache_runner(engine: GenerationEngine, runner: MoERunner) -> None:
    knobs = Knobs("medium", 4, 14)
    a = runner.generate(knobs, INPUTS[:2], max_new_tokens=6)
    b = engine.generate(knobs, INPUTS[:2], max_new_tokens=6)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert b[0].vision_tokens == 3 * 144 and b[0].text_tokens == len(runner.codec.encode(INPUTS[0].prompt))
    assert set(b[0].timings_ms) == {"vision", "prefill", "decode", "total"}
    assert len(b[0].decode_per_step_ms) == 5


def test_batches_larger_than_the_largest_bucket_are_split(runner: MoERunner) -> None:
    eng = GenerationEngine(runner, EngineOptions(max_prompt_tokens=512, max_new_tokens=4, decode_buckets=(1, 2)))
    xs = [PromptInput(f"question {i}", 1, image_seed=i) for i in range(5)]
    out = eng.generate(Knobs("low", 4, 16), xs, max_new_tokens=3)
    singles = [eng.generate(Knobs("low", 4, 16), [x], max_new_tokens=3)[0] for x in xs]
    assert [r.token_ids for r in out] == [r.token_ids for r in singles]


def test_no_state_leaks_between_requests(engine: GenerationEngine) -> None:
    """Slots are reused without clearing the cache: a request's answer must not depend on what ran before."""
    knobs, x = Knobs("low", 4, 12), INPUTS[1]
    (first,) = engine.generate(knobs, [x], max_new_tokens=6)
    engine.generate(knobs, INPUTS, max_new_tokens=8)  # fills more rows and positions
    engine.generate(Knobs("high", 8, 16), [INPUTS[0]], max_new_tokens=8)
    (again,) = engine.generate(knobs, [x], max_new_tokens=6)
    assert again.token_ids == first.token_ids


def test_too_many_tokens_is_a_typed_error_naming_the_limit(engine: GenerationEngine) -> None:
    big = PromptInput("x" * 700, 2)  # 432 vision + 700 text tokens > 1024
    with pytest.raises(InputTooLongError, match=r"prompt_tokens=1132 exceeds the limit of 1024"):
        engine.generate(Knobs("low", 4, 12), [big])
    with pytest.raises(InputTooLongError, match=r"max_new_tokens=17 exceeds the limit of 16"):
        engine.generate(Knobs("low", 4, 12), [INPUTS[0]], max_new_tokens=17)
    # Exactly at the limit is fine.
    fits = PromptInput("y" * (1024 - 432), 2)
    assert engine.prompt_tokens(fits) == 1024
    assert engine.generate(Knobs("low", 4, 12), [fits], max_new_tokens=2)[0].token_ids


def test_prepare_reports_and_is_idempotent(runner: MoERunner) -> None:
    eng = GenerationEngine(runner, EngineOptions(max_prompt_tokens=512, max_new_tokens=4))
    configs = [Knobs("low", 4, 12), Knobs("high", 4, 12), Knobs("low", 8, 16)]
    report = eng.prepare(configs).to_dict()
    assert report["mode"] == "eager" and report["pairs"] == [[4, 12], [8, 16]] and report["disabled"] == {}
    assert report["kv_cache_mib"] > 0 and report["capture_seconds"] >= 0
    assert all(eng.is_ready(k) for k in configs)
    seconds = eng.report.seconds
    eng.prepare(configs)
    assert eng.report.seconds == seconds  # nothing new: nothing done


def test_a_pair_that_fails_to_prepare_is_disabled_and_the_rest_run(
    runner: MoERunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    eng = GenerationEngine(runner, EngineOptions(max_prompt_tokens=512, max_new_tokens=4))
    real = eng._prepare_pair

    def failing(pair: tuple[int, int]) -> None:
        if pair == (6, 14):
            raise RuntimeError("CUDA error: out of memory (simulated)")
        real(pair)

    monkeypatch.setattr(eng, "_prepare_pair", failing)
    report = eng.prepare([Knobs("low", 6, 14), Knobs("low", 4, 12)])
    assert list(report.disabled) == ["top_k=6/blocks=14"]
    assert "out of memory" in report.disabled["top_k=6/blocks=14"]
    assert eng.disabled_pairs() == [(6, 14)] and pair_of(Knobs("low", 4, 12)) in {tuple(p) for p in report.pairs}
    with pytest.raises(ConfigDisabledError, match=r"low_6_14 is disabled on this replica: dry run failed"):
        eng.generate(Knobs("low", 6, 14), [INPUTS[0]])
    assert eng.generate(Knobs("low", 4, 12), [INPUTS[0]], max_new_tokens=2)


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="mode='fast'"):
        EngineOptions(mode="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="decode_buckets"):
        EngineOptions(decode_buckets=(4, 2))
    with pytest.raises(ValueError, match="prefill_step"):
        EngineOptions(max_prompt_tokens=100, prefill_step=256)
    for slots in (0, 5):
        with pytest.raises(ValueError, match=f"decode_slots={slots} must be an integer in \\[1, 4\\]"):
            EngineOptions(decode_slots=slots)
    assert EngineOptions(max_prompt_tokens=600, prefill_step=256).prefill_buckets() == [256, 512, 600]


def test_two_decode_slots_run_two_pairs_in_turn_and_each_gets_its_answer_alone(runner: MoERunner) -> None:
    """With decode_slots=2 a batch of another pair starts beside a running one (its own rows and
    decode state) instead of waiting for it; stepped in turn, each gets the tokens and the logits it
    gets alone, and a third pair waits for a slot to free."""
    eng = GenerationEngine(runner, EngineOptions(max_prompt_tokens=512, max_new_tokens=12, decode_slots=2))
    a_knobs, b_knobs = Knobs("low", 4, 12), Knobs("medium", 8, 16)
    a, b = DecodeBatch(eng, a_knobs, keep_logits=True), DecodeBatch(eng, b_knobs, keep_logits=True)
    c = DecodeBatch(eng, Knobs("low", 2, 14))
    done_a: dict[int, object] = {}
    done_b: dict[int, object] = {}
    try:
        rows_a = a.join(a_knobs, INPUTS[:2], [12, 5])
        for _ in range(3):
            a.step()
        rows_b = b.join(b_knobs, [INPUTS[2]], [6])  # the second slot: no wait for a's 12 tokens
        assert rows_a is not None and rows_b is not None
        assert a.slot is not None and b.slot is not None and a.slot.index != b.slot.index
        assert not c.can_join(Knobs("low", 2, 14), 1, [2])  # both slots hold a batch
        while a.active or b.active:
            a.step()
            b.step()
            done_a.update(a.finished())
            done_b.update(b.finished())
        assert c.can_join(Knobs("low", 2, 14), 1, [2])  # the slots are free again
    finally:
        for batch in (a, b, c):
            batch.close()
    alone_a = eng.generate(a_knobs, INPUTS[:2], max_new_tokens=12, keep_logits=True)
    (alone_b,) = eng.generate(b_knobs, [INPUTS[2]], max_new_tokens=6, keep_logits=True)
    got_a = [done_a[r] for r in rows_a]
    assert [g.token_ids for g in got_a] == [alone_a[0].token_ids, alone_a[1].token_ids[:5]]  # type: ignore[attr-defined]
    got_b = done_b[rows_b[0]]
    assert got_b.token_ids == alone_b.token_ids  # type: ignore[attr-defined]
    assert torch.allclose(torch.stack(got_b.logits), torch.stack(alone_b.logits or []), atol=1e-4)  # type: ignore[attr-defined]


def test_with_one_slot_a_second_pair_cannot_start_until_the_batch_ends(runner: MoERunner) -> None:
    eng = GenerationEngine(runner, EngineOptions(max_prompt_tokens=512, max_new_tokens=4))
    a, b = DecodeBatch(eng, Knobs("low", 4, 12)), DecodeBatch(eng, Knobs("low", 8, 16))
    try:
        assert a.join(Knobs("low", 4, 12), [INPUTS[2]], [3]) is not None
        assert not b.can_join(Knobs("low", 8, 16), 1, [2])
        assert b.join(Knobs("low", 8, 16), [INPUTS[2]], [2]) is None
        while a.active:
            a.step()
        assert b.join(Knobs("low", 8, 16), [INPUTS[2]], [2]) is not None  # a's slot was given back
    finally:
        a.close()
        b.close()
