"""The storage contract: what every L3 backend implements and what callers may rely on."""

from hicache_core.spec.capabilities import Capabilities
from hicache_core.spec.config import HiCacheStorageConfig, HiCacheStorageExtraInfo
from hicache_core.spec.errors import (
    BackendConfigError,
    BackendLoadError,
    BackendNotFoundError,
    ContractVersionError,
    HiCacheError,
    LayoutError,
)
from hicache_core.spec.storage import HiCacheStorage

__all__ = [
    "BackendConfigError",
    "BackendLoadError",
    "BackendNotFoundError",
    "Capabilities",
    "ContractVersionError",
    "HiCacheError",
    "HiCacheStorage",
    "HiCacheStorageConfig",
    "HiCacheStorageExtraInfo",
    "LayoutError",
]
