"""``AIBrixStore``: hicache's L3 contract on AIBrix's KV cache manager.

One hicache page is one AIBrix block. Keys become AIBrix ``BlockHashes`` (the page key with
the model/rank suffix), so AIBrix stores each page under its own name, independent of the
pages before it. Writes go ``allocate_for`` -> copy the pool page into the block -> ``put``
(AIBrix takes the handle); reads go ``acquire`` -> copy the block into the pool page ->
``release``, the release in a ``finally`` so no handle outlives a call. Every AIBrix status
that is not OK becomes a per-page False/None and a counter, never an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from types import ModuleType
from typing import Any, TypeVar, cast

import torch

from hicache_aibrix.layout import PageBlockMapper
from hicache_aibrix.settings import (
    LOCAL_CONNECTORS,
    REMOTE_CONNECTORS,
    AIBrixSettings,
    aibrix_environment,
    parse_settings,
)
from hicache_aibrix.stats import AIBrixCounters
from hicache_core.memory.host_pool import HostKVPool
from hicache_core.spec.capabilities import Capabilities
from hicache_core.spec.config import HiCacheStorageConfig, HiCacheStorageExtraInfo
from hicache_core.spec.errors import BackendConfigError, HiCacheError, LayoutError
from hicache_core.spec.storage import HiCacheStorage

log = logging.getLogger(__name__)

#: AIBrix's SHFS connector names a file after the hex of the key, and file names stop at 255
#: bytes; longer keys are shortened to a digest.
_MAX_KEY_BYTES = 120

# A block-shaped byte view of one page, filled by (or read into) a copy.
PageView = Callable[[], torch.Tensor]


def _cuda_available() -> bool:
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # a broken CUDA install must not stop a CPU node
        return False


def import_aibrix(settings: AIBrixSettings) -> ModuleType:
    """Import ``aibrix_kvcache`` with this backend's settings in the environment.

    Two of AIBrix's settings are read at import time (token validation, profiling), so the
    first import happens inside the overlay. Importing its cache manager also installs uvloop
    as the process's asyncio event-loop policy; the policy the process had is put back, so
    loading a storage backend does not change how the rest of the process runs asyncio.
    """
    with aibrix_environment(settings.overlay), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # get/set_event_loop_policy, 3.14+
        policy = asyncio.get_event_loop_policy()
        try:
            import aibrix_kvcache
            import aibrix_kvcache.cache_manager
        except ImportError as exc:
            raise BackendConfigError(
                f"the AIBrix backend needs aibrix-kvcache: pip install 'aibrix-kvcache>=0.8,<0.9' ({exc})"
            ) from exc
        finally:
            asyncio.set_event_loop_policy(policy)
    from aibrix_kvcache.memory import MemoryRegion

    if not MemoryRegion.use_compact_layout():
        raise BackendConfigError(
            "aibrix_kvcache was imported with AIBRIX_KV_CACHE_OL_TOKEN_VALIDATION_ENABLED on, which "
            "cannot key pages by hash; unset it before the process imports aibrix_kvcache"
        )
    module: ModuleType = aibrix_kvcache
    return module


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
    # connector (see ``_capabilities_for``).
    capabilities = Capabilities(
        zero_copy_v1=True, delete=True, clear=False, persistent=False, shared=False,
        requires_page_layout=False, mla=False,
    )

    def __init__(self, config: HiCacheStorageConfig | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(config)
        if self.config.is_mla_model:
            raise BackendConfigError(
                "the AIBrix backend does not support MLA models: an AIBrix block always holds K and V "
                "(2 x layers x heads x head_dim per token) and has no single-latent layout; use an "
                "MLA-capable backend (file, mooncake, hf3fs, nixl)"
            )
        self.settings = parse_settings(self.config.extra())
        # Persistence and sharing depend on the connector, so this instance says its own.
        self.capabilities = _capabilities_for(self.settings.connector)  # type: ignore[misc]
        self._suffix = self.config.namespace_suffix()
        self._counters = AIBrixCounters()
        self._lock = threading.Lock()
        self._closed = False
        self._manager: Any = None
        self._mapper: PageBlockMapper | None = None
        self._aibrix: ModuleType | None = None
        self._pinned = False
        # Set once the manager exists; see _build_manager.
        self._acquire_one_by_one = False
        self._key_locks: KeyLocks | None = None

    # ------------------------------------------------------------------ lifecycle
    def register_mem_pool_host(self, mem_pool_host: HostKVPool) -> None:
        if mem_pool_host.is_mla:
            raise LayoutError(
                "the AIBrix backend cannot store MLA host pools (one latent vector per token): AIBrix "
                "blocks always hold K and V; use an MLA-capable backend"
            )
        if self._manager is not None:
            raise HiCacheError("AIBrixStore: a host pool is already registered; open a new backend for another")
        super().register_mem_pool_host(mem_pool_host)
        self._mapper = PageBlockMapper(mem_pool_host, self.settings.block_layout)
        self._aibrix = import_aibrix(self.settings)
        self._manager = self._build_manager(mem_pool_host)
        # AIBrix 0.8 quirk: with a connector that reads in batches (mget: SHFS, EIC, ...), L2Cache
        # counts the pages found and the manager takes that count as the leading run, so a
        # gap hands back wrong blocks (and puts them in L1). Such connectors get one page per
        # acquire, which makes the count exact.
        l2 = getattr(self._manager, "_l2_cache", None)
        self._acquire_one_by_one = bool(l2 is not None and l2.feature.mput_mget)
        # AIBrix 0.8 quirk: SHFS writes a key through one fixed temporary name, so two writers
        # of the same key collide; writers of one key are serialized in this process.
        if self.settings.connector == "SHFS":
            self._key_locks = KeyLocks()

    def _build_manager(self, pool: HostKVPool) -> Any:
        ak = self._aibrix
        assert ak is not None
        from aibrix_kvcache import cache_manager
        from aibrix_kvcache.spec import KVCacheBlockLayout, KVCacheBlockSpec, KVCacheTensorSpec, ModelSpec

        heads = pool.head_num
        first_head = self.config.tp_rank * heads
        spec = KVCacheBlockSpec(
            block_ntokens=pool.page_size,
            block_dtype=pool.dtype,
            block_layout=KVCacheBlockLayout[self.settings.block_layout],
            tensor_spec=KVCacheTensorSpec(
                heads=list(range(first_head, first_head + heads)),
                layers=list(range(pool.start_layer, pool.end_layer)),
                head_size=pool.head_dim,
            ),
        )
        assert spec.block_nbytes == pool.page_bytes, (spec.block_nbytes, pool.page_bytes)
        config = ak.KVCacheConfig(
            block_spec=spec,
            model_spec=ModelSpec(max_model_len=pool.size),
            multi_threaded=True,
        )
        # AIBrix pins its buffers whenever its device is "cpu", which fails on a CPU-only torch;
        # its module flag turns that off. Pinned memory only helps device copies, so pin exactly
        # when CUDA is present.
        self._pinned = _cuda_available()
        connector = self.settings.connector
        with aibrix_environment(self.settings.overlay):
            saved_flag = cache_manager.TESTING_DISABLE_PIN_MEMORY
            cache_manager.TESTING_DISABLE_PIN_MEMORY = not self._pinned
            try:
                return ak.BaseKVCacheManager(config)
            except Exception as exc:
                raise BackendConfigError(_open_failure(connector, exc)) from exc
            finally:
                cache_manager.TESTING_DISABLE_PIN_MEMORY = saved_flag

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            manager, self._manager = self._manager, None
        if manager is not None:
            manager.close()

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
        }
        stats.update(self._counters.snapshot())
        return stats

    def _connector_name(self) -> str:
        return self.settings.connector or "none (L1 memory only)"

    # ------------------------------------------------------------------ keys
    def _block_key(self, key: str) -> str:
        full = f"{key}{self._suffix}"
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

    def _chunks(self, n: int) -> Iterator[range]:
        manager = self._require_manager()
        step = max(1, manager.chunk_size // manager.block_size)
        for start in range(0, n, step):
            yield range(start, min(n, start + step))

    # ------------------------------------------------------------------ the two data paths
    def _store_pages(self, keys: list[str], sources: list[PageView]) -> list[bool]:
        """Write each source page under its key; one bool per key."""
        manager = self._require_manager()
        page = self.mem_pool_host.page_size  # type: ignore[union-attr]
        results = [False] * len(keys)
        for chunk in self._chunks(len(keys)):
            chunk_keys = [keys[i] for i in chunk]
            status = manager.allocate_for(None, self._hashes(chunk_keys))
            if not status.is_ok():
                self._counters.add(set_errors=len(chunk), last_error=f"allocate_for: {status}")
                continue
            handle = status.get()
            self._counters.add(handles_acquired=1)
            handed_over = False
            try:
                filled = self._fill_blocks(handle, [sources[i] for i in chunk])
                if filled < len(handle):
                    handle.truncate(filled)  # releases the blocks that hold no page
                if filled == 0:
                    continue
                handed_over = True  # put() owns the handle from here, on success and failure
                with _hold(self._key_locks, chunk_keys[:filled]):
                    put = manager.put(None, self._hashes(chunk_keys[:filled]), handle)
            except Exception as exc:  # an AIBrix bug must not reach the request path
                self._counters.add(set_errors=len(chunk), last_error=f"put: {exc!r}")
                continue
            finally:
                if not handed_over:
                    handle.release()
                self._counters.add(handles_released=1)
            stored = put.get() // page if put.is_ok() else 0
            for offset in range(stored):
                results[chunk[offset]] = True
            # Pages past `filled` failed their copy (recorded there); the rest of the shortfall
            # is AIBrix's.
            if stored < filled:
                self._counters.add(set_errors=filled - stored, last_error=f"put stored {stored}/{filled}: {put}")
            self._counters.add(set_errors=len(chunk) - filled)
            self._counters.add(pages_set=stored, bytes_written=stored * self._page_bytes())
        return results

    def _fill_blocks(self, handle: Any, sources: list[PageView]) -> int:
        """Copy pages into the handle's blocks; how many leading blocks were filled."""
        mapper = self._mapper
        assert mapper is not None
        for n, (block, source) in enumerate(zip(handle.to_tensors(), sources)):
            try:
                mapper.block_bytes(block).copy_(source())
            except Exception as exc:
                self._counters.add(last_error=f"copy into block: {exc!r}")
                return n
        return min(len(handle), len(sources))

    def _load_pages(self, keys: list[str], sinks: list[PageView]) -> list[bool]:
        """Read each key's page into its sink; one bool per key (False for a miss or error)."""
        manager = self._require_manager()
        mapper = self._mapper
        assert mapper is not None
        page = self.mem_pool_host.page_size  # type: ignore[union-attr]
        results = [False] * len(keys)
        for chunk in self._chunks(len(keys)):
            pos, end = chunk.start, chunk.stop
            step = 1 if self._acquire_one_by_one else end - pos
            # acquire() answers the leading run of hits; after a miss, go on past it.
            while pos < end:
                try:
                    status = manager.acquire(None, self._hashes(keys[pos : min(end, pos + step)]))
                except Exception as exc:
                    self._counters.add(get_errors=1, last_error=f"acquire: {exc!r}")
                    status = None
                hits = 0
                if status is not None and status.is_ok():
                    ntokens, handle = status.get()
                    self._counters.add(handles_acquired=1)
                    try:
                        for offset, block in enumerate(handle.to_tensors()[: ntokens // page]):
                            try:
                                sinks[pos + offset]().copy_(mapper.block_bytes(block))
                            except Exception as exc:
                                self._counters.add(get_errors=1, last_error=f"copy from block: {exc!r}")
                                break
                            results[pos + offset] = True
                            hits += 1
                    finally:
                        handle.release()
                        self._counters.add(handles_released=1)
                elif status is not None and not status.is_not_found():
                    self._counters.add(get_errors=1, last_error=f"acquire: {status}")
                self._counters.add(pages_hit=hits, bytes_read=hits * self._page_bytes())
                if hits < min(step, end - pos):
                    self._counters.add(pages_missed=1)
                    pos += hits + 1  # skip the page that missed
                else:
                    pos += hits
        return results

    def _page_bytes(self) -> int:
        return self.mem_pool_host.page_bytes if self.mem_pool_host is not None else 0

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
        pool = self._pool()
        mapper = self._mapper
        assert mapper is not None
        targets: list[torch.Tensor | None] = []
        locs = list(target_locations) if target_locations is not None else [None] * len(keys)
        for loc in locs:
            if isinstance(loc, torch.Tensor) and loc.is_contiguous() and loc.numel() * loc.element_size() == pool.page_bytes:
                targets.append(loc)
            elif loc is None:
                targets.append(pool.get_dummy_flat_data_page())
            else:
                self._counters.add(get_errors=1, last_error="target is not one contiguous page of the pool")
                targets.append(None)
        live = [i for i, t in enumerate(targets) if t is not None]
        found = self._load_pages(
            [keys[i] for i in live], [_flat_view(mapper, targets[i]) for i in live]  # type: ignore[arg-type]
        )
        out: list[torch.Tensor | None] = [None] * len(keys)
        for i, ok in zip(live, found):
            if ok:
                out[i] = targets[i]
        return out

    @_miss_when_closed(lambda keys: False)
    def batch_set(self, keys: list[str], values: Any | None = None, target_locations: Any | None = None,
                  target_sizes: Any | None = None) -> bool:
        self._pool()
        mapper = self._mapper
        assert mapper is not None
        vals = list(values) if values is not None else [None] * len(keys)
        live: list[int] = []
        pages: list[torch.Tensor] = []
        for i, value in enumerate(vals):
            if isinstance(value, torch.Tensor) and value.numel() * value.element_size() == mapper.block_nbytes:
                live.append(i)
                pages.append(value)
            else:
                self._counters.add(set_errors=1, last_error="value is not one page of the pool")
        stored = self._store_pages([keys[i] for i in live], [_flat_view(mapper, v) for v in pages])
        return len(live) == len(keys) and all(stored)

    @_miss_when_closed(_all_false)
    def exists_many(self, keys: list[str], extra_info: HiCacheStorageExtraInfo | None = None) -> list[bool]:
        manager = self._require_manager()
        return [self._count_existing(manager, [k]) == 1 for k in keys]

    @_miss_when_closed(lambda keys: 0)
    def batch_exists(self, keys: list[str], extra_info: HiCacheStorageExtraInfo | None = None) -> int:
        manager = self._require_manager()
        total = 0
        for chunk in self._chunks(len(keys)):
            found = self._count_existing(manager, keys[chunk.start : chunk.stop])
            total += found
            if found < len(chunk):
                break
        return total

    def _count_existing(self, manager: Any, keys: list[str]) -> int:
        """Leading pages of ``keys`` AIBrix has (L1, then L2 for the rest)."""
        try:
            status = manager.exists(None, self._hashes(keys))
        except Exception as exc:
            self._counters.add(exists_errors=1, last_error=f"exists: {exc!r}")
            return 0
        if status.is_ok():
            return int(status.get()) // self.mem_pool_host.page_size  # type: ignore[union-attr]
        if not status.is_not_found():
            self._counters.add(exists_errors=1, last_error=f"exists: {status}")
        return 0

    # ------------------------------------------------------------------ v1: pool pages in place
    @_miss_when_closed(_all_false)
    def batch_get_v1(self, keys: list[str], host_indices: torch.Tensor,
                     extra_info: HiCacheStorageExtraInfo | None = None) -> list[bool]:
        pool = self._pool_for_v1(keys, host_indices)
        mapper = self._mapper
        assert mapper is not None
        pages = pool.indices_to_pages(host_indices)
        return self._load_pages(list(keys), [_pool_view(mapper, p) for p in pages])

    @_miss_when_closed(_all_false)
    def batch_set_v1(self, keys: list[str], host_indices: torch.Tensor,
                     extra_info: HiCacheStorageExtraInfo | None = None) -> list[bool]:
        pool = self._pool_for_v1(keys, host_indices)
        mapper = self._mapper
        assert mapper is not None
        pages = pool.indices_to_pages(host_indices)
        return self._store_pages(list(keys), [_pool_view(mapper, p) for p in pages])

    def _pool(self) -> HostKVPool:
        self._require_manager()
        assert self.mem_pool_host is not None
        return self.mem_pool_host


class KeyLocks:
    """Striped locks by key: writers of the same key in this process take turns."""

    def __init__(self, stripes: int = 64) -> None:
        self._locks = [threading.Lock() for _ in range(stripes)]

    @contextlib.contextmanager
    def hold(self, keys: list[str]) -> Iterator[None]:
        # Taken in stripe order, so two callers with overlapping keys cannot deadlock.
        stripes = sorted({hash(k) % len(self._locks) for k in keys})
        with contextlib.ExitStack() as stack:
            for i in stripes:
                stack.enter_context(self._locks[i])
            yield


def _hold(locks: KeyLocks | None, keys: list[str]) -> contextlib.AbstractContextManager[None]:
    return locks.hold(keys) if locks is not None else contextlib.nullcontext()


def _pool_view(mapper: PageBlockMapper, page: int) -> PageView:
    return lambda: mapper.pool_page(page)


def _flat_view(mapper: PageBlockMapper, flat: torch.Tensor) -> PageView:
    return lambda: mapper.flat_page(flat)


def _capabilities_for(connector: str) -> Capabilities:
    """Pages persist with a disk connector; several nodes can share SHFS or a remote store."""
    persistent = connector in ("ROCKSDB", "SHFS") or connector in REMOTE_CONNECTORS
    shared = connector == "SHFS" or connector in REMOTE_CONNECTORS
    return replace(AIBrixStore.capabilities, persistent=persistent, shared=shared)


def _open_failure(connector: str, exc: BaseException) -> str:
    """A sentence saying why AIBrix could not start and what to do."""
    name = connector or "its in-memory cache"
    text = f"AIBrix could not open {name}: {type(exc).__name__}: {exc}"
    if connector in REMOTE_CONNECTORS:
        text += f". The {connector} connector needs {REMOTE_CONNECTORS[connector]} and its client library"
    elif connector in LOCAL_CONNECTORS and connector != "MOCK":
        text += f". Check that the {connector.lower()} directory is writable and not opened by another process"
    return text
