"""Where each Mooncake object of a page lies in the host pool, for the zero-copy path.

The bytes come from ``hicache_core.memory.pages``: a stored page is the concatenation of its
``PageGeometry`` pieces, in stored-byte order. A page's objects split that sequence evenly:
MHA pages are two objects (the first half of the pieces is K, the second V, in every layout,
because the K/V dimension is outermost), MLA pages one. An object made of one piece is moved
with ``batch_put_from``/``batch_get_into`` (one address); one made of several (``layer_first``:
a piece per layer) with the multi-buffer calls, which concatenate the pieces in order. So the
object bytes are the same as the flat path's halves of the flat page, whichever path or pool
(hicache's or SGLang's) wrote them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hicache_core.memory.pages import PageGeometry, page_geometry
from hicache_core.spec.errors import LayoutError


@dataclass(frozen=True)
class ObjectPlan:
    """The objects of a batch of pages: addresses and sizes, ready for one Mooncake call."""

    #: One address per object, or a list of piece addresses per object (multi-buffer).
    ptrs: list[Any]
    sizes: list[Any]
    #: Bytes of every object (the same for all objects of a pool).
    object_nbytes: int


class PagePieces:
    """A pool's page geometry cut into ``parts`` objects per page (2: MHA, 1: MLA)."""

    def __init__(self, pool: Any, parts: int) -> None:
        self.geometry: PageGeometry = page_geometry(pool)
        self.page_size = int(pool.page_size)
        self.parts = parts
        per_page = self.geometry.pieces_per_page
        if per_page % parts:
            raise LayoutError(
                f"mooncake: a page of this {getattr(pool, 'layout', '?')} pool has {per_page} pieces, "
                f"which do not split into {parts} objects (K and V); use page_first"
            )
        self.pieces_per_object = per_page // parts
        self.object_nbytes = self.geometry.piece_nbytes * self.pieces_per_object

    @property
    def page_bytes(self) -> int:
        return self.geometry.page_bytes

    @property
    def buffer(self) -> tuple[int, int]:
        """``(address, bytes)`` of the pool memory to register with Mooncake."""
        return self.geometry.base_ptr, self.geometry.buffer_nbytes

    def pages(self, host_indices: torch.Tensor) -> np.ndarray:
        """Page numbers of page-aligned token indices (checked: Mooncake would move bytes
        to or from wherever an address points). NumPy, not torch: a few microseconds a batch."""
        if isinstance(host_indices, torch.Tensor):
            idx = host_indices.detach().to("cpu", torch.int64).reshape(-1).numpy()
        else:
            idx = np.asarray(host_indices, dtype=np.int64).reshape(-1)
        firsts = idx[:: self.page_size]
        if firsts.size and bool((firsts % self.page_size).any()):
            raise ValueError("mooncake: host indices must be page aligned (whole pages, as alloc returns them)")
        return firsts // self.page_size

    def plan(self, host_indices: torch.Tensor) -> ObjectPlan:
        """Addresses of the objects of the pages behind ``host_indices``, page by page."""
        pages = self.pages(host_indices)
        ptrs = self.geometry.piece_ptrs(pages)  # type: ignore[arg-type]  # (pages, pieces) uint64; checks the range
        n_objects = len(pages) * self.parts
        if self.pieces_per_object == 1:
            return ObjectPlan(ptrs.reshape(-1).tolist(), [self.object_nbytes] * n_objects, self.object_nbytes)
        grouped = ptrs.reshape(n_objects, self.pieces_per_object).tolist()
        piece_sizes = [self.geometry.piece_nbytes] * self.pieces_per_object
        return ObjectPlan(grouped, [piece_sizes] * n_objects, self.object_nbytes)
