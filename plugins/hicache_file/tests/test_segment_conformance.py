"""The conformance kit against the file backend's segment scheme (``SegmentStore``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hicache_file.segment import threads as segment_threads
from hicache_file.segment.store import SegmentStore

from hicache_core import HiCacheStorage, HiCacheStorageConfig, create_backend
from hicache_core.testing import StorageConformanceTests


class TestSegmentStoreConformance(StorageConformanceTests):
    """Default settings: every read verified, one I/O thread."""

    @pytest.fixture
    def storage_config(self, tmp_path: Path) -> HiCacheStorageConfig:
        return HiCacheStorageConfig(model_name="conformance-model", extra_config={"path": str(tmp_path / "l3")})

    @pytest.fixture
    def open_backend(self) -> Callable[[HiCacheStorageConfig], HiCacheStorage]:
        return SegmentStore


class TestSegmentStoreSmallSegmentsConformance(StorageConformanceTests):
    """Tiny segments and chunks (many files, many system calls per batch), two I/O threads even
    for the kit's small pages, checksums on first read only, a size bound: every code path."""

    @pytest.fixture(autouse=True)
    def _threads_for_small_pages(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(segment_threads, "PARALLEL_MIN_PAGE_BYTES", 0)

    @pytest.fixture
    def storage_config(self, tmp_path: Path) -> HiCacheStorageConfig:
        return HiCacheStorageConfig(
            model_name="conformance-model",
            extra_config={"file_storage_path": str(tmp_path / "l3"), "segment_bytes": "8KiB", "chunk_bytes": 3000,
                          "io_threads": 2, "verify": "first", "max_bytes": "64MiB"},
        )

    @pytest.fixture
    def open_backend(self) -> Callable[[HiCacheStorageConfig], HiCacheStorage]:
        return SegmentStore


class TestSegmentThroughFileEntryPointConformance(StorageConformanceTests):
    """The installed ``file`` entry point with ``scheme: segment``, a size bound, every read checked."""

    backend_name = "file"

    @pytest.fixture
    def storage_config(self, tmp_path: Path) -> HiCacheStorageConfig:
        return HiCacheStorageConfig(
            model_name="conformance-model",
            extra_config={"path": str(tmp_path / "l3"), "scheme": "segment", "max_bytes": "1GiB", "verify": "always"},
        )

    def test_created_through_the_factory(self, storage_config: HiCacheStorageConfig) -> None:
        backend = create_backend("file", storage_config)
        try:
            assert isinstance(backend, SegmentStore)
            assert backend.settings.max_bytes == 1 << 30 and backend.settings.verify == "always"
        finally:
            backend.close()
