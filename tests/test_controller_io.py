"""Prefetch (L3 -> L2) and backup (L2 -> L3) through the controller's worker threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from _controller_backends import (
    batches,  # noqa: F401  (fixture)
    check_pages,
    fill_pages,
    hashes,
    make_controller,
    make_pool,
    poison,  # noqa: F401  (fixture)
    wait_for,
)

from hicache_core import HiCacheStorageConfig, HostKVPool
from hicache_core.controller import PrefetchOperation, PrefetchResult, StorageController


def take_all(op: PrefetchOperation) -> PrefetchResult:
    wait_for(lambda: op.done)
    return op.wait()


@pytest.fixture
def pool() -> HostKVPool:
    return make_pool(pages=1024)


@pytest.fixture
def ctl(pool: HostKVPool, tmp_path: Path) -> Iterator[StorageController]:
    c = make_controller(pool)
    c.attach("dirstore", {"root": str(tmp_path / "l3"), "prefetch_threshold": 0})
    yield c
    c.close()


def store(ctl: StorageController, pool: HostKVPool, hs: list[str]) -> None:
    """Back ``hs`` up (content from the hash) and free the host pages afterwards."""
    idx = fill_pages(pool, hs)
    done: list[list[bool]] = []
    assert ctl.backup(hs, idx, done.append)
    wait_for(lambda: bool(done))
    assert done == [[True] * len(hs)]
    pool.free(idx)


def test_prefetch_roundtrip_bytes_and_pool_accounting(ctl: StorageController, pool: HostKVPool) -> None:
    hs = hashes(20)
    store(ctl, pool, hs)
    free_before = pool.available_size()
    op = ctl.prefetch(hs)
    assert op is not None
    res = take_all(op)
    assert res.page_hashes == hs and res.storage_hit_pages == 20 and res.complete
    assert res.host_indices.numel() == 20 * pool.page_size
    check_pages(pool, hs, res.host_indices)
    assert pool.available_size() == free_before - 20 * pool.page_size  # caller owns exactly these
    pool.free(res.host_indices)


def test_prefetch_of_partial_chain_loads_leading_hits(ctl: StorageController, pool: HostKVPool) -> None:
    hs = hashes(10)
    store(ctl, pool, hs[:6])
    free_before = pool.available_size()
    res = take_all(ctl.prefetch(hs))  # type: ignore[arg-type]
    assert res.page_hashes == hs[:6] and res.storage_hit_pages == 6 and res.complete
    check_pages(pool, hs[:6], res.host_indices)
    pool.free(res.host_indices)
    assert pool.available_size() == free_before


def test_keys_are_the_hashes_backends_add_the_suffix(ctl: StorageController, pool: HostKVPool, tmp_path: Path) -> None:
    hs = hashes(2)
    store(ctl, pool, hs)
    assert sorted(p.name for p in (tmp_path / "l3").iterdir()) == sorted(hs)


def test_controller_can_append_namespace_suffix(pool: HostKVPool, tmp_path: Path) -> None:
    ctl = make_controller(pool, add_namespace_suffix=True)
    try:
        ctl.attach("dirstore", {"root": str(tmp_path / "s"), "prefetch_threshold": 0})
        hs = hashes(2)
        store(ctl, pool, hs)
        suffix = HiCacheStorageConfig(model_name="test-model").namespace_suffix()
        assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(h + suffix for h in hs)
        res = take_all(ctl.prefetch(hs))  # type: ignore[arg-type]
        assert res.page_hashes == hs  # the caller sees bare hashes
        pool.free(res.host_indices)
    finally:
        ctl.close()


def test_threshold_skips_small_prefetches(pool: HostKVPool, tmp_path: Path) -> None:
    ctl = make_controller(pool)
    try:
        ctl.attach("dirstore", {"root": str(tmp_path / "l3")})  # default threshold: 256 tokens
        assert ctl.status()["policies"]["prefetch_threshold"] == 256
        hs = hashes(70)  # 280 tokens of page size 4
        store(ctl, pool, hs[:60])  # only 240 tokens in L3
        assert ctl.prefetch(hs[:63]) is None  # 252 tokens asked: below the threshold, no lookup
        free_before = pool.available_size()
        res = take_all(ctl.prefetch(hs))  # type: ignore[arg-type]
        assert res.pages == 0 and res.storage_hit_pages == 60 and "below prefetch_threshold" in res.reason
        assert pool.available_size() == free_before
        store(ctl, pool, hs[60:])
        res = take_all(ctl.prefetch(hs))  # type: ignore[arg-type]
        assert res.pages == 70
        pool.free(res.host_indices)
    finally:
        ctl.close()


def test_prefetch_batches_of_at_most_128(
    ctl: StorageController, pool: HostKVPool, batches: list[tuple[str, int]]  # noqa: F811
) -> None:
    hs = hashes(300)
    store(ctl, pool, hs)
    batches.clear()
    res = take_all(ctl.prefetch(hs))  # type: ignore[arg-type]
    assert res.pages == 300
    assert [n for kind, n in batches if kind == "get"] == [128, 128, 44]
    check_pages(pool, hs, res.host_indices)
    pool.free(res.host_indices)


def test_backup_batches_of_at_most_128(
    ctl: StorageController, pool: HostKVPool, batches: list[tuple[str, int]]  # noqa: F811
) -> None:
    store(ctl, pool, hashes(200))
    assert [n for kind, n in batches if kind == "set"] == [128, 72]


def test_mid_batch_failure_truncates_hit(
    ctl: StorageController, pool: HostKVPool, poison: set[str]  # noqa: F811
) -> None:
    hs = hashes(200)
    store(ctl, pool, hs)
    poison.add(hs[150])  # in the middle of the second batch
    free_before = pool.available_size()
    res = take_all(ctl.prefetch(hs))  # type: ignore[arg-type]
    assert res.page_hashes == hs[:150] and res.storage_hit_pages == 200 and not res.complete
    assert "truncated to 150" in res.reason
    check_pages(pool, hs[:150], res.host_indices)
    pool.free(res.host_indices)
    assert pool.available_size() == free_before  # pages after the failure went back
    # A page the backend answered False for is refused, not a failed call: it never feeds the breaker.
    assert ctl.metrics.sample("hicache_backend_refused_pages_total", {"op": "batch_get_v1"}) == 50
    assert ctl.metrics.sample("hicache_backend_failures_total", {"op": "batch_get_v1", "kind": "pages"}) is None


def test_full_pool_loads_fewer(tmp_path: Path) -> None:
    pool = make_pool(pages=64)
    ctl = make_controller(pool)
    try:
        ctl.attach("dirstore", {"root": str(tmp_path / "l3"), "prefetch_threshold": 0})
        hs = hashes(40)
        store(ctl, pool, hs)
        hog = pool.alloc(50 * pool.page_size)  # leave 14 free pages
        assert hog is not None
        res = take_all(ctl.prefetch(hs))  # type: ignore[arg-type]
        assert res.page_hashes == hs[:14] and "host pool full" in res.reason
        check_pages(pool, hs[:14], res.host_indices)
        assert pool.available_size() == 0
        pool.free(res.host_indices)
        pool.free(hog)
    finally:
        ctl.close()


def test_cancel_returns_pages(ctl: StorageController, pool: HostKVPool) -> None:
    hs = hashes(30)
    store(ctl, pool, hs)
    free_before = pool.available_size()
    op = ctl.prefetch(hs)
    assert op is not None
    wait_for(lambda: op.done)
    op.cancel()
    assert pool.available_size() == free_before


def test_wait_twice_is_a_programming_error(ctl: StorageController, pool: HostKVPool) -> None:
    hs = hashes(4)
    store(ctl, pool, hs)
    op = ctl.prefetch(hs)
    assert op is not None
    res = take_all(op)
    pool.free(res.host_indices)
    with pytest.raises(RuntimeError, match="once"):
        op.wait()


# ---------------------------------------------------------------- stop policies
def _slow_ctl(pool: HostKVPool, tmp_path: Path, policy: str, **knobs: object) -> StorageController:
    """A controller whose backend sleeps 150 ms before every call (fault injection)."""
    ctl = make_controller(pool)
    ctl.attach(
        "dirstore",
        {"root": str(tmp_path / "l3"), "prefetch_threshold": 0, "fault_injection": {"delay_ms": 150}, **knobs},
        prefetch_policy=policy,
    )
    return ctl


def _store_fast(pool: HostKVPool, tmp_path: Path, hs: list[str]) -> None:
    fast = make_controller(pool)
    try:
        fast.attach("dirstore", {"root": str(tmp_path / "l3"), "prefetch_threshold": 0})
        store(fast, pool, hs)
    finally:
        fast.close()


def test_best_effort_takes_what_arrived(pool: HostKVPool, tmp_path: Path) -> None:
    hs = hashes(300)  # exists + 3 batches: about 600 ms in all
    _store_fast(pool, tmp_path, hs)
    ctl = _slow_ctl(pool, tmp_path, "best_effort")
    try:
        free_before = pool.available_size()
        op = ctl.prefetch(hs)
        assert op is not None
        wait_for(lambda: op.loaded_pages > 0)  # the first batch landed; the next takes 150 ms
        t0 = time.monotonic()
        res = op.wait()
        assert time.monotonic() - t0 < 0.1  # best_effort never waits
        assert 0 < res.pages < 300 and res.page_hashes == hs[: res.pages] and not res.complete
        check_pages(pool, res.page_hashes, res.host_indices)
        wait_for(lambda: op.done)
        pool.free(res.host_indices)
        wait_for(lambda: pool.available_size() == free_before)  # later pages were freed for us
    finally:
        ctl.close()


def test_wait_complete_waits_for_everything(pool: HostKVPool, tmp_path: Path) -> None:
    hs = hashes(300)
    _store_fast(pool, tmp_path, hs)
    ctl = _slow_ctl(pool, tmp_path, "wait_complete")
    try:
        op = ctl.prefetch(hs)
        assert op is not None
        res = op.wait()
        assert res.page_hashes == hs and res.complete
        check_pages(pool, hs, res.host_indices)
        pool.free(res.host_indices)
    finally:
        ctl.close()


def test_timeout_policy_stops_at_budget(pool: HostKVPool, tmp_path: Path) -> None:
    hs = hashes(300)
    _store_fast(pool, tmp_path, hs)
    # budget: 0.2 s + 0.1 s per 1024 tokens x 1200/1024 = 0.317 s, less than the ~600 ms load
    ctl = _slow_ctl(pool, tmp_path, "timeout", prefetch_timeout_base=0.2, prefetch_timeout_per_ki_token=0.1)
    try:
        free_before = pool.available_size()
        op = ctl.prefetch(hs)
        assert op is not None
        assert op.timeout_s == pytest.approx(0.2 + 0.1 * 1200 / 1024)
        t0 = time.monotonic()
        res = op.wait()
        waited = time.monotonic() - t0
        assert 0.25 < waited < 0.58
        assert res.pages < 300 and not res.complete and res.page_hashes == hs[: res.pages]
        check_pages(pool, res.page_hashes, res.host_indices)
        pool.free(res.host_indices)
        wait_for(lambda: op.done)
        wait_for(lambda: pool.available_size() == free_before)
        # A generous budget lets it finish.
        ctl.attach("dirstore", {"root": str(tmp_path / "l3"), "prefetch_threshold": 0,
                                "fault_injection": {"delay_ms": 150}, "prefetch_timeout_base": 10})
        op = ctl.prefetch(hs)
        assert op is not None
        res = op.wait()
        assert res.pages == 300 and res.complete
        pool.free(res.host_indices)
    finally:
        ctl.close()


# ---------------------------------------------------------------- backup
def test_backup_partial_success_page_by_page(pool: HostKVPool, tmp_path: Path) -> None:
    ctl = make_controller(pool)
    try:
        ctl.attach("partial", {"root": str(tmp_path / "l3"), "prefetch_threshold": 0})
        hs = hashes(6)
        idx = fill_pages(pool, hs)
        done: list[list[bool]] = []
        ctl.backup(hs, idx, done.append)
        wait_for(lambda: bool(done))
        assert done == [[True, False, True, False, True, False]]
        st = ctl.status()["counters"]
        assert st["backup_pages"] == 3 and st["backup_failed_pages"] == 3
        assert sorted(p.name for p in (tmp_path / "l3").iterdir()) == sorted(hs[::2])
        pool.free(idx)
    finally:
        ctl.close()


def test_on_done_exactly_once_under_concurrency(ctl: StorageController, pool: HostKVPool) -> None:
    calls: dict[int, int] = {}
    lock = threading.Lock()

    def worker(t: int) -> None:
        for j in range(5):
            hs = hashes(3)
            idx = fill_pages(pool, hs)
            key = t * 100 + j

            def on_done(results: list[bool], key: int = key, idx: object = idx) -> None:
                with lock:
                    calls[key] = calls.get(key, 0) + 1
                pool.free(idx)  # type: ignore[arg-type]

            ctl.backup(hs, idx, on_done)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for(lambda: len(calls) == 20)
    ctl.detach()
    assert set(calls.values()) == {1}


def test_backup_bad_indices_is_a_miss_not_an_exception(ctl: StorageController, pool: HostKVPool) -> None:
    got: list[list[bool]] = []
    assert ctl.backup(hashes(2), pool.pages_to_indices([0]), got.append) is False
    assert got == [[False, False]]



@pytest.mark.parametrize("shift", [1, 10**6], ids=["misaligned", "outside-the-pool"])
def test_backup_bad_indices_never_count_against_the_backend(
    pool: HostKVPool, tmp_path: Path, shift: int
) -> None:
    """A caller's bug is refused before the queue: the breaker must not detach a healthy backend."""
    ctl = make_controller(pool, breaker_threshold=2, auto_reattach=False)
    try:
        ctl.attach("dirstore", {"root": str(tmp_path / "l3")})
        for _ in range(3):
            got: list[list[bool]] = []
            assert ctl.backup(hashes(2), torch.arange(2 * pool.page_size) + shift, got.append) is False
            assert got == [[False, False]]
        assert ctl.state == "attached" and ctl.status()["breaker"]["consecutive_failures"] == 0
    finally:
        ctl.close()


