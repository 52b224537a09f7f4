"""TorchBackend on the tiny preset: protocol, knob validation, batching, options."""

from __future__ import annotations

import pytest

from controller.errors import KnobError
from controller.knobs import Knobs
from moe.errors import ModelLoadError
from serving.replica.backends.base import Backend, ModelRequest
from serving.replica.backends.torch_backend import TorchBackend


@pytest.fixture(scope="module")
def backend() -> TorchBackend:
    return TorchBackend.from_options({"preset": "tiny", "device": "cpu", "max_batch_size": 2})


def test_implements_protocol(backend: TorchBackend) -> None:
    assert isinstance(backend, Backend) and backend.name == "torch"


def test_generate_batch(backend: TorchBackend) -> None:
    reqs = [ModelRequest("what?", 3, image_b64="aGk="), ModelRequest("a longer question", 2), ModelRequest("x", 1)]
    outs = backend.generate_batch(Knobs("medium", 4, 14), reqs)
    assert [o.output_tokens for o in outs] == [3, 2, 1]
    for o in outs:
        assert set(o.timings_ms) == {"vision", "prefill", "decode", "total"}
        assert o.timings_ms["total"] >= o.timings_ms["prefill"] > 0
    # Same knobs and request alone or in a batch: the same greedy answer (padding is masked).
    (alone,) = backend.generate_batch(Knobs("medium", 4, 14), [reqs[1]])
    assert alone.text == outs[1].text


@pytest.mark.parametrize(
    ("knobs", "pattern"),
    [(Knobs("low", 17, 16), r"top_k=17 .*1\.\.16"), (Knobs("low", 8, 17), r"num_active_blocks=17 .*1\.\.16")],
)
def test_validate_knobs_names_knob_and_range(backend: TorchBackend, knobs: Knobs, pattern: str) -> None:
    with pytest.raises(KnobError, match=pattern):
        backend.validate_knobs(knobs)
    with pytest.raises(KnobError, match=pattern):
        backend.generate_batch(knobs, [ModelRequest("hi")])


def test_missing_checkpoint_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelLoadError, match=r"checkpoint=.*missing.*config\.json"):
        TorchBackend(checkpoint=str(tmp_path / "missing"))


def test_options_are_strict() -> None:
    with pytest.raises(ValueError, match="exactly one of preset"):
        TorchBackend(device="cpu")
    with pytest.raises(ValueError, match="extra"):
        TorchBackend(preset="tiny", colour="blue")
    with pytest.raises(ModelLoadError, match="preset='huge' is not known"):
        TorchBackend(preset="huge", warmup=False)


def test_engine_options_reports_and_limits(backend: TorchBackend) -> None:
    from moe.errors import InputTooLongError

    ranges = backend.supported_ranges()
    assert ranges.tiers == ("low", "medium", "high") and ranges.disabled == ()  # 2,560 tokens hold 15 crops
    stats = backend.stats()["engine"]
    assert stats["mode"] == "eager" and stats["kv_cache_mib"] > 0
    with pytest.raises(InputTooLongError, match=r"prompt_tokens=\d+ exceeds the limit of 2560"):
        backend.check_request(Knobs("high", 4, 12), ModelRequest("x" * 2000, image_b64="aGk="))
    with pytest.raises(InputTooLongError, match=r"max_new_tokens=600 exceeds the limit of 512"):
        backend.check_request(Knobs("low", 4, 12), ModelRequest("hi", 600))
    backend.check_request(Knobs("low", 4, 12), ModelRequest("hi", 512))


def test_small_prompt_shape_drops_tiers_that_cannot_fit() -> None:
    small = TorchBackend(preset="tiny", max_prompt_tokens=1024, max_new_tokens=8, warmup=False)
    assert small.supported_ranges().tiers == ("low",)  # medium: up to 8 crops, 1,296 tokens


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"engine": "fast"}, "engine"),
        ({"decode_buckets": [4, 2]}, "decode_buckets"),
        ({"decode_buckets": []}, "decode_buckets"),
        ({"prefill_step": 4096}, "prefill_step=4096 exceeds"),
        ({"max_prompt_tokens": 0}, "max_prompt_tokens"),
        ({"decode_slots": 0}, "decode_slots"),
        ({"decode_slots": 5}, "decode_slots"),
        ({"decode_slots": "two"}, "decode_slots"),
    ],
)
def test_engine_options_are_checked(options: dict, pattern: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=pattern):
        TorchBackend(preset="tiny", warmup=False, **options)


def test_supported_ranges_match_what_validate_knobs_accepts(backend: TorchBackend) -> None:
    ranges = backend.supported_ranges()
    assert ranges.top_k == (1, 16) and ranges.num_active_blocks[1] == 16
    for k in (Knobs("low", 16, 16), Knobs("high", 1, ranges.num_active_blocks[0])):
        ranges.check(k)
        backend.validate_knobs(k)
    for k in (Knobs("low", 17, 16), Knobs("low", 8, 17)):
        with pytest.raises(KnobError):
            ranges.check(k)


