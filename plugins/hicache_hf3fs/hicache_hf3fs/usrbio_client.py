"""The usrbio client: 3FS's user-space ring I/O (``hf3fs_fuse.io``) on a 3FS mount.

Facts of the usrbio API this is written from (3FS ``hf3fs_fuse/io.py`` and its pybind module):

- ``register_fd(fd)`` must precede I/O on a file; ``deregister_fd(fd)`` must precede ``close``.
- ``make_iovec(shm, mount_point)`` wraps a ``multiprocessing.shared_memory.SharedMemory`` as an
  iovec the FUSE daemon can reach; all data moves through it (reads land there, writes are
  taken from there). Slicing an iovec (``iov[a:b]``) gives the region of one I/O.
- ``make_ioring(mount_point, entries, for_read, io_depth, timeout=..., numa=-1)``: a ring is
  either for reads or for writes, holds at most ``entries`` I/Os, and is driven by one thread.
- ``ring.prepare(iov_slice, read, fd, offset, userdata=...)`` queues one I/O (it may start at
  once); ``ring.submit()`` notifies the daemon; ``ring.wait(min_results=n, max_results=n,
  timeout=timedelta)`` returns completed I/Os *in completion order*, each with ``result``
  (bytes moved, or ``-errno``) and the ``userdata`` given to ``prepare``; it raises
  ``OSError`` when it times out with nothing done, and returns a partial list otherwise.

This client cannot run where 3FS is not mounted; its tests skip there, saying why.
"""

from __future__ import annotations

import errno
import importlib
import itertools
import logging
import multiprocessing.shared_memory
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from types import ModuleType
from typing import Any

from hicache_hf3fs.client import Item, PageIOClient, item_nbytes, open_presized

log = logging.getLogger(__name__)

USRBIO_MODULE = "hf3fs_fuse.io"


def import_usrbio() -> ModuleType:
    """3FS's Python client module; ImportError (with how to get it) when absent."""
    try:
        return importlib.import_module(USRBIO_MODULE)
    except ImportError as exc:
        raise ImportError(
            f"{USRBIO_MODULE} is not importable ({exc}); build and install 3FS's Python client "
            "(hf3fs_py_usrbio, from the 3FS source tree) on a node with a 3FS mount"
        ) from exc


class _Ring:
    """One ioring with its own shared-memory iovec of ``entries`` slots of ``slot_bytes``."""

    def __init__(
        self, io: Any, mount_point: str, entries: int, slot_bytes: int, for_read: bool, io_depth: int,
        timeout: float,
    ) -> None:
        self.entries = entries
        self.slot_bytes = slot_bytes
        self.for_read = for_read
        self.timeout = timeout
        self.lock = threading.Lock()
        #: I/Os prepared by an earlier batch that timed out and were not reaped yet. Their
        #: shared-memory slots may still be in use by the daemon, so the ring must be drained
        #: before it is used again.
        self.outstanding = 0
        self.shm = multiprocessing.shared_memory.SharedMemory(create=True, size=entries * slot_bytes)
        try:
            self.iov = io.make_iovec(self.shm, mount_point)
            self.ring = io.make_ioring(mount_point, entries, for_read=for_read, io_depth=io_depth, numa=-1)
        except BaseException:
            self.shm.close()
            self.shm.unlink()
            raise
        # The daemon has mapped the segment through the iovec link; the name is not needed.
        self.shm.unlink()

    def _wait(self, count: int) -> list[Any]:
        try:
            done = self.ring.wait(
                min_results=count, max_results=count, timeout=timedelta(seconds=self.timeout)
            )
            return list(done)
        except OSError as exc:
            log.warning("usrbio wait for %d I/Os failed: %s", count, exc)
            return []

    def _drain(self) -> bool:
        if self.outstanding:
            self.outstanding -= len(self._wait(self.outstanding))
        return self.outstanding == 0

    def run(self, fd: int, offsets: Sequence[int], items: Sequence[Item]) -> list[int]:
        """Move up to ``entries`` items; per item bytes moved or -errno."""
        n = len(items)
        with self.lock:
            if not self._drain():
                return [-errno.EBUSY] * n
            buf = self.shm.buf
            assert buf is not None
            results = [-errno.ETIMEDOUT] * n
            prepared = 0
            for i, (off, item) in enumerate(zip(offsets, items)):
                start = i * self.slot_bytes
                size = item_nbytes(item)
                if not self.for_read:
                    pos = start
                    for piece in item:
                        buf[pos : pos + piece.nbytes] = piece
                        pos += piece.nbytes
                try:
                    self.ring.prepare(self.iov[start : start + size], self.for_read, fd, off, userdata=i)
                    prepared += 1
                except OSError as exc:
                    results[i] = -(exc.errno or errno.EIO)
            if prepared:
                try:
                    self.ring.submit()
                except OSError as exc:
                    log.warning("usrbio submit failed: %s", exc)
                reaped = self._wait(prepared)
                self.outstanding = prepared - len(reaped)
                for done in reaped:
                    results[int(done.userdata)] = int(done.result)
            if self.for_read:
                for i, item in enumerate(items):
                    if results[i] != item_nbytes(item):
                        continue  # a failed or short read leaves the target untouched
                    pos = i * self.slot_bytes
                    for piece in item:
                        piece[:] = buf[pos : pos + piece.nbytes]
                        pos += piece.nbytes
            return results

    def close(self) -> None:
        with self.lock:
            self._drain()
            del self.ring
            del self.iov
            self.shm.close()