def test_mla_non_writer_rank_skips_writes(pool: HostKVPool, tmp_path: Path) -> None:
    mla = make_pool(is_mla=True)
    ctl = make_controller(mla, storage_config=HiCacheStorageConfig(model_name="m", is_mla_model=True, tp_rank=1, tp_size=2))
    try:
        ctl.attach("dirstore", {"root": str(tmp_path / "l3")})
        hs = hashes(3)
        idx = fill_pages(mla, hs)
        got: list[list[bool]] = []
        assert ctl.backup(hs, idx, got.append)
        assert got == [[True, True, True]]
        assert list((tmp_path / "l3").iterdir()) == []
    finally:
        ctl.close()


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("write_through", {("insert", 1): True, ("hit", 1): False, ("hit", 2): False, ("evict", 1): False}),
        ("write_through_selective", {("insert", 1): False, ("hit", 1): False, ("hit", 2): True, ("evict", 1): False}),
        ("write_back", {("insert", 1): False, ("hit", 1): False, ("hit", 5): False, ("evict", 1): True}),
    ],
)
def test_write_policies(ctl: StorageController, tmp_path: Path, policy: str, expected: dict[tuple[str, int], bool]) -> None:
    ctl.attach("dirstore", {"root": str(tmp_path / "l3"), "prefetch_threshold": 0}, write_policy=policy)
    assert ctl.write_policy == policy
    for (event, hits), want in expected.items():
        assert ctl.should_backup(event, hits) is want, (policy, event, hits)
    assert ctl.should_backup("flush") is False  # unknown event: logged, never raised
    ctl.detach()
    assert not any(ctl.should_backup(e, 9) for e in ("insert", "hit", "evict"))


def test_prefetch_workers_serve_requests_in_parallel(pool: HostKVPool, tmp_path: Path) -> None:
    hs_a, hs_b = hashes(4), hashes(4)
    _store_fast(pool, tmp_path, hs_a + hs_b)
    ctl = make_controller(pool, prefetch_workers=2)
    try:
        ctl.attach("dirstore", {"root": str(tmp_path / "l3"), "prefetch_threshold": 0,
                                "fault_injection": {"delay_ms": 500}}, prefetch_policy="wait_complete")
        t0 = time.monotonic()
        ops = [ctl.prefetch(hs_a), ctl.prefetch(hs_b)]
        results = [op.wait() for op in ops if op is not None]
        elapsed = time.monotonic() - t0
        # Each prefetch is two 500 ms calls (lookup, load): ~1 s in parallel, 2 s one after the other.
        assert elapsed < 1.7
        for hs, res in zip((hs_a, hs_b), results):
            check_pages(pool, hs, res.host_indices)
            pool.free(res.host_indices)
    finally:
        ctl.close()
