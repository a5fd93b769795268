"""Any hicache backend inside SGLang, through SGLang's own ``dynamic`` storage backend.

An SGLang operator installs hicache-core and a backend package, then starts SGLang with::

    --hicache-storage-backend dynamic
    --hicache-storage-backend-extra-config '{"backend_name": "hicache",
        "module_path": "hicache_core.compat.sglang_bridge", "class_name": "HiCacheBridge",
        "interface_v1": 1, "hicache_backend": "file", "path": "/var/cache/hicache"}'

SGLang's ``StorageBackendFactory`` imports this module, checks that ``HiCacheBridge``
subclasses SGLang's ``HiCacheStorage`` and calls ``HiCacheBridge(storage_config, kwargs)``.
``hicache_backend`` names the backend as ``hicache backends`` lists it (found by entry points);
every other key (SGLang's ``backend_name``/``module_path``/``class_name``/``interface_v1`` taken
out) reaches that backend's config, as its README lists them. ``interface_v1: 1`` makes
SGLang's controller use the zero-copy ``batch_get_v1``/``batch_set_v1``; without it SGLang
moves flat pages through ``batch_get``/``batch_set``, which the bridge serves too.

The class is built on first access (PEP 562 module ``__getattr__``), so importing hicache never
imports sglang: with a real sglang importable its base is SGLang's ``HiCacheStorage``,
otherwise hicache's own ABC (so the same names also load in hicache's ``dynamic``).

What the bridge converts: SGLang's ``HiCacheStorageConfig`` to hicache's (``from_any``, every
0.5.23 field), SGLang's host pools to ``SGLangHostPoolView`` (hicache's page API, computed by
``hicache_core.memory.pages`` over SGLang's buffer, no copy), SGLang's ``extra_info`` objects to
hicache's, and v2 results back to SGLang's ``PoolTransferResult`` and pool-name keys.
"""

from __future__ import annotations

import threading
from dataclasses import fields, replace
from typing import Any

import torch

from hicache_core.compat.sglang_pool import as_hicache_pool
from hicache_core.spec.config import HiCacheStorageConfig, HiCacheStorageExtraInfo
from hicache_core.spec.errors import BackendConfigError
from hicache_core.spec.pools import pool_name
from hicache_core.spec.storage import HiCacheStorage

#: The extra-config key that names the hicache backend to run (as ``hicache backends`` lists it).
BRIDGE_KEY = "hicache_backend"
#: ``module_path`` / ``class_name`` an SGLang operator writes in the extra config.
MODULE_PATH = __name__
CLASS_NAME = "HiCacheBridge"
#: SGLang's dynamic-backend keys, which are SGLang's business and never reach the backend.
SGLANG_DYNAMIC_KEYS: tuple[str, ...] = ("backend_name", "module_path", "class_name", "interface_v1")
#: SGLang's controller knobs that share the extra config; SGLang 0.5.23 pops them before it
#: creates a backend, and the bridge drops them too should one still be there.
SGLANG_CONTROLLER_KEYS: tuple[str, ...] = (
    "prefetch_threshold", "prefetch_timeout_base", "prefetch_timeout_per_ki_token",
    "hicache_storage_pass_prefix_keys", "tp_lcm_size",
)

SGLANG_STORAGE_MODULE = "sglang.srt.mem_cache.hicache_storage"


def sglang_storage_module() -> Any | None:
    """SGLang's real ``hicache_storage`` module, or None when a real sglang is not importable."""
    from hicache_core.compat import sglang_shim

    if not sglang_shim.real_sglang_available():
        return None
    import importlib

    module = importlib.import_module(SGLANG_STORAGE_MODULE)
    return None if sglang_shim.is_shim_module(module) else module


def is_real_sglang_class(cls: type) -> bool:
    """True when ``cls`` subclasses the real sglang's ``HiCacheStorage`` (already imported)."""
    import sys

    from hicache_core.compat.sglang_shim import is_shim_module

    module = sys.modules.get(SGLANG_STORAGE_MODULE)
    if module is None or is_shim_module(module):
        return False
    base = getattr(module, "HiCacheStorage", None)
    return isinstance(base, type) and issubclass(cls, base)


