"""Prometheus metrics move with the work, per rank, in private or shared registries."""

from __future__ import annotations

from pathlib import Path

from _controller_backends import backup_pages, fill_pages, hashes, make_controller, make_pool, wait_for
from prometheus_client import CollectorRegistry, generate_latest

from hicache_core import HiCacheStorageConfig, HostKVPool
from hicache_core.controller import StorageController, fault_switch


def _cycle(ctl: StorageController, pool: HostKVPool, n: int) -> None:
    hs = hashes(n)
    backup_pages(ctl, pool, hs)
    op = ctl.prefetch(hs)
    assert op is not None
    wait_for(lambda: op.done)
    res = op.wait()
    pool.free(res.host_indices)


def test_metrics_move(tmp_path: Path) -> None:
    pool = make_pool()
    ctl = make_controller(pool)
    try:
        m = ctl.metrics
        assert m.sample("hicache_backend_attached") == 0
        ctl.attach("dirstore", {"root": str(tmp_path), "prefetch_threshold": 0,
                                "fault_injection": {"switch": tmp_path.name}})
        assert m.sample("hicache_backend_attached") == 1
        assert m.sample("hicache_attach_total", {"result": "ok"}) == 1
        _cycle(ctl, pool, 10)
        pb = pool.page_bytes
        assert m.sample("hicache_backup_pages_total") == 10
        assert m.sample("hicache_backup_bytes_total") == 10 * pb
        assert m.sample("hicache_prefetch_pages_total") == 10
        assert m.sample("hicache_prefetch_bytes_total") == 10 * pb
        assert m.sample("hicache_l3_hit_tokens_total") == 10 * pool.page_size
        assert m.sample("hicache_prefetch_requests_total") == 1
        assert (m.sample("hicache_prefetch_bandwidth_gbps_count") or 0) >= 1
        assert (m.sample("hicache_backup_bandwidth_last_gbps") or 0) > 0
        assert (m.sample("hicache_prefetch_bandwidth_last_gbps") or 0) > 0
        # Time in the load calls and per request, for L3 -> L2 bandwidth and prefetch latency.
        assert ctl.status()["counters"]["prefetch_seconds"] > 0
        assert m.sample("hicache_prefetch_request_seconds_count") == 1
        fault_switch(tmp_path.name).fail_all = True
        hs = hashes(2)
        idx = fill_pages(pool, hs)
        got: list[list[bool]] = []
        ctl.backup(hs, idx, got.append)
        wait_for(lambda: bool(got))
        fault_switch(tmp_path.name).fail_all = False
        pool.free(idx)
        assert m.sample("hicache_backend_failures_total", {"op": "batch_set_v1", "kind": "error"}) == 1
        assert m.sample("hicache_backup_failed_pages_total") == 2
        ctl.detach()
        assert m.sample("hicache_detach_total", {"cause": "admin"}) == 1
        assert m.sample("hicache_backend_attached") == 0
        assert ctl.status()["counters"]["prefetch_pages"] == 10
    finally:
        fault_switch(tmp_path.name).fail_all = False
        ctl.close()


def test_shared_registry_with_rank_labels(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    pools = [make_pool(pages=64), make_pool(pages=64)]
    ctls = [
        make_controller(p, rank=r, metrics_registry=registry, storage_config=HiCacheStorageConfig(model_name="m", tp_rank=r, tp_size=2))
        for r, p in enumerate(pools)
    ]
    try:
        for c in ctls:
            c.attach("dirstore", {"root": str(tmp_path), "prefetch_threshold": 0})
        _cycle(ctls[1], pools[1], 3)
        assert registry.get_sample_value("hicache_backup_pages_total", {"rank": "1"}) == 3
        assert registry.get_sample_value("hicache_backup_pages_total", {"rank": "0"}) == 0
        text = generate_latest(registry).decode()
        assert 'hicache_backend_attached{rank="0"} 1.0' in text and 'hicache_backend_attached{rank="1"} 1.0' in text
    finally:
        for c in ctls:
            c.close()


def test_a_closed_controller_is_not_kept_alive_by_a_shared_registry(tmp_path: Path) -> None:
    """The registry outlives nodes (the process-wide default does): its backend-stats collector
    held each rank's controller, and with it the host pool and the closed backend, until another
    node took the rank."""
    import gc
    import weakref

    registry = CollectorRegistry()
    ctl = make_controller(make_pool(), metrics_registry=registry)
    ctl.attach("dirstore", {"root": str(tmp_path)})
    assert b"hicache_backend_stat" in generate_latest(registry)
    gone = weakref.ref(ctl)
    ctl.detach()
    ctl.close()
    del ctl
    gc.collect()
    assert gone() is None
    generate_latest(registry)  # a scrape after the controller is gone still works
