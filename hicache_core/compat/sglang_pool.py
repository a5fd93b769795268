"""hicache's host-pool page API over one of SGLang's own host pools.

A hicache backend running inside SGLang (through ``hicache_core.compat.sglang_bridge``) is
handed SGLang's ``MHATokenToKVPoolHost`` / ``MLATokenToKVPoolHost``. Those pools have SGLang's
methods (``get_data_page``, ``set_from_flat_data_page``, ``get_page_buffer_meta``, ``alloc``...)
but not hicache's page helpers (``page_bytes``, ``indices_to_pages``, ``page_pieces``,
``is_mla``...). ``SGLangHostPoolView`` adds those, each computed by
``hicache_core.memory.pages`` from SGLang's ``kv_buffer`` (the one rule for what a stored page's
bytes are), and forwards every other attribute to SGLang's pool. No memory is copied: the view
reads and writes SGLang's buffer.

Layouts: those ``hicache_core.memory.pages`` describes (MHA ``layer_first``, ``page_first``,
``page_first_direct``, ``page_head``; MLA the first three). SGLang's ``page_unified`` and
``page_first_kv_split`` pools are refused with ``LayoutError`` (SGLang's own flat-page methods
do not serve ``page_unified`` either).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from hicache_core.memory.host_pool import PAGE_LAYOUTS
from hicache_core.memory.pages import (
    PageFormat,
    PageGeometry,
    PagePiece,
    page_format,
    page_geometry,
    page_memoryviews,
    page_view,
    pool_kind,
    write_flat_page,
)
from hicache_core.spec.errors import LayoutError


def is_sglang_host_pool(pool: Any) -> bool:
    """True for a host pool object of the sglang package (not hicache's, not a view)."""
    module = type(pool).__module__ or ""
    return module == "sglang" or module.startswith("sglang.")


class SGLangHostPoolView:
    """An SGLang host pool with hicache's ``HostKVPool`` page API on top (see the module doc)."""

    def __init__(self, pool: Any) -> None:
        if getattr(pool, "kv_buffer", None) is None:
            raise LayoutError(
                f"{type(pool).__name__} has no kv_buffer (an allocator-only or logical pool); "
                "hicache backends store KV pools with a materialised buffer"
            )
        self.sglang_pool = pool
        #: What this pool's page bytes mean (raises LayoutError for a layout hicache cannot read).
        self.page_format: PageFormat = page_format(pool)
        #: Where each page's pieces lie, in stored-byte order.
        self.geometry: PageGeometry = page_geometry(pool)
        self.is_mla: bool = pool_kind(pool) == "mla"

    def __getattr__(self, name: str) -> Any:
        # Only called for names the view does not define: SGLang's own attributes and methods.
        if name == "sglang_pool":
            raise AttributeError(name)
        return getattr(self.sglang_pool, name)

    def head_group_view(self, group: int, groups: int) -> SGLangHostPoolView:
        """Heads ``group*H/groups .. (group+1)*H/groups`` of a ``page_head`` pool, as a pool.

        The same zero-copy view as ``HostKVPool.head_group_view``, over SGLang's own buffer:
        how SGLang's ``tp_lcm_size`` pages are stored as head groups (plugins/split_heads.py).
        """
        if str(self.sglang_pool.layout) != "page_head":
            raise LayoutError(f"head groups need the page_head layout, this pool is {self.sglang_pool.layout!r}")
        heads = self.page_format.head_num
        if groups <= 0 or heads % groups or not 0 <= group < groups:
            raise ValueError(f"cannot split {heads} heads into {groups} groups (group {group})")
        per = heads // groups
        buf = self.sglang_pool.kv_buffer  # (2, pages, heads, page, layers, dim)
        return SGLangHostPoolView(_Overridden(self.sglang_pool, kv_buffer=buf[:, :, group * per : (group + 1) * per],
                                              head_num=per))

    # ------------------------------------------------------------------ geometry
    @property
    def page_num(self) -> int:
        return self.geometry.page_num

    @property
    def page_bytes(self) -> int:
        return self.geometry.page_bytes

    @property
    def itemsize(self) -> int:
        return int(self.sglang_pool.kv_buffer.element_size())

    @property
    def is_page_first_layout(self) -> bool:
        return str(self.sglang_pool.layout) in PAGE_LAYOUTS

    def require_page_layout(self, backend: str) -> None:
        """Raise ``LayoutError`` unless pages are contiguous, naming the layouts to use."""
        if not self.is_page_first_layout:
            raise LayoutError(
                f"backend {backend!r} needs page-contiguous host memory, but SGLang's host pool uses "
                f"layout {self.sglang_pool.layout!r}; start SGLang with --hicache-mem-layout "
                "page_first (or page_first_direct)"
            )

    def pieces_per_page(self) -> int:
        return self.geometry.pieces_per_page

    # ------------------------------------------------------------------ indices
    def pages_to_indices(self, pages: Sequence[int]) -> torch.Tensor:
        size = int(self.sglang_pool.page_size)
        base = torch.tensor(list(pages), dtype=torch.int64).unsqueeze(1) * size
        return (base + torch.arange(size, dtype=torch.int64)).flatten()

    def indices_to_pages(self, indices: torch.Tensor | Sequence[int]) -> list[int]:
        """Page numbers of page-aligned token ``indices``; refuses indices outside the pool."""
        size = int(self.sglang_pool.page_size)
        idx = torch.as_tensor(indices, dtype=torch.int64).cpu()
        if idx.numel() % size:
            raise ValueError(f"{idx.numel()} host indices is not a whole number of pages of {size}")
        firsts = idx[::size]
        if bool((firsts % size).any()):
            raise ValueError("host indices are not page aligned")
        if firsts.numel() and (int(firsts.min()) < 0 or int(firsts.max()) >= self.page_num * size):
            raise ValueError(
                f"host indices {int(firsts.min())}..{int(firsts.max())} are outside this pool's "
                f"{self.page_num * size} token slots"
            )
        return [int(i) // size for i in firsts.tolist()]

    # ------------------------------------------------------------------ pages
    def get_data_page(self, index: Any, flat: bool = True) -> torch.Tensor:
        """The page starting at token ``index``; flat: its stored bytes (a copy when strided)."""
        view = page_view(self.sglang_pool, int(index) // int(self.sglang_pool.page_size))
        return view.flatten() if flat else view

    def get_dummy_flat_data_page(self) -> torch.Tensor:
        return torch.zeros(self.page_bytes // self.itemsize, dtype=self.sglang_pool.kv_buffer.dtype)

    def set_from_flat_data_page(self, index: Any, data_page: torch.Tensor) -> None:
        write_flat_page(self.sglang_pool, int(index) // int(self.sglang_pool.page_size), data_page)

    def read_page(self, page: int) -> torch.Tensor:
        return self.get_data_page(page * int(self.sglang_pool.page_size)).clone()

    def write_page(self, page: int, data: torch.Tensor) -> None:
        write_flat_page(self.sglang_pool, page, data)

    def page_pieces(self, page: int) -> list[PagePiece]:
        return self.geometry.pieces(page)

    def page_memoryviews(self, page: int) -> list[memoryview]:
        return page_memoryviews(self.sglang_pool, page, self.geometry)

    def __repr__(self) -> str:
        return f"SGLangHostPoolView({type(self.sglang_pool).__name__}, {self.page_format.tag()})"


def as_hicache_pool(pool: Any) -> Any:
    """``pool`` as hicache backends read it: SGLang's pools get the view, others pass as they are."""
    if isinstance(pool, SGLangHostPoolView) or not is_sglang_host_pool(pool):
        return pool
    return SGLangHostPoolView(pool)


class _Overridden:
    """An SGLang pool with a few attributes replaced (a head group's buffer and head count)."""

    def __init__(self, pool: Any, **overrides: Any) -> None:
        self.__dict__.update(overrides)
        self._pool = pool

    def __getattr__(self, name: str) -> Any:
        if name == "_pool":
            raise AttributeError(name)
        return getattr(self._pool, name)
