"""One meaning per stored page, for the AIBrix backend (issue 13).

Every path puts the same bytes in the AIBrix block: the core's page
(``hicache_core.memory.pages``) in AIBrix's block layout. A page written through zero-copy v1
reads back byte-equal through the flat-tensor ``get``/``batch_get`` and the reverse, in
``layer_first`` (K of every layer, then V) and ``page_first``, through AIBrix's memory cache
and its RocksDB connector. A page written from a pool of another dtype, byte order, TP rank or
model is a miss, and the reader's page is left alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("aibrix_kvcache", reason="aibrix-kvcache is not installed: pip install -e plugins/hicache_aibrix")
import torch
from hicache_aibrix.store import AIBrixStore

from hicache_core import HiCacheStorageConfig, HostKVPool
from hicache_core.memory.pages import page_format, page_view, read_flat_page
from hicache_core.testing.pages import fill_random_pages, read_page_bytes, tensor_bytes

LAYOUTS = ["layer_first", "page_first"]
Open = Callable[..., tuple[AIBrixStore, HostKVPool]]


def make_pool(layout: str = "page_first", dtype: torch.dtype = torch.bfloat16) -> HostKVPool:
    return HostKVPool(size=32 * 16, page_size=16, layer_num=3, head_num=2, head_dim=8, dtype=dtype, layout=layout)


@pytest.fixture(params=["memory", "ROCKSDB"])
def open_store(request: pytest.FixtureRequest, aibrix_config: Callable[..., HiCacheStorageConfig]) -> Iterator[Open]:
    """Open stores on one AIBrix store (L1 memory, or RocksDB with L1 off so reads reach it)."""
    extra: dict[str, Any] = {"l2_backend": "none"} if request.param == "memory" else {
        "l2_backend": "ROCKSDB", "l1_enabled": False}
    opened: list[AIBrixStore] = []

    def _open(pool: HostKVPool, **config: Any) -> tuple[AIBrixStore, HostKVPool]:
        base = aibrix_config(**extra)
        cfg = HiCacheStorageConfig(model_name=config.pop("model_name", base.model_name),
                                   extra_config=base.extra_config, **config)
        store = AIBrixStore(cfg)
        opened.append(store)
        store.register_mem_pool_host(pool)
        return store, pool

    yield _open
    for store in opened:
        store.close()


def _block_bytes(store: AIBrixStore, key: str) -> bytes:
    """The bytes AIBrix holds for ``key``, read from its block past the backend."""
    _, handle = store._manager.acquire(None, store._hashes([key])).get()
    try:
        return tensor_bytes(handle.to_tensors()[0])
    finally:
        handle.release()


def _as_block(pool: HostKVPool, page: int) -> bytes:
    """What the block of ``page`` must hold: the core's page view, dims put in NCLD order."""
    order = page_format(pool).order
    view = page_view(pool, page).permute(*(order.index(d) for d in ("token", "kv", "layer", "head", "dim")))
    return tensor_bytes(view.contiguous())


@pytest.mark.parametrize("layout", LAYOUTS)
def test_v1_write_reads_back_through_the_tensor_path(open_store: Open, layout: str) -> None:
    store, pool = open_store(make_pool(layout))
    idx, expected = fill_random_pages(pool, 3, seed=1)
    keys = ["v1a", "v1b", "v1c"]
    assert store.batch_set_v1(keys, idx) == [True] * 3
    pages = pool.indices_to_pages(idx)
    if store.settings.l1_enabled:  # the L1 block is the page in AIBrix's NCLD layout
        assert [_block_bytes(store, k) for k in keys] == [_as_block(pool, p) for p in pages]
    got = store.batch_get(keys, [pool.get_dummy_flat_data_page() for _ in keys])
    assert [tensor_bytes(t) if t is not None else None for t in got] == expected
    one = store.get(keys[2])  # no target: a page tensor of the pool's dtype
    assert one is not None and one.dtype == pool.dtype and tensor_bytes(one) == expected[2]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_tensor_write_reads_back_through_v1(open_store: Open, layout: str) -> None:
    store, pool = open_store(make_pool(layout))
    src, expected = fill_random_pages(pool, 3, seed=2)
    flat = [read_flat_page(pool, p) for p in pool.indices_to_pages(src)]
    assert store.set("t0", flat[0]) is True
    assert store.batch_set(["t1", "t2"], flat[1:]) is True
    dest = pool.alloc(3 * pool.page_size)
    assert dest is not None
    assert store.batch_get_v1(["t0", "t1", "t2"], dest) == [True] * 3
    assert read_page_bytes(pool, dest) == expected


@pytest.mark.parametrize(
    ("layout", "dtype", "config"),
    [
        ("page_first", torch.float16, {}),  # same page size, other dtype
        ("layer_first", torch.bfloat16, {}),  # same page size, other byte order
        ("page_first", torch.bfloat16, {"tp_rank": 1, "tp_size": 2}),  # another TP shard
        ("page_first", torch.bfloat16, {"model_name": "other-model"}),
    ],
    ids=["dtype", "layout", "tp_rank", "model"],
)
def test_a_page_of_an_incompatible_pool_is_a_miss(open_store: Open, layout: str, dtype: torch.dtype,
                                                  config: dict[str, Any]) -> None:
    writer, wpool = open_store(make_pool("page_first"))
    idx, _ = fill_random_pages(wpool, 2, seed=3)
    assert writer.batch_set_v1(["x0", "x1"], idx) == [True, True]
    if writer.settings.connector:
        writer.close()  # RocksDB: one process-wide opener at a time; the pages stay stored
    reader, pool = open_store(make_pool(layout, dtype), **config)
    dest, before = fill_random_pages(pool, 2, seed=4)
    assert reader.exists_many(["x0", "x1"]) == [False, False]
    assert reader.batch_exists(["x0", "x1"]) == 0
    assert reader.batch_get_v1(["x0", "x1"], dest) == [False, False]
    assert read_page_bytes(pool, dest) == before  # a miss leaves the page alone
    assert reader.get("x0", pool.get_dummy_flat_data_page()) is None
    if writer.settings.connector:
        reader.close()
        again, _ = open_store(make_pool("page_first"))
        assert again.exists_many(["x0", "x1"]) == [True, True]  # the miss was the namespace's doing
    else:
        assert writer.exists_many(["x0", "x1"]) == [True, True]
