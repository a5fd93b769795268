"""The storage conformance kit against a real Mooncake cluster (master + storage node on TCP),
under both key schemes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from hicache_mooncake.cluster import LocalMooncakeCluster

from hicache_core import HiCacheStorageConfig, create_backend
from hicache_core.spec.storage import HiCacheStorage
from hicache_core.testing import StorageConformanceTests
from hicache_core.testing.v2_checks import V2PoolTransferChecks


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


class TestMooncakeV2PoolTransfers(V2PoolTransferChecks):
    """The kit's v2 checks (KV + a Mamba-like state pool), through the core's v2 defaults: state
    pages are flat pages of their own size, one object each, under the core's sidecar hashes.
    Their keys are fixed token hashes, so each test gets a model name (a namespace) of its own."""

    @pytest.fixture
    def storage_config(self, mooncake_cluster: LocalMooncakeCluster) -> HiCacheStorageConfig:
        return HiCacheStorageConfig(model_name=f"v2-{uuid.uuid4().hex[:8]}", extra_config=mooncake_cluster.extra_config())

    @pytest.fixture
    def open_backend(self) -> Iterator[Callable[[HiCacheStorageConfig], HiCacheStorage]]:
        opened: list[HiCacheStorage] = []

        def _open(config: HiCacheStorageConfig) -> HiCacheStorage:
            opened.append(create_backend("mooncake", config))
            return opened[-1]

        yield _open
        for backend in opened:
            backend.close()
