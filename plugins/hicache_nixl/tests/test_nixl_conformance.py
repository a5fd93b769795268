"""The conformance kit against the ``nixl`` backend, for real: NIXL's POSIX plugin on disk
and on tmpfs, and NIXL's OBJ plugin against a local S3 server (moto)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("nixl", reason="NIXL is not installed: pip install nixl-cu12 && pip install --no-deps nixl", exc_type=ImportError)

from hicache_core import HiCacheStorageConfig
from hicache_core.testing import StorageConformanceTests


class TestPosixOnDisk(StorageConformanceTests):
    """POSIX plugin, page files on the local disk (ext4 here)."""

    backend_name = "nixl"

    @pytest.fixture
    def storage_config(self, tmp_path: Path) -> HiCacheStorageConfig:
        return HiCacheStorageConfig(
            model_name="conformance-model",
            extra_config={"plugin": "POSIX", "storage_dir": str(tmp_path / "pages")},
        )


class TestPosixOnTmpfs(StorageConformanceTests):
    """POSIX plugin, page files on tmpfs (/dev/shm), through ``plugin: auto``."""

    backend_name = "nixl"

    @pytest.fixture
    def storage_config(self, shm_dir: Path) -> HiCacheStorageConfig:
        return HiCacheStorageConfig(
            model_name="conformance-model",
            extra_config={"plugin": "auto", "storage_dir": str(shm_dir), "max_bytes": "64MiB"},
        )


class TestObjOnLocalS3(StorageConformanceTests):
    """OBJ plugin against moto's S3 server on 127.0.0.1 (started by the s3_server fixture)."""

    backend_name = "nixl"

    @pytest.fixture
    def storage_config(self, s3_server, bucket: str) -> HiCacheStorageConfig:  # type: ignore[no-untyped-def]
        return HiCacheStorageConfig(model_name="conformance-model", extra_config=s3_server.obj_config(bucket))
