"""One meaning per stored page, against a real master: every path stores the same bytes, and a
page from an incompatible pool (layout order, dtype, TP rank/size, attention-CP rank, PP,
model) is a miss. Mooncake checks only sizes, so the key namespace is the protection here."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from hicache_mooncake.store import MooncakeStore

from hicache_core import HiCacheStorageConfig
from hicache_core.memory.host_pool import HostKVPool
from hicache_core.memory.pages import page_format, page_view

PAGE, LAYERS, HEADS, DIM = 16, 3, 2, 8
MHA_LAYOUTS = ("layer_first", "page_first", "page_first_direct", "page_head")
MLA_LAYOUTS = ("layer_first", "page_first", "page_first_direct")
#: The logical order of a page's KV, to compare pools of different layouts.
MHA_LOGICAL = ("kv", "layer", "token", "head", "dim")
MLA_LOGICAL = ("layer", "token", "head", "dim")


def _pool(layout: str, is_mla: bool = False, dtype: torch.dtype = torch.bfloat16, heads: int = HEADS) -> HostKVPool:
    return HostKVPool(16 * PAGE, PAGE, LAYERS, heads, DIM, dtype, layout, is_mla)


def _keys(n: int) -> list[str]:
    run = uuid.uuid4().hex
    return [f"{run[:16]}{i:048x}" for i in range(n)]


def _logical(pool: HostKVPool, page: int) -> torch.Tensor:
    """Page ``page``'s KV in one fixed dimension order, whatever the pool's layout."""
    order = page_format(pool).order
    logical = MLA_LOGICAL if pool.is_mla else MHA_LOGICAL
    return page_view(pool, page).permute([order.index(d) for d in logical]).contiguous()


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Byte equality (random bytes hold NaNs, which ``torch.equal`` calls unequal)."""
    return a.shape == b.shape and torch.equal(a.contiguous().view(-1).view(torch.uint8), b.contiguous().view(-1).view(torch.uint8))


def _fill_logical(pool: HostKVPool, page: int, kv: torch.Tensor) -> None:
    order = page_format(pool).order
    logical = MLA_LOGICAL if pool.is_mla else MHA_LOGICAL
    page_view(pool, page).copy_(kv.permute([logical.index(d) for d in order]))