def to_sglang_config(config: HiCacheStorageConfig) -> Any:
    """hicache's config as SGLang's own ``HiCacheStorageConfig`` (sglang must be importable)."""
    module = sglang_storage_module()
    if module is None:
        return config
    target = module.HiCacheStorageConfig
    names = {f.name for f in fields(target)}
    values = {f.name: getattr(config, f.name) for f in fields(config) if f.name in names}
    return target(**values)


def to_hicache_extra_info(extra_info: Any) -> HiCacheStorageExtraInfo | None:
    """SGLang's ``HiCacheStorageExtraInfo`` (same fields) as hicache's."""
    if extra_info is None or isinstance(extra_info, HiCacheStorageExtraInfo):
        return extra_info
    return HiCacheStorageExtraInfo(
        prefix_keys=getattr(extra_info, "prefix_keys", None), extra_info=getattr(extra_info, "extra_info", None)
    )


def bridge_backend_config(storage_config: Any) -> tuple[str, HiCacheStorageConfig]:
    """The hicache backend name and its config, from the config SGLang hands the bridge."""
    config = HiCacheStorageConfig.from_any(storage_config)
    extra = config.extra()
    name = extra.pop(BRIDGE_KEY, None)
    if not isinstance(name, str) or not name:
        raise BackendConfigError(
            f"{CLASS_NAME}: the extra config must name the hicache backend to run in {BRIDGE_KEY!r}, "
            f'e.g. "{BRIDGE_KEY}": "file" (any name "hicache backends" lists)'
        )
    if name == "dynamic":
        raise BackendConfigError(
            f"{CLASS_NAME}: {BRIDGE_KEY} 'dynamic' is SGLang's own loader; name an installed hicache "
            "backend (see 'hicache backends'), or load the class with SGLang's dynamic backend directly"
        )
    for key in (*SGLANG_DYNAMIC_KEYS, *SGLANG_CONTROLLER_KEYS):
        extra.pop(key, None)
    return name, replace(config, extra_config=extra)


