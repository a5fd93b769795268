"""Faults on a cluster of its own: kill -9 the master mid-I/O, restart it, kill a storage node.

What must hold: no exception ever reaches the caller, failed pages are False and counted by
name, ``health_check`` raises while the cluster is broken, a backend attaches again after a
master restart, and nothing written before the restart is served afterwards.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest
import torch
from hicache_mooncake.cluster import LocalMooncakeCluster
from hicache_mooncake.store import MooncakeStore

from hicache_core import HiCacheStorageConfig
from hicache_core.memory.host_pool import HostKVPool
from hicache_core.spec.errors import HiCacheError
from hicache_core.testing.pages import fill_random_pages, read_page_bytes

PAGE = 16


def _pool(pages: int = 256) -> HostKVPool:
    return HostKVPool(pages * PAGE, PAGE, 2, 2, 32, torch.bfloat16, "page_first")


def _keys(n: int) -> list[str]:
    run = uuid.uuid4().hex
    return [f"{run}{i:06d}" for i in range(n)]


def _open(cluster: LocalMooncakeCluster) -> MooncakeStore:
    return MooncakeStore(HiCacheStorageConfig(model_name="faults", extra_config=cluster.extra_config()))


def _eventually(check: Callable[[], bool], timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def _healthy(store: MooncakeStore) -> bool:
    try:
        store.health_check()
        return True
    except HiCacheError:
        return False


def test_master_killed_mid_io_then_restarted(private_cluster: LocalMooncakeCluster) -> None:
    store = _open(private_cluster)
    pool = _pool()
    store.register_mem_pool_host(pool)
    before_keys = _keys(8)
    before_idx, _ = fill_random_pages(pool, 8, seed=1)
    assert store.batch_set_v1(before_keys, before_idx) == [True] * 8
    store.health_check()

    errors: list[BaseException] = []
    results: list[tuple[float, list[bool]]] = []
    stop = threading.Event()

    def io_loop() -> None:
        try:
            n = 0
            while not stop.is_set():
                keys = _keys(8)
                idx, _ = fill_random_pages(pool, 8, seed=100 + n)
                results.append((time.monotonic(), store.batch_set_v1(keys, idx)))
                results.append((time.monotonic(), store.batch_get_v1(keys, idx)))
                results.append((time.monotonic(), store.exists_many(keys)))
                pool.free(idx)
                n += 1
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    worker = threading.Thread(target=io_loop)
    worker.start()
    time.sleep(0.5)
    killed_at = time.monotonic()
    private_cluster.kill("master")
    time.sleep(1.5)
    stop.set()
    worker.join(timeout=60)
    assert not worker.is_alive(), "I/O hung after the master died"
    assert not errors, errors[0]
    assert any(all(r) for t, r in results if t < killed_at), "no batch succeeded before the kill"
    after = [r for t, r in results if t > killed_at + 0.2]
    assert after and all(not any(r) for r in after), "pages reported stored or present with the master dead"
    stats = store.get_stats()
    assert stats["errors"].get("master_unreachable", 0) > 0, stats
    with pytest.raises(HiCacheError, match="unreachable"):
        store.health_check()
    # Fails fast while the master is down: no multi-second Mooncake timeouts per batch.
    started = time.monotonic()
    assert store.exists_many(_keys(4)) == [False] * 4
    assert time.monotonic() - started < 1.0

    private_cluster.start_master()
    private_cluster.wait_storage_mounted()
    fresh = _open(private_cluster)
    fresh_pool = _pool()
    fresh.register_mem_pool_host(fresh_pool)
    # Pages from before the restart are gone (Mooncake keeps metadata in the master only):
    # they must read as misses, never as old bytes.
    assert fresh.exists_many(before_keys) == [False] * 8
    dest = fresh_pool.alloc(8 * PAGE)
    assert dest is not None
    assert fresh.batch_get_v1(before_keys, dest) == [False] * 8
    keys = _keys(4)
    idx, expected = fill_random_pages(fresh_pool, 4, seed=7)
    assert _eventually(lambda: fresh.batch_set_v1(keys, idx) == [True] * 4)
    dest2 = fresh_pool.alloc(4 * PAGE)
    assert dest2 is not None
    assert fresh.batch_get_v1(keys, dest2) == [True] * 4
    assert read_page_bytes(fresh_pool, dest2) == expected
    fresh.health_check()
    # The old backend reconnects by itself and is just as strict.
    assert _eventually(lambda: _healthy(store))
    assert store.exists_many(before_keys) == [False] * 8
    store.close()
    fresh.close()


def test_storage_node_killed_reads_fail_cleanly(private_cluster: LocalMooncakeCluster) -> None:
    store = _open(private_cluster)
    pool = _pool()
    store.register_mem_pool_host(pool)
    keys = _keys(6)
    idx, _ = fill_random_pages(pool, 6, seed=3)
    assert store.batch_set_v1(keys, idx) == [True] * 6
    store.health_check()
    private_cluster.kill("storage0")
    dest = pool.alloc(6 * PAGE)
    assert dest is not None
    assert store.batch_get_v1(keys, dest) == [False] * 6
    errors = store.get_stats()["errors"]
    assert errors.get("transfer_failed", 0) + errors.get("not_found", 0) > 0, errors
    with pytest.raises(HiCacheError):
        store.health_check()
    # Writes with no memory left in the pool fail per page too.
    more = _keys(2)
    idx2, _ = fill_random_pages(pool, 2, seed=4)
    assert store.batch_set_v1(more, idx2) == [False, False]
    # A new storage node brings the pool back; the dead node's pages stay gone.
    private_cluster.start_storage_node(1)
    assert _eventually(lambda: store.batch_set_v1(more, idx2) == [True, True])
    assert _eventually(lambda: _healthy(store))
    assert store.exists_many(keys) == [False] * 6
    store.close()


def test_full_pool_fails_pages_not_calls() -> None:
    """A 16 MiB pool fed 48 MiB: puts beyond the space fail per page as no_space, no exception,
    and every stored page that still reads (eviction may drop some) reads back intact."""
    from hicache_mooncake.probe import probe

    if probe():
        pytest.skip(f"Mooncake cannot run on this machine: {probe()}")
    with LocalMooncakeCluster(segment_size="16MB") as cluster:
        store = _open(cluster)
        pool = HostKVPool(256 * PAGE, PAGE, 8, 8, 16, torch.bfloat16, "page_first")  # 64 KiB pages
        store.register_mem_pool_host(pool)
        src, expected = fill_random_pages(pool, 128, seed=11)
        stored: dict[str, int] = {}  # key -> page of src it was written from
        for _ in range(6):
            keys = _keys(128)
            result = store.batch_set_v1(keys, src)
            stored.update((k, i) for i, (k, ok) in enumerate(zip(keys, result)) if ok)
        errors = store.get_stats()["errors"]
        assert errors.get("no_space", 0) > 0, errors
        store.health_check()  # a full pool still serves reads: not a reason to detach L3
        # Eviction may have dropped some stored pages since (a miss); what reads must be intact.
        keys = list(stored)[-128:]
        dest = pool.alloc(len(keys) * PAGE)
        assert dest is not None
        got = store.batch_get_v1(keys, dest)
        assert any(got)
        read = read_page_bytes(pool, dest)
        assert all(read[n] == expected[stored[k]] for n, (k, ok) in enumerate(zip(keys, got)) if ok)
        store.close()
