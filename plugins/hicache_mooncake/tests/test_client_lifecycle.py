"""Attach/detach cycles leave no Mooncake client behind and RSS flat (issue 16, soak RSS).

Three causes made a node's RSS grow with every attach, detach and breaker probe:

- the controller's admin pool threads each kept the last call they ran (its future holding
  the result, its closure) until they ran another one, so up to one closed backend per admin
  worker stayed alive, with its Mooncake client (``hicache_core.controller.guard.DaemonPool``);
- the memory a closed client's threads freed stayed in glibc's arenas (``hicache_mooncake.heap``);
- every store set a new client up (about 28 threads, fresh buffers): now a closed store's
  client is handed to the next store with the same settings (``hicache_mooncake.client_pool``).

Real Mooncake processes (the cluster fixtures), a real controller and host pool; the pool's
own rules are also checked with a stand-in client object (no Mooncake calls needed for them).
"""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from hicache_mooncake.client_pool import MAX_IDLE_PER_CONFIG, ClientPool, client_pool
from hicache_mooncake.cluster import LocalMooncakeCluster
from hicache_mooncake.config import load_settings
from hicache_mooncake.heap import return_freed_memory
from hicache_mooncake.store import MooncakeStore

from hicache_core import HiCacheStorageConfig
from hicache_core.controller import StorageController
from hicache_core.controller.guard import DaemonPool
from hicache_core.memory.host_pool import HostKVPool
from hicache_core.spec.errors import HiCacheError
from hicache_core.testing.pages import fill_random_pages, read_page_bytes

#: Cycles measured after the warm-up ones. Before the fixes each cycle of one rank left
#: about 12 MiB more RSS (one client kept by an idle admin thread, plus arena pages).
CYCLES = 6
WARMUP = 2
#: RSS growth allowed over ``CYCLES`` cycles (before the fixes: about 12 MiB per cycle).
RSS_SLACK_MIB = 24


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def live_stores() -> list[MooncakeStore]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, MooncakeStore)]


def wait_no_live_store(timeout_s: float = 10.0) -> list[MooncakeStore]:
    """The stores still alive once the closing detach is done (polled: a close may end a
    moment after detach returns, on the thread of the backend's last call)."""
    deadline = time.monotonic() + timeout_s
    alive = live_stores()
    while alive and time.monotonic() < deadline:
        del alive
        time.sleep(0.1)
        alive = live_stores()
    return alive


@pytest.fixture
def controller(mooncake_cluster: LocalMooncakeCluster) -> Iterator[StorageController]:
    pool = HostKVPool(64 * 16, 16, 2, 2, 8, dtype=torch.float16)
    ctl = StorageController(pool, io_timeout_s=5.0, auto_reattach=False)
    try:
        yield ctl
    finally:
        ctl.close()


def test_daemon_pool_keeps_no_result_of_a_finished_call() -> None:
    """An idle worker must not hold the last call's result: that result was a backend."""

    class Result:
        pass

    pool = DaemonPool(1, "lifecycle-test")
    try:
        fut = pool.submit(Result)
        ref = weakref.ref(fut.result(timeout=10))
        del fut
        # The worker is now idle, blocked on its queue; nothing else refers to the result.
        deadline = time.monotonic() + 5.0
        while ref() is not None and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.05)
        assert ref() is None, f"the idle worker still holds the last result: {gc.get_referrers(ref())!r:.300}"
    finally:
        pool.shutdown()


def test_attach_detach_cycles_keep_one_client_and_flat_rss(
    controller: StorageController, mooncake_cluster: LocalMooncakeCluster
) -> None:
    extra: dict[str, Any] = {**mooncake_cluster.extra_config(local_buffer_size="16mb"), "prefetch_threshold": 0}
    assert wait_no_live_store() == [], "a MooncakeStore from an earlier test is still alive"
    rss_after: list[float] = []
    pool = client_pool()
    opened_before, reused_before = pool.opened, pool.reused
    for cycle in range(WARMUP + CYCLES):
        controller.attach("mooncake", extra)
        assert len(live_stores()) == 1, f"cycle {cycle}: more than one Mooncake client alive while attached"
        assert controller.backend_stats() is not None  # the status path caches the stats (not the session)
        controller.detach()
        alive = wait_no_live_store()
        assert not alive, f"cycle {cycle}: {len(alive)} closed MooncakeStore(s) still alive after detach"
        del alive
        rss_after.append(rss_mib())
    # One client for every cycle: set up at most once (none when an earlier test left one idle).
    assert pool.opened - opened_before <= 1, f"{pool.opened - opened_before} clients set up in {WARMUP + CYCLES} cycles"
    assert pool.reused - reused_before >= WARMUP + CYCLES - 1
    grown = rss_after[-1] - rss_after[WARMUP - 1]
    assert grown <= RSS_SLACK_MIB, (
        f"RSS grew {grown:.0f} MiB over {CYCLES} attach/detach cycles (limit {RSS_SLACK_MIB}): "
        + " -> ".join(f"{r:.0f}" for r in rss_after)
    )


def test_closing_a_store_returns_freed_memory(mooncake_config: Any) -> None:
    store = MooncakeStore(mooncake_config())
    store.close()
    assert store._objects.closed
    assert store.exists_many(["k"]) == [False]  # a closed store's calls fail, whoever has its client now
    assert return_freed_memory() is True  # glibc: malloc_trim exists and ran


