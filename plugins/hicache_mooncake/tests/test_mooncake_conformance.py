"""The storage conformance kit against a real Mooncake cluster (master + storage node on TCP),
under both key schemes."""

from __future__ import annotations

import uuid

import pytest
from hicache_mooncake.cluster import LocalMooncakeCluster

from hicache_core import HiCacheStorageConfig
from hicache_core.testing import StorageConformanceTests


class TestMooncakeConformance(StorageConformanceTests):
    """Through the installed entry point; the backend contributes no memory, so every page
    lives in the separate storage-node process and crosses a TCP connection."""

    backend_name = "mooncake"

    @pytest.fixture
    def storage_config(self, mooncake_cluster: LocalMooncakeCluster) -> HiCacheStorageConfig:
        return HiCacheStorageConfig(model_name="conformance-model", extra_config=mooncake_cluster.extra_config())


class TestMooncakeSGLangSchemeConformance(StorageConformanceTests):
    """``scheme: sglang``: SGLang's object names, guarded by the format record. A model name
    of its own per test keeps each test's format records apart."""

    backend_name = "mooncake"

    @pytest.fixture
    def storage_config(self, mooncake_cluster: LocalMooncakeCluster) -> HiCacheStorageConfig:
        return HiCacheStorageConfig(
            model_name=f"conformance/sglang-{uuid.uuid4().hex[:8]}",
            extra_config={**mooncake_cluster.extra_config(), "scheme": "sglang"},
        )
