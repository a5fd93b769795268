"""Persistence: pages survive ``close()`` and reopen, and a writer killed with ``kill -9``.

For backends whose capabilities say ``persistent``. After a writer process is SIGKILLed (no
``close()``, a batch possibly half written), a fresh backend serves every page the writer
reported stored byte-equal, and every other page it was writing is a miss or whole: never torn.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar

import pytest

from hicache_core.memory.host_pool import HostKVPool
from hicache_core.spec.config import HiCacheStorageConfig
from hicache_core.testing.kit_base import Connect, Connected, Keys, KitBase, OpenBackend
from hicache_core.testing.pages import fill_random_pages, random_page, read_page_bytes, tensor_bytes
from hicache_core.testing.verdicts import describe_mismatch, violated
from hicache_core.testing.writer_child import WritePlan, batch_keys, spawn_writer, start_writer

KILL_SEED = 900
#: How long after the writer's first batch is stored it is killed (it keeps writing until then).
KILL_DELAY_S = 0.1


class DurabilityChecks(KitBase):
    #: How the kill -9 writer starts: ``fork`` (default; the child opens the backend with the
    #: test's own ``open_backend``) or ``spawn`` (a fresh interpreter that calls
    #: ``create_backend(backend_name, config)``; for libraries that do not survive a fork).
    kill9_writer: ClassVar[str] = "fork"

    def test_persistent_across_reopen(self, backend_and_pool: Connected, connect: Connect, keys: Keys) -> None:
        backend, pool = backend_and_pool
        if not backend.capabilities.persistent:
            pytest.skip("backend is not persistent (capabilities.persistent is False)")
        prop = "persistence across close() and reopen"
        ks = keys(3)
        idx, expected = fill_random_pages(pool, 3, seed=110)
        self.v1_store_all(prop, backend, ks, idx)
        backend.close()
        again, pool2 = connect()
        if (n := again.batch_exists(ks)) != 3:
            violated(prop, f"after close() and reopen, batch_exists finds {n} of 3 pages stored before "
                           "(the backend declares persistent)")
        self.v1_load_all(prop, again, pool2, ks, self.alloc(pool2, 3), expected, "batch_get_v1 after reopen")

    def test_persistent_after_kill_9(
        self, backend_and_pool: Connected, connect: Connect, keys: Keys, open_backend: OpenBackend,
        storage_config: HiCacheStorageConfig, make_pool: Callable[..., HostKVPool], pool_shape: dict[str, Any],
    ) -> None:
        backend, _ = backend_and_pool
        if not backend.capabilities.persistent:
            pytest.skip("backend is not persistent (capabilities.persistent is False)")
        if not hasattr(os, "fork"):
            pytest.skip("needs os.fork to run the writer as a child process")
        prop = "persistence after kill -9 of a writer"
        # The writer may be the store's only process (a RocksDB or metadata lock): close ours.
        backend.close()
        plan = WritePlan(prefix=keys(1)[0][:20], seed=KILL_SEED)
        config = replace(storage_config, is_mla_model=False, is_page_first_layout=True)
        config.extra_config = dict(storage_config.extra_config or {})
        if self.kill9_writer == "spawn":
            if not self.backend_name:
                pytest.fail("kill9_writer = 'spawn' needs backend_name (the spawned writer calls create_backend)")
            child = spawn_writer(self.backend_name, config, pool_shape, "page_first", plan)
        else:
            child = start_writer(open_backend, config, lambda: make_pool("page_first", False), plan)
        first = child.wait_for(lambda r: r.get("event") == "done", timeout=120)
        if first is None or first.get("event") != "done":
            child.kill9()
            why = first.get("error") if first else "no report within 120 s"
            pytest.fail(f"{prop}: the writer child did not finish its first batch: {why}")
        # Kill while the next batch is being written (its "started" comes right before the write).
        child.wait_for(lambda r: r.get("event") == "started" and int(r.get("batch", 0)) >= 1, timeout=30)
        time.sleep(KILL_DELAY_S)
        signal_no = child.kill9()
        stored = child.stored()
        if not any(all(s) for s in stored.values()):
            violated(prop, f"the writer stored no whole batch before it was killed (reports: {child.reports[:4]})")
        batches = [batch_keys(plan.prefix, b, plan.pages) for b in range(child.started())]
        self._check_after_kill(prop, connect, batches, stored, signal_no)

    def _check_after_kill(
        self, prop: str, connect: Connect, batches: list[list[str]],
        stored: dict[int, list[bool]], signal_no: int,
    ) -> None:
        fresh, fpool = connect()
        killed = f"(writer ended by signal {signal_no})"
        for b, ks in enumerate(batches):
            want = [tensor_bytes(random_page(fpool, (KILL_SEED + b) * 100003 + i)) for i in range(len(ks))]
            dest = self.alloc(fpool, len(ks))
            got = self.v1_get(prop, fresh, ks, dest)
            have = read_page_bytes(fpool, dest)
            reported = stored.get(b, [False] * len(ks))
            for i in range(len(ks)):
                if reported[i] and not got[i]:
                    violated(prop, f"page {i} of batch {b} was reported stored before the writer was killed, but "
                                   f"a fresh backend misses it {killed}")
                if got[i] and have[i] != want[i]:
                    state = "reported stored" if reported[i] else "being written when the writer was killed"
                    violated(prop, f"page {i} of batch {b} ({state}) was served but it "
                                   f"{describe_mismatch(have[i], want[i])} (a torn or wrong page) {killed}")
            fpool.free(dest)