class _BridgeMethods:
    """The bridge's behaviour; ``bridge_class()`` puts it in front of the right base class."""

    inner: HiCacheStorage

    def __init__(self, storage_config: Any = None, kwargs: Any = None) -> None:
        from hicache_core.plugins.factory import create_backend

        name, config = bridge_backend_config(storage_config)
        #: The config SGLang handed over, as it came (SGLang's own object inside SGLang).
        self.storage_config = storage_config
        self.config = config
        self.hicache_backend_name = name
        self.inner = create_backend(name, config)
        self.mem_pool_host: Any = None
        self.registered_pools: dict[Any, Any] = {}
        self._pool_lock = threading.Lock()

    @property
    def capabilities(self) -> Any:
        return self.inner.capabilities

    # ------------------------------------------------------------------ pools
    def register_mem_pool_host(self, mem_pool_host: Any) -> None:
        """SGLang's KV host pool (or hicache's): the backend reads it through the page view."""
        self.mem_pool_host = mem_pool_host
        self.inner.register_mem_pool_host(as_hicache_pool(mem_pool_host))

    def register_mem_host_pool_v2(self, host_pool: Any, host_pool_name: Any) -> None:
        """A further pool by name; KV-format pools get the page view, sidecars pass as they are."""
        with self._pool_lock:
            self.registered_pools[host_pool_name] = host_pool
        name = pool_name(host_pool_name)
        if name == "kv" and host_pool is self.mem_pool_host:
            return  # the anchor pool, already registered through register_mem_pool_host
        pool = as_hicache_pool(host_pool) if _has_kv_pages(host_pool) else host_pool
        self.inner.register_mem_host_pool_v2(pool, name)

    def on_host_pools_registered(self) -> None:
        self.inner.on_host_pools_registered()

    # ------------------------------------------------------------------ single keys and flat pages
    def get(self, key: str, target_location: Any | None = None, target_sizes: Any | None = None) -> Any:
        return self.inner.get(key, target_location, target_sizes)

    def set(self, key: str, value: Any | None = None, target_location: Any | None = None,
            target_sizes: Any | None = None) -> bool:
        return bool(self.inner.set(key, value, target_location, target_sizes))

    def exists(self, key: str) -> bool:
        return bool(self.inner.exists(key))

    def batch_get(self, keys: list[str], target_locations: Any | None = None,
                  target_sizes: Any | None = None) -> list[torch.Tensor | None]:
        return list(self.inner.batch_get(list(keys), target_locations, target_sizes))

    def batch_set(self, keys: list[str], values: Any | None = None, target_locations: Any | None = None,
                  target_sizes: Any | None = None) -> bool:
        return bool(self.inner.batch_set(list(keys), values, target_locations, target_sizes))

    def batch_exists(self, keys: list[str], extra_info: Any | None = None) -> int:
        return int(self.inner.batch_exists(list(keys), to_hicache_extra_info(extra_info)))

    def exists_many(self, keys: list[str], extra_info: Any | None = None) -> list[bool]:
        return list(self.inner.exists_many(list(keys), to_hicache_extra_info(extra_info)))

    # ------------------------------------------------------------------ zero-copy v1
    def batch_get_v1(self, keys: list[str], host_indices: torch.Tensor, extra_info: Any | None = None) -> list[bool]:
        return list(self.inner.batch_get_v1(list(keys), host_indices, to_hicache_extra_info(extra_info)))

    def batch_set_v1(self, keys: list[str], host_indices: torch.Tensor, extra_info: Any | None = None) -> list[bool]:
        return list(self.inner.batch_set_v1(list(keys), host_indices, to_hicache_extra_info(extra_info)))

    # ------------------------------------------------------------------ v2 pool transfers
    def batch_exists_v2(self, keys: list[str], pool_transfers: Any | None = None, extra_info: Any | None = None) -> Any:
        result = self.inner.batch_exists_v2(list(keys), pool_transfers, to_hicache_extra_info(extra_info))
        module = sglang_storage_module()
        if module is None:
            return result
        return module.PoolTransferResult(
            result.kv_hit_pages, dict(result.extra_pool_hit_pages), result.restorable_prefix_pages
        )

    def batch_get_v2(self, transfers: list[Any], extra_info: Any | None = None) -> dict[Any, list[bool]]:
        results = self.inner.batch_get_v2(list(transfers), to_hicache_extra_info(extra_info))
        return _keyed_like(transfers, results)

    def batch_set_v2(self, transfers: list[Any], extra_info: Any | None = None) -> dict[Any, list[bool]]:
        results = self.inner.batch_set_v2(list(transfers), to_hicache_extra_info(extra_info))
        return _keyed_like(transfers, results)

    # ------------------------------------------------------------------ lifecycle
    def clear(self) -> None:
        self.inner.clear()

    def delete(self, key: str) -> bool:
        return bool(self.inner.delete(key))

    def get_stats(self) -> Any:
        return self.inner.get_stats()

    def health_check(self) -> None:
        self.inner.health_check()

    def close(self) -> None:
        self.inner.close()

    def __repr__(self) -> str:
        return f"{CLASS_NAME}(hicache_backend={self.hicache_backend_name!r}, inner={type(self.inner).__name__})"


def _has_kv_pages(pool: Any) -> bool:
    """Whether ``pool`` is a KV-format pool whose pages ``hicache_core.memory.pages`` describes."""
    from hicache_core.memory.pages import page_format

    try:
        page_format(pool)
    except Exception:
        return False
    return True


def _keyed_like(transfers: list[Any], results: dict[str, list[bool]]) -> dict[Any, list[bool]]:
    """Results keyed by each transfer's own ``name`` object (SGLang's ``PoolName`` hashes by
    member name, so a plain-string key would not be found by SGLang's lookups)."""
    out: dict[Any, list[bool]] = {}
    for t in transfers:
        key = pool_name(t.name)
        if key in results:
            out[t.name] = results[key]
    return out


_build_lock = threading.Lock()
_built: dict[str, type] = {}


def bridge_class() -> type:
    """``HiCacheBridge`` on SGLang's real ``HiCacheStorage`` when sglang is importable, else on
    hicache's ABC; built once per base."""
    module = sglang_storage_module()
    base: type = module.HiCacheStorage if module is not None else HiCacheStorage
    key = f"{base.__module__}.{base.__qualname__}"
    with _build_lock:
        cls = _built.get(key)
        if cls is None:
            cls = type(CLASS_NAME, (_BridgeMethods, base), {
                "__module__": __name__,
                "__qualname__": CLASS_NAME,
                "__doc__": "A hicache backend (extra-config key hicache_backend) as an SGLang storage "
                           "backend; see hicache_core.compat.sglang_bridge.",
            })
            _built[key] = cls
    return cls


def __getattr__(name: str) -> Any:
    if name == CLASS_NAME:
        return bridge_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
