"""serving.identity_cache: keyed by the very object (and extras), bounded."""

from __future__ import annotations

from serving.identity_cache import IdentityCache


def test_an_equal_object_is_another_key_and_the_cache_stays_bounded() -> None:
    cache: IdentityCache[str] = IdentityCache(size=2)
    a, twin = (1, 2), tuple([1, 2])
    assert cache.put(a, 3, value="a3") == "a3"
    assert cache.get(a, 3) == "a3" and cache.get(a, 4) is None
    assert twin == a and twin is not a and cache.get(twin, 3) is None
    cache.put(a, 4, value="a4")
    cache.put(twin, 3, value="t3")  # full: cleared first
    assert cache.get(a, 3) is None and cache.get(twin, 3) == "t3"
