"""``HiCacheStorage``: the abstract L3 storage backend.

Method names, arguments and return conventions are SGLang's (sglang 0.5.x
``HiCacheStorage``), so a backend moves between SGLang and hicache unchanged. Where SGLang's
base class is silent (its ``batch_*_v1`` return None, disabling L3 without a word), this one
has a working default built on the single-key methods, in the manner of zarr's store ABC:
implement ``get``/``set``/``exists`` and everything else works; override the bulk and
zero-copy methods for speed and declare that in ``capabilities``.

Keys are strings (hex page hashes, usually with a model/rank suffix); a page is the KV of
``page_size`` tokens as the host pool lays it out.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from hicache_core.spec.capabilities import Capabilities
from hicache_core.spec.config import HiCacheStorageConfig, HiCacheStorageExtraInfo
from hicache_core.spec.errors import HiCacheError
from hicache_core.spec.pools import (
    PoolTransfer,
    PoolTransferResult,
    pool_name,
    transfer_indices,
    usable_prefix,
)

if TYPE_CHECKING:
    from hicache_core.memory.host_pool import HostKVPool


class HiCacheStorage(ABC):
    """An L3 KV-cache store.

    Subclasses implement ``get``, ``set`` and ``exists``; they set the class attributes
    ``contract_version`` (the storage-contract version they were written for) and
    ``capabilities``. Constructors take the ``HiCacheStorageConfig`` (backend keys in
    ``config.extra_config``); SGLang's ``(storage_config, kwargs)`` form is accepted too.

    Return conventions, for every method: a miss or a failure is a value (None, False, a
    False entry), never an exception, on the I/O paths. Exceptions are for programming errors
    (a key list and index list of different lengths, no host pool registered).
    """

    contract_version: ClassVar[str] = "1.0"
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, config: HiCacheStorageConfig | None = None, *args: Any, **kwargs: Any) -> None:
        self.config = HiCacheStorageConfig.from_any(config)
        self.mem_pool_host: HostKVPool | None = None

    # ------------------------------------------------------------------ lifecycle
    def register_mem_pool_host(self, mem_pool_host: HostKVPool) -> None:
        """Hand the backend the host pool it reads into and writes from.

        Called once, after construction and before any I/O. Backends that need
        page-contiguous memory check ``mem_pool_host.layout`` here and raise ``LayoutError``.
        ``mem_pool_host`` may be hicache's ``HostKVPool`` or an SGLang host pool: read its
        pages through ``hicache_core.memory.pages`` (``page_geometry``, ``page_view``).
        """
        self.mem_pool_host = mem_pool_host

    # ------------------------------------------------------------------ key namespace
    @property
    def namespace(self) -> str:
        """The key namespace of this backend's pages: model, page format and shard.

        ``hicache_core.keys.pool_namespace(config, registered pool)``; before a pool is
        registered, the ``flat`` namespace (which no pool's pages share). Backends store a
        page under ``self.page_key(page_hash)`` so an incompatible pool's page is a miss.
        """
        pool = self.mem_pool_host
        cached = self.__dict__.get("_hicache_namespace")
        if cached is None or cached[0] is not pool:
            from hicache_core.keys import pool_namespace

            cached = (pool, pool_namespace(HiCacheStorageConfig.from_any(self.config), pool))
            self.__dict__["_hicache_namespace"] = cached
        return str(cached[1])

    def page_key(self, page_hash: str) -> str:
        """The key the page ``page_hash`` is stored under (``hicache_core.keys.storage_key``)."""
        from hicache_core.keys import storage_key

        return storage_key(page_hash, self.namespace)

    def close(self) -> None:
        """Release connections, threads and registered memory. Stored pages stay stored."""

    def clear(self) -> None:
        """Remove every page this backend can see. Default: not supported (raises)."""
        raise NotImplementedError(f"{type(self).__name__} does not support clear()")

    def delete(self, key: str) -> bool:
        """Remove one page. Returns True when the page is gone (also when it was absent)."""
        raise NotImplementedError(f"{type(self).__name__} does not support delete()")

    def get_stats(self) -> dict[str, Any] | None:
        """Backend-specific counters for metrics and ``status``; None when there are none."""
        return None

    def health_check(self) -> None:
        """Raise when the backend cannot serve right now; return None when it can.

        Used by the controller to decide when a detached backend may come back. The default
        asks ``exists`` of a key that is never stored, which reaches the store for real.
        """
        self.exists("__hicache_health_probe__")

    # ------------------------------------------------------------------ single-key I/O
    @abstractmethod
    def get(
        self, key: str, target_location: Any | None = None, target_sizes: Any | None = None
    ) -> torch.Tensor | None:
        """The page stored under ``key``, or None on a miss or failure.

        When ``target_location`` is a tensor the page is read into it and that tensor is
        returned.
        """

    @abstractmethod
    def set(
        self,
        key: str,
        value: Any | None = None,
        target_location: Any | None = None,
        target_sizes: Any | None = None,
    ) -> bool:
        """Store ``value`` (a flat page tensor) under ``key``. True when it is stored.

        Storing a key that exists is a success and must leave a whole page (old or new).
        """

    @abstractmethod
    def exists(self, key: str) -> bool:
        """True when a whole page is stored under ``key``."""

    # ------------------------------------------------------------------ bulk I/O (defaults)
    def batch_get(
        self,
        keys: list[str],
        target_locations: Any | None = None,
        target_sizes: Any | None = None,
    ) -> list[torch.Tensor | None]:
        """``get`` for each key; one entry per key, None for a miss."""
        locs = list(target_locations) if target_locations is not None else [None] * len(keys)
        sizes = list(target_sizes) if target_sizes is not None else [None] * len(keys)
        return [self.get(k, loc, sz) for k, loc, sz in zip(keys, locs, sizes)]

    def batch_set(
        self,
        keys: list[str],
        values: Any | None = None,
        target_locations: Any | None = None,
        target_sizes: Any | None = None,
    ) -> bool:
        """``set`` for each key; True only when every page is stored."""
        vals = list(values) if values is not None else [None] * len(keys)
        locs = list(target_locations) if target_locations is not None else [None] * len(keys)
        sizes = list(target_sizes) if target_sizes is not None else [None] * len(keys)
        ok = True
        for k, v, loc, sz in zip(keys, vals, locs, sizes):
            ok = self.set(k, v, loc, sz) and ok
        return ok

    def batch_exists(self, keys: list[str], extra_info: HiCacheStorageExtraInfo | None = None) -> int:
        """How many keys, counted from the first, exist without a gap (SGLang's convention)."""
        for i, key in enumerate(keys):
            if not self.exists(key):
                return i
        return len(keys)

    def exists_many(
        self, keys: list[str], extra_info: HiCacheStorageExtraInfo | None = None
    ) -> list[bool]:
        """Per-key existence, one bool per key (the detail ``batch_exists`` drops)."""
        return [self.exists(k) for k in keys]

    # ------------------------------------------------------------------ zero-copy v1
    def batch_get_v1(
        self,
        keys: list[str],
        host_indices: torch.Tensor,
        extra_info: HiCacheStorageExtraInfo | None = None,
    ) -> list[bool]:
        """Read each key's page into the host-pool page at the matching ``host_indices``.

        ``host_indices`` holds ``len(keys) * page_size`` token indices, page by page. Returns
        one bool per key: True when that page now holds the stored bytes. This default reads
        through ``batch_get`` into a staging page and copies; backends with
        ``capabilities.zero_copy_v1`` override it.
        """
        pool = self._pool_for_v1(keys, host_indices)
        pages = pool.indices_to_pages(host_indices)
        targets = [pool.get_dummy_flat_data_page() for _ in keys]
        values: Any = self.batch_get(list(keys), target_locations=targets)
        if isinstance(values, int) and not isinstance(values, bool):
            # SGLang-style answer: how many leading pages it read into the staging targets.
            values = [t if i < values else None for i, t in enumerate(targets)]
        return _copy_into_pool(pool, pages, values, len(keys))

    def batch_set_v1(
        self,
        keys: list[str],
        host_indices: torch.Tensor,
        extra_info: HiCacheStorageExtraInfo | None = None,
    ) -> list[bool]:
        """Store the host-pool page at each of ``host_indices`` under the matching key.

        Returns one bool per key: True when that page is stored. This default writes through
        ``batch_set`` and, when the batch reports a failure, asks ``exists`` which pages landed
        so the ones that did still count.
        """
        pool = self._pool_for_v1(keys, host_indices)
        pages = pool.indices_to_pages(host_indices)
        values = [pool.get_data_page(p * pool.page_size, flat=True) for p in pages]
        if self.batch_set(list(keys), values=values):
            return [True] * len(keys)
        return self.exists_many(list(keys))

    # ------------------------------------------------------------------ v2 pool transfers
    def register_mem_host_pool_v2(self, host_pool: Any, host_pool_name: Any) -> None:
        """Register a further host pool (a sidecar: Mamba state, SWA, ...) under its name.

        Called after ``register_mem_pool_host`` and before ``on_host_pools_registered``; pools
        added later (dynamic sidecars) arrive through this method alone.
        """
        pools: dict[str, Any] = self.__dict__.setdefault("registered_pools", {})
        pools[pool_name(host_pool_name)] = host_pool

    def on_host_pools_registered(self) -> None:
        """The first registration burst is over (the KV pool and every v2 pool); once per attach.

        Backends that must finalize once the pool set is known do it here; raising fails the
        attach. Default: nothing to do.
        """

    def _v2_pool(self, name: Any) -> Any:
        key = pool_name(name)
        pools: dict[str, Any] = self.__dict__.get("registered_pools", {})
        if key in pools:
            return pools[key]
        if key == "kv" and self.mem_pool_host is not None:
            return self.mem_pool_host
        raise HiCacheError(
            f"{type(self).__name__}: no host pool registered under {key!r} (registered: "
            f"{', '.join(sorted(pools)) or 'none'}); call register_mem_host_pool_v2(pool, {key!r}) first"
        )

    def _sidecar_hashes(self, name: Any, keys: Sequence[str]) -> list[str]:
        from hicache_core.keys import sidecar_page_hash

        pool = self._v2_pool(name)
        config = HiCacheStorageConfig.from_any(self.config)
        return [sidecar_page_hash(k, pool_name(name), pool, config) for k in keys]

    def batch_exists_v2(
        self,
        keys: list[str],
        pool_transfers: list[PoolTransfer] | None = None,
        extra_info: HiCacheStorageExtraInfo | None = None,
    ) -> PoolTransferResult:
        """The usable prefix of ``keys`` given the KV pages and each sidecar pool's pages.

        ``kv_hit_pages`` is the longest prefix every pool can restore under its hit policy
        (``hicache_core.spec.pools``); ``extra_pool_hit_pages`` each pool's own count. This
        default asks ``batch_exists`` for the KV prefix and ``exists_many`` for the sidecars.
        """
        kv_pages = int(self.batch_exists(list(keys), extra_info))
        return usable_prefix(
            kv_pages, pool_transfers or [],
            lambda name, n: self.exists_many(self._sidecar_hashes(name, keys[:n]), extra_info),
        )

    def batch_get_v2(
        self, transfers: list[PoolTransfer], extra_info: HiCacheStorageExtraInfo | None = None
    ) -> dict[str, list[bool]]:
        """Read each transfer's pages into its pool; one bool per key, per pool name.

        The KV pool goes through ``batch_get_v1``; a sidecar pool through ``batch_get`` of its
        pages (``sidecar_page_hash`` keys) into staging pages, then into the pool.
        """
        results: dict[str, list[bool]] = {}
        for t in transfers:
            name, keys = pool_name(t.name), list(t.keys or [])
            if name == "kv":
                results[name] = list(self.batch_get_v1(keys, transfer_indices(t.host_indices), extra_info))
                continue
            pool = self._v2_pool(name)
            pages = self._v2_pages(pool, keys, t.host_indices)
            targets = [pool.get_dummy_flat_data_page() for _ in keys]
            values: Any = self.batch_get(self._sidecar_hashes(name, keys), target_locations=targets)
            results[name] = _copy_into_pool(pool, pages, values, len(keys))
        return results

    def batch_set_v2(
        self, transfers: list[PoolTransfer], extra_info: HiCacheStorageExtraInfo | None = None
    ) -> dict[str, list[bool]]:
        """Store each transfer's pool pages; one bool per key, per pool name."""
        results: dict[str, list[bool]] = {}
        for t in transfers:
            name, keys = pool_name(t.name), list(t.keys or [])
            if name == "kv":
                results[name] = list(self.batch_set_v1(keys, transfer_indices(t.host_indices), extra_info))
                continue
            pool = self._v2_pool(name)
            pages = self._v2_pages(pool, keys, t.host_indices)
            hashes = self._sidecar_hashes(name, keys)
            values = [pool.get_data_page(p * pool.page_size, flat=True).clone() for p in pages]
            if self.batch_set(hashes, values=values):
                results[name] = [True] * len(keys)
            else:
                results[name] = list(self.exists_many(hashes))
        return results

    @staticmethod
    def _v2_pages(pool: Any, keys: Sequence[str], host_indices: Any) -> list[int]:
        n = 0 if host_indices is None else len(host_indices)
        if n != len(keys) * pool.page_size:
            raise ValueError(
                f"{len(keys)} keys need {len(keys) * pool.page_size} host indices "
                f"(page_size {pool.page_size}), got {n}"
            )
        return list(pool.indices_to_pages(host_indices))

    def _pool_for_v1(self, keys: Sequence[str], host_indices: torch.Tensor) -> HostKVPool:
        pool = self.mem_pool_host
        if pool is None:
            raise HiCacheError(
                f"{type(self).__name__}: no host pool registered; call register_mem_pool_host() "
                "before batch_get_v1/batch_set_v1"
            )
        if len(host_indices) != len(keys) * pool.page_size:
            raise ValueError(
                f"{len(keys)} keys need {len(keys) * pool.page_size} host indices "
                f"(page_size {pool.page_size}), got {len(host_indices)}"
            )
        return pool


def _copy_into_pool(pool: Any, pages: list[int], values: Any, count: int) -> list[bool]:
    """Copy staged pages into the pool; one bool per page (``values``: None for misses)."""
    if values is None:
        return [False] * count
    results: list[bool] = []
    for i, page in enumerate(pages):
        value = values[i] if i < len(values) else None
        if not isinstance(value, torch.Tensor) or value.numel() * value.element_size() != pool.page_bytes:
            results.append(False)
            continue
        flat = value.contiguous().view(-1)
        if flat.dtype != pool.dtype:
            flat = flat.view(torch.uint8).view(pool.dtype)
        pool.set_from_flat_data_page(page * pool.page_size, flat)
        results.append(True)
    return results
