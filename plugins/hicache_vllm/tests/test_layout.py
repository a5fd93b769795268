"""vLLM blocks <-> hicache staging pages: every value lands where the page format says.

The layer tensor is built the way vLLM's CPU attention reads it (per block and head: N rows of
K, then N rows of V); each value encodes (kv, head, token, dim, block) so a misplaced value is
caught, and the staging page is read through the core's ``page_view`` (stored-byte order).
"""

from __future__ import annotations

import pytest
import torch
from hicache_vllm.layout import (
    UnsupportedLayout,
    VllmKVLayout,
    blocks_to_staging,
    staging_pool,
    staging_to_blocks,
)

from hicache_core.memory.pages import page_format, page_view

H, N, D, BLOCKS = 2, 4, 3, 5


def _layout(**kw: object) -> VllmKVLayout:
    args: dict[str, object] = dict(attn_backend="CPU_ATTN", layer_names=("l0", "l1"), num_kv_heads=H,
                                   head_size=D, block_size=N, dtype=torch.float32)
    args.update(kw)
    return VllmKVLayout(**args)  # type: ignore[arg-type]


def _label(kv: int, h: int, t: int, d: int, block: int, layer: int) -> float:
    return float(layer * 100000 + block * 10000 + kv * 1000 + h * 100 + t * 10 + d)


def _cpu_layer(layer: int) -> torch.Tensor:
    """A layer tensor [blocks, H, N, 2D] laid out as cpu_attn.py reads it."""
    t = torch.empty(BLOCKS, H, 2 * N, D)
    for b in range(BLOCKS):
        for h in range(H):
            for kv in range(2):
                for tok in range(N):
                    for d in range(D):
                        t[b, h, kv * N + tok, d] = _label(kv, h, tok, d, b, layer)
    return t.view(BLOCKS, H, N, 2 * D)


def test_blocks_to_staging_puts_each_value_in_stored_order() -> None:
    layout = _layout()
    pool = staging_pool(layout, pages=3)
    layers = [_cpu_layer(0), _cpu_layer(1)]
    blocks, pages = [4, 1], [2, 0]
    for i, layer in enumerate(layers):
        blocks_to_staging(layout, pool, i, layer, blocks, pages)
    for block, page in zip(blocks, pages):
        view = page_view(pool, page)  # (kv, layer, token, head, dim)
        assert tuple(view.shape) == (2, 2, N, H, D)
        for kv in range(2):
            for layer in range(2):
                for tok in range(N):
                    for h in range(H):
                        for d in range(D):
                            assert view[kv, layer, tok, h, d].item() == _label(kv, h, tok, d, block, layer)
    fmt = page_format(pool)
    assert fmt.tag() == f"mha-fp32-l2h{H}d{D}-p{N}-clthd"


def test_staging_to_blocks_round_trip_touches_only_target_blocks() -> None:
    layout = _layout()
    pool = staging_pool(layout, pages=2)
    src = [_cpu_layer(0), _cpu_layer(1)]
    for i, layer in enumerate(src):
        blocks_to_staging(layout, pool, i, layer, [3, 0], [1, 0])
    dst = [torch.full_like(src[0], -1.0), torch.full_like(src[1], -1.0)]
    for i, layer in enumerate(dst):
        staging_to_blocks(layout, pool, i, layer, [2, 4], [1, 0])  # block 3 -> 2, block 0 -> 4
    for i in range(2):
        assert torch.equal(dst[i][2], src[i][3]) and torch.equal(dst[i][4], src[i][0])
        for untouched in (0, 1, 3):
            assert bool((dst[i][untouched] == -1).all())


@pytest.mark.parametrize(
    ("kw", "check", "why"),
    [
        ({"attn_backend": "FLASH_ATTN"}, {}, "no known K/V block layout"),
        ({}, {"head_size_v": 7}, "V head size"),
        ({}, {"is_mla": True}, "MLA"),
        ({"dtype": torch.uint8}, {}, "quantized"),
    ],
)
def test_layouts_it_cannot_store_faithfully_are_refused(kw: dict, check: dict, why: str) -> None:
    with pytest.raises(UnsupportedLayout, match=why):
        _layout(**kw).check(**check)
    _layout().check(head_size_v=D)  # the CPU layout itself is fine
