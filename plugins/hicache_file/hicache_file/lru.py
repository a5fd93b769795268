"""The LRU index of one namespace's page files, with the size bound.

Not thread-safe by itself: the store holds its lock around every call. The index is rebuilt
from the directory when a store opens (oldest modification time first), and a hit refreshes
the file's mtime, so recency survives restarts.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable


class PageIndex:
    """File name -> file bytes, least recently used first."""

    def __init__(self, max_bytes: int | None = None, max_pages: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.max_pages = max_pages
        self._entries: OrderedDict[str, int] = OrderedDict()
        self.total_bytes = 0

    @property
    def bounded(self) -> bool:
        return self.max_bytes is not None or self.max_pages is not None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def load(self, entries: Iterable[tuple[int, str, int]]) -> None:
        """Fill from ``(mtime_ns, name, nbytes)`` triples in any order."""
        for _mtime, name, nbytes in sorted(entries):
            self.put(name, nbytes)

    def put(self, name: str, nbytes: int) -> None:
        """Record ``name`` as the most recently used page (replacing an older size)."""
        old = self._entries.pop(name, None)
        if old is not None:
            self.total_bytes -= old
        self._entries[name] = nbytes
        self.total_bytes += nbytes

    def touch(self, name: str) -> None:
        if name in self._entries:
            self._entries.move_to_end(name)

    def remove(self, name: str) -> None:
        nbytes = self._entries.pop(name, None)
        if nbytes is not None:
            self.total_bytes -= nbytes

    def clear(self) -> None:
        self._entries.clear()
        self.total_bytes = 0

    def fits(self, nbytes: int) -> bool:
        """Whether one page of ``nbytes`` can be kept at all under the bound."""
        return (self.max_bytes is None or nbytes <= self.max_bytes) and (
            self.max_pages is None or self.max_pages >= 1
        )

    def victims(self) -> list[str]:
        """Pop and return the least recently used names until the index is within bounds."""
        out: list[str] = []
        while self._entries and (
            (self.max_bytes is not None and self.total_bytes > self.max_bytes)
            or (self.max_pages is not None and len(self._entries) > self.max_pages)
        ):
            name, nbytes = self._entries.popitem(last=False)
            self.total_bytes -= nbytes
            out.append(name)
        return out

    def names(self) -> list[str]:
        return list(self._entries)
