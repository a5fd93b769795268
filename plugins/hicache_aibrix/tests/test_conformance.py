"""The conformance kit against AIBrix, for real: its in-memory cache, RocksDB and shared files."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("aibrix_kvcache", reason="aibrix-kvcache is not installed: pip install -e plugins/hicache_aibrix")
from hicache_aibrix.store import AIBrixStore

from hicache_core import HiCacheStorage, HiCacheStorageConfig, create_backend
from hicache_core.testing import StorageConformanceTests


class _AIBrixConformance(StorageConformanceTests):
    extra: dict[str, object] = {}
    # AIBrix runs threads (and RocksDB holds in-process locks) that a fork does not survive:
    # the kill -9 writer is a fresh interpreter that opens the installed entry point.
    backend_name = "aibrix"
    kill9_writer = "spawn"

    @pytest.fixture
    def storage_config(self, tmp_path: Path) -> HiCacheStorageConfig:
        extra: dict[str, object] = {
            "l1_capacity_gb": 0.05,
            "rocksdb_root": str(tmp_path / "rocksdb"),
            "shfs_root": str(tmp_path / "shfs"),
        }
        extra.update(self.extra)
        return HiCacheStorageConfig(model_name="conformance-model", extra_config=extra)

    @pytest.fixture
    def open_backend(self) -> Callable[[HiCacheStorageConfig], HiCacheStorage]:
        def _open(config: HiCacheStorageConfig) -> HiCacheStorage:
            return AIBrixStore(replace(config, extra_config=dict(config.extra_config or {})))

        return _open


class TestAIBrixL1Memory(_AIBrixConformance):
    """AIBrix's in-memory cache alone (no L2 connector)."""

    extra = {"l2_backend": "none"}


class TestAIBrixRocksDB(_AIBrixConformance):
    """AIBrix L1 in front of its ROCKSDB connector in a temporary directory."""

    extra = {"l2_backend": "ROCKSDB"}


class TestAIBrixSHFS(_AIBrixConformance):
    """AIBrix L1 in front of its SHFS (shared files) connector in a temporary directory."""

    extra = {"l2_backend": "SHFS"}


class TestAIBrixRocksDBWithoutL1(_AIBrixConformance):
    """The ROCKSDB connector alone: every read and write reaches RocksDB."""

    extra = {"l2_backend": "ROCKSDB", "l1_enabled": False}


class TestAIBrixSHFSWithoutL1(_AIBrixConformance):
    """The SHFS connector alone: every read and write reaches the files."""

    extra = {"l2_backend": "SHFS", "l1_enabled": False}


class TestAIBrixThroughEntryPoint(_AIBrixConformance):
    """The installed entry point (``create_backend('aibrix', ...)``), L1 with ROCKSDB, LCND blocks."""

    extra = {"l2_backend": "ROCKSDB", "block_layout": "LCND"}

    @pytest.fixture
    def open_backend(self) -> Callable[[HiCacheStorageConfig], HiCacheStorage]:
        def _open(config: HiCacheStorageConfig) -> HiCacheStorage:
            backend = create_backend("aibrix", config)
            assert isinstance(backend, AIBrixStore)
            return backend

        return _open
