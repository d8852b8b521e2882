"""A bounded memo for values the runtime computes again on a miss: at most so many entries and so
many bytes, the least recently used evicted first, with hit and miss counts for `/metrics`."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass(frozen=True)
class MemoStats:
    """Lookups so far and what a memo holds now."""

    hits: int = 0
    misses: int = 0
    entries: int = 0
    bytes: int = 0

    def __add__(self, other: MemoStats) -> MemoStats:
        return MemoStats(
            self.hits + other.hits,
            self.misses + other.misses,
            self.entries + other.entries,
            self.bytes + other.bytes,
        )


class Memo(Generic[V]):
    """At most `max_entries` entries of at most `max_bytes` bytes together (each entry's size as
    its writer counts it); a put beyond either evicts the least recently used entries. Readers
    take no lock; a lost or evicted entry only costs recomputing it. Zero entries disables it."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._bytes = 0
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self.hits += 1
        try:  # noqa: SIM105 - contextlib.suppress would build an object on every hit
            self._items.move_to_end(key)
        except KeyError:  # evicted by another thread meanwhile
            pass
        return item[0]

    def put(self, key: Hashable, value: V, size: int) -> None:
        if self.max_entries == 0 or size > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            items = self._items
            while items and (len(items) >= self.max_entries or self._bytes + size > self.max_bytes):
                self._bytes -= items.popitem(last=False)[1][1]
            items[key] = (value, size)
            self._bytes += size

    def stats(self) -> MemoStats:
        return MemoStats(self.hits, self.misses, len(self._items), self._bytes)