def _eventually(check: Any, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except HiCacheError:
            pass
        time.sleep(0.3)
    return False


def test_a_client_reused_after_a_master_restart_stores_and_reads(private_cluster: LocalMooncakeCluster) -> None:
    """The soak's case: the breaker re-attaches after a master restart with the kept client."""
    config = HiCacheStorageConfig(model_name="lifecycle", extra_config=private_cluster.extra_config())
    pool = client_pool()
    first = MooncakeStore(config)
    client = first.raw_client
    first.close()  # master up, nothing wrong: kept for the next store
    private_cluster.kill("master")
    time.sleep(1.0)
    private_cluster.start_master()
    private_cluster.wait_storage_mounted()
    reused = pool.reused
    store = MooncakeStore(config)
    try:
        assert store.raw_client is client and pool.reused == reused + 1, "the kept client was not handed on"
        host = HostKVPool(8 * 16, 16, 2, 2, 32, torch.bfloat16, "page_first")
        store.register_mem_pool_host(host)
        assert _eventually(lambda: store.health_check() is None)
        keys = [f"lifecycle-{time.monotonic_ns()}-{i}" for i in range(3)]
        idx, expected = fill_random_pages(host, 3, seed=16)
        assert _eventually(lambda: store.batch_set_v1(keys, idx) == [True] * 3)
        dest = host.alloc(3 * 16)
        assert dest is not None
        assert store.batch_get_v1(keys, dest) == [True] * 3
        assert read_page_bytes(host, dest) == expected
    finally:
        store.close()


# ---------------------------------------------------------------- the pool's rules (stand-in clients)
class StandInClient:
    """Only what the pool touches of a client: ``close``."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _settings(**extra: Any) -> Any:
    return load_settings({"master_server_address": "127.0.0.1:1", "metadata_server": "http://127.0.0.1:2/metadata",
                          "global_segment_size": 0, "local_buffer_size": "16mb", **extra})


def _pool(linger_s: float = 60.0) -> ClientPool:
    return ClientPool(linger_s=linger_s, opener=lambda _s: StandInClient(), closer=lambda c: c.close())


def test_pool_hands_a_released_client_to_the_next_store_with_the_same_settings() -> None:
    pool, settings = _pool(), _settings()
    a = pool.acquire(settings)
    pool.release(settings, a, reusable=True)
    assert pool.acquire(settings) is a and not a.closed
    assert pool.acquire(settings) is not a  # leased, not shared: a second store gets its own
    other = _settings(master_server_address="127.0.0.1:3")
    pool.release(settings, a, reusable=True)
    assert pool.acquire(other) is not a
    assert (pool.opened, pool.reused) == (3, 1)


def test_pool_closes_what_must_not_be_reused() -> None:
    pool, settings = _pool(), _settings()
    suspect = pool.acquire(settings)
    pool.release(settings, suspect, reusable=False)
    assert suspect.closed and pool.idle() == 0
    contributing = _settings(global_segment_size="64mb")
    c = pool.acquire(contributing)
    pool.release(contributing, c, reusable=True)
    assert c.closed and pool.idle() == 0  # a detached node must stop serving its segment
    off = _pool(linger_s=0)
    d = off.acquire(settings)
    off.release(settings, d, reusable=True)
    assert d.closed


def test_pool_bounds_idle_clients_and_closes_them_after_the_linger() -> None:
    pool, settings = _pool(linger_s=30.0), _settings()
    clients = [pool.acquire(settings) for _ in range(MAX_IDLE_PER_CONFIG + 2)]
    for c in clients:
        pool.release(settings, c, reusable=True)
    assert pool.idle() == MAX_IDLE_PER_CONFIG
    assert [c.closed for c in clients[:2]] == [True, True]
    assert pool.reap(now=time.monotonic() + 5) == 0
    assert pool.reap(now=time.monotonic() + 31) == MAX_IDLE_PER_CONFIG
    assert all(c.closed for c in clients) and pool.idle() == 0
    mine, theirs = pool.acquire(settings), pool.acquire(_settings(master_server_address="127.0.0.1:3"))
    pool.release(settings, mine, reusable=True)
    pool.release(_settings(master_server_address="127.0.0.1:3"), theirs, reusable=True)
    assert pool.close_idle("127.0.0.1:1") == 1 and mine.closed and not theirs.closed  # a cluster stopping
    pool.close_all()
    assert theirs.closed and pool.idle() == 0


def test_a_forked_child_neither_uses_nor_closes_the_parents_clients() -> None:
    """The kit's kill -9 writer is a forked child: it inherits the pool's objects but not the
    clients' threads and connections. It gets a pool of its own, and the inherited pool's
    atexit close does nothing there."""
    import os

    shared = client_pool()
    settings = _settings()
    pool = _pool()
    kept = pool.acquire(settings)
    pool.release(settings, kept, reusable=True)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without the parent's atexit handlers
        ok = client_pool() is not shared
        pool.close_all()  # what the inherited atexit handler would run
        ok = ok and not kept.closed and pool.idle() == 1
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.waitpid(pid, 0)
    os.close(read)
    assert answer == b"1"
    assert client_pool() is shared and pool.idle() == 1 and not kept.closed
    pool.close_all()
    assert kept.closed
