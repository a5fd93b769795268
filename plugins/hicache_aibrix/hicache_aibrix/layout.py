"""How a hicache page maps onto an AIBrix block, byte for byte.

One AIBrix block holds the KV of ``block_ntokens`` tokens for the layers and heads of its
tensor spec, in one of AIBrix's layouts:

- NCLD: ``(tokens, 2, layers, heads, head_dim)``
- LCND: ``(layers, 2, tokens, heads, head_dim)``

hicache's host pool holds a page in its own layout (see ``hicache_core.memory.host_pool``):

- ``layer_first``: the page is ``(2, layers, tokens, heads, head_dim)`` (K/V outermost)
- ``page_first``: ``(2, tokens, layers, heads, head_dim)``
- ``page_first_direct``: ``(2, 1, layers, tokens, heads, head_dim)``

All three are strided views of the pool, so a page is brought to the block layout with
``permute`` (a view) and moved with one ``copy_``. Copies run on ``uint8`` views (the head
dimension counted in bytes) so every bit pattern of every dtype survives, NaN payloads
included. Because the stored bytes follow AIBrix's block layout, a page written from a
``page_first`` pool reads back correctly into a ``layer_first`` one.
"""

from __future__ import annotations

import torch

from hicache_core.memory.host_pool import HostKVPool


class PageBlockMapper:
    """Views of hicache pages shaped like AIBrix blocks (bytes), for one host pool."""

    def __init__(self, pool: HostKVPool, block_layout: str) -> None:
        if block_layout not in ("NCLD", "LCND"):
            raise ValueError(f"unknown AIBrix block layout {block_layout!r}")
        self.pool = pool
        self.block_layout = block_layout
        L, H, P = pool.layer_num, pool.head_num, pool.page_size
        self._row_bytes = pool.head_dim * pool.itemsize
        # The shape of one page as the pool's flat page is laid out, last dim in bytes.
        self._page_shape_u8: tuple[int, ...] = {
            "layer_first": (2, L, P, H, self._row_bytes),
            "page_first": (2, P, L, H, self._row_bytes),
            "page_first_direct": (2, 1, L, P, H, self._row_bytes),
        }[pool.layout]
        self.block_shape_u8: tuple[int, ...] = (
            (P, 2, L, H, self._row_bytes) if block_layout == "NCLD" else (L, 2, P, H, self._row_bytes)
        )

    @property
    def block_nbytes(self) -> int:
        return self.pool.page_bytes

    def _to_block(self, page_u8: torch.Tensor) -> torch.Tensor:
        """A view of a page (in the pool's layout, bytes) in the block layout."""
        layout = self.pool.layout
        if layout == "page_first":
            canon = page_u8.transpose(1, 2)  # -> (2, L, P, H, Db)
        elif layout == "page_first_direct":
            canon = page_u8[:, 0]  # -> (2, L, P, H, Db)
        else:
            canon = page_u8
        if self.block_layout == "NCLD":
            return canon.permute(2, 0, 1, 3, 4)
        return canon.permute(1, 0, 2, 3, 4)

    def pool_page(self, page: int) -> torch.Tensor:
        """Page number ``page`` of the pool, as a writable block-shaped byte view (no copy)."""
        view = self.pool.get_data_page(page * self.pool.page_size, flat=False)
        return self._to_block(view.view(torch.uint8))

    def flat_page(self, flat: torch.Tensor) -> torch.Tensor:
        """A flat page (``get_data_page(flat=True)`` order) as a block-shaped byte view.

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
        return self._to_block(raw.view(self._page_shape_u8))

    def block_bytes(self, block: torch.Tensor) -> torch.Tensor:
        """An AIBrix block tensor (its dtype and shape) as the byte view ``copy_`` pairs with."""
        return block.view(torch.uint8).view(self.block_shape_u8)
