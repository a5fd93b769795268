"""Conformance checks of the v2 pool-transfer API (KV + a Mamba-like sidecar state pool).

Mixed into ``StorageConformanceTests``; they need only the kit's ``open_backend`` fixture. A
backend that keeps the core's v2 defaults passes them through its ``get``/``set``/``exists``;
one that overrides ``batch_*_v2`` must give the same answers.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
import torch

from hicache_core.keys import page_hashes
from hicache_core.memory.host_pool import HostKVPool
from hicache_core.memory.state_pool import HostStatePool
from hicache_core.spec.config import HiCacheStorageConfig
from hicache_core.spec.pools import PoolHitPolicy, PoolName, PoolTransfer
from hicache_core.spec.storage import HiCacheStorage
from hicache_core.testing.pages import PoolSnapshot
from hicache_core.testing.verdicts import violated

PAGE = 4


def _attach(open_backend: Callable[[HiCacheStorageConfig], HiCacheStorage], state: HostStatePool,
            config: HiCacheStorageConfig, opened: list[HiCacheStorage]) -> tuple[HiCacheStorage, HostKVPool]:
    backend = open_backend(config)
    opened.append(backend)  # closed by the kit's ``opened`` fixture
    pool = HostKVPool(16 * PAGE, PAGE, 2, 2, 8, dtype=torch.bfloat16, layout="page_first", pin_memory=False)
    backend.register_mem_pool_host(pool)
    backend.register_mem_host_pool_v2(state, PoolName.MAMBA)
    backend.on_host_pools_registered()
    return backend, pool


def _scattered(pool: Any, n: int) -> torch.Tensor:
    """``n`` pages' host indices that are neither 0..n-1 nor in order."""
    first = pool.alloc(n * pool.page_size)
    second = pool.alloc(n * pool.page_size)
    assert first is not None and second is not None
    pool.free(first)
    pages = pool.indices_to_pages(second)[::-1]
    indices: torch.Tensor = pool.pages_to_indices(pages)
    return indices


