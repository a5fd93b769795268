"""Opening AIBrix: importing ``aibrix_kvcache`` in its settings' environment, and building its
cache manager for a host pool (AIBrix's block spec is the pool's page)."""

from __future__ import annotations

import asyncio
import os
import threading
import warnings
from dataclasses import replace
from types import ModuleType
from typing import Any

import torch

from hicache_aibrix.settings import (
    ENV_PREFIX,
    LOCAL_CONNECTORS,
    REMOTE_CONNECTORS,
    AIBrixSettings,
    aibrix_environment,
)
from hicache_core.memory.pages import page_geometry
from hicache_core.spec.capabilities import Capabilities
from hicache_core.spec.config import HiCacheStorageConfig
from hicache_core.spec.errors import BackendConfigError


def cuda_available() -> bool:
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


def _block_spec(settings: AIBrixSettings, config: HiCacheStorageConfig, pool: Any) -> Any:
    """AIBrix's block spec for one page of ``pool``.

    The block is bytes (``uint8``, head size counted in bytes): what a page's values mean
    (dtype, byte order) is in its key (the pool's page format), so pools of one geometry share
    one AIBrix store, and a block is never read back into a pool of another format.
    """
    from aibrix_kvcache.spec import KVCacheBlockLayout, KVCacheBlockSpec, KVCacheTensorSpec

    heads = int(pool.head_num)
    first_head = config.tp_rank * heads
    spec = KVCacheBlockSpec(
        block_ntokens=int(pool.page_size),
        block_dtype=torch.uint8,
        block_layout=KVCacheBlockLayout[settings.block_layout],
        tensor_spec=KVCacheTensorSpec(
            heads=list(range(first_head, first_head + heads)),
            layers=list(range(pool.start_layer, pool.end_layer)),
            head_size=int(pool.head_dim) * pool.kv_buffer.element_size(),
        ),
    )
    page_bytes = page_geometry(pool).page_bytes
    if spec.block_nbytes != page_bytes:
        raise BackendConfigError(
            f"an AIBrix block of this pool would hold {spec.block_nbytes} bytes, its pages hold {page_bytes}"
        )
    return spec


def _open_manager(ak: ModuleType, settings: AIBrixSettings, spec: Any, max_model_len: int, pinned: bool) -> Any:
    from aibrix_kvcache import cache_manager
    from aibrix_kvcache.spec import ModelSpec

    kv_config = ak.KVCacheConfig(block_spec=spec, model_spec=ModelSpec(max_model_len=max_model_len),
                                 multi_threaded=True)
    # AIBrix pins its buffers whenever its device is "cpu", which fails on a CPU-only torch;
    # its module flag turns that off. Pinned memory only helps device copies.
    with aibrix_environment(settings.overlay):
        saved_flag = cache_manager.TESTING_DISABLE_PIN_MEMORY
        cache_manager.TESTING_DISABLE_PIN_MEMORY = not pinned
        try:
            return ak.BaseKVCacheManager(kv_config)
        except Exception as exc:
            raise BackendConfigError(open_failure(settings.connector, exc)) from exc
        finally:
            cache_manager.TESTING_DISABLE_PIN_MEMORY = saved_flag


class _Shared:
    def __init__(self, manager: Any) -> None:
        self.manager = manager
        self.users = 0


#: Cache managers with an L2 connector, shared by the backends of this process that open the
#: same store with the same block spec: RocksDB admits one opener per directory, so a second
#: backend (a re-attach, a second pool format, a test's twin) uses the first one's manager.
_SHARED: dict[tuple[Any, ...], _Shared] = {}
_SHARED_LOCK = threading.Lock()


def open_manager(ak: ModuleType, settings: AIBrixSettings, config: HiCacheStorageConfig, pool: Any,
                 pinned: bool) -> tuple[Any, tuple[Any, ...] | None]:
    """An AIBrix ``BaseKVCacheManager`` whose block is one page of ``pool``, and its share key.

    Backends with an L2 connector share one manager per (environment, block spec) in the
    process; hand the key back to ``close_manager``. Without a connector (L1 memory only) each
    backend has its own, and the key is None.
    """
    spec = _block_spec(settings, config, pool)
    if not settings.connector:
        return _open_manager(ak, settings, spec, int(pool.size), pinned), None
    environment = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
    environment.update(settings.overlay)
    key = (tuple(sorted(environment.items())), settings.block_layout, spec.block_ntokens,
           tuple(spec.tensor_spec.heads), tuple(spec.tensor_spec.layers), spec.tensor_spec.head_size,
           int(pool.size), pinned)
    with _SHARED_LOCK:
        shared = _SHARED.get(key)
        if shared is None:
            shared = _SHARED[key] = _Shared(_open_manager(ak, settings, spec, int(pool.size), pinned))
        shared.users += 1
        return shared.manager, key


def close_manager(manager: Any, key: tuple[Any, ...] | None) -> None:
    """Release a manager from ``open_manager``; the last user of a shared one closes it.

    AIBrix 0.8 leaves the manager's open files and event loops to the garbage collector
    (reference cycles): drop every reference to it, then ``gc.collect()``, so a detach gives
    them back at once rather than at some later collection.
    """
    if key is not None:
        with _SHARED_LOCK:
            shared = _SHARED.get(key)
            if shared is not None and shared.manager is manager:
                shared.users -= 1
                if shared.users > 0:
                    return
                del _SHARED[key]
    manager.close()


def capabilities_for(base: Capabilities, connector: str) -> Capabilities:
    """Pages persist with a disk connector; several nodes can share SHFS or a remote store."""
    persistent = connector in ("ROCKSDB", "SHFS") or connector in REMOTE_CONNECTORS
    shared = connector == "SHFS" or connector in REMOTE_CONNECTORS
    return replace(base, persistent=persistent, shared=shared)


def open_failure(connector: str, exc: BaseException) -> str:
    """A sentence saying why AIBrix could not start and what to do."""
    name = connector or "its in-memory cache"
    text = f"AIBrix could not open {name}: {type(exc).__name__}: {exc}"
    if connector in REMOTE_CONNECTORS:
        text += f". The {connector} connector needs {REMOTE_CONNECTORS[connector]} and its client library"
    elif connector in LOCAL_CONNECTORS and connector != "MOCK":
        text += f". Check that the {connector.lower()} directory is writable and not opened by another process"
    return text
