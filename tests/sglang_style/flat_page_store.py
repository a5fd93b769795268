# ruff: noqa: UP006, UP035, UP045  (typing.List/Optional, as SGLang's sources write them)
"""A zero-copy-API backend built on the host pool's flat-page methods, in SQLite, for SGLang.

In the manner of SGLang's HF3FS and AIBrix backends: typed against SGLang's ``HostKVCache``,
it implements ``batch_get_v1``/``batch_set_v1`` with ``mem_pool_host.get_data_page(index,
flat=True)``, ``get_dummy_flat_data_page()`` and ``set_from_flat_data_page(index, page)``,
taking each page's first token index from ``host_indices``. It tells MLA pools from MHA ones
with ``isinstance(pool, MLATokenToKVPoolHost)``; MLA pages are written by TP rank 0 only.
It reads ``extra_info.prefix_keys`` without a None check, as SGLang always passes the object.
Pages live in one SQLite database (``extra_config["db_path"]``), shared by processes.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any, List, Optional

import torch
from sglang.srt.mem_cache.hicache_storage import (
    HiCacheStorage,
    HiCacheStorageConfig,
    HiCacheStorageExtraInfo,
)
from sglang.srt.mem_cache.memory_pool_host import HostKVCache, MLATokenToKVPoolHost


class FlatPageStore(HiCacheStorage):
    def __init__(self, storage_config: HiCacheStorageConfig, kwargs: Optional[dict] = None):
        super().__init__()
        extra = storage_config.extra_config or {}
        if "db_path" not in extra:
            raise ValueError("FlatPageStore needs 'db_path' in the extra config")
        model = (storage_config.model_name or "").replace("/", "-")
        if storage_config.is_mla_model:
            self.suffix = f"_{model}"
        else:
            self.suffix = f"_{model}_{storage_config.tp_rank}_{storage_config.tp_size}"
        self.is_writer = not storage_config.is_mla_model or storage_config.tp_rank == 0
        self.lock = threading.Lock()
        self.db = sqlite3.connect(extra["db_path"], timeout=30, check_same_thread=False)
        with self.lock:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS pages (key TEXT PRIMARY KEY, data BLOB NOT NULL)")
            self.db.commit()
        self.mem_pool_host: Optional[HostKVCache] = None
        self.prefix_keys_seen = 0
        self.is_mla_pool = False

    def register_mem_pool_host(self, mem_pool_host: HostKVCache) -> None:
        super().register_mem_pool_host(mem_pool_host)
        self.is_mla_pool = isinstance(mem_pool_host, MLATokenToKVPoolHost)
        self.page_nbytes = mem_pool_host.get_dummy_flat_data_page().numel() * mem_pool_host.dtype.itemsize

    # -- storage ---------------------------------------------------------------------------
    def _fetch(self, keys: List[str]) -> dict:
        names = [k + self.suffix for k in keys]
        with self.lock:
            rows = self.db.execute(
                f"SELECT key, data FROM pages WHERE key IN ({','.join('?' * len(names))})", names
            ).fetchall()
        return dict(rows)

    def _store(self, rows: List[tuple]) -> bool:
        if not self.is_writer:
            return True
        with self.lock:
            self.db.executemany("INSERT OR IGNORE INTO pages (key, data) VALUES (?, ?)",
                                [(k + self.suffix, d) for k, d in rows])
            self.db.commit()
        return True

    # -- v1 through flat pages ------------------------------------------------------------
    def batch_set_v1(self, keys: List[str], host_indices: torch.Tensor,
                     extra_info: Optional[HiCacheStorageExtraInfo] = None) -> List[bool]:
        # SGLang always passes an extra_info object; this backend relies on that.
        self.prefix_keys_seen += len(extra_info.prefix_keys or [])
        page_size = self.mem_pool_host.page_size
        rows = []
        for i, key in enumerate(keys):
            page = self.mem_pool_host.get_data_page(host_indices[i * page_size], flat=True)
            rows.append((key, page.contiguous().view(torch.uint8).numpy().tobytes()))
        ok = self._store(rows)
        return [ok] * len(keys)

    def batch_get_v1(self, keys: List[str], host_indices: torch.Tensor,
                     extra_info: Optional[HiCacheStorageExtraInfo] = None) -> List[bool]:
        page_size = self.mem_pool_host.page_size
        found = self._fetch(keys)
        results = []
        for i, key in enumerate(keys):
            data = found.get(key + self.suffix)
            if data is None or len(data) != self.page_nbytes:
                results.append(False)
                continue
            page = self.mem_pool_host.get_dummy_flat_data_page()
            page.view(torch.uint8).copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
            self.mem_pool_host.set_from_flat_data_page(host_indices[i * page_size], page)
            results.append(True)
        return results

    def batch_exists(self, keys: List[str], extra_info: Optional[HiCacheStorageExtraInfo] = None) -> int:
        found = self._fetch(keys)
        for i, key in enumerate(keys):
            if key + self.suffix not in found:
                return i
        return len(keys)

    # -- the legacy single-page methods SGLang's base declares abstract -------------------
    def get(self, key: str, target_location: Any = None, target_sizes: Any = None) -> Optional[torch.Tensor]:
        data = self._fetch([key]).get(key + self.suffix)
        if data is None:
            return None
        page = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if target_location is None:
            return page
        target_location.view(-1).view(torch.uint8).copy_(page)
        return target_location

    def batch_get(self, keys: List[str], target_locations: Any = None, target_sizes: Any = None) -> List[Any]:
        locs = target_locations or [None] * len(keys)
        return [self.get(k, t) for k, t in zip(keys, locs)]

    def set(self, key: str, value: Any = None, target_location: Any = None, target_sizes: Any = None) -> bool:
        return self.batch_set([key], [value])

    def batch_set(self, keys: List[str], values: Any = None, target_locations: Any = None,
                  target_sizes: Any = None) -> bool:
        return self._store([(k, v.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
                            for k, v in zip(keys, values)])

    def exists(self, key: str) -> bool:
        return bool(self._fetch([key]))

    def delete(self, key: str) -> None:
        with self.lock:
            self.db.execute("DELETE FROM pages WHERE key = ?", (key + self.suffix,))
            self.db.commit()

    def clear(self) -> None:
        with self.lock:
            self.db.execute("DELETE FROM pages")
            self.db.commit()

    def close(self) -> None:
        with self.lock:
            self.db.close()
