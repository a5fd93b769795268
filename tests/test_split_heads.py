"""page_head pages shared across TP sizes: a TP-1 node and a TP-2 node read each other's pages."""

from __future__ import annotations

from pathlib import Path

import torch
from hicache_file.store import FileStore

from hicache_core import HiCacheStorageConfig, HostKVPool
from hicache_core.keys import page_hashes
from hicache_core.plugins.split_heads import SplitHeadsStorage, with_head_split

HEADS, PAGE, LAYERS, DIM = 4, 4, 3, 8


def _pool(heads: int, layout: str = "page_head") -> HostKVPool:
    return HostKVPool(16 * PAGE, PAGE, LAYERS, heads, DIM, dtype=torch.bfloat16, layout=layout, pin_memory=False)


def _open(root: Path, tp_rank: int, tp_size: int, pool: HostKVPool, lcm: int | None = None):
    extra = {"path": str(root)} | ({"tp_lcm_size": lcm} if lcm else {})
    cfg = with_head_split(HiCacheStorageConfig(model_name="m", tp_rank=tp_rank, tp_size=tp_size,
                                               extra_config=extra), pool)
    backend = SplitHeadsStorage(cfg, FileStore) if cfg.should_split_heads else FileStore(cfg)
    backend.register_mem_pool_host(pool)
    return backend


def _fill(pool: HostKVPool, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    pool.kv_buffer.copy_(torch.randn(pool.kv_buffer.shape, generator=gen).to(pool.dtype))


def test_tp1_pages_are_read_by_each_tp2_rank(tmp_path: Path) -> None:
    keys = page_hashes(list(range(3 * PAGE)), PAGE)
    whole = _pool(HEADS)
    _fill(whole, 1)
    writer = _open(tmp_path, 0, 1, whole, lcm=2)
    assert isinstance(writer, SplitHeadsStorage)
    src = whole.pages_to_indices([5, 1, 9])
    assert writer.batch_set_v1(keys, src) == [True] * 3
    for rank in (0, 1):
        half = _pool(HEADS // 2)
        reader = _open(tmp_path, rank, 2, half)
        dst = half.pages_to_indices([2, 7, 0])
        assert reader.batch_get_v1(keys, dst) == [True] * 3
        for s, d in zip([5, 1, 9], [2, 7, 0]):
            # page_head pages are (kv, head, token, layer, dim): this rank's heads of the TP-1 page.
            expect = whole.read_page(s).view(2, HEADS, -1)[:, rank * 2 : rank * 2 + 2]
            assert torch.equal(half.read_page(d).view(2, 2, -1), expect)


def test_tp2_ranks_pages_are_read_whole_by_a_tp1_node(tmp_path: Path) -> None:
    keys = page_hashes(list(range(100, 100 + 2 * PAGE)), PAGE)
    halves = []
    for rank in (0, 1):
        half = _pool(HEADS // 2)
        _fill(half, 10 + rank)
        assert _open(tmp_path, rank, 2, half).batch_set_v1(keys, half.pages_to_indices([3, 4])) == [True, True]
        halves.append(half)
    whole = _pool(HEADS)
    reader = _open(tmp_path, 0, 1, whole, lcm=2)
    assert reader.batch_exists(keys) == 2
    assert reader.batch_get_v1(keys, whole.pages_to_indices([0, 6])) == [True, True]
    for src, dst in zip([3, 4], [0, 6]):
        expect = torch.cat([h.read_page(src).view(2, 2, -1) for h in halves], dim=1)
        assert torch.equal(whole.read_page(dst).view(2, HEADS, -1), expect)
    # The flat-tensor path reads the same bytes as v1.
    target = whole.get_dummy_flat_data_page()
    assert reader.get(keys[0], target) is not None
    assert torch.equal(target, whole.read_page(0))


def test_a_half_written_page_is_a_miss_not_a_partial_hit(tmp_path: Path) -> None:
    keys = page_hashes(list(range(200, 200 + PAGE)), PAGE)
    half = _pool(HEADS // 2)
    _fill(half, 3)
    assert _open(tmp_path, 0, 2, half).batch_set_v1(keys, half.pages_to_indices([1])) == [True]
    whole = _pool(HEADS)
    reader = _open(tmp_path, 0, 1, whole, lcm=2)
    assert reader.batch_exists(keys) == 0
    assert reader.batch_get_v1(keys, whole.pages_to_indices([2])) == [False]


def test_no_split_without_page_head_or_for_mla() -> None:
    cfg = HiCacheStorageConfig(tp_size=1, extra_config={"tp_lcm_size": 2})
    assert not with_head_split(cfg, _pool(HEADS, "page_first")).should_split_heads
    mla = HiCacheStorageConfig(tp_size=1, is_mla_model=True, extra_config={"tp_lcm_size": 2})
    assert not with_head_split(mla, _pool(HEADS)).should_split_heads
    assert with_head_split(cfg, _pool(HEADS)).should_split_heads


def test_the_factory_splits_when_tp_lcm_size_asks(tmp_path: Path) -> None:
    from hicache_core import create_backend

    whole = _pool(HEADS)
    _fill(whole, 7)
    keys = page_hashes(list(range(300, 300 + PAGE)), PAGE)
    cfg = HiCacheStorageConfig(model_name="m", extra_config={"path": str(tmp_path), "tp_lcm_size": 2})
    backend = create_backend("file", cfg)
    assert isinstance(backend, SplitHeadsStorage) and len(backend.groups) == 2
    assert type(backend).capabilities.persistent  # the groups' backend's capabilities
    backend.register_mem_pool_host(whole)
    assert backend.batch_set_v1(keys, whole.pages_to_indices([4])) == [True]
    half = _pool(HEADS // 2)
    reader = create_backend("file", HiCacheStorageConfig(model_name="m", tp_rank=1, tp_size=2,
                                                         extra_config={"path": str(tmp_path)}), half)
    assert reader.batch_get_v1(keys, half.pages_to_indices([0])) == [True]
    assert torch.equal(half.read_page(0).view(2, 2, -1), whole.read_page(4).view(2, HEADS, -1)[:, 2:])
    # Another layout with tp_lcm_size is refused at registration, saying what to do.
    other = create_backend("file", cfg)
    try:
        other.register_mem_pool_host(_pool(HEADS, "page_first"))
        raise AssertionError("a page_first pool was accepted for head splitting")
    except Exception as exc:
        assert "page_head" in str(exc)
    finally:
        other.close()
