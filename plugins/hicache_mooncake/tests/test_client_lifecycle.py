"""Attach/detach cycles leave no Mooncake client alive and no memory behind (issue 16, soak RSS).

Two causes made a node's RSS grow with every attach, detach and breaker probe:

- the controller's admin pool threads each kept the last call they ran (its future holding
  the result, its closure) until they ran another one, so up to one closed backend per admin
  worker stayed alive, with its Mooncake client (``hicache_core.controller.guard.DaemonPool``);
- the memory a closed client's threads freed stayed in glibc's arenas (``hicache_mooncake.heap``).

Real Mooncake processes (the shared cluster fixture), a real controller and host pool.
"""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from hicache_mooncake.cluster import LocalMooncakeCluster
from hicache_mooncake.heap import return_freed_memory
from hicache_mooncake.store import MooncakeStore

from hicache_core.controller import StorageController
from hicache_core.controller.guard import DaemonPool
from hicache_core.memory.host_pool import HostKVPool

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
    for cycle in range(WARMUP + CYCLES):
        controller.attach("mooncake", extra)
        assert len(live_stores()) == 1, f"cycle {cycle}: more than one Mooncake client alive while attached"
        controller.detach()
        alive = wait_no_live_store()
        assert not alive, f"cycle {cycle}: {len(alive)} closed MooncakeStore(s) still alive after detach"
        del alive
        rss_after.append(rss_mib())
    grown = rss_after[-1] - rss_after[WARMUP - 1]
    assert grown <= RSS_SLACK_MIB, (
        f"RSS grew {grown:.0f} MiB over {CYCLES} attach/detach cycles (limit {RSS_SLACK_MIB}): "
        + " -> ".join(f"{r:.0f}" for r in rss_after)
    )


def test_closing_a_store_returns_freed_memory(mooncake_config: Any) -> None:
    store = MooncakeStore(mooncake_config())
    store.close()
    assert store._objects.closed
    assert return_freed_memory() is True  # glibc: malloc_trim exists and ran