class UsrbioClient(PageIOClient):
    """Batches split into ``entries``-sized groups, spread over ``numjobs`` ring pairs."""

    kind = "usrbio"

    def __init__(
        self,
        path: str,
        size: int,
        bytes_per_page: int,
        mount_point: str,
        entries: int = 8,
        numjobs: int = 4,
        io_depth: int = 0,
        timeout: float = 5.0,
        io_module: ModuleType | None = None,
    ) -> None:
        super().__init__(path, size)
        io = io_module if io_module is not None else import_usrbio()
        self.mount_point = mount_point
        self.entries = entries
        self.bytes_per_page = bytes_per_page
        self._io = io
        self._fd = open_presized(path, size)
        self._registered = False
        self._jobs: list[tuple[_Ring, _Ring]] = []
        self._closed = False
        try:
            io.register_fd(self._fd)
            self._registered = True
            for _ in range(max(1, numjobs)):
                self._jobs.append((
                    _Ring(io, mount_point, entries, bytes_per_page, True, io_depth, timeout),
                    _Ring(io, mount_point, entries, bytes_per_page, False, io_depth, timeout),
                ))
        except BaseException:
            self.close()
            raise
        self._rr = itertools.count()
        self._rr_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(len(self._jobs), thread_name_prefix="hf3fs-usrbio")

    @property
    def on_3fs(self) -> bool:
        return True

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(), "mount_point": self.mount_point, "entries": self.entries,
            "numjobs": len(self._jobs),
        }

    def _next_job(self) -> tuple[_Ring, _Ring]:
        with self._rr_lock:
            return self._jobs[next(self._rr) % len(self._jobs)]

    def _batch(self, read: bool, offsets: Sequence[int], items: Sequence[Item]) -> list[int]:
        verdicts = self.check_batch(offsets, items)
        results: list[int] = [v if v is not None else 0 for v in verdicts]
        if self._closed:
            return [-errno.EBADF] * len(items)
        for i, item in enumerate(items):
            if verdicts[i] is None and item_nbytes(item) > self.bytes_per_page:
                results[i] = -errno.EINVAL
                verdicts[i] = -errno.EINVAL
        todo = [i for i, v in enumerate(verdicts) if v is None]
        groups = [todo[j : j + self.entries] for j in range(0, len(todo), self.entries)]

        def run(group: list[int]) -> list[int]:
            ring_r, ring_w = self._next_job()
            ring = ring_r if read else ring_w
            return ring.run(self._fd, [offsets[i] for i in group], [items[i] for i in group])

        for group, out in zip(groups, self._pool.map(run, groups)):
            for i, r in zip(group, out):
                results[i] = r
        return results

    def batch_read(self, offsets: Sequence[int], items: Sequence[Item]) -> list[int]:
        return self._batch(True, offsets, items)

    def batch_write(self, offsets: Sequence[int], items: Sequence[Item]) -> list[int]:
        return self._batch(False, offsets, items)

    def flush(self) -> None:
        if not self._closed:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=True)
        for ring_r, ring_w in self._jobs:
            ring_r.close()
            ring_w.close()
        self._jobs = []
        if self._registered:
            self._io.deregister_fd(self._fd)
            self._registered = False
        os.close(self._fd)
