"""A host pool of per-request states: the sidecar pool of hybrid (Mamba-like) models.

A Mamba/SSM layer keeps one fixed-size state per sequence position it was checkpointed at,
not KV per token. SGLang moves such states beside the KV through the v2 pool transfers
(``hicache_core.spec.pools``); this pool holds them on the host: ``size`` slots, each one
"page" (``page_size`` 1) of ``state_shape`` values. Its pages are stored like KV pages (the
slot's bytes, ``hicache_core.memory.pages``) under a namespace of their own.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import torch

from hicache_core.memory.pages import PageFormat, PageGeometry, dtype_code, page_geometry


class HostStatePool:
    """``size`` state slots of ``state_shape`` values of ``dtype`` in host memory."""

    layout = "state"
    pool_kind = "state"
    is_mla = False
    page_size = 1

    def __init__(self, size: int, state_shape: Sequence[int], dtype: torch.dtype = torch.float32) -> None:
        if size <= 0 or not state_shape or min(state_shape) <= 0:
            raise ValueError(f"a state pool needs size > 0 and a non-empty positive state_shape, got "
                             f"{size} and {tuple(state_shape)}")
        self.size = size
        self.page_num = size
        self.state_shape = tuple(int(d) for d in state_shape)
        self.dtype = dtype
        self.kv_buffer = torch.zeros((size, math.prod(self.state_shape)), dtype=dtype)
        self.page_bytes = math.prod(self.state_shape) * dtype.itemsize
        self._lock = threading.Lock()
        self._free = list(range(size - 1, -1, -1))
        self.geometry: PageGeometry = page_geometry(self)
        self.page_format = PageFormat(
            kind="state", dtype=dtype_code(dtype), layer_num=1, head_num=1,
            head_dim=math.prod(self.state_shape), page_size=1, order=("token", "dim"),
        )

    def alloc(self, need_size: int) -> torch.Tensor | None:
        """``need_size`` free slots (int64 indices), or None when too few are free."""
        with self._lock:
            if need_size > len(self._free):
                return None
            taken = [self._free.pop() for _ in range(need_size)]
        return torch.tensor(taken, dtype=torch.int64)

    def free(self, indices: torch.Tensor) -> int:
        slots = [int(i) for i in indices.tolist()]
        with self._lock:
            if set(slots) & set(self._free) or len(set(slots)) != len(slots):
                raise ValueError(f"state slot(s) freed twice: {slots[:8]}")
            self._free.extend(slots)
        return len(slots)

    def indices_to_pages(self, indices: torch.Tensor | Sequence[int]) -> list[int]:
        pages = [int(i) for i in torch.as_tensor(indices, dtype=torch.int64).tolist()]
        if pages and (min(pages) < 0 or max(pages) >= self.size):
            raise ValueError(f"state slots {min(pages)}..{max(pages)} are outside this pool's {self.size}")
        return pages

    def pages_to_indices(self, pages: Sequence[int]) -> torch.Tensor:
        return torch.tensor(list(pages), dtype=torch.int64)

    def get_dummy_flat_data_page(self) -> torch.Tensor:
        return torch.zeros(self.kv_buffer.shape[1], dtype=self.dtype)

    def get_data_page(self, index: int, flat: bool = True) -> torch.Tensor:
        return self.kv_buffer[index] if flat else self.kv_buffer[index : index + 1]

    def set_from_flat_data_page(self, index: int, data_page: torch.Tensor) -> None:
        self.kv_buffer[index].copy_(data_page.contiguous().view(-1).view(torch.uint8).view(self.dtype))

    def __repr__(self) -> str:
        return f"HostStatePool(slots={self.size}, state={self.state_shape}, dtype={self.dtype})"
