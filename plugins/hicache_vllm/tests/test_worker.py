"""The worker side over the real file backend, with layer tensors laid out as vLLM's CPU
attention lays them out (no vLLM needed): saves go layer by layer through staging to L3 and
come back into other blocks bit for bit; a step with a layer not staged stores nothing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from hicache_vllm.identity import storage_config
from hicache_vllm.layout import VllmKVLayout, staging_pool
from hicache_vllm.plan import PageTransfer, StepPlan
from hicache_vllm.store import GuardedStore
from hicache_vllm.worker import WorkerSide
from hicache_vllm.writer import PageWriter

from hicache_core.keys import page_hashes

N, H, D, BLOCKS = 4, 2, 8, 6
NAMES = ("model.layers.0.attn", "model.layers.1.attn")
LAYOUT = VllmKVLayout("CPU_ATTN", NAMES, num_kv_heads=H, head_size=D, block_size=N, dtype=torch.float32)


def _worker(path: Path, async_save: bool) -> tuple[WorkerSide, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    caches = {n: torch.randn(BLOCKS, H, N, 2 * D) for n in NAMES}
    store = GuardedStore("file", storage_config("org/tiny", {"path": str(path)}), staging_pool(LAYOUT, 8))
    return WorkerSide(LAYOUT, caches, store.pool, store, async_save=async_save), caches


@pytest.mark.parametrize("async_save", [True, False])
def test_saved_pages_load_back_into_other_blocks(tmp_path: Path, async_save: bool) -> None:
    worker, caches = _worker(tmp_path, async_save)
    hashes = page_hashes(list(range(2 * N)), N)
    plan = StepPlan(saves=[PageTransfer("r1", hashes, [1, 2])])
    for name in NAMES:
        worker.save_layer(name, plan)
    worker.finish_saves()
    assert worker.flush(10)
    assert worker.store.counters["save_pages"] == 2
    assert worker.pool.available_size() == worker.pool.size  # staging released
    original = {n: t.clone() for n, t in caches.items()}
    worker.start_load(StepPlan(loads=[PageTransfer("r2", hashes, [4, 5])]))
    assert worker.take_load_errors() == set()
    for n in NAMES:
        assert torch.equal(caches[n][4], original[n][1]) and torch.equal(caches[n][5], original[n][2])
        assert torch.equal(caches[n][:4], original[n][:4])
    worker.close()


def test_a_step_with_a_layer_not_staged_stores_nothing(tmp_path: Path) -> None:
    worker, _ = _worker(tmp_path, async_save=False)
    hashes = page_hashes(list(range(N)), N)
    plan = StepPlan(saves=[PageTransfer("r1", hashes, [1])])
    worker.save_layer(NAMES[0], plan)  # layer 1's attention never ran
    worker.finish_saves()
    assert worker.store.counters["save_pages"] == 0
    assert worker.store.leading_hits(hashes) == 0
    assert worker.pool.available_size() == worker.pool.size


def test_pages_that_do_not_load_are_reported_for_recompute(tmp_path: Path) -> None:
    worker, _ = _worker(tmp_path, async_save=False)
    hashes = page_hashes(list(range(2 * N)), N)
    worker.start_load(StepPlan(loads=[PageTransfer("r1", hashes, [3, 4])]))  # never stored
    assert worker.take_load_errors() == {3, 4}
    assert worker.take_load_errors() == set()


def test_writer_flush_waits_for_slow_writes_and_releases() -> None:
    released: list[int] = []
    gate = threading.Event()

    def save(hashes: object, pages: object) -> None:
        gate.wait(5)
        time.sleep(0.05)

    writer = PageWriter(save, lambda pages: released.extend(pages))
    writer.submit(["h"], [3])
    assert not writer.flush(0.05) and released == []
    gate.set()
    assert writer.flush(5) and released == [3]
    writer.close()
