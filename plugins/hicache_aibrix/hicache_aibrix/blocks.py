"""The two data paths between host-pool pages and AIBrix blocks, and AIBrix's existence count.

Writes go ``allocate_for`` -> copy the page into the block -> ``put`` (AIBrix takes the handle);
reads go ``acquire`` -> copy the block into the page -> ``release``, the release in a
``finally`` so no handle outlives a call. Every AIBrix status that is not OK becomes a per-page
False and a counter, never an exception. Keys here are AIBrix block keys (``store`` turns page
hashes into them, in the pool's namespace).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

from hicache_aibrix.layout import PageBlockMapper
from hicache_aibrix.stats import AIBrixCounters

#: A block-shaped byte view of one page, filled by (or read into) a copy.
PageView = Callable[[], torch.Tensor]


class KeyLocks:
    """Striped locks by key: writers of the same key in this process take turns."""

    def __init__(self, stripes: int = 64) -> None:
        self._locks = [threading.Lock() for _ in range(stripes)]

    @contextlib.contextmanager
    def hold(self, keys: list[str]) -> Iterator[None]:
        # Taken in stripe order, so two callers with overlapping keys cannot deadlock.
        stripes = sorted({hash(k) % len(self._locks) for k in keys})
        with contextlib.ExitStack() as stack:
            for i in stripes:
                stack.enter_context(self._locks[i])
            yield


class BlockIO:
    """Pages in and out of one AIBrix cache manager, a chunk of blocks at a time."""

    def __init__(self, manager: Any, mapper: PageBlockMapper, page_size: int, hashes: Callable[[list[str]], Any],
                 counters: AIBrixCounters, acquire_one_by_one: bool, key_locks: KeyLocks | None) -> None:
        self.manager = manager
        self.mapper = mapper
        self.page_size = page_size
        self.page_bytes = mapper.block_nbytes
        self.hashes = hashes
        self.counters = counters
        #: AIBrix 0.8 quirk: with a connector that reads in batches (mget), L2Cache counts the
        #: pages found and the manager takes that count as the leading run, so a gap hands back
        #: wrong blocks. Such connectors get one page per acquire, which makes the count exact.
        self.acquire_one_by_one = acquire_one_by_one
        #: AIBrix 0.8 quirk: SHFS writes a key through one fixed temporary name, so two writers
        #: of the same key collide; writers of one key are serialized in this process.
        self.key_locks = key_locks

    def chunks(self, n: int) -> Iterator[range]:
        step = max(1, self.manager.chunk_size // self.manager.block_size)
        for start in range(0, n, step):
            yield range(start, min(n, start + step))

    def store(self, keys: list[str], sources: list[PageView]) -> list[bool]:
        """Write each source page under its key; one bool per key."""
        manager, counters = self.manager, self.counters
        results = [False] * len(keys)
        for chunk in self.chunks(len(keys)):
            chunk_keys = [keys[i] for i in chunk]
            status = manager.allocate_for(None, self.hashes(chunk_keys))
            if not status.is_ok():
                counters.add(set_errors=len(chunk), last_error=f"allocate_for: {status}")
                continue
            handle = status.get()
            counters.add(handles_acquired=1)
            handed_over = False
            try:
                filled = self._fill_blocks(handle, [sources[i] for i in chunk])
                if filled < len(handle):
                    handle.truncate(filled)  # releases the blocks that hold no page
                if filled == 0:
                    continue
                handed_over = True  # put() owns the handle from here, on success and failure
                with self._hold(chunk_keys[:filled]):
                    put = manager.put(None, self.hashes(chunk_keys[:filled]), handle)
            except Exception as exc:  # an AIBrix bug must not reach the request path
                counters.add(set_errors=len(chunk), last_error=f"put: {exc!r}")
                continue
            finally:
                if not handed_over:
                    handle.release()
                counters.add(handles_released=1)
            stored = put.get() // self.page_size if put.is_ok() else 0
            for offset in range(stored):
                results[chunk[offset]] = True
            # Pages past `filled` failed their copy (recorded there); the rest is AIBrix's.
            if stored < filled:
                counters.add(set_errors=filled - stored, last_error=f"put stored {stored}/{filled}: {put}")
            counters.add(set_errors=len(chunk) - filled)
            counters.add(pages_set=stored, bytes_written=stored * self.page_bytes)
        return results

    def _hold(self, keys: list[str]) -> contextlib.AbstractContextManager[None]:
        return self.key_locks.hold(keys) if self.key_locks is not None else contextlib.nullcontext()

    def _fill_blocks(self, handle: Any, sources: list[PageView]) -> int:
        """Copy pages into the handle's blocks; how many leading blocks were filled."""
        for n, (block, source) in enumerate(zip(handle.to_tensors(), sources)):
            try:
                self.mapper.block_bytes(block).copy_(source())
            except Exception as exc:
                self.counters.add(last_error=f"copy into block: {exc!r}")
                return n
        return min(len(handle), len(sources))

    def load(self, keys: list[str], sinks: list[PageView]) -> list[bool]:
        """Read each key's page into its sink; one bool per key (False for a miss or error)."""
        manager, counters, page = self.manager, self.counters, self.page_size
        results = [False] * len(keys)
        for chunk in self.chunks(len(keys)):
            pos, end = chunk.start, chunk.stop
            step = 1 if self.acquire_one_by_one else end - pos
            # acquire() answers the leading run of hits; after a miss, go on past it.
            while pos < end:
                try:
                    status = manager.acquire(None, self.hashes(keys[pos : min(end, pos + step)]))
                except Exception as exc:
                    counters.add(get_errors=1, last_error=f"acquire: {exc!r}")
                    status = None
                hits = 0
                if status is not None and status.is_ok():
                    ntokens, handle = status.get()
                    counters.add(handles_acquired=1)
                    try:
                        for offset, block in enumerate(handle.to_tensors()[: ntokens // page]):
                            try:
                                sinks[pos + offset]().copy_(self.mapper.block_bytes(block))
                            except Exception as exc:
                                counters.add(get_errors=1, last_error=f"copy from block: {exc!r}")
                                break
                            results[pos + offset] = True
                            hits += 1
                    finally:
                        handle.release()
                        counters.add(handles_released=1)
                elif status is not None and not status.is_not_found():
                    counters.add(get_errors=1, last_error=f"acquire: {status}")
                counters.add(pages_hit=hits, bytes_read=hits * self.page_bytes)
                if hits < min(step, end - pos):
                    counters.add(pages_missed=1)
                    pos += hits + 1  # skip the page that missed
                else:
                    pos += hits
        return results

    def count_existing(self, keys: list[str]) -> int:
        """Leading pages of ``keys`` AIBrix has (L1, then L2 for the rest)."""
        try:
            status = self.manager.exists(None, self.hashes(keys))
        except Exception as exc:
            self.counters.add(exists_errors=1, last_error=f"exists: {exc!r}")
            return 0
        if status.is_ok():
            return int(status.get()) // self.page_size
        if not status.is_not_found():
            self.counters.add(exists_errors=1, last_error=f"exists: {status}")
        return 0
