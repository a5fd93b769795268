"""The storage contract: what every L3 backend implements and what callers may rely on."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hicache_core.lazy import lazy_exports

if TYPE_CHECKING:
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

#: Public names and the modules that define them, imported on first use (PEP 562), so that
#: importing the package (the ``hicache`` CLI, plugin modules) does not import torch.
_EXPORTS: dict[str, str] = {
    "Capabilities": "hicache_core.spec.capabilities",
    "HiCacheStorageConfig": "hicache_core.spec.config",
    "HiCacheStorageExtraInfo": "hicache_core.spec.config",
    "BackendConfigError": "hicache_core.spec.errors",
    "BackendLoadError": "hicache_core.spec.errors",
    "BackendNotFoundError": "hicache_core.spec.errors",
    "ContractVersionError": "hicache_core.spec.errors",
    "HiCacheError": "hicache_core.spec.errors",
    "LayoutError": "hicache_core.spec.errors",
    "HiCacheStorage": "hicache_core.spec.storage",
}

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



__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
