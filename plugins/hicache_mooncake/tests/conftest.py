"""Fixtures for the Mooncake backend's tests: real Mooncake processes on 127.0.0.1.

``mooncake_cluster`` (session) starts a metadata server, a master and one storage node on
free ports, waits until the master has mounted the node's memory, and stops all three by PID
at the end of the session, also when tests fail. Tests that kill processes use
``private_cluster`` (one cluster per test) so the shared one stays healthy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hicache_mooncake.cluster import LocalMooncakeCluster
from hicache_mooncake.probe import probe

from hicache_core import HiCacheStorageConfig

_WHY_NOT = probe()


def _require_mooncake() -> None:
    if _WHY_NOT:
        pytest.skip(f"Mooncake cannot run on this machine: {_WHY_NOT}")


@pytest.fixture(scope="session")
def mooncake_cluster() -> Iterator[LocalMooncakeCluster]:
    _require_mooncake()
    with LocalMooncakeCluster(storage_nodes=1, segment_size="512MB", lease_ttl_ms=2000) as cluster:
        yield cluster


@pytest.fixture
def private_cluster() -> Iterator[LocalMooncakeCluster]:
    """A cluster of its own for a test that kills or restarts its processes."""
    _require_mooncake()
    with LocalMooncakeCluster(storage_nodes=1, segment_size="128MB", client_ttl_s=2) as cluster:
        yield cluster


@pytest.fixture
def mooncake_config(mooncake_cluster: LocalMooncakeCluster) -> Callable[..., HiCacheStorageConfig]:
    """A storage config for a backend on the shared cluster; keyword args override fields."""

    def _make(extra: dict[str, Any] | None = None, **fields: Any) -> HiCacheStorageConfig:
        cfg: dict[str, Any] = {"model_name": "mooncake-test/model", **fields}
        return HiCacheStorageConfig(extra_config={**mooncake_cluster.extra_config(), **(extra or {})}, **cfg)

    return _make
