"""The threads that serve one batch of big pages: ``io_threads`` in all, the calling thread and
``io_threads - 1`` helpers shared by the store's batches.

Reads of big pages run side by side; writes stay on the calling thread (buffered writes to one
file take its inode lock in turn, so a second writer would only spin on it) while helpers
checksum the chunks ahead. Small pages use the calling thread only: handing them over costs more
than it saves.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hicache_file.segment.batch import ReadItem, WriteItem, checksums, write_chunk
from hicache_file.segment.format import HEADER_SIZE
from hicache_file.segment.index import Segment

#: Batches of pages at least this big use ``io_threads`` threads (smaller: the calling thread).
PARALLEL_MIN_PAGE_BYTES = 256 << 10

#: Bytes one ``preadv`` of pages needing no checksum may move (``batch.read_chunks``).
RUN_BYTES = 8 << 20

WriteJob = tuple[Segment, int, list[WriteItem]]


def parallel(page_bytes: int) -> bool:
    """Whether pages of ``page_bytes`` are big enough for helper threads (read at call time, so
    tests can lower the threshold)."""
    return page_bytes >= PARALLEL_MIN_PAGE_BYTES


class BatchThreads:
    """``io_threads`` threads for one store's batches; helpers are started on first need."""

    def __init__(self, io_threads: int) -> None:
        self.io_threads = io_threads
        self._lock = threading.Lock()
        self.executor: ThreadPoolExecutor | None = None

    def helpers(self) -> ThreadPoolExecutor | None:
        """The ``io_threads - 1`` helper threads (None with ``io_threads`` 1)."""
        if self.io_threads <= 1:
            return None
        with self._lock:
            if self.executor is None:
                self.executor = ThreadPoolExecutor(self.io_threads - 1, thread_name_prefix="hicache-seg")
            return self.executor

    def close(self) -> None:
        with self._lock:
            executor, self.executor = self.executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    def run(self, jobs: list[Any], fn: Callable[[Any], Any], page_bytes: int) -> list[Any]:
        """``fn`` over ``jobs``, results in order, on ``io_threads`` threads for big pages.

        The threads take the next job as they get free (not a fixed share each): a thread that
        loses its CPU on a busy machine, or a helper still busy with another batch, then only
        means the others do more, never that the batch waits on it.
        """
        threads = min(self.io_threads, len(jobs))
        executor = self.helpers() if threads > 1 and parallel(page_bytes) else None
        if executor is None:
            return [fn(job) for job in jobs]
        out: list[Any] = [None] * len(jobs)
        pending = iter(range(len(jobs)))  # next() of a range iterator is atomic: each job runs once

        def work() -> None:
            for k in pending:
                out[k] = fn(jobs[k])

        futures = [executor.submit(work) for _ in range(threads - 1)]
        work()
        for f in futures:
            if not f.cancel():  # a helper that never started has nothing left to do
                f.result()
        return out

    def write(self, jobs: list[WriteJob], length: int, hook: Callable[[], None] | None) -> list[bool]:
        """Write each chunk of records in order from the calling thread; at big pages, helper
        threads compute the checksums of the chunks ahead meanwhile. A chunk whose checksums no
        helper has started yet (helpers busy, or without a CPU on a loaded machine) is
        checksummed right here."""
        executor = self.helpers() if len(jobs) > 1 and parallel(length) else None
        if executor is None:
            return [write_chunk(seg, offset, items, length, None, hook) for seg, offset, items in jobs]
        ahead = [executor.submit(checksums, items) for _, _, items in jobs]
        out = []
        try:
            for (seg, offset, items), sums in zip(jobs, ahead):
                out.append(write_chunk(seg, offset, items, length, None if sums.cancel() else sums.result(), hook))
        finally:
            for sums in ahead:
                sums.cancel()
        return out

    def run_bytes(self, items: list[ReadItem], chunk_bytes: int) -> int:
        """The most bytes one ``preadv`` of pages that need no checksum moves: ``RUN_BYTES``, less
        when that would leave fewer runs than the batch's threads."""
        threads = self.io_threads if parallel(items[0].length) else 1
        total = sum(HEADER_SIZE + it.length for it in items)
        return max(chunk_bytes, min(RUN_BYTES, -(-total // threads)))
