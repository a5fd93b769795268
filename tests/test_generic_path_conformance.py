"""The kit against the smallest legal backend: only get/set/exists, everything else generic."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

from hicache_core import Capabilities, HiCacheStorage, HiCacheStorageConfig
from hicache_core.testing import StorageConformanceTests

_STORES: dict[str, dict[str, bytes]] = {}


class DictStore(HiCacheStorage):
    """In-process dict of page bytes, shared by instances of one process through a store name.

    Not ``persistent``: the pages do not outlive the process (the kit's kill -9 check would
    rightly fail it). Keys go through the core's pool namespace (``page_key``).
    """

    capabilities = Capabilities(delete=True, clear=True)

    def __init__(self, config: HiCacheStorageConfig) -> None:
        super().__init__(config)
        self._data = _STORES.setdefault(config.extra().get("store", "default"), {})
        self._lock = threading.Lock()

    def get(self, key: str, target_location: Any = None, target_sizes: Any = None) -> torch.Tensor | None:
        with self._lock:
            raw = self._data.get(self.page_key(key))
        if raw is None:
            return None
        page = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        if isinstance(target_location, torch.Tensor):
            if target_location.numel() * target_location.element_size() != len(raw):
                return None
            target_location.view(-1).view(torch.uint8).copy_(page)
            return target_location
        return page

    def set(self, key: str, value: Any = None, target_location: Any = None, target_sizes: Any = None) -> bool:
        if not isinstance(value, torch.Tensor):
            return False
        data = bytes(value.contiguous().view(-1).view(torch.uint8).numpy())
        with self._lock:
            self._data[self.page_key(key)] = data
        return True

    def exists(self, key: str) -> bool:
        with self._lock:
            return self.page_key(key) in self._data

    def delete(self, key: str) -> bool:
        with self._lock:
            self._data.pop(self.page_key(key), None)
        return True

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


class TestGenericPath(StorageConformanceTests):
    @pytest.fixture
    def open_backend(self, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
        name = request.node.nodeid

        def _open(config: HiCacheStorageConfig) -> HiCacheStorage:
            config.extra_config = {"store": name}
            return DictStore(config)

        return _open
