"""The byte-level stand-in codec of random-weight presets."""

from __future__ import annotations

from moe.tokenizer import ByteCodec, make_codec
from serving.replica.backends.text_stream import TextStream


def test_text_round_trips_through_bytes() -> None:
    codec = ByteCodec(vocab_size=50_000, eos_token_id=1)
    text = "café, naïve — 数字"
    assert codec.decode(codec.encode(text)) == text


def test_ids_past_the_byte_range_are_text_and_special_ids_are_not() -> None:
    codec = ByteCodec(vocab_size=50_000, eos_token_id=1)
    assert codec.decode([0, 1, 2]) == ""  # special ids, as skip_special_tokens
    pieces = [codec.decode([i]) for i in (259, 1000, 49_999)]
    assert all(len(p) == 1 and p.isalpha() for p in pieces)
    assert codec.decode([259, 3 + ord("x"), 1000]) == pieces[0] + "x" + pieces[1]


def test_every_token_a_random_weight_model_samples_streams_text_at_once() -> None:
    # A stream's first token must be text: if word-piece ids decoded to nothing, a random-weight
    # model's stream would carry its first text only at its end (what the H100 run at b7d541c saw).
    codec = ByteCodec(vocab_size=50_000, eos_token_id=1)
    stream = TextStream(codec.decode, codec.eos_token_id)
    assert [stream.push([i]) != "" for i in (4_321, 17_000, 260, 42_424)] == [True] * 4


def test_make_codec_falls_back_to_bytes_without_tokenizer_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert isinstance(make_codec(str(tmp_path), 1000, None), ByteCodec)
    assert isinstance(make_codec(None, 1000, None), ByteCodec)
