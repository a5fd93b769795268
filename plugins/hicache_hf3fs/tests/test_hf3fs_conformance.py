"""The conformance kit against the hf3fs backend with the plain-file client, for real.

Local files under pytest's tmp_path; the shared form talks to a real metadata service process
on 127.0.0.1. usrbio cannot run here (no 3FS mount), so the plain-file client carries the I/O;
the layout, metadata protocol and zero-copy path are the same.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hf3fs_testutil import ServiceProcess
from hicache_hf3fs.store import Hf3fsStore

from hicache_core import HiCacheStorage, HiCacheStorageConfig
from hicache_core.plugins.factory import create_backend
from hicache_core.testing import StorageConformanceTests


def _extra(prefix: Path, **more: object) -> dict[str, object]:
    return {"file_path_prefix": str(prefix), "file_size": 4 << 20, "numjobs": 2, "client": "file", **more}


class TestHf3fsInProcessMetadata(StorageConformanceTests):
    """In-process metadata (one process per file), backend constructed directly."""

    @pytest.fixture
    def storage_config(self, tmp_path: Path) -> HiCacheStorageConfig:
        return HiCacheStorageConfig(model_name="conformance-model", extra_config=_extra(tmp_path / "kv"))

    @pytest.fixture
    def open_backend(self):  # type: ignore[no-untyped-def]
        def _open(config: HiCacheStorageConfig) -> HiCacheStorage:
            return Hf3fsStore(config)

        return _open


class TestHf3fsSharedMetadata(StorageConformanceTests):
    """The shared HTTP metadata service, backend created through the installed entry point."""

    @pytest.fixture
    def storage_config(self, tmp_path: Path, metadata_service: ServiceProcess) -> HiCacheStorageConfig:
        extra = _extra(tmp_path / "kv", metadata_server_url=metadata_service.url)
        return HiCacheStorageConfig(model_name="conformance-model", extra_config=extra)

    @pytest.fixture
    def open_backend(self):  # type: ignore[no-untyped-def]
        def _open(config: HiCacheStorageConfig) -> HiCacheStorage:
            return create_backend("hf3fs", config)

        return _open
