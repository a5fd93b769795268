"""The views of host-pool pages that vectored reads and writes of page records use.

A run is consecutive records of one segment: header, pieces, header, pieces, ... moved by one
``preadv``/``pwritev`` per chunk (``chunk_bytes``, ``fileio.preadv_all``/``pwritev_all``),
straight between the file and the pages' memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from hicache_core.memory.pages import PageGeometry, page_geometry, page_memoryviews


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
