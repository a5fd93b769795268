"""hicache-core: the L3 tier of LLM KV caches as a plugin ecosystem.

The public API: the storage contract (``HiCacheStorage`` and friends), the host pool, and
backend discovery and creation.
"""

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
