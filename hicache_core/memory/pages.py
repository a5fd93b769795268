"""What the bytes of one stored page are, for any host pool: hicache's or SGLang's.

One fact, kept here and nowhere else: **a stored page is the page's slice of the pool's
``kv_buffer``, in the buffer's own dimension order, with the page dimension dropped** — what
SGLang's ``get_data_page(index, flat=True)`` returns. Every path (zero-copy v1, the flat-tensor
``get``/``set``, the v2 pool transfers) and every first-party backend stores exactly those
bytes, so a key always holds the same bytes whichever path wrote it:

=======================  ==============================  ==========================
layout                   MHA page bytes (outer→inner)    MLA page bytes
=======================  ==============================  ==========================
``layer_first``          kv, layer, token, head, dim     layer, token, dim
``page_first``           kv, token, layer, head, dim     token, layer, dim
``page_first_direct``    kv, layer, token, head, dim     layer, token, dim
``page_head``            kv, head, token, layer, dim     (MHA only)
=======================  ==============================  ==========================

``layer_first`` and ``page_first_direct`` pages are the same bytes, so they share stored pages;
the other orders are different bytes and carry a different ``PageFormat.tag()``, which the key
namespace (``hicache_core.keys.pool_namespace``) includes, so a page of another order is a miss.

``PageGeometry`` gives the contiguous *pieces* of each page in that order (their addresses and
sizes), computed once per pool from the tensor's strides: zero-copy backends hand them to
``preadv``/``pwritev``/RDMA as they are, and the concatenation of the pieces *is* the flat page.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

#: Dimension names of each (kind, layout)'s kv_buffer, outermost first. ``page`` is the page
#: dimension (one page per index) and ``slot`` the token-slot dimension (page_size per page).
_BUFFER_DIMS: dict[tuple[str, str], tuple[str, ...]] = {
    ("mha", "layer_first"): ("kv", "layer", "slot", "head", "dim"),
    ("mha", "page_first"): ("kv", "slot", "layer", "head", "dim"),
    ("mha", "page_first_direct"): ("kv", "page", "layer", "token", "head", "dim"),
    ("mha", "page_head"): ("kv", "page", "head", "token", "layer", "dim"),
    ("mla", "layer_first"): ("layer", "slot", "head", "dim"),
    ("mla", "page_first"): ("slot", "layer", "head", "dim"),
    ("mla", "page_first_direct"): ("page", "layer", "token", "head", "dim"),
    # Sidecar state pools (hicache_core.memory.state_pool): one slot per page.
    ("state", "state"): ("slot", "dim"),
}

#: Short names for dtypes in format tags (anything else: torch's own name).
_DTYPE_CODES: dict[torch.dtype, str] = {
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float32: "fp32",
    torch.float64: "fp64",
    torch.uint8: "u8",
    torch.int8: "i8",
}
for _name, _code in (
    ("float8_e4m3fn", "fp8e4m3"),
    ("float8_e5m2", "fp8e5m2"),
    ("float8_e4m3fnuz", "fp8e4m3fnuz"),
    ("float8_e5m2fnuz", "fp8e5m2fnuz"),
):
    if hasattr(torch, _name):
        _DTYPE_CODES[getattr(torch, _name)] = _code

#: One letter per dimension of the stored bytes, for format tags.
_DIM_CODES = {"kv": "c", "layer": "l", "slot": "t", "token": "t", "head": "h", "dim": "d"}


def dtype_code(dtype: torch.dtype) -> str:
    """A short, stable name for ``dtype`` (``bf16``, ``fp16``, ``fp8e4m3``, ...)."""
    return _DTYPE_CODES.get(dtype, str(dtype).removeprefix("torch."))


def supported_layouts(kind: str) -> tuple[str, ...]:
    """The layouts whose pages this module can describe for ``kind`` (``mha`` or ``mla``)."""
    return tuple(layout for (k, layout) in _BUFFER_DIMS if k == kind)


@dataclass(frozen=True)
class PagePiece:
    """One contiguous run of bytes of a page in host memory."""

    ptr: int
    nbytes: int


@dataclass(frozen=True)
class PageFormat:
    """What the bytes of one stored page mean: kind, dtype, geometry and byte order.

    Two pools whose formats have the same ``tag()`` store and read identical bytes for the
    same KV; any difference (dtype, layers, heads, head dim, page size, order) is a different
    tag, and so a different key namespace: such a page is a miss, never a wrong hit.
    """

    kind: str  # "mha" | "mla" | "state" (sidecar pools, see hicache_core.memory.state_pool)
    dtype: str
    layer_num: int
    head_num: int
    head_dim: int
    page_size: int
    #: Dimensions of the stored bytes, outermost first (e.g. ``("kv", "layer", "token", ...)``).
    order: tuple[str, ...]
    #: Per-token value width of V when it differs from K's (MHA), else 0.
    v_head_dim: int = 0
    #: MLA: the latent split ``kv_lora_rank + qk_rope_head_dim == head_dim`` (0 when unknown).
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0

    @property
    def page_bytes(self) -> int:
        per_token = self.layer_num * self.head_num * (self.head_dim + (self.v_head_dim or self.head_dim))
        if self.kind != "mha":
            per_token = self.layer_num * self.head_num * self.head_dim
        itemsize = _itemsize(self.dtype)
        return per_token * self.page_size * itemsize

    def tag(self) -> str:
        """A short, file- and object-name-safe string that names this format exactly.

        ``{kind}-{dtype}-l{L}h{H}d{D}[v{Dv}][r{rope}]-p{page}-{order}``, e.g.
        ``mha-bf16-l32h8d128-p64-clthd``. Part of the key schema (docs/key-schema.md).
        """
        geom = f"l{self.layer_num}h{self.head_num}d{self.head_dim}"
        if self.v_head_dim and self.v_head_dim != self.head_dim:
            geom += f"v{self.v_head_dim}"
        if self.kind == "mla" and self.qk_rope_head_dim:
            geom += f"r{self.qk_rope_head_dim}"
        order = "".join(_DIM_CODES.get(d, d[0]) for d in self.order)
        return f"{self.kind}-{self.dtype}-{geom}-p{self.page_size}-{order}"


def _itemsize(code: str) -> int:
    for dtype, name in _DTYPE_CODES.items():
        if name == code:
            return int(dtype.itemsize)
    return int(getattr(torch, code).itemsize)


def pool_kind(pool: Any) -> str:
    """``mla`` or ``mha`` (or ``state``) for hicache's host pools and SGLang's alike."""
    declared = getattr(pool, "pool_kind", None)
    if isinstance(declared, str):
        return declared
    flag = getattr(pool, "is_mla", None)
    if isinstance(flag, bool):
        return "mla" if flag else "mha"
    names = [c.__name__ for c in type(pool).__mro__]
    if any("MLA" in n for n in names):
        return "mla"
    return "mha"


def _buffer_dims(pool: Any) -> tuple[str, ...]:
    kind = pool_kind(pool)
    layout = str(getattr(pool, "layout", ""))
    dims = _BUFFER_DIMS.get((kind, layout))
    if dims is None:
        from hicache_core.spec.errors import LayoutError

        raise LayoutError(
            f"host pool layout {layout!r} ({kind.upper()}) has no page format in hicache; "
            f"use one of {', '.join(supported_layouts(kind))}"
        )
    buf = pool.kv_buffer
    if buf.dim() != len(dims):
        raise ValueError(
            f"{type(pool).__name__}.kv_buffer has {buf.dim()} dims; a {kind.upper()} "
            f"{layout} pool has {len(dims)} ({', '.join(dims)})"
        )
    return dims


def page_format(pool: Any) -> PageFormat:
    """The ``PageFormat`` of the pages of ``pool`` (hicache's ``HostKVPool`` or SGLang's)."""
    declared = pool.__dict__.get("page_format") if hasattr(pool, "__dict__") else None
    if isinstance(declared, PageFormat):
        return declared
    dims = _buffer_dims(pool)
    kind = pool_kind(pool)
    shape = dict(zip(dims, pool.kv_buffer.shape))
    order = tuple("token" if d == "slot" else d for d in dims if d != "page")
    head_dim = int(shape["dim"])
    v_head_dim = int(getattr(pool, "v_head_dim", 0) or 0) if kind == "mha" else 0
    return PageFormat(
        kind=kind,
        dtype=dtype_code(pool.kv_buffer.dtype),
        layer_num=int(shape["layer"]),
        head_num=int(shape["head"]),
        head_dim=head_dim,
        page_size=int(pool.page_size),
        order=order,
        v_head_dim=v_head_dim if v_head_dim != head_dim else 0,
        kv_lora_rank=int(getattr(pool, "kv_lora_rank", 0) or 0) if kind == "mla" else 0,
        qk_rope_head_dim=int(getattr(pool, "qk_rope_head_dim", 0) or 0) if kind == "mla" else 0,
    )


def page_view(pool: Any, page: int) -> torch.Tensor:
    """Page number ``page`` of ``pool`` as a view of its ``kv_buffer``, in stored-byte order.

    ``page_view(pool, p).flatten()`` (a copy when the page is not contiguous) is the flat page
    every path stores; writing into the view writes the pool.
    """
    dims = _buffer_dims(pool)
    buf = pool.kv_buffer
    P = int(pool.page_size)
    index: list[Any] = []
    for d in dims:
        if d == "page":
            index.append(page)
        elif d == "slot":
            index.append(slice(page * P, page * P + P))
        else:
            index.append(slice(None))
    view: torch.Tensor = buf[tuple(index)]
    return view


@dataclass(frozen=True)
class PageGeometry:
    """Where each page's pieces lie, for one pool, computed once from the buffer's strides.

    The pieces of page ``p`` are page 0's pieces shifted by ``p * page_stride`` bytes; they
    are listed in stored-byte order, so reading the pieces one after the other gives the flat
    page. Valid for as long as the pool's buffer lives.
    """

    base_ptr: int
    page_num: int
    page_size: int
    page_stride: int
    piece_offsets: tuple[int, ...]
    piece_nbytes: int
    buffer_nbytes: int

    @property
    def pieces_per_page(self) -> int:
        return len(self.piece_offsets)

    @property
    def page_bytes(self) -> int:
        return self.piece_nbytes * len(self.piece_offsets)

    @property
    def contiguous(self) -> bool:
        """True when each page is one contiguous run (one piece)."""
        return len(self.piece_offsets) == 1

    def check_page(self, page: int) -> None:
        if not 0 <= page < self.page_num:
            raise ValueError(f"page {page} is outside this pool's pages 0..{self.page_num - 1}")

    def pieces(self, page: int) -> list[PagePiece]:
        """The pieces of page number ``page``, in stored-byte order."""
        self.check_page(page)
        start = self.base_ptr + page * self.page_stride
        return [PagePiece(start + off, self.piece_nbytes) for off in self.piece_offsets]

    def piece_ptrs(self, pages: Sequence[int]) -> np.ndarray:
        """Addresses of every piece of ``pages``: an ``(len(pages), pieces_per_page)`` uint64 array."""
        arr = np.asarray(pages, dtype=np.int64)
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= self.page_num):
            raise ValueError(f"pages outside this pool's pages 0..{self.page_num - 1}")
        offs = np.asarray(self.piece_offsets, dtype=np.int64)
        return (self.base_ptr + arr[:, None] * self.page_stride + offs[None, :]).astype(np.uint64)

    def byte_ranges(self, page: int) -> list[tuple[int, int]]:
        """``(start, end)`` byte offsets into the buffer of each piece of ``page``."""
        self.check_page(page)
        start = page * self.page_stride
        return [(start + off, start + off + self.piece_nbytes) for off in self.piece_offsets]


def page_geometry(pool: Any) -> PageGeometry:
    """The ``PageGeometry`` of ``pool``'s pages (hicache's ``HostKVPool`` or SGLang's)."""
    buf: torch.Tensor = pool.kv_buffer
    page_num = int(pool.size) // int(pool.page_size) if hasattr(pool, "size") else 0
    if not page_num:
        page_num = int(pool.page_num)
    v0 = page_view(pool, 0)
    item = buf.element_size()
    shape, strides = list(v0.shape), list(v0.stride())
    # The longest run of trailing dims that is contiguous in memory is one piece.
    k = len(shape)
    expect = 1
    while k > 0 and (shape[k - 1] == 1 or strides[k - 1] == expect):
        expect *= shape[k - 1]
        k -= 1
    # K and V are always pieces of their own (stores keep them as two objects), also where a
    # pool happens to lay them back to back (a one-page pool).
    dims = [d for d in _buffer_dims(pool) if d != "page"]
    if "kv" in dims:
        k = max(k, dims.index("kv") + 1)
    piece_elems = math.prod(shape[k:])
    outer = shape[:k]
    offsets: list[int] = []
    base_off = v0.storage_offset() - buf.storage_offset()
    for flat in range(math.prod(outer)):
        off, rem = 0, flat
        for size, stride in zip(reversed(outer), reversed(strides[:k])):
            off += (rem % size) * stride
            rem //= size
        offsets.append(int(base_off + off) * item)
    if page_num > 1:
        v1 = page_view(pool, 1)
        stride = int(v1.storage_offset() - v0.storage_offset()) * item
    else:
        stride = piece_elems * item * len(offsets)
    return PageGeometry(
        base_ptr=buf.data_ptr(),
        page_num=page_num,
        page_size=int(pool.page_size),
        page_stride=stride,
        piece_offsets=tuple(offsets),
        piece_nbytes=piece_elems * item,
        buffer_nbytes=buf.numel() * item,
    )


def page_memoryviews(pool: Any, page: int, geometry: PageGeometry | None = None) -> list[memoryview]:
    """Writable byte views of the pieces of ``page``, in stored-byte order, without a copy.

    What file-like backends hand to ``readinto``/``preadv``/``pwritev``.
    """
    geo = geometry or page_geometry(pool)
    return [memoryview((ctypes.c_char * p.nbytes).from_address(p.ptr)).cast("B") for p in geo.pieces(page)]


def read_flat_page(pool: Any, page: int) -> torch.Tensor:
    """A flat copy of page ``page`` in stored-byte order (the pool's dtype)."""
    return page_view(pool, page).flatten().clone()


def write_flat_page(pool: Any, page: int, data: torch.Tensor) -> None:
    """Write a flat page (stored-byte order) into page ``page`` of ``pool``."""
    view = page_view(pool, page)
    if data.numel() * data.element_size() != view.numel() * view.element_size():
        raise ValueError(
            f"flat page has {data.numel() * data.element_size()} bytes, a page of this pool has "
            f"{view.numel() * view.element_size()}"
        )
    src = data.contiguous().view(-1)
    if src.dtype != view.dtype:
        src = src.view(torch.uint8).view(view.dtype)
    view.copy_(src.reshape(view.shape))
