"""The pages of a batch as arrays NIXL descriptors are built from.

Where a page's pieces lie, and in which order, is the core's one rule
(``hicache_core.memory.pages.PageGeometry``): the pieces in stored-byte order, so a page in a
file or object is its pieces one after another, the same bytes the flat-tensor path stores.
This module only turns those addresses into NIXL's descriptor rows. Everything here is numpy,
because descriptor lists are built once per batch of up to 128 pages on the request path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hicache_core.memory.pages import PageGeometry


@dataclass(frozen=True)
class PageSpans:
    """``ptr[i, j]``/``size[i, j]``: address and length of piece ``j`` of page ``i``."""

    ptr: np.ndarray
    size: np.ndarray

    @property
    def count(self) -> int:
        return int(self.ptr.shape[0])

    @property
    def pieces(self) -> int:
        return int(self.ptr.shape[1])

    def lengths(self) -> list[int]:
        """Bytes of each page (all its pieces)."""
        return [int(n) for n in self.size.sum(axis=1)]

    def take(self, pages: Sequence[int]) -> PageSpans:
        sel = np.asarray(pages, dtype=np.int64)
        return PageSpans(self.ptr[sel], self.size[sel])

    def local_rows(self) -> np.ndarray:
        """DRAM descriptors (address, length, device 0), piece by piece, page by page."""
        rows = np.zeros((self.ptr.size, 3), dtype=np.uint64)
        rows[:, 0] = self.ptr.reshape(-1)
        rows[:, 1] = self.size.reshape(-1)
        return rows

    def remote_rows(self, devices: Sequence[int]) -> np.ndarray:
        """Storage descriptors (offset in the page's file or object, length, device id)."""
        offsets = np.cumsum(self.size, axis=1) - self.size  # piece j starts after pieces < j
        rows = np.empty((self.ptr.size, 3), dtype=np.uint64)
        rows[:, 0] = offsets.reshape(-1)
        rows[:, 1] = self.size.reshape(-1)
        rows[:, 2] = np.repeat(np.asarray(devices, dtype=np.uint64), self.pieces)
        return rows

    @classmethod
    def of_pool_pages(cls, geometry: PageGeometry, pages: Sequence[int]) -> PageSpans:
        """The pieces of host-pool ``pages``, in stored-byte order (the core's geometry)."""
        ptr = geometry.piece_ptrs(pages)
        size = np.full(ptr.shape, geometry.piece_nbytes, dtype=np.uint64)
        return cls(ptr, size)

    @classmethod
    def of_tensors(cls, tensors: Sequence[torch.Tensor]) -> PageSpans:
        """One piece per (contiguous, CPU) tensor."""
        ptr = np.array([[t.data_ptr()] for t in tensors], dtype=np.uint64).reshape(-1, 1)
        size = np.array([[t.numel() * t.element_size()] for t in tensors], dtype=np.uint64).reshape(-1, 1)
        return cls(ptr, size)

    @classmethod
    def contiguous(cls, addresses: Sequence[int], lengths: Sequence[int]) -> PageSpans:
        """One piece per page at the given addresses (a staging buffer)."""
        return cls(np.asarray(addresses, dtype=np.uint64).reshape(-1, 1),
                   np.asarray(lengths, dtype=np.uint64).reshape(-1, 1))
