# ruff: noqa: UP006, UP035, UP045  (typing.List/Optional, as SGLang's sources write them)
"""A backend that leans on SGLang's ``HiCacheStorage`` base class (sglang 0.5.x), for SGLang.

It imports SGLang's base, config and extra-info classes, sets its attributes and then calls
``super().__init__()`` with no arguments, and implements only what SGLang's base leaves
abstract. Everything else is the base class's: ``batch_exists`` (leading hits through
``exists``) and ``batch_get_v1``/``batch_set_v1``, which in SGLang's base return None. Its
``batch_get`` answers with the count of leading pages read into the targets (an int), as
some SGLang backends do. Pages are files under ``extra_config["path"]``, written to a temp
name and renamed, so a page is whole or absent.
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any, List, Optional

import torch
from sglang.srt.mem_cache.hicache_storage import (
    HiCacheStorage,
    HiCacheStorageConfig,
    HiCacheStorageExtraInfo,
)


class BaseReliantStore(HiCacheStorage):
    def __init__(self, storage_config: HiCacheStorageConfig, kwargs: Optional[dict] = None):
        extra = storage_config.extra_config or {}
        if "path" not in extra:
            raise ValueError("BaseReliantStore needs 'path' in the extra config")
        self.storage_config = storage_config
        self.root = os.path.join(extra["path"], storage_config.model_name or "default")
        os.makedirs(self.root, exist_ok=True)
        self.rank_tag = "mla" if storage_config.is_mla_model else f"{storage_config.tp_rank}of{storage_config.tp_size}"
        self.lock = threading.Lock()
        self.counts = {"gets": 0, "sets": 0, "misses": 0}
        self.last_extra_info: Optional[HiCacheStorageExtraInfo] = None
        super().__init__()

    def _file(self, key: str) -> str:
        return os.path.join(self.root, f"{key}.{self.rank_tag}")

    def _count(self, name: str) -> None:
        with self.lock:
            self.counts[name] += 1

    def get(self, key: str, target_location: Any = None, target_sizes: Any = None) -> Optional[torch.Tensor]:
        try:
            with open(self._file(key), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            self._count("misses")
            return None
        self._count("gets")
        page = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if target_location is None:
            return page
        dst = target_location.view(-1).view(torch.uint8)
        if dst.numel() != page.numel():
            return None
        dst.copy_(page)
        return target_location

    def batch_get(self, keys: List[str], target_locations: Any = None, target_sizes: Any = None) -> int:
        """Reads into ``target_locations``; answers how many leading pages were read."""
        for i, key in enumerate(keys):
            if self.get(key, target_locations[i] if target_locations is not None else None) is None:
                return i
        return len(keys)

    def set(self, key: str, value: Any = None, target_location: Any = None, target_sizes: Any = None) -> bool:
        if value is None:
            return False
        tmp = os.path.join(self.root, f".{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as f:
            f.write(value.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        os.replace(tmp, self._file(key))
        self._count("sets")
        return True

    def batch_set(self, keys: List[str], values: Any = None, target_locations: Any = None,
                  target_sizes: Any = None) -> bool:
        return all([self.set(k, v) for k, v in zip(keys, values)])

    def exists(self, key: str) -> bool:
        return os.path.exists(self._file(key))

    def get_stats(self) -> dict:
        with self.lock:
            return dict(self.counts)
