"""Incremental detokenization: the new text of each decode step, without decoding the whole answer
again at every step (which costs O(n) per step, O(n^2) per answer).

A token's text can depend on its neighbours (a leading space merged by the tokenizer, a multi-byte
character split over several byte-level tokens), so each step decodes a short window: the tokens
since the last emitted boundary (`prefix`) with and without the new ones, and emits the difference.
An incomplete character decodes to U+FFFD; it is held back until the next token completes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"


class TextStream:
    def __init__(self, decode: Callable[[list[int]], str], eos_token_id: int | None = None) -> None:
        self._decode = decode
        self._eos = eos_token_id
        self._ids: list[int] = []
        self._prefix = 0  # window start: tokens before it are emitted and never decoded again
        self._read = 0  # tokens up to here are emitted
        self.text = ""  # everything emitted so far
        self.ended = False  # an end-of-sequence token came: nothing after it is text

    def push(self, new_ids: Sequence[int]) -> str:
        """Add the step's new token(s); returns the new text ("" when there is none yet)."""
        for t in new_ids:
            if self.ended:
                break
            if self._eos is not None and t == self._eos:
                self.ended = True
                break
            self._ids.append(t)
        if len(self._ids) == self._read:
            return ""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if after.endswith(REPLACEMENT) or len(after) <= len(before):
            return ""  # an incomplete character: wait for the token that completes it
        delta = after[len(before) :]
        self._prefix, self._read = self._read, len(self._ids)
        self.text += delta
        return delta
