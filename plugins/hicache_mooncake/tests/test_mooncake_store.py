"""MooncakeStore behaviour on the shared local cluster: key layout, stale guards, MLA, sharing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from hicache_mooncake.client import MooncakeConnectError, import_store_class
from hicache_mooncake.cluster import LocalMooncakeCluster, free_port
from hicache_mooncake.config import load_settings
from hicache_mooncake.store import MAX_BATCH_PAGES, MooncakeStore

from hicache_core import HiCacheStorageConfig, create_backend
from hicache_core.memory.host_pool import HostKVPool
from hicache_core.spec.errors import LayoutError
from hicache_core.testing.pages import fill_random_pages, read_page_bytes

PAGE, LAYERS, HEADS, DIM = 16, 2, 2, 8


def _pool(pages: int = 64, layout: str = "page_first", is_mla: bool = False) -> HostKVPool:
    return HostKVPool(pages * PAGE, PAGE, LAYERS, HEADS, DIM, torch.bfloat16, layout, is_mla)


def _keys(n: int) -> list[str]:
    run = uuid.uuid4().hex
    return [f"{run}{i:08d}" for i in range(n)]


@pytest.fixture
def open_store(mooncake_config: Callable[..., HiCacheStorageConfig]) -> Iterator[Callable[..., MooncakeStore]]:
    opened: list[MooncakeStore] = []

    def _open(extra: dict[str, Any] | None = None, **fields: Any) -> MooncakeStore:
        store = MooncakeStore(mooncake_config(extra, **fields))
        opened.append(store)
        return store

    yield _open
    for s in opened:
        s.close()


@pytest.fixture(scope="module")
def raw(mooncake_cluster: LocalMooncakeCluster) -> Iterator[Any]:
    """A plain MooncakeDistributedStore on the same cluster, to look at objects directly."""
    settings = load_settings(mooncake_cluster.extra_config(), environ={})
    client = import_store_class()()
    assert client.setup(
        settings.local_hostname, settings.metadata_server, 0, settings.local_buffer_size,
        settings.protocol, "", settings.master_server_address,
    ) == 0
    yield client
    client.close()


def test_mha_pages_are_k_and_v_objects_named_by_the_pool_namespace(open_store: Callable[..., MooncakeStore], raw: Any) -> None:
    store = open_store(tp_rank=1, tp_size=2)
    pool = _pool()
    store.register_mem_pool_host(pool)
    keys = _keys(3)
    idx, _ = fill_random_pages(pool, 3, seed=1)
    assert store.batch_set_v1(keys, idx) == [True] * 3
    ns = "hc1.mooncake-test-model.mha-bf16-l2h2d8-p16-ctlhd.tp1of2"
    assert store.namespace == ns
    assert store.object_keys(keys[:1]) == [f"{keys[0]}@{ns}_k", f"{keys[0]}@{ns}_v"]
    assert raw.batch_is_exist([f"{k}@{ns}_k" for k in keys] + [f"{k}@{ns}_v" for k in keys]) == [1] * 6
    assert raw.get_size(f"{keys[0]}@{ns}_k") == pool.page_bytes // 2
    assert raw.is_exist(f"{keys[0]}@{ns}") == 0  # no whole-page object for MHA


def test_other_ranks_and_models_do_not_see_the_pages(open_store: Callable[..., MooncakeStore]) -> None:
    writer = open_store(tp_rank=0, tp_size=2)
    pool = _pool()
    writer.register_mem_pool_host(pool)
    keys = _keys(2)
    idx, _ = fill_random_pages(pool, 2, seed=2)
    assert writer.batch_set_v1(keys, idx) == [True, True]
    assert open_store(tp_rank=1, tp_size=2).exists_many(keys) == [False, False]
    assert open_store(tp_rank=0, tp_size=2, model_name="another/model").exists_many(keys) == [False, False]


def test_half_a_page_is_a_miss(open_store: Callable[..., MooncakeStore], raw: Any) -> None:
    """K stored but V not (a put that failed half-way): never reported present or read."""
    store = open_store()
    pool = _pool()
    store.register_mem_pool_host(pool)
    (key,) = _keys(1)
    piece = torch.full((pool.page_bytes // 2,), 7, dtype=torch.uint8)
    assert raw.put(store.object_keys([key])[0], piece.numpy().tobytes()) == 0
    assert store.exists(key) is False
    assert store.batch_exists([key]) == 0
    dest = pool.alloc(PAGE)
    assert dest is not None
    assert store.batch_get_v1([key], dest) == [False]
    assert store.get(key) is None


def test_a_page_of_another_geometry_is_a_miss(open_store: Callable[..., MooncakeStore], raw: Any) -> None:
    """Another geometry is another namespace; and an object of the wrong size under this
    pool's own name (which no hicache writer makes) is a miss, counted as size_mismatch."""
    small = open_store()
    small_pool = _pool()
    small.register_mem_pool_host(small_pool)
    big = open_store()
    big_pool = HostKVPool(8 * PAGE, PAGE, LAYERS * 2, HEADS, DIM, torch.bfloat16, "page_first")
    big.register_mem_pool_host(big_pool)
    keys = _keys(2)
    idx, _ = fill_random_pages(small_pool, 2, seed=3)
    assert small.batch_set_v1(keys, idx) == [True, True]
    assert big.exists_many(keys) == [False, False]
    dest = big_pool.alloc(2 * PAGE)
    assert dest is not None
    assert big.batch_get_v1(keys, dest) == [False, False]
    short = bytes(small_pool.page_bytes // 2)
    for name in big.object_keys(keys):
        assert raw.put(name, short) == 0
    assert big.batch_get_v1(keys, dest) == [False, False]
    assert big.get_stats()["errors"].get("size_mismatch", 0) == 4  # K and V of two pages


def test_duplicate_put_keeps_the_first_bytes(open_store: Callable[..., MooncakeStore]) -> None:
    """Mooncake ignores a second put of a key; with content-addressed keys that is harmless."""
    store = open_store()
    pool = _pool()
    store.register_mem_pool_host(pool)
    (key,) = _keys(1)
    idx1, first = fill_random_pages(pool, 1, seed=4)
    idx2, _second = fill_random_pages(pool, 1, seed=5)
    assert store.batch_set_v1([key], idx1) == [True]
    assert store.batch_set_v1([key], idx2) == [True]
    dest = pool.alloc(PAGE)
    assert dest is not None
    assert store.batch_get_v1([key], dest) == [True]
    assert read_page_bytes(pool, dest) == first


def test_legacy_and_zero_copy_paths_read_each_other(open_store: Callable[..., MooncakeStore]) -> None:
    store = open_store()
    pool = _pool()
    store.register_mem_pool_host(pool)
    k1, k2 = _keys(2)
    idx, expected = fill_random_pages(pool, 1, seed=6)
    assert store.batch_set_v1([k1], idx) == [True]
    got = store.get(k1)
    assert got is not None and bytes(got.view(torch.uint8).numpy()) == expected[0]
    page = torch.randint(0, 256, (pool.page_bytes,), dtype=torch.uint8).view(pool.dtype)
    assert store.set(k2, page) is True
    dest = pool.alloc(PAGE)
    assert dest is not None
    assert store.batch_get_v1([k2], dest) == [True]
    assert read_page_bytes(pool, dest) == [bytes(page.view(torch.uint8).numpy())]


def test_legacy_path_without_a_pool_and_with_raw_addresses(open_store: Callable[..., MooncakeStore]) -> None:
    """SGLang's legacy calls pass addresses and sizes; a store without a pool asks Mooncake the size."""
    store = open_store()
    (key,) = _keys(1)
    src = torch.arange(4096, dtype=torch.int32).view(torch.uint8)
    assert store.set(key, target_location=src.data_ptr(), target_sizes=src.numel()) is True
    got = store.get(key)
    assert got is not None and torch.equal(got.view(torch.uint8), src)
    dst = torch.zeros_like(src)
    assert store.get(key, dst.data_ptr(), dst.numel()) is not None
    assert torch.equal(dst, src)
    assert store.batch_get([key, _keys(1)[0]]) [1] is None


def test_batches_larger_than_128_pages_are_split(open_store: Callable[..., MooncakeStore]) -> None:
    store = open_store()
    n = MAX_BATCH_PAGES * 2 + 17
    pool = _pool(pages=2 * n)
    store.register_mem_pool_host(pool)
    keys = _keys(n)
    idx, expected = fill_random_pages(pool, n, seed=7)
    assert store.batch_set_v1(keys, idx) == [True] * n
    assert store.batch_exists(keys) == n
    dest = pool.alloc(n * PAGE)
    assert dest is not None
    assert store.batch_get_v1(keys, dest) == [True] * n
    assert read_page_bytes(pool, dest) == expected
    stats = store.get_stats()
    assert stats["pages_written"] == n and stats["pages_read"] == n and stats["errors_total"] == 0


def test_mla_single_object_and_writer_rank(open_store: Callable[..., MooncakeStore], raw: Any) -> None:
    rank0 = open_store(is_mla_model=True, tp_rank=0, tp_size=2)
    rank1 = open_store(is_mla_model=True, tp_rank=1, tp_size=2)
    pool0, pool1 = _pool(is_mla=True), _pool(is_mla=True)
    rank0.register_mem_pool_host(pool0)
    rank1.register_mem_pool_host(pool1)
    keys = _keys(2)
    idx1, _ = fill_random_pages(pool1, 2, seed=8)
    assert rank1.batch_set_v1(keys, idx1) == [True, True]  # not the writer: nothing stored
    assert rank1.get_stats()["pages_skipped_non_writer"] == 2
    assert rank0.exists_many(keys) == [False, False]
    idx0, expected = fill_random_pages(pool0, 2, seed=9)
    assert rank0.batch_set_v1(keys, idx0) == [True, True]
    ns = "hc1.mooncake-test-model.mla-bf16-l2h1d8-p16-tlhd.all"
    assert rank0.namespace == rank1.namespace == ns
    assert raw.batch_is_exist([f"{k}@{ns}" for k in keys]) == [1, 1]
    dest = pool1.alloc(2 * PAGE)
    assert dest is not None
    assert rank1.batch_get_v1(keys, dest) == [True, True]  # every rank reads rank 0's pages
    assert read_page_bytes(pool1, dest) == expected


def test_pool_kind_must_match_the_config(open_store: Callable[..., MooncakeStore]) -> None:
    with pytest.raises(LayoutError, match="is_mla_model"):
        open_store().register_mem_pool_host(_pool(is_mla=True))
    with pytest.raises(LayoutError, match="is_mla_model"):
        open_store(is_mla_model=True).register_mem_pool_host(_pool())


def test_two_clients_share_pages_one_contributing_memory(open_store: Callable[..., MooncakeStore]) -> None:
    """Two backends are two cluster nodes; one also lends 32 MiB of its own memory."""
    a = open_store({"global_segment_size": "32mb"})
    b = open_store()
    pool_a, pool_b = _pool(), _pool()
    a.register_mem_pool_host(pool_a)
    b.register_mem_pool_host(pool_b)
    ka, kb = _keys(6), _keys(6)
    idx_a, exp_a = fill_random_pages(pool_a, 6, seed=10)
    idx_b, exp_b = fill_random_pages(pool_b, 6, seed=11)
    assert a.batch_set_v1(ka, idx_a) == [True] * 6
    assert b.batch_set_v1(kb, idx_b) == [True] * 6
    dest_b = pool_b.alloc(6 * PAGE)
    dest_a = pool_a.alloc(6 * PAGE)
    assert dest_a is not None and dest_b is not None
    assert b.batch_get_v1(ka, dest_b) == [True] * 6
    assert a.batch_get_v1(kb, dest_a) == [True] * 6
    assert read_page_bytes(pool_b, dest_b) == exp_a and read_page_bytes(pool_a, dest_a) == exp_b


def test_health_check_round_trips_a_probe(open_store: Callable[..., MooncakeStore]) -> None:
    store = open_store()
    store.health_check()
    store.health_check()  # the probe object now exists: a duplicate put, then a read
    store.close()
    with pytest.raises(Exception, match="closed"):
        store.health_check()
    assert store.exists_many(_keys(2)) == [False, False]  # after close: misses, no exception
    assert store.get_stats()["errors"]["closed"] == 4


def test_setup_fails_in_seconds_naming_the_master() -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(MooncakeConnectError) as exc:
        create_backend("mooncake", HiCacheStorageConfig(extra_config={
            "master_server_address": address, "metadata_server": "P2PHANDSHAKE", "local_hostname": "127.0.0.1",
        }))
    assert time.monotonic() - started < 5
    assert address in str(exc.value)


def test_setup_failure_behind_the_port_check_names_the_master(mooncake_cluster: LocalMooncakeCluster) -> None:
    """Port open but no Mooncake master behind it: Mooncake's own setup fails, quickly."""
    address = f"127.0.0.1:{mooncake_cluster.metadata_port}"  # an HTTP server, not the master
    started = time.monotonic()
    with pytest.raises(MooncakeConnectError) as exc:
        MooncakeStore(HiCacheStorageConfig(extra_config={**mooncake_cluster.extra_config(), "master_server_address": address}))
    assert time.monotonic() - started < 30
    assert address in str(exc.value)


@pytest.mark.parametrize("layout", ["layer_first", "page_first", "page_first_direct", "page_head"])
@pytest.mark.parametrize("is_mla", [False, True])
def test_scattered_pages_in_every_layout(open_store: Callable[..., MooncakeStore], layout: str, is_mla: bool) -> None:
    """v1 set and get of pages in scattered, descending host slots; indices outside the pool or
    not page aligned are refused before Mooncake could touch memory outside it."""
    if is_mla and layout == "page_head":
        pytest.skip("page_head is an MHA layout")
    store = open_store(is_mla_model=is_mla)
    pool = _pool(pages=32, layout=layout, is_mla=is_mla)
    store.register_mem_pool_host(pool)
    keys = _keys(4)
    src_pages, dst_pages = [29, 3, 17, 8], [30, 0, 12, 21]
    expected = []
    for i, p in enumerate(src_pages):
        page = torch.randint(0, 256, (pool.page_bytes,), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
        pool.write_page(p, page.view(pool.dtype))
        expected.append(bytes(page.numpy()))
    assert store.batch_set_v1(keys, pool.pages_to_indices(src_pages)) == [True] * 4
    assert store.batch_get_v1(keys, pool.pages_to_indices(dst_pages)) == [True] * 4
    assert [bytes(pool.read_page(p).view(torch.uint8).numpy()) for p in dst_pages] == expected
    with pytest.raises(ValueError, match="outside"):
        store.batch_get_v1(keys[:1], pool.pages_to_indices([32]))
    with pytest.raises(ValueError, match="page aligned"):
        store.batch_get_v1(keys[:1], pool.pages_to_indices([3]) + 1)


def test_batch_exists_stops_at_the_first_gap_across_chunks(open_store: Callable[..., MooncakeStore]) -> None:
    store = open_store()
    n = MAX_BATCH_PAGES + 40
    pool = _pool(pages=n)
    store.register_mem_pool_host(pool)
    keys = _keys(n)
    idx, _ = fill_random_pages(pool, n, seed=12)
    present = [*range(MAX_BATCH_PAGES + 10), *range(MAX_BATCH_PAGES + 11, n)]  # gap at 138
    page = pool.page_size
    assert store.batch_set_v1([keys[i] for i in present], torch.cat([idx[i * page : (i + 1) * page] for i in present])) == [True] * len(present)
    assert store.batch_exists(keys) == MAX_BATCH_PAGES + 10
    assert store.batch_exists(keys[:5]) == 5
    assert store.batch_exists([]) == 0
    assert store.exists_many(keys)[MAX_BATCH_PAGES + 9 : MAX_BATCH_PAGES + 12] == [True, False, True]


def test_many_layer_pieces_per_batch_are_split_into_calls_mooncake_takes(open_store: Callable[..., MooncakeStore]) -> None:
    """layer_first objects are one buffer per layer: 128 pages x 2 objects x 40 layers is 10240
    buffers, beyond what one Mooncake multi-buffer call moves over TCP (about 2048)."""
    store = open_store()
    pool = HostKVPool(2 * 128 * PAGE, PAGE, 40, 1, DIM, torch.bfloat16, "layer_first")
    store.register_mem_pool_host(pool)
    keys = _keys(128)
    idx, expected = fill_random_pages(pool, 128, seed=13)
    assert store.batch_set_v1(keys, idx) == [True] * 128, store.get_stats()["errors"]
    dest = pool.alloc(128 * PAGE)
    assert dest is not None
    assert store.batch_get_v1(keys, dest) == [True] * 128, store.get_stats()["errors"]
    assert read_page_bytes(pool, dest) == expected
