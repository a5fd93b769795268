"""The host (L2) KV pool: token slots in host memory, grouped in pages.

The tensor shapes and method names follow SGLang's host pools (``MHATokenToKVPoolHost`` /
``MLATokenToKVPoolHost``) so that a backend written against SGLang's pool works against this
one unchanged:

========================  ===============================  ===============================
layout                    MHA ``kv_buffer``                 MLA ``kv_buffer``
========================  ===============================  ===============================
``layer_first``           (2, L, size, H, D)                (L, size, 1, D)
``page_first``            (2, size, L, H, D)                (size, L, 1, D)
``page_first_direct``     (2, pages, L, page, H, D)         (pages, L, page, 1, D)
``page_head``             (2, pages, H, page, L, D)         (MHA only)
========================  ===============================  ===============================

Indices handed around (``host_indices``) are *token* slot indices, page aligned: page ``p``
holds tokens ``p*page_size .. p*page_size+page_size-1``.

What a page's bytes are (their order, its pieces, the format tag keys are namespaced by) is
``hicache_core.memory.pages``'s one rule, the same for this pool and SGLang's.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Literal

import torch

from hicache_core.memory.pages import (
    PageFormat,
    PageGeometry,
    PagePiece,
    page_format,
    page_geometry,
    page_memoryviews,
    page_view,
    write_flat_page,
)
from hicache_core.spec.errors import LayoutError

Layout = Literal["layer_first", "page_first", "page_first_direct", "page_head"]
LAYOUTS: tuple[str, ...] = ("layer_first", "page_first", "page_first_direct", "page_head")
#: Layouts in which each page's K (and V) is one contiguous run.
PAGE_LAYOUTS: tuple[str, ...] = ("page_first", "page_first_direct", "page_head")


def _cuda_available() -> bool:
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # a broken CUDA install must not stop a CPU node
        return False


class HostKVPool:
    """KV for ``size`` token slots of an MHA or MLA model in host memory.

    Memory is pinned when CUDA is available (so device copies are asynchronous DMA) and plain
    otherwise; ``pin_memory`` overrides the choice. Allocation is page granular and
    thread-safe; reads and writes of distinct pages may run concurrently.
    """

    def __init__(
        self,
        size: int,
        page_size: int,
        layer_num: int,
        head_num: int,
        head_dim: int,
        dtype: torch.dtype = torch.bfloat16,
        layout: str = "page_first",
        is_mla: bool = False,
        pin_memory: bool | None = None,
        kv_lora_rank: int | None = None,
        qk_rope_head_dim: int | None = None,
    ) -> None:
        if layout not in LAYOUTS:
            raise LayoutError(f"unknown host pool layout {layout!r}; use one of {', '.join(LAYOUTS)}")
        if layout == "page_head" and is_mla:
            raise LayoutError("page_head splits pages by head; MLA pools have one latent head, use page_first")
        if page_size <= 0 or size <= 0 or size % page_size:
            raise ValueError(
                f"pool size {size} must be a positive multiple of page_size {page_size}"
            )
        if min(layer_num, head_dim) <= 0 or (not is_mla and head_num <= 0):
            raise ValueError("layer_num, head_num and head_dim must be positive")
        if (kv_lora_rank is not None or qk_rope_head_dim is not None) and not is_mla:
            raise ValueError("kv_lora_rank and qk_rope_head_dim describe MLA pools; pass is_mla=True")
        if is_mla:
            # SGLang's MLA pool stores kv_lora_rank + qk_rope_head_dim values per token; here
            # that total is head_dim. Given one, the other follows; given both, they must add up.
            lora = head_dim - (qk_rope_head_dim or 0) if kv_lora_rank is None else kv_lora_rank
            rope = head_dim - lora if qk_rope_head_dim is None else qk_rope_head_dim
            if lora < 0 or rope < 0 or lora + rope != head_dim:
                raise ValueError(
                    f"MLA pool: kv_lora_rank ({kv_lora_rank}) + qk_rope_head_dim ({qk_rope_head_dim}) "
                    f"must equal head_dim ({head_dim}), the latent width per token"
                )
            kv_lora_rank, qk_rope_head_dim = lora, rope
        #: SGLang's ``MLATokenToKVPoolHost`` attributes (None for MHA pools).
        self.kv_lora_rank: int | None = kv_lora_rank
        self.qk_rope_head_dim: int | None = qk_rope_head_dim
        self.size = size
        self.page_size = page_size
        self.page_num = size // page_size
        self.layer_num = layer_num
        self.head_num = 1 if is_mla else head_num
        self.head_dim = head_dim
        self.dtype = dtype
        self.layout = layout
        self.is_mla = is_mla
        self.start_layer = 0
        self.end_layer = layer_num
        self.pin_memory = _cuda_available() if pin_memory is None else pin_memory
        self.device = "cpu"
        self.kv_buffer = torch.zeros(
            self._buffer_shape(), dtype=dtype, device="cpu", pin_memory=self.pin_memory
        )
        #: SGLang's host pools keep this as an attribute, next to ``get_size_per_token()``.
        self.size_per_token = self.get_size_per_token()
        self._lock = threading.Lock()
        self._free_pages: list[int] = list(range(self.page_num - 1, -1, -1))
        self._free_set: set[int] = set(self._free_pages)  # to refuse a page freed twice
        #: Where each page's pieces lie (stored-byte order); computed once, the buffer never moves.
        self.geometry: PageGeometry = page_geometry(self)
        #: What this pool's page bytes mean; part of every key namespace.
        self.page_format: PageFormat = page_format(self)

    def head_group_view(self, group: int, groups: int) -> HostKVPool:
        """Heads ``group*H/groups .. (group+1)*H/groups`` of every page, as a pool of their own.

        Only for ``page_head`` pools, where a page's heads are contiguous per K and V: the view
        shares this pool's memory (no copy) and its pages are the head group's bytes, so a
        backend stores them like any page. That is how pages are shared across TP sizes (see
        ``hicache_core.plugins.split_heads``). The view allocates nothing; its owner does.
        """
        if self.layout != "page_head":
            raise LayoutError(f"head groups need the page_head layout, this pool is {self.layout!r}")
        if groups <= 0 or self.head_num % groups or not 0 <= group < groups:
            raise ValueError(f"cannot split {self.head_num} heads into {groups} groups (group {group})")
        heads = self.head_num // groups
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.head_num = heads
        view.kv_buffer = self.kv_buffer[:, :, group * heads : (group + 1) * heads]
        view.size_per_token = view.get_size_per_token()
        view._lock = threading.Lock()
        view._free_pages, view._free_set = [], set()
        del view.__dict__["page_format"]  # the parent's; the view's heads are fewer
        view.geometry = page_geometry(view)
        view.page_format = page_format(view)
        return view

    # ------------------------------------------------------------------ shape and sizes
    def _buffer_shape(self) -> tuple[int, ...]:
        L, H, D, P = self.layer_num, self.head_num, self.head_dim, self.page_size
        if self.is_mla:
            return {
                "layer_first": (L, self.size, 1, D),
                "page_first": (self.size, L, 1, D),
                "page_first_direct": (self.page_num, L, P, 1, D),
            }[self.layout]
        return {
            "layer_first": (2, L, self.size, H, D),
            "page_first": (2, self.size, L, H, D),
            "page_first_direct": (2, self.page_num, L, P, H, D),
            "page_head": (2, self.page_num, H, P, L, D),
        }[self.layout]

    @property
    def itemsize(self) -> int:
        return int(self.dtype.itemsize)

    def get_size_per_token(self) -> int:
        """Bytes of KV one token takes (all layers, K and V for MHA)."""
        per_layer = self.head_num * self.head_dim * self.itemsize
        return self.layer_num * per_layer * (1 if self.is_mla else 2)

    # SGLang's derived names, for backends that read them.
    @property
    def kv_cache_dim(self) -> int:
        """Values per token per layer of an MLA pool (SGLang's name; head_dim here)."""
        return self.head_dim

    @property
    def token_stride_size(self) -> int:
        """Bytes of one token of one layer, K or V (SGLang's name)."""
        return self.head_num * self.head_dim * self.itemsize

    @property
    def layout_dim(self) -> int:
        """Bytes of one token over all layers, K or V (SGLang's name)."""
        return self.token_stride_size * self.layer_num

    @property
    def k_buffer(self) -> torch.Tensor:
        """The K half of an MHA ``kv_buffer`` (SGLang's ``MHATokenToKVPoolHost.k_buffer``)."""
        if self.is_mla:
            raise AttributeError("an MLA host pool has no k_buffer; use kv_buffer")
        return self.kv_buffer[0]

    @property
    def v_buffer(self) -> torch.Tensor:
        """The V half of an MHA ``kv_buffer`` (SGLang's ``MHATokenToKVPoolHost.v_buffer``)."""
        if self.is_mla:
            raise AttributeError("an MLA host pool has no v_buffer; use kv_buffer")
        return self.kv_buffer[1]

    def get_ksize_per_token(self) -> int:
        """Bytes of K one token takes over all layers (the whole latent for MLA; SGLang's name)."""
        return self.get_size_per_token() // (1 if self.is_mla else 2)

    @property
    def page_bytes(self) -> int:
        """Bytes of one page (all of its pieces together)."""
        return self.get_size_per_token() * self.page_size

    @property
    def is_page_first_layout(self) -> bool:
        return self.layout in PAGE_LAYOUTS

    def require_page_layout(self, backend: str) -> None:
        """Raise ``LayoutError`` unless pages are contiguous, naming the layouts to use."""
        if not self.is_page_first_layout:
            raise LayoutError(
                f"backend {backend!r} needs page-contiguous host memory, but the host pool uses "
                f"layout {self.layout!r}; start with --hicache-mem-layout page_first "
                "(or page_first_direct)"
            )

    # ------------------------------------------------------------------ allocation
    def available_size(self) -> int:
        """Free token slots."""
        with self._lock:
            return len(self._free_pages) * self.page_size

    def alloc(self, need_size: int) -> torch.Tensor | None:
        """Allocate ``need_size`` token slots (a multiple of ``page_size``).

        Returns the token indices (int64, page aligned), or None when the pool has too few
        free pages; nothing is allocated then.
        """
        if need_size % self.page_size:
            raise ValueError(f"need_size {need_size} is not a multiple of page_size {self.page_size}")
        pages = need_size // self.page_size
        with self._lock:
            if pages > len(self._free_pages):
                return None
            taken = [self._free_pages.pop() for _ in range(pages)]
            self._free_set.difference_update(taken)
        return self.pages_to_indices(taken)

    def free(self, indices: torch.Tensor) -> int:
        """Return the pages behind ``indices`` to the pool; returns the token slots freed.

        Freeing a page that is already free raises ``ValueError`` and frees nothing: the pool
        would otherwise hand that page to two owners, whose bytes would then overwrite each other.
        """
        pages = self.indices_to_pages(indices)
        with self._lock:
            seen: set[int] = set()
            twice: list[int] = []
            for p in pages:
                if p in self._free_set or p in seen:
                    twice.append(p)
                seen.add(p)
            if twice:
                raise ValueError(
                    f"host page(s) {twice[:8]} freed twice; free only what alloc() returned, once"
                )
            self._free_pages.extend(pages)
            self._free_set.update(pages)
        return len(pages) * self.page_size

    def pages_to_indices(self, pages: Sequence[int]) -> torch.Tensor:
        """Token indices of whole pages, in page order."""
        base = torch.tensor(list(pages), dtype=torch.int64).unsqueeze(1) * self.page_size
        return (base + torch.arange(self.page_size, dtype=torch.int64)).flatten()

    def indices_to_pages(self, indices: torch.Tensor | Sequence[int]) -> list[int]:
        """Page numbers of page-aligned token ``indices`` (one per ``page_size`` tokens)."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        if idx.numel() % self.page_size:
            raise ValueError(
                f"{idx.numel()} host indices is not a whole number of pages of {self.page_size}"
            )
        firsts = idx[:: self.page_size]
        if bool((firsts % self.page_size).any()):
            raise ValueError("host indices are not page aligned")
        # Out of range, a page's pointers would lie outside kv_buffer (zero-copy backends write
        # there), and a freed one would be handed out by alloc().
        if firsts.numel() and (int(firsts.min()) < 0 or int(firsts.max()) >= self.size):
            raise ValueError(
                f"host indices {int(firsts.min())}..{int(firsts.max())} are outside this pool's "
                f"{self.size} token slots; pass indices that alloc() returned"
            )
        return [int(i) // self.page_size for i in firsts.tolist()]

    # ------------------------------------------------------------------ page access
    def _page_view(self, index: int) -> torch.Tensor:
        """The page starting at token ``index`` as a view of ``kv_buffer``, in stored-byte order."""
        return page_view(self, index // self.page_size)

    def get_data_page(self, index: int, flat: bool = True) -> torch.Tensor:
        """The page that starts at token ``index``; flat pages are copies when not contiguous.

        The flat page is the page's stored bytes (``hicache_core.memory.pages``), the same bytes
        its pieces hold in ``page_pieces`` order, as SGLang's pools return it.
        """
        view = self._page_view(index)
        return view.flatten() if flat else view

    def get_dummy_flat_data_page(self) -> torch.Tensor:
        """A zeroed flat page buffer of the pool's dtype, to read a page into."""
        return torch.zeros(
            self.page_bytes // self.itemsize, dtype=self.dtype, device="cpu", pin_memory=self.pin_memory
        )

    def set_from_flat_data_page(self, index: int, data_page: torch.Tensor) -> None:
        """Write a flat page (as ``get_data_page`` returns it) into the page at ``index``."""
        write_flat_page(self, index // self.page_size, data_page)

    # Plain names for the same two operations, for code that is not SGLang-shaped.
    def read_page(self, page: int) -> torch.Tensor:
        """A flat copy of page number ``page``."""
        return self.get_data_page(page * self.page_size, flat=True).clone()

    def write_page(self, page: int, data: torch.Tensor) -> None:
        """Overwrite page number ``page`` from a flat tensor."""
        self.set_from_flat_data_page(page * self.page_size, data)

    # ------------------------------------------------------------------ zero-copy metadata
    def pieces_per_page(self) -> int:
        """How many contiguous pieces one page is made of (see ``page_pieces``)."""
        return self.geometry.pieces_per_page

    def get_page_buffer_meta(self, indices: torch.Tensor | Sequence[int]) -> tuple[list[int], list[int]]:
        """SGLang's zero-copy helper: address and byte size of every piece of the pages.

        SGLang's order, for SGLang-written backends: page layouts give K then V (MHA) or the one
        latent piece (MLA); ``layer_first`` gives, for each layer, K then V. hicache's backends
        use ``page_pieces``/``geometry`` (stored-byte order: all K layers, then all V layers).
        """
        pages = self.indices_to_pages(indices)
        ptrs: list[int] = []
        if self.layout == "layer_first" and not self.is_mla:
            L = self.layer_num
            for page in pages:
                pcs = self.page_pieces(page)
                for layer in range(L):
                    ptrs.extend((pcs[layer].ptr, pcs[L + layer].ptr))
        else:
            for page in pages:
                ptrs.extend(p.ptr for p in self.page_pieces(page))
        size = self.page_bytes // self.pieces_per_page()
        return ptrs, [size] * len(ptrs)

    def get_buffer_meta(
        self, keys: Sequence[str], indices: torch.Tensor | Sequence[int], local_rank: int | None = None
    ) -> tuple[list[str], list[int], list[int]]:
        """SGLang's earlier zero-copy helper: ``(key_list, ptr_list, size_list)`` for page layouts.

        Per page, keys ``{key}_{local_rank}_k`` and ``{key}_{local_rank}_v`` beside the K and V
        pointers (MHA), or ``{key}_k`` beside the latent's pointer (MLA); ``local_rank``
        defaults to 0. Backends written against sglang releases before
        ``get_page_buffer_meta`` call this one.
        """
        self.require_page_layout("get_buffer_meta")
        ptrs, sizes = self.get_page_buffer_meta(indices)
        if len(keys) * self.pieces_per_page() != len(ptrs):
            raise ValueError(f"{len(keys)} keys for {len(ptrs) // self.pieces_per_page()} pages")
        rank = 0 if local_rank is None else local_rank
        if self.is_mla:
            names = [f"{k}_k" for k in keys]
        else:
            names = [name for k in keys for name in (f"{k}_{rank}_k", f"{k}_{rank}_v")]
        return names, ptrs, sizes

    def page_pieces(self, page: int) -> list[PagePiece]:
        """The contiguous pieces of page number ``page``, in stored-byte order.

        Read one after another they are the flat page (``get_data_page``): page layouts give
        K then V (MHA) or one latent piece (MLA); ``layer_first`` gives K of every layer, then V
        of every layer (MLA: every layer's latent).
        """
        return self.geometry.pieces(page)

    def page_memoryviews(self, page: int) -> list[memoryview]:
        """Writable byte views of the pieces of page number ``page``, without a copy.

        What file-like backends hand to ``readinto``/``preadv``/``pwritev``.
        """
        return page_memoryviews(self, page, self.geometry)

    def __repr__(self) -> str:
        kind = "MLA" if self.is_mla else "MHA"
        return (
            f"HostKVPool({kind}, layout={self.layout}, pages={self.page_num}x{self.page_size}, "
            f"L={self.layer_num}, H={self.head_num}, D={self.head_dim}, dtype={self.dtype}, "
            f"pinned={self.pin_memory})"
        )
