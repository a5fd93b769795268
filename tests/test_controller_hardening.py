"""The breaker and the backend lifecycle under faults (issue 16, reliability). Real backends
on real files (the test ``DirStore`` family and hicache-file), real threads and timeouts."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest
from _controller_backends import (
    FULL_STORES,
    HANG,
    SLOW_STORES,
    backup_pages,
    fill_pages,
    hashes,
    make_controller,
    make_pool,
    wait_for,
)
from _node_helpers import dir_store, small_node
from prometheus_client import generate_latest

from hicache_core.controller import ControllerError, StorageController, fault_switch
from hicache_core.controller.attach_check import PROBE_KEY_PREFIX
from hicache_core.controller.ratelimit import RateLimitFilter
from hicache_core.controller.session import BACKUP_QUEUE_MAX
from hicache_core.controller.workers import ADMIN_WORKERS
from hicache_core.plugins.dynamic import DYNAMIC_ALLOWLIST_ENV


# ---------------------------------------------------------------------------- full is not failing
def test_a_full_store_is_back_pressure_not_a_breaker_trip(tmp_path: Path) -> None:
    """An all-False v1 answer counted as a fault: 11 trips in 3 s on a healthy, full store."""
    FULL_STORES.clear()
    pool = make_pool()
    ctl = make_controller(pool, breaker_threshold=3, probe_interval_s=0.01)
    try:
        ctl.attach("fullstore", {"root": str(tmp_path)})
        results = [backup_pages(ctl, pool, hashes(2)) for _ in range(30)]
        assert all(r == [False, False] for r in results)  # L2 keeps them: not stored, nothing lost
        st = ctl.status()
        assert st["state"] == "attached" and st["breaker"]["trips"] == 0
        assert st["counters"]["refused_pages"] == 60 and st["counters"]["failures"] == 0
        store = FULL_STORES[-1]
        assert store.set_calls < 30  # back-pressure: while it refuses, backups skip the call
    finally:
        ctl.close()


def test_a_store_that_refuses_everything_and_is_unhealthy_opens_the_breaker(tmp_path: Path) -> None:
    """A store whose server is down may answer False instead of raising (Mooncake does): the
    refusal asks health_check, which tells a dead store from a full one."""
    pool = make_pool()
    ctl = make_controller(pool, breaker_threshold=5, auto_reattach=False)
    try:
        ctl.attach("fullstore", {"root": str(tmp_path), "down": True})
        assert backup_pages(ctl, pool, hashes(2)) == [False, False]
        wait_for(lambda: ctl.state == "degraded")
        assert ctl.status()["breaker"]["trips"] == 1
        assert "unreachable" in (ctl.status()["breaker"]["reason"] or "")
    finally:
        ctl.close()


def test_a_store_that_cannot_write_is_refused_at_attach(tmp_path: Path) -> None:
    """A read-only store was accepted; its first replay logged 6,400 warnings. (Tests run as
    root, for whom chmod makes nothing read-only: this store refuses every write instead.)"""
    pool = make_pool()
    ctl = make_controller(pool)
    try:
        with pytest.raises(ControllerError, match="refused to store a probe page"):
            ctl.attach("fullstore", {"root": str(tmp_path), "full_after": 0})
        assert not ctl.attached
        ctl.attach("dirstore", {"root": str(tmp_path / "ok")})
        assert not any(p.name.startswith(PROBE_KEY_PREFIX) for p in (tmp_path / "ok").iterdir())  # deleted
    finally:
        ctl.close()


# ---------------------------------------------------------------------------- lifecycle
def test_a_backend_is_closed_only_after_its_calls_end(tmp_path: Path) -> None:
    SLOW_STORES.clear()
    pool = make_pool()
    ctl = make_controller(pool, io_timeout_s=0.2, quiesce_timeout_s=0.2)
    try:
        ctl.attach("slowread", {"root": str(tmp_path), "read_delay_s": 1.0, "prefetch_threshold": 0},
                   prefetch_policy="best_effort")
        store = SLOW_STORES[-1]
        op = ctl.prefetch(hashes(4))
        assert op is not None
        wait_for(lambda: store.running == 1)
        ctl.detach()  # returns within its bound while the read still runs...
        assert store.running == 1 and store.closed_while_running == []
        wait_for(lambda: store.closed_while_running != [], timeout=5)
        assert store.closed_while_running == [0]  # ...and the close waited for the read to end
        op.cancel()
    finally:
        ctl.close()


def test_admin_work_runs_on_one_bounded_pool(tmp_path: Path) -> None:
    """Every attach and probe started a thread; a hanging constructor leaked one per attempt."""
    pool = make_pool(pages=64)
    ctl = make_controller(pool, attach_timeout_s=0.05)
    HANG.clear()
    before = threading.active_count()
    try:
        errors = []
        for _ in range(3 * ADMIN_WORKERS):
            with pytest.raises(ControllerError) as info:
                ctl.attach("hangctor", {"root": str(tmp_path)})
            errors.append(str(info.value))
        assert threading.active_count() - before <= ADMIN_WORKERS
        assert any("admin workers are held" in e for e in errors)
    finally:
        HANG.set()
        ctl.close()


def test_queues_are_bounded_and_never_block_a_request(tmp_path: Path) -> None:
    pool = make_pool(pages=64)
    ctl = make_controller(pool, io_timeout_s=5.0)
    try:
        ctl.attach("dirstore", {"root": str(tmp_path), "fault_injection": {"delay_ms": 200}})
        idx = fill_pages(pool, hashes(1))
        done: list[list[bool]] = []
        t0 = time.perf_counter()
        queued = [ctl.backup(hashes(1), idx, done.append) for _ in range(BACKUP_QUEUE_MAX + 100)]
        assert time.perf_counter() - t0 < 3.0  # never waited for the 200 ms calls
        assert queued.count(False) >= 90  # overflow: answered at once, pages stay in L2 only
        assert ctl.status()["counters"]["queue_overflows"] >= 90
        assert sum(1 for r in done if r == [False]) >= 90
    finally:
        ctl.close()


def test_backend_logs_are_rate_limited() -> None:
    logger = logging.getLogger("hicache-test-ratelimit")
    flt = RateLimitFilter(burst=5, interval_s=60)
    logger.addFilter(flt)
    seen: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    logger.addHandler(Grab())
    logger.propagate = False
    for i in range(6400):
        logger.warning("file backend: cannot create %s: read-only", f"/x/{i}")
    assert len(seen) == 5 and flt.dropped() == 6395


def test_attached_backends_get_the_log_limit(tmp_path: Path) -> None:
    pool = make_pool(pages=64)
    ctl = make_controller(pool)
    try:
        ctl.attach("dirstore", {"root": str(tmp_path)})
        assert any(isinstance(f, RateLimitFilter) for f in logging.getLogger("_controller_backends").filters)
    finally:
        ctl.close()


def test_a_write_policy_does_not_carry_over_to_the_next_attach(tmp_path: Path) -> None:
    pool = make_pool(pages=64)
    ctl = make_controller(pool)
    try:
        ctl.attach("dirstore", {"root": str(tmp_path)}, write_policy="write_back")
        ctl.detach()
        ctl.attach("dirstore", {"root": str(tmp_path)})
        assert ctl.write_policy == "write_through"
        ctl.attach("dirstore", {"root": str(tmp_path)}, write_policy="write_back")  # knobs-only: kept
        ctl.attach("dirstore", {"root": str(tmp_path)})
        assert ctl.write_policy == "write_back"
    finally:
        ctl.close()


def test_a_read_that_raised_once_is_retried_not_a_miss(tmp_path: Path) -> None:
    pool = make_pool()
    ctl = make_controller(pool, breaker_threshold=2)
    try:
        ctl.attach("flipflop", {"root": str(tmp_path), "prefetch_threshold": 0}, prefetch_policy="wait_complete")
        hs = hashes(4)
        assert backup_pages(ctl, pool, hs) == [True] * 4
        for _ in range(3):
            op = ctl.prefetch(hs)
            assert op is not None
            res = op.wait()
            assert res.page_hashes == hs, res.reason  # each call raised once and worked on its retry
            pool.free(res.host_indices)
        st = ctl.status()
        assert st["state"] == "attached" and st["counters"]["failures"] == 0
    finally:
        ctl.close()


# ---------------------------------------------------------------------------- config schema
@pytest.mark.parametrize(("extra", "expect"), [
    ({"pathh": "/tmp/x"}, "did you mean 'path'"),
    ({"path": ""}, "'path' is empty"),
    ({"path": "relative/dir"}, "relative path"),
    ({"path": "/tmp/x", "max_pages": "many"}, "max_pages"),
])
def test_file_config_is_validated_before_anything_is_created(
    extra: dict[str, object], expect: str, tmp_path: Path,
) -> None:
    """{"pathh": ...} or {"path": ""} silently used /tmp/hicache; a relative path the server's cwd."""
    pool = make_pool(pages=64)
    ctl = StorageController(pool)
    try:
        with pytest.raises(ControllerError, match=expect):
            ctl.attach("file", extra)
        assert not ctl.attached
    finally:
        ctl.close()


