"""SGLang's own host pools and storage config, built on CPU the way SGLang builds them.

``MHATokenToKVPoolHost`` / ``MLATokenToKVPoolHost`` take the device pool's buffer description
(``MHABufferInfo`` / ``MLABufferInfo``); here that description is over CPU tensors, with
``pin_memory=False`` and ``device="cpu"`` (no accelerator). Sizing runs inside SGLang's
``host_memory_budget_scope`` so a pool of a few KiB is not checked against the machine's free
memory minus SGLang's 10 GiB reserve. Call ``sglang_env.require_sglang()`` first.
"""

from __future__ import annotations

from typing import Any

import torch

MHA_LAYOUTS = ("layer_first", "page_first", "page_first_direct", "page_head")
MLA_LAYOUTS = ("layer_first", "page_first", "page_first_direct")
#: (kind, layout) of every SGLang host pool whose pages hicache stores.
POOL_CASES = [("mha", layout) for layout in MHA_LAYOUTS] + [("mla", layout) for layout in MLA_LAYOUTS]

PAGE_SIZE, LAYERS, HEADS, HEAD_DIM = 4, 2, 2, 8
MLA_LORA, MLA_ROPE = 8, 8  # kv_cache_dim 16 (page_unified needs 16-byte rows; bf16 -> 32 bytes)
DEVICE_TOKENS = 64


def mha_buffer_info(page_size: int = PAGE_SIZE, layers: int = LAYERS, heads: int = HEADS,
                    head_dim: int = HEAD_DIM, dtype: torch.dtype = torch.bfloat16,
                    device_tokens: int = DEVICE_TOKENS) -> Any:
    from sglang.srt.mem_cache.device_pool_info import KVBufferLayout, KVBuffers, MHABufferInfo

    k = tuple(torch.zeros(device_tokens + page_size, heads, head_dim, dtype=dtype) for _ in range(layers))
    v = tuple(torch.zeros(device_tokens + page_size, heads, head_dim, dtype=dtype) for _ in range(layers))
    return MHABufferInfo(
        buffers=KVBuffers(
            k=k, v=v, layout=KVBufferLayout.NHD,
            k_data_ptrs=torch.tensor([t.data_ptr() for t in k], dtype=torch.uint64),
            v_data_ptrs=torch.tensor([t.data_ptr() for t in v], dtype=torch.uint64),
        ),
        page_size=page_size, head_num=heads, head_dim=head_dim, v_head_dim=head_dim, dtype=dtype,
        device=torch.device("cpu"),
    )


def mla_buffer_info(page_size: int = PAGE_SIZE, layers: int = LAYERS, dtype: torch.dtype = torch.bfloat16,
                    device_tokens: int = DEVICE_TOKENS) -> Any:
    from sglang.srt.mem_cache.device_pool_info import MLABufferInfo

    width = MLA_LORA + MLA_ROPE
    bufs = tuple(torch.zeros(device_tokens + page_size, 1, width, dtype=dtype) for _ in range(layers))
    return MLABufferInfo(
        buffers=bufs, data_ptrs=torch.tensor([t.data_ptr() for t in bufs], dtype=torch.uint64),
        layer_indices=tuple(range(layers)), device_layer_num=layers, page_size=page_size,
        kv_lora_rank=MLA_LORA, qk_rope_head_dim=MLA_ROPE, kv_cache_dim=width, dtype=dtype,
        device=torch.device("cpu"),
    )


def sglang_host_pool(kind: str, layout: str, ratio: float = 4.0, page_size: int = PAGE_SIZE,
                     dtype: torch.dtype = torch.bfloat16) -> Any:
    """SGLang's own ``MHATokenToKVPoolHost`` or ``MLATokenToKVPoolHost`` on CPU."""
    from sglang.srt.mem_cache.pool_host.base import host_memory_budget_scope

    common: dict[str, Any] = {
        "pin_memory": False, "device": "cpu", "device_capacity_tokens": DEVICE_TOKENS,
        "start_layer": 0, "end_layer": LAYERS,
    }
    with host_memory_budget_scope(1 << 30):
        if kind == "mha":
            from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost

            info = mha_buffer_info(page_size=page_size, dtype=dtype)
            return MHATokenToKVPoolHost(info, ratio, 0, page_size, layout, **common)
        from sglang.srt.mem_cache.pool_host.mla import MLATokenToKVPoolHost

        info = mla_buffer_info(page_size=page_size, dtype=dtype)
        return MLATokenToKVPoolHost(info, ratio, 0, page_size, layout, target_layer_num=LAYERS, **common)


def fill_pages(pool: Any, n: int, seed: int) -> tuple[torch.Tensor, list[bytes]]:
    """Allocate ``n`` pages of ``pool`` (SGLang's ``alloc``), fill them with random KV through
    SGLang's ``set_from_flat_data_page``; returns the host indices and each page's bytes as
    SGLang's ``get_data_page(flat=True)`` returns them."""
    idx = pool.alloc(n * pool.page_size)
    assert idx is not None, "host pool full"
    gen = torch.Generator().manual_seed(seed)
    expected: list[bytes] = []
    for i in range(n):
        start = int(idx[i * pool.page_size])
        numel = pool.get_data_page(start, flat=True).numel()
        page = torch.randn(numel, generator=gen).to(pool.dtype)
        pool.set_from_flat_data_page(start, page)
        expected.append(page_bytes(pool, start))
    return idx, expected


def page_bytes(pool: Any, start: int) -> bytes:
    """Page at token ``start`` as SGLang's own ``get_data_page(flat=True)`` returns it, in bytes."""
    return bytes(pool.get_data_page(start, flat=True).contiguous().view(torch.uint8).numpy().tobytes())


def read_pages(pool: Any, idx: torch.Tensor) -> list[bytes]:
    return [page_bytes(pool, int(idx[i])) for i in range(0, len(idx), pool.page_size)]


def sglang_storage_config(kind: str = "mha", layout: str = "page_first", **overrides: Any) -> Any:
    """SGLang's own ``HiCacheStorageConfig`` as its controller builds it for one rank."""
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig

    values: dict[str, Any] = {
        "tp_rank": 0, "tp_size": 1, "pp_rank": 0, "pp_size": 1, "attn_cp_rank": 0, "attn_cp_size": 1,
        "is_mla_model": kind == "mla", "enable_storage_metrics": False,
        "is_page_first_layout": layout == "page_first", "model_name": "sglang-real/model",
    }
    values.update(overrides)
    return HiCacheStorageConfig(**values)