def _random_kv(pool: HostKVPool, seed: int) -> torch.Tensor:
    shape = _logical(pool, 0).shape
    raw = torch.randint(0, 256, (pool.page_bytes,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return raw.view(pool.dtype).view(shape)


@pytest.fixture
def open_store(mooncake_config: Callable[..., HiCacheStorageConfig]) -> Iterator[Callable[..., MooncakeStore]]:
    opened: list[MooncakeStore] = []

    def _open(pool: HostKVPool | None = None, **fields: Any) -> MooncakeStore:
        store = MooncakeStore(mooncake_config(None, is_mla_model=bool(pool is not None and pool.is_mla), **fields))
        opened.append(store)
        if pool is not None:
            store.register_mem_pool_host(pool)
        return store

    yield _open
    for s in opened:
        s.close()


@pytest.mark.parametrize("is_mla", [False, True])
@pytest.mark.parametrize("layout", MHA_LAYOUTS)
def test_every_path_stores_the_same_bytes(open_store: Callable[..., MooncakeStore], layout: str, is_mla: bool) -> None:
    """v1 write -> flat read, flat write -> v1 read, and the flat page is the pool's own."""
    if is_mla and layout not in MLA_LAYOUTS:
        pytest.skip("page_head is an MHA layout")
    pool = _pool(layout, is_mla)
    store = open_store(pool)
    k_v1, k_flat = _keys(2)
    _fill_logical(pool, 5, _random_kv(pool, 1))
    v1_bytes = pool.get_data_page(5 * PAGE, flat=True)
    assert store.batch_set_v1([k_v1], pool.pages_to_indices([5])) == [True]
    got = store.get(k_v1)
    assert got is not None and torch.equal(got.view(torch.uint8), v1_bytes.view(torch.uint8))

    flat = _random_kv(pool, 2)
    _fill_logical(pool, 6, flat)
    assert store.set(k_flat, pool.get_data_page(6 * PAGE, flat=True)) is True
    assert store.batch_get_v1([k_flat], pool.pages_to_indices([9])) == [True]
    assert _same(_logical(pool, 9), flat)
    # batch_get into caller tensors: the same bytes again
    dest = [pool.get_dummy_flat_data_page(), pool.get_dummy_flat_data_page()]
    out = store.batch_get([k_v1, k_flat], dest)
    assert out[0] is dest[0] and torch.equal(dest[0].view(torch.uint8), v1_bytes.view(torch.uint8))
    assert out[1] is dest[1] and _same(dest[1], pool.get_data_page(6 * PAGE, flat=True))


@pytest.mark.parametrize("is_mla", [False, True])
def test_each_layout_reads_each_other_as_the_same_kv_or_a_miss(open_store: Callable[..., MooncakeStore], is_mla: bool) -> None:
    """``layer_first`` and ``page_first_direct`` pages are the same bytes (one format tag): they
    share pages and read the same logical KV; every other pair is a miss, never a wrong hit."""
    layouts = MLA_LAYOUTS if is_mla else MHA_LAYOUTS
    pools = {layout: _pool(layout, is_mla) for layout in layouts}
    stores = {layout: open_store(pool) for layout, pool in pools.items()}
    for w, writer in stores.items():
        (key,) = _keys(1)
        kv = _random_kv(pools[w], 10)
        _fill_logical(pools[w], 1, kv)
        assert writer.batch_set_v1([key], pools[w].pages_to_indices([1])) == [True]
        for r, reader in stores.items():
            pool = pools[r]
            page_view(pool, 2).zero_()
            same = page_format(pool).tag() == page_format(pools[w]).tag()
            assert reader.exists(key) is same, (w, r)
            assert reader.batch_get_v1([key], pool.pages_to_indices([2])) == [same], (w, r)
            if same:
                assert _same(_logical(pool, 2), kv), (w, r)
            else:
                assert not bool(_logical(pool, 2).view(torch.uint8).any()), (w, r)  # untouched
            assert (reader.get(key) is not None) is same, (w, r)
    shared = {lay for lay in layouts if lay in ("layer_first", "page_first_direct")}
    assert len({page_format(pools[lay]).tag() for lay in shared}) == 1


@pytest.mark.parametrize(
    ("what", "writer", "reader"),
    [
        ("dtype", {"dtype": torch.bfloat16}, {"dtype": torch.float16}),
        ("tp rank", {"tp_rank": 0, "tp_size": 2}, {"tp_rank": 1, "tp_size": 2}),
        ("tp size", {"tp_rank": 0, "tp_size": 2}, {"tp_rank": 0, "tp_size": 4}),
        ("attention cp rank", {"attn_cp_rank": 0, "attn_cp_size": 2}, {"attn_cp_rank": 1, "attn_cp_size": 2}),
        ("pp rank", {"pp_rank": 0, "pp_size": 2}, {"pp_rank": 1, "pp_size": 2}),
        ("model", {"model_name": "org/model-a"}, {"model_name": "org/model-b"}),
        ("layout order", {"layout": "page_first"}, {"layout": "page_first_direct"}),
        ("page_head order", {"layout": "page_head"}, {"layout": "page_first"}),
    ],
)
def test_an_incompatible_pool_is_a_miss(open_store: Callable[..., MooncakeStore], what: str, writer: dict[str, Any], reader: dict[str, Any]) -> None:
    """Same page size in bytes on both sides (the case Mooncake's size check cannot catch)."""

    def side(opts: dict[str, Any]) -> tuple[MooncakeStore, HostKVPool]:
        opts = dict(opts)
        pool = _pool(opts.pop("layout", "page_first"), dtype=opts.pop("dtype", torch.bfloat16))
        return open_store(pool, **opts), pool

    (w, wpool), (r, rpool) = side(writer), side(reader)
    assert wpool.page_bytes == rpool.page_bytes
    keys = _keys(3)
    idx = wpool.pages_to_indices([0, 1, 2])
    for p in range(3):
        _fill_logical(wpool, p, _random_kv(wpool, 20 + p))
    assert w.batch_set_v1(keys, idx) == [True] * 3
    assert w.batch_exists(keys) == 3
    assert r.namespace != w.namespace, what
    assert r.batch_exists(keys) == 0, what
    assert r.batch_get_v1(keys, rpool.pages_to_indices([3, 4, 5])) == [False] * 3, what
    assert r.batch_get(keys) == [None] * 3, what
    assert not bool(rpool.kv_buffer.view(torch.uint8).any()), what


def test_flat_pages_without_a_pool_live_in_their_own_namespace(open_store: Callable[..., MooncakeStore]) -> None:
    """Before a pool is registered the store cannot name the page format: such pages go under
    the ``flat`` namespace, which no pool's pages share."""
    bare = open_store()
    pool = _pool("page_first")
    with_pool = open_store(pool)
    (key,) = _keys(1)
    page = _random_kv(pool, 30).reshape(-1)
    assert ".flat." in bare.namespace
    assert bare.set(key, page) is True
    got = bare.get(key)
    assert got is not None and torch.equal(got.view(torch.uint8), page.view(torch.uint8))
    assert with_pool.exists(key) is False
    assert with_pool.batch_get_v1([key], pool.pages_to_indices([0])) == [False]