@pytest.mark.parametrize(("backend", "extra", "expect"), [
    ("nixl", {"plugin": "POSIX", "storage_dirr": "/tmp/x"}, "did you mean 'storage_dir'"),
    ("mooncake", {"master_server_adress": "127.0.0.1:1"}, "did you mean 'master_server_address'"),
    ("hf3fs", {"file_path_prefx": "/tmp/x"}, "did you mean 'file_path_prefix'"),
])
def test_declared_options_are_the_schema_of_backends_without_a_model(backend: str, extra: dict[str, object],
                                                                       expect: str) -> None:
    """A typo in a backend's key silently meant its default; now it is refused, nearest key named."""
    pool = make_pool(pages=64)
    ctl = StorageController(pool)
    try:
        with pytest.raises(ControllerError, match=expect):
            ctl.attach(backend, extra)
        assert not ctl.attached
    finally:
        ctl.close()


# ---------------------------------------------------------------------------- counters
def test_backend_counters_reach_metrics_and_status(tmp_path: Path) -> None:
    pool = make_pool()
    ctl = StorageController(pool, rank=3)
    try:
        ctl.attach("file", {"path": str(tmp_path)})
        backup_pages(ctl, pool, hashes(3))
        text = generate_latest(ctl.metrics.registry).decode()
        assert 'hicache_backend_stat{backend="file",rank="3",stat="writes"}' in text
        stats = ctl.status()["backend_stats"]
        assert stats["writes"] >= 3 and "corrupt" in stats
    finally:
        ctl.close()


