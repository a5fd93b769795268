"""One meaning per stored page (scheme pagefile): every path stores the same bytes, and a page
of another pool format or shard is a miss, never a hit."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hicache_file.pagedir import page_rel
from hicache_file.pageformat import HEADER_SIZE
from hicache_file.store import FileStore

from hicache_core import HiCacheStorageConfig, HostKVPool
from hicache_core.memory.pages import read_flat_page

KEY = "cd" + "1" * 62
Open = Callable[..., tuple[Any, HostKVPool]]


@pytest.fixture
def open_store(tmp_path: Path) -> Iterator[Open]:
    opened: list[Any] = []

    def _open(layout: str = "page_first", dtype: torch.dtype = torch.bfloat16, is_mla: bool = False,
              page_size: int = 4, **config: Any) -> tuple[Any, HostKVPool]:
        cfg = HiCacheStorageConfig(model_name="org/m", is_mla_model=is_mla,
                                   extra_config={"path": str(tmp_path / "l3"), "io_threads": 1}, **config)
        store = FileStore(cfg)
        pool = HostKVPool(16 * page_size, page_size, 3, 2, 8, dtype=dtype, layout=layout, is_mla=is_mla,
                          pin_memory=False)
        store.register_mem_pool_host(pool)
        opened.append(store)
        return store, pool

    yield _open
    for s in opened:
        s.close()


def _fill(pool: HostKVPool, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    pool.kv_buffer.copy_(torch.randn(pool.kv_buffer.shape, generator=gen).to(pool.dtype))


def _flat(pool: HostKVPool, page: int) -> bytes:
    return bytes(read_flat_page(pool, page).view(torch.uint8).numpy())


@pytest.mark.parametrize("layout", ["layer_first", "page_first", "page_first_direct", "page_head"])
def test_v1_and_flat_paths_store_the_same_bytes(open_store: Open, layout: str) -> None:
    store, pool = open_store(layout)
    _fill(pool, 1)
    assert store.batch_set_v1([KEY], pool.pages_to_indices([5])) == [True]
    # The file holds the flat page (the core's page rule), whichever path wrote it.
    raw = (Path(store.namespace_dir) / page_rel(KEY)).read_bytes()[HEADER_SIZE:]
    assert raw == _flat(pool, 5)
    got = store.get(KEY, pool.get_dummy_flat_data_page())
    assert got is not None and bytes(got.view(torch.uint8).numpy()) == _flat(pool, 5)
    # And the reverse: a flat set, read back through v1 into a scattered page.
    other = "ef" + "2" * 62
    assert store.set(other, read_flat_page(pool, 9)) is True
    assert store.batch_get_v1([other], pool.pages_to_indices([2])) == [True]
    assert _flat(pool, 2) == _flat(pool, 9)


def test_layer_first_and_page_first_direct_share_pages(open_store: Open) -> None:
    """Their stored pages are the same bytes (the core gives them one format tag)."""
    a, pa = open_store("layer_first")
    b, pb = open_store("page_first_direct")
    assert a.namespace == b.namespace
    _fill(pa, 2)
    assert a.batch_set_v1([KEY], pa.pages_to_indices([3])) == [True]
    assert b.batch_get_v1([KEY], pb.pages_to_indices([7])) == [True]
    # The same logical KV: layer 1, token 2, K and V, in each pool's own indexing.
    assert torch.equal(pa.kv_buffer[:, 1, 3 * 4 + 2], pb.kv_buffer[:, 7, 1, 2])


@pytest.mark.parametrize(
    ("writer", "reader"),
    [
        ({"layout": "page_first"}, {"layout": "layer_first"}),
        ({"layout": "page_first"}, {"layout": "page_head"}),
        ({"dtype": torch.bfloat16}, {"dtype": torch.float16}),
        ({"page_size": 4}, {"page_size": 8}),
        ({"is_mla": True, "layout": "page_first"}, {"is_mla": True, "layout": "layer_first"}),
        ({"attn_cp_rank": 0, "attn_cp_size": 2}, {"attn_cp_rank": 1, "attn_cp_size": 2}),
        ({"tp_rank": 0, "tp_size": 2}, {"tp_rank": 0, "tp_size": 4}),
    ],
    ids=["page_first-vs-layer_first", "page_first-vs-page_head", "bf16-vs-fp16", "page4-vs-page8",
         "mla-layouts", "attn-cp-ranks", "tp-sizes"],
)
def test_a_page_of_another_pool_is_a_miss(open_store: Open, writer: dict[str, Any], reader: dict[str, Any]) -> None:
    w, wpool = open_store(**writer)
    r, rpool = open_store(**reader)
    assert w.namespace != r.namespace and w.namespace_dir != r.namespace_dir
    _fill(wpool, 3)
    assert w.batch_set_v1([KEY], wpool.pages_to_indices([1])) == [True]
    assert r.exists(KEY) is False
    assert r.batch_get_v1([KEY], rpool.pages_to_indices([1])) == [False]
    assert r.get(KEY, rpool.get_dummy_flat_data_page()) is None


def test_a_page_file_copied_into_another_namespace_is_a_counted_format_mismatch(open_store: Open) -> None:
    w, wpool = open_store("page_first")
    r, rpool = open_store("layer_first")
    _fill(wpool, 4)
    assert w.batch_set_v1([KEY], wpool.pages_to_indices([0])) == [True]
    src = Path(w.namespace_dir) / page_rel(KEY)
    dst = Path(r.namespace_dir) / page_rel(KEY)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())  # same size, sound checksum: only the namespace check differs
    assert r.batch_get_v1([KEY], rpool.pages_to_indices([0])) == [False]
    stats = r.get_stats()
    assert (stats["format_mismatch"], stats["corrupt"], stats["hits"]) == (1, 0, 0)
    assert dst.exists(), "a sound page of another namespace is not damage"


def test_a_version_1_page_file_is_never_served(open_store: Open) -> None:
    store, pool = open_store()
    _fill(pool, 5)
    assert store.batch_set_v1([KEY], pool.pages_to_indices([0])) == [True]
    path = Path(store.namespace_dir) / page_rel(KEY)
    raw = bytearray(path.read_bytes())
    raw[4] = 1  # the version byte of the 32-byte header that had no namespace check
    path.write_bytes(bytes(raw))
    assert store.batch_get_v1([KEY], pool.pages_to_indices([1])) == [False]
    assert store.get_stats()["corrupt"] == 1


def test_flat_pages_without_a_pool_live_apart_from_pool_pages(tmp_path: Path) -> None:
    """Before a pool is registered the namespace is ``flat``, which no pool's pages share."""
    cfg = HiCacheStorageConfig(model_name="m", extra_config={"path": str(tmp_path)})
    bare = FileStore(cfg)
    assert ".flat." in bare.namespace
    assert bare.set(KEY, torch.arange(64, dtype=torch.uint8)) is True
    got = bare.get(KEY)
    assert got is not None and torch.equal(got, torch.arange(64, dtype=torch.uint8))
    pooled = FileStore(cfg)
    pooled.register_mem_pool_host(HostKVPool(64, 4, 1, 1, 2, dtype=torch.uint8, pin_memory=False))
    assert pooled.exists(KEY) is False
