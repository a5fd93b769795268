"""Two small, correct backends: the gallery's starting points, and the kit's proof of fairness.

``MemoryStore`` keeps page bytes in a dict shared by every instance opened with the same
``extra_config["store"]`` name (it declares ``shared``: two instances see one store, as two
nodes on a shared store do; it is not persistent). ``DirStore`` keeps one file per page in
``extra_config["root"]``, written to a temporary file and renamed into place, so it is
persistent and a writer killed mid-write leaves the old page or none. Both store a page under
``self.page_key(hash)`` (model, page format and shard in the key) and use the core's default
``batch_*`` and v1 paths, which move flat pages (``hicache_core.memory.pages``' one order).

Each subclass in the gallery overrides one small method (``_store``, ``_load``, ``_name``, ...)
to add one defect.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any

import torch

from hicache_core import Capabilities, HiCacheStorage, HiCacheStorageConfig

_STORES: dict[str, dict[str, bytes]] = {}
_STORES_LOCK = threading.Lock()


def page_bytes_of(value: Any) -> bytes | None:
    """The bytes of a flat page tensor (None for anything else)."""
    if not isinstance(value, torch.Tensor):
        return None
    return bytes(value.contiguous().view(-1).view(torch.uint8).numpy())


class ByteStore(HiCacheStorage):
    """get/set/exists over ``_store``/``_load``/``_has`` of a name; subclasses keep the bytes."""

    def _name(self, key: str) -> str:
        """The name a page is kept under: the namespaced key."""
        return self.page_key(key)

    def _store(self, name: str, data: bytes) -> bool:
        raise NotImplementedError

    def _load(self, name: str) -> bytes | None:
        raise NotImplementedError

    def _has(self, name: str) -> bool:
        return self._load(name) is not None

    def _expected_nbytes(self) -> int | None:
        pool = self.mem_pool_host
        return None if pool is None else int(pool.page_bytes)

    def get(self, key: str, target_location: Any | None = None, target_sizes: Any | None = None) -> torch.Tensor | None:
        data = self._load(self._name(key))
        if data is None:
            return None
        if isinstance(target_location, torch.Tensor):
            target = target_location.view(-1).view(torch.uint8)
            if target.numel() != len(data):
                return None  # a page of another size is not this pool's page: a miss
            target.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
            return target_location
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)

    def set(self, key: str, value: Any | None = None, target_location: Any | None = None,
            target_sizes: Any | None = None) -> bool:
        data = page_bytes_of(value)
        if data is None:
            return False
        return self._store(self._name(key), data)

    def exists(self, key: str) -> bool:
        return self._has(self._name(key))


class MemoryStore(ByteStore):
    """Page bytes in a process-wide dict named by ``extra_config["store"]``."""

    capabilities = Capabilities(delete=True, clear=True, shared=True)

    def __init__(self, config: HiCacheStorageConfig | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(config)
        name = str(self.config.extra().get("store", "default"))
        with _STORES_LOCK:
            self._data = _STORES.setdefault(name, {})
        self._lock = threading.Lock()

    def _store(self, name: str, data: bytes) -> bool:
        with self._lock:
            self._data[name] = data
        return True

    def _load(self, name: str) -> bytes | None:
        with self._lock:
            return self._data.get(name)

    def delete(self, key: str) -> bool:
        with self._lock:
            self._data.pop(self._name(key), None)
        return True

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


class DirStore(ByteStore):
    """One file per page under ``extra_config["root"]``, named by a hash of the namespaced key."""

    capabilities = Capabilities(delete=True, clear=True, persistent=True)

    def __init__(self, config: HiCacheStorageConfig | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(config)
        self.root = str(self.config.extra()["root"])
        os.makedirs(self.root, exist_ok=True)
        self._counter = 0
        self._lock = threading.Lock()

    def _path(self, name: str) -> str:
        return os.path.join(self.root, hashlib.sha256(name.encode()).hexdigest() + ".page")

    def _store(self, name: str, data: bytes) -> bool:
        path = self._path(name)
        with self._lock:
            self._counter += 1
            tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.{self._counter}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # atomic: readers see the old page or the new one
        return True

    def _load(self, name: str) -> bytes | None:
        try:
            with open(self._path(name), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        # Writes are atomic (temp + rename), so a file is a whole page of whatever pool wrote it
        # (KV or a v2 sidecar state); get() refuses one of another size than its target.
        return data

    def delete(self, key: str) -> bool:
        try:
            os.remove(self._path(self._name(key)))
        except FileNotFoundError:
            pass
        return True

    def clear(self) -> None:
        for entry in os.listdir(self.root):
            if entry.endswith(".page"):
                os.remove(os.path.join(self.root, entry))
