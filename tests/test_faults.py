"""The failure-injection wrapper, around a real file store."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from _controller_backends import DirStore, fill_pages, hashes, make_pool

from hicache_core import BackendConfigError, HiCacheStorage, HiCacheStorageConfig
from hicache_core.controller import FaultInjectingStorage, InjectedFault, fault_switch
from hicache_core.controller.faults import FaultConfig, parse_fault_config
from hicache_core.testing import StorageConformanceTests


def _wrapped(tmp_path: Path, **faults: object) -> FaultInjectingStorage:
    inner = DirStore(HiCacheStorageConfig(extra_config={"root": str(tmp_path)}))
    cfg = parse_fault_config({"fault_injection": faults}, environ={})
    assert cfg is not None
    return FaultInjectingStorage(inner, cfg)


def _outcomes(store: FaultInjectingStorage, n: int) -> list[bool]:
    out = []
    for i in range(n):
        try:
            store.exists(f"k{i}")
            out.append(True)
        except InjectedFault:
            out.append(False)
    return out


def test_seeded_failures_repeat_and_match_probability(tmp_path: Path) -> None:
    a = _outcomes(_wrapped(tmp_path, fail_prob=0.3, seed=42), 400)
    b = _outcomes(_wrapped(tmp_path, fail_prob=0.3, seed=42), 400)
    c = _outcomes(_wrapped(tmp_path, fail_prob=0.3, seed=43), 400)
    assert a == b and a != c
    assert 0.2 < a.count(False) / 400 < 0.4


def test_no_faults_passes_everything_through(tmp_path: Path) -> None:
    store = _wrapped(tmp_path, fail_prob=0.0)
    pool = make_pool()
    store.register_mem_pool_host(pool)
    assert store.inner.mem_pool_host is pool
    hs = hashes(3)
    idx = fill_pages(pool, hs)
    assert store.batch_set_v1(hs, idx) == [True] * 3
    other = pool.alloc(3 * pool.page_size)
    assert other is not None
    assert store.batch_get_v1(hs, other) == [True] * 3
    for a, b in zip(pool.indices_to_pages(idx), pool.indices_to_pages(other)):
        assert pool.read_page(a).equal(pool.read_page(b))
    assert store.batch_exists(hs) == 3 and store.exists_many([*hs, "x"]) == [True, True, True, False]
    assert store.capabilities == DirStore.capabilities
    assert store.get_stats()["fault_injection"]["calls"] == 4  # type: ignore[index]


def test_delay_range(tmp_path: Path) -> None:
    store = _wrapped(tmp_path, delay_ms=[20, 30], seed=1)
    t0 = time.perf_counter()
    for _ in range(5):
        store.exists("k")
    elapsed = time.perf_counter() - t0
    assert 0.1 <= elapsed < 1.0


def test_page_failures_are_per_page(tmp_path: Path) -> None:
    store = _wrapped(tmp_path, page_fail_prob=0.5, seed=3)
    pool = make_pool()
    store.register_mem_pool_host(pool)
    hs = hashes(64)
    idx = fill_pages(pool, hs)
    results = store.batch_set_v1(hs, idx)
    assert len(results) == 64 and 10 < results.count(False) < 54


def test_fail_all_switch_flips_at_run_time(tmp_path: Path) -> None:
    store = _wrapped(tmp_path, switch="faults-test")
    store.exists("k")
    fault_switch("faults-test").fail_all = True
    try:
        with pytest.raises(InjectedFault):
            store.exists("k")
        with pytest.raises(InjectedFault):
            store.health_check()
        other = _wrapped(tmp_path, switch="faults-test")  # a later instance sees the same switch
        with pytest.raises(InjectedFault):
            other.exists("k")
    finally:
        fault_switch("faults-test").fail_all = False
    store.exists("k")


def test_env_configuration() -> None:
    env = {"HICACHE_FAULT_FAIL_PROB": "0.25", "HICACHE_FAULT_DELAY_MS": "1,4", "HICACHE_FAULT_SEED": "9"}
    cfg = parse_fault_config({}, environ=env)
    assert cfg == FaultConfig(fail_prob=0.25, delay_ms=(1.0, 4.0), seed=9)
    # extra-config wins key by key
    cfg = parse_fault_config({"fault_injection": {"fail_prob": 0.5}}, environ=env)
    assert cfg is not None and cfg.fail_prob == 0.5 and cfg.seed == 9
    assert parse_fault_config({"root": "/x"}, environ={}) is None


@pytest.mark.parametrize(
    ("faults", "why"),
    [
        ({"fail_prob": 1.5}, "fail_prob must be a probability"),
        ({"delay_ms": [5, 1]}, "delay_ms needs"),
        ({"delay_ms": "slow"}, "delay_ms must be"),
        ({"seed": "abc"}, "seed must be an integer"),
        ({"fial_prob": 0.1}, "unknown key.*fial_prob"),
    ],
)
def test_bad_fault_config_names_the_key(faults: dict[str, object], why: str) -> None:
    with pytest.raises(BackendConfigError, match=why):
        parse_fault_config({"fault_injection": faults}, environ={})


def test_fault_config_must_be_an_object() -> None:
    with pytest.raises(BackendConfigError, match="must be an object"):
        parse_fault_config({"fault_injection": 0.1}, environ={})


def test_controller_wraps_backend_when_env_configures_faults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from _controller_backends import make_controller

    monkeypatch.setenv("HICACHE_FAULT_SWITCH", "env-switch")
    monkeypatch.setenv("HICACHE_FAULT_SEED", "5")
    pool = make_pool(pages=16)
    ctl = make_controller(pool)
    try:
        ctl.attach("dirstore", {"root": str(tmp_path)})
        injector = ctl.fault_injector
        assert injector is not None and injector.switch is fault_switch("env-switch")
        assert ctl.status()["fault_injection"]["seed"] == 5
        monkeypatch.delenv("HICACHE_FAULT_SWITCH")
        monkeypatch.delenv("HICACHE_FAULT_SEED")
        ctl.attach("dirstore2", {"root": str(tmp_path)}, replace=True)
        assert ctl.fault_injector is None and ctl.status()["fault_injection"] is None
    finally:
        ctl.close()


class _NamespacedDirStore(DirStore):
    """DirStore under the core's key rule (``page_key``: model, page format, shard), as the kit
    requires of every backend: another pool's page must be a miss, never a wrong hit."""

    def _path(self, key: str) -> Path:
        return self.root / hashlib.sha256(self.page_key(key).encode()).hexdigest()  # any key length


class TestWrapperKeepsTheContract(StorageConformanceTests):
    """The conformance kit through the wrapper (faults configured but inactive)."""

    @pytest.fixture
    def open_backend(self, tmp_path: Path) -> Callable[[HiCacheStorageConfig], HiCacheStorage]:
        def _open(config: HiCacheStorageConfig) -> HiCacheStorage:
            inner = _NamespacedDirStore(replace(config, extra_config={"root": str(tmp_path / "store")}))
            return FaultInjectingStorage(inner, FaultConfig(delay_ms=(0.0, 0.1), seed=0))

        return _open
