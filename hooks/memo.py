"""Bounded memo dictionaries for per-process caches that charts hit again and again
(classification verdicts, validation verdicts): emptied when full, so a hit costs one
dict lookup with no LRU bookkeeping."""
from __future__ import annotations

from typing import Any, TypeVar

V = TypeVar("V")


def remember(cache: dict[Any, V], key: Any, value: V, limit: int) -> V:
    """Store ``value`` under ``key``, emptying the cache first when it holds ``limit`` entries."""
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value
    return value
