"""``PageIndex``: which page slot of one rank file holds which key. Not thread-safe by itself.

The life of a slot: free -> *being written* (allocated to one writer, with a lease) -> *ready*
(confirmed after the write completed; visible to ``exists`` and ``lookup``) -> free again
(deleted, evicted, or the write failed / its lease ran out).

Guarantees, and how they are kept:

- A reader never gets a slot that is still being written: only ready slots are looked up.
- A slot is never reused under a reader without the reader noticing: every allocation takes
  a new *generation* number from one counter that only grows (it survives restarts through
  the saved state). ``lookup`` hands out ``(key, slot, generation)``; after reading, the
  reader calls ``validate``, which holds only if the key still maps to that slot with that
  generation, i.e. nobody was allocated the slot in between. Nothing is held while reading,
  so a reader that dies leaves nothing behind.
- Two writers of one key each get their own slot; the first to confirm wins and the other
  slot is freed, so a stored page is always one whole write.
- Eviction is LRU over *leaves* of the page chains: a page is evictable only while no stored
  page names it as its prefix neighbour, so chains shrink from their tail and every stored
  page stays reachable by a prefix match.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

NEW, EXISTS, FULL = "new", "exists", "full"


@dataclass(frozen=True)
class SlotRef:
    """A key's slot and the generation it was allocated in."""

    key: str
    slot: int
    gen: int

    def to_list(self) -> list[Any]:
        return [self.key, self.slot, self.gen]

    @classmethod
    def from_list(cls, raw: Sequence[Any]) -> SlotRef:
        return cls(str(raw[0]), int(raw[1]), int(raw[2]))


@dataclass(frozen=True)
class Allocation:
    """The answer to ``allocate`` for one key: write to ``slot`` when ``status`` is ``new``."""

    status: str  # NEW, EXISTS (already stored: skip the write) or FULL (no slot free)
    slot: int = -1
    gen: int = 0

    def to_list(self) -> list[Any]:
        return [self.status, self.slot, self.gen]

    @classmethod
    def from_list(cls, raw: Sequence[Any]) -> Allocation:
        return cls(str(raw[0]), int(raw[1]), int(raw[2]))


@dataclass
class _Ready:
    key: str
    slot: int
    gen: int
    parent: str | None
    tick: int = 0
    children: set[str] = field(default_factory=set)


@dataclass
class _Writing:
    key: str
    gen: int
    parent: str | None
    deadline: float
    #: Cleared while in flight: the confirm will fail, but the slot stays reserved until then,
    #: because the writer's bytes may still be landing in it.
    cancelled: bool = False


