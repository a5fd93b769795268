"""SGLang's storage-facing API, built on hicache's own classes.

What the import shim (``hicache_core.compat.sglang_shim``) serves as
``sglang.srt.mem_cache.hicache_storage`` and ``sglang.srt.mem_cache.memory_pool_host`` when
the real sglang is not installed, so that a backend module written for sglang 0.5.x imports
and runs unchanged.

- ``HiCacheStorage`` subclasses hicache's ABC (everything hicache does with a backend keeps
  working) and keeps SGLang's base behaviour where a backend could notice: no constructor
  arguments required, the default ``batch_exists`` counting leading hits through ``exists``,
  and ``batch_get_v1``/``batch_set_v1`` that return None. That last one is SGLang's wart; the
  factory wraps every subclass of this class in ``DuckTypedBackend``, which catches the None
  and serves the call through the generic path, so callers never see it.
- ``HiCacheStorageConfig``, ``HiCacheStorageExtraInfo`` and ``get_hash_str`` are hicache's
  own (same field names and order, same hashes).
- ``HostKVCache`` is ``HostKVPool``; ``MHATokenToKVPoolHost`` / ``MLATokenToKVPoolHost`` are
  subclasses whose ``isinstance`` tells MHA pools from MLA ones, as backends use them.
"""

from __future__ import annotations

from typing import Any

import torch

from hicache_core.keys import get_hash_str
from hicache_core.memory.host_pool import HostKVPool
from hicache_core.spec.config import HiCacheStorageConfig, HiCacheStorageExtraInfo
from hicache_core.spec.storage import HiCacheStorage as _HiCacheStorageABC

#: The modules the shim provides, and the names each one exports.
HICACHE_STORAGE_NAMES: tuple[str, ...] = (
    "HiCacheStorage", "HiCacheStorageConfig", "HiCacheStorageExtraInfo", "get_hash_str",
    "hash_str_to_int64", "STORAGE_BATCH_SIZE",
)

#: Pages per batched storage call, as SGLang's controller issues them.
STORAGE_BATCH_SIZE = 128


def hash_str_to_int64(hash_str: str) -> int:
    """A page hash as a signed 64-bit integer (its first 16 hex digits), as SGLang's events use."""
    value = int(hash_str[:16], 16)
    return value - (1 << 64) if value >= (1 << 63) else value
MEMORY_POOL_HOST_NAMES: tuple[str, ...] = ("HostKVCache", "MHATokenToKVPoolHost", "MLATokenToKVPoolHost")


class HiCacheStorage(_HiCacheStorageABC):
    """SGLang's ``HiCacheStorage`` base class (sglang 0.5.x behaviour) on hicache's ABC."""

    #: Marks SGLang-shaped classes for the factory (always wrapped, see the module docstring).
    _hicache_sglang_base: bool = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # SGLang's base has no constructor: subclasses call ``super().__init__()`` with no
        # arguments, often after setting their own attributes, which must survive.
        if "config" not in self.__dict__:
            first = args[0] if args else kwargs.get("storage_config")
            self.config = first if isinstance(first, HiCacheStorageConfig) else HiCacheStorageConfig()
        if "mem_pool_host" not in self.__dict__:
            self.mem_pool_host = None

    def batch_get_v1(  # type: ignore[override]
        self,
        keys: list[str],
        host_indices: torch.Tensor,
        extra_info: HiCacheStorageExtraInfo | None = None,
    ) -> list[bool] | None:
        """SGLang's base returns None here; hicache's adapter turns that into a fallback."""
        return None

    def batch_set_v1(  # type: ignore[override]
        self,
        keys: list[str],
        host_indices: torch.Tensor,
        extra_info: HiCacheStorageExtraInfo | None = None,
    ) -> list[bool] | None:
        """SGLang's base returns None here; hicache's adapter turns that into a fallback."""
        return None


def is_sglang_shaped(cls: type) -> bool:
    """True for subclasses of the shim's SGLang base (they are always served through the adapter)."""
    return bool(getattr(cls, "_hicache_sglang_base", False))


HostKVCache = HostKVPool


class _PoolKindMeta(type):
    """``isinstance(pool, MHATokenToKVPoolHost)`` asks the pool's kind, not its class."""

    _want_mla: bool

    def __instancecheck__(cls, instance: Any) -> bool:
        return isinstance(instance, HostKVPool) and bool(instance.is_mla) is cls._want_mla


class MHATokenToKVPoolHost(HostKVPool, metaclass=_PoolKindMeta):
    """An MHA host pool (K and V per token); built like ``HostKVPool`` with ``is_mla=False``."""

    _want_mla = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["is_mla"] = False
        super().__init__(*args, **kwargs)


class MLATokenToKVPoolHost(HostKVPool, metaclass=_PoolKindMeta):
    """An MLA host pool (one latent per token); built like ``HostKVPool`` with ``is_mla=True``."""

    _want_mla = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["is_mla"] = True
        super().__init__(*args, **kwargs)


__all__ = [
    "HICACHE_STORAGE_NAMES",
    "MEMORY_POOL_HOST_NAMES",
    "HiCacheStorage",
    "HiCacheStorageConfig",
    "HiCacheStorageExtraInfo",
    "HostKVCache",
    "MHATokenToKVPoolHost",
    "MLATokenToKVPoolHost",
    "STORAGE_BATCH_SIZE",
    "get_hash_str",
    "hash_str_to_int64",
    "is_sglang_shaped",
]
