"""The conformance kit against the file backend, directly and through its entry point."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from hicache_file import store as store_module
from hicache_file.store import FileStore

from hicache_core import HiCacheStorage, HiCacheStorageConfig, create_backend
from hicache_core.testing import StorageConformanceTests


class TestFileStoreConformance(StorageConformanceTests):
    """FileStore opened directly, two I/O threads per batch even for the kit's small pages."""

    @pytest.fixture(autouse=True)
    def _threads_for_small_pages(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(store_module, "PARALLEL_MIN_PAGE_BYTES", 0)

    @pytest.fixture
    def storage_config(self, tmp_path: Path) -> HiCacheStorageConfig:
        return HiCacheStorageConfig(model_name="conformance-model", extra_config={"path": str(tmp_path / "l3")})

    @pytest.fixture
    def open_backend(self) -> Callable[[HiCacheStorageConfig], HiCacheStorage]:
        return FileStore


class TestFileEntryPointConformance(StorageConformanceTests):
    """The installed ``file`` entry point, one thread, crc32 checksums, a generous size bound."""

    backend_name = "file"

    @pytest.fixture
    def storage_config(self, tmp_path: Path) -> HiCacheStorageConfig:
        return HiCacheStorageConfig(
            model_name="conformance-model",
            extra_config={"file_storage_path": str(tmp_path / "l3"), "io_threads": 1, "checksum": "crc32",
                          "max_bytes": "1GiB"},
        )

    def test_created_through_the_factory(self, storage_config: HiCacheStorageConfig) -> None:
        backend = create_backend("file", replace(storage_config))
        try:
            assert isinstance(backend, FileStore)
            assert backend.settings.checksum == "crc32" and backend.settings.max_bytes == 1 << 30
        finally:
            backend.close()
