"""Vectored reads and writes of runs of page records, and the views of host-pool pages they use.

A run is consecutive records of one segment: header, pieces, header, pieces, ... moved by one
``preadv``/``pwritev`` per chunk (``chunk_bytes``), straight between the file and the pages'
memory. Checksums run per chunk right after (reads) or before (writes) the copy, while the
chunk's bytes are still in the CPU cache.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from hicache_core.memory.pages import PageGeometry, page_geometry, page_memoryviews

_IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)


def _vectored_all(
    call: Callable[[int, Any, int], int], fd: int, bufs: Sequence[Any], offset: int, total: int | None,
) -> int:
    """``call`` (``os.preadv`` or ``os.pwritev``) over every buffer from ``offset``, looping on
    short transfers and ``IOV_MAX``; returns the bytes moved (less than asked at end of file).
    ``total``: the buffers' byte count when the caller knows it."""
    if len(bufs) <= _IOV_MAX:
        if total is None:
            total = sum(len(b) for b in bufs)
        n = call(fd, bufs, offset)
        if n == total or n <= 0:
            return max(n, 0)
        done = n
    else:
        done = 0
    views = [memoryview(b).cast("B") for b in bufs]
    skip = done
    while views and skip >= len(views[0]):
        skip -= len(views[0])
        views.pop(0)
    if views and skip:
        views[0] = views[0][skip:]
    while views:
        n = call(fd, views[:_IOV_MAX], offset + done)
        if n <= 0:
            break
        done += n
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]
    return done


def preadv_all(fd: int, bufs: Sequence[Any], offset: int, total: int | None = None) -> int:
    """Fill ``bufs`` from ``offset``; returns bytes read (less at end of file)."""
    return _vectored_all(os.preadv, fd, bufs, offset, total)


def pwritev_all(fd: int, bufs: Sequence[Any], offset: int, total: int | None = None) -> int:
    """Write every buffer at ``offset``; returns bytes written."""
    return _vectored_all(os.pwritev, fd, bufs, offset, total)


class PoolPages:
    """Writable byte views of a host pool's pages, from the pool's ``PageGeometry``.

    The geometry gives every piece's address (``piece_ptrs``, vectorized); a piece's view is a
    slice of one memoryview of the whole buffer, far cheaper per page than tensor views. A
    buffer that is not one contiguous run falls back to ``page_memoryviews``.
    """

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.geometry: PageGeometry = page_geometry(pool)
        buf: torch.Tensor = pool.kv_buffer
        self._whole: memoryview | None = None
        if buf.is_contiguous() and buf.device.type == "cpu" and buf.data_ptr() == self.geometry.base_ptr:
            self._whole = memoryview(buf.view(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]
        self.page_bytes = self.geometry.page_bytes

    def views(self, pages: Sequence[int]) -> list[list[memoryview]]:
        """The pieces of each page, in stored-byte order."""
        whole = self._whole
        if whole is None:
            return [page_memoryviews(self.pool, p, self.geometry) for p in pages]
        if not pages:
            return []
        geo = self.geometry
        size = geo.piece_nbytes
        starts = (geo.piece_ptrs(pages) - geo.base_ptr).tolist()
        return [[whole[o : o + size] for o in row] for row in starts]


def tensor_bytes_view(t: torch.Tensor) -> memoryview:
    """A writable byte view of a contiguous CPU tensor, sharing its memory."""
    return memoryview(t.view(-1).view(torch.uint8).numpy())  # type: ignore[arg-type]
