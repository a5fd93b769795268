"""The connector's worker side: move pages between vLLM's KV blocks, the staging pool and L3.

- ``start_load``: before the forward pass, read each planned page from L3 into a staging page
  (the backend's zero-copy ``batch_get_v1`` where it has one), then copy every layer of the
  pages that arrived into their vLLM blocks. Pages that did not arrive are reported through
  ``take_load_errors`` and vLLM recomputes them (the connector sets vLLM's
  ``kv_load_failure_policy`` to ``recompute``): a failed load costs compute, never a request.
- ``save_layer``: after each attention layer, copy that layer of this step's new full pages
  into their staging pages (the layer's KV is final once its attention has run).
- ``finish_saves``: once per step, store the pages whose every layer was staged
  (``batch_set_v1``), on the writer thread by default (``writer.PageWriter``; ``async_save``
  false: in the step), and release their staging pages. A page missing a layer is never stored.

Staging is bounded (``staging_mib``): loads go through it in chunks; saves beyond its size in
one step are dropped (a future miss), keeping each request's pages a prefix.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from hicache_core.memory.host_pool import HostKVPool
from hicache_vllm.layout import VllmKVLayout, blocks_to_staging, staging_to_blocks
from hicache_vllm.plan import PageTransfer, StepPlan
from hicache_vllm.store import GuardedStore
from hicache_vllm.writer import PageWriter

log = logging.getLogger(__name__)


class WorkerSide:
    def __init__(self, layout: VllmKVLayout, kv_caches: dict[str, torch.Tensor], pool: HostKVPool,
                 store: GuardedStore, async_save: bool = True) -> None:
        self.layout = layout
        self.layers = [kv_caches[name] for name in layout.layer_names]
        self.layer_index = {name: i for i, name in enumerate(layout.layer_names)}
        self.pool = pool
        self.store = store
        self._load_errors: set[int] = set()
        self._saves: list[tuple[str, int, int]] = []  # (hash, block id, staging page)
        self._saves_layers: set[int] = set()
        self._saves_plan: StepPlan | None = None
        self.writer = PageWriter(store.save, self._free) if async_save else None

    # ------------------------------------------------------------------ staging pages
    def _alloc(self, pages: int) -> list[int]:
        if pages <= 0:
            return []
        idx = self.pool.alloc(pages * self.pool.page_size)
        return [] if idx is None else self.pool.indices_to_pages(idx)

    def _free(self, pages: Sequence[int]) -> None:
        if pages:
            self.pool.free(self.pool.pages_to_indices(list(pages)))

    # ------------------------------------------------------------------ loads
    def start_load(self, plan: StepPlan) -> None:
        for transfer in plan.loads:
            self._load(transfer)

    def _load(self, t: PageTransfer) -> None:
        chunk = max(1, self.pool.available_size() // self.pool.page_size)
        for start in range(0, len(t.hashes), chunk):
            hashes, blocks = t.hashes[start : start + chunk], t.block_ids[start : start + chunk]
            pages = self._alloc(len(hashes))
            if len(pages) < len(hashes):  # staging exhausted: recompute the rest
                self._free(pages)
                self._load_errors.update(t.block_ids[start:])
                return
            try:
                ok = self.store.load(hashes, pages)
                got = [(b, p) for b, p, good in zip(blocks, pages, ok) if good]
                self._load_errors.update(b for b, good in zip(blocks, ok) if not good)
                if got:
                    gb, gp = [b for b, _ in got], [p for _, p in got]
                    for i, layer in enumerate(self.layers):
                        staging_to_blocks(self.layout, self.pool, i, layer, gb, gp)
            except Exception as exc:  # a copy bug must not fail the request: recompute
                log.warning("hicache-vllm: loading %d pages failed: %s", len(hashes), exc)
                self._load_errors.update(blocks)
            finally:
                self._free(pages)

    def take_load_errors(self) -> set[int]:
        errors, self._load_errors = self._load_errors, set()
        return errors

    # ------------------------------------------------------------------ saves
    def _begin_saves(self, saves: list[PageTransfer]) -> None:
        self._drop_saves()
        wanted = [(h, b) for t in saves for h, b in zip(t.hashes, t.block_ids)]
        unique = list(dict(wanted).items())  # one page per hash: same tokens, same KV in any block
        # Keep room for loads: at most half the staging pool goes to one step's saves.
        room = max(0, min(len(unique), self.pool.page_num // 2, self.pool.available_size() // self.pool.page_size))
        pages = self._alloc(room)
        self._saves = [(h, b, p) for (h, b), p in zip(unique, pages)]
        if len(pages) < len(unique):
            log.debug("hicache-vllm: staging full, %d pages not saved this step", len(unique) - len(pages))

    def save_layer(self, layer_name: str, plan: StepPlan) -> None:
        if plan is not self._saves_plan:  # the step's first layer: take staging pages
            self._saves_plan = plan
            self._begin_saves(plan.saves)
        if not self._saves:
            return
        i = self.layer_index.get(layer_name)
        if i is None or i in self._saves_layers:
            return
        try:
            blocks_to_staging(self.layout, self.pool, i, self.layers[i],
                              [b for _, b, _ in self._saves], [p for _, _, p in self._saves])
            self._saves_layers.add(i)
        except Exception as exc:
            log.warning("hicache-vllm: staging layer %s failed, this step's pages are not saved: %s", layer_name, exc)
            self._drop_saves()

    def finish_saves(self) -> None:
        self._saves_plan = None
        if not self._saves:
            return
        if len(self._saves_layers) != len(self.layers):  # a layer was not staged: store nothing
            self._drop_saves()
            return
        hashes, pages = [h for h, _, _ in self._saves], [p for _, _, p in self._saves]
        self._saves, self._saves_layers = [], set()
        if self.writer is not None:
            self.writer.submit(hashes, pages)  # the writer releases the staging pages
            return
        try:
            self.store.save(hashes, pages)
        finally:
            self._free(pages)

    def flush(self, timeout_s: float | None = 30.0) -> bool:
        """Wait until every page handed to the writer is stored (or failed)."""
        return self.writer.flush(timeout_s) if self.writer is not None else True

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def _drop_saves(self) -> None:
        pages = [p for _, _, p in self._saves]
        self._saves, self._saves_layers = [], set()
        self._free(pages)
