"""A small cache keyed by the identity of an immutable object (plus any hashable extras), for
figures derived from objects that are handed around unchanged, such as a table version's ladder or
a dispatch plan. It holds a strong reference to each key object, so an id is never reused while
its entry lives, and it is cleared when full, so it stays bounded."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class IdentityCache(Generic[V]):
    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._entries: dict[tuple[Hashable, ...], tuple[object, V]] = {}

    def get(self, obj: object, *extra: Hashable) -> V | None:
        """The value stored for this very object (and extras), or None."""
        hit = self._entries.get((id(obj), *extra))
        return hit[1] if hit is not None and hit[0] is obj else None

    def put(self, obj: object, *extra: Hashable, value: V) -> V:
        if len(self._entries) >= self.size:
            self._entries.clear()
        key = (id(obj), *extra)
        self._entries[key] = (obj, value)
        return value
