"""One meaning per stored page, for the hf3fs backend with the plain-file client (issue 13).

Every path stores the core's flat page (``hicache_core.memory.pages``) in its slot: a page
written through zero-copy v1 reads back byte-equal through the flat-tensor ``get``/
``batch_get`` and the reverse, in ``layer_first`` (K of every layer, then V) and
``page_first``, and the slot's bytes in the rank file are exactly the flat page. A page written
from a pool of another dtype, byte order, TP rank or model is a miss, even in one rank file
under one index, and the reader's page is left alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hf3fs_testutil import ServiceProcess
from hicache_hf3fs.store import Hf3fsStore

from hicache_core import HiCacheStorageConfig
from hicache_core.memory.host_pool import HostKVPool
from hicache_core.memory.pages import read_flat_page
from hicache_core.testing.pages import fill_random_pages, read_page_bytes, tensor_bytes

LAYOUTS = ["layer_first", "page_first"]
Open = Callable[..., tuple[Hf3fsStore, HostKVPool]]


def make_pool(layout: str = "page_first", dtype: torch.dtype = torch.bfloat16) -> HostKVPool:
    return HostKVPool(size=32 * 16, page_size=16, layer_num=3, head_num=2, head_dim=8, dtype=dtype, layout=layout)


@pytest.fixture(params=["in-process", "shared"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Open]:
    """Open backends on one rank-file prefix (and, for ``shared``, one metadata service)."""
    extra: dict[str, Any] = {"file_path_prefix": str(tmp_path / "kv"), "file_size": 1 << 20, "numjobs": 2,
                             "client": "file"}
    if request.param == "shared":
        service: ServiceProcess = request.getfixturevalue("metadata_service")
        extra["metadata_server_url"] = service.url
    opened: list[Hf3fsStore] = []

    def _open(pool: HostKVPool, **config: Any) -> tuple[Hf3fsStore, HostKVPool]:
        cfg = HiCacheStorageConfig(model_name=config.pop("model_name", "m"), extra_config=dict(extra), **config)
        store = Hf3fsStore(cfg)
        opened.append(store)
        store.register_mem_pool_host(pool)
        return store, pool

    yield _open
    for store in opened:
        store.close()


def _slot_bytes(store: Hf3fsStore, key: str) -> bytes:
    """The bytes of ``key``'s slot, read from the rank file past the backend."""
    (ref,) = store.metadata.lookup([store.page_key(key)])
    assert ref is not None
    with open(store.file_path, "rb") as fh:
        fh.seek(ref.slot * store.page_bytes)
        return fh.read(store.page_bytes)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_v1_write_reads_back_through_the_tensor_path(open_store: Open, layout: str) -> None:
    store, pool = open_store(make_pool(layout))
    idx, expected = fill_random_pages(pool, 3, seed=1)
    keys = ["v1a", "v1b", "v1c"]
    assert store.batch_set_v1(keys, idx) == [True] * 3
    assert [_slot_bytes(store, k) for k in keys] == expected  # the flat page at rest
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
    assert [_slot_bytes(store, k) for k in ("t0", "t1", "t2")] == expected
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
    assert reader.page_bytes == writer.page_bytes  # a size check alone could not tell them apart
    dest, before = fill_random_pages(pool, 2, seed=4)
    assert reader.exists_many(["x0", "x1"]) == [False, False]
    assert reader.batch_exists(["x0", "x1"]) == 0
    assert reader.batch_get_v1(["x0", "x1"], dest) == [False, False]
    assert read_page_bytes(pool, dest) == before  # a miss leaves the page alone
    assert reader.get("x0", pool.get_dummy_flat_data_page()) is None
    assert writer.exists_many(["x0", "x1"]) == [True, True]