class PageIndex:
    """Slots of one rank file; see the module docstring for the rules."""

    def __init__(
        self, num_pages: int, page_bytes: int, write_lease_seconds: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if num_pages <= 0:
            raise ValueError(f"the rank file holds no page: num_pages={num_pages}")
        self.num_pages = num_pages
        self.page_bytes = page_bytes
        self.write_lease_seconds = write_lease_seconds
        self._clock = clock
        self._ready: dict[str, _Ready] = {}
        self._writing: dict[int, _Writing] = {}
        self._free: list[int] = []
        self._fresh = 0  # slots [fresh, num_pages) were never handed out
        self._gen = 0
        self._tick = 0
        self._heap: list[tuple[int, str]] = []  # (tick, key): LRU candidates, checked lazily
        self.evictions = 0
        self.reclaimed = 0
        #: Keys removed (deleted, evicted) since last drained, when an owner journals them.
        self.removed: list[str] | None = None

    # ------------------------------------------------------------------ slots
    def _take_slot(self) -> int | None:
        if self._free:
            return self._free.pop()
        while self._fresh < self.num_pages:
            self._fresh += 1
            if self._fresh - 1 not in self._writing:  # after clear(), writes in flight keep theirs
                return self._fresh - 1
        if self._reclaim_expired():
            return self._free.pop()
        if self._evict_one():
            return self._free.pop()
        return None

    def _reclaim_expired(self) -> bool:
        now = self._clock()
        expired = [slot for slot, w in self._writing.items() if w.deadline < now]
        for slot in expired:
            del self._writing[slot]
            self._free.append(slot)
        self.reclaimed += len(expired)
        return bool(expired)

    def _evict_one(self) -> bool:
        while self._heap:
            tick, key = heapq.heappop(self._heap)
            entry = self._ready.get(key)
            # Stale heap entries (touched since, or no longer a leaf) are skipped; a page that
            # becomes a leaf later is pushed again then.
            if entry is not None and entry.tick == tick and not entry.children:
                self._remove(key)
                self.evictions += 1
                return True
        return False

    # ------------------------------------------------------------------ LRU
    def _touch(self, entry: _Ready) -> None:
        self._tick += 1
        entry.tick = self._tick
        heapq.heappush(self._heap, (entry.tick, entry.key))
        if len(self._heap) > 4 * len(self._ready) + 1024:
            self._heap = [(e.tick, e.key) for e in self._ready.values() if not e.children]
            heapq.heapify(self._heap)

    def _remove(self, key: str) -> None:
        entry = self._ready.pop(key)
        if self.removed is not None:
            self.removed.append(key)
        self._free.append(entry.slot)
        if entry.parent is not None:
            parent = self._ready.get(entry.parent)
            if parent is not None:
                parent.children.discard(key)
                if not parent.children:
                    heapq.heappush(self._heap, (parent.tick, parent.key))
        for child in entry.children:
            if child in self._ready:
                self._ready[child].parent = None

    # ------------------------------------------------------------------ operations
    def allocate(self, keys: Sequence[str], parents: Sequence[str | None]) -> list[Allocation]:
        """A slot to write for each key not stored yet; the keys' prefix pages are touched."""
        out: list[Allocation] = []
        now = self._clock()
        for key, parent in zip(keys, parents):
            if parent is not None and parent in self._ready:
                self._touch(self._ready[parent])  # the chain being extended is in use
            ready = self._ready.get(key)
            if ready is not None:
                self._touch(ready)
                out.append(Allocation(EXISTS, ready.slot, ready.gen))
                continue
            slot = self._take_slot()
            if slot is None:
                out.append(Allocation(FULL))
                continue
            self._gen += 1
            self._writing[slot] = _Writing(key, self._gen, parent, now + self.write_lease_seconds)
            out.append(Allocation(NEW, slot, self._gen))
        return out

    def confirm(self, written: Sequence[SlotRef], aborted: Sequence[SlotRef] = ()) -> list[bool]:
        """Make written pages visible; free the slots of failed writes. One bool per written."""
        for ref in aborted:
            w = self._writing.get(ref.slot)
            if w is not None and w.gen == ref.gen and w.key == ref.key:
                del self._writing[ref.slot]
                self._free.append(ref.slot)
        out: list[bool] = []
        for ref in written:
            w = self._writing.get(ref.slot)
            if w is None or w.gen != ref.gen or w.key != ref.key:
                out.append(False)  # the lease ran out and the slot went to someone else
                continue
            del self._writing[ref.slot]
            if w.cancelled:
                self._free.append(ref.slot)  # cleared while being written: never visible
                out.append(False)
                continue
            existing = self._ready.get(ref.key)
            if existing is not None:
                # Another writer of the same key confirmed first; its page is whole.
                self._free.append(ref.slot)
                self._touch(existing)
                out.append(True)
                continue
            parent = w.parent if w.parent is not None and w.parent in self._ready else None
            entry = _Ready(ref.key, ref.slot, ref.gen, parent)
            self._ready[ref.key] = entry
            if parent is not None:
                self._ready[parent].children.add(ref.key)
            self._touch(entry)
            out.append(True)
        return out

    def lookup(self, keys: Sequence[str]) -> list[SlotRef | None]:
        """Where each ready key is (touching it), or None."""
        out: list[SlotRef | None] = []
        for key in keys:
            entry = self._ready.get(key)
            if entry is None:
                out.append(None)
            else:
                self._touch(entry)
                out.append(SlotRef(key, entry.slot, entry.gen))
        return out

    def validate(self, refs: Sequence[SlotRef]) -> list[bool]:
        """True for each ref whose slot was not reallocated since ``lookup`` handed it out."""
        out = []
        for ref in refs:
            entry = self._ready.get(ref.key)
            out.append(entry is not None and entry.slot == ref.slot and entry.gen == ref.gen)
        return out

    def exists(self, keys: Sequence[str]) -> list[bool]:
        return [k in self._ready for k in keys]

    def delete(self, keys: Sequence[str]) -> int:
        n = 0
        for key in keys:
            if key in self._ready:
                self._remove(key)
                n += 1
        return n

    def clear(self) -> None:
        """Forget every page. Writes in flight keep their slots reserved, but their confirm fails."""
        self._ready.clear()
        for w in self._writing.values():
            w.cancelled = True
        self._heap.clear()
        self._free.clear()
        self._fresh = 0

    def ready_ref(self, key: str) -> tuple[int, int, str | None] | None:
        """``(slot, generation, parent)`` of a visible page, or None."""
        entry = self._ready.get(key)
        return (entry.slot, entry.gen, entry.parent) if entry is not None else None

    def parent_of(self, key: str) -> str | None:
        entry = self._ready.get(key)
        return entry.parent if entry is not None else None

    def stats(self) -> dict[str, Any]:
        return {
            "num_pages": self.num_pages,
            "page_bytes": self.page_bytes,
            "ready_pages": len(self._ready),
            "writing_pages": len(self._writing),
            "free_pages": self.num_pages - len(self._ready) - len(self._writing),
            "evictions": self.evictions,
            "reclaimed_write_leases": self.reclaimed,
        }

    # ------------------------------------------------------------------ persistence
    def to_state(self) -> dict[str, Any]:
        """The ready pages and counters, to rebuild the index after a restart."""
        entries = sorted(self._ready.values(), key=lambda e: e.tick)
        return {
            "num_pages": self.num_pages,
            "page_bytes": self.page_bytes,
            "generation": self._gen,
            "entries": [[e.key, e.slot, e.gen, e.parent] for e in entries],
        }

    @classmethod
    def from_state(
        cls, state: dict[str, Any], write_lease_seconds: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> PageIndex:
        index = cls(int(state["num_pages"]), int(state["page_bytes"]), write_lease_seconds, clock)
        index._gen = int(state.get("generation", 0))
        used: set[int] = set()
        for key, slot, gen, parent in state.get("entries", []):
            slot = int(slot)
            if not 0 <= slot < index.num_pages or slot in used:
                continue
            used.add(slot)
            index._ready[str(key)] = _Ready(str(key), slot, int(gen), parent)
            index._gen = max(index._gen, int(gen))
        for entry in index._ready.values():
            if entry.parent is not None and entry.parent in index._ready:
                index._ready[entry.parent].children.add(entry.key)
            else:
                entry.parent = None
        # Entries were saved oldest first, so touching in that order restores the LRU order.
        for key, *_ in state.get("entries", []):
            if str(key) in index._ready:
                index._touch(index._ready[str(key)])
        index._fresh = max(used) + 1 if used else 0
        index._free = [s for s in range(index._fresh - 1, -1, -1) if s not in used]
        return index
