"""The example backend through hicache's public author path: entry point, kit, CLI, dynamic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from hicache_core import HiCacheStorage, HiCacheStorageConfig, create_backend
from hicache_core.testing import StorageConformanceTests

SGLANG_STYLE = {
    "backend_name": "sgl_dict",
    "module_path": "hicache_example_backend.sglang_style",
    "class_name": "SGLangStyleStore",
}


def _clean_env() -> dict[str, str]:
    """The environment without allowlists a caller may have set."""
    return {k: v for k, v in os.environ.items() if k not in ("HICACHE_PLUGINS", "HICACHE_DYNAMIC_ALLOWLIST")}


def hicache(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real ``hicache`` command line, in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "hicache_core.cli.main", *args],
        capture_output=True, text=True, timeout=300, env={**_clean_env(), "COLUMNS": "200", **(env or {})},
    )


class TestExampleThroughEntryPoint(StorageConformanceTests):
    """``example`` as installed: the one-line class-form entry point."""

    backend_name = "example"

    @pytest.fixture
    def storage_config(self, tmp_path: Path) -> HiCacheStorageConfig:
        return HiCacheStorageConfig(model_name="example-model", extra_config={"db_path": str(tmp_path / "pages.db")})


class TestSGLangStyleThroughDynamic(StorageConformanceTests):
    """The SGLang-written class loaded unchanged by ``dynamic``, its own v1 methods in use."""

    @pytest.fixture(params=[0, 1], ids=["generic_v1", "native_v1"])
    def storage_config(self, request: pytest.FixtureRequest) -> HiCacheStorageConfig:
        extra = {**SGLANG_STYLE, "interface_v1": request.param, "store": request.node.nodeid}
        return HiCacheStorageConfig(model_name="sglang-style", extra_config=extra)

    @pytest.fixture
    def open_backend(self) -> Callable[[HiCacheStorageConfig], HiCacheStorage]:
        return lambda config: create_backend("dynamic", config)


def test_listed_by_hicache_backends() -> None:
    result = hicache("backends", "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    row = rows["example"]
    assert row["status"] == "available", row
    assert row["distribution"] == "hicache-example-backend" and row["version"] == "0.1.0"
    assert row["target"] == "hicache_example_backend.store:ExampleStore"
    assert {"delete", "clear", "persistent"} <= set(row["capabilities"])


def test_hicache_check_example_conforms(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"db_path": str(tmp_path / "check.db")}))
    result = hicache("check", "example", "--config", f"@{config}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "example conforms" in result.stdout
    assert "failed" not in result.stdout


def test_hicache_check_sglang_style_through_dynamic() -> None:
    result = hicache("check", "dynamic", "--config", json.dumps({**SGLANG_STYLE, "interface_v1": 1}), "-k", "v1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dynamic conforms" in result.stdout and "test_v1_roundtrip[page_first]" in result.stdout


def test_namespaces_share_one_database(tmp_path: Path) -> None:
    import torch

    db = str(tmp_path / "shared.db")
    a = create_backend("example", HiCacheStorageConfig(model_name="a", extra_config={"db_path": db}))
    b = create_backend("example", HiCacheStorageConfig(model_name="b", extra_config={"db_path": db}))
    try:
        assert a.set("k", torch.arange(8, dtype=torch.uint8))
        assert a.exists("k") and not b.exists("k")
        b.clear()
        assert a.exists("k")
        a.clear()
        assert not a.exists("k")
    finally:
        a.close()
        b.close()
