"""The reference node: N data-parallel ranks (each L1 + L2 + controller) behind one front.

Requests are routed like a cache-aware router (``routing.CacheAwareRouter``): to the rank
holding the longest prefix of the request, bounded by load, so requests that share a prefix
meet the same rank's caches without one rank taking everything. Admin operations go to every
rank through ``ControllerGroup``: all or nothing, rolled back on failure, messages joined.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from hicache_core.config_values import parse_size
from hicache_core.controller import ControllerError, ControllerGroup, StorageController
from hicache_core.memory.host_pool import HostKVPool
from hicache_core.node.capacity import check_capacity
from hicache_core.node.device_pool import DevicePool, pick_device
from hicache_core.node.metrics import NodeCollector
from hicache_core.node.presets import ModelShape, resolve_shape
from hicache_core.node.rank import TIERS, CacheRank, RequestResult
from hicache_core.node.routing import CacheAwareRouter
from hicache_core.node.tokens import CacheRequest
from hicache_core.plugins.registry import BackendRegistry
from hicache_core.spec.config import HiCacheStorageConfig

log = logging.getLogger(__name__)

#: The node waits for a whole prefetch by default: it has no compute to overlap the load
#: with, so SGLang's ``best_effort`` (take what arrived when the request is scheduled)
#: would find almost nothing. Every SGLang policy can be chosen with the flag.
DEFAULT_NODE_PREFETCH_POLICY = "wait_complete"


@dataclass
class NodeConfig:
    """Everything ``hicache serve`` decides at start-up (see ``docs/node.md`` for the flags)."""

    shape: ModelShape = field(default_factory=lambda: resolve_shape("tiny"))
    page_size: int = 64
    dp_size: int = 1
    device: str = "auto"
    device_capacity_tokens: int = 256 * 1024
    host_capacity_tokens: int | None = None  # explicit L2 size; else hicache_size / hicache_ratio
    hicache_ratio: float = 2.0
    hicache_size_gb: float = 0.0  # SGLang: GB of host memory per rank, overrides the ratio
    mem_layout: str = "page_first"
    storage_backend: str | None = None
    storage_extra_config: dict[str, Any] = field(default_factory=dict)
    prefetch_policy: str = DEFAULT_NODE_PREFETCH_POLICY
    write_policy: str = "write_through"
    strict_idle: bool = False
    breaker_threshold: int = 5
    auto_reattach: bool = True
    probe_interval_s: float = 2.0
    io_timeout_s: float = 10.0

    def host_tokens(self) -> int:
        """L2 token slots per rank: explicit, else ``--hicache-size`` GB, else ratio x L1."""
        if self.host_capacity_tokens is not None:
            tokens = self.host_capacity_tokens
        elif self.hicache_size_gb > 0:
            tokens = int(self.hicache_size_gb * 1e9) // self.shape.bytes_per_token
        else:
            tokens = int(self.device_capacity_tokens * self.hicache_ratio)
        return max(self.page_size, tokens - tokens % self.page_size)

    def device_tokens(self) -> int:
        tokens = self.device_capacity_tokens
        return max(self.page_size, tokens - tokens % self.page_size)

    def validate(self) -> None:
        if self.page_size <= 0:
            raise ValueError("--page-size must be positive")
        if self.dp_size < 1:
            raise ValueError("--dp-size must be at least 1")
        if self.device_capacity_tokens < self.page_size:
            raise ValueError(
                f"--device-capacity-tokens {self.device_capacity_tokens} is below one page of {self.page_size}"
            )
        if self.host_capacity_tokens is not None and self.host_capacity_tokens < self.page_size:
            raise ValueError(
                f"--host-capacity-tokens {self.host_capacity_tokens} is below one page of {self.page_size} tokens; "
                "give at least one page (or leave it out to size L2 from --hicache-ratio)"
            )
        if self.hicache_ratio <= 0:
            raise ValueError("--hicache-ratio must be positive")
        if self.hicache_size_gb < 0:
            raise ValueError("--hicache-size must not be negative")

    def check_memory(self, device_is_cpu: bool, cuda_free: int | None = None, available: int | None = None) -> None:
        """Refuse tier sizes the machine's memory cannot hold (the message gives the numbers)."""
        bpt = self.shape.bytes_per_token
        check_capacity(self.device_tokens() * bpt, self.host_tokens() * bpt, self.dp_size, device_is_cpu,
                       available=available, cuda_free=cuda_free)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["shape"] = asdict(self.shape)
        out["bytes_per_token"] = self.shape.bytes_per_token
        out["page_bytes"] = self.shape.bytes_per_token * self.page_size
        out["device_tokens_per_rank"] = self.device_tokens()
        out["host_tokens_per_rank"] = self.host_tokens()
        out["storage_extra_config"] = None  # may hold secrets; the controller shows a redacted copy
        return out