def _random_fill(pool: Any, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    pool.kv_buffer.view(-1).view(torch.uint8).copy_(
        torch.randint(0, 256, (pool.kv_buffer.numel() * pool.kv_buffer.element_size(),), generator=gen,
                      dtype=torch.uint8)
    )


def _require_untouched(prop: str, call: str, pool: Any, kv_before: PoolSnapshot, kv_pages: list[int],
                       state: Any, st_before: torch.Tensor, st_slots: set[int]) -> None:
    """Only the KV pages and state slots a transfer names may change (none for a write)."""
    if changed := kv_before.changed_pages(kv_pages):
        violated(prop, f"{call} changed KV host pages {changed[:8]} outside the host_indices it was given "
                       "(a read may write only the requested pages; a write none)")
    now, was = state.kv_buffer.view(torch.uint8), st_before.view(torch.uint8)
    slots = [r for r in range(now.shape[0]) if r not in st_slots and not torch.equal(now[r], was[r])]
    if slots:
        violated(prop, f"{call} changed sidecar state slots {slots[:8]} outside the host_indices it was given "
                       "(a read may write only the requested slots; a write none)")


class V2PoolTransferChecks:
    """The v2 API: sidecar pools stored beside KV, their hit policies, byte-equal round trips."""

    def _v2_setup(self, open_backend: Any, config: HiCacheStorageConfig, opened: list[HiCacheStorage],
                  n: int = 4, state_pages: list[int] | None = None
                  ) -> tuple[HiCacheStorage, list[str], dict[str, Any]]:
        state = HostStatePool(16, (3, 5), dtype=torch.float32)
        backend, pool = _attach(open_backend, state, config, opened)
        if not backend.capabilities.sidecar_pools:
            pytest.skip(f"{type(backend).__name__} declares capabilities.sidecar_pools=False (v2 sidecars are misses)")
        # Fresh tokens per call: a shared store keeps earlier tests' pages under the same namespace.
        base = random.randrange(1 << 30)
        keys = page_hashes(list(range(base, base + n * PAGE)), PAGE)
        _random_fill(pool, 1)
        _random_fill(state, 2)
        kv_idx = _scattered(pool, n)
        marks = state_pages if state_pages is not None else list(range(n))
        st_idx = _scattered(state, len(marks))
        kv_before, st_before = PoolSnapshot(pool), state.kv_buffer.clone()
        res = backend.batch_set_v2([
            PoolTransfer(PoolName.KV, host_indices=kv_idx, keys=keys),
            PoolTransfer(PoolName.MAMBA, host_indices=st_idx, keys=[keys[i] for i in marks],
                         hit_policy=PoolHitPolicy.TRAILING_PAGES),
        ])
        _require_untouched("v2 round trip", "batch_set_v2", pool, kv_before, [], state, st_before, set())
        if res.get("kv") != [True] * n:
            violated("v2 round trip", f"batch_set_v2 did not store every KV page on a healthy backend: {res}")
        if res.get("mamba") != [True] * len(marks):
            violated("v2 round trip", f"batch_set_v2 did not store every sidecar state page on a healthy backend: {res}")
        kv_bytes = [bytes(pool.get_data_page(int(kv_idx[i * PAGE]), flat=True).view(torch.uint8).numpy())
                    for i in range(n)]
        st_bytes = [bytes(state.kv_buffer[int(i)].view(torch.uint8).numpy()) for i in st_idx]
        return backend, keys, {"pool": pool, "state": state, "kv": kv_bytes, "st": st_bytes, "marks": marks}

    def test_v2_round_trip_kv_and_sidecar(self, open_backend: Any, storage_config: HiCacheStorageConfig,
        opened: list[HiCacheStorage]) -> None:
        _backend, keys, ctx = self._v2_setup(open_backend, storage_config, opened)
        # A fresh node: new pools, indices scattered differently.
        state = HostStatePool(16, (3, 5), dtype=torch.float32)
        other, pool = _attach(open_backend, state, storage_config, opened)
        kv_idx, st_idx = _scattered(pool, len(keys)), _scattered(state, len(keys))
        _random_fill(pool, 7)  # not zeros: a stray write of zeros shows too
        _random_fill(state, 8)
        kv_before, st_before = PoolSnapshot(pool), state.kv_buffer.clone()
        got = other.batch_get_v2([
            PoolTransfer(PoolName.KV, host_indices=kv_idx, keys=keys),
            PoolTransfer(PoolName.MAMBA, host_indices=st_idx, keys=keys, hit_policy=PoolHitPolicy.TRAILING_PAGES),
        ])
        prop = "v2 round trip (KV and a sidecar pool)"
        if got != {"kv": [True] * len(keys), "mamba": [True] * len(keys)}:
            violated(prop, f"batch_get_v2 of pages batch_set_v2 stored must hit every KV and sidecar page, got {got} "
                           "(a sidecar stored under the KV page's key overwrites the KV page)")
        for i in range(len(keys)):
            page = bytes(pool.get_data_page(int(kv_idx[i * PAGE]), flat=True).view(torch.uint8).numpy())
            if page != ctx["kv"][i]:
                violated(prop, f"batch_get_v2 loaded KV page {i} with other bytes")
            st = bytes(state.kv_buffer[int(st_idx[i])].view(torch.uint8).numpy())
            if st != ctx["st"][i]:
                violated(prop, f"batch_get_v2 loaded sidecar state {i} with other bytes")
        _require_untouched(prop, "batch_get_v2", pool, kv_before, pool.indices_to_pages(kv_idx), state, st_before,
                           {int(i) for i in st_idx})

    def test_v2_trailing_pages_policy(self, open_backend: Any, storage_config: HiCacheStorageConfig,
        opened: list[HiCacheStorage]) -> None:
        # States only at pages 1 and 3 (prefix lengths 2 and 4): with a window of one page,
        # exactly those prefixes are restorable.
        backend, keys, _ = self._v2_setup(open_backend, storage_config, opened, n=4, state_pages=[1, 3])
        state = backend.__dict__["registered_pools"]["mamba"]
        res = backend.batch_exists_v2(keys, [PoolTransfer(PoolName.MAMBA, keys=keys[-1:], host_indices=None,
                                                          hit_policy=PoolHitPolicy.TRAILING_PAGES)])
        prop = "v2 trailing_pages hit policy"
        if res.kv_hit_pages != 4:
            violated(prop, f"states at pages 1 and 3 of 4, window 1: the usable prefix is 4 pages, got {res.kv_hit_pages}")
        if res.restorable_prefix_pages != [2, 4]:
            violated(prop, f"states at pages 1 and 3 of 4: the restorable prefixes are [2, 4], got "
                           f"{res.restorable_prefix_pages} (a state page must be its own page, never the KV page's)")
        assert state is not None

    def test_v2_all_pages_policy_truncates_at_a_missing_sidecar(
        self, open_backend: Any, storage_config: HiCacheStorageConfig, opened: list[HiCacheStorage]
    ) -> None:
        backend, keys, _ = self._v2_setup(open_backend, storage_config, opened, n=4, state_pages=[0, 1, 3])
        res = backend.batch_exists_v2(keys, [PoolTransfer(PoolName.MAMBA, keys=keys, hit_policy=PoolHitPolicy.ALL_PAGES)])
        if res.kv_hit_pages != 2:
            violated("v2 all_pages hit policy", f"a missing sidecar page 2 must cut the usable prefix to 2 pages, got {res}")

    def test_v2_sidecar_of_another_format_is_a_miss(
        self, open_backend: Any, storage_config: HiCacheStorageConfig, opened: list[HiCacheStorage]
    ) -> None:
        _, keys, _ = self._v2_setup(open_backend, storage_config, opened, n=2)
        state = HostStatePool(16, (15,), dtype=torch.int32)  # same bytes per slot, other dtype
        other, _pool = _attach(open_backend, state, storage_config, opened)
        res = other.batch_exists_v2(keys, [PoolTransfer(PoolName.MAMBA, keys=keys, hit_policy=PoolHitPolicy.ALL_PAGES)])
        if res.kv_hit_pages != 0:
            violated("namespace isolation (v2)", f"a float32 state page was a hit for an int32 state pool: {res}")

    def test_v2_unregistered_pool_is_a_clear_error(
        self, open_backend: Any, storage_config: HiCacheStorageConfig, opened: list[HiCacheStorage]
    ) -> None:
        backend = open_backend(storage_config)
        opened.append(backend)
        backend.register_mem_pool_host(HostKVPool(8 * PAGE, PAGE, 2, 2, 8, pin_memory=False))
        with pytest.raises(Exception, match="register_mem_host_pool_v2"):
            backend.batch_get_v2([PoolTransfer("swa", host_indices=torch.arange(PAGE), keys=["a" * 64])])

    def test_v2_kv_transfers_and_sidecar_misses_on_every_backend(
        self, open_backend: Any, storage_config: HiCacheStorageConfig, opened: list[HiCacheStorage]
    ) -> None:
        # KV-only v2 transfers work on every backend; a backend without sidecar pools answers
        # sidecar transfers with misses, never an exception and never a hit.
        state = HostStatePool(16, (3, 5), dtype=torch.float32)
        backend, pool = _attach(open_backend, state, storage_config, opened)
        base = random.randrange(1 << 30)
        keys = page_hashes(list(range(base, base + 3 * PAGE)), PAGE)
        _random_fill(pool, 5)
        idx = _scattered(pool, 3)
        res = backend.batch_set_v2([PoolTransfer(PoolName.KV, host_indices=idx, keys=keys)])
        prop = "v2 KV-only transfers"
        if res != {"kv": [True] * 3}:
            violated(prop, f"batch_set_v2 of 3 KV pages on a healthy backend gave {res}")
        found = backend.batch_exists_v2(keys, [])
        if found.kv_hit_pages != 3:
            violated(prop, f"batch_exists_v2 of 3 stored KV pages gave {found}")
        if backend.capabilities.sidecar_pools:
            return
        st_idx = _scattered(state, 3)
        sres = backend.batch_set_v2([PoolTransfer(PoolName.MAMBA, host_indices=st_idx, keys=keys,
                                                  hit_policy=PoolHitPolicy.TRAILING_PAGES)])
        if len(sres.get("mamba", [])) != 3:
            violated(prop, f"batch_set_v2 of a sidecar on a backend without sidecars must answer one bool per key: {sres}")
        gated = backend.batch_exists_v2(keys, [PoolTransfer(PoolName.MAMBA, keys=keys, hit_policy=PoolHitPolicy.ALL_PAGES)])
        if not all(sres["mamba"]):
            if gated.kv_hit_pages != 0:
                violated(prop, f"sidecar states were not stored, yet a prefix of {gated.kv_hit_pages} pages needing "
                               "them was a hit")
