"""A dependency-free progress bar on stderr, drawn only when asked or when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def progress_enabled(progress: bool | None, stream: TextIO | None = None) -> bool:
    """`None` means auto: draw only when the stream is a terminal."""
    if progress is not None:
        return progress
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class ProgressBar:
    """`[#####.....] 12/39 files  label`, redrawn at most every `min_interval_s`."""

    def __init__(
        self,
        total: int,
        label: str = "",
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        width: int = 30,
        min_interval_s: float = 0.1,
    ) -> None:
        self.total, self.label, self.enabled = max(total, 0), label, enabled
        self.stream = sys.stderr if stream is None else stream
        self.width, self.min_interval_s = width, min_interval_s
        self.done = 0
        self._last_draw = float("-inf")
        self._drawn = False

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last_draw >= self.min_interval_s or self.done >= self.total:
            self._draw(note)
            self._last_draw = now

    def render(self, note: str = "") -> str:
        frac = 1.0 if self.total == 0 else min(self.done / self.total, 1.0)
        filled = int(round(frac * self.width))
        bar = "#" * filled + "." * (self.width - filled)
        text = f"[{bar}] {self.done}/{self.total} {self.label}".rstrip()
        return f"{text}  {note}" if note else text

    def _draw(self, note: str) -> None:
        self.stream.write("\r\x1b[K" + self.render(note))
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