#: Size bounds that each backend instance keeps on its own, although DP ranks share the store
#: (one directory): every rank gets an equal share, so together they keep the bound given.
SHARED_BOUND_KEYS: dict[str, tuple[str, ...]] = {"file": ("max_bytes", "max_pages")}


def split_shared_bounds(backend: str, extra: dict[str, Any] | None, ranks: int) -> dict[str, Any] | None:
    """``extra`` with per-instance size bounds divided among ``ranks`` ranks sharing one store."""
    keys = SHARED_BOUND_KEYS.get(backend, ())
    if ranks <= 1 or extra is None or not any(extra.get(k) not in (None, "") for k in keys):
        return extra
    out = dict(extra)
    for key in keys:
        raw = out.get(key)
        if raw in (None, ""):
            continue
        try:
            total = parse_size(raw) if key == "max_bytes" else int(raw)
        except (TypeError, ValueError):
            continue  # the backend reports the bad value with its own message
        if total < ranks:
            raise ControllerError(
                f"extra-config {key}={raw!r} is shared by {ranks} DP ranks (one store, one bound), so each rank "
                f"would get less than 1; give at least {ranks}"
            )
        out[key] = total // ranks
        log.info("%s=%s shared by %d DP ranks: %d each", key, raw, ranks, total // ranks)
    return out


def _cuda_free(device: Any) -> int | None:
    if getattr(device, "type", "cpu") != "cuda":
        return None
    try:
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    except Exception:
        return None


class _RankRef:
    """Lets a controller ask its rank (built after it) whether the rank is idle."""

    rank: CacheRank | None = None

    def idle_reason(self) -> str | None:
        return self.rank.idle_reason() if self.rank is not None else None


class Node:
    """The ranks, their controllers, routing, admin and status."""

    def __init__(self, config: NodeConfig, registry: BackendRegistry | None = None) -> None:
        config.validate()
        self.config = config
        self.started_at = time.time()
        self.metrics_registry = CollectorRegistry()
        self._admin = threading.Lock()
        self.device = pick_device(config.device)
        config.check_memory(self.device.type == "cpu", _cuda_free(self.device))
        shape = config.shape
        self.ranks: list[CacheRank] = []
        controllers: list[StorageController] = []
        try:
            for r in range(config.dp_size):
                host_pool = HostKVPool(
                    config.host_tokens(), config.page_size, shape.layer_num, shape.head_num, shape.head_dim,
                    shape.torch_dtype, config.mem_layout, shape.is_mla,
                )
                device_pool = DevicePool(config.device_tokens() // config.page_size, host_pool.page_bytes, self.device)
                storage_config = HiCacheStorageConfig(
                    tp_rank=0, tp_size=1, dp_rank=r, is_mla_model=shape.is_mla,
                    is_page_first_layout=host_pool.is_page_first_layout, model_name=shape.name,
                )
                holder = _RankRef()
                ctl = StorageController(
                    host_pool, storage_config, registry=registry, metrics_registry=self.metrics_registry,
                    rank=r, breaker_threshold=config.breaker_threshold, auto_reattach=config.auto_reattach,
                    probe_interval_s=config.probe_interval_s,
                    idle_check=holder.idle_reason,
                    io_timeout_s=config.io_timeout_s, prefetch_policy=config.prefetch_policy,
                    write_policy=config.write_policy,
                )
                controllers.append(ctl)
                rank = CacheRank(r, host_pool, device_pool, ctl)
                holder.rank = rank
                self.ranks.append(rank)
        except Exception:
            for ctl in controllers:
                ctl.close()
            raise
        self.group = ControllerGroup(controllers)
        per_rank_pages = (config.device_tokens() + config.host_tokens()) // config.page_size
        self.router = CacheAwareRouter(config.dp_size, per_rank_pages)
        self.metrics_registry.register(NodeCollector(self))
        if config.storage_backend:
            try:
                self.attach(config.storage_backend, config.storage_extra_config)
            except ControllerError:
                self.close()
                raise

    # ------------------------------------------------------------------ requests
    def route(self, req: CacheRequest) -> CacheRank:
        """The rank ``req`` goes to (counted in flight there until ``done``); see ``routing``."""
        return self.ranks[self.router.route(req.page_hashes)]

    def process(self, req: CacheRequest) -> RequestResult:
        rank = self.route(req)
        try:
            return rank.process(req)
        finally:
            self.router.done(rank.rank)

    # ------------------------------------------------------------------ admin
    @property
    def switch_mode(self) -> str:
        return "idle" if self.config.strict_idle else "quiesce"

    def attach(
        self,
        backend: str,
        extra_config: dict[str, Any] | None = None,
        prefetch_policy: str | None = None,
        write_policy: str | None = None,
        replace: bool = False,
    ) -> str:
        """Attach (or with ``replace``, switch) the L3 backend on every rank."""
        extra_config = split_shared_bounds(backend, extra_config, len(self.ranks))
        with self._admin:
            before = [rank.controller.backend for rank in self.ranks]
            msg = self.group.attach(
                backend, extra_config, prefetch_policy, write_policy, replace=replace,
                switch_mode=self.switch_mode,
            )
            for rank, old in zip(self.ranks, before):
                # The same backend instance: only knobs or policies changed, L3 is as it was.
                if old is None or rank.controller.backend is not old:
                    rank.new_storage_epoch(backend)
            return msg

    def detach(self) -> str:
        with self._admin:
            return self.group.detach(switch_mode=self.switch_mode)

    def backend_view(self) -> dict[str, Any]:
        view = self.group.backend_view()
        # SGLang's GET names the config ``hicache_storage_backend_extra_config``; give both names.
        view["hicache_storage_backend_extra_config"] = view.get("hicache_storage_backend_extra_config_json")
        return view

    # ------------------------------------------------------------------ status
    def totals(self, ranks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        ranks = ranks if ranks is not None else [r.status() for r in self.ranks]
        keys = [k for k, v in ranks[0]["counters"].items() if isinstance(v, int)]
        out: dict[str, Any] = {k: sum(r["counters"][k] for r in ranks) for k in keys}
        out["cached_tokens"] = {t: sum(r["counters"]["cached_tokens"][t] for r in ranks) for t in TIERS}
        hit = sum(out["cached_tokens"].values())
        out["token_hit_ratio"] = hit / out["input_tokens"] if out["input_tokens"] else 0.0
        return out

    def status(self) -> dict[str, Any]:
        ranks = [r.status() for r in self.ranks]
        tiers: dict[str, Any] = {}
        for tier in ("device", "host"):
            used = sum(r["tiers"][tier]["pages"] for r in ranks)
            cap = sum(r["tiers"][tier]["capacity_pages"] for r in ranks)
            tiers[tier] = {"pages": used, "capacity_pages": cap, "occupancy": used / cap if cap else 0.0,
                           "used_bytes": sum(r["tiers"][tier]["used_bytes"] for r in ranks),
                           "capacity_bytes": sum(r["tiers"][tier]["capacity_bytes"] for r in ranks)}
        storage = self.group.status()
        return {
            "uptime_s": time.time() - self.started_at,
            "config": self.config.to_dict(),
            "device": str(self.device),
            "storage_backend": self.backend_view(),
            "storage_state": storage["state"],
            "routing": self.router.status(),
            "tiers": tiers,
            "totals": self.totals(ranks),
            "ranks": ranks,
        }

    def wait_backups(self, timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        return all(r.wait_backups(max(0.0, deadline - time.monotonic())) for r in self.ranks)

    def close(self) -> None:
        self.group.close()
