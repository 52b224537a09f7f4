"""Text <-> token ids: the checkpoint's tokenizer when it has one, else a byte-level stand-in."""

from __future__ import annotations

import os
from typing import Protocol


class TextCodec(Protocol):
    eos_token_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteCodec:
    """UTF-8 bytes shifted past the first special ids; random-weight presets need no vocabulary.

    Ids past the byte range stand for the word pieces of a vocabulary this stand-in does not have:
    each decodes to one lowercase letter. A random-weight model samples those ids almost always
    (256 of ~50k are bytes), and if they decoded to nothing a stream would carry no text until its
    end, so its first token would read as its last one; with a real vocabulary nearly every token
    is text. The special ids below OFFSET decode to nothing, as `skip_special_tokens` does."""

    OFFSET = 3
    PIECES = "abcdefghijklmnopqrstuvwxyz"

    def __init__(self, vocab_size: int, eos_token_id: int | None) -> None:
        self.vocab_size, self.eos_token_id = vocab_size, eos_token_id

    def encode(self, text: str) -> list[int]:
        return [(b + self.OFFSET) % self.vocab_size for b in text.encode("utf-8")] or [self.OFFSET]

    def decode(self, ids: list[int]) -> str:
        raw = bytearray()
        for i in ids:
            if self.OFFSET <= i < 256 + self.OFFSET:
                raw.append(i - self.OFFSET)
            elif i >= 256 + self.OFFSET:
                raw += self.PIECES[i % len(self.PIECES)].encode()
        return raw.decode("utf-8", errors="replace")


class HFCodec:
    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.eos_token_id = self.tok.eos_token_id

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False)) or [self.tok.eos_token_id or 0]

    def decode(self, ids: list[int]) -> str:
        return str(self.tok.decode(ids, skip_special_tokens=True))


def make_codec(checkpoint: str | None, vocab_size: int, eos_token_id: int | None) -> TextCodec:
    if checkpoint and any(
        os.path.isfile(os.path.join(checkpoint, f)) for f in ("tokenizer.json", "tokenizer_config.json")
    ):
        return HFCodec(checkpoint)
    return ByteCodec(vocab_size, eos_token_id)
