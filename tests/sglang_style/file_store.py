# ruff: noqa: UP006, UP024, UP035, UP045  (typing.List/Optional and IOError, as SGLang's sources write them)
"""A file backend in the manner of SGLang's ``HiCacheFile`` (sglang 0.5.x), written for SGLang.

One file per page, named ``{hash}{suffix}.bin`` with SGLang's ``_{model}_{tp_rank}_{tp_size}``
suffix (``_{model}`` for MLA); read with ``readinto`` straight into the target page; no
zero-copy methods (its ``batch_*_v1`` are the base class's). The directory comes from
``SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR`` as in SGLang, or from the extra-config key
``file_path`` that a dynamic-backend author would add.
"""

from __future__ import annotations

import logging
import os
from typing import Any, List, Optional

import torch
from sglang.srt.mem_cache.hicache_storage import HiCacheStorage, HiCacheStorageConfig

logger = logging.getLogger(__name__)


class SGLangStyleFile(HiCacheStorage):
    def __init__(self, storage_config: HiCacheStorageConfig, file_path: str = "/tmp/hicache"):
        self.file_path = os.getenv("SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR", file_path)
        extra = storage_config.extra_config or {}
        self.file_path = extra.get("file_path", self.file_path)
        tp_rank, tp_size, model_name, is_mla_model = (
            storage_config.tp_rank,
            storage_config.tp_size,
            storage_config.model_name,
            storage_config.is_mla_model,
        )
        model_name = "-".join(model_name.split("/")) if model_name else ""
        if is_mla_model:
            self.config_suffix = f"_{model_name}"
        else:
            self.config_suffix = f"_{model_name}_{tp_rank}_{tp_size}"
        if not os.path.exists(self.file_path) and tp_rank == 0:
            os.makedirs(self.file_path, exist_ok=True)
            logger.info("Created HiCacheFile storage directory at %s", self.file_path)

    def _get_suffixed_key(self, key: str) -> str:
        return key + self.config_suffix

    def _path(self, key: str) -> str:
        return os.path.join(self.file_path, f"{self._get_suffixed_key(key)}.bin")

    def get(
        self,
        key: str,
        target_location: Optional[torch.Tensor] = None,
        target_sizes: Optional[Any] = None,
    ) -> Optional[torch.Tensor]:
        tensor_path = self._path(key)
        try:
            with open(tensor_path, "rb", buffering=0) as f:
                if target_location is None:
                    return torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
                expected = target_location.numel() * target_location.element_size()
                buf = memoryview(target_location.view(torch.uint8).contiguous().numpy())
                if f.readinto(buf) != expected:
                    raise IOError(f"Short read for {key}")
            return target_location
        except FileNotFoundError:
            logger.warning("Failed to fetch %s from HiCacheFile storage.", key)
            return None

    def batch_get(
        self,
        keys: List[str],
        target_locations: Optional[List[torch.Tensor]] = None,
        target_sizes: Optional[Any] = None,
    ) -> List[Optional[torch.Tensor]]:
        return [
            self.get(key, target_location)
            for key, target_location in zip(keys, target_locations or [None] * len(keys))
        ]

    def set(
        self,
        key: str,
        value: Optional[torch.Tensor] = None,
        target_location: Optional[Any] = None,
        target_sizes: Optional[Any] = None,
    ) -> bool:
        if self.exists(key):
            logger.debug("Key %s already exists. Skipped.", key)
            return True
        tensor_path = self._path(key)
        try:
            value.contiguous().view(dtype=torch.uint8).numpy().tofile(tensor_path)
            return True
        except Exception as e:
            logger.error("Failed to save tensor %s: %s", key, e)
            return False

    def batch_set(
        self,
        keys: List[str],
        values: Optional[Any] = None,
        target_locations: Optional[Any] = None,
        target_sizes: Optional[Any] = None,
    ) -> bool:
        for key, value in zip(keys, values):
            if not self.set(key, value):
                return False
        return True

    def exists(self, key: str) -> bool:
        return os.path.exists(self._path(key))

    def batch_exists(self, keys: List[str], extra_info: Optional[Any] = None) -> int:
        for i, key in enumerate(keys):
            if not self.exists(key):
                return i
        return len(keys)

    def clear(self) -> bool:
        try:
            for filename in os.listdir(self.file_path):
                file_path = os.path.join(self.file_path, filename)
                if os.path.isfile(file_path):
                    os.remove(file_path)
            logger.info("Cleared all entries in HiCacheFile storage.")
            return True
        except Exception as e:
            logger.error("Failed to clear HiCacheFile storage: %s", e)
            return False