def test_streamed_members_get_new_text_per_step_and_stop_when_told(backend: TorchBackend) -> None:
    knobs, req = Knobs("low", 4, 12), ModelRequest("stream me", 6)
    pieces: list[str] = []
    (out,) = backend.generate_batch(knobs, [req], [lambda text: (pieces.append(text) if text else None) or True])
    (whole,) = backend.generate_batch(knobs, [req])
    assert out.text == whole.text and out.output_tokens == whole.output_tokens
    assert "".join(pieces) == out.text  # new text only ("" only asks whether the reader is there)
    # Random weights and the byte-level codec: every token is text, so the first piece is the first
    # token (a stream whose tokens decoded to nothing sent its first text at its end).
    assert len(pieces) == out.output_tokens
    assert out.prompt_tokens > 0 and out.finish_reason in ("length", "stop")
    seen: list[str] = []

    def two_then_stop(text: str) -> bool:
        seen.append(text)
        return len(seen) < 2  # the reader leaves at its second call, text or not

    # A streamed member and a whole one in one call: the whole one runs to its own length.
    other = ModelRequest("not streamed", 5)
    stopped, kept = backend.generate_batch(knobs, [ModelRequest("stream me", 50), other], [two_then_stop, None])
    assert stopped.finish_reason == "cancelled" and len(seen) == 2
    assert kept.output_tokens == backend.generate_batch(knobs, [other])[0].output_tokens


def test_text_stream_decodes_incrementally_and_holds_split_characters() -> None:
    from serving.replica.backends.text_stream import TextStream

    table = {1: b"caf", 2: b"\xc3", 3: b"\xa9", 4: b" ok"}
    calls: list[int] = []

    def decode(ids: list[int]) -> str:
        calls.append(len(ids))
        return b"".join(table[i] for i in ids).decode("utf-8", errors="replace")

    s = TextStream(decode, eos_token_id=9)
    assert [s.push([i]) for i in (1, 2, 3, 4)] == ["caf", "", "\u00e9", " ok"]
    assert s.push([9, 4]) == "" and s.ended and s.text == "caf\u00e9 ok"
    assert max(calls) <= 3  # a short window per step, never the whole answer


def test_a_newcomer_joins_a_running_decode_batch_between_two_steps(backend: TorchBackend) -> None:
    """Continuous batching on the engine: a request of the same knob pair (another tier) joins a
    long-running batch, decodes beside it, and its tokens are the ones it gets alone."""
    knobs = Knobs("low", 4, 12)
    session = backend.open_session(knobs)
    try:
        (long_row,) = session.join(knobs, [ModelRequest("a long one", 40)], [None]) or [None]
        for _ in range(5):
            session.step()
        other = Knobs("medium", 4, 12)
        rows = session.join(other, [ModelRequest("a short one", 4)], [None])
        assert rows is not None and rows[0] != long_row
        assert session.join(Knobs("low", 8, 16), [ModelRequest("x", 2)], [None]) is None  # another pair waits
        done = {}
        while session.active:
            session.step()
            done.update(session.finished())
        short = done[rows[0]]
        assert short.output_tokens == 4 and done[long_row].output_tokens == 40
        (alone,) = backend.generate_batch(other, [ModelRequest("a short one", 4)])
        assert short.text == alone.text  # joining mid-batch changes nothing in its answer
    finally:
        session.close()


def test_two_decode_slots_run_a_second_pair_beside_a_running_stream_through_the_device() -> None:
    """decode_slots=2 on the real engine, driven by the device thread: a request of another pair
    starts while a long stream decodes (the stream's reader keeps getting text), and both answers
    are the ones they get alone."""
    import asyncio

    from serving.replica.device import Device

    two = TorchBackend(preset="tiny", max_batch_size=2, decode_slots=2, max_new_tokens=64, warmup=False)
    assert two.max_sessions == 2
    stream, short = Knobs("low", 4, 12), Knobs("medium", 8, 16)
    pieces: list[str] = []

    async def run() -> tuple[str, str, int]:
        device = Device(two)
        long = device.submit(stream, [ModelRequest("a long stream", 60)], [lambda s: pieces.append(s) or True])
        while not pieces:
            await asyncio.sleep(0.005)
        (other,), _ = await device.submit(short, [ModelRequest("a short one", 3)], [None])
        seen = len(pieces)
        (whole,), _ = await long
        device.stop()
        return whole.text, other.text, seen

    long_text, short_text, seen = asyncio.run(run())
    assert seen < 60, seen  # the short answer ended while the stream was still decoding
    (alone_long,) = two.generate_batch(stream, [ModelRequest("a long stream", 60)])
    (alone_short,) = two.generate_batch(short, [ModelRequest("a short one", 3)])
    assert long_text == alone_long.text and short_text == alone_short.text


def test_a_capture_gets_the_engine_while_traffic_keeps_a_batch_alive() -> None:
    """Newcomers keep joining the running batch, so it never drains on its own and the engine's
    lock is never free; a preparation (a newly published table's pair) announces itself, the device
    stops joining until the batch drains, the preparation runs, and the traffic goes on."""
    import asyncio
    import threading
    import time

    from serving.replica.device import Device

    backend = TorchBackend(preset="tiny", max_batch_size=4, max_new_tokens=64, warmup=False)
    knobs, new = Knobs("low", 4, 12), Knobs("low", 8, 16)
    backend.prepare([knobs])
    prepared_after: list[float] = []

    async def run() -> list[int]:
        device = Device(backend)
        started = time.monotonic()

        def prepare() -> None:
            backend.prepare([new])
            prepared_after.append(time.monotonic() - started)

        futures = []
        for i in range(40):  # a join every 25 ms, 12 tokens each: the batch never empties on its own
            futures.append(device.submit(knobs, [ModelRequest(f"request {i}", 12)], [None]))
            if i == 8:
                threading.Thread(target=prepare, daemon=True).start()
            await asyncio.sleep(0.025)
        outs = [await f for f in futures]
        device.stop()
        return [o[0][0].output_tokens for o in outs]

    tokens = asyncio.run(run())
    assert prepared_after and prepared_after[0] < 5.0, prepared_after  # it did not wait for the traffic
    assert backend.engine.is_ready(new)
    assert tokens == [12] * 40  # every request was answered, before and after the capture
