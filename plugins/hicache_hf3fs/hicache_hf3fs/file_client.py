"""The plain-file client: ``os.preadv`` / ``os.pwritev`` on a pre-sized file, zero-copy.

Used for any file system that is not 3FS (or a 3FS mount without the usrbio library) when the
config asks for it. Items are the host pool's own memoryviews, so the kernel copies straight
between the page cache and the pool. Batches are spread over ``numjobs`` threads; positional
I/O needs no shared file offset, and the GIL is released during each system call.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from hicache_hf3fs.client import Item, PageIOClient, item_nbytes, open_presized


class PlainFileClient(PageIOClient):
    kind = "file"

    def __init__(self, path: str, size: int, numjobs: int = 4, on_3fs_mount: bool = False) -> None:
        super().__init__(path, size)
        self._on_3fs_mount = on_3fs_mount
        self._fd = open_presized(path, size)
        self._numjobs = max(1, numjobs)
        self._pool: ThreadPoolExecutor | None = (
            ThreadPoolExecutor(self._numjobs, thread_name_prefix="hf3fs-file-io") if self._numjobs > 1 else None
        )
        self._closed = False
        self._lock = threading.Lock()

    @property
    def on_3fs(self) -> bool:
        # Plain reads through a 3FS FUSE mount do reach 3FS, just without usrbio's rings.
        return self._on_3fs_mount

    def _one(self, write: bool, offset: int, item: Item) -> int:
        want = item_nbytes(item)
        try:
            done = 0
            views = list(item)
            while done < want:
                n = os.pwritev(self._fd, views, offset + done) if write else os.preadv(self._fd, views, offset + done)
                if n <= 0:
                    break  # end of file on a read: the rest is missing
                done += n
                views = _advance(views, n)
            return done
        except OSError as exc:
            return -(exc.errno or 5)

    def _batch(self, write: bool, offsets: Sequence[int], items: Sequence[Item]) -> list[int]:
        verdicts = self.check_batch(offsets, items)
        if self._closed:
            return [-9] * len(items)  # EBADF
        todo = [i for i, v in enumerate(verdicts) if v is None]
        results: list[int] = [v if v is not None else 0 for v in verdicts]
        if self._pool is None or len(todo) <= 1:
            for i in todo:
                results[i] = self._one(write, offsets[i], items[i])
            return results
        # Contiguous runs per job keep each thread's I/O sequential where the slots are.
        step = -(-len(todo) // self._numjobs)
        chunks = [todo[j : j + step] for j in range(0, len(todo), step)]

        def run(chunk: list[int]) -> list[tuple[int, int]]:
            return [(i, self._one(write, offsets[i], items[i])) for i in chunk]

        for part in self._pool.map(run, chunks):
            for i, r in part:
                results[i] = r
        return results

    def batch_read(self, offsets: Sequence[int], items: Sequence[Item]) -> list[int]:
        return self._batch(False, offsets, items)

    def batch_write(self, offsets: Sequence[int], items: Sequence[Item]) -> list[int]:
        return self._batch(True, offsets, items)

    def flush(self) -> None:
        if not self._closed:
            os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        os.close(self._fd)


def _advance(views: list[memoryview], n: int) -> list[memoryview]:
    """The buffers still to move after ``n`` bytes of a short read or write."""
    out: list[memoryview] = []
    for v in views:
        if n >= v.nbytes:
            n -= v.nbytes
            continue
        out.append(v[n:] if n else v)
        n = 0
    return out
