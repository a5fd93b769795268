"""What every storage scheme of the file backend shares: the public API on top of four hooks.

A scheme (``pagefile``, ``sglang``) decides where a page lies and what surrounds its bytes; it
implements ``_read_pages``, ``_write_pages``, ``_exists`` and ``_stored_length`` (plus
``delete``/``clear``/``health_check``). Everything else is here, once: the zero-copy v1 calls,
the flat-tensor ``get``/``set`` paths, the v2 pool transfers with sidecar pools, batching over
I/O threads, and statistics. Every path hands the scheme the same bytes for a page: the
pieces of ``hicache_core.memory.pages`` in stored-byte order (a flat tensor is those pieces
joined), so a key holds the same bytes whichever path wrote it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, TypeVar

import torch

from hicache_core.spec.config import HiCacheStorageExtraInfo
from hicache_core.spec.errors import BackendConfigError
from hicache_core.spec.pools import (
    PoolTransfer,
    PoolTransferResult,
    pool_name,
    transfer_indices,
    usable_prefix,
)
from hicache_core.spec.storage import HiCacheStorage
from hicache_file.config import FileStoreSettings
from hicache_file.fileio import bytes_view, tensor_bytes_view
from hicache_file.plugin import CAPABILITIES
from hicache_file.poolpages import PoolPages
from hicache_file.store import FileStore

log = logging.getLogger("hicache_file.store")

#: Batches of smaller pages run on the calling thread: per page, the Python work between the
#: system calls outweighs the copy, and threads then only contend for the GIL (measured with
#: bench/bench_file.py: 64 KiB pages lose ~20% with two threads, 1 MiB pages gain ~40%).
PARALLEL_MIN_PAGE_BYTES = 256 << 10

#: The statistics every scheme reports, 0 when nothing happened.
STAT_NAMES = (
    "hits", "misses", "corrupt", "wrong_size", "format_mismatch", "writes", "write_errors", "evictions",
)

KV = "kv"
T = TypeVar("T")
R = TypeVar("R")
Item = tuple[str, list[Any]]


class FileSchemeBase(FileStore):
    """The file backend's public API; subclasses are the storage schemes."""

    contract_version = "1.0"
    capabilities = CAPABILITIES
    scheme: ClassVar[str] = ""

    def __init__(self, config: Any | None = None, *args: Any, **kwargs: Any) -> None:
        HiCacheStorage.__init__(self, config)
        self.settings = FileStoreSettings.from_extra(self.config.extra())
        self.root = self.settings.path
        self.is_writer = self.config.is_storage_writer
        self._lock = threading.Lock()
        self._stats: Counter[str] = Counter()
        self._executor: ThreadPoolExecutor | None = None
        self._pools: dict[str, PoolPages] = {}
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise BackendConfigError(
                f"file backend: cannot create the page directory {self.root!r} ('path'): {exc}; "
                "set 'path' (or HICACHE_FILE_PATH) to a writable directory"
            ) from exc

    # ------------------------------------------------------------------ scheme hooks
    def _read_pages(self, items: list[Item], expected: int, pool: str) -> list[bool]:
        """Read each ``(key, views)`` page of ``expected`` bytes into its views; counts stats."""
        raise NotImplementedError

    def _write_pages(self, items: list[Item], pool: str) -> list[bool]:
        """Store each ``(key, pieces)`` page (pieces joined are the page); counts stats."""
        raise NotImplementedError

    def _exists(self, key: str, expected: int | None, pool: str) -> bool:
        """Whether a whole page of ``expected`` bytes (any size when None) is stored under ``key``."""
        raise NotImplementedError

    def _stored_length(self, key: str) -> int | None:
        """The page bytes stored under ``key`` (no pool to tell the size), None when absent."""
        raise NotImplementedError

    def _sidecar_keys(self, pool: str, keys: Sequence[str]) -> list[str]:
        """The keys a v2 sidecar pool's pages are stored under, beside the KV pages of ``keys``."""
        raise NotImplementedError

    def _pool_changed(self) -> None:
        """Called when the KV pool (and so the namespace) is registered."""

    # ------------------------------------------------------------------ pools
    def register_mem_pool_host(self, mem_pool_host: Any) -> None:
        super().register_mem_pool_host(mem_pool_host)
        self._pools[KV] = PoolPages(mem_pool_host)
        self._pool_changed()

    def register_mem_host_pool_v2(self, host_pool: Any, host_pool_name: Any) -> None:
        name = pool_name(host_pool_name)
        if name == KV:
            self.register_mem_pool_host(host_pool)
            return
        super().register_mem_host_pool_v2(host_pool, host_pool_name)
        self._pools[name] = PoolPages(host_pool)

    def _sidecar(self, name: str) -> PoolPages:
        pages = self._pools.get(name)
        if pages is None:
            pages = self._pools[name] = PoolPages(self._v2_pool(name))  # the core's clear error
        return pages

    def _kv_bytes(self) -> int | None:
        pages = self._pools.get(KV)
        return pages.page_bytes if pages is not None else None

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    def get_stats(self) -> dict[str, Any]:
        with self._lock:
            stats: dict[str, Any] = dict(self._stats)
        for name in STAT_NAMES:
            stats.setdefault(name, 0)
        stats["scheme"] = self.scheme
        stats.update(self._more_stats())
        return stats

    def _more_stats(self) -> dict[str, Any]:
        return {}

    def _merge(self, stats: Counter[str]) -> None:
        with self._lock:
            self._stats.update(stats)

    # ------------------------------------------------------------------ batching
    def _map_batch(self, fn: Callable[[list[T]], list[R]], items: list[T], page_bytes: int) -> list[R]:
        """Run ``fn`` over contiguous chunks of ``items`` on ``io_threads`` threads, in order."""
        threads = min(self.settings.io_threads, len(items))
        if threads <= 1 or page_bytes < PARALLEL_MIN_PAGE_BYTES:
            return fn(items)
        step = -(-len(items) // threads)
        chunks = [items[i : i + step] for i in range(0, len(items), step)]
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self.settings.io_threads - 1, thread_name_prefix="hicache-file"
                )
            executor = self._executor
        futures = [executor.submit(fn, c) for c in chunks[1:]]
        out = fn(chunks[0])
        for f in futures:
            out.extend(f.result())
        return out

    def _read_batch(self, items: list[Item], pages: PoolPages | None, expected: int, pool: str) -> list[bool]:
        nbytes = pages.page_bytes if pages is not None else expected
        return self._map_batch(lambda chunk: self._read_pages(chunk, expected, pool), items, nbytes)

    def _write_batch(self, items: list[Item], page_bytes: int, pool: str) -> list[bool]:
        return self._map_batch(lambda chunk: self._write_pages(chunk, pool), items, page_bytes)

    # ------------------------------------------------------------------ zero-copy v1
    def batch_get_v1(
        self, keys: list[str], host_indices: torch.Tensor, extra_info: HiCacheStorageExtraInfo | None = None
    ) -> list[bool]:
        """Read each page straight into the host pool; one bool per key (False: miss or bad page).

        A page reported False may have had its destination slot overwritten by a rejected
        read; such slots hold no meaning.
        """
        self._pool_for_v1(keys, host_indices)
        if not keys:
            return []
        pp = self._pools[KV]
        items = [(k, pp.views(p)) for k, p in zip(keys, pp.pages(host_indices))]
        return self._read_batch(items, pp, pp.page_bytes, KV)

    def batch_set_v1(
        self, keys: list[str], host_indices: torch.Tensor, extra_info: HiCacheStorageExtraInfo | None = None
    ) -> list[bool]:
        """Write each host-pool page straight from its memory; one bool per key."""
        self._pool_for_v1(keys, host_indices)
        if not keys:
            return []
        pp = self._pools[KV]
        items = [(k, pp.views(p)) for k, p in zip(keys, pp.pages(host_indices))]
        return self._write_batch(items, pp.page_bytes, KV)

    # ------------------------------------------------------------------ flat tensors
    def get(self, key: str, target_location: Any | None = None, target_sizes: Any | None = None) -> torch.Tensor | None:
        """The page under ``key`` (read into ``target_location`` when that is a tensor)."""
        target = target_location if isinstance(target_location, torch.Tensor) else None
        if target is not None and (target.device.type != "cpu" or not target.is_contiguous()):
            staged = self.get(key)
            if staged is None or staged.numel() * staged.element_size() != target.numel() * target.element_size():
                return None
            target.view(-1).view(torch.uint8).copy_(staged.view(-1).view(torch.uint8))
            return target
        if target is None:
            expected = self._kv_bytes()
            if expected is None:
                expected = self._stored_length(key)
                if expected is None:
                    self._merge(Counter(misses=1))
                    return None
            pool = self.mem_pool_host
            itemsize = pool.kv_buffer.element_size() if pool is not None else 1
            dtype = pool.kv_buffer.dtype if pool is not None and expected % itemsize == 0 else torch.uint8
            target = torch.empty(expected // dtype.itemsize, dtype=dtype)
        raw = target.view(-1).view(torch.uint8)
        ok = self._read_pages([(key, [bytes_view(raw)])], raw.numel(), KV)[0]
        return target if ok else None

    def batch_get(
        self, keys: list[str], target_locations: Any | None = None, target_sizes: Any | None = None
    ) -> list[torch.Tensor | None]:
        locs = list(target_locations) if target_locations is not None else [None] * len(keys)
        return [self.get(k, loc) for k, loc in zip(keys, locs)]

    def set(self, key: str, value: Any | None = None, target_location: Any | None = None, target_sizes: Any | None = None) -> bool:
        return self.batch_set([key], [value])

    def batch_set(
        self, keys: list[str], values: Any | None = None, target_locations: Any | None = None, target_sizes: Any | None = None
    ) -> bool:
        """Store each flat page tensor; True only when every page is stored."""
        if values is None:
            return False
        items: list[Item] = []
        for key, value in zip(keys, values):
            if not isinstance(value, torch.Tensor):
                return False
            items.append((key, [tensor_bytes_view(value)]))
        if len(items) != len(keys):
            return False
        page_bytes = max((memoryview(i[1][0]).nbytes for i in items), default=0)
        return all(self._write_batch(items, page_bytes, KV))

    def exists(self, key: str) -> bool:
        """True when a page file of the right size is there (the data is not read)."""
        return self._exists(key, self._kv_bytes(), KV)

    def exists_many(self, keys: list[str], extra_info: HiCacheStorageExtraInfo | None = None) -> list[bool]:
        expected = self._kv_bytes()
        return [self._exists(k, expected, KV) for k in keys]

    def batch_exists(self, keys: list[str], extra_info: HiCacheStorageExtraInfo | None = None) -> int:
        expected = self._kv_bytes()
        for i, key in enumerate(keys):
            if not self._exists(key, expected, KV):
                return i
        return len(keys)

    # ------------------------------------------------------------------ v2 pool transfers
    def batch_exists_v2(
        self, keys: list[str], pool_transfers: list[PoolTransfer] | None = None,
        extra_info: HiCacheStorageExtraInfo | None = None,
    ) -> PoolTransferResult:
        """The usable prefix of ``keys`` given the KV pages and each sidecar pool's pages."""
        keys = list(keys)

        def present(name: str, n: int) -> list[bool]:
            pp = self._sidecar(name)
            return [self._exists(k, pp.page_bytes, name) for k in self._sidecar_keys(name, keys[:n])]

        return usable_prefix(self.batch_exists(keys, extra_info), pool_transfers or [], present)

    def batch_get_v2(
        self, transfers: list[PoolTransfer], extra_info: HiCacheStorageExtraInfo | None = None
    ) -> dict[str, list[bool]]:
        """Read each transfer's pages straight into its pool; one bool per key, per pool name."""
        results: dict[str, list[bool]] = {}
        for t in transfers:
            name, keys = pool_name(t.name), list(t.keys or [])
            if name == KV:
                results[name] = self.batch_get_v1(keys, transfer_indices(t.host_indices), extra_info)
                continue
            pp = self._sidecar(name)
            items = list(zip(self._sidecar_keys(name, keys), [pp.views(p) for p in _pages(pp, keys, t.host_indices)]))
            results[name] = self._read_batch(items, pp, pp.page_bytes, name)
        return results

    def batch_set_v2(
        self, transfers: list[PoolTransfer], extra_info: HiCacheStorageExtraInfo | None = None
    ) -> dict[str, list[bool]]:
        """Write each transfer's pool pages straight from memory; one bool per key, per pool name."""
        results: dict[str, list[bool]] = {}
        for t in transfers:
            name, keys = pool_name(t.name), list(t.keys or [])
            if name == KV:
                results[name] = self.batch_set_v1(keys, transfer_indices(t.host_indices), extra_info)
                continue
            pp = self._sidecar(name)
            items = list(zip(self._sidecar_keys(name, keys), [pp.views(p) for p in _pages(pp, keys, t.host_indices)]))
            results[name] = self._write_batch(items, pp.page_bytes, name)
        return results


def _pages(pp: PoolPages, keys: Sequence[str], host_indices: Any) -> list[int]:
    n = 0 if host_indices is None else len(host_indices)
    if n != len(keys) * pp.page_size:
        raise ValueError(
            f"{len(keys)} keys need {len(keys) * pp.page_size} host indices (page_size {pp.page_size}), got {n}"
        )
    return pp.pages(host_indices) if keys else []
