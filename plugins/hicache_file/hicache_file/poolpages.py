"""Byte views of a host pool's pages, for ``preadv``/``pwritev``: the core's page rule, cached.

What a stored page's bytes are, and where each piece of a page lies, is decided in one place:
``hicache_core.memory.pages`` (``page_geometry``: pieces in stored-byte order). This module
only caches that geometry and one memoryview of the whole buffer, so a page's views are
slices of it (much cheaper per page than building tensors). Works for hicache's host pools
(``HostKVPool``, ``HostStatePool``) and SGLang's alike.
"""

from __future__ import annotations

from typing import Any

import torch

from hicache_core.memory.pages import PageGeometry, page_format, page_geometry, page_memoryviews


class PoolPages:
    """The pages of one registered host pool as lists of writable memoryviews."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        geo = getattr(pool, "geometry", None)
        self.geometry: PageGeometry = geo if isinstance(geo, PageGeometry) else page_geometry(pool)
        self.page_bytes = self.geometry.page_bytes
        self.page_size = int(pool.page_size)
        self.dtype: torch.dtype = pool.kv_buffer.dtype
        self.format_tag = page_format(pool).tag()
        buf = pool.kv_buffer
        self._whole: memoryview | None = None
        if buf.is_contiguous() and buf.device.type == "cpu":
            self._whole = memoryview(buf.view(-1).view(torch.uint8).numpy())

    def views(self, page: int) -> list[memoryview]:
        """The pieces of page number ``page`` in stored-byte order (raises for a page outside)."""
        whole = self._whole
        if whole is None:
            return page_memoryviews(self.pool, page, self.geometry)
        return [whole[a:b] for a, b in self.geometry.byte_ranges(page)]

    def pages(self, host_indices: Any) -> list[int]:
        """Page numbers of page-aligned token ``host_indices`` (one per ``page_size`` tokens)."""
        own = getattr(self.pool, "indices_to_pages", None)
        if callable(own):
            return [int(p) for p in own(host_indices)]
        # SGLang's pools have no such method: the same rule, with the same refusals.
        idx = torch.as_tensor(host_indices, dtype=torch.int64)
        size = self.page_size
        if idx.numel() % size:
            raise ValueError(f"{idx.numel()} host indices is not a whole number of pages of {size}")
        firsts = idx[::size]
        if bool((firsts % size).any()):
            raise ValueError("host indices are not page aligned")
        pages = [int(i) // size for i in firsts.tolist()]
        for page in pages:
            self.geometry.check_page(page)
        return pages
