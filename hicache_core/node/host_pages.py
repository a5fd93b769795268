"""Whole pages of a ``HostKVPool`` as rows of bytes, read and written with one gather/scatter.

A page's row is its contiguous pieces in stored-byte order (``hicache_core.memory.pages``: the
page's slice of ``kv_buffer`` in buffer order; K then V, and for ``layer_first`` every layer's
K before every layer's V; one latent piece per page or layer for MLA),
so a row is exactly what a zero-copy backend sees of the page, and copying piece by piece
from pinned host memory to a device row is a straight DMA.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hicache_core.memory.host_pool import HostKVPool


class HostPages:
    """Batch page access to a host pool's ``kv_buffer`` (any layout, MHA or MLA)."""

    def __init__(self, pool: HostKVPool) -> None:
        self.pool = pool
        self.page_bytes = pool.page_bytes
        # The buffer as bytes; the last dim becomes head_dim * itemsize.
        self._buf = pool.kv_buffer.view(torch.uint8)
        self._flat = pool.kv_buffer.view(-1).view(torch.uint8)
        self._base = pool.kv_buffer.data_ptr()

    # Which dim of the byte buffer holds pages, and whether it is indexed by token or by page.
    def _dim_and_index(self, pages: Sequence[int]) -> tuple[int, torch.Tensor]:
        pool = self.pool
        if pool.layout == "page_first_direct":
            dim = 0 if pool.is_mla else 1
            return dim, torch.tensor(list(pages), dtype=torch.int64)
        tokens = pool.pages_to_indices(pages)
        if pool.layout == "page_first":
            return (0 if pool.is_mla else 1), tokens
        return (1 if pool.is_mla else 2), tokens  # layer_first

    def read(self, pages: Sequence[int]) -> torch.Tensor:
        """(n, page_bytes) uint8 copy of ``pages``, each row in piece order."""
        n = len(pages)
        if n == 0:
            return torch.empty((0, self.page_bytes), dtype=torch.uint8)
        dim, index = self._dim_and_index(pages)
        sel = self._buf.index_select(dim, index)
        pool = self.pool
        if pool.is_mla:
            if pool.layout == "layer_first":  # (L, n*P, 1, Db) -> (n, L, P*Db)
                sel = sel.reshape(pool.layer_num, n, -1).permute(1, 0, 2)
            return sel.reshape(n, self.page_bytes)
        if pool.layout == "layer_first":  # (2, L, n*P, H, Db) -> (n, 2, L, P*H*Db): buffer order
            sel = sel.reshape(2, pool.layer_num, n, -1).permute(2, 0, 1, 3)
        else:  # (2, n*P or n, ...) -> (n, 2, piece)
            sel = sel.reshape(2, n, -1).permute(1, 0, 2)
        return sel.reshape(n, self.page_bytes)

    def write(self, pages: Sequence[int], rows: torch.Tensor) -> None:
        """Overwrite ``pages`` with ``rows`` ((n, page_bytes) uint8, any device)."""
        n = len(pages)
        if n == 0:
            return
        if tuple(rows.shape) != (n, self.page_bytes):
            raise ValueError(f"rows of shape {tuple(rows.shape)} do not match {n} pages of {self.page_bytes} B")
        rows = rows.to("cpu", dtype=torch.uint8)
        dim, index = self._dim_and_index(pages)
        pool = self.pool
        target_shape = list(self._buf.shape)
        target_shape[dim] = index.numel()
        if pool.is_mla:
            if pool.layout == "layer_first":
                src = rows.reshape(n, pool.layer_num, -1).permute(1, 0, 2)
            else:
                src = rows
        elif pool.layout == "layer_first":
            src = rows.reshape(n, 2, pool.layer_num, -1).permute(1, 2, 0, 3)
        else:
            src = rows.reshape(n, 2, -1).permute(1, 0, 2)
        self._buf.index_copy_(dim, index, src.reshape(target_shape))

    def pieces(self, page: int) -> list[torch.Tensor]:
        """Zero-copy uint8 views of the contiguous pieces of ``page`` (for DMA to a device)."""
        out = []
        for piece in self.pool.page_pieces(page):
            start = piece.ptr - self._base
            out.append(self._flat[start : start + piece.nbytes])
        return out
