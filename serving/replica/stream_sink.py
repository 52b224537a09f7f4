"""A streamed request's mailbox between the backend's thread and the replica's event loop.

The backend hands in new text per step (`send`, on its thread, never blocking); the replica's
stream generator takes whatever has gathered (`take`). A slow reader therefore never holds the
model: pieces coalesce here into one string, bounded by the answer itself (max_new_tokens), and
the loop is woken once per gap, not once per token.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any


class StreamSink:
    def __init__(self, loop: asyncio.AbstractEventLoop, arrived: float) -> None:
        self._loop = loop
        self.arrived = arrived  # monotonic seconds: the request's arrival at the replica
        self._lock = threading.Lock()
        self._parts: list[str] = []
        self._ready = asyncio.Event()
        self._first_at: float | None = None
        self.closed = False

    def send(self, text: str) -> bool:
        """New text from the backend (its thread); "" only asks. False once the reader has gone:
        stop this member."""
        with self._lock:
            if self.closed:
                return False
            if not text:
                return True
            if self._first_at is None:
                self._first_at = time.monotonic()
            wake = not self._parts
            self._parts.append(text)
        if wake:
            self._loop.call_soon_threadsafe(self._ready.set)
        return True

    def wake(self, _: Any = None) -> None:
        """The request's task ended (on the loop): let `take` see it."""
        self._ready.set()

    async def take(self, task: asyncio.Future[Any]) -> str:
        """The text gathered since the last take; waits for some. "" once `task` is done and
        nothing is left."""
        while True:
            with self._lock:
                if self._parts:
                    text = "".join(self._parts)
                    self._parts.clear()
                    return text
            if task.done():
                return ""
            await self._ready.wait()
            self._ready.clear()

    def first_ms(self) -> float | None:
        """Arrival to the first text, in ms (the replica's first token); None before it."""
        return None if self._first_at is None else (self._first_at - self.arrived) * 1000

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._parts.clear()
