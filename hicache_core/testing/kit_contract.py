"""Checks of the single-key and batch API, the optional operations, and concurrent use."""

from __future__ import annotations

import threading

import pytest
import torch

from hicache_core.memory.host_pool import HostKVPool
from hicache_core.spec.storage import HiCacheStorage
from hicache_core.testing.kit_base import Connected, Keys, KitBase
from hicache_core.testing.pages import fill_random_pages, random_page, tensor_bytes
from hicache_core.testing.verdicts import describe_mismatch, violated
from hicache_core.version import CONTRACT_VERSION, parse_contract_version


def _got_bytes(prop: str, value: object, what: str) -> bytes:
    if not isinstance(value, torch.Tensor):
        violated(prop, f"{what} returned {type(value).__name__}, not the page (a tensor)")
    return tensor_bytes(value)


def require_page(prop: str, value: object, expected: bytes, what: str) -> None:
    """``value`` (what get returned) must be a tensor holding exactly ``expected``."""
    got = _got_bytes(prop, value, what)
    if got != expected:
        violated(prop, f"{what} returned a page that {describe_mismatch(got, expected)}")


class ContractChecks(KitBase):
    def test_declares_contract_version(self, backend_and_pool: Connected) -> None:
        backend, _ = backend_and_pool
        major, _minor = parse_contract_version(getattr(backend, "contract_version", "1.0"))
        if major != CONTRACT_VERSION[0]:
            violated("contract version", f"backend speaks contract {major}.x, this core {CONTRACT_VERSION[0]}.x")

    def test_miss(self, backend_and_pool: Connected, keys: Keys) -> None:
        backend, _ = backend_and_pool
        ks = keys(3)
        prop = "a page never written is a miss"
        if backend.exists(ks[0]) is not False:
            violated(prop, "exists() of a key never written did not return False")
        if backend.get(ks[0]) is not None:
            violated(prop, "get() of a key never written did not return None")
        if backend.batch_exists(ks) != 0:
            violated(prop, "batch_exists() of keys never written is not 0")
        if backend.exists_many(ks) != [False, False, False]:
            violated(prop, "exists_many() of keys never written is not all False")

    def test_set_get_roundtrip(self, backend_and_pool: Connected, keys: Keys) -> None:
        backend, pool = backend_and_pool
        prop = "set/get round trip"
        (key,) = keys(1)
        page = random_page(pool, 1)
        if backend.set(key, page) is not True:
            violated(prop, "set() of one page on a healthy backend did not return True")
        if backend.exists(key) is not True:
            violated(prop, "exists() is not True for a page set() reported stored")
        got = backend.get(key, pool.get_dummy_flat_data_page())
        if got is None:
            violated(prop, "get() missed a page set() reported stored (a page reported stored must be served)")
        require_page(prop, got, tensor_bytes(page), "get()")

    def test_batch_set_get(self, backend_and_pool: Connected, keys: Keys) -> None:
        backend, pool = backend_and_pool
        prop = "batch_set/batch_get round trip"
        ks = keys(8)
        pages = [random_page(pool, 10 + i) for i in range(8)]
        if backend.batch_set(ks, pages) is not True:
            violated(prop, "batch_set() of 8 pages on a healthy backend did not return True")
        got = backend.batch_get(ks, [pool.get_dummy_flat_data_page() for _ in ks])
        if not isinstance(got, list) or len(got) != 8:
            violated(prop, f"batch_get() must return one entry per key, got {type(got).__name__}")
        for i, (g, p) in enumerate(zip(got, pages)):
            if g is None:
                violated(prop, f"batch_get() missed page {i}, which batch_set() reported stored")
            require_page(prop, g, tensor_bytes(p), f"batch_get() page {i}")

    def test_batch_exists_counts_leading_hits(self, backend_and_pool: Connected, keys: Keys) -> None:
        backend, pool = backend_and_pool
        prop = "batch_exists counts leading hits"
        ks = keys(6)
        for i in (0, 1, 2, 4):
            if not backend.set(ks[i], random_page(pool, 20 + i)):
                violated(prop, f"set() of page {i} on a healthy backend failed")
        if (n := backend.batch_exists(ks)) != 3:
            violated(prop, f"pages 0,1,2,4 of 6 stored: batch_exists() must be 3, got {n}")
        if (each := backend.exists_many(ks)) != [True, True, True, False, True, False]:
            violated(prop, f"pages 0,1,2,4 of 6 stored: exists_many() gave {each}")

    def test_duplicate_set_keeps_a_whole_page(self, backend_and_pool: Connected, keys: Keys) -> None:
        backend, pool = backend_and_pool
        prop = "overwrite keeps a whole page"
        (key,) = keys(1)
        first, second = random_page(pool, 30), random_page(pool, 31)
        for value in (first, first, second):
            if backend.set(key, value) is not True:
                violated(prop, "set() of a key that exists must succeed (return True)")
        got = _got_bytes(prop, backend.get(key, pool.get_dummy_flat_data_page()), "get() after overwrite")
        old, new = tensor_bytes(first), tensor_bytes(second)
        if got not in (old, new):
            violated(prop, f"after overwriting a page, get() returned neither the old nor the new page: it "
                           f"{describe_mismatch(got, new, {'the old page': old})} (torn overwrite)")

    def test_empty_batches(self, backend_and_pool: Connected) -> None:
        backend, _ = backend_and_pool
        prop = "empty batches"
        none = torch.empty(0, dtype=torch.int64)
        for call, got, want in (
            ("batch_get_v1", backend.batch_get_v1([], none), []), ("batch_set_v1", backend.batch_set_v1([], none), []),
            ("batch_exists", backend.batch_exists([]), 0), ("exists_many", backend.exists_many([]), []),
            ("batch_get", backend.batch_get([]), []),
        ):
            if got != want:
                violated(prop, f"{call} of no keys must return {want!r}, got {got!r}")

    # ------------------------------------------------------------------ optional operations
    def test_delete(self, backend_and_pool: Connected, keys: Keys) -> None:
        backend, pool = backend_and_pool
        if not backend.capabilities.delete:
            pytest.skip("backend does not support delete (capabilities.delete is False)")
        prop = "delete"
        k1, k2 = keys(2)
        if not (backend.set(k1, random_page(pool, 120)) and backend.set(k2, random_page(pool, 121))):
            violated(prop, "set() on a healthy backend failed")
        if backend.delete(k1) is not True:
            violated(prop, "delete() of a stored page did not return True")
        if backend.exists(k1) is not False or backend.exists(k2) is not True:
            violated(prop, "after delete(k1), k1 must be gone and k2 (not deleted) still stored")
        if backend.delete(k1) is not True:
            violated(prop, "delete() of an absent page must return True (it is gone)")

    def test_clear(self, backend_and_pool: Connected, keys: Keys) -> None:
        backend, pool = backend_and_pool
        if not backend.capabilities.clear:
            pytest.skip("backend does not support clear (capabilities.clear is False)")
        ks = keys(3)
        for i, k in enumerate(ks):
            if not backend.set(k, random_page(pool, 130 + i)):
                violated("clear", "set() on a healthy backend failed")
        backend.clear()
        if backend.exists_many(ks) != [False] * 3:
            violated("clear", "pages are still stored after clear()")

    def test_stats_and_health(self, backend_and_pool: Connected) -> None:
        backend, _ = backend_and_pool
        stats = backend.get_stats()
        if not (stats is None or isinstance(stats, dict)):
            violated("stats", f"get_stats() must return a dict or None, got {type(stats).__name__}")
        backend.health_check()

    # ------------------------------------------------------------------ concurrency
    def test_concurrent_threads(self, backend_and_pool: Connected, keys: Keys) -> None:
        backend, pool = backend_and_pool
        threads, per_thread = 4, 6
        shared = keys(2)
        shared_pages = [random_page(pool, 90 + i) for i in range(2)]
        errors: list[BaseException] = []
        prop = "concurrent use from threads"

        def worker(t: int) -> None:
            try:
                self._thread_round_trips(backend, pool, keys(per_thread), 1000 + t, shared, shared_pages, prop)
            except BaseException as exc:  # surfaced in the main thread
                errors.append(exc)

        ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=120)
        if errors:
            raise errors[0]
        for k, p in zip(shared, shared_pages):
            require_page(prop, backend.get(k, pool.get_dummy_flat_data_page()), tensor_bytes(p),
                         "get() of a page several threads wrote")

    def _thread_round_trips(
        self, backend: HiCacheStorage, pool: HostKVPool, ks: list[str], seed: int, shared: list[str],
        shared_pages: list[torch.Tensor], prop: str,
    ) -> None:
        idx, expected = fill_random_pages(pool, len(ks), seed)
        for _ in range(3):
            self.v1_store_all(prop, backend, ks, idx)
            for k, p in zip(shared, shared_pages):
                if not backend.set(k, p):
                    violated(prop, "set() failed while other threads wrote")
        dest = self.alloc(pool, len(ks))
        self.v1_load_all(prop, backend, pool, ks, dest, expected)
