"""hicache's SGLang-shaped pieces, compared with the real SGLang 0.5.23 field by field.

- ``HiCacheStorageConfig``: the same fields in the same order with the same defaults, the same
  DCP validation and ``is_storage_writer``; ``namespace_suffix()`` is ``HiCacheFile``'s suffix.
- Page keys: ``hicache_core.keys`` gives SGLang's hash chain, byte for byte.
- Host pools: hicache's ``HostKVPool`` and SGLang's pool of the same geometry have the same
  ``kv_buffer`` shape, the same ``get_page_buffer_meta`` (relative to the buffer), the same flat
  pages, and the same page format tag, so their pages share one key namespace.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from sglang_real.sglang_env import require_sglang

require_sglang()

from sglang.srt.mem_cache.hicache_storage import HiCacheFile  # noqa: E402
from sglang.srt.mem_cache.hicache_storage import HiCacheStorageConfig as SGLangConfig  # noqa: E402
from sglang.srt.mem_cache.utils import get_hash_str as sglang_hash  # noqa: E402
from sglang_real.sglang_pools import POOL_CASES, sglang_host_pool, sglang_storage_config  # noqa: E402

from hicache_core import HiCacheStorageConfig, HostKVPool  # noqa: E402
from hicache_core.keys import get_hash_str, page_hashes, pool_namespace  # noqa: E402
from hicache_core.memory.pages import page_format  # noqa: E402


def test_config_fields_order_and_defaults_are_sglangs() -> None:
    ours, theirs = dataclasses.fields(HiCacheStorageConfig), dataclasses.fields(SGLangConfig)
    assert [f.name for f in ours] == [f.name for f in theirs]
    for a, b in zip(ours, theirs):
        if b.default is not dataclasses.MISSING:
            assert a.default == b.default, a.name
    positional = (1, 4, 0, 2, 0, 1, False, True, False, "org/m")
    assert dataclasses.astuple(HiCacheStorageConfig(*positional)) == dataclasses.astuple(SGLangConfig(*positional))


@pytest.mark.parametrize("kw", [
    {"dcp_size": 0}, {"dcp_size": 2, "dcp_rank": 2}, {"dcp_size": 2, "is_mla_model": False},
    {"dcp_size": 2, "is_mla_model": True, "tp_size": 3, "logical_page_size": 64},
    {"dcp_size": 2, "is_mla_model": True, "tp_size": 2, "tp_rank": 1, "dcp_rank": 0, "logical_page_size": 64},
    {"dcp_size": 2, "is_mla_model": True, "tp_size": 2, "logical_page_size": 63},
    {"dcp_size": 2, "is_mla_model": True, "tp_size": 2, "logical_page_size": None},
])
def test_config_refuses_what_sglang_refuses(kw: dict[str, object]) -> None:
    base = sglang_storage_config()
    with pytest.raises(ValueError):
        SGLangConfig(**{**dataclasses.asdict(base), **kw})
    with pytest.raises(ValueError):
        HiCacheStorageConfig(**{**dataclasses.asdict(base), **kw})


def test_storage_writer_and_file_suffix_match_sglang(tmp_path: Path) -> None:
    grid = [
        {"is_mla_model": False, "tp_rank": 1, "tp_size": 2},
        {"is_mla_model": True, "tp_rank": 1, "tp_size": 2},
        {"is_mla_model": False, "pp_rank": 1, "pp_size": 2},
        {"is_mla_model": True, "attn_cp_rank": 1, "attn_cp_size": 2},
        {"is_mla_model": True, "tp_rank": 3, "tp_size": 4, "dcp_size": 2, "dcp_rank": 1, "logical_page_size": 64},
        {"is_mla_model": False, "model_name": None},
    ]
    for kw in grid:
        theirs = sglang_storage_config(**kw, extra_config={"file_storage_path": str(tmp_path)})
        ours = HiCacheStorageConfig.from_any(theirs)
        assert ours.is_storage_writer == theirs.is_storage_writer, kw
        assert ours.namespace_suffix() == HiCacheFile(theirs).config_suffix, kw


def test_page_hashes_are_sglangs() -> None:
    tokens = list(range(7, 7 + 64))
    assert get_hash_str(tokens[:16]) == sglang_hash(tokens[:16])
    prior = sglang_hash(tokens[:16])
    assert get_hash_str(tokens[16:32], prior) == sglang_hash(tokens[16:32], prior)
    assert page_hashes(tokens, 16) == sglang_hash(tokens, None, page_size=16)


@pytest.mark.parametrize(("kind", "layout"), POOL_CASES, ids=[f"{k}-{lay}" for k, lay in POOL_CASES])
def test_host_pool_matches_sglangs(kind: str, layout: str) -> None:
    theirs = sglang_host_pool(kind, layout)
    ours = HostKVPool(size=theirs.size, page_size=theirs.page_size, layer_num=theirs.layer_num,
                      head_num=1 if kind == "mla" else theirs.head_num,
                      head_dim=theirs.kv_cache_dim if kind == "mla" else theirs.head_dim,
                      dtype=theirs.dtype, layout=layout, is_mla=kind == "mla", pin_memory=False,
                      **({"kv_lora_rank": theirs.kv_lora_rank, "qk_rope_head_dim": theirs.qk_rope_head_dim}
                         if kind == "mla" else {}))
    assert tuple(ours.kv_buffer.shape) == tuple(theirs.kv_buffer.shape)
    assert ours.get_size_per_token() == theirs.get_size_per_token()
    assert ours.get_ksize_per_token() == theirs.get_ksize_per_token()
    gen = torch.Generator().manual_seed(3)
    theirs.kv_buffer.copy_(torch.randn(theirs.kv_buffer.shape, generator=gen).to(theirs.dtype))
    ours.kv_buffer.copy_(theirs.kv_buffer)
    idx = torch.arange(2 * theirs.page_size, 4 * theirs.page_size, dtype=torch.int64)
    their_ptrs, their_sizes = theirs.get_page_buffer_meta(idx)
    our_ptrs, our_sizes = ours.get_page_buffer_meta(idx)
    assert our_sizes == their_sizes
    assert [p - ours.kv_buffer.data_ptr() for p in our_ptrs] == [p - theirs.kv_buffer.data_ptr() for p in their_ptrs]
    for start in (0, theirs.page_size, 5 * theirs.page_size):
        assert torch.equal(ours.get_data_page(start, flat=True), theirs.get_data_page(start, flat=True))
    page = theirs.get_data_page(0, flat=True).clone()
    ours.set_from_flat_data_page(3 * ours.page_size, page)
    theirs.set_from_flat_data_page(3 * theirs.page_size, page)
    assert torch.equal(ours.kv_buffer, theirs.kv_buffer)
    assert ours.get_dummy_flat_data_page().shape == theirs.get_dummy_flat_data_page().shape
    assert page_format(ours).tag() == page_format(theirs).tag()
    cfg = HiCacheStorageConfig(model_name="org/m", is_mla_model=kind == "mla")
    assert pool_namespace(cfg, ours) == pool_namespace(cfg, theirs), "one key namespace for both pools"
