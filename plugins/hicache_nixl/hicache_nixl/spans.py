"""Where the pages of a batch lie in host memory, as arrays NIXL descriptors are built from.

A page is ``k`` contiguous pieces (K then V for page layouts, per layer for ``layer_first``);
its bytes in a file or object are the pieces one after another. Everything here is numpy,
because descriptor lists are built once per batch of up to 128 pages on the request path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from hicache_core.memory.host_pool import HostKVPool


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


class PoolGeometry:
    """The pieces of any page of a host pool, computed from those of page 0.

    In every layout of the host pool, piece ``j`` of page ``p`` sits ``p`` times a fixed
    stride after piece ``j`` of page 0; that is checked on a few pages when the pool is
    registered, and a pool that breaks it is served page by page through ``page_pieces``.
    """

    def __init__(self, pool: HostKVPool) -> None:
        self.pool = pool
        first = pool.page_pieces(0)
        self.base = np.array([p.ptr for p in first], dtype=np.uint64)
        self.size = np.array([p.nbytes for p in first], dtype=np.uint64)
        self.stride = 0
        self.linear = True
        if pool.page_num > 1:
            self.stride = pool.page_pieces(1)[0].ptr - first[0].ptr
            self.linear = self.stride > 0
            for page in {1, pool.page_num // 2, pool.page_num - 1}:
                got = [p.ptr for p in pool.page_pieces(page)]
                if not self.linear or got != [int(b) + page * self.stride for b in self.base]:
                    self.linear = False
                    break

    def spans(self, pages: Sequence[int]) -> PageSpans:
        n = len(pages)
        if self.linear:
            offsets = np.asarray(pages, dtype=np.uint64) * np.uint64(self.stride)
            ptr = self.base[None, :] + offsets[:, None]
        else:
            ptr = np.array([[p.ptr for p in self.pool.page_pieces(page)] for page in pages], dtype=np.uint64)
        return PageSpans(ptr.reshape(n, -1), np.broadcast_to(self.size, (n, self.size.size)).copy())
