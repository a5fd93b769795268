"""Which page hashes a tier holds, in LRU order, and which of them may be evicted.

A page may be evicted only when no request is using it (``refs == 0``) and no L2 -> L3 backup
of it is in flight (``backups == 0``). The index does not own memory: the L1 pool and the L2
host pool hand out the slots; the index records them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class PageEntry:
    """One cached page: where it lives and why it must stay."""

    slot: int  # L1: row of the device pool; L2: page number of the host pool
    refs: int = 0
    hits: int = 0
    backups: int = 0  # L2 -> L3 writes in flight
    stored_epoch: int = -1  # the storage attachment this page was written to / read from
    evict_when_backed_up: bool = False  # write_back: evicted, waiting for its backup


class TierIndex:
    """An LRU map from page hash to ``PageEntry``; ``capacity`` counts pages."""

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.capacity = capacity
        self._entries: OrderedDict[str, PageEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, page_hash: object) -> bool:
        return page_hash in self._entries

    def get(self, page_hash: str) -> PageEntry | None:
        return self._entries.get(page_hash)

    def items(self) -> list[tuple[str, PageEntry]]:
        """A snapshot of (hash, entry), least recently used first."""
        return list(self._entries.items())

    def add(self, page_hash: str, slot: int) -> PageEntry:
        if page_hash in self._entries:
            raise KeyError(f"{self.name}: page {page_hash[:12]} is already cached")
        entry = PageEntry(slot)
        self._entries[page_hash] = entry
        return entry

    def touch(self, page_hash: str) -> None:
        """Mark as most recently used."""
        self._entries.move_to_end(page_hash)

    def touch_chain(self, page_hashes: tuple[str, ...] | list[str]) -> None:
        """Mark a request's cached pages as used, its first page the most recent.

        A page is only reachable through the pages before it (prefix matching), so the tail of
        a chain must be evicted before its head: evicting a head first would strand the pages
        after it (SGLang's radix tree evicts leaves for the same reason).
        """
        for page_hash in reversed(page_hashes):
            if page_hash in self._entries:
                self._entries.move_to_end(page_hash)

    def remove(self, page_hash: str) -> PageEntry:
        return self._entries.pop(page_hash)

    def evictable(self, limit: int) -> list[tuple[str, PageEntry]]:
        """Up to ``limit`` pages that may be evicted, least recently used first."""
        out: list[tuple[str, PageEntry]] = []
        if limit <= 0:
            return out
        for page_hash, entry in self._entries.items():
            if entry.refs == 0 and entry.backups == 0 and not entry.evict_when_backed_up:
                out.append((page_hash, entry))
                if len(out) >= limit:
                    break
        return out

    def leading_hits(self, page_hashes: tuple[str, ...], start: int = 0) -> int:
        """How many pages from ``start`` on are cached here, consecutively."""
        end = start
        while end < len(page_hashes) and page_hashes[end] in self._entries:
            end += 1
        return end - start

    def counts(self) -> dict[str, int]:
        pinned = sum(1 for e in self._entries.values() if e.refs or e.backups or e.evict_when_backed_up)
        inflight = sum(1 for e in self._entries.values() if e.backups)
        return {"pages": len(self._entries), "capacity_pages": self.capacity,
                "pinned_pages": pinned, "backups_in_flight": inflight}
