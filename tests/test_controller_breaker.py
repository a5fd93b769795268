"""The circuit breaker: failures counted, auto-detach after N in a row, probing, re-attach."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from _controller_backends import (
    backup_pages,
    check_pages,
    fill_pages,
    hashes,
    make_controller,
    make_pool,
    wait_for,
)

from hicache_core import HostKVPool
from hicache_core.controller import StorageController, fault_switch


def _backup(ctl: StorageController, pool: HostKVPool, n: int = 2) -> list[bool]:
    return backup_pages(ctl, pool, hashes(n))


def test_breaker_opens_and_recovers(tmp_path: Path) -> None:
    switch = fault_switch(f"breaker-{tmp_path.name}")
    pool = make_pool()
    ctl = make_controller(pool, breaker_threshold=3, auto_reattach=True, probe_interval_s=0.05)
    try:
        ctl.attach("dirstore", {"root": str(tmp_path / "l3"), "prefetch_threshold": 0,
                                "fault_injection": {"switch": f"breaker-{tmp_path.name}"}},
                   prefetch_policy="wait_complete")
        assert _backup(ctl, pool) == [True, True]
        switch.fail_all = True
        # Failures are per-page False answers, never exceptions, until the breaker opens.
        for _ in range(3):
            assert _backup(ctl, pool) == [False, False]
        wait_for(lambda: ctl.status()["state"] == "degraded")
        st = ctl.status()
        assert st["breaker"]["state"] == "open" and st["breaker"]["trips"] == 1
        assert "3 consecutive failed calls" in st["breaker"]["reason"] and st["breaker"]["opened_at"]
        assert "InjectedFault" in st["last_error"]
        assert st["backend"] == "dirstore"  # what is being probed
        assert ctl.backend_view()["hicache_storage_backend"] is None  # not in force
        assert not ctl.attached
        # L2-only: misses, never exceptions.
        assert ctl.prefetch(hashes(4)) is None
        assert _backup_nowait(ctl, pool) == [False, False]
        wait_for(lambda: ctl.status()["breaker"]["probes"] >= 2)
        assert "InjectedFault" in (ctl.status()["breaker"]["last_probe_error"] or "")
        assert ctl.metrics.sample("hicache_breaker_state") == 1
        switch.fail_all = False  # the backend comes back
        wait_for(lambda: ctl.status()["state"] == "attached")
        st = ctl.status()
        assert st["breaker"]["state"] == "closed" and st["breaker"]["trips"] == 1
        assert st["counters"]["reattaches"] == 1
        assert ctl.metrics.sample("hicache_breaker_state") == 0
        hs = hashes(5)
        backup_pages(ctl, pool, hs)
        op = ctl.prefetch(hs)
        assert op is not None
        res = op.wait()
        check_pages(pool, hs, res.host_indices)
        pool.free(res.host_indices)
    finally:
        switch.fail_all = False
        ctl.close()


def _backup_nowait(ctl: StorageController, pool: HostKVPool) -> list[bool]:
    hs = hashes(2)
    idx = fill_pages(pool, hs)
    got: list[list[bool]] = []
    assert ctl.backup(hs, idx, got.append) is False  # nothing queued: on_done already ran
    pool.free(idx)
    return got[0]


def test_breaker_without_auto_reattach_stays_degraded_until_admin(tmp_path: Path) -> None:
    name = f"noreattach-{tmp_path.name}"
    pool = make_pool()
    ctl = make_controller(pool, breaker_threshold=2, auto_reattach=False)
    try:
        extra = {"root": str(tmp_path / "l3"), "prefetch_threshold": 0, "fault_injection": {"switch": name}}
        ctl.attach("dirstore", extra)
        fault_switch(name).fail_all = True
        for _ in range(2):
            _backup(ctl, pool)
        wait_for(lambda: ctl.status()["state"] == "degraded")
        fault_switch(name).fail_all = False
        time.sleep(0.3)
        assert ctl.status()["state"] == "degraded" and ctl.status()["breaker"]["probes"] == 0
        # The operator re-attaches; the breaker closes.
        ctl.attach("dirstore", extra)
        assert ctl.status()["state"] == "attached" and ctl.status()["breaker"]["state"] == "closed"
        assert _backup(ctl, pool) == [True, True]
        # Detach while degraded stops probing and says so.
        fault_switch(name).fail_all = True
        for _ in range(2):
            _backup(ctl, pool)
        wait_for(lambda: ctl.status()["state"] == "degraded")
        assert "degraded" in ctl.detach()
        assert ctl.status()["state"] == "detached"
    finally:
        fault_switch(name).fail_all = False
        ctl.close()


def test_success_resets_consecutive_count(tmp_path: Path) -> None:
    pool = make_pool()
    ctl = make_controller(pool, breaker_threshold=3)
    try:
        ctl.attach("dirstore", {"root": str(tmp_path / "l3"), "fault_injection": {"switch": tmp_path.name}})
        sw = fault_switch(tmp_path.name)
        for _ in range(4):
            sw.fail_all = True
            _backup(ctl, pool)
            _backup(ctl, pool)
            sw.fail_all = False
            assert _backup(ctl, pool) == [True, True]
        assert ctl.status()["state"] == "attached"
        assert ctl.status()["counters"]["failures"] == 8
    finally:
        ctl.close()


def test_timeouts_are_counted_and_never_hang_requests(tmp_path: Path) -> None:
    """A backend that hangs: calls time out (io_timeout_s), requests see misses, pages are safe."""
    name = f"hang-{tmp_path.name}"
    pool = make_pool()
    ctl = make_controller(pool, io_timeout_s=0.2, breaker_threshold=100)
    try:
        ctl.attach("dirstore", {"root": str(tmp_path / "l3"), "prefetch_threshold": 0,
                                "fault_injection": {"switch": name}}, prefetch_policy="wait_complete")
        hs = hashes(4)
        idx = fill_pages(pool, hs)
        got: list[list[bool]] = []
        ctl.backup(hs, idx, got.append)
        wait_for(lambda: bool(got))
        fault_switch(name).hang_s = 0.6
        free_before = pool.available_size()
        t0 = time.monotonic()
        op = ctl.prefetch(hs)
        assert op is not None
        res = op.wait()
        assert time.monotonic() - t0 < 0.6  # the exists call timed out after 0.2 s
        assert res.pages == 0 and "io_timeout_s" in res.reason
        late: list[list[bool]] = []
        ctl.backup(hashes(2), idx[: 2 * pool.page_size], late.append)
        time.sleep(0.35)
        assert late == []  # timed out, but the backend may still read the pages: not released yet
        wait_for(lambda: bool(late), timeout=3)
        assert late[0] == [True, True]  # it did land in the end
        fault_switch(name).hang_s = 0.0
        wait_for(lambda: pool.available_size() == free_before)
        assert ctl.status()["counters"]["timeouts"] >= 2
        assert ctl.metrics.sample("hicache_backend_failures_total", {"op": "batch_exists", "kind": "timeout"}) == 1
        pool.free(idx)
    finally:
        fault_switch(name).hang_s = 0.0
        ctl.close()


@pytest.mark.parametrize("threshold", [0, -1])
def test_breaker_threshold_must_be_positive(threshold: int) -> None:
    with pytest.raises(ValueError, match="breaker_threshold"):
        make_controller(make_pool(pages=4), breaker_threshold=threshold)


_HUNG_BACKEND_SCRIPT = """
import threading
from hicache_core import BackendRegistry, BackendSpec, HiCacheStorage, HostKVPool
from hicache_core.controller import StorageController

