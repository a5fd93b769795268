"""``ExampleStore``: pages as BLOB rows of one sqlite3 database file.

It uses only hicache's public API (``from hicache_core import ...``): implement ``get``,
``set`` and ``exists``, declare ``capabilities``, and the core's generic path serves the
batch and zero-copy v1 calls. Rows are keyed by ``self.page_key(key)``: the page hash in the
registered pool's namespace (model, page format, shard; key schema ``hc1``), so a page written
from an incompatible pool is a miss. Extra-config key: ``db_path`` (default
``/tmp/hicache-example.sqlite3``; ``:memory:`` for a store that ends with the process).
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import torch

from hicache_core import Capabilities, HiCacheStorage, HiCacheStorageConfig

DEFAULT_DB_PATH = "/tmp/hicache-example.sqlite3"


class ExampleStore(HiCacheStorage):
    """A persistent page store on sqlite3; rows are keyed in the pool's namespace."""

    contract_version = "1.0"
    capabilities = Capabilities(delete=True, clear=True, persistent=True, mla=True)

    def __init__(self, config: HiCacheStorageConfig | None = None) -> None:
        super().__init__(config)
        self.db_path = str(self.config.extra().get("db_path") or DEFAULT_DB_PATH)
        self._lock = threading.Lock()  # one connection shared by every thread, used in turn
        self._db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS pages (key TEXT PRIMARY KEY, data BLOB NOT NULL)")
        self._hits = self._misses = 0

    def get(self, key: str, target_location: Any | None = None, target_sizes: Any | None = None) -> torch.Tensor | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM pages WHERE key = ?", (self.page_key(key),)).fetchone()
            if row is None:
                self._misses += 1
                return None
            self._hits += 1
        page = torch.frombuffer(bytearray(row[0]), dtype=torch.uint8)
        if isinstance(target_location, torch.Tensor):
            dest = target_location.view(-1).view(torch.uint8)
            if dest.numel() != page.numel():
                return None
            dest.copy_(page)
            return target_location
        return page

    def set(self, key: str, value: Any | None = None, target_location: Any | None = None, target_sizes: Any | None = None) -> bool:
        if not isinstance(value, torch.Tensor):
            return False
        data = value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO pages (key, data) VALUES (?, ?)", (self.page_key(key), data))
        return True

    def exists(self, key: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM pages WHERE key = ?", (self.page_key(key),)).fetchone()
        return row is not None

    def delete(self, key: str) -> bool:
        with self._lock:
            self._db.execute("DELETE FROM pages WHERE key = ?", (self.page_key(key),))
        return True

    def clear(self) -> None:
        """Remove this namespace's pages (other models, ranks and pool formats in the file stay)."""
        tail = self.page_key("")  # "@{namespace}": every key of this namespace ends with it
        with self._lock:
            # An exact, case-sensitive match of the tail (LIKE would fold ASCII case).
            self._db.execute("DELETE FROM pages WHERE substr(key, -?) = ?", (len(tail), tail))

    def get_stats(self) -> dict[str, Any]:
        with self._lock:
            (pages,) = self._db.execute("SELECT COUNT(*) FROM pages").fetchone()
            return {"hits": self._hits, "misses": self._misses, "pages": pages, "db_path": self.db_path}

    def close(self) -> None:
        with self._lock:
            self._db.close()
