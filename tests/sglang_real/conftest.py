"""Fixtures of the tests against the real sglang package (see sglang_env.py for the setup).

When sglang is installed, SGLang's modules are made importable here (``sglang_env.prepare``:
the import-only torchvision stand-in, stated there). Test modules call
``require_sglang()`` at import, which skips them with the reason only when sglang is missing.

``bridge_extra`` gives, per first-party hicache backend, the extra config an SGLang operator
writes to run it through ``hicache_core.compat.sglang_bridge.HiCacheBridge``: the Mooncake one
points at a real master and storage node on 127.0.0.1 (the mooncake plugin's
``LocalMooncakeCluster``, the same processes its own tests use).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sglang_real.sglang_env import FIRST_PARTY, prepare, sglang_missing_reason

if sglang_missing_reason() is None:
    prepare()

BRIDGE = {"backend_name": "hicache", "module_path": "hicache_core.compat.sglang_bridge",
          "class_name": "HiCacheBridge"}


def backend_unavailable(name: str) -> str | None:
    """Why hicache's backend ``name`` cannot run here (as ``hicache backends`` says), or None."""
    from hicache_core.plugins.registry import default_registry

    for info in default_registry().describe():
        if info.name == name:
            return None if info.status == "available" else f"{name}: {info.status}: {info.reason}"
    return f"{name}: not installed"


@pytest.fixture(scope="session")
def mooncake_cluster() -> Iterator[Any]:
    """A real Mooncake master + metadata server + storage node on 127.0.0.1 (stopped by PID)."""
    from hicache_mooncake.cluster import LocalMooncakeCluster
    from hicache_mooncake.probe import probe

    why_not = probe()
    if why_not:
        pytest.skip(f"Mooncake cannot run on this machine: {why_not}")
    with LocalMooncakeCluster(storage_nodes=1, segment_size="256MB", lease_ttl_ms=2000) as cluster:
        yield cluster


@pytest.fixture
def backend_keys(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[str], dict[str, Any]]:
    """The hicache backend's own extra-config keys, per first-party backend, on this machine."""

    def _keys(name: str) -> dict[str, Any]:
        reason = backend_unavailable(name)
        if reason is not None:
            pytest.skip(reason)
        if name == "file":
            return {"path": str(tmp_path / "file-l3")}
        if name == "mooncake":
            cluster = request.getfixturevalue("mooncake_cluster")
            return dict(cluster.extra_config())
        if name == "nixl":
            return {"plugin": "POSIX", "storage_dir": str(tmp_path / "nixl-pages")}
        if name == "hf3fs":  # the plain-file client (no 3FS mount here)
            return {"file_path_prefix": str(tmp_path / "hf3fs-kv"), "file_size": 4 << 20, "numjobs": 1,
                    "client": "file"}
        if name == "aibrix":  # AIBrix's in-memory cache, no remote connector
            return {"l1_capacity_gb": 0.05}
        raise AssertionError(f"{name} is not one of {FIRST_PARTY}")

    return _keys


@pytest.fixture
def bridge_extra(backend_keys: Callable[[str], dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """The extra config that runs hicache backend ``name`` inside SGLang through the bridge."""

    def _extra(name: str, interface_v1: int = 1, **more: Any) -> dict[str, Any]:
        return {**BRIDGE, "interface_v1": interface_v1, "hicache_backend": name, **backend_keys(name), **more}

    return _extra


@pytest.fixture
def opened() -> Iterator[list[Any]]:
    """Backends a test opened; closed at the end, also when the test fails."""
    backends: list[Any] = []
    yield backends
    for b in backends:
        try:
            b.close()
        except Exception:
            pass
