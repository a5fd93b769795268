"""``AIBrixStore``: hicache's L3 contract on AIBrix's KV cache manager.

One hicache page is one AIBrix block. Keys become AIBrix ``BlockHashes``: the page key in the
registered pool's namespace (``HiCacheStorage.page_key``: model, page format, shard), so AIBrix
stores each page under its own name, independent of the pages before it, and a page of an
incompatible pool (another dtype, geometry, byte order or rank) is a miss. The bytes in a block
are the core's page (``hicache_core.memory.pages``) in AIBrix's block layout, the same whichever
path (zero-copy v1 or the flat-tensor ``get``/``set``) wrote them (``layout.PageBlockMapper``).
The data paths are ``blocks.BlockIO``; opening AIBrix is ``manager``.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import logging
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar, cast

import torch

from hicache_aibrix.blocks import BlockIO, KeyLocks, PageView
from hicache_aibrix.layout import PageBlockMapper
from hicache_aibrix.manager import (
    capabilities_for,
    close_manager,
    cuda_available,
    import_aibrix,
    open_manager,
)
from hicache_aibrix.settings import parse_settings
from hicache_aibrix.stats import AIBrixCounters
from hicache_core.memory.host_pool import HostKVPool
from hicache_core.memory.pages import pool_kind
from hicache_core.spec.capabilities import Capabilities
from hicache_core.spec.config import HiCacheStorageConfig, HiCacheStorageExtraInfo
from hicache_core.spec.errors import HiCacheError, LayoutError
from hicache_core.spec.storage import HiCacheStorage

log = logging.getLogger(__name__)

#: AIBrix's SHFS connector names a file after the hex of the key, and file names stop at 255
#: bytes; longer keys are shortened to a digest (of the whole key, namespace included).
_MAX_KEY_BYTES = 120

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _miss_when_closed(miss: Callable[[list[str]], Any]) -> Callable[[_Method], _Method]:
    """After ``close()``, answer a batch call with misses (counted) instead of raising.

    A controller may detach a backend while request threads are still calling it.
    """

    def decorate(method: _Method) -> _Method:
        @functools.wraps(method)
        def wrapper(self: AIBrixStore, keys: list[str], *args: Any, **kwargs: Any) -> Any:
            if self._closed:
                self._counters.add(calls_after_close=1)
                return miss(keys)
            return method(self, keys, *args, **kwargs)

        return cast(_Method, wrapper)

    return decorate


def _all_false(keys: list[str]) -> list[bool]:
    return [False] * len(keys)


class AIBrixStore(HiCacheStorage):
    """hicache storage on an AIBrix ``BaseKVCacheManager`` (L1 memory + optional L2 connector).

    The AIBrix cache manager is built when the host pool is registered, because its block
    spec (tokens, layers, heads, head size, dtype) is the pool's page.
    """

    contract_version = "1.0"
    # What every instance can do; an instance narrows or widens persistent/shared for its
    # connector (see ``manager.capabilities_for``).
    capabilities = Capabilities(
        zero_copy_v1=True, delete=True, clear=False, persistent=False, shared=False,
        requires_page_layout=False, mla=False,
        # An AIBrix block is one KV page of the pool's geometry: v2 sidecar states (other sizes)
        # are misses, never stored.
        sidecar_pools=False,
    )

    def __init__(self, config: HiCacheStorageConfig | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(config)
        if self.config.is_mla_model:
            raise LayoutError(
                "the AIBrix backend does not support MLA models: an AIBrix block always holds K and V "
                "(2 x layers x heads x head_dim per token) and has no single-latent layout; use an "
                "MLA-capable backend (file, mooncake, hf3fs, nixl)"
            )
        self.settings = parse_settings(self.config.extra())
        # Persistence and sharing depend on the connector, so this instance says its own.
        self.capabilities = capabilities_for(AIBrixStore.capabilities, self.settings.connector)  # type: ignore[misc]
        self._counters = AIBrixCounters()
        self._lock = threading.Lock()
        self._closed = False
        self._manager: Any = None
        self._manager_key: tuple[Any, ...] | None = None
        self._mapper: PageBlockMapper | None = None
        self._blocks: BlockIO | None = None
        self._aibrix: ModuleType | None = None
        self._pinned = False

    # ------------------------------------------------------------------ lifecycle
    def register_mem_pool_host(self, mem_pool_host: HostKVPool) -> None:
        if pool_kind(mem_pool_host) == "mla":
            raise LayoutError(
                "the AIBrix backend cannot store MLA host pools (one latent vector per token): AIBrix "
                "blocks always hold K and V; use an MLA-capable backend"
            )
        if self._manager is not None:
            raise HiCacheError("AIBrixStore: a host pool is already registered; open a new backend for another")
        mapper = PageBlockMapper(mem_pool_host, self.settings.block_layout)
        super().register_mem_pool_host(mem_pool_host)  # keys are computed in this pool's namespace
        self._mapper = mapper
        self._aibrix = import_aibrix(self.settings)
        # Pin AIBrix's buffers exactly when CUDA is present (pinned memory only helps device copies).
        self._pinned = cuda_available()
        self._manager, self._manager_key = open_manager(
            self._aibrix, self.settings, self.config, mem_pool_host, self._pinned)
        l2 = getattr(self._manager, "_l2_cache", None)
        self._blocks = BlockIO(
            self._manager, mapper, int(mem_pool_host.page_size), self._hashes, self._counters,
            acquire_one_by_one=bool(l2 is not None and l2.feature.mput_mget),
            key_locks=KeyLocks() if self.settings.connector == "SHFS" else None,
        )

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            manager, self._manager = self._manager, None
            # No reference to the manager may outlive close(): its files go with it (see
            # close_manager), even while the caller still holds this closed store.
            self._blocks = None
        if manager is not None:
            close_manager(manager, self._manager_key)
            del manager
            gc.collect()  # AIBrix's files and event loops live in reference cycles

    def health_check(self) -> None:
        manager = self._require_manager()
        status = manager.exists(None, self._hashes(["__hicache_health_probe__"]))
        if not status.is_ok() and not status.is_not_found():
            raise HiCacheError(f"AIBrix {self._connector_name()} is unhealthy: {status}")

    def get_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "connector": self._connector_name(),
            "l1_enabled": self.settings.l1_enabled,
            "block_layout": self.settings.block_layout,
            "pinned_memory": self._pinned,
            "zero_copy_v1": self.capabilities.zero_copy_v1,
            "open": self._manager is not None,
            "namespace": self.namespace,
        }
        stats.update(self._counters.snapshot())
        return stats

    def _connector_name(self) -> str:
        return self.settings.connector or "none (L1 memory only)"

    # ------------------------------------------------------------------ keys
    def _block_key(self, key: str) -> str:
        full = self.page_key(key)
        if len(full.encode()) > _MAX_KEY_BYTES:
            full = hashlib.blake2b(full.encode(), digest_size=32).hexdigest()
        return full

    def _hashes(self, keys: list[str]) -> Any:
        from aibrix_kvcache import BlockHashes

        assert self.mem_pool_host is not None
        return BlockHashes([self._block_key(k) for k in keys], self.mem_pool_host.page_size)

    def _require_manager(self) -> Any:
        manager = self._manager
        if manager is None:
            if self._closed:
                raise HiCacheError("AIBrixStore is closed")
            raise HiCacheError(
                "AIBrixStore: no host pool registered; call register_mem_pool_host() before I/O "
                "(the AIBrix block spec is taken from the pool)"
            )
        return manager

    def _io(self) -> BlockIO:
        self._require_manager()
        assert self._blocks is not None
        return self._blocks

    # ------------------------------------------------------------------ single-key contract
    def get(self, key: str, target_location: Any | None = None, target_sizes: Any | None = None) -> torch.Tensor | None:
        return self.batch_get([key], [target_location])[0]

    def set(self, key: str, value: Any | None = None, target_location: Any | None = None,
            target_sizes: Any | None = None) -> bool:
        return self.batch_set([key], [value])

    def exists(self, key: str) -> bool:
        return self.exists_many([key])[0]

    def delete(self, key: str) -> bool:
        if self._closed:
            self._counters.add(calls_after_close=1)
            return False
        manager = self._require_manager()
        try:
            status = manager.delete(None, self._hashes([key]))
        except Exception as exc:
            self._counters.add(delete_errors=1, last_error=f"delete: {exc!r}")
            return False
        if not status.is_ok():
            self._counters.add(delete_errors=1, last_error=f"delete: {status}")
            return False
        return True

    # ------------------------------------------------------------------ bulk
    @_miss_when_closed(lambda keys: [None] * len(keys))
    def batch_get(self, keys: list[str], target_locations: Any | None = None,
                  target_sizes: Any | None = None) -> list[torch.Tensor | None]:
        io = self._io()
        pool = self.mem_pool_host
        assert pool is not None
        targets: list[torch.Tensor | None] = []
        locs = list(target_locations) if target_locations is not None else [None] * len(keys)
        for loc in locs:
            if isinstance(loc, torch.Tensor) and loc.is_contiguous() and loc.numel() * loc.element_size() == io.page_bytes:
                targets.append(loc)
            elif loc is None:
                dtype = pool.kv_buffer.dtype
                targets.append(torch.empty(io.page_bytes // dtype.itemsize, dtype=dtype))
            else:
                self._counters.add(get_errors=1, last_error="target is not one contiguous page of the pool")
                targets.append(None)
        live = [i for i, t in enumerate(targets) if t is not None]
        found = io.load([keys[i] for i in live], [self._flat_view(targets[i]) for i in live])  # type: ignore[arg-type]
        out: list[torch.Tensor | None] = [None] * len(keys)
        for i, ok in zip(live, found):
            if ok:
                out[i] = targets[i]
        return out

    @_miss_when_closed(lambda keys: False)
    def batch_set(self, keys: list[str], values: Any | None = None, target_locations: Any | None = None,
                  target_sizes: Any | None = None) -> bool:
        io = self._io()
        vals = list(values) if values is not None else [None] * len(keys)
        live: list[int] = []
        pages: list[torch.Tensor] = []
        for i, value in enumerate(vals):
            if isinstance(value, torch.Tensor) and value.numel() * value.element_size() == io.page_bytes:
                live.append(i)
                pages.append(value)
            else:
                self._counters.add(set_errors=1, last_error="value is not one page of the pool")
        stored = io.store([keys[i] for i in live], [self._flat_view(v) for v in pages])
        return len(live) == len(keys) and all(stored)

    @_miss_when_closed(_all_false)
    def exists_many(self, keys: list[str], extra_info: HiCacheStorageExtraInfo | None = None) -> list[bool]:
        io = self._io()
        return [io.count_existing([k]) == 1 for k in keys]

    @_miss_when_closed(lambda keys: 0)
    def batch_exists(self, keys: list[str], extra_info: HiCacheStorageExtraInfo | None = None) -> int:
        io = self._io()
        total = 0
        for chunk in io.chunks(len(keys)):
            found = io.count_existing(keys[chunk.start : chunk.stop])
            total += found
            if found < len(chunk):
                break
        return total

    # ------------------------------------------------------------------ v1: pool pages in place
    @_miss_when_closed(_all_false)
    def batch_get_v1(self, keys: list[str], host_indices: torch.Tensor,
                     extra_info: HiCacheStorageExtraInfo | None = None) -> list[bool]:
        pool = self._pool_for_v1(keys, host_indices)
        io = self._io()
        return io.load(list(keys), [self._pool_view(p) for p in pool.indices_to_pages(host_indices)])

    @_miss_when_closed(_all_false)
    def batch_set_v1(self, keys: list[str], host_indices: torch.Tensor,
                     extra_info: HiCacheStorageExtraInfo | None = None) -> list[bool]:
        pool = self._pool_for_v1(keys, host_indices)
        io = self._io()
        return io.store(list(keys), [self._pool_view(p) for p in pool.indices_to_pages(host_indices)])

    def _pool_view(self, page: int) -> PageView:
        mapper = self._mapper
        assert mapper is not None
        return lambda: mapper.pool_page(page)

    def _flat_view(self, flat: torch.Tensor) -> PageView:
        mapper = self._mapper
        assert mapper is not None
        return lambda: mapper.flat_page(flat)
