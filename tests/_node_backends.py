"""Backends the node tests attach through SGLang's ``dynamic`` loader (real files, real I/O).

``DirStore``: one file per page in the directory ``extra_config["path"]``; written to a temp
name and renamed, so a page is whole or absent. Only get/set/exists: every other method,
including the zero-copy v1 path, comes from the ``HiCacheStorage`` defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from hicache_core.spec.config import HiCacheStorageConfig
from hicache_core.spec.storage import HiCacheStorage


class DirStore(HiCacheStorage):
    #: What the status endpoints may show (an allow-list; anything else is shown as ***).
    config_public_fields = ("path", "fail_rank")

    def __init__(self, config: HiCacheStorageConfig | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(config)
        path = self.config.extra().get("path")
        if not path:
            raise ValueError("DirStore needs extra_config 'path'")
        self.root = Path(path)
        self.root.mkdir(parents=True, exist_ok=True)

    def _file(self, key: str) -> Path:
        return self.root / f"{key}.page"

    def get(self, key: str, target_location: Any | None = None, target_sizes: Any | None = None) -> torch.Tensor | None:
        try:
            data = self._file(key).read_bytes()
        except OSError:
            return None
        src = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if isinstance(target_location, torch.Tensor):
            dst = target_location.view(-1).view(torch.uint8)
            if dst.numel() != src.numel():
                return None
            dst.copy_(src)
            return target_location
        return src

    def set(self, key: str, value: Any | None = None, target_location: Any | None = None,
            target_sizes: Any | None = None) -> bool:
        if not isinstance(value, torch.Tensor):
            return False
        data = value.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        tmp = self.root / f".{key}.{os.getpid()}.tmp"
        try:
            tmp.write_bytes(data)
            os.replace(tmp, self._file(key))
        except OSError:
            return False
        return True

    def exists(self, key: str) -> bool:
        return self._file(key).is_file()


class FailOnRank(DirStore):
    """A DirStore that refuses to start on DP rank ``extra_config["fail_rank"]`` (rollback tests)."""

    def __init__(self, config: HiCacheStorageConfig | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(config)
        fail = int(self.config.extra().get("fail_rank", -1))
        if self.config.dp_rank == fail:
            raise ValueError(f"FailOnRank: refusing to start on dp rank {fail} (as configured)")
