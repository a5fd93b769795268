"""The in-memory index of one namespace: key hash -> where its page record lies, and the
segments with their sizes and recency. Pure bookkeeping, no I/O; not thread-safe (the
namespace's lock is held around every call).

Each entry is one Python int packing the segment's slot, the page length, the record offset
and a "checked" bit, so a stored page costs a dict slot, its 128-bit key and that int (the
benchmark prints the measured bytes per page).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable

from hicache_file.segment.format import HEADER_SIZE

_OFFSET_BITS = 47
_OFFSET_MASK = (1 << _OFFSET_BITS) - 1
CHECKED = 1 << _OFFSET_BITS
_LENGTH_SHIFT = 48
_LENGTH_MASK = (1 << 48) - 1
_SLOT_SHIFT = 96


class Segment:
    """One segment file as this process knows it."""

    __slots__ = (
        "alloc",
        "doomed",
        "end",
        "fd",
        "id",
        "keys",
        "last_used",
        "live",
        "owned",
        "slot",
        "touched",
        "users",
    )

    def __init__(self, seg_id: int, slot: int, last_used: float) -> None:
        self.id = seg_id
        self.slot = slot
        #: Bytes up to the end of the last journaled record (what the size bound counts).
        self.end = 0
        #: Bytes handed out to writers of this process (own active segment only).
        self.alloc = 0
        #: Key hashes journaled into this segment, to forget them when it is dropped.
        self.keys: list[int] = []
        #: Pages whose newest record lies in this segment.
        self.live = 0
        self.last_used = last_used
        self.touched = 0.0
        self.fd = -1
        self.users = 0
        self.doomed = False
        #: Created by this process (only the creator ever appends to a segment).
        self.owned = False

    @property
    def name(self) -> str:
        return f"{self.id:016x}.seg"


def pack(slot: int, length: int, offset: int, checked: bool) -> int:
    return (slot << _SLOT_SHIFT) | (length << _LENGTH_SHIFT) | offset | (CHECKED if checked else 0)


def unpack(loc: int) -> tuple[int, int, int, bool]:
    """``(slot, length, offset, checked)`` of a packed entry."""
    return loc >> _SLOT_SHIFT, (loc >> _LENGTH_SHIFT) & _LENGTH_MASK, loc & _OFFSET_MASK, bool(loc & CHECKED)


class SegmentIndex:
    """Key hashes to packed locations, and the segments they lie in."""

    def __init__(self) -> None:
        self.entries: dict[int, int] = {}
        self.by_slot: dict[int, Segment] = {}
        self.by_id: dict[int, Segment] = {}
        #: Segments dropped since the journal last started over (a put into one is ignored).
        self.dropped: set[int] = set()
        self.total_bytes = 0
        self._slots = itertools.count()

    def __len__(self) -> int:
        return len(self.entries)

    # ------------------------------------------------------------------ segments
    def segment(self, seg_id: int, now: float) -> Segment | None:
        """The segment ``seg_id``, registered if new; None when it was dropped."""
        seg = self.by_id.get(seg_id)
        if seg is None:
            if seg_id in self.dropped:
                return None
            seg = Segment(seg_id, next(self._slots), now)
            self.by_id[seg_id] = seg
            self.by_slot[seg.slot] = seg
        return seg

    def drop(self, seg_id: int) -> Segment | None:
        """Forget segment ``seg_id`` and every page whose newest record lies in it."""
        self.dropped.add(seg_id)
        seg = self.by_id.pop(seg_id, None)
        if seg is None:
            return None
        del self.by_slot[seg.slot]
        entries = self.entries
        for key in seg.keys:
            loc = entries.get(key)
            if loc is not None and loc >> _SLOT_SHIFT == seg.slot:
                del entries[key]
        seg.keys = []
        seg.live = 0
        self.total_bytes -= seg.end
        return seg

    def clear(self) -> list[Segment]:
        """Forget everything; returns the segments that were known."""
        segs = list(self.by_id.values())
        for seg in segs:
            self.dropped.add(seg.id)
            seg.keys = []
            seg.live = 0
        self.entries.clear()
        self.by_id.clear()
        self.by_slot.clear()
        self.total_bytes = 0
        return segs

    def restart(self) -> dict[int, Segment]:
        """Start over for a journal read from its beginning; returns the old segments by id
        (their open files and recency are reused for the ones the journal still names)."""
        old = dict(self.by_id)
        for seg in old.values():
            seg.keys = []
            seg.end = 0
            seg.live = 0
        self.entries.clear()
        self.by_id.clear()
        self.by_slot.clear()
        self.dropped.clear()
        self.total_bytes = 0
        return old

    def adopt(self, seg: Segment) -> None:
        """Register a segment object carried over from before a restart (or newly created)."""
        self.by_id[seg.id] = seg
        self.by_slot[seg.slot] = seg

    def new_slot(self) -> int:
        return next(self._slots)

    # ------------------------------------------------------------------ pages
    def put(self, key: int, seg: Segment, offset: int, length: int, now: float, checked: bool) -> None:
        seg.keys.append(key)
        end = offset + HEADER_SIZE + length
        if end > seg.end:
            self.total_bytes += end - seg.end
            seg.end = end
        if now > seg.last_used:
            seg.last_used = now
        self._unlive(self.entries.get(key))
        seg.live += 1
        self.entries[key] = pack(seg.slot, length, offset, checked)

    def delete(self, key: int) -> None:
        self._unlive(self.entries.pop(key, None))

    def _unlive(self, loc: int | None) -> None:
        if loc is not None:
            old = self.by_slot.get(loc >> _SLOT_SHIFT)
            if old is not None:
                old.live -= 1

    def locate(self, key: int) -> tuple[Segment, int, int, bool] | None:
        """``(segment, length, offset, checked)`` of ``key``'s page, or None."""
        loc = self.entries.get(key)
        if loc is None:
            return None
        seg = self.by_slot.get(loc >> _SLOT_SHIFT)
        if seg is None:
            return None
        return seg, (loc >> _LENGTH_SHIFT) & _LENGTH_MASK, loc & _OFFSET_MASK, bool(loc & CHECKED)

    def mark_checked(self, key: int) -> None:
        loc = self.entries.get(key)
        if loc is not None:
            self.entries[key] = loc | CHECKED

    def forget_if_at(self, key: int, seg: Segment, offset: int) -> None:
        """Drop ``key`` from this process's view when its entry still points at that record."""
        loc = self.entries.get(key)
        if loc is not None and loc >> _SLOT_SHIFT == seg.slot and loc & _OFFSET_MASK == offset:
            del self.entries[key]
            seg.live -= 1

    def live_records(self) -> Iterable[tuple[int, Segment, int, int]]:
        """``(key, segment, offset, length)`` of every page."""
        for key, loc in self.entries.items():
            seg = self.by_slot.get(loc >> _SLOT_SHIFT)
            if seg is not None:
                yield key, seg, loc & _OFFSET_MASK, (loc >> _LENGTH_SHIFT) & _LENGTH_MASK

    # ------------------------------------------------------------------ size bound
    def over(self, max_bytes: int | None, max_pages: int | None) -> bool:
        return (max_bytes is not None and self.total_bytes > max_bytes) or (
            max_pages is not None and len(self.entries) > max_pages
        )

    def victims(
        self, max_bytes: int | None, max_pages: int | None, recency: Callable[[Segment], float],
    ) -> list[Segment]:
        """Least recently used segments to drop until the bounds hold.

        ``recency(seg)`` is asked for the candidate about to be chosen and may report a later
        use than this process knows (another process read from it): the candidate then goes
        back in line. Segments are not removed here; the caller drops the ones returned.
        """
        heap = [(seg.last_used, seg.slot, seg) for seg in self.by_id.values()]
        heapq.heapify(heap)
        out: list[Segment] = []
        bytes_left, pages_left = self.total_bytes, len(self.entries)
        while heap and (
            (max_bytes is not None and bytes_left > max_bytes) or (max_pages is not None and pages_left > max_pages)
        ):
            last, slot, seg = heapq.heappop(heap)
            seen = recency(seg)
            if seen > last + 0.5:
                seg.last_used = seen
                heapq.heappush(heap, (seen, slot, seg))
                continue
            out.append(seg)
            bytes_left -= seg.end
            pages_left -= seg.live
        return out