class NeverReturns(HiCacheStorage):
    def __init__(self, config):
        super().__init__(config)
        if config.extra().get("hang_ctor"):
            threading.Event().wait()
    pages = {}
    def get(self, key, target_location=None, target_sizes=None):
        if key not in self.pages:
            return None
        target_location.view(-1).copy_(self.pages[key])
        return target_location
    def set(self, key, value=None, target_location=None, target_sizes=None):
        self.pages[key] = value.clone()  # attach's probe page; the test hangs on exists()
        return True
    def exists(self, key): threading.Event().wait()

reg = BackendRegistry(entry_points_override=[])
reg.register(BackendSpec(name="never", target="__main__:NeverReturns"))
ctl = StorageController(HostKVPool(64, 4, 2, 2, 8), registry=reg, io_timeout_s=0.2,
                        quiesce_timeout_s=0.2, attach_timeout_s=0.2)
try:
    ctl.attach("never", {"hang_ctor": True})
except Exception as exc:
    print("attach refused:", type(exc).__name__)
ctl.attach("never", {"prefetch_threshold": 0}, prefetch_policy="wait_complete")
print("prefetch:", ctl.prefetch(["a" * 64] * 4).wait().reason)
ctl.close()
print("closed")
"""


def test_process_exits_despite_a_backend_call_that_never_returns(tmp_path: Path) -> None:
    """A timed-out call (and a timed-out constructor) must not keep the interpreter from exiting."""
    script = tmp_path / "hung.py"
    script.write_text(_HUNG_BACKEND_SCRIPT)
    try:
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit: a hung backend call holds it (non-daemon I/O thread)")
    assert out.returncode == 0, out.stderr
    assert "attach refused: ControllerError" in out.stdout
    assert "io_timeout_s" in out.stdout and "closed" in out.stdout
