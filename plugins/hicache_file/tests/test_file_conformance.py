"""The conformance kit (with its v2 sidecar checks) against every storage scheme of the file backend."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from hicache_file import base as base_module
from hicache_file.pagefile import PageFileStore
from hicache_file.sglang_scheme import SGLangFileStore
from hicache_file.store import FileStore

from hicache_core import HiCacheStorage, HiCacheStorageConfig, create_backend
from hicache_core.testing import StorageConformanceTests


class TestFileStoreConformance(StorageConformanceTests):
    """Scheme ``pagefile`` (the default), opened directly, two I/O threads even for the kit's small pages."""

    @pytest.fixture(autouse=True)
    def _threads_for_small_pages(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(base_module, "PARALLEL_MIN_PAGE_BYTES", 0)

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
            assert isinstance(backend, FileStore) and isinstance(backend, PageFileStore)
            assert backend.settings.checksum == "crc32" and backend.settings.max_bytes == 1 << 30
        finally:
            backend.close()


class TestSGLangSchemeConformance(StorageConformanceTests):
    """Scheme ``sglang`` (SGLang HiCacheFile's raw files) through the entry point, with a size bound."""

    backend_name = "file"

    @pytest.fixture
    def storage_config(self, tmp_path: Path) -> HiCacheStorageConfig:
        return HiCacheStorageConfig(
            model_name="conformance/model",
            extra_config={"scheme": "sglang", "file_storage_path": str(tmp_path / "sgl"), "max_pages": 100000},
        )

    def test_created_through_the_factory(self, storage_config: HiCacheStorageConfig) -> None:
        backend = create_backend("file", replace(storage_config))
        try:
            assert isinstance(backend, FileStore) and isinstance(backend, SGLangFileStore)
        finally:
            backend.close()


@pytest.mark.skipif(
    importlib.util.find_spec("hicache_file.segment") is None, reason="hicache_file.segment is not in this tree yet"
)
class TestSegmentSchemeConformance(StorageConformanceTests):
    """Scheme ``segment`` selected through the ``file`` entry point (the scheme's own tests are its own)."""

    backend_name = "file"

    @pytest.fixture
    def storage_config(self, tmp_path: Path) -> HiCacheStorageConfig:
        return HiCacheStorageConfig(
            model_name="conformance-model", extra_config={"scheme": "segment", "path": str(tmp_path / "seg")},
        )

    def test_created_through_the_factory(self, storage_config: HiCacheStorageConfig) -> None:
        backend = create_backend("file", replace(storage_config))
        try:
            assert isinstance(backend, FileStore) and type(backend).__name__ == "SegmentStore"
        finally:
            backend.close()
