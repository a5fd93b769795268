"""vLLM's paged KV blocks <-> hicache pages in a host staging pool.

vLLM 0.32 hands a connector one tensor per attention layer, logically ``[blocks, H, N, C]``
(``KVCacheLayout`` ``LBHNC``: heads, then the block's ``N`` token slots, then ``C`` values).
What ``C`` holds is the attention backend's business. Each backend this module knows gets a
function that views a layer's tensor as separate K and V ``[blocks, H, N, D]``; for any other
backend the connector refuses to start its L3 path (no hits, nothing stored) rather than guess:

- ``CPU_ATTN`` (vLLM's CPU backend): per block and head, ``N`` rows of K then ``N`` rows of V
  (``cpu_attn.py`` views the block as ``(H, 2N, D)`` and chunks it in two).

The stored page is hicache's: the staging pool is a ``HostKVPool`` in ``page_first_direct``
layout, so a page's bytes are K then V, each ``layer, token, head, dim`` (format tag order
``clthd``), whatever vLLM's own block layout was. The format tag (dtype, layers, heads, head
dim, page size, order) is therefore the truth about the bytes, and ``pool_namespace`` names it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from hicache_core.memory.host_pool import HostKVPool

#: Attention backend name -> a function giving (K, V) views ``[blocks, H, N, D]`` of a layer.
KVSplit = Callable[[torch.Tensor, int, int], tuple[torch.Tensor, torch.Tensor]]


def _split_cpu_attn(layer: torch.Tensor, block_size: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    blocks, heads = layer.shape[0], layer.shape[1]
    kv = layer.view(blocks, heads, 2, block_size, head_dim)
    return kv[:, :, 0], kv[:, :, 1]


KV_SPLITS: dict[str, KVSplit] = {"CPU_ATTN": _split_cpu_attn}


class UnsupportedLayout(RuntimeError):
    """vLLM's KV cache is laid out in a way this connector cannot store faithfully."""


@dataclass(frozen=True)
class VllmKVLayout:
    """The geometry of one vLLM worker's KV cache, as far as the connector needs it."""

    attn_backend: str
    layer_names: tuple[str, ...]
    num_kv_heads: int
    head_size: int
    block_size: int
    dtype: torch.dtype

    @property
    def layer_num(self) -> int:
        return len(self.layer_names)

    @property
    def page_bytes(self) -> int:
        return 2 * self.layer_num * self.block_size * self.num_kv_heads * self.head_size * self.dtype.itemsize

    def check(self, head_size_v: int | None = None, is_mla: bool = False) -> None:
        """Raise ``UnsupportedLayout`` (saying why) unless pages can be stored faithfully."""
        if is_mla:
            raise UnsupportedLayout("MLA KV caches are not mapped yet (only MHA/GQA)")
        if head_size_v not in (None, self.head_size):
            raise UnsupportedLayout(f"V head size {head_size_v} differs from K's {self.head_size}")
        if self.attn_backend not in KV_SPLITS:
            raise UnsupportedLayout(
                f"attention backend {self.attn_backend!r} has no known K/V block layout "
                f"(known: {', '.join(sorted(KV_SPLITS))})"
            )
        if self.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise UnsupportedLayout(
                f"KV cache dtype {self.dtype} (quantized caches carry scales a page does not hold)"
            )

    def split(self, layer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of a layer's KV tensor, each ``[blocks, H, N, D]`` (views, no copy)."""
        return KV_SPLITS[self.attn_backend](layer, self.block_size, self.head_size)


def staging_pool(layout: VllmKVLayout, pages: int) -> HostKVPool:
    """A host pool of ``pages`` pages whose page format is this layout's (page = one block)."""
    return HostKVPool(
        size=pages * layout.block_size,
        page_size=layout.block_size,
        layer_num=layout.layer_num,
        head_num=layout.num_kv_heads,
        head_dim=layout.head_size,
        dtype=layout.dtype,
        layout="page_first_direct",
    )


def _index(ids: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.as_tensor(list(ids), dtype=torch.int64, device=device)


def blocks_to_staging(
    layout: VllmKVLayout, pool: HostKVPool, layer_idx: int, layer: torch.Tensor,
    block_ids: Sequence[int], pages: Sequence[int],
) -> None:
    """Copy layer ``layer_idx`` of vLLM blocks ``block_ids`` into staging pages ``pages``."""
    if not block_ids:
        return
    k, v = layout.split(layer)
    blocks = _index(block_ids, layer.device)
    dst = _index(pages, torch.device("cpu"))
    # kv_buffer: (2, pages, L, N, H, D); vLLM: (blocks, H, N, D) -> (blocks, N, H, D).
    pool.kv_buffer[0, dst, layer_idx] = k[blocks].transpose(1, 2).to("cpu")
    pool.kv_buffer[1, dst, layer_idx] = v[blocks].transpose(1, 2).to("cpu")


def staging_to_blocks(
    layout: VllmKVLayout, pool: HostKVPool, layer_idx: int, layer: torch.Tensor,
    block_ids: Sequence[int], pages: Sequence[int],
) -> None:
    """Copy layer ``layer_idx`` of staging pages ``pages`` into vLLM blocks ``block_ids``."""
    if not block_ids:
        return
    k, v = layout.split(layer)
    blocks = _index(block_ids, layer.device)
    src = _index(pages, torch.device("cpu"))
    k[blocks] = pool.kv_buffer[0, src, layer_idx].transpose(1, 2).to(layer.device)
    v[blocks] = pool.kv_buffer[1, src, layer_idx].transpose(1, 2).to(layer.device)
