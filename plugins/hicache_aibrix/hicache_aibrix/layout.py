"""How a hicache page maps onto an AIBrix block, byte for byte.

One AIBrix block holds K and V of ``block_ntokens`` tokens for the layers and heads of its
tensor spec, in one of AIBrix's layouts:

- NCLD: ``(tokens, 2, layers, heads, head_dim)``
- LCND: ``(layers, 2, tokens, heads, head_dim)``

What a page of the host pool is comes from the core, not from here:
``hicache_core.memory.pages.page_view(pool, p)`` is the page as a view in stored-byte order,
and ``page_format(pool).order`` names its dimensions (``kv``, ``layer``, ``token``, ``head``,
``dim``, in the pool's order). The mapper permutes those named dimensions into the block's
order (a view) and the data moves with one ``copy_``; a flat page (the flat-tensor path) is the
same stored-byte order, so it takes the same permutation and every path puts the same bytes in
the block. Copies run on ``uint8`` views (the head dimension counted in bytes) so every bit
pattern of every dtype survives, NaN payloads included.

Keys carry the pool's page format (``HiCacheStorage.page_key``), so a block is only ever read
back into a pool of the format that wrote it.
"""

from __future__ import annotations

from typing import Any

import torch

from hicache_core.memory.pages import page_format, page_geometry, page_view
from hicache_core.spec.errors import LayoutError

#: AIBrix's block layouts, as the core's dimension names, outermost first.
BLOCK_ORDERS: dict[str, tuple[str, ...]] = {
    "NCLD": ("token", "kv", "layer", "head", "dim"),
    "LCND": ("layer", "kv", "token", "head", "dim"),
}


class PageBlockMapper:
    """Views of hicache pages shaped like AIBrix blocks (bytes), for one host pool."""

    def __init__(self, pool: Any, block_layout: str) -> None:
        if block_layout not in BLOCK_ORDERS:
            raise ValueError(f"unknown AIBrix block layout {block_layout!r}; use NCLD or LCND")
        fmt = page_format(pool)
        if fmt.kind != "mha" or fmt.v_head_dim:
            raise LayoutError(
                "an AIBrix block holds K and V of one width (2 x layers x heads x head_dim per token); "
                f"this pool's pages are {fmt.tag()}: use an MLA-capable backend (file, mooncake, hf3fs, nixl)"
            )
        self.pool = pool
        self.block_layout = block_layout
        self.block_nbytes = page_geometry(pool).page_bytes
        shape = dict(zip(fmt.order, page_view(pool, 0).shape))
        shape["dim"] *= pool.kv_buffer.element_size()  # the head dimension in bytes
        #: The page's shape in stored-byte order, last dimension in bytes.
        self._page_shape_u8 = tuple(shape[d] for d in fmt.order)
        self._perm = tuple(fmt.order.index(d) for d in BLOCK_ORDERS[block_layout])
        self.block_shape_u8: tuple[int, ...] = tuple(shape[d] for d in BLOCK_ORDERS[block_layout])

    def pool_page(self, page: int) -> torch.Tensor:
        """Page number ``page`` of the pool, as a writable block-shaped byte view (no copy)."""
        return page_view(self.pool, page).view(torch.uint8).permute(self._perm)

    def flat_page(self, flat: torch.Tensor) -> torch.Tensor:
        """A flat page (stored-byte order) as a block-shaped byte view.

        Raises ``ValueError`` when the tensor is not one page of this pool.
        """
        data = flat.reshape(-1)
        if not data.is_contiguous():
            data = data.contiguous()
        raw = data.view(torch.uint8) if data.dtype != torch.uint8 else data
        if raw.numel() != self.block_nbytes:
            raise ValueError(
                f"a page of this pool is {self.block_nbytes} bytes, the tensor has {raw.numel()}"
            )
        return raw.view(self._page_shape_u8).permute(self._perm)

    def block_bytes(self, block: torch.Tensor) -> torch.Tensor:
        """An AIBrix block tensor (its dtype and shape) as the byte view ``copy_`` pairs with."""
        return block.view(torch.uint8).view(self.block_shape_u8)