# ---------------------------------------------------------------------------- node level
def test_after_a_reattach_l2_pages_are_backed_up_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Mooncake master restart loses every object; after the breaker re-attached, pages L2
    believed were in L3 were never written again: holes for good."""
    from hicache_core.node.tokens import request_from_block_ids

    monkeypatch.setenv(DYNAMIC_ALLOWLIST_ENV, "_node_backends")
    name = f"resync-{tmp_path.name}"
    switch = fault_switch(name)
    node = small_node(page_size=16, device_capacity_tokens=16 * 64, hicache_ratio=8.0, breaker_threshold=2,
                      probe_interval_s=0.05)
    l3 = tmp_path / "l3"
    try:
        node.attach("dynamic", {**dir_store(l3), "fault_injection": {"switch": name}})
        reqs = [request_from_block_ids([100 + i], 512, 16) for i in range(3)]
        for r in reqs:
            node.process(r)
        assert node.wait_backups(10)
        stored = {p.name for p in l3.iterdir() if p.suffix == ".page" and not p.name.startswith(PROBE_KEY_PREFIX)}
        assert len(stored) >= 3 * 32
        switch.fail_all = True
        for i in range(4):
            node.process(request_from_block_ids([900 + i], 512, 16))
        wait_for(lambda: node.ranks[0].controller.state == "degraded")
        for p in l3.iterdir():  # the store restarts empty
            p.unlink()
        switch.fail_all = False
        wait_for(lambda: node.ranks[0].controller.attached)
        node.process(request_from_block_ids([7], 512, 16))  # any request: the rank re-syncs L3
        assert node.wait_backups(10)
        again = {p.name for p in l3.iterdir() if p.suffix == ".page"}
        in_l2 = {f"{h}.page" for h, _ in node.ranks[0].l2.items()}
        assert len(stored & in_l2) == len(stored)  # L2 kept every page it stored
        assert in_l2 <= again  # every page L2 still holds is in L3 again, the wiped ones included
        assert node.ranks[0].counters.resync_pages >= len(stored & in_l2)
    finally:
        switch.fail_all = False
        node.close()


def test_dp_ranks_sharing_a_file_directory_share_one_bound(tmp_path: Path) -> None:
    from hicache_core.node.tokens import request_from_block_ids

    node = small_node(page_size=512, device_capacity_tokens=512 * 2, dp_size=2)
    try:
        node.attach("file", {"path": str(tmp_path), "max_pages": 4})
        for i in range(24):
            node.process(request_from_block_ids([1000 + i], 512, 512))
        assert node.wait_backups(10)
        pages = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith(".")]
        assert 0 < len(pages) <= 4, len(pages)  # each rank kept its own bound of 4: 8 were left
        assert sum(r["storage"]["backend_stats"]["pages"] for r in node.status()["ranks"]) <= 4
        shown = json.loads(node.backend_view()["hicache_storage_backend_extra_config_json"])
        assert shown["max_pages"] == 2
    finally:
        node.close()
