"""One meaning per stored page, for the example backend (issue 13).

The example implements only ``get``/``set``/``exists``; the core's generic v1 path stores the
core's flat page (``hicache_core.memory.pages``). A page written through v1 reads back
byte-equal through the flat-tensor ``get``/``batch_get`` and the reverse, in ``layer_first``
(K of every layer, then V) and ``page_first``, and the row holds exactly the flat page. A page
written from a pool of another dtype, byte order, TP rank or model is a miss.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hicache_example_backend.store import ExampleStore

from hicache_core import HiCacheStorageConfig, HostKVPool
from hicache_core.memory.pages import read_flat_page
from hicache_core.testing.pages import fill_random_pages, read_page_bytes, tensor_bytes

LAYOUTS = ["layer_first", "page_first"]
Open = Callable[..., tuple[ExampleStore, HostKVPool]]


def make_pool(layout: str = "page_first", dtype: torch.dtype = torch.bfloat16) -> HostKVPool:
    return HostKVPool(size=16 * 16, page_size=16, layer_num=3, head_num=2, head_dim=8, dtype=dtype, layout=layout)


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "pages.db")


@pytest.fixture
def open_store(db: str) -> Iterator[Open]:
    opened: list[ExampleStore] = []

    def _open(pool: HostKVPool, **config: Any) -> tuple[ExampleStore, HostKVPool]:
        cfg = HiCacheStorageConfig(model_name=config.pop("model_name", "example-model"),
                                   extra_config={"db_path": db}, **config)
        store = ExampleStore(cfg)
        opened.append(store)
        store.register_mem_pool_host(pool)
        return store, pool

    yield _open
    for store in opened:
        store.close()


def _row_bytes(db: str, store: ExampleStore, key: str) -> bytes:
    """The BLOB stored for ``key``, read from the database past the backend."""
    with sqlite3.connect(db) as conn:
        (data,) = conn.execute("SELECT data FROM pages WHERE key = ?", (store.page_key(key),)).fetchone()
    return bytes(data)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_v1_write_reads_back_through_the_tensor_path(open_store: Open, db: str, layout: str) -> None:
    store, pool = open_store(make_pool(layout))
    idx, expected = fill_random_pages(pool, 3, seed=1)
    keys = ["v1a", "v1b", "v1c"]
    assert store.batch_set_v1(keys, idx) == [True] * 3
    assert [_row_bytes(db, store, k) for k in keys] == expected  # the flat page at rest
    got = store.batch_get(keys, [pool.get_dummy_flat_data_page() for _ in keys])
    assert [tensor_bytes(t) if t is not None else None for t in got] == expected


@pytest.mark.parametrize("layout", LAYOUTS)
def test_tensor_write_reads_back_through_v1(open_store: Open, db: str, layout: str) -> None:
    store, pool = open_store(make_pool(layout))
    src, expected = fill_random_pages(pool, 3, seed=2)
    flat = [read_flat_page(pool, p) for p in pool.indices_to_pages(src)]
    assert store.set("t0", flat[0]) is True
    assert store.batch_set(["t1", "t2"], flat[1:]) is True
    assert [_row_bytes(db, store, k) for k in ("t0", "t1", "t2")] == expected
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
    reader, pool = open_store(make_pool(layout, dtype), **config)
    dest, before = fill_random_pages(pool, 2, seed=4)
    assert reader.exists_many(["x0", "x1"]) == [False, False]
    assert reader.batch_exists(["x0", "x1"]) == 0
    assert reader.batch_get_v1(["x0", "x1"], dest) == [False, False]
    assert read_page_bytes(pool, dest) == before  # a miss leaves the page alone
    assert reader.get("x0", pool.get_dummy_flat_data_page()) is None
    reader.clear()  # removes the reader's namespace only
    assert writer.exists_many(["x0", "x1"]) == [True, True]


def test_clear_matches_the_namespace_exactly(db: str) -> None:
    """clear() removes its own namespace's rows only; a model differing only in case stays."""
    upper = ExampleStore(HiCacheStorageConfig(model_name="Model", extra_config={"db_path": db}))
    lower = ExampleStore(HiCacheStorageConfig(model_name="model", extra_config={"db_path": db}))
    try:
        page = torch.arange(16, dtype=torch.uint8)
        assert upper.set("k", page) and lower.set("k", page)
        lower.clear()
        assert upper.exists("k") and not lower.exists("k")
    finally:
        upper.close()
        lower.close()
