"""Checks of the single-key and batch API, the optional operations, and concurrent use."""

from __future__ import annotations

import threading

import pytest
import torch

from hicache_core.memory.host_pool import HostKVPool
from hicache_core.spec.storage import HiCacheStorage
from hicache_core.testing.kit_base import Connect, Connected, Keys, KitBase
from hicache_core.testing.kit_reads import (
    got_bytes,
    require_gone,
    require_page,
    require_target_read,
    staged_target,
)
from hicache_core.testing.pages import fill_random_pages, random_page, tensor_bytes
from hicache_core.testing.verdicts import describe_mismatch, violated
from hicache_core.version import CONTRACT_VERSION, parse_contract_version


class ContractChecks(KitBase):
    def test_declares_contract_version(self, backend_and_pool: Connected) -> None:
        backend, _ = backend_and_pool
        major, _minor = parse_contract_version(getattr(backend, "contract_version", "1.0"))
        if major != CONTRACT_VERSION[0]:
            violated("contract version", f"backend speaks contract {major}.x, this core {CONTRACT_VERSION[0]}.x")

    def test_miss(self, backend_and_pool: Connected, keys: Keys) -> None:
        backend, pool = backend_and_pool
        ks = keys(3)
        prop = "a page never written is a miss"
        if backend.exists(ks[0]) is not False:
            violated(prop, "exists() of a key never written did not return False")
        if backend.get(ks[0]) is not None:
            violated(prop, "get() of a key never written did not return None")
        if backend.get(ks[0], staged_target(pool)) is not None:
            violated(prop, "get() with a target_location of a key never written did not return None (a miss is "
                           "None whatever the target holds)")
        values = backend.batch_get(ks, [staged_target(pool, i) for i in range(len(ks))])
        if isinstance(values, list) and any(v is not None for v in values):
            violated(prop, f"batch_get() with target_locations of keys never written served "
                           f"{[i for i, v in enumerate(values) if v is not None]} (a miss is None)")
        if backend.batch_exists(ks) != 0:
            violated(prop, "batch_exists() of keys never written is not 0")
        if backend.exists_many(ks) != [False, False, False]:
            violated(prop, "exists_many() of keys never written is not all False")

    def test_set_get_roundtrip(self, backend_and_pool: Connected, keys: Keys) -> None:
        backend, pool = backend_and_pool
        prop = "set/get round trip"
        (key,) = keys(1)
        page = random_page(pool, 1)
        want = tensor_bytes(page)
        if backend.set(key, page) is not True:
            violated(prop, "set() of one page on a healthy backend did not return True")
        reused = self.reuse(page, random_page(pool, 2))
        if backend.exists(key) is not True:
            violated(prop, "exists() is not True for a page set() reported stored")
        target = staged_target(pool)
        got = backend.get(key, target)
        if got is None:
            violated(prop, "get() missed a page set() reported stored (a page reported stored must be served)")
        require_target_read(prop, got, target, want, "get()", reused)
        plain = backend.get(key)
        if plain is not None:  # a target-less get is optional; when it serves, it serves the page
            require_page(prop, plain, want, "get() without a target_location", reused)

    def test_batch_set_get(self, backend_and_pool: Connected, keys: Keys) -> None:
        backend, pool = backend_and_pool
        prop = "batch_set/batch_get round trip"
        ks = keys(8)
        pages = [random_page(pool, 10 + i) for i in range(8)]
        want = [tensor_bytes(p) for p in pages]
        if backend.batch_set(ks, pages) is not True:
            violated(prop, "batch_set() of 8 pages on a healthy backend did not return True")
        for i, p in enumerate(pages):
            p.copy_(random_page(pool, 50 + i))  # the caller reuses its tensors once set returns
        targets = [staged_target(pool, i) for i in range(len(ks))]
        got = backend.batch_get(ks, targets)
        if not isinstance(got, list) or len(got) != 8:
            violated(prop, f"batch_get() must return one entry per key, got {type(got).__name__}")
        for i, g in enumerate(got):
            if g is None:
                violated(prop, f"batch_get() missed page {i}, which batch_set() reported stored")
            others = {f"page {j} (batch_set paired keys and values in another order)": w
                      for j, w in enumerate(want) if j != i}
            others[f"the bytes the caller wrote into value {i} after batch_set returned (the backend kept "
                   "the tensor, not a copy)"] = tensor_bytes(pages[i])
            require_target_read(prop, g, targets[i], want[i], f"batch_get() page {i}", others)

    @staticmethod
    def reuse(page: torch.Tensor, other: torch.Tensor) -> dict[str, bytes]:
        """Overwrite a tensor already given to set(), as a caller reusing its buffer does."""
        page.copy_(other)
        return {"the bytes the caller wrote into the tensor after set() returned (the backend kept the tensor, "
                "not a copy)": tensor_bytes(page)}

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
        values = backend.batch_get(ks, [staged_target(pool, i) for i in range(len(ks))])
        if not isinstance(values, list) or len(values) != len(ks):
            violated(prop, f"batch_get() must return one entry per key, got {type(values).__name__}")
        if (served := [v is not None for v in values]) != [True, True, True, False, True, False]:
            violated(prop, f"pages 0,1,2,4 of 6 stored: batch_get() served {served} (a miss is None)")

    def test_duplicate_set_keeps_a_whole_page(self, backend_and_pool: Connected, keys: Keys) -> None:
        backend, pool = backend_and_pool
        prop = "overwrite keeps a whole page"
        (key,) = keys(1)
        first, second = random_page(pool, 30), random_page(pool, 31)
        for value in (first, first, second):
            if backend.set(key, value) is not True:
                violated(prop, "set() of a key that exists must succeed (return True)")
        got = got_bytes(prop, backend.get(key, staged_target(pool)), "get() after overwrite")
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
    def test_delete(self, backend_and_pool: Connected, keys: Keys, connect: Connect) -> None:
        backend, pool = backend_and_pool
        if not backend.capabilities.delete:
            pytest.skip("backend does not support delete (capabilities.delete is False)")
        prop = "delete"
        k1, k2, k3 = keys(3)
        if not (backend.set(k1, random_page(pool, 120)) and backend.set(k2, random_page(pool, 121))):
            violated(prop, "set() on a healthy backend failed")
        self.v1_store_all(prop, backend, [k3], self.alloc(pool, 1))
        for k in (k1, k3):
            if backend.delete(k) is not True:
                violated(prop, "delete() of a stored page did not return True")
        require_gone(prop, backend, pool, [k1, k3], [k2], "delete()")
        if self.v1_get(prop, backend, [k1, k3], self.alloc(pool, 2)) != [False, False]:
            violated(prop, "after delete(), batch_get_v1 still serves the deleted pages")
        if backend.delete(k1) is not True:
            violated(prop, "delete() of an absent page must return True (it is gone)")
        self._still_gone(prop, backend, connect, [k1, k3], [k2], "delete()")

    def test_clear(self, backend_and_pool: Connected, keys: Keys, connect: Connect) -> None:
        backend, pool = backend_and_pool
        if not backend.capabilities.clear:
            pytest.skip("backend does not support clear (capabilities.clear is False)")
        prop = "clear"
        ks = keys(4)
        for i, k in enumerate(ks[:2]):
            if not backend.set(k, random_page(pool, 130 + i)):
                violated(prop, "set() on a healthy backend failed")
        self.v1_store_all(prop, backend, ks[2:], self.alloc(pool, 2))
        backend.clear()
        require_gone(prop, backend, pool, ks, [], "clear()")
        if self.v1_get(prop, backend, ks, self.alloc(pool, 4)) != [False] * 4:
            violated(prop, "after clear(), batch_get_v1 still serves cleared pages")
        (fresh,) = keys(1)
        page = random_page(pool, 135)
        if backend.set(fresh, page) is not True:
            violated(prop, "set() after clear() did not return True (a cleared store must take pages again)")
        target = staged_target(pool)
        require_target_read(prop, backend.get(fresh, target), target, tensor_bytes(page), "get() after clear()")
        self._still_gone(prop, backend, connect, ks, [fresh], "clear()")

    def _still_gone(
        self, prop: str, backend: HiCacheStorage, connect: Connect, gone: list[str], kept: list[str], after: str
    ) -> None:
        """Removed pages stay removed for the next instance: after reopen (a persistent backend)
        or in a second instance (a shared one)."""
        caps = backend.capabilities
        if not (caps.persistent or caps.shared):
            return
        if caps.persistent:
            backend.close()
        other, opool = connect()
        how = "close() and reopen" if caps.persistent else "opening a second instance on the shared store"
        require_gone(prop, other, opool, gone, kept, f"{after} then {how}")

    def test_stats_and_health(self, backend_and_pool: Connected) -> None:
        backend, _ = backend_and_pool
        stats = backend.get_stats()
        if not (stats is None or isinstance(stats, dict)):
            violated("stats", f"get_stats() must return a dict or None, got {type(stats).__name__}")
        backend.health_check()

    # ------------------------------------------------------------------ concurrency
    def test_concurrent_threads(self, backend_and_pool: Connected, keys: Keys) -> None:
        """Threads write and read at once (started together): every read is byte-exact."""
        backend, pool = backend_and_pool
        threads, per_thread = 4, 6
        shared = keys(2)
        shared_pages = [random_page(pool, 90 + i) for i in range(2)]
        errors: list[BaseException] = []
        prop = "concurrent use from threads"
        start = threading.Barrier(threads, timeout=60)

        def worker(t: int) -> None:
            try:
                self._thread_round_trips(backend, pool, keys(per_thread), 1000 + t, shared, shared_pages, prop, start)
            except BaseException as exc:  # surfaced in the main thread
                start.abort()
                errors.append(exc)

        ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=120)
        real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
        if real or errors:
            raise (real or errors)[0]
        for k, p in zip(shared, shared_pages):
            require_page(prop, backend.get(k, pool.get_dummy_flat_data_page()), tensor_bytes(p),
                         "get() of a page several threads wrote")

    def _thread_round_trips(
        self, backend: HiCacheStorage, pool: HostKVPool, ks: list[str], seed: int, shared: list[str],
        shared_pages: list[torch.Tensor], prop: str, start: threading.Barrier,
    ) -> None:
        idx, expected = fill_random_pages(pool, len(ks), seed)
        dest = self.alloc(pool, len(ks))
        want_shared = [tensor_bytes(p) for p in shared_pages]
        start.wait()
        for round_no in range(3):
            self.v1_store_all(prop, backend, ks, idx, guard=False)  # other threads write the pool meanwhile
            for k, p in zip(shared, shared_pages):
                if not backend.set(k, p):
                    violated(prop, "set() failed while other threads wrote")
            # Reads overlap other threads' writes and reads: each must be byte-exact.
            self.v1_load_all(prop, backend, pool, ks, dest, expected, guard=False)
            for i, k in enumerate(shared):
                target = staged_target(pool, 10 + i)
                require_target_read(prop, backend.get(k, target), target, want_shared[i],
                                    f"get() of shared page {i} while other threads wrote it (round {round_no})")
