"""``HiCacheConnector``: vLLM's v1 KV connector over any installed hicache backend.

vLLM builds one instance per role: in the scheduler (``SchedulerSide``: lookups, the step
plan) and in each worker (``WorkerSide``: loads before the forward pass, saves layer by layer
after it). Both build the backend named in ``kv_connector_extra_config`` through hicache's
factory, each with a staging pool of the same page format, so both see the same namespace.
Nothing here fails a request: a backend that fails is a miss (``store.GuardedStore``), and a
page that does not load is recomputed (the connector sets ``kv_load_failure_policy`` to
``recompute``, since for a cache a lost page is never an error).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

from hicache_vllm.identity import storage_config
from hicache_vllm.layout import UnsupportedLayout, VllmKVLayout, staging_pool
from hicache_vllm.plan import StepPlan
from hicache_vllm.scheduler import SchedulerSide
from hicache_vllm.settings import ConnectorSettings
from hicache_vllm.store import GuardedStore
from hicache_vllm.worker import WorkerSide

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

log = logging.getLogger(__name__)

#: Every connector built in this process (tests and the benchmark read their counters).
INSTANCES: list[HiCacheConnector] = []


@dataclass
class HiCacheConnectorMetadata(KVConnectorMetadata):
    plan: StepPlan = field(default_factory=StepPlan)


def _attn_backend_name(vllm_config: VllmConfig, layer_name: str) -> str | None:
    ctx = getattr(vllm_config.compilation_config, "static_forward_context", None) or {}
    layer = ctx.get(layer_name)
    backend = getattr(layer, "attn_backend", None)
    try:
        return str(backend.get_name()) if backend is not None else None
    except Exception:
        return None


def _layout(vllm_config: VllmConfig, kv_cache_config: KVCacheConfig) -> VllmKVLayout:
    groups = list(getattr(kv_cache_config, "kv_cache_groups", []) or [])
    if len(groups) != 1:
        raise UnsupportedLayout(f"{len(groups)} KV cache groups (hybrid models are not mapped yet; need 1)")
    spec = groups[0].kv_cache_spec
    names = tuple(groups[0].layer_names)
    if not hasattr(spec, "num_kv_heads") or getattr(spec, "sliding_window", None):
        raise UnsupportedLayout(f"KV cache spec {type(spec).__name__} (need full attention)")
    backend = _attn_backend_name(vllm_config, names[0]) if names else None
    layout = VllmKVLayout(
        # vLLM's CPU platform has one decoder attention backend; elsewhere it must be known.
        attn_backend=backend if backend is not None else ("CPU_ATTN" if _is_cpu() else "unknown"),
        layer_names=names,
        num_kv_heads=int(spec.num_kv_heads),
        head_size=int(spec.head_size),
        block_size=int(spec.block_size),
        dtype=spec.dtype,
    )
    layout.check(head_size_v=getattr(spec, "head_size_v", None), is_mla=bool(getattr(spec, "use_mla", False)))
    return layout


def _is_cpu() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:
        return False


def _parallel(vllm_config: VllmConfig, role: KVConnectorRole) -> dict[str, int]:
    pc = vllm_config.parallel_config
    out = {"tp_rank": 0, "tp_size": int(pc.tensor_parallel_size), "pp_rank": 0, "pp_size": int(pc.pipeline_parallel_size)}
    if role == KVConnectorRole.WORKER:
        try:
            from vllm.distributed.parallel_state import get_pp_group, get_tensor_model_parallel_rank

            out["tp_rank"] = int(get_tensor_model_parallel_rank())
            out["pp_rank"] = int(get_pp_group().rank_in_group)
        except Exception:
            pass
    return out


class HiCacheConnector(KVConnectorBase_V1):
    """vLLM v1 KV connector storing vLLM's KV pages in a hicache backend (see module doc)."""

    @property
    def requires_kv_delivery(self) -> bool:
        return False  # a best-effort cache: a dropped save is a future miss

    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: KVCacheConfig) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        self.settings = ConnectorSettings.from_extra(self._kv_transfer_config.kv_connector_extra_config)
        # vLLM fails a request whose external KV did not load unless told to recompute it.
        self._kv_transfer_config.kv_load_failure_policy = "recompute"
        mc = vllm_config.model_config
        self.model_id = self.settings.model_id or str(getattr(mc, "served_model_name", None) or mc.model)
        self.block_size = int(vllm_config.cache_config.block_size)
        self.parallel = _parallel(vllm_config, role)
        self.scheduler: SchedulerSide | None = None
        self.worker: WorkerSide | None = None
        self.store: GuardedStore | None = None
        self.disabled_reason: str | None = None
        try:
            self.layout: VllmKVLayout | None = _layout(vllm_config, kv_cache_config)
        except UnsupportedLayout as exc:
            self.layout = None
            self.disabled_reason = str(exc)
            log.warning("hicache-vllm: L3 disabled, %s; vLLM runs without it", exc)
        if role == KVConnectorRole.SCHEDULER:
            if self.layout is not None:
                # Lookups move no bytes; the pool gives the namespace. Two pages, not one: with
                # one, page_first_direct's K and V halves touch and Mooncake sees one piece.
                self.store = self._store(pages=2)
            self.scheduler = SchedulerSide(self.store, self.block_size, self.settings.load, self.settings.save)
        INSTANCES.append(self)

    def _store(self, pages: int) -> GuardedStore:
        assert self.layout is not None
        config = storage_config(self.model_id, self.settings.backend_config, **self.parallel)
        return GuardedStore(self.settings.backend, config, staging_pool(self.layout, pages))

    # ================================================================== worker side
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        if self.layout is None:
            return
        missing = [n for n in self.layout.layer_names if not isinstance(kv_caches.get(n), torch.Tensor)]
        if missing:
            self.disabled_reason = f"no KV tensor for layer(s) {', '.join(missing[:3])}"
            log.warning("hicache-vllm: L3 disabled, %s", self.disabled_reason)
            return
        pages = max(4, self.settings.staging_mib * 2**20 // self.layout.page_bytes)
        self.store = self._store(pages)
        self.worker = WorkerSide(self.layout, kv_caches, self.store.pool, self.store, self.settings.async_save)

    def _plan(self) -> StepPlan | None:
        if self.worker is None or not self.has_connector_metadata():
            return None
        meta = self._get_connector_metadata()
        return meta.plan if isinstance(meta, HiCacheConnectorMetadata) else None

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        plan = self._plan()
        if plan is not None and plan.loads and self.worker is not None:
            self.worker.start_load(plan)

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # loads complete in start_load_kv, before the forward pass

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any) -> None:
        plan = self._plan()
        if plan is not None and plan.saves and self.worker is not None:
            self.worker.save_layer(layer_name, plan)

    def wait_for_save(self) -> None:
        if self.worker is not None:
            self.worker.finish_saves()

    def get_block_ids_with_load_errors(self) -> set[int]:
        return self.worker.take_load_errors() if self.worker is not None else set()

    def shutdown(self) -> None:
        if self.worker is not None:
            self.worker.close()  # pages already staged are written first (bounded wait)
        if self.store is not None:
            self.store.close()

    # ================================================================== scheduler side
    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int) -> tuple[int | None, bool]:
        if self.scheduler is None:
            return 0, False
        try:
            return self.scheduler.num_new_matched_tokens(request, num_computed_tokens)
        except Exception as exc:
            log.warning("hicache-vllm: lookup failed (%s); a miss", exc)
            return 0, False

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int) -> None:
        if self.scheduler is not None:
            self.scheduler.after_alloc(request, list(blocks.get_block_ids()[0]), num_external_tokens)

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        if self.scheduler is None:
            return HiCacheConnectorMetadata()
        return HiCacheConnectorMetadata(self.scheduler.build(scheduler_output))

    def request_finished(self, request: Request, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        if self.scheduler is not None:
            self.scheduler.finished(request)
        return False, None

    # ================================================================== introspection
    def stats(self) -> dict[str, Any]:
        """Counters of this instance: role, namespace, the store's counters, tokens hit."""
        return {
            "role": self._role.name.lower(),
            "namespace": self.store.namespace if self.store is not None else None,
            "disabled_reason": self.disabled_reason,
            "store": dict(self.store.counters) if self.store is not None else {},
            "last_error": self.store.last_error if self.store is not None else None,
            "hit_tokens_total": self.scheduler.hit_tokens_total if self.scheduler is not None else 0,
        }
