"""hicache-core: the L3 tier of LLM KV caches as a plugin ecosystem.

The public API: the storage contract (``HiCacheStorage`` and friends), the host pool, and
backend discovery and creation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hicache_core.lazy import lazy_exports

if TYPE_CHECKING:
    from hicache_core.memory.host_pool import HostKVPool
    from hicache_core.plugins.factory import create_backend
    from hicache_core.plugins.registry import BackendRegistry, default_registry
    from hicache_core.plugins.spec import BackendSpec, ConfigOption
    from hicache_core.spec import (
        BackendConfigError,
        BackendLoadError,
        BackendNotFoundError,
        Capabilities,
        ContractVersionError,
        HiCacheError,
        HiCacheStorage,
        HiCacheStorageConfig,
        HiCacheStorageExtraInfo,
        LayoutError,
    )
    from hicache_core.version import CONTRACT_VERSION, __version__

#: Public names and the modules that define them, imported on first use (PEP 562), so that
#: importing the package (the ``hicache`` CLI, plugin modules) does not import torch.
_EXPORTS: dict[str, str] = {
    "HostKVPool": "hicache_core.memory.host_pool",
    "create_backend": "hicache_core.plugins.factory",
    "BackendRegistry": "hicache_core.plugins.registry",
    "default_registry": "hicache_core.plugins.registry",
    "BackendSpec": "hicache_core.plugins.spec",
    "ConfigOption": "hicache_core.plugins.spec",
    "BackendConfigError": "hicache_core.spec",
    "BackendLoadError": "hicache_core.spec",
    "BackendNotFoundError": "hicache_core.spec",
    "Capabilities": "hicache_core.spec",
    "ContractVersionError": "hicache_core.spec",
    "HiCacheError": "hicache_core.spec",
    "HiCacheStorage": "hicache_core.spec",
    "HiCacheStorageConfig": "hicache_core.spec",
    "HiCacheStorageExtraInfo": "hicache_core.spec",
    "LayoutError": "hicache_core.spec",
    "CONTRACT_VERSION": "hicache_core.version",
    "__version__": "hicache_core.version",
}

__all__ = [
    "CONTRACT_VERSION",
    "BackendConfigError",
    "BackendLoadError",
    "BackendNotFoundError",
    "BackendRegistry",
    "BackendSpec",
    "Capabilities",
    "ConfigOption",
    "ContractVersionError",
    "HiCacheError",
    "HiCacheStorage",
    "HiCacheStorageConfig",
    "HiCacheStorageExtraInfo",
    "HostKVPool",
    "LayoutError",
    "__version__",
    "create_backend",
    "default_registry",
]



__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
