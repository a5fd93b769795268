"""Pages at slots of one rank file: the metadata protocol around the I/O client.

Writes go: allocate a slot -> write the bytes -> confirm (only then is the page visible).
Reads go: look up (key, slot, generation) -> read -> validate (the slot was not reallocated
meanwhile). Keys here are storage keys (the page key in the pool namespace); every failure is
a per-page False and a counter, never an exception.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Sequence

from hicache_hf3fs.client import Item, PageIOClient
from hicache_hf3fs.metadata.base import MetadataUnavailable, PageMetadata
from hicache_hf3fs.metadata.index import EXISTS, FULL, NEW, SlotRef

log = logging.getLogger(__name__)

COUNTER_NAMES = (
    "read_pages", "read_hits", "read_misses", "read_io_errors", "read_stale", "bytes_read",
    "write_pages", "write_stored", "write_already_stored", "write_no_space", "write_io_errors",
    "write_lost_lease", "write_skipped_non_writer", "bytes_written", "metadata_errors",
)


class Counters:
    """Thread-safe named counters, for ``get_stats``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(COUNTER_NAMES, 0)

    def add(self, **deltas: int) -> None:
        with self._lock:
            for name, value in deltas.items():
                self._values[name] += value

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


class SlotPages:
    """Reads and writes whole pages of ``page_bytes`` at the slots the metadata hands out."""

    def __init__(self, metadata: PageMetadata, counters: Counters) -> None:
        self.metadata = metadata
        self.counters = counters

    def read(self, io: PageIOClient | None, page_bytes: int, skeys: Sequence[str],
             targets: Sequence[Item]) -> list[bool]:
        n = len(skeys)
        out = [False] * n
        if io is None or n == 0:
            return out
        pb = page_bytes
        try:
            refs = self.metadata.lookup(list(skeys))
        except MetadataUnavailable as exc:
            log.warning("%s", exc)
            self.counters.add(read_pages=n, metadata_errors=1)
            return out
        hits = [i for i, r in enumerate(refs) if r is not None]
        results = io.batch_read([refs[i].slot * pb for i in hits], [targets[i] for i in hits])  # type: ignore[union-attr]
        done = [i for i, r in zip(hits, results) if r == pb]
        io_errors = len(hits) - len(done)
        if io_errors:
            log.warning("hf3fs: %d of %d page reads failed: %s", io_errors, len(hits),
                        sorted({r for r in results if r != pb})[:4])
        try:
            valid = self.metadata.validate([refs[i] for i in done])  # type: ignore[misc]
        except MetadataUnavailable as exc:
            log.warning("%s", exc)
            self.counters.add(read_pages=n, metadata_errors=1, read_io_errors=io_errors)
            return out
        stale = 0
        for i, ok in zip(done, valid):
            out[i] = ok
            stale += not ok
        hit_count = sum(out)
        self.counters.add(
            read_pages=n, read_hits=hit_count, read_misses=n - len(hits), read_io_errors=io_errors,
            read_stale=stale, bytes_read=hit_count * pb,
        )
        return out

    def write(self, io: PageIOClient | None, page_bytes: int, skeys: Sequence[str],
              sources: Sequence[Item], parents: Sequence[str | None]) -> list[bool]:
        n = len(skeys)
        out = [False] * n
        if io is None or n == 0:
            return out
        pb = page_bytes
        try:
            allocs = self.metadata.allocate(list(skeys), list(parents))
        except MetadataUnavailable as exc:
            log.warning("%s", exc)
            self.counters.add(write_pages=n, metadata_errors=1)
            return out
        new = [i for i, a in enumerate(allocs) if a.status == NEW]
        for i, a in enumerate(allocs):
            if a.status == EXISTS:
                out[i] = True  # a whole page is stored under the key already
        results = io.batch_write([allocs[i].slot * pb for i in new], [sources[i] for i in new])
        written = [SlotRef(skeys[i], allocs[i].slot, allocs[i].gen) for i, r in zip(new, results) if r == pb]
        wrote = [i for i, r in zip(new, results) if r == pb]
        # A timed-out write may still land later: its slot stays "being written" until the
        # lease runs out instead of going back to the free list under another page's data.
        aborted = [
            SlotRef(skeys[i], allocs[i].slot, allocs[i].gen)
            for i, r in zip(new, results) if r != pb and r != -errno.ETIMEDOUT
        ]
        timed_out = sum(r == -errno.ETIMEDOUT for r in results)
        if aborted or timed_out:
            log.warning("hf3fs: %d of %d page writes failed: %s", len(aborted) + timed_out, len(new),
                        sorted({r for r in results if r != pb})[:4])
        try:
            confirmed = self.metadata.confirm(written, aborted)
        except MetadataUnavailable as exc:
            # The slots stay "being written" until their lease runs out; nothing is visible.
            log.warning("%s", exc)
            self.counters.add(write_pages=n, metadata_errors=1)
            return out
        for i, ok in zip(wrote, confirmed):
            out[i] = ok
        stored = sum(confirmed)
        self.counters.add(
            write_pages=n, write_stored=stored,
            write_already_stored=sum(a.status == EXISTS for a in allocs),
            write_no_space=sum(a.status == FULL for a in allocs), write_io_errors=len(aborted) + timed_out,
            write_lost_lease=len(confirmed) - stored, bytes_written=stored * pb,
        )
        return out
