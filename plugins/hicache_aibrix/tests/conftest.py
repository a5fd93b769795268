"""Fixtures shared by the AIBrix backend's tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hicache_core import HiCacheStorageConfig

# Small L1 so a test run reserves one 1 GiB slab of virtual memory, not AIBrix's default ten.
L1_GB = 0.05


@pytest.fixture
def aibrix_config(tmp_path: Path) -> Callable[..., HiCacheStorageConfig]:
    """A config for one AIBrix store; extra keys override the test defaults."""

    def _make(**extra: Any) -> HiCacheStorageConfig:
        base: dict[str, Any] = {
            "l1_capacity_gb": L1_GB,
            "rocksdb_root": str(tmp_path / "rocksdb"),
            "shfs_root": str(tmp_path / "shfs"),
        }
        base.update(extra)
        return HiCacheStorageConfig(model_name="aibrix-test/model", extra_config=base)

    return _make
